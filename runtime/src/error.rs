//! The runtime's error type, [`Error`], and how the few per-module errors reach it.
//!
//! Every public operation that can fail returns [`Error`]. Every variant names what failed and
//! where (table, column and row for field operations; key scope and version for key
//! operations; store, record and field for a key-store row). No variant carries plaintext or
//! key bytes, and the decryption failure is deliberately opaque: it never says whether the tag,
//! the key or the context was wrong, so it cannot serve as an oracle.
//!
//! Each failure class has its own variant, so a caller (the migrator's exit codes, an
//! application's retry logic) matches on the variant, never on the message: a mistake in the
//! caller's arguments is [`Error::InvalidInput`]; a key-store row that cannot be read back is
//! [`Error::KeyStoreCorrupt`]; an unusable schema manifest is [`Error::Manifest`]; an adopted
//! column's row with no value yet is [`Error::NotBackfilled`]; a broken invariant inside
//! leakless is [`Error::Internal`].
//!
//! # Per-module errors
//!
//! As rustls keeps its `CertificateError` beside its `Error`, four modules have an error of
//! their own, for callers that use the module on its own. Each says whether and how it becomes
//! an [`Error`]:
//!
//! | error | returned by | into [`Error`] |
//! |---|---|---|
//! | [`ShamirError`](crate::kms::shamir::ShamirError) | [`kms::shamir`](crate::kms::shamir) (split, combine, share files) | none: the ceremony functions return it and no key-ring operation does (the error floor does not import the KMS floor, `runtime/tests/suite/layering.rs`); `leakless-migrate` maps it to its exit codes itself |
//! | [`ParseError`](crate::envelope::ParseError) | [`envelope::inspect`](crate::envelope::inspect), which knows no field | [`ParseError::at`](crate::envelope::ParseError::at) adds the field: [`Error::NotAnEnvelope`], [`Error::UnknownFormatVersion`], [`Error::UnknownAlgorithm`], [`Error::Truncated`], [`Error::Malformed`] |
//! | [`AeadFailure`](crate::aead::AeadFailure) | the raw AEAD calls of [`aead`](crate::aead) | the key ring turns it into [`Error::DecryptionFailed`] (opening) or [`Error::SealFailed`] (sealing), naming the field and nothing more |
//! | [`retry::Failure`](crate::kms::retry::Failure) | not returned: a KMS backend reports one failed attempt to [`RetryPolicy::run`](crate::kms::RetryPolicy::run) | the policy returns [`Error::Kms`] (a permanent failure) or [`Error::KmsUnavailable`] (retries used up) |

use std::path::PathBuf;

use crate::context::FieldLocation;
use crate::key::{KekState, KekVersion, KeyScope};

/// Everything that can go wrong in leakless.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The value does not start with the leakless envelope magic bytes `"LK"`. It is not an
    /// envelope at all (plaintext, another format, or a truncated prefix).
    #[error("{location}: not a leakless envelope (bad magic bytes)")]
    NotAnEnvelope {
        /// The field that was being opened.
        location: FieldLocation,
    },

    /// The envelope's format version byte is one this build does not know.
    #[error("{location}: unknown envelope format version {version}")]
    UnknownFormatVersion {
        /// The field that was being opened.
        location: FieldLocation,
        /// The version byte found.
        version: u8,
    },

    /// The envelope names an AEAD, key-wrap or padding algorithm this build does not know.
    #[error("{location}: unknown {kind} algorithm id 0x{id:02x}")]
    UnknownAlgorithm {
        /// The field that was being opened.
        location: FieldLocation,
        /// Which algorithm slot: `"data AEAD"` or `"padding"`.
        kind: &'static str,
        /// The identifier byte found.
        id: u8,
    },

    /// The envelope ends before a field its header announces.
    #[error("{location}: truncated envelope: {part} needs {needed} more bytes, {available} left")]
    Truncated {
        /// The field that was being opened.
        location: FieldLocation,
        /// The envelope part that did not fit.
        part: &'static str,
        /// Bytes the part needs.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },

    /// The envelope being opened is structurally invalid in another way (bad key-scope name,
    /// padding).
    #[error("{location}: malformed envelope: {problem}")]
    Malformed {
        /// The field that was being opened.
        location: FieldLocation,
        /// What is wrong, without any value bytes.
        problem: &'static str,
    },

    /// Sealing a value failed inside the AEAD or the DEK wrap (a length the cipher refuses).
    /// Nothing was written; the plaintext copy was zeroized.
    #[error("{location}: sealing failed: {problem}")]
    SealFailed {
        /// The field that was being sealed.
        location: FieldLocation,
        /// Which step failed, without any value bytes.
        problem: &'static str,
    },

    /// Authentication failed: wrong key, wrong context, or tampered ciphertext. Deliberately
    /// says no more than that.
    #[error("{location}: decryption failed (wrong key, wrong context, or tampered data)")]
    DecryptionFailed {
        /// The field that was being opened.
        location: FieldLocation,
    },

    /// The envelope names another key scope than the one the field's row must use: a value
    /// sealed for another tenant or table and placed here. Checked before any key is fetched.
    #[error(
        "{location}: envelope is sealed under key scope {found}, but this field must use {expected}"
    )]
    WrongKeyScope {
        /// The field that was being opened.
        location: FieldLocation,
        /// The scope the row must use (the model's scope, or its tenant's).
        expected: KeyScope,
        /// The scope the envelope's header names.
        found: KeyScope,
    },

    /// The key store holds no such KEK version for the scope.
    #[error("{}key {scope} {version}: no such KEK version in the key store", at(location.as_deref()))]
    KeyVersionNotFound {
        /// The field being opened or re-wrapped; `None` for a key operation without one.
        /// Boxed to keep [`Error`] small.
        location: Option<Box<FieldLocation>>,
        /// Key scope.
        scope: KeyScope,
        /// The version asked for.
        version: KekVersion,
    },

    /// The key store holds no KEK at all for the scope.
    #[error("key scope {scope}: not found in the key store (create it first)")]
    ScopeNotFound {
        /// Key scope.
        scope: KeyScope,
    },

    /// The scope already exists (on create).
    #[error("key scope {scope}: already exists")]
    ScopeExists {
        /// Key scope.
        scope: KeyScope,
    },

    /// The KEK version was destroyed: its material is gone and what it sealed is unreadable.
    #[error(
        "{}key {scope} {version}: destroyed (crypto-shredded); values under it cannot be opened",
        at(location.as_deref())
    )]
    KeyDestroyed {
        /// The field being opened or re-wrapped; `None` for a key operation without one.
        /// Boxed to keep [`Error`] small.
        location: Option<Box<FieldLocation>>,
        /// Key scope.
        scope: KeyScope,
        /// The destroyed version.
        version: KekVersion,
    },

    /// The KEK version exists but its state forbids the operation (e.g. opening under a
    /// retired key, or a grace period that has ended).
    #[error(
        "{}key {scope} {version}: is {state}, which does not allow {operation}",
        at(location.as_deref())
    )]
    KeyWrongState {
        /// The field being opened or re-wrapped; `None` for a key operation without one.
        /// Boxed to keep [`Error`] small.
        location: Option<Box<FieldLocation>>,
        /// Key scope.
        scope: KeyScope,
        /// The version.
        version: KekVersion,
        /// Its effective state now.
        state: KekState,
        /// What was attempted (`"open"`, `"seal"`, `"retire"`, ...).
        operation: &'static str,
    },

    /// The scope has no active KEK version to seal with.
    #[error("key scope {scope}: has no active KEK version")]
    NoActiveKey {
        /// Key scope.
        scope: KeyScope,
    },

    /// Another process changed the key record between our read and our write; nothing was
    /// written. Retry the operation.
    #[error("key {scope} {version}: changed concurrently; nothing was written, retry")]
    ConcurrentModification {
        /// Key scope.
        scope: KeyScope,
        /// The version.
        version: KekVersion,
    },

    /// A KMS backend failed. `detail` comes from the backend and never holds key bytes or
    /// credentials.
    #[error("KMS {backend}: {operation} failed: {detail}")]
    Kms {
        /// Backend name (`"local"`, ...).
        backend: &'static str,
        /// Operation (`"wrap KEK"`, `"unwrap KEK"`, ...).
        operation: &'static str,
        /// What went wrong.
        detail: String,
    },

    /// A network KMS backend stayed unreachable, slow or throttling through every retry (see
    /// `leakless::kms::RetryPolicy`). Nothing was wrapped or unwrapped. `detail` is the last
    /// attempt's failure and never holds key bytes, tokens or credentials.
    #[error(
        "KMS {backend}: {operation} failed after {attempts} attempt(s) in {elapsed_ms} ms \
         ({}): {detail}; check that the backend is reachable, then retry",
        if *throttled { "throttled" } else { "unreachable or timing out" }
    )]
    KmsUnavailable {
        /// Backend name (`"vault"`, `"aws-kms"`, ...).
        backend: &'static str,
        /// Operation (`"wrap KEK"`, `"unwrap KEK"`, ...).
        operation: &'static str,
        /// How many attempts were made (the first call included).
        attempts: u32,
        /// Time spent from the first attempt to giving up, in milliseconds.
        elapsed_ms: u64,
        /// Whether the last failure was the backend throttling us (HTTP 429,
        /// `ThrottlingException`) rather than being down or slow.
        throttled: bool,
        /// What the last attempt saw.
        detail: String,
    },

    /// A key store failed.
    #[error("key store {store}: {operation} failed: {detail}")]
    KeyStore {
        /// Store name (`"file"`, `"sqlite"`, `"postgres"`, `"mysql"`).
        store: &'static str,
        /// Operation.
        operation: &'static str,
        /// What went wrong (never a connection password).
        detail: String,
    },

    /// A key file could not be used (missing, wrong size, or readable by group or others).
    #[error("key file {}: {problem}", path.display())]
    KeyFile {
        /// The file's path.
        path: PathBuf,
        /// What is wrong with it, and what to do.
        problem: String,
    },

    /// The caller passed something unusable: an argument (a scope name, a context, a policy,
    /// a KMS configuration, a key-store URL) or a value (one with no encoding, such as a NaN
    /// inside JSON; opened bytes that are not the field's Rust type). Fixing the call fixes it.
    #[error("invalid {what}: {problem}")]
    InvalidInput {
        /// What was invalid.
        what: &'static str,
        /// Why.
        problem: String,
    },

    /// A key-store row cannot be read back as the key record or audit entry it must be: a
    /// column holds a value leakless never writes (a negative version, an unknown state name,
    /// an authentication tag of the wrong length, one half of a pair of columns). Someone
    /// edited the store outside leakless, or it was damaged; nothing was sealed or opened
    /// with it.
    #[error("key store {store}: stored {record} is corrupt: {field}: {problem}")]
    KeyStoreCorrupt {
        /// Store name (`"file"`, `"sqlite"`, `"postgres"`, `"mysql"`).
        store: &'static str,
        /// Which row, as far as it can be read: `"key record patients v3"`, `"audit entry of
        /// patients v3"`.
        record: String,
        /// The column or field that holds the unusable value.
        field: &'static str,
        /// What is wrong with it (never key material).
        problem: String,
    },

    /// The schema manifest cannot be used: its file is missing or unreadable, it is not JSON,
    /// or it is not a valid manifest (unknown format, a name used twice, an invalid scope).
    #[error("schema manifest{}: {problem}", in_file(path.as_deref()))]
    Manifest {
        /// The manifest's file, when it was read from one.
        path: Option<PathBuf>,
        /// The first problem, and where it is (table, column, JSON line and column).
        problem: String,
    },

    /// A row of an adopted column has no value this build can read, and a default would be a
    /// silent lie: the sealed column is NULL and the adoption stage reads no plaintext (the row
    /// was not backfilled), or a field moving between columns is NULL in both (the copy has
    /// not reached the row). `problem` names the step of `docs/adoption.md` that fills it.
    #[error("{location}: {problem}")]
    NotBackfilled {
        /// The sealed column and row.
        location: FieldLocation,
        /// What is missing and what to run.
        problem: String,
    },

    /// The scope has used every KEK version number; it cannot be rotated again. Seal new data
    /// under a new scope.
    #[error("key scope {scope}: has used every KEK version number; it cannot be rotated again")]
    VersionsExhausted {
        /// Key scope.
        scope: KeyScope,
    },

    /// An invariant inside leakless broke: a bug, not a mistake in the caller's input or data.
    /// Nothing was written. Report it with the message (it holds no value or key material).
    #[error("internal error in {what}: {problem} (a bug in leakless; please report it)")]
    Internal {
        /// The operation whose invariant broke.
        what: &'static str,
        /// Which invariant.
        problem: String,
    },

    /// A key record or audit entry failed verification against the root of trust: someone
    /// who can write the key store edited, swapped, replayed or deleted it (or the store
    /// predates authenticated records). Nothing is sealed or opened with it.
    #[error("key store tampered{}: {what}", describe_key(.scope.as_ref(), *.version))]
    KeyStoreTampered {
        /// The scope of the record or audit entry, when known.
        scope: Option<KeyScope>,
        /// Its version, when known.
        version: Option<KekVersion>,
        /// What failed verification, and where (e.g. the audit entry's sequence number).
        what: String,
    },

    /// A retire or destroy came before every application cache can have noticed that the
    /// version stopped being active: a running process may still seal under it until then.
    #[error(
        "key {scope} {version}: too early to {operation}: applications may still seal under it \
         until their cache window ends; allowed from {allowed_at}"
    )]
    KeyChangeTooEarly {
        /// Key scope.
        scope: KeyScope,
        /// The version.
        version: KekVersion,
        /// `"retire"` or `"destroy"`.
        operation: &'static str,
        /// From when the change is allowed.
        allowed_at: crate::key::UnixTime,
    },
}

fn describe_key(scope: Option<&KeyScope>, version: Option<KekVersion>) -> String {
    match (scope, version) {
        (Some(s), Some(v)) => format!(" at {s} {v}"),
        (Some(s), None) => format!(" at {s}"),
        _ => String::new(),
    }
}

/// `" <path>"` for a manifest read from a file, else nothing.
fn in_file(path: Option<&std::path::Path>) -> String {
    path.map_or_else(String::new, |p| format!(" {}", p.display()))
}

/// `"<location>: "` for a key error raised while handling a field, else nothing.
fn at(location: Option<&FieldLocation>) -> String {
    location.map_or_else(String::new, |l| format!("{l}: "))
}

impl Error {
    /// Names the field a key error ([`Error::KeyVersionNotFound`], [`Error::KeyDestroyed`],
    /// [`Error::KeyWrongState`]) happened for, the way [`crate::envelope::ParseError::at`]
    /// does for parse errors. Other errors are returned unchanged.
    #[must_use]
    pub(crate) fn in_field(mut self, field: FieldLocation) -> Self {
        match &mut self {
            Error::KeyVersionNotFound { location, .. }
            | Error::KeyDestroyed { location, .. }
            | Error::KeyWrongState { location, .. } => *location = Some(Box::new(field)),
            _ => {}
        }
        self
    }
}

/// The runtime's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
