//! The key vocabulary, the ground floor of the runtime: scopes, versions, lifecycle states,
//! stored records, audit entries and the clock.
//!
//! Everything else builds on these plain types: the [envelope](crate::envelope) names a scope
//! and version, [key stores](crate::store) keep [`KekRecord`]s and [`AuditRecord`]s,
//! [KMS backends](crate::kms) wrap KEKs bound to a scope and version, and the
//! [`KeyRing`](crate::KeyRing) (the one writer of key records) moves versions through their
//! lifecycle. This module imports nothing from those layers above it.

mod clock;

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

pub use clock::{Clock, ManualClock, SystemClock, UnixTime};

use crate::error::Error;

/// The name of a key scope: the unit that owns one KEK lineage (a table, a tenant, a subject).
///
/// 1 to 64 bytes of ASCII letters, digits and `_ - . : /`. Destroying a scope's KEK versions
/// crypto-shreds everything sealed under it, so per-tenant scopes make per-tenant erasure cheap.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyScope(Arc<str>);

impl KeyScope {
    /// The longest scope name, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Validates and wraps a scope name.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the rule the name breaks.
    pub fn new(name: &str) -> Result<Self, Error> {
        if Self::is_valid(name) {
            Ok(Self(Arc::from(name)))
        } else {
            Err(Error::InvalidInput {
                what: "key scope name",
                problem: format!(
                    "{:?} must be 1 to {} bytes of ASCII letters, digits and _ - . : /",
                    name.escape_debug().to_string(),
                    Self::MAX_LEN
                ),
            })
        }
    }

    /// Whether `name` is a valid scope name.
    #[must_use]
    pub fn is_valid(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.:/".contains(&b))
    }

    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for KeyScope {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyScope({:?})", &*self.0)
    }
}

/// A KEK version number within a scope, starting at 1. Printed as `v1`, `v2`, ...
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KekVersion(u32);

impl KekVersion {
    /// The first version of every scope.
    pub const FIRST: KekVersion = KekVersion(1);

    /// Wraps a version number.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for 0, which is never a version.
    pub fn new(v: u32) -> Result<Self, Error> {
        if v == 0 {
            Err(Error::InvalidInput {
                what: "KEK version",
                problem: "versions start at 1".into(),
            })
        } else {
            Ok(Self(v))
        }
    }

    /// The number.
    #[must_use]
    pub fn get(self) -> u32 {
        self.0
    }

    /// The next version, or `None` after `u32::MAX`.
    #[must_use]
    pub fn next(self) -> Option<Self> {
        self.0.checked_add(1).map(Self)
    }
}

impl fmt::Display for KekVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// The lifecycle state of one KEK version (see the [key ring docs](crate::keyring)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KekState {
    /// Seals and opens. One per scope.
    Active,
    /// Opens (and can be re-wrapped from) until `until`; never seals.
    Grace {
        /// The deadline; from this second on the version opens nothing.
        until: UnixTime,
    },
    /// Opens nothing; material kept so the migrator can report and a mistake can be undone.
    Retired,
    /// Material erased. Terminal.
    Destroyed,
}

impl KekState {
    /// The state's stored name: `active`, `grace`, `retired` or `destroyed`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            KekState::Active => "active",
            KekState::Grace { .. } => "grace",
            KekState::Retired => "retired",
            KekState::Destroyed => "destroyed",
        }
    }

    /// Rebuilds a state from its stored name and grace deadline.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an unknown name, or `grace` without a deadline.
    pub fn from_parts(name: &str, grace_until: Option<i64>) -> Result<Self, Error> {
        match (name, grace_until) {
            ("active", _) => Ok(KekState::Active),
            ("grace", Some(t)) => Ok(KekState::Grace { until: UnixTime(t) }),
            ("retired", _) => Ok(KekState::Retired),
            ("destroyed", _) => Ok(KekState::Destroyed),
            _ => Err(Error::InvalidInput {
                what: "stored KEK state",
                problem: format!("unknown state {name:?} (grace deadline: {grace_until:?})"),
            }),
        }
    }

    /// The grace deadline, for `Grace`.
    #[must_use]
    pub fn grace_until(&self) -> Option<UnixTime> {
        match self {
            KekState::Grace { until } => Some(*until),
            _ => None,
        }
    }

    /// Whether a value under this version may be opened at `now`.
    #[must_use]
    pub fn opens_at(&self, now: UnixTime) -> bool {
        match self {
            KekState::Active => true,
            KekState::Grace { until } => now < *until,
            KekState::Retired | KekState::Destroyed => false,
        }
    }
}

impl fmt::Display for KekState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KekState::Grace { until } => write!(f, "grace until {until}"),
            other => f.write_str(other.name()),
        }
    }
}

/// A KEK wrapped by a root key: what a key store holds. Not secret on its own, but `Debug`
/// prints only the root key id and the length anyway.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKek {
    /// Which root key wrapped it (the [`Kms::root_key_id`](crate::kms::Kms::root_key_id) of
    /// the backend that made it).
    pub root_key_id: String,
    /// The backend's ciphertext.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for WrappedKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "WrappedKek {{ root_key_id: {:?}, {} bytes }}",
            self.root_key_id,
            self.ciphertext.len()
        )
    }
}

/// One KEK version as a key store keeps it. `Debug` shows the wrapped material only as its
/// root key id and length.
#[derive(Clone, PartialEq, Eq)]
pub struct KekRecord {
    /// Its scope.
    pub scope: KeyScope,
    /// Its version.
    pub version: KekVersion,
    /// Its lifecycle state.
    pub state: KekState,
    /// The wrapped material; `None` once destroyed.
    pub wrapped: Option<WrappedKek>,
    /// When it was created.
    pub created_at: UnixTime,
    /// When its state or wrapping last changed.
    pub updated_at: UnixTime,
    /// When it stopped being the active version of its scope (set by a rotation); `None` while
    /// it is active, and for records that predate this field.
    pub deactivated_at: Option<UnixTime>,
    /// The cache window, in seconds, that applications holding this version use for the
    /// *active-version* decision: a process re-reads which version is active at least this
    /// often. Retiring or destroying the version waits this long after it was deactivated
    /// (see [`KekRecord::change_allowed_at`]). Set from the creating ring's cache policy.
    pub recheck_secs: u32,
    /// The record's authentication by the root of trust: its position in the audit chain and
    /// its tag. `None` for a record that predates authenticated key stores (the key ring
    /// refuses it; `leakless-migrate keys upgrade` authenticates such a store once).
    pub auth: Option<Auth>,
}

impl KekRecord {
    /// The earliest time a version deactivated at `deactivated_at` may be retired or destroyed:
    /// every application cache must have re-read the active version by then, and a value
    /// sealed just before must have been committed. The margin after the window is a tenth of
    /// the window, at least one second.
    #[must_use]
    pub fn change_allowed_at(&self) -> Option<UnixTime> {
        let window = i64::from(self.recheck_secs);
        let margin = (window / 10).max(1);
        self.deactivated_at
            .map(|t| UnixTime(t.0.saturating_add(window).saturating_add(margin)))
    }
}

/// The cache window assumed for records stored before the window was recorded: the default
/// KEK cache age, five minutes.
pub const LEGACY_RECHECK_SECS: u32 = 300;

/// The authentication of a key record or audit entry: its sequence number in the key store's
/// audit chain and an HMAC-SHA256 tag under the store's integrity key, which only the root of
/// trust can unwrap. The exact inputs are specified in `docs/key-store-format.md`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Auth {
    /// For an audit entry: its position in the chain, from 1. For a record: the sequence
    /// number of the audit entry that produced its current content.
    pub seq: u64,
    /// The HMAC-SHA256 tag.
    pub tag: [u8; 32],
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The tag is not secret, but it is noise in logs: show its first bytes only.
        write!(
            f,
            "Auth {{ seq: {}, tag: {}.. }}",
            self.seq,
            hex::encode(self.tag.get(..4).unwrap_or_default())
        )
    }
}

/// What a key-management call did, as the audit log names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyAction {
    /// A scope was created with its first active version.
    CreateScope,
    /// A new active version was made; the old one moved to grace or retired.
    Rotate,
    /// A grace version was retired by hand.
    Retire,
    /// A grace version's deadline passed and it was retired by the sweep.
    ExpireGrace,
    /// A retired version was put back into grace, or a grace deadline was moved.
    Reinstate,
    /// A retired version's material was erased.
    Destroy,
    /// The version was re-wrapped under a new root key.
    RewrapRoot,
    /// An existing, unauthenticated key store was authenticated (`keys upgrade`): the
    /// version's record got its first tag. Trust on first use.
    Authenticate,
    /// A destroyed version's shred was completed: the root epoch that wraps old copies of it
    /// was destroyed in the backend.
    Shred,
    /// A destroyed version's shred was completed on this side, and the backend refuses the old
    /// root epoch, but deletes it only later (AWS KMS pending window).
    ShredScheduled,
}

impl KeyAction {
    /// The action's stored name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            KeyAction::CreateScope => "create_scope",
            KeyAction::Rotate => "rotate",
            KeyAction::Retire => "retire",
            KeyAction::ExpireGrace => "expire_grace",
            KeyAction::Reinstate => "reinstate",
            KeyAction::Destroy => "destroy",
            KeyAction::RewrapRoot => "rewrap_root",
            KeyAction::Authenticate => "authenticate",
            KeyAction::Shred => "shred",
            KeyAction::ShredScheduled => "shred_scheduled",
        }
    }

    /// Parses [`Self::name`]'s output.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "create_scope" => KeyAction::CreateScope,
            "rotate" => KeyAction::Rotate,
            "retire" => KeyAction::Retire,
            "expire_grace" => KeyAction::ExpireGrace,
            "reinstate" => KeyAction::Reinstate,
            "destroy" => KeyAction::Destroy,
            "rewrap_root" => KeyAction::RewrapRoot,
            "authenticate" => KeyAction::Authenticate,
            "shred" => KeyAction::Shred,
            "shred_scheduled" => KeyAction::ShredScheduled,
            _ => return None,
        })
    }
}

impl fmt::Display for KeyAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Who asks for a key-management change, and why. Recorded in the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditInfo {
    /// The person or system acting (a user name, a service account, `"ci"`).
    pub actor: String,
    /// Why (a ticket, "scheduled rotation", "suspected exposure").
    pub reason: String,
}

impl AuditInfo {
    /// Builds an audit info.
    #[must_use]
    pub fn new(actor: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            reason: reason.into(),
        }
    }
}

/// One line of the key audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// When.
    pub at: UnixTime,
    /// Who.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// What.
    pub action: KeyAction,
    /// The scope.
    pub scope: KeyScope,
    /// The version whose state changed.
    pub version: KekVersion,
    /// Its state before (`None` when it was created).
    pub from: Option<KekState>,
    /// Its state after.
    pub to: KekState,
    /// Its place in the audit chain and its tag; `None` for entries that predate
    /// authenticated key stores.
    pub auth: Option<Auth>,
}

/// An update of one existing record, applied only if the stored record still equals `before`
/// in state, grace deadline and wrapped material (compare-and-swap).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordUpdate {
    /// The record as read.
    pub before: KekRecord,
    /// The record to write.
    pub after: KekRecord,
}

/// One atomic key-store change: all of it is written, or none of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreChange {
    /// New records; each must not exist yet.
    pub inserts: Vec<KekRecord>,
    /// Compare-and-swap updates of existing records.
    pub updates: Vec<RecordUpdate>,
    /// The audit records describing the change.
    pub audit: Vec<AuditRecord>,
}

impl fmt::Debug for KekRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KekRecord")
            .field("scope", &self.scope)
            .field("version", &self.version)
            .field("state", &self.state)
            // WrappedKek's own Debug prints the root key id and a length, never bytes.
            .field("wrapped", &self.wrapped)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field("deactivated_at", &self.deactivated_at)
            .field("recheck_secs", &self.recheck_secs)
            .field("auth", &self.auth)
            .finish()
    }
}
