//! Completing crypto-shreds: the key-ring half of a shred that survives backups.
//!
//! [`KeyRing::destroy`] erases a version's wrapped KEK from the key store, but every backup of
//! the store taken before still holds it, wrapped under the root key of the time. A shred is
//! complete only when that root material is gone from the backend too. [`KeyRing::complete_shred`]
//! does that for every version destroyed since the last completed shred, in one root epoch
//! change ([`RootEpochs`]): fresh root material, every surviving record moved onto it, nothing
//! left on the old one, the old one destroyed in the backend, and one audit entry per shredded
//! version saying whether the root material is gone or only scheduled for deletion.

use crate::error::Error;
use crate::key::{
    AuditInfo, AuditRecord, KekRecord, KekState, KekVersion, KeyAction, KeyScope, RecordUpdate,
    StoreChange, UnixTime,
};
use crate::keyring::KeyRing;
use crate::kms::{Destruction, EpochDestroyed, RootEpochs};

/// Where a destroyed version's shred stands, as the audit log records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShredStatus {
    /// The version's material is erased from the key store, but the root epoch that wraps old
    /// copies of it (backups) still exists: run [`KeyRing::complete_shred`].
    Pending {
        /// When the version was destroyed.
        destroyed_at: UnixTime,
    },
    /// The root epoch is refused by the backend and scheduled for deletion (AWS KMS); an
    /// administrator of the backend could still cancel the deletion until then.
    Scheduled {
        /// When the shred was completed on this side.
        at: UnixTime,
    },
    /// The root epoch is destroyed in the backend: old copies of the key store open nothing
    /// of this version.
    Complete {
        /// When.
        at: UnixTime,
    },
}

/// One destroyed version and its shred status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShredState {
    /// The scope.
    pub scope: KeyScope,
    /// The destroyed version.
    pub version: KekVersion,
    /// Where its shred stands.
    pub status: ShredStatus,
}

/// What [`KeyRing::complete_shred`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShredReport {
    /// The versions whose shred this completed (or scheduled).
    pub shredded: Vec<(KeyScope, KekVersion)>,
    /// How many surviving KEK records (the integrity key's included) moved to the new epoch.
    pub records_moved: usize,
    /// What became of the old root epoch in the backend.
    pub destroyed: EpochDestroyed,
}

/// The shred status of `record` as the audit log `log` records it; `None` unless the record
/// is destroyed. Reads `log` as given: [`KeyRing::shred_states`] verifies it first, tools that
/// only display (`leakless-migrate keys list` without the root key) may pass it unverified.
#[must_use]
pub fn shred_status(record: &KekRecord, log: &[AuditRecord]) -> Option<ShredStatus> {
    if record.state != KekState::Destroyed {
        return None;
    }
    let mut status = ShredStatus::Pending {
        destroyed_at: record.updated_at,
    };
    for a in log
        .iter()
        .filter(|a| a.scope == record.scope && a.version == record.version)
    {
        status = match a.action {
            KeyAction::Destroy => ShredStatus::Pending { destroyed_at: a.at },
            KeyAction::ShredScheduled => ShredStatus::Scheduled { at: a.at },
            KeyAction::Shred => ShredStatus::Complete { at: a.at },
            _ => status,
        };
    }
    Some(status)
}

impl std::fmt::Display for ShredStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShredStatus::Pending { destroyed_at } => {
                write!(f, "pending since {destroyed_at}")
            }
            ShredStatus::Scheduled { at } => write!(f, "root deletion scheduled {at}"),
            ShredStatus::Complete { at } => write!(f, "complete {at}"),
        }
    }
}

impl KeyRing {
    /// Every destroyed version and where its shred stands, from the verified audit log,
    /// ordered by scope and version.
    ///
    /// # Errors
    /// The store's errors and [`Error::KeyStoreTampered`].
    pub fn shred_states(&self) -> Result<Vec<ShredState>, Error> {
        self.verify_store()?;
        let log = self.inner.store.audit_log(None)?;
        let mut out: Vec<ShredState> = Vec::new();
        for scope in self.inner.store.scopes()? {
            for record in self.verified_list(&scope)? {
                if record.state != KekState::Destroyed {
                    continue;
                }
                if let Some(status) = shred_status(&record, &log) {
                    out.push(ShredState {
                        scope: record.scope.clone(),
                        version: record.version,
                        status,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Completes every pending shred in one root epoch change: makes fresh root material in
    /// the backend, moves every surviving KEK record onto it (in the KMS where the backend
    /// can), checks that no record with material is left on the old epoch, destroys the old
    /// epoch in the backend, and writes one `shred` (or `shred_scheduled`) audit entry per
    /// version whose shred this completed. Batch several destroys and run this once.
    ///
    /// `epochs` must be the backend this ring wraps with (the same object, or one built from
    /// the same configuration): applications on that configuration follow the new epoch.
    /// Returns `Ok(None)` when no shred is pending. Safe to repeat after an interruption.
    ///
    /// # Errors
    /// The backend's errors; [`Error::KeyStoreTampered`]; [`Error::ConcurrentModification`]
    /// when another process changed a record meanwhile, or wrote one under the old epoch while
    /// the move ran (nothing is destroyed then; run it again).
    pub fn complete_shred(
        &self,
        epochs: &dyn RootEpochs,
        who: &AuditInfo,
    ) -> Result<Option<ShredReport>, Error> {
        let pending: Vec<(KeyScope, KekVersion)> = self
            .shred_states()?
            .into_iter()
            .filter(|s| matches!(s.status, ShredStatus::Pending { .. }))
            .map(|s| (s.scope, s.version))
            .collect();
        if pending.is_empty() {
            return Ok(None);
        }
        let change = epochs.begin_next_epoch()?;
        let records_moved = self.rewrap_root_in_kms(change.mover(), who)?;
        for scope in self.inner.store.scopes()? {
            for record in self.verified_list(&scope)? {
                if record
                    .wrapped
                    .as_ref()
                    .is_some_and(|w| change.still_on_retiring(w))
                {
                    // Written under the old epoch while the move ran (a concurrent rotation):
                    // nothing was destroyed, and running it again moves this record too.
                    return Err(Error::ConcurrentModification {
                        scope: record.scope,
                        version: record.version,
                    });
                }
            }
        }
        let destroyed = epochs.destroy_epoch(change.retiring())?;
        let (action, note) = match destroyed.status {
            Destruction::Scheduled { at } => (
                KeyAction::ShredScheduled,
                format!(
                    "root epoch {} refused by the backend, deletion scheduled for {at}",
                    destroyed.epoch
                ),
            ),
            _ => (
                KeyAction::Shred,
                format!("root epoch {} destroyed in the backend", destroyed.epoch),
            ),
        };
        let now = self.now();
        let mut change = StoreChange::default();
        for (scope, version) in &pending {
            let Some(before) = self.verified_get(scope, *version)? else {
                continue;
            };
            let mut after = before.clone();
            after.updated_at = now;
            change.audit.push(AuditRecord {
                at: now,
                actor: who.actor.clone(),
                reason: if who.reason.is_empty() {
                    note.clone()
                } else {
                    format!("{} ({note})", who.reason)
                },
                action,
                scope: scope.clone(),
                version: *version,
                from: Some(before.state),
                to: after.state,
                auth: None,
            });
            change.updates.push(RecordUpdate { before, after });
        }
        self.apply_authenticated(change)?;
        self.inner.cache.clear();
        tracing::info!(
            versions = pending.len(),
            records_moved,
            epoch = %destroyed.epoch,
            complete = destroyed.status.is_complete(),
            actor = %who.actor,
            "completed crypto-shred: old root epoch destroyed"
        );
        Ok(Some(ShredReport {
            shredded: pending,
            records_moved,
            destroyed,
        }))
    }
}
