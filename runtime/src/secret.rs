//! Secret newtypes: key material and plaintext buffers.
//!
//! Every type here zeroizes its bytes when dropped, unconditionally, and none has a `Debug` or
//! `Display` that prints its contents: `Debug` prints the type name and, where harmless, the
//! length. There is no `Clone` on key types unless a caller needs a second owner; clones are
//! zeroized on drop just the same.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length in bytes of every symmetric key leakless handles (root key, KEK, DEK).
pub const KEY_LEN: usize = 32;

macro_rules! secret_key {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Zeroize, ZeroizeOnDrop)]
        pub struct $name([u8; KEY_LEN]);

        impl $name {
            /// Wraps raw key bytes. The caller's copy is not zeroized by this call; prefer
            /// [`Self::generate`] or pass bytes you zeroize yourself.
            #[must_use]
            pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
                Self(bytes)
            }

            /// Makes a new key from the operating system's CSPRNG.
            #[must_use]
            pub fn generate() -> Self {
                let mut bytes = [0u8; KEY_LEN];
                rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
                Self(bytes)
            }

            /// Copies a key out of a slice, which must be exactly [`KEY_LEN`] bytes long.
            /// Returns `None` for any other length.
            #[must_use]
            pub fn try_from_slice(bytes: &[u8]) -> Option<Self> {
                let array: [u8; KEY_LEN] = bytes.try_into().ok()?;
                Some(Self(array))
            }

            /// The raw key bytes, for handing to a cipher. Never log or store them.
            #[must_use]
            pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    };
}

secret_key! {
    /// A 256-bit root key, held only by a [`Kms`](crate::kms::Kms) backend. It wraps KEKs and
    /// never enters the database.
    RootKey
}

secret_key! {
    /// A 256-bit key-encryption key (KEK). At rest only wrapped by the root key; in memory only
    /// in the [`KekCache`](crate::keyring::KekCache) or on the way into it.
    Kek
}

secret_key! {
    /// A 256-bit data-encryption key (DEK): random, one per sealed value, stored only wrapped by
    /// a KEK inside the value's envelope.
    Dek
}

/// A plaintext buffer: the opened value of a sealed field.
///
/// Its bytes are zeroized when it is dropped. `Debug` prints `Plaintext(<redacted>, N bytes)`
/// and there is no `Display`, so a plaintext cannot reach a log through formatting by accident.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Plaintext(Vec<u8>);

/// Zeroizes `buf`: a plain fill with zeros (which the compiler turns into the platform's
/// fastest `memset`), then [`zeroize::optimization_barrier`], which makes the compiler assume
/// the bytes are read afterwards, so it cannot drop the fill as a dead store. The `zeroize`
/// crate's own `[u8]` implementation writes one volatile byte at a time, which costs more than
/// AES-GCM on a large opened value.
pub(crate) fn wipe(buf: &mut [u8]) {
    buf.fill(0);
    zeroize::optimization_barrier(buf);
}

impl Zeroize for Plaintext {
    /// Clears the bytes and any spare capacity (where a shortened plaintext's cut bytes are),
    /// and empties the buffer.
    fn zeroize(&mut self) {
        // Initialise the spare capacity so that one wipe covers the whole allocation; this
        // never reallocates (the new length is the capacity).
        self.0.resize(self.0.capacity(), 0);
        wipe(&mut self.0);
        self.0.clear();
    }
}

impl Drop for Plaintext {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl ZeroizeOnDrop for Plaintext {}

impl Plaintext {
    /// Takes ownership of the bytes; they are zeroized when the `Plaintext` is dropped.
    #[must_use]
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The plaintext bytes.
    #[must_use]
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// The length in bytes (not secret: the envelope's size class reveals it roughly anyway).
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Mutable access for in-place decryption inside the crate.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.0
    }

    /// Shortens the buffer to `len` bytes (used to strip padding). The cut bytes stay in the
    /// allocation's spare capacity until [`Zeroize::zeroize`] (or the drop) wipes the whole
    /// capacity; so the time this takes does not depend on how many bytes are cut.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.0.truncate(len);
    }

    /// Whether the plaintext is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Converts into a UTF-8 string held in a [`Zeroizing`] wrapper, or gives the bytes back
    /// (still zeroized on drop) when they are not UTF-8.
    ///
    /// # Errors
    /// Returns the original plaintext when the bytes are not valid UTF-8.
    pub fn into_string(mut self) -> Result<Zeroizing<String>, Self> {
        let bytes = std::mem::take(&mut self.0);
        match String::from_utf8(bytes) {
            Ok(s) => Ok(Zeroizing::new(s)),
            Err(e) => Err(Self(e.into_bytes())),
        }
    }
}

impl From<Vec<u8>> for Plaintext {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plaintext(<redacted>, {} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `wipe` clears every byte whatever the slice's alignment and length, and nothing outside
    /// it; `Plaintext::zeroize` clears and empties.
    #[test]
    fn wipe_clears_every_byte_at_any_alignment() {
        let mut backing = vec![0xA5u8; 300];
        for start in 0..17 {
            for len in [0usize, 1, 15, 16, 17, 31, 64, 100, 250] {
                backing.fill(0xA5);
                wipe(&mut backing[start..start + len]);
                assert!(backing[start..start + len].iter().all(|&b| b == 0));
                assert!(backing[..start].iter().all(|&b| b == 0xA5));
                assert!(backing[start + len..].iter().all(|&b| b == 0xA5));
            }
        }
        let mut p = Plaintext::new(vec![7u8; 1000]);
        p.truncate(10);
        assert_eq!(p.expose_secret(), &[7u8; 10]);
        p.zeroize();
        assert!(p.is_empty());
    }

    #[test]
    fn debug_never_prints_bytes() {
        let kek = Kek::from_bytes([0xAB; KEY_LEN]);
        let dek = Dek::from_bytes([0xCD; KEY_LEN]);
        let root = RootKey::from_bytes([0xEF; KEY_LEN]);
        let pt = Plaintext::new(b"221B Baker Street".to_vec());
        let printed = format!("{kek:?} {dek:?} {root:?} {pt:?} {pt:#?}");
        assert!(!printed.contains("ab") && !printed.contains("AB") && !printed.contains("171"));
        assert!(!printed.contains("Baker"));
        assert!(printed.contains("Kek(<redacted>)"));
        assert!(printed.contains("17 bytes"));
    }

    #[test]
    fn into_string_round_trips_and_rejects_non_utf8() {
        let s = Plaintext::new(b"hello".to_vec()).into_string();
        assert_eq!(s.as_deref().map(String::as_str).ok(), Some("hello"));
        let bad = Plaintext::new(vec![0xff, 0xfe]).into_string();
        assert_eq!(bad.err().map(|p| p.len()), Some(2));
    }
}
