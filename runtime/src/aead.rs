//! The two data AEADs and the raw single-shot operations leakless builds on.
//!
//! These functions take explicit keys and nonces; they are the layer the Wycheproof vectors and
//! the benchmarks' baseline run through. Applications use [`KeyRing::seal`](crate::KeyRing::seal)
//! and [`KeyRing::open`](crate::KeyRing::open), which choose fresh keys and nonces themselves.
//!
//! Two engines compute the same functions: [`portable`] (RustCrypto, pure Rust, always built)
//! and, with the default cargo feature `aws-lc`, [`awslc`] (AWS-LC's assembly AES-GCM and
//! ChaCha20-Poly1305; XChaCha20 derives its subkey with HChaCha20 from RustCrypto). The
//! functions at this module's top level use [`ENGINE`]; both give byte-identical output (the
//! Wycheproof suites and a cross-engine property test run against each).

use std::fmt;

use aes::Aes256;
use aes::cipher::{BlockEncrypt, generic_array::GenericArray};
use aes_gcm::Aes256Gcm;
use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::KeyInit;
use zeroize::Zeroize;

/// Length of the authentication tag of both AEADs.
pub const TAG_LEN: usize = 16;

/// An AEAD algorithm for field data, chosen per field or per configuration.
///
/// In the schema manifest it is written by [`Algorithm::name`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[non_exhaustive]
pub enum Algorithm {
    /// XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha): 192-bit random nonces, constant-time in
    /// software everywhere. The default.
    #[default]
    #[serde(rename = "xchacha20poly1305")]
    XChaCha20Poly1305,
    /// AES-256-GCM (NIST SP 800-38D) with 96-bit nonces: fastest where the CPU has AES-NI.
    #[serde(rename = "aes256gcm")]
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

/// The engine the top-level functions of this module use: `"aws-lc"` with the cargo feature
/// of that name (the default), else `"rustcrypto"`.
#[cfg(feature = "aws-lc")]
pub const ENGINE: &str = "aws-lc";
/// The engine the top-level functions of this module use: `"aws-lc"` with the cargo feature
/// of that name (the default), else `"rustcrypto"`.
#[cfg(not(feature = "aws-lc"))]
pub const ENGINE: &str = "rustcrypto";

#[cfg(feature = "aws-lc")]
use awslc as engine;
#[cfg(not(feature = "aws-lc"))]
use portable as engine;

/// Encrypts `buffer` in place and returns the detached tag, on the engine [`ENGINE`] names.
pub use engine::encrypt_in_place;

/// Decrypts `buffer` in place after checking `tag`, on the engine [`ENGINE`] names.
pub use engine::decrypt_in_place;

/// Decrypts `ciphertext` into `out` (of the same length) after checking `tag`, on the engine
/// [`ENGINE`] names.
pub use engine::decrypt_into;

/// The pure-Rust engine (RustCrypto's `aes-gcm` and `chacha20poly1305`), always built.
pub mod portable {
    use super::{AeadFailure, Aes256Gcm, Algorithm, KeyInit, TAG_LEN, XChaCha20Poly1305};
    use chacha20poly1305::aead::AeadInPlace;

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

    /// Decrypts `buffer` in place after checking `tag`. On failure the buffer's contents are
    /// unspecified (the caller must zeroize or discard it).
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

    /// Decrypts `ciphertext` into `out`, which must have its length, after checking `tag`
    /// (RustCrypto decrypts in place only: this copies the ciphertext into `out` first). On
    /// failure `out`'s contents are unspecified (the caller must zeroize or discard it).
    ///
    /// # Errors
    /// [`AeadFailure`] when authentication fails or a length is wrong.
    pub fn decrypt_into(
        alg: Algorithm,
        key: &[u8],
        nonce: &[u8],
        aad: &[u8],
        ciphertext: &[u8],
        tag: &[u8],
        out: &mut [u8],
    ) -> Result<(), AeadFailure> {
        if out.len() != ciphertext.len() {
            return Err(AeadFailure);
        }
        out.copy_from_slice(ciphertext);
        decrypt_in_place(alg, key, nonce, aad, out, tag)
    }
}

/// The AWS-LC engine (cargo feature `aws-lc`, the default): AES-256-GCM and ChaCha20-Poly1305
/// from aws-lc-rs; XChaCha20-Poly1305 is HChaCha20 (RustCrypto's `chacha20`) over the first 16
/// nonce bytes, then ChaCha20-Poly1305 under that subkey with the nonce `0^4 || nonce[16..24]`
/// (draft-irtf-cfrg-xchacha, section 2.3).
#[cfg(feature = "aws-lc")]
pub mod awslc {
    use aws_lc_rs::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
    use zeroize::Zeroize;

    use super::{AeadFailure, Algorithm, TAG_LEN};

    /// The AWS-LC key and 12-byte nonce for `alg`, `key`, `nonce` (for XChaCha20, the
    /// HChaCha20 subkey and the derived nonce).
    fn keyed(
        alg: Algorithm,
        key: &[u8],
        nonce: &[u8],
    ) -> Result<(LessSafeKey, Nonce), AeadFailure> {
        if nonce.len() != alg.nonce_len() || key.len() != 32 {
            return Err(AeadFailure);
        }
        match alg {
            Algorithm::Aes256Gcm => {
                let k = UnboundKey::new(&AES_256_GCM, key).map_err(|_| AeadFailure)?;
                let n = Nonce::try_assume_unique_for_key(nonce).map_err(|_| AeadFailure)?;
                Ok((LessSafeKey::new(k), n))
            }
            Algorithm::XChaCha20Poly1305 => {
                let (head, tail) = nonce.split_at(16);
                let mut subkey =
                    chacha20::hchacha::<chacha20::cipher::consts::U10>(key.into(), head.into());
                let k = UnboundKey::new(&CHACHA20_POLY1305, &subkey);
                subkey.zeroize();
                let mut n = [0u8; 12];
                n.get_mut(4..).ok_or(AeadFailure)?.copy_from_slice(tail);
                Ok((
                    LessSafeKey::new(k.map_err(|_| AeadFailure)?),
                    Nonce::assume_unique_for_key(n),
                ))
            }
        }
    }

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
        let (key, nonce) = keyed(alg, key, nonce)?;
        let tag = key
            .seal_in_place_separate_tag(nonce, Aad::from(aad), buffer)
            .map_err(|_| AeadFailure)?;
        tag.as_ref().try_into().map_err(|_| AeadFailure)
    }

    /// Decrypts `buffer` in place after checking `tag`. On failure the buffer's contents are
    /// unspecified (the caller must zeroize or discard it).
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
        if tag.len() != TAG_LEN {
            return Err(AeadFailure);
        }
        let (key, nonce) = keyed(alg, key, nonce)?;
        key.open_in_place_separate_tag(nonce, Aad::from(aad), tag, buffer)
            .map(|_| ())
            .map_err(|_| AeadFailure)
    }

    /// Decrypts `ciphertext` into `out`, which must have its length, after checking `tag`,
    /// without copying the ciphertext first. On failure `out`'s contents are unspecified (the
    /// caller must zeroize or discard it).
    ///
    /// # Errors
    /// [`AeadFailure`] when authentication fails or a length is wrong.
    pub fn decrypt_into(
        alg: Algorithm,
        key: &[u8],
        nonce: &[u8],
        aad: &[u8],
        ciphertext: &[u8],
        tag: &[u8],
        out: &mut [u8],
    ) -> Result<(), AeadFailure> {
        if tag.len() != TAG_LEN || out.len() != ciphertext.len() {
            return Err(AeadFailure);
        }
        let (key, nonce) = keyed(alg, key, nonce)?;
        key.open_separate_gather(nonce, Aad::from(aad), ciphertext, tag, out)
            .map_err(|_| AeadFailure)
    }
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
    // Decrypted in the plaintext's own buffer, which zeroizes on drop, so a failed decryption
    // leaves nothing behind: a short value is copied there and decrypted in place; a long one
    // is decrypted straight from `ciphertext_and_tag` into it (on AWS-LC without the copy,
    // which is then what costs; for short values AWS-LC's separate-buffer open costs more
    // than the copy).
    if ct.len() < DECRYPT_INTO_FROM {
        let mut buf = crate::Plaintext::new(ct.to_vec());
        decrypt_in_place(alg, key, nonce, aad, buf_mut(&mut buf), tag)?;
        Ok(buf)
    } else {
        let mut buf = crate::Plaintext::new(vec![0; ct.len()]);
        decrypt_into(alg, key, nonce, aad, ct, tag, buf_mut(&mut buf))?;
        Ok(buf)
    }
}

/// From this many ciphertext bytes [`decrypt`] decrypts into a separate buffer rather than
/// copying and decrypting in place (measured on the envelope bench: at 128 bytes the copy is
/// about 40 ns cheaper, from 8 KiB the separate buffer is as fast or faster).
const DECRYPT_INTO_FROM: usize = 4096;

fn buf_mut(p: &mut crate::Plaintext) -> &mut [u8] {
    p.as_mut_slice()
}

/// Nonce length of XAES-256-GCM.
pub const XAES_NONCE_LEN: usize = 24;

/// XAES-256-GCM (C2SP) under one key: AES-256-GCM under a subkey derived from the key and the
/// first 12 bytes of a 24-byte nonce, keyed by the last 12. leakless wraps the DEKs of
/// AES-256-GCM fields with it, so random 192-bit nonces are safe under one KEK for any
/// realistic number of wraps.
///
/// The value keeps what the subkey derivation needs from the key alone, computed once: the
/// key's AES-256 key schedule and `K1` (see [`Self::new`]). The KEK cache builds one per cached
/// KEK, so a wrap or unwrap derives its subkey with two AES block encryptions. Both are
/// zeroized on drop (the key schedule by the `aes` crate's `zeroize` feature). Its `Debug`
/// prints no key material.
pub struct Xaes256Gcm {
    cipher: Aes256,
    k1: [u8; 16],
}

impl Xaes256Gcm {
    /// Expands `key` (C2SP XAES-256-GCM, section "Algorithm"): the AES-256 key schedule, and
    /// `K1 = L << 1` with `L = AES-256_K(0^128)` (xor `0x87` into the last byte if `L`'s top
    /// bit was set).
    #[must_use]
    pub fn new(key: &[u8; 32]) -> Self {
        let cipher = Aes256::new(key.into());
        let mut block = GenericArray::from([0u8; 16]);
        cipher.encrypt_block(&mut block);
        let mut l = u128::from_be_bytes(block.into());
        block.zeroize();
        // Branch-free doubling in GF(2^128) with the CMAC polynomial.
        let mut k1 = (l << 1) ^ (0u128.wrapping_sub(l >> 127) & 0x87);
        l.zeroize();
        let k1_bytes = k1.to_be_bytes();
        k1.zeroize();
        Self {
            cipher,
            k1: k1_bytes,
        }
    }

    /// The subkey for `nonce[..12]`: `Kx = AES-256_K(M1 ^ K1) || AES-256_K(M2 ^ K1)` with
    /// `M1 = 00 01 58 00 || N[..12]` and `M2 = 00 02 58 00 || N[..12]`.
    fn subkey(&self, nonce: &[u8]) -> Result<[u8; 32], AeadFailure> {
        let prefix = nonce.get(..12).ok_or(AeadFailure)?;
        if nonce.len() != XAES_NONCE_LEN {
            return Err(AeadFailure);
        }
        let mut blocks = [GenericArray::from([0u8; 16]); 2];
        for (counter, block) in [1u8, 2].into_iter().zip(blocks.iter_mut()) {
            let (head, tail) = block.split_at_mut(4);
            head.copy_from_slice(&[0x00, counter, b'X', 0x00]);
            tail.copy_from_slice(prefix);
            for (a, b) in block.iter_mut().zip(self.k1) {
                *a ^= b;
            }
        }
        self.cipher.encrypt_blocks(&mut blocks);
        let mut out = [0u8; 32];
        for (half, block) in out.chunks_exact_mut(16).zip(&blocks) {
            half.copy_from_slice(block);
        }
        for block in &mut blocks {
            block.zeroize();
        }
        Ok(out)
    }

    /// `aes_gcm` under the subkey for `nonce` and with the AES-256-GCM nonce `nonce[12..]`;
    /// the subkey is zeroized afterwards.
    fn with_subkey<R>(
        &self,
        nonce: &[u8],
        aes_gcm: impl FnOnce(&[u8], &[u8]) -> Result<R, AeadFailure>,
    ) -> Result<R, AeadFailure> {
        let mut subkey = self.subkey(nonce)?;
        let result = nonce
            .get(12..)
            .ok_or(AeadFailure)
            .and_then(|gcm_nonce| aes_gcm(&subkey, gcm_nonce));
        subkey.zeroize();
        result
    }

    /// Encrypts `buffer` in place and returns the tag.
    ///
    /// # Errors
    /// [`AeadFailure`] when the nonce is not 24 bytes.
    pub fn encrypt_in_place(
        &self,
        nonce: &[u8],
        aad: &[u8],
        buffer: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadFailure> {
        self.with_subkey(nonce, |key, nonce| {
            encrypt_in_place(Algorithm::Aes256Gcm, key, nonce, aad, buffer)
        })
    }

    /// Decrypts in place what [`Self::encrypt_in_place`] produced, after checking `tag`. On
    /// failure the buffer's contents are unspecified (the caller must zeroize or discard it).
    ///
    /// # Errors
    /// [`AeadFailure`] when authentication fails or a length is wrong.
    pub fn decrypt_in_place(
        &self,
        nonce: &[u8],
        aad: &[u8],
        buffer: &mut [u8],
        tag: &[u8],
    ) -> Result<(), AeadFailure> {
        self.with_subkey(nonce, |key, nonce| {
            decrypt_in_place(Algorithm::Aes256Gcm, key, nonce, aad, buffer, tag)
        })
    }
}

impl Drop for Xaes256Gcm {
    fn drop(&mut self) {
        self.k1.zeroize();
    }
}

impl fmt::Debug for Xaes256Gcm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Xaes256Gcm(<redacted>)")
    }
}

/// XAES-256-GCM encryption under `key` in one call (see [`Xaes256Gcm`], which keeps the key's
/// expanded state for many calls). Encrypts `buffer` in place and returns the tag.
///
/// # Errors
/// [`AeadFailure`] when the key is not 32 bytes or the nonce not 24.
pub fn xaes256gcm_encrypt_in_place(
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    buffer: &mut [u8],
) -> Result<[u8; TAG_LEN], AeadFailure> {
    let key: &[u8; 32] = key.try_into().map_err(|_| AeadFailure)?;
    Xaes256Gcm::new(key).encrypt_in_place(nonce, aad, buffer)
}

/// Decrypts in place what [`xaes256gcm_encrypt_in_place`] produced, after checking `tag`.
///
/// # Errors
/// [`AeadFailure`] when authentication fails or a length is wrong.
pub fn xaes256gcm_decrypt_in_place(
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    buffer: &mut [u8],
    tag: &[u8],
) -> Result<(), AeadFailure> {
    let key: &[u8; 32] = key.try_into().map_err(|_| AeadFailure)?;
    Xaes256Gcm::new(key).decrypt_in_place(nonce, aad, buffer, tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two test vectors of the C2SP XAES-256-GCM specification
    /// (<https://github.com/C2SP/C2SP/blob/main/XAES-256-GCM.md>, "Test vectors").
    #[test]
    fn xaes256gcm_c2sp_vectors() {
        let cases: [([u8; 32], &[u8], &str); 2] = [
            (
                [1; 32],
                b"",
                "ce546ef63c9cc60765923609b33a9a1974e96e52daf2fcf7075e2271",
            ),
            (
                [3; 32],
                b"c2sp.org/XAES-256-GCM",
                "986ec1832593df5443a179437fd083bf3fdb41abd740a21f71eb769d",
            ),
        ];
        let nonce = b"ABCDEFGHIJKLMNOPQRSTUVWX";
        for (key, aad, expected) in cases {
            let mut buf = b"XAES-256-GCM".to_vec();
            let tag = xaes256gcm_encrypt_in_place(&key, nonce, aad, &mut buf).unwrap();
            buf.extend_from_slice(&tag);
            assert_eq!(hex::encode(&buf), expected);
            let (ct, tag) = buf.split_at_mut(12);
            xaes256gcm_decrypt_in_place(&key, nonce, aad, ct, tag).unwrap();
            assert_eq!(ct, b"XAES-256-GCM");
            // Every flipped byte of the ciphertext or tag, and of the nonce, fails.
            let sealed = hex::decode(expected).unwrap();
            for i in 0..sealed.len() {
                let mut bad = sealed.clone();
                bad[i] ^= 1;
                let (ct, tag) = bad.split_at_mut(12);
                assert!(xaes256gcm_decrypt_in_place(&key, nonce, aad, ct, tag).is_err());
            }
            for i in 0..24 {
                let mut n = *nonce;
                n[i] ^= 1;
                let mut bad = sealed.clone();
                let (ct, tag) = bad.split_at_mut(12);
                assert!(xaes256gcm_decrypt_in_place(&key, &n, aad, ct, tag).is_err());
            }
        }
        assert!(xaes256gcm_encrypt_in_place(&[1; 32], &[0; 12], b"", &mut []).is_err());
        assert!(xaes256gcm_encrypt_in_place(&[1; 16], &[0; 24], b"", &mut []).is_err());
    }
}

/// `decrypt_into` of each engine, named by its path (outside `tests`, whose glob import brings
/// the build engine's `decrypt_into` into scope under its bare name).
#[cfg(test)]
mod decrypt_into_tests {
    #[cfg(feature = "aws-lc")]
    use super::awslc;
    use super::{AeadFailure, Algorithm, encrypt_in_place, portable};

    /// `decrypt_into` gives what `decrypt_in_place` gives, on both engines, refuses a flipped
    /// tag or ciphertext byte and an output of another length.
    #[test]
    fn decrypt_into_matches_in_place() {
        type DecryptInto =
            fn(Algorithm, &[u8], &[u8], &[u8], &[u8], &[u8], &mut [u8]) -> Result<(), AeadFailure>;
        #[cfg(feature = "aws-lc")]
        let engines: [DecryptInto; 2] = [portable::decrypt_into, awslc::decrypt_into];
        #[cfg(not(feature = "aws-lc"))]
        let engines: [DecryptInto; 1] = [portable::decrypt_into];
        for alg in [Algorithm::XChaCha20Poly1305, Algorithm::Aes256Gcm] {
            for len in [0usize, 1, 31, 100, 4096, 70_000] {
                let key = [7u8; 32];
                let nonce = vec![9u8; alg.nonce_len()];
                let plain: Vec<u8> = (0..len)
                    .map(|i: usize| (i % 251).to_le_bytes()[0])
                    .collect();
                let mut ct = plain.clone();
                let tag = encrypt_in_place(alg, &key, &nonce, b"aad", &mut ct).unwrap();
                for decrypt_into in &engines {
                    let mut out = vec![0xAA; len];
                    decrypt_into(alg, &key, &nonce, b"aad", &ct, &tag, &mut out).unwrap();
                    assert_eq!(out, plain, "{alg} {len}");
                    let mut bad_tag = tag;
                    bad_tag[0] ^= 1;
                    assert!(
                        decrypt_into(alg, &key, &nonce, b"aad", &ct, &bad_tag, &mut out).is_err()
                    );
                    if len > 0 {
                        let mut bad = ct.clone();
                        bad[len / 2] ^= 1;
                        assert!(
                            decrypt_into(alg, &key, &nonce, b"aad", &bad, &tag, &mut out).is_err()
                        );
                    }
                    let mut short = vec![0u8; len + 1];
                    assert!(
                        decrypt_into(alg, &key, &nonce, b"aad", &ct, &tag, &mut short).is_err()
                    );
                }
            }
        }
    }
}
