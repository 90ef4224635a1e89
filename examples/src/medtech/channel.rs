//! Gateway → hospital server: a channel keyed by a hybrid ML-KEM-768 + X25519 key exchange.
//!
//! 1. The server makes a fresh ML-KEM-768 key pair and a fresh X25519 key pair and sends both
//!    public keys ([`ServerHello`]).
//! 2. The gateway encapsulates a shared secret to the ML-KEM key, does X25519 with its own
//!    fresh key pair, and derives the session keys: HKDF-SHA256 with the SHA-256 of the
//!    transcript (a label, both public values of each exchange and the KEM ciphertext) as salt
//!    and `ML-KEM secret ‖ X25519 secret` as input, expanded into one AES-256-GCM key per
//!    direction and a confirmation key. It sends its X25519 public key, the KEM ciphertext and
//!    an HMAC-SHA256 of the transcript under the confirmation key ([`GatewayFinish`]).
//! 3. The server decapsulates, derives the same keys and checks the confirmation tag, so a
//!    changed ciphertext or public key fails the handshake instead of the first frame.
//!
//! The session stays secret as long as either ML-KEM-768 or X25519 holds. Each [`Frame`]
//! carries a 64-bit sequence number: the nonce is 4 zero bytes and the sequence number
//! (big-endian), the associated data binds the direction and the sequence number, and the
//! receiver accepts only sequence numbers strictly above the last one it accepted.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use ml_kem::kem::{Decapsulate, Encapsulate};
use ml_kem::{EncodedSizeUser, KemCore, MlKem768};
use rand_core::OsRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use x25519_dalek::{EphemeralSecret, PublicKey};
use zeroize::{Zeroize, Zeroizing};

type DecapsulationKey = <MlKem768 as KemCore>::DecapsulationKey;
type EncapsulationKey = <MlKem768 as KemCore>::EncapsulationKey;

const TRANSCRIPT_LABEL: &[u8] = b"medtech/hybrid-mlkem768-x25519/v1";
const FRAME_LABEL: &[u8] = b"medtech/channel/v1";

/// Why the channel refused a handshake message or a frame. Messages carry sequence numbers and
/// sizes, never contents or key bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelError {
    /// A handshake value has the wrong size.
    MalformedHandshake {
        /// Which value.
        what: &'static str,
        /// Its size in bytes.
        len: usize,
    },
    /// The X25519 exchange produced the all-zero secret (a low-order public key).
    WeakKeyExchange,
    /// The gateway's confirmation tag did not match: the KEM ciphertext, a public key or the
    /// tag was changed, so the two sides do not hold the same keys.
    HandshakeFailed,
    /// The sequence number is not above the last accepted one: a replayed or reordered frame.
    Replay {
        /// The sequence number of the refused frame.
        seq: u64,
        /// The last sequence number accepted.
        last: u64,
    },
    /// The frame did not authenticate: changed, or sealed under another key or direction.
    Tampered {
        /// The sequence number of the refused frame.
        seq: u64,
    },
    /// The sender used up its 64-bit sequence numbers; a new handshake is needed.
    SequenceExhausted,
}

impl std::fmt::Display for ChannelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MalformedHandshake { what, len } => {
                write!(f, "handshake: {what} has the wrong size ({len} bytes)")
            }
            Self::WeakKeyExchange => {
                f.write_str("handshake: X25519 produced no shared secret (low-order public key)")
            }
            Self::HandshakeFailed => f.write_str(
                "handshake failed: key confirmation did not match (changed KEM ciphertext or public key)",
            ),
            Self::Replay { seq, last } => write!(
                f,
                "frame {seq} rejected: sequence not above the last accepted {last} (replayed or reordered)"
            ),
            Self::Tampered { seq } => {
                write!(f, "frame {seq} rejected: failed authentication (tampered)")
            }
            Self::SequenceExhausted => f.write_str("sequence numbers exhausted; re-key the channel"),
        }
    }
}

impl std::error::Error for ChannelError {}

/// The server's first handshake message: its ML-KEM-768 encapsulation key and X25519 public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHello {
    /// The encoded ML-KEM-768 encapsulation key (1184 bytes).
    pub kem_public: Vec<u8>,
    /// The server's X25519 public key.
    pub x25519_public: [u8; 32],
}

/// The gateway's handshake answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayFinish {
    /// The gateway's X25519 public key.
    pub x25519_public: [u8; 32],
    /// The ML-KEM-768 ciphertext (1088 bytes).
    pub kem_ciphertext: Vec<u8>,
    /// HMAC-SHA256 of the transcript under the derived confirmation key.
    pub confirm: [u8; 32],
}

/// The server's state between its hello and the gateway's answer. Its secrets are used once.
pub struct ServerHandshake {
    dk: DecapsulationKey,
    x25519: EphemeralSecret,
    hello: ServerHello,
}

impl std::fmt::Debug for ServerHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerHandshake(<secret keys redacted>)")
    }
}

impl Default for ServerHandshake {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerHandshake {
    /// Fresh ML-KEM-768 and X25519 key pairs.
    #[must_use]
    pub fn new() -> Self {
        let (dk, ek) = MlKem768::generate(&mut OsRng);
        let x25519 = EphemeralSecret::random_from_rng(OsRng);
        let hello = ServerHello {
            kem_public: ek.as_bytes().to_vec(),
            x25519_public: PublicKey::from(&x25519).to_bytes(),
        };
        Self { dk, x25519, hello }
    }

    /// The message to send to the gateway.
    #[must_use]
    pub fn hello(&self) -> &ServerHello {
        &self.hello
    }

    /// Completes the handshake with the gateway's answer.
    ///
    /// # Errors
    /// [`ChannelError::MalformedHandshake`], [`ChannelError::WeakKeyExchange`] or
    /// [`ChannelError::HandshakeFailed`] (the confirmation tag does not match the keys derived
    /// here, e.g. because the KEM ciphertext was changed).
    pub fn finish(self, answer: &GatewayFinish) -> Result<SessionKeys, ChannelError> {
        let ct = ml_kem::Ciphertext::<MlKem768>::try_from(answer.kem_ciphertext.as_slice())
            .map_err(|_| ChannelError::MalformedHandshake {
                what: "KEM ciphertext",
                len: answer.kem_ciphertext.len(),
            })?;
        // ML-KEM decapsulation never fails on a well-sized ciphertext: a changed one yields an
        // unrelated secret (implicit rejection), caught by the confirmation tag below.
        let kem_secret = take_secret(
            self.dk
                .decapsulate(&ct)
                .map_err(|()| ChannelError::HandshakeFailed)?,
        );
        let dh = self
            .x25519
            .diffie_hellman(&PublicKey::from(answer.x25519_public));
        if !dh.was_contributory() {
            return Err(ChannelError::WeakKeyExchange);
        }
        let transcript = transcript(&self.hello, answer.x25519_public, &answer.kem_ciphertext);
        let (keys, confirm_key) = derive(&kem_secret[..], dh.as_bytes(), &transcript);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&confirm_key[..])
            .map_err(|_| ChannelError::HandshakeFailed)?;
        mac.update(&transcript);
        mac.verify_slice(&answer.confirm)
            .map_err(|_| ChannelError::HandshakeFailed)?;
        Ok(keys)
    }
}

/// The gateway's side of the handshake: answers a server hello and derives the session keys.
///
/// # Errors
/// [`ChannelError::MalformedHandshake`] if the ML-KEM key has the wrong size,
/// [`ChannelError::WeakKeyExchange`] for a low-order X25519 key.
pub fn gateway_connect(hello: &ServerHello) -> Result<(GatewayFinish, SessionKeys), ChannelError> {
    let encoded = ml_kem::Encoded::<EncapsulationKey>::try_from(hello.kem_public.as_slice())
        .map_err(|_| ChannelError::MalformedHandshake {
            what: "ML-KEM encapsulation key",
            len: hello.kem_public.len(),
        })?;
    let ek = EncapsulationKey::from_bytes(&encoded);
    let (ct, kem_secret) = ek
        .encapsulate(&mut OsRng)
        .map_err(|()| ChannelError::HandshakeFailed)?;
    let kem_secret = take_secret(kem_secret);
    let x25519 = EphemeralSecret::random_from_rng(OsRng);
    let x25519_public = PublicKey::from(&x25519).to_bytes();
    let dh = x25519.diffie_hellman(&PublicKey::from(hello.x25519_public));
    if !dh.was_contributory() {
        return Err(ChannelError::WeakKeyExchange);
    }
    let kem_ciphertext = ct.to_vec();
    let transcript = transcript(hello, x25519_public, &kem_ciphertext);
    let (keys, confirm_key) = derive(&kem_secret[..], dh.as_bytes(), &transcript);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&confirm_key[..])
        .map_err(|_| ChannelError::HandshakeFailed)?;
    mac.update(&transcript);
    let confirm: [u8; 32] = mac.finalize().into_bytes().into();
    Ok((
        GatewayFinish {
            x25519_public,
            kem_ciphertext,
            confirm,
        },
        keys,
    ))
}

/// Moves the ML-KEM shared secret into a zeroizing buffer and wipes the original.
fn take_secret(mut secret: ml_kem::SharedKey<MlKem768>) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(secret.as_slice());
    secret.as_mut_slice().zeroize();
    out
}

fn put(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
    out.extend_from_slice(part);
}

/// Every public value of the handshake, each length-prefixed, under a protocol label.
fn transcript(hello: &ServerHello, gateway_x25519: [u8; 32], kem_ciphertext: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(2400);
    put(&mut t, TRANSCRIPT_LABEL);
    put(&mut t, &hello.kem_public);
    put(&mut t, &hello.x25519_public);
    put(&mut t, &gateway_x25519);
    put(&mut t, kem_ciphertext);
    t
}

fn derive(
    kem_secret: &[u8],
    x25519_secret: &[u8; 32],
    transcript: &[u8],
) -> (SessionKeys, Zeroizing<[u8; 32]>) {
    let salt = Sha256::digest(transcript);
    let mut ikm = Zeroizing::new(Vec::with_capacity(64));
    ikm.extend_from_slice(kem_secret);
    ikm.extend_from_slice(x25519_secret);
    let hk = Hkdf::<Sha256>::new(Some(&salt[..]), &ikm);
    let expand = |info: &[u8]| {
        let mut okm = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so this cannot fail.
        if hk.expand(info, &mut okm[..]).is_err() {
            okm.fill(0);
        }
        okm
    };
    (
        SessionKeys {
            gateway_to_server: expand(b"medtech gateway->server aes-256-gcm"),
            server_to_gateway: expand(b"medtech server->gateway aes-256-gcm"),
        },
        expand(b"medtech key confirmation"),
    )
}

/// The two AES-256-GCM keys of a session, one per direction. Zeroized on drop; `Debug` never
/// shows them; `==` compares in constant time (the tests use it to show both sides agree).
pub struct SessionKeys {
    gateway_to_server: Zeroizing<[u8; 32]>,
    server_to_gateway: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(<redacted>)")
    }
}

impl PartialEq for SessionKeys {
    fn eq(&self, other: &Self) -> bool {
        let a = self.gateway_to_server.ct_eq(&*other.gateway_to_server);
        let b = self.server_to_gateway.ct_eq(&*other.server_to_gateway);
        (a & b).into()
    }
}

impl SessionKeys {
    /// Whether the two directions got distinct keys (they always should).
    #[must_use]
    pub fn directions_differ(&self) -> bool {
        !bool::from(self.gateway_to_server.ct_eq(&*self.server_to_gateway))
    }

    /// The gateway's ends: it sends towards the server and receives from it.
    #[must_use]
    pub fn gateway_ends(&self) -> (FrameSender, FrameReceiver) {
        (
            FrameSender::new(&self.gateway_to_server, Direction::GatewayToServer),
            FrameReceiver::new(&self.server_to_gateway, Direction::ServerToGateway),
        )
    }

    /// The server's ends: it sends towards the gateway and receives from it.
    #[must_use]
    pub fn server_ends(&self) -> (FrameSender, FrameReceiver) {
        (
            FrameSender::new(&self.server_to_gateway, Direction::ServerToGateway),
            FrameReceiver::new(&self.gateway_to_server, Direction::GatewayToServer),
        )
    }
}

/// Which way a frame travels; bound into its associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Gateway to hospital server.
    GatewayToServer,
    /// Hospital server to gateway.
    ServerToGateway,
}

impl Direction {
    fn label(self) -> &'static [u8] {
        match self {
            Self::GatewayToServer => b"gateway->server",
            Self::ServerToGateway => b"server->gateway",
        }
    }
}

/// One sealed message on the channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The sender's sequence number: nonce material, bound as associated data.
    pub seq: u64,
    /// AES-256-GCM ciphertext and tag.
    pub ciphertext: Vec<u8>,
}

fn frame_nonce(seq: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_be_bytes());
    n
}

fn frame_aad(direction: Direction, seq: u64) -> Vec<u8> {
    let mut a = Vec::with_capacity(48);
    a.extend_from_slice(FRAME_LABEL);
    a.extend_from_slice(direction.label());
    a.extend_from_slice(&seq.to_be_bytes());
    a
}

/// The AES-256-GCM key of one direction, with that direction: frame number `seq` is sealed
/// under the nonce and associated data of `seq` and the direction. `Debug` shows the direction
/// only.
struct DirectionKey {
    cipher: Aes256Gcm,
    direction: Direction,
}

impl std::fmt::Debug for DirectionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectionKey")
            .field("direction", &self.direction)
            .finish_non_exhaustive()
    }
}

impl DirectionKey {
    fn new(key: &[u8; 32], direction: Direction) -> Self {
        Self {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)),
            direction,
        }
    }

    /// Seals (`open` false) or opens (`open` true) `msg` as frame number `seq`.
    fn apply(&self, open: bool, seq: u64, msg: &[u8]) -> Result<Vec<u8>, ChannelError> {
        let aad = frame_aad(self.direction, seq);
        let nonce = frame_nonce(seq);
        let payload = Payload { msg, aad: &aad };
        let nonce = Nonce::from_slice(&nonce);
        let out = if open {
            self.cipher.decrypt(nonce, payload)
        } else {
            self.cipher.encrypt(nonce, payload)
        };
        out.map_err(|_| ChannelError::Tampered { seq })
    }
}

/// The sending end of one direction; sequence numbers start at 1.
#[derive(Debug)]
pub struct FrameSender {
    key: DirectionKey,
    next: u64,
}

impl FrameSender {
    fn new(key: &[u8; 32], direction: Direction) -> Self {
        Self {
            key: DirectionKey::new(key, direction),
            next: 1,
        }
    }

    /// Seals `plaintext` under the next sequence number.
    ///
    /// # Errors
    /// [`ChannelError::SequenceExhausted`] after 2^64 - 1 frames.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Frame, ChannelError> {
        let seq = self.next;
        let next = seq.checked_add(1).ok_or(ChannelError::SequenceExhausted)?;
        let ciphertext = self.key.apply(false, seq, plaintext)?;
        self.next = next;
        Ok(Frame { seq, ciphertext })
    }
}

/// The receiving end of one direction: accepts strictly increasing sequence numbers only.
#[derive(Debug)]
pub struct FrameReceiver {
    key: DirectionKey,
    last: u64,
}

impl FrameReceiver {
    fn new(key: &[u8; 32], direction: Direction) -> Self {
        Self {
            key: DirectionKey::new(key, direction),
            last: 0,
        }
    }

    /// Opens a frame. The sequence number is recorded only once the frame authenticated.
    ///
    /// # Errors
    /// [`ChannelError::Replay`] for a sequence number not above the last accepted one,
    /// [`ChannelError::Tampered`] if the frame does not authenticate.
    pub fn open(&mut self, frame: &Frame) -> Result<Zeroizing<Vec<u8>>, ChannelError> {
        let seq = frame.seq;
        if seq <= self.last {
            return Err(ChannelError::Replay {
                seq,
                last: self.last,
            });
        }
        let plaintext = self.key.apply(true, seq, &frame.ciphertext)?;
        self.last = seq;
        Ok(Zeroizing::new(plaintext))
    }
}
