//! Blind indexes: equality look-ups on sealed fields without decrypting them.
//!
//! A sealed value's envelope is randomised, so `WHERE address = ?` cannot work on it. A blind
//! index is a second column holding a keyed hash of the (normalised) plaintext:
//!
//! ```text
//! field_key = HKDF-SHA256(ikm  = index key of version v,
//!                         salt = "leakless blind index v1",
//!                         info = u16be len(table) || table || u16be len(column) || column)
//! token     = u32be v || first n bytes of HMAC-SHA256(field_key, normalise(plaintext))
//! ```
//!
//! The index key is a KEK version of a **dedicated key scope** (for example `bidx`), so it gets
//! the same lifecycle, audit log, KMS wrapping and cache as every other key; never use a scope
//! that also seals data. Each table and column gets its own derived key, so equal values in two
//! columns have unrelated tokens.
//!
//! # Look-ups across rotation
//! Writers store the token of the index scope's active version ([`KeyRing::blind_index`](crate::KeyRing::blind_index)).
//! After a rotation, rows written earlier still carry tokens of older versions, so a look-up
//! asks for every version that can still open ([`KeyRing::blind_index_candidates`](crate::KeyRing::blind_index_candidates)) and matches
//! any of them (`WHERE address_bidx IN (...)`); re-computing the tokens of old rows is part of
//! the migration that retires the old version.
//!
//! # What a blind index leaks
//! Equality, on purpose: anyone who can read the table sees which rows share a value, and how
//! many rows have the most common value (frequency analysis). With a guessable value space (a
//! city, a birth year) and the index key, values can be confirmed by brute force, which is why
//! the key never leaves the key ring. Truncation (`bytes`, default 16) trades collisions, which
//! turn into extra rows the application must filter after opening, against that leakage: with
//! few bytes many values share a token. See `docs/blind-indexes.md`.

use std::fmt::Write as _;

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use icu_casemap::CaseMapper;
use icu_normalizer::ComposingNormalizerBorrowed;
use icu_properties::CodePointSetData;
use icu_properties::props::DefaultIgnorableCodePoint;
use sha2::Sha256;
use writeable::Writeable as _;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::key::{KekVersion, KeyScope};
use crate::secret::KEY_LEN;

const SALT: &[u8] = b"leakless blind index v1";

/// How a plaintext is normalised before it is hashed, so that equal-meaning inputs match.
///
/// The schema manifest writes it by [`Normalizer::name`] (`none`, `trim`, `lowercase`,
/// `trim_lowercase`, `nfc`, `nfkc_casefold`). A normaliser's output is part of every token
/// made with it: changing a column's normaliser means recomputing its tokens (`reindex` after
/// an index-key rotation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Normalizer {
    /// The bytes as given.
    #[default]
    None,
    /// Leading and trailing Unicode whitespace removed (text only).
    Trim,
    /// Unicode lower case (text only).
    Lowercase,
    /// Trimmed, then lower case (text only).
    TrimLowercase,
    /// Unicode canonical composition, NFC (text only): `é` typed as one code point or as `e`
    /// plus a combining accent gives one token. Case, width and spaces still count.
    Nfc,
    /// For look-ups of what people type (names, e-mail addresses), text only: invisible
    /// characters (Unicode's default-ignorable code points: zero-width space and joiners, soft
    /// hyphen, byte-order mark, variation selectors) removed, then NFKC, full case folding and
    /// NFKC again (the steps of Unicode's `toNFKC_Casefold`), then every run of whitespace (tabs, no-break and ideographic spaces, line
    /// breaks) turned into one space and leading and trailing whitespace removed. Merges
    /// composed and decomposed accents, compatibility forms (full-width `Ａ` and `A`, the
    /// `ﬁ` ligature and `fi`, superscript `²` and `2`), every case (`ß`, `SS` and `ss`; `Σ`,
    /// `ς` and `σ`), and spacing. It does not merge accented with unaccented letters (`é` and
    /// `e`), look-alike letters of different scripts (Latin `a` and Cyrillic `а`), or the
    /// Turkish dotted and dotless `i` (folding is the language-neutral one).
    NfkcCasefold,
}

impl std::fmt::Display for Normalizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Normalizer {
    /// The normaliser's name in the manifest and the derive attribute: `none`, `trim`,
    /// `lowercase`, `trim_lowercase`, `nfc` or `nfkc_casefold`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Normalizer::None => "none",
            Normalizer::Trim => "trim",
            Normalizer::Lowercase => "lowercase",
            Normalizer::TrimLowercase => "trim_lowercase",
            Normalizer::Nfc => "nfc",
            Normalizer::NfkcCasefold => "nfkc_casefold",
        }
    }

    pub(crate) fn apply(self, plaintext: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        if self == Normalizer::None {
            return Ok(Zeroizing::new(plaintext.to_vec()));
        }
        let text = std::str::from_utf8(plaintext).map_err(|_| Error::InvalidInput {
            what: "blind index input",
            problem: format!("normaliser {self:?} needs UTF-8 text"),
        })?;
        match self {
            Normalizer::Nfc => {
                let mut out = WipedString::for_input(text);
                ComposingNormalizerBorrowed::new_nfc()
                    .normalize_to(text, &mut out)
                    .map_err(|_| normalise_failed(self))?;
                return Ok(out.into_bytes());
            }
            Normalizer::NfkcCasefold => return nfkc_casefold(text),
            _ => {}
        }
        let trimmed = match self {
            Normalizer::Trim | Normalizer::TrimLowercase => text.trim(),
            _ => text,
        };
        let out = match self {
            Normalizer::Lowercase | Normalizer::TrimLowercase => trimmed.to_lowercase(),
            _ => trimmed.to_owned(),
        };
        Ok(Zeroizing::new(out.into_bytes()))
    }
}

fn normalise_failed(n: Normalizer) -> Error {
    Error::Internal {
        what: "blind index input",
        problem: format!("normaliser {n} failed to write its output"),
    }
}

/// [`Normalizer::NfkcCasefold`].
fn nfkc_casefold(text: &str) -> Result<Zeroizing<Vec<u8>>, Error> {
    let fail = || normalise_failed(Normalizer::NfkcCasefold);
    let ignorable = CodePointSetData::new::<DefaultIgnorableCodePoint>();
    let nfkc = ComposingNormalizerBorrowed::new_nfkc();
    // Invisible characters first: one between a letter and its accent would block the
    // composition below.
    let mut visible = WipedString::for_input(text);
    for ch in text.chars().filter(|c| !ignorable.contains(*c)) {
        visible.write_char(ch).map_err(|_| fail())?;
    }
    let mut composed = WipedString::for_input(visible.as_str());
    nfkc.normalize_to(visible.as_str(), &mut composed)
        .map_err(|_| fail())?;
    let mut folded = WipedString::for_input(composed.as_str());
    CaseMapper::new()
        .fold(composed.as_str())
        .write_to(&mut folded)
        .map_err(|_| fail())?;
    let mut again = WipedString::for_input(folded.as_str());
    nfkc.normalize_to(folded.as_str(), &mut again)
        .map_err(|_| fail())?;
    let mut out = WipedString::for_input(again.as_str());
    let mut space = false;
    for ch in again.as_str().chars() {
        if ch.is_whitespace() {
            space = !out.as_str().is_empty();
            continue;
        }
        if space {
            out.write_char(' ').map_err(|_| fail())?;
            space = false;
        }
        out.write_char(ch).map_err(|_| fail())?;
    }
    Ok(out.into_bytes())
}

/// A string buffer for normalised plaintext that never leaves a copy behind: it starts with
/// room for a few times its input, and when a normaliser writes more, the text moves into a
/// larger buffer and the old one is wiped (a plain `String` would reallocate and free the old
/// copy unwiped).
struct WipedString(Zeroizing<String>);

impl WipedString {
    fn for_input(input: &str) -> Self {
        Self(Zeroizing::new(String::with_capacity(
            input.len().saturating_mul(3).saturating_add(16),
        )))
    }

    fn as_str(&self) -> &str {
        &self.0
    }

    fn into_bytes(mut self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(std::mem::take(&mut *self.0).into_bytes())
    }
}

impl std::fmt::Write for WipedString {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.0.capacity() - self.0.len() < s.len() {
            let want = (self.0.len() + s.len()).saturating_mul(2);
            let mut bigger = Zeroizing::new(String::with_capacity(want));
            bigger.push_str(&self.0);
            // The old buffer is wiped as it drops here.
            self.0 = bigger;
        }
        self.0.push_str(s);
        Ok(())
    }
}

/// Which column a blind index belongs to, under which index-key scope, and how it is computed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlindIndexSpec {
    /// The table of the sealed field.
    pub table: String,
    /// The sealed column the index is for.
    pub column: String,
    /// The dedicated key scope whose KEK versions serve as index keys.
    pub scope: KeyScope,
    /// How many HMAC bytes to keep, 4 to 32. Default 16.
    pub bytes: usize,
    /// The normaliser. Default none.
    pub normalizer: Normalizer,
}

impl BlindIndexSpec {
    /// An index on `table.column` under `scope`, 16 bytes, no normaliser.
    #[must_use]
    pub fn new(table: impl Into<String>, column: impl Into<String>, scope: KeyScope) -> Self {
        Self {
            table: table.into(),
            column: column.into(),
            scope,
            bytes: 16,
            normalizer: Normalizer::None,
        }
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        if !(4..=32).contains(&self.bytes) {
            return Err(Error::InvalidInput {
                what: "blind index length",
                problem: format!("{} bytes; use 4 to 32", self.bytes),
            });
        }
        if self.table.is_empty() || self.column.is_empty() {
            return Err(Error::InvalidInput {
                what: "blind index",
                problem: "table and column names must not be empty".into(),
            });
        }
        Ok(())
    }

    pub(crate) fn info(&self) -> Result<Vec<u8>, Error> {
        let mut info = Vec::with_capacity(4 + self.table.len() + self.column.len());
        for part in [&self.table, &self.column] {
            let len = u16::try_from(part.len()).map_err(|_| Error::InvalidInput {
                what: "blind index",
                problem: "table or column name longer than 65535 bytes".into(),
            })?;
            info.extend_from_slice(&len.to_be_bytes());
            info.extend_from_slice(part.as_bytes());
        }
        Ok(info)
    }
}

/// One blind-index token: the index key version, then the truncated HMAC. Store it in a
/// `bytea` / `BLOB` column beside the sealed one. `Debug` prints only the version and length.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BlindIndex(Vec<u8>);

impl BlindIndex {
    /// The stored bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The index key version the token was made with.
    #[must_use]
    pub fn version(&self) -> Option<KekVersion> {
        Self::stored_version(&self.0)
    }

    /// The index key version of a token as stored in the database (its first four bytes);
    /// `None` when the bytes are too short or name version 0. Needs no key: the migrator
    /// counts tokens per version with it.
    #[must_use]
    pub fn stored_version(stored: &[u8]) -> Option<KekVersion> {
        let v: [u8; 4] = stored.get(..4)?.try_into().ok()?;
        KekVersion::new(u32::from_be_bytes(v)).ok()
    }
}

impl std::fmt::Debug for BlindIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.version() {
            Some(v) => write!(f, "BlindIndex({v}, {} bytes)", self.0.len()),
            None => write!(f, "BlindIndex({} bytes)", self.0.len()),
        }
    }
}

/// HKDF of the field key of `spec` from one index-key version.
pub(crate) fn derive_field_key(
    index_key: &[u8; KEY_LEN],
    info: &[u8],
) -> Result<Zeroizing<[u8; KEY_LEN]>, Error> {
    let hk = Hkdf::<Sha256>::new(Some(SALT), index_key);
    let mut field_key = Zeroizing::new([0u8; KEY_LEN]);
    hk.expand(info, field_key.as_mut())
        .map_err(|_| Error::Internal {
            what: "blind index",
            problem: "key derivation failed".into(),
        })?;
    Ok(field_key)
}

pub(crate) fn token(
    field_key: &[u8; KEY_LEN],
    version: KekVersion,
    spec: &BlindIndexSpec,
    normalised: &[u8],
) -> Result<BlindIndex, Error> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(field_key).map_err(|_| Error::Internal {
            what: "blind index",
            problem: "HMAC key setup failed".into(),
        })?;
    mac.update(normalised);
    let digest = mac.finalize().into_bytes();
    let mut out = Vec::with_capacity(4 + spec.bytes);
    out.extend_from_slice(&version.get().to_be_bytes());
    out.extend_from_slice(digest.get(..spec.bytes).unwrap_or_default());
    Ok(BlindIndex(out))
}
