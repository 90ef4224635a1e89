//! The parts of the `medtech` example: a pacemaker fleet whose readings travel devices →
//! gateway → hospital server.
//!
//! * [`device`]: each pacemaker seals its readings with ChaCha20-Poly1305 under a pre-shared
//!   256-bit key, with a per-device 64-bit counter as nonce material and the device id and
//!   counter as associated data; the [`device::Gateway`] rejects replays and tampering.
//! * [`channel`]: the gateway → hospital link, keyed by a hybrid ML-KEM-768 + X25519 key
//!   exchange combined with HKDF-SHA256 over the whole transcript, carrying AES-256-GCM frames
//!   with strictly increasing 64-bit sequence numbers.
//! * [`hospital`]: the server stores every reading through `#[derive(leakless::Sealed)]` in an
//!   embedded SQLite database, one key scope per device.
//!
//! Everything here is demo material: the readings are made up and every key is generated at
//! run time. Errors and `Debug` output name devices, counters and sequence numbers, never a
//! reading's values or a key byte.

pub mod channel;
pub mod device;
pub mod hospital;

use serde::{Deserialize, Serialize};

/// One pacemaker reading: what a device measures and the hospital stores.
///
/// `Debug` shows the device id only; the values are health data.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reading {
    /// The device that took the reading (also its key-scope name at the hospital).
    pub device_id: String,
    /// Milliseconds since the Unix epoch, by the device's clock.
    pub timestamp_ms: u64,
    /// Heart rate, beats per minute.
    pub heart_rate_bpm: u16,
    /// Remaining battery, percent.
    pub battery_pct: u8,
}

impl std::fmt::Debug for Reading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reading")
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

/// The line the `medtech` binary prints when every stored reading read back equal to what the
/// devices sent. Tests look for it.
pub const SUMMARY_OK: &str = "all stored readings match what the devices sent";
