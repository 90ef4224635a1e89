//! Deterministic test bytes for the known-answer vectors of `docs/envelope-format.md` and
//! `docs/key-store-format.md`. The runtime's unit tests (`envelope::kat`) and the `suite` test
//! binary (`key_store_format`) each include this file as a module of their own, so both
//! documents derive their inputs the same way.

use sha2::{Digest, Sha256};

/// Deterministic test bytes: SHA-256 of a label and a big-endian counter, repeated as needed.
/// Not secret.
pub(crate) fn derive(label: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut counter = 0u32;
    while out.len() < len {
        let mut h = Sha256::new();
        h.update(label.as_bytes());
        h.update(counter.to_be_bytes());
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(len);
    out
}
