//! Device → gateway: readings sealed with ChaCha20-Poly1305 under a pre-shared per-device key.
//!
//! The nonce is 4 zero bytes followed by the device's 64-bit counter (big-endian); the counter
//! starts at 1 and only goes up, so a (key, nonce) pair is never reused. The associated data
//! binds the device id and the counter, so a message moved to another device or counter fails
//! to open. The [`Gateway`] keeps the highest counter it accepted per device and rejects any
//! message at or below it.

use std::collections::HashMap;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use super::Reading;

/// A pacemaker's pre-shared 256-bit key, held by the device and by the gateway.
///
/// Zeroized on drop; `Debug` never shows it.
#[derive(Clone)]
pub struct DeviceKey(Zeroizing<[u8; 32]>);

impl DeviceKey {
    /// A fresh random key from the operating system's generator.
    #[must_use]
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut key[..]);
        Self(key)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.0[..]))
    }
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceKey(<redacted>)")
    }
}

/// What a device sends over the air: its id and counter in the clear, the reading sealed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceMessage {
    /// The sending device.
    pub device_id: String,
    /// The device's message counter: nonce material, bound as associated data.
    pub counter: u64,
    /// The sealed reading (ChaCha20-Poly1305 ciphertext and tag).
    pub ciphertext: Vec<u8>,
}

/// Why a device or the gateway refused a message. Messages name the device and counter, never
/// a reading's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceError {
    /// The gateway has no key for this device.
    UnknownDevice {
        /// The claimed device id.
        device: String,
    },
    /// The counter is not above the last one accepted from this device: a replay (or an old
    /// message delivered late).
    Replay {
        /// The device.
        device: String,
        /// The counter of the refused message.
        counter: u64,
        /// The highest counter accepted so far from this device.
        last_seen: u64,
    },
    /// The message did not authenticate: the ciphertext, the device id or the counter was
    /// changed, or it was sealed under another key.
    Tampered {
        /// The device.
        device: String,
        /// The counter of the refused message.
        counter: u64,
    },
    /// The message authenticated but its content is not a reading of this device.
    Malformed {
        /// The device.
        device: String,
        /// The counter of the refused message.
        counter: u64,
    },
    /// The device used up its 64-bit counter and must be re-keyed.
    CounterExhausted {
        /// The device.
        device: String,
    },
    /// A reading carries another device's id.
    WrongDevice {
        /// The device asked to send.
        device: String,
    },
}

impl std::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownDevice { device } => write!(f, "device {device}: unknown to the gateway"),
            Self::Replay {
                device,
                counter,
                last_seen,
            } => write!(
                f,
                "device {device}: replay rejected, counter {counter} is not above the last accepted {last_seen}"
            ),
            Self::Tampered { device, counter } => write!(
                f,
                "device {device}: message with counter {counter} failed authentication (tampered or wrong key)"
            ),
            Self::Malformed { device, counter } => write!(
                f,
                "device {device}: message with counter {counter} is not a reading of this device"
            ),
            Self::CounterExhausted { device } => {
                write!(
                    f,
                    "device {device}: message counter exhausted; re-key the device"
                )
            }
            Self::WrongDevice { device } => {
                write!(f, "device {device}: asked to send another device's reading")
            }
        }
    }
}

impl std::error::Error for DeviceError {}

fn nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

fn aad(device_id: &str, counter: u64) -> Vec<u8> {
    let id = device_id.as_bytes();
    let mut a = Vec::with_capacity(id.len().saturating_add(32));
    a.extend_from_slice(b"medtech/device/v1");
    a.extend_from_slice(&u64::try_from(id.len()).unwrap_or(u64::MAX).to_be_bytes());
    a.extend_from_slice(id);
    a.extend_from_slice(&counter.to_be_bytes());
    a
}

/// A simulated pacemaker: its id, its key and its message counter.
#[derive(Debug)]
pub struct Pacemaker {
    id: String,
    key: DeviceKey,
    counter: u64,
}

impl Pacemaker {
    /// A device with this id and pre-shared key; its first message has counter 1.
    #[must_use]
    pub fn new(id: impl Into<String>, key: DeviceKey) -> Self {
        Self {
            id: id.into(),
            key,
            counter: 0,
        }
    }

    /// The device id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals a reading under the next counter.
    ///
    /// # Errors
    /// [`DeviceError::WrongDevice`] if the reading names another device,
    /// [`DeviceError::CounterExhausted`] after 2^64 - 1 messages.
    pub fn send(&mut self, reading: &Reading) -> Result<DeviceMessage, DeviceError> {
        if reading.device_id != self.id {
            return Err(DeviceError::WrongDevice {
                device: self.id.clone(),
            });
        }
        let counter = self
            .counter
            .checked_add(1)
            .ok_or_else(|| DeviceError::CounterExhausted {
                device: self.id.clone(),
            })?;
        let plaintext =
            Zeroizing::new(
                serde_json::to_vec(reading).map_err(|_| DeviceError::Malformed {
                    device: self.id.clone(),
                    counter,
                })?,
            );
        let aad = aad(&self.id, counter);
        let ciphertext = self
            .key
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce(counter)),
                Payload {
                    msg: &plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| DeviceError::Tampered {
                device: self.id.clone(),
                counter,
            })?;
        self.counter = counter;
        Ok(DeviceMessage {
            device_id: self.id.clone(),
            counter,
            ciphertext,
        })
    }
}

/// The gateway's side of the device link: one key and one last-accepted counter per device.
#[derive(Debug, Default)]
pub struct Gateway {
    keys: HashMap<String, DeviceKey>,
    last_seen: HashMap<String, u64>,
}

impl Gateway {
    /// A gateway that knows no device yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Enrols a device with its pre-shared key.
    pub fn register(&mut self, device_id: impl Into<String>, key: DeviceKey) {
        self.keys.insert(device_id.into(), key);
    }

    /// Opens a device message, checking its counter is fresh and its content authentic. The
    /// counter is recorded only once the message authenticated, so a forged message cannot
    /// push it forward.
    ///
    /// # Errors
    /// [`DeviceError::UnknownDevice`], [`DeviceError::Replay`], [`DeviceError::Tampered`] or
    /// [`DeviceError::Malformed`].
    pub fn receive(&mut self, msg: &DeviceMessage) -> Result<Reading, DeviceError> {
        let device = msg.device_id.clone();
        let counter = msg.counter;
        let key = self
            .keys
            .get(&msg.device_id)
            .ok_or_else(|| DeviceError::UnknownDevice {
                device: device.clone(),
            })?;
        let last_seen = self.last_seen.get(&msg.device_id).copied().unwrap_or(0);
        if counter <= last_seen {
            return Err(DeviceError::Replay {
                device,
                counter,
                last_seen,
            });
        }
        let aad = aad(&msg.device_id, counter);
        let plaintext = Zeroizing::new(
            key.cipher()
                .decrypt(
                    Nonce::from_slice(&nonce(counter)),
                    Payload {
                        msg: &msg.ciphertext,
                        aad: &aad,
                    },
                )
                .map_err(|_| DeviceError::Tampered {
                    device: device.clone(),
                    counter,
                })?,
        );
        let reading: Reading =
            serde_json::from_slice(&plaintext).map_err(|_| DeviceError::Malformed {
                device: device.clone(),
                counter,
            })?;
        if reading.device_id != msg.device_id {
            return Err(DeviceError::Malformed { device, counter });
        }
        self.last_seen.insert(device, counter);
        Ok(reading)
    }
}
