//! Re-wrapping stored KEK records inside a network KMS, without the KEK leaving it: Vault
//! Transit `rewrap` (onto the newest Transit key version) and AWS KMS `ReEncrypt` (onto another
//! KMS key). Each record is one compare-and-swap store change with its audit record, so an
//! interrupted run is simply repeated.

use crate::error::Error;
use crate::keyring::{
    AuditInfo, AuditRecord, Clock, KeyAction, RecordUpdate, StoreChange, SystemClock, WrappedKek,
};
use crate::kms::KekBinding;
use crate::store::KeyStore;

/// For every stored record with material for which `needs` says yes, asks `rewrap` for the new
/// wrapped form and writes it. Returns how many records were re-wrapped.
pub(crate) fn rewrap_store_records(
    store: &dyn KeyStore,
    who: &AuditInfo,
    needs: impl Fn(&WrappedKek) -> bool,
    mut rewrap: impl FnMut(&WrappedKek, &KekBinding<'_>) -> Result<WrappedKek, Error>,
) -> Result<usize, Error> {
    let mut count = 0usize;
    for scope in store.scopes()? {
        for record in store.list(&scope)? {
            let Some(wrapped) = &record.wrapped else {
                continue;
            };
            if !needs(wrapped) {
                continue;
            }
            let binding = KekBinding {
                scope: &record.scope,
                version: record.version,
            };
            let rewrapped = rewrap(wrapped, &binding)?;
            let now = SystemClock.now();
            let mut after = record.clone();
            after.wrapped = Some(rewrapped);
            after.updated_at = now;
            let audit = AuditRecord {
                at: now,
                actor: who.actor.clone(),
                reason: who.reason.clone(),
                action: KeyAction::RewrapRoot,
                scope: record.scope.clone(),
                version: record.version,
                from: Some(record.state),
                to: record.state,
            };
            store.apply(StoreChange {
                inserts: vec![],
                updates: vec![RecordUpdate {
                    before: record,
                    after,
                }],
                audit: vec![audit],
            })?;
            count = count.saturating_add(1);
        }
    }
    Ok(count)
}
