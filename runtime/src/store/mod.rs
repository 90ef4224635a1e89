//! Key stores: where wrapped KEK records and the key audit log rest.
//!
//! A store keeps only what a KMS wrapped; it never sees a KEK in the clear. Stores are dumb on
//! purpose: the [`KeyRing`](crate::KeyRing) decides which transitions are legal, and a store
//! applies each [`StoreChange`] atomically with compare-and-swap on the records it updates, so
//! two processes rotating at once cannot both win.
//!
//! | store | feature | for |
//! |---|---|---|
//! | [`FileKeyStore`] | `file-store` (default) | one host; a JSON file beside the app |
//! | [`MemoryKeyStore`] | always | tests and throwaway processes; forgets everything on drop |
//! | `SqlKeyStore` | `sqlite`, `postgres`, `mysql` | the application's own database |

#[cfg(feature = "file-store")]
mod file;
mod memory;
#[cfg(feature = "sql-store")]
pub mod sql;

#[cfg(feature = "file-store")]
pub use file::FileKeyStore;
pub use memory::MemoryKeyStore;

use std::collections::BTreeMap;

use crate::error::Error;
use crate::key::{AuditRecord, KekRecord, KekState, KekVersion, KeyScope, StoreChange};

/// Why a stored state name and grace deadline are not a [`KekState`], for
/// [`Error::KeyStoreCorrupt`].
#[cfg(any(feature = "file-store", feature = "sql-store"))]
pub(crate) fn state_problem(state: &str, grace_until: Option<i64>) -> String {
    match (state, grace_until) {
        ("grace", None) => "\"grace\" without a grace deadline".to_owned(),
        _ => format!("unknown state {state:?}"),
    }
}

/// Two stored fields that are set together: `Some` of both, `None` when neither is set, or
/// `unpaired()` when only one is.
#[cfg(any(feature = "file-store", feature = "sql-store"))]
pub(crate) fn paired<A, B, E>(
    a: Option<A>,
    b: Option<B>,
    unpaired: impl FnOnce() -> E,
) -> Result<Option<(A, B)>, E> {
    match (a, b) {
        (Some(a), Some(b)) => Ok(Some((a, b))),
        (None, None) => Ok(None),
        _ => Err(unpaired()),
    }
}

/// Persistent storage of KEK records and the audit log.
///
/// # Contract
/// * [`KeyStore::apply`] writes a whole [`StoreChange`] or nothing. An insert of an existing
///   `(scope, version)` and an update whose stored record no longer equals `before` (state,
///   grace deadline, wrapped material) fail with [`Error::ConcurrentModification`].
/// * [`KeyStore::list`] returns a scope's records ordered by version, or nothing for an
///   unknown scope.
/// * Errors never contain connection passwords.
pub trait KeyStore: Send + Sync {
    /// A short name for errors and logs (`"file"`, `"memory"`, `"postgres"`, ...).
    fn name(&self) -> &'static str;

    /// All records of `scope`, ordered by version.
    ///
    /// # Errors
    /// [`Error::KeyStore`] when the store cannot be read.
    fn list(&self, scope: &KeyScope) -> Result<Vec<KekRecord>, Error>;

    /// One record.
    ///
    /// # Errors
    /// [`Error::KeyStore`] when the store cannot be read.
    fn get(&self, scope: &KeyScope, version: KekVersion) -> Result<Option<KekRecord>, Error>;

    /// Every scope that has at least one record, sorted.
    ///
    /// # Errors
    /// [`Error::KeyStore`] when the store cannot be read.
    fn scopes(&self) -> Result<Vec<KeyScope>, Error>;

    /// Applies `change` atomically (see the trait docs).
    ///
    /// # Errors
    /// [`Error::ConcurrentModification`] on a lost race, [`Error::KeyStore`] otherwise.
    fn apply(&self, change: StoreChange) -> Result<(), Error>;

    /// The audit log in the order it was written; one scope's or all.
    ///
    /// # Errors
    /// [`Error::KeyStore`] when the store cannot be read.
    fn audit_log(&self, scope: Option<&KeyScope>) -> Result<Vec<AuditRecord>, Error>;

    /// The authenticated audit entries whose sequence number is `from` or later, ordered by
    /// sequence number (the key ring verifies the chain's new part with it). Entries without
    /// authentication are included when `from` is 0. The default reads the whole log; SQL
    /// stores read only the tail.
    ///
    /// # Errors
    /// [`Error::KeyStore`] when the store cannot be read.
    fn audit_since(&self, from: u64) -> Result<Vec<AuditRecord>, Error> {
        let mut log: Vec<AuditRecord> = self
            .audit_log(None)?
            .into_iter()
            .filter(|a| a.auth.map_or(from == 0, |x| x.seq >= from))
            .collect();
        log.sort_by_key(|a| a.auth.map_or(0, |x| x.seq));
        Ok(log)
    }
}

/// Whether two records agree on what compare-and-swap compares: state (with grace deadline),
/// wrapped material and authentication.
pub(crate) fn cas_matches(stored: &KekRecord, expected: &KekRecord) -> bool {
    stored.state == expected.state
        && stored.wrapped == expected.wrapped
        && stored.auth == expected.auth
}

/// The state of an in-memory or file store.
#[derive(Clone, Debug, Default)]
pub(crate) struct StoreState {
    pub(crate) records: BTreeMap<(KeyScope, KekVersion), KekRecord>,
    pub(crate) audit: Vec<AuditRecord>,
}

impl StoreState {
    pub(crate) fn list(&self, scope: &KeyScope) -> Vec<KekRecord> {
        self.records
            .values()
            .filter(|r| &r.scope == scope)
            .cloned()
            .collect()
    }

    pub(crate) fn scopes(&self) -> Vec<KeyScope> {
        let mut scopes: Vec<KeyScope> = self.records.keys().map(|(s, _)| s.clone()).collect();
        scopes.dedup();
        scopes
    }

    pub(crate) fn audit_log(&self, scope: Option<&KeyScope>) -> Vec<AuditRecord> {
        self.audit
            .iter()
            .filter(|a| scope.is_none_or(|s| &a.scope == s))
            .cloned()
            .collect()
    }

    /// Checks the record invariants a loaded store must keep, and refuses a store that breaks
    /// one with [`Error::KeyStore`] (store `store`, operation `operation`) naming the problem:
    /// at most one `Active` version per scope; a `Destroyed` record holds no wrapped material;
    /// every other record holds some. (A `Grace` state always has its deadline: stores refuse
    /// a grace record without one when they decode it.)
    pub(crate) fn check_invariants(
        &self,
        store: &'static str,
        operation: &'static str,
    ) -> Result<(), Error> {
        let broken = |detail: String| Error::KeyStore {
            store,
            operation,
            detail: format!("refusing a key store that breaks a record invariant: {detail}"),
        };
        let mut active: Option<&KekRecord> = None;
        for r in self.records.values() {
            match (r.state, &r.wrapped) {
                (KekState::Destroyed, Some(_)) => {
                    return Err(broken(format!(
                        "{} {} is destroyed but still has wrapped material",
                        r.scope, r.version
                    )));
                }
                (KekState::Destroyed, None) | (_, Some(_)) => {}
                (state, None) => {
                    return Err(broken(format!(
                        "{} {} is {state} but has no wrapped material",
                        r.scope, r.version
                    )));
                }
            }
            if r.state == KekState::Active {
                // Records are ordered by (scope, version): an earlier active one of the same
                // scope is the last one seen.
                if let Some(a) = active.filter(|a| a.scope == r.scope) {
                    return Err(broken(format!(
                        "{} has two active versions, {} and {}",
                        r.scope, a.version, r.version
                    )));
                }
                active = Some(r);
            }
        }
        Ok(())
    }

    /// Checks every precondition first, then writes, so a failed change leaves no trace.
    pub(crate) fn apply(&mut self, change: StoreChange) -> Result<(), Error> {
        for r in &change.inserts {
            if self.records.contains_key(&(r.scope.clone(), r.version)) {
                return Err(Error::ConcurrentModification {
                    scope: r.scope.clone(),
                    version: r.version,
                });
            }
        }
        // The audit chain's compare-and-swap: the first new entry must follow the stored head.
        if let Some(first) = change.audit.first().and_then(|a| a.auth) {
            let head = self
                .audit
                .iter()
                .filter_map(|a| a.auth)
                .map(|a| a.seq)
                .max();
            if first.seq != head.unwrap_or(0).saturating_add(1)
                && let Some(a) = change.audit.first()
            {
                return Err(Error::ConcurrentModification {
                    scope: a.scope.clone(),
                    version: a.version,
                });
            }
        }
        for u in &change.updates {
            let key = (u.before.scope.clone(), u.before.version);
            if !self
                .records
                .get(&key)
                .is_some_and(|s| cas_matches(s, &u.before))
            {
                return Err(Error::ConcurrentModification {
                    scope: u.before.scope.clone(),
                    version: u.before.version,
                });
            }
        }
        for r in change.inserts {
            self.records.insert((r.scope.clone(), r.version), r);
        }
        for u in change.updates {
            self.records
                .insert((u.after.scope.clone(), u.after.version), u.after);
        }
        self.audit.extend(change.audit);
        Ok(())
    }
}
