//! The plaintext encoding: how a field's Rust value becomes the bytes that are sealed.
//!
//! One stable, documented encoding per kind of value (see `docs/plaintext-encoding.md`):
//!
//! | Rust type | plaintext bytes |
//! |---|---|
//! | `String` | its UTF-8 bytes |
//! | `Vec<u8>` | the bytes as they are |
//! | `Json<T>` for any `T: Serialize + DeserializeOwned` | compact JSON by `serde_json` (`T`'s own serde representation; non-finite floats are refused) |
//!
//! `Option<T>` is not encoded: `None` is stored as SQL `NULL` with no envelope at all, so a
//! reader sees which values are absent (documented in the threat model) but never a ciphertext
//! of "nothing". The envelope is bound to its table, column and schema version, so the bytes
//! carry no type tag: change a field's type or its serde shape only together with a new schema
//! version.
//!
//! Encoded bytes live in [`Zeroizing`] buffers and are wiped when dropped; decoding consumes a
//! [`Plaintext`], which wipes itself.

mod finite;

use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::manifest::PlaintextEncoding;
use crate::secret::Plaintext;

/// A value that can be sealed: it has one stable plaintext encoding.
pub trait Sealable: Sized {
    /// The encoding, as the schema manifest records it.
    const ENCODING: PlaintextEncoding;

    /// The plaintext bytes to seal.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the value has no encoding (e.g. a NaN inside JSON).
    fn to_plaintext(&self) -> Result<Zeroizing<Vec<u8>>, Error>;

    /// Rebuilds the value from opened bytes.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the bytes are not an encoding of `Self` (which, for an
    /// authentic envelope, means the field's type changed without a new schema version). The
    /// error never contains the bytes.
    fn from_plaintext(plaintext: Plaintext) -> Result<Self, Error>;
}

impl Sealable for String {
    const ENCODING: PlaintextEncoding = PlaintextEncoding::String;

    fn to_plaintext(&self) -> Result<Zeroizing<Vec<u8>>, Error> {
        Ok(Zeroizing::new(self.as_bytes().to_vec()))
    }

    fn from_plaintext(plaintext: Plaintext) -> Result<Self, Error> {
        plaintext
            .into_string()
            .map(|mut s| std::mem::take(&mut *s))
            .map_err(|p| Error::InvalidInput {
                what: "opened value",
                problem: format!("{} bytes that are not UTF-8, expected a String", p.len()),
            })
    }
}

impl Sealable for Vec<u8> {
    const ENCODING: PlaintextEncoding = PlaintextEncoding::Bytes;

    fn to_plaintext(&self) -> Result<Zeroizing<Vec<u8>>, Error> {
        Ok(Zeroizing::new(self.clone()))
    }

    fn from_plaintext(plaintext: Plaintext) -> Result<Self, Error> {
        Ok(plaintext.expose_secret().to_vec())
    }
}

/// Any serde type, sealed as compact JSON. Wrap the field's type in it (`Json<GeoPoint>`), or
/// use [`Sealable::to_plaintext`] / [`Sealable::from_plaintext`] on it directly.
///
/// `Debug` is redacted: it never prints the value.
#[derive(Clone, Default, PartialEq)]
pub struct Json<T>(pub T);

impl<T> std::fmt::Debug for Json<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Json<{}>(<redacted>)", std::any::type_name::<T>())
    }
}

impl<T: Serialize + DeserializeOwned> Sealable for Json<T> {
    const ENCODING: PlaintextEncoding = PlaintextEncoding::Json;

    fn to_plaintext(&self) -> Result<Zeroizing<Vec<u8>>, Error> {
        // serde_json would write NaN and infinities as `null`: refuse them instead.
        finite::check_finite(&self.0).map_err(|e| Error::InvalidInput {
            what: "value to seal",
            problem: format!("cannot be encoded as JSON: {e}"),
        })?;
        let mut out = WipingWriter(Zeroizing::new(Vec::new()));
        serde_json::to_writer(&mut out, &self.0)
            .map(|()| out.0)
            .map_err(|e| Error::InvalidInput {
                what: "value to seal",
                // serde_json's messages name the problem (e.g. a non-finite float), not data.
                problem: format!("cannot be encoded as JSON: {}", e.classify_message()),
            })
    }

    fn from_plaintext(plaintext: Plaintext) -> Result<Self, Error> {
        serde_json::from_slice(plaintext.expose_secret())
            .map(Json)
            .map_err(|e| Error::InvalidInput {
                what: "opened value",
                problem: format!(
                    "is not JSON of {} ({:?} error at line {}, column {})",
                    std::any::type_name::<T>(),
                    e.classify(),
                    e.line(),
                    e.column()
                ),
            })
    }
}

/// A JSON output buffer that wipes every smaller buffer it outgrows: `serde_json::to_vec`
/// grows a plain `Vec`, and each reallocation frees a copy of the plaintext written so far
/// without wiping it (`runtime/tests/freed_copies.rs` finds those copies on the heap).
struct WipingWriter(Zeroizing<Vec<u8>>);

impl std::io::Write for WipingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let needed = self.0.len().saturating_add(buf.len());
        if needed > self.0.capacity() {
            let mut bigger = Zeroizing::new(Vec::with_capacity(
                needed.max(self.0.capacity().saturating_mul(2)).max(128),
            ));
            bigger.extend_from_slice(&self.0);
            // The old buffer is wiped (its whole capacity) when it is dropped here.
            self.0 = bigger;
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A short, data-free description of a serde_json error.
trait ClassifyMessage {
    fn classify_message(&self) -> &'static str;
}

impl ClassifyMessage for serde_json::Error {
    fn classify_message(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => {
                "the value has no JSON form (a non-finite float, or a map with non-string keys)"
            }
            serde_json::error::Category::Eof => "unexpected end",
        }
    }
}
