//! An in-memory key store: for tests and throwaway processes. It forgets everything on drop,
//! which crypto-shreds every value sealed under it.

use std::sync::{Mutex, PoisonError};

use crate::error::Error;
use crate::key::{AuditRecord, KekRecord, KekVersion, KeyScope, StoreChange};
use crate::store::{KeyStore, StoreState};

/// Wrapped KEK records in memory. Nothing persists. `Debug` prints record counts only.
#[derive(Default)]
pub struct MemoryKeyStore {
    state: Mutex<StoreState>,
}

impl MemoryKeyStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, StoreState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl KeyStore for MemoryKeyStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn list(&self, scope: &KeyScope) -> Result<Vec<KekRecord>, Error> {
        Ok(self.state().list(scope))
    }

    fn get(&self, scope: &KeyScope, version: KekVersion) -> Result<Option<KekRecord>, Error> {
        Ok(self.state().records.get(&(scope.clone(), version)).cloned())
    }

    fn scopes(&self) -> Result<Vec<KeyScope>, Error> {
        Ok(self.state().scopes())
    }

    fn apply(&self, change: StoreChange) -> Result<(), Error> {
        // The same record invariants the file store keeps: a change that would break one
        // (two active versions, a destroyed record with material) leaves the store as it was.
        let mut state = self.state();
        let mut next = state.clone();
        next.apply(change)?;
        next.check_invariants("memory", "apply")?;
        *state = next;
        Ok(())
    }

    fn audit_log(&self, scope: Option<&KeyScope>) -> Result<Vec<AuditRecord>, Error> {
        Ok(self.state().audit_log(scope))
    }
}

impl std::fmt::Debug for MemoryKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state();
        f.debug_struct("MemoryKeyStore")
            .field("records", &state.records.len())
            .field("audit_records", &state.audit.len())
            .finish()
    }
}
