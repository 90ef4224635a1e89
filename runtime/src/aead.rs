//! The two data AEADs and the raw single-shot operations leakless builds on.
//!
//! These functions take explicit keys and nonces; they are the layer the Wycheproof vectors and
//! the benchmarks' baseline run through. Applications use [`KeyRing::seal`](crate::KeyRing::seal)
//! and [`KeyRing::open`](crate::KeyRing::open), which choose fresh keys and nonces themselves.

use std::fmt;

use aes_gcm::Aes256Gcm;
use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};

/// Length of the authentication tag of both AEADs.
pub const TAG_LEN: usize = 16;

/// An AEAD algorithm for field data, chosen per field or per configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha): 192-bit random nonces, constant-time in
    /// software everywhere. The default.
    #[default]
    XChaCha20Poly1305,
    /// AES-256-GCM (NIST SP 800-38D) with 96-bit nonces: fastest where the CPU has AES-NI.
    Aes256Gcm,
}

impl Algorithm {
    /// The algorithm's identifier byte in the envelope header.
    #[must_use]
    pub fn id(self) -> u8 {
        match self {
            Algorithm::XChaCha20Poly1305 => 0x01,
            Algorithm::Aes256Gcm => 0x02,
        }
    }

    /// The algorithm with identifier byte `id`, if there is one.
    #[must_use]
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            0x01 => Some(Algorithm::XChaCha20Poly1305),
            0x02 => Some(Algorithm::Aes256Gcm),
            _ => None,
        }
    }

    /// Nonce length in bytes: 24 for XChaCha20-Poly1305, 12 for AES-256-GCM.
    #[must_use]
    pub fn nonce_len(self) -> usize {
        match self {
            Algorithm::XChaCha20Poly1305 => 24,
            Algorithm::Aes256Gcm => 12,
        }
    }

    /// A stable lower-case name (`xchacha20poly1305`, `aes256gcm`) for configuration and logs.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::XChaCha20Poly1305 => "xchacha20poly1305",
            Algorithm::Aes256Gcm => "aes256gcm",
        }
    }

    /// Parses [`Self::name`]'s output.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "xchacha20poly1305" => Some(Algorithm::XChaCha20Poly1305),
            "aes256gcm" => Some(Algorithm::Aes256Gcm),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a raw AEAD call failed. Deliberately carries no detail: callers turn it into an opaque
/// error that names the field, never the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AeadFailure;

/// Encrypts `buffer` in place and returns the detached tag.
///
/// # Errors
/// [`AeadFailure`] when the key or nonce has the wrong length for `alg`, or the message is
/// longer than the AEAD allows.
pub fn encrypt_in_place(
    alg: Algorithm,
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    buffer: &mut [u8],
) -> Result<[u8; TAG_LEN], AeadFailure> {
    if nonce.len() != alg.nonce_len() {
        return Err(AeadFailure);
    }
    let tag = match alg {
        Algorithm::XChaCha20Poly1305 => XChaCha20Poly1305::new_from_slice(key)
            .map_err(|_| AeadFailure)?
            .encrypt_in_place_detached(nonce.into(), aad, buffer),
        Algorithm::Aes256Gcm => Aes256Gcm::new_from_slice(key)
            .map_err(|_| AeadFailure)?
            .encrypt_in_place_detached(nonce.into(), aad, buffer),
    }
    .map_err(|_| AeadFailure)?;
    Ok(tag.into())
}

/// Decrypts `buffer` in place after checking `tag`.
///
/// On failure the buffer's contents are unspecified (the caller must zeroize or discard it).
///
/// # Errors
/// [`AeadFailure`] when authentication fails or a length is wrong.
pub fn decrypt_in_place(
    alg: Algorithm,
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    buffer: &mut [u8],
    tag: &[u8],
) -> Result<(), AeadFailure> {
    if nonce.len() != alg.nonce_len() || tag.len() != TAG_LEN {
        return Err(AeadFailure);
    }
    match alg {
        Algorithm::XChaCha20Poly1305 => XChaCha20Poly1305::new_from_slice(key)
            .map_err(|_| AeadFailure)?
            .decrypt_in_place_detached(nonce.into(), aad, buffer, tag.into()),
        Algorithm::Aes256Gcm => Aes256Gcm::new_from_slice(key)
            .map_err(|_| AeadFailure)?
            .decrypt_in_place_detached(nonce.into(), aad, buffer, tag.into()),
    }
    .map_err(|_| AeadFailure)
}

/// Encrypts `plaintext` into a new `ciphertext || tag` vector.
///
/// # Errors
/// As [`encrypt_in_place`].
pub fn encrypt(
    alg: Algorithm,
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, AeadFailure> {
    let mut out = Vec::with_capacity(plaintext.len().saturating_add(TAG_LEN));
    out.extend_from_slice(plaintext);
    let tag = encrypt_in_place(alg, key, nonce, aad, &mut out)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Decrypts a `ciphertext || tag` slice into a new [`Plaintext`](crate::Plaintext).
///
/// # Errors
/// [`AeadFailure`] when the input is shorter than a tag or authentication fails.
pub fn decrypt(
    alg: Algorithm,
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    ciphertext_and_tag: &[u8],
) -> Result<crate::Plaintext, AeadFailure> {
    let split = ciphertext_and_tag
        .len()
        .checked_sub(TAG_LEN)
        .ok_or(AeadFailure)?;
    let (ct, tag) = ciphertext_and_tag.split_at(split);
    let mut buf = crate::Plaintext::new(ct.to_vec());
    // `Plaintext` zeroizes on drop, so a failed decryption leaves nothing behind.
    decrypt_in_place(alg, key, nonce, aad, buf_mut(&mut buf), tag)?;
    Ok(buf)
}

fn buf_mut(p: &mut crate::Plaintext) -> &mut [u8] {
    p.as_mut_slice()
}
