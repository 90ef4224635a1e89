//! The migrator's error: what went wrong, what to do, and the exit code it maps to.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | a check failed or the migrator refused: `verify` found envelopes that do not open, `destroy` found rows still on the version, `retire`/`destroy`/`expire-grace` found blind-index tokens on the version, `retire`/`destroy` came inside the cache window, `keys audit --verify` found tampering, a confirmation was declined or missing, rows failed during `rewrap`/`adopt`/`copy`/`reencrypt`/`reindex`; an internal error (a bug) |
//! | 2 | usage: bad arguments, a bad or missing manifest, an unknown table or column |
//! | 3 | keys: no root key given, the root key, KMS or key store failed, a key-store row cannot be read back (corrupt), or the key state forbids the action |
//! | 4 | database: cannot connect, or a statement failed (rerunning is safe) |
//! | 5 | a concurrent change won a race (another process rotated the same scope); nothing was written, rerun |

use std::fmt;
use std::process::ExitCode;

use leakless::kms::shamir::ShamirError;

use crate::kms::Backend;

/// What kind of failure, which decides the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Exit 1: a verification failed or the migrator refused.
    Refused,
    /// Exit 2: bad usage.
    Usage,
    /// Exit 3: root key, KMS, key store, or key state.
    Keys,
    /// Exit 4: the database.
    Database,
    /// Exit 5: lost a race; nothing written; rerun.
    Conflict,
}

impl Kind {
    /// The process exit code.
    #[must_use]
    pub fn code(self) -> u8 {
        match self {
            Kind::Refused => 1,
            Kind::Usage => 2,
            Kind::Keys => 3,
            Kind::Database => 4,
            Kind::Conflict => 5,
        }
    }
}

/// A failure: a line saying what went wrong and a line saying what to do.
#[derive(Debug)]
pub struct Failure {
    /// The kind (exit code).
    pub kind: Kind,
    /// What went wrong. Never holds plaintext, key bytes or a password.
    pub what: String,
    /// What to do about it.
    pub help: String,
}

impl Failure {
    /// Builds a failure.
    #[must_use]
    pub fn new(kind: Kind, what: impl Into<String>, help: impl Into<String>) -> Self {
        Self {
            kind,
            what: what.into(),
            help: help.into(),
        }
    }

    /// The exit code.
    #[must_use]
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.kind.code())
    }

    /// The failure as one JSON object, what `--json` prints on stderr instead of the two
    /// text lines: `{"error": ..., "help": ..., "exit_code": ...}`.
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "error": self.what,
            "help": self.help,
            "exit_code": self.kind.code(),
        })
        .to_string()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}\nhelp: {}", self.what, self.help)
    }
}

impl std::error::Error for Failure {}

impl From<leakless::Error> for Failure {
    fn from(e: leakless::Error) -> Self {
        use leakless::Error as E;
        let what = e.to_string();
        match e {
            E::ConcurrentModification { .. } => Failure::new(
                Kind::Conflict,
                what,
                "another process changed the same key at the same time; nothing was written, \
                 run the command again",
            ),
            E::KeyStoreTampered { .. } => Failure::new(
                Kind::Refused,
                what,
                "someone who can write the key store changed it behind the key ring's back; \
                 nothing was sealed or opened with it. Run `leakless-migrate keys audit \
                 --verify` to see where, restore the key store from a trusted copy, and treat \
                 the database credentials as leaked (docs/operations.md, \"Tampered key store\")",
            ),
            E::KeyChangeTooEarly {
                scope,
                version,
                operation,
                allowed_at,
            } => Failure::new(
                Kind::Refused,
                what,
                format!(
                    "wait until {allowed_at}, then run `leakless-migrate rewrap` once more (rows \
                     sealed by warm caches meanwhile move too) and retry; or pass --force to \
                     {operation} {scope} {version} now: values that running applications seal \
                     under it until then will not open"
                ),
            ),
            E::ScopeNotFound { .. } => Failure::new(
                Kind::Keys,
                what,
                "list the scopes with `leakless-migrate keys list`, or create it with \
                 `leakless-migrate keys create-scope`",
            ),
            E::KeyWrongState { .. } => Failure::new(
                Kind::Keys,
                what,
                "see the versions and their states with `leakless-migrate keys list`; a \
                 retired version can be put back into grace with `keys reinstate`",
            ),
            E::Kms { backend, .. } | E::KmsUnavailable { backend, .. } => Failure::new(
                Kind::Keys,
                what,
                Backend::from_runtime_name(backend).map_or(
                    "check the --kms backend's settings (docs/kms.md)",
                    Backend::help,
                ),
            ),
            E::KeyFile { .. } => Failure::new(
                Kind::Keys,
                what,
                "check the file named: the root key file (--root-key-file), the Vault token \
                 file (--vault-token-file) or the TPM sealed file (--tpm-sealed-file); key \
                 and token files must be mode 0600",
            ),
            E::KeyStore { .. } => Failure::new(
                Kind::Keys,
                what,
                "check --key-store (default: the database's own leakless_kek table) and that \
                 it is reachable",
            ),
            E::InvalidInput { .. } => Failure::new(Kind::Usage, what, "fix the argument named"),
            E::Manifest { .. } => Failure::new(
                Kind::Usage,
                what,
                "fix the manifest (--manifest or LEAKLESS_MANIFEST; docs/operations.md shows \
                 its shape)",
            ),
            E::KeyStoreCorrupt { .. } => Failure::new(
                Kind::Keys,
                what,
                "the key store holds a row leakless never writes (edited outside leakless, or \
                 damaged); nothing was sealed or opened with it. Restore the row named from a \
                 backup of the key store, then run `leakless-migrate keys audit --verify`",
            ),
            E::VersionsExhausted { .. } => Failure::new(
                Kind::Keys,
                what,
                "create a new scope with `leakless-migrate keys create-scope` and seal new \
                 values under it",
            ),
            E::NotBackfilled { .. } => Failure::new(
                Kind::Refused,
                what,
                "finish the column's adoption step named (docs/adoption.md) before a build \
                 that reads only the sealed column",
            ),
            E::SealFailed { .. } => Failure::new(
                Kind::Refused,
                what,
                "the AEAD refused to seal this value; nothing was written. Report it as a bug \
                 with the error line (it holds no value)",
            ),
            E::Internal { .. } => Failure::new(
                Kind::Refused,
                what,
                "nothing was written; report it as a bug with these two lines (they hold no \
                 value or key material)",
            ),
            _ => Failure::new(
                Kind::Keys,
                what,
                "see `leakless-migrate keys list` for the key states",
            ),
        }
    }
}

impl From<ShamirError> for Failure {
    fn from(e: ShamirError) -> Self {
        let kind = match e {
            ShamirError::InvalidParameters { .. } => Kind::Usage,
            _ => Kind::Keys,
        };
        let help = match &e {
            ShamirError::InvalidParameters { .. } => {
                "pick 2 <= --threshold <= --shares <= 255".to_owned()
            }
            ShamirError::BelowThreshold { need, .. } => {
                format!("collect at least {need} shares from their custodians and run again")
            }
            ShamirError::Io { .. } => "check the path and its permissions".to_owned(),
            ShamirError::Token { .. } => {
                "check the token label, its PIN file and --pkcs11-module".to_owned()
            }
            _ => "leave the named share out and use another custodian's, or ask its custodian \
                  for an intact copy"
                .to_owned(),
        };
        Failure::new(kind, e.to_string(), help)
    }
}

/// The migrator's result type.
pub type Result<T, E = Failure> = std::result::Result<T, E>;
