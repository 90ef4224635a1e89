//! Authenticated key records and the chained audit log.
//!
//! The key store lives in the application database, so whoever can write that database can
//! write key records. The ring therefore trusts nothing it reads there until it has checked it
//! against a key only the root of trust can produce:
//!
//! * The **integrity key** is a random 256-bit key kept in the store like a KEK, as version 1 of
//!   the reserved scope `leakless:integrity`, wrapped by the root key (so every root rotation and
//!   every root epoch change moves it too). The HMAC key is derived from it with HKDF-SHA256.
//! * Every **audit entry** has a sequence number (1, 2, ...) and a tag: HMAC over the previous
//!   entry's tag, its sequence number and every field. Deleting, reordering, editing or inserting
//!   an entry breaks the chain at that point.
//! * Every **record** carries the sequence number of the audit entry that produced its current
//!   content, and a tag over every security-relevant field (scope, version, state, grace
//!   deadline, deactivation time, cache window, root key id and wrapped material, times) and
//!   that sequence number. A record whose tag fails was edited or copied from another version; a
//!   record whose sequence number is not the last audit entry of its version is an older copy
//!   (replayed); a version the audit log knows without a record was deleted.
//!
//! What this cannot detect: the whole store rolled back to an older consistent state (records
//! and audit log together, e.g. restored from a backup). A running ring remembers the newest
//! entry it verified and refuses a log that no longer has it, and a completed shred destroys the
//! root epoch that older copies are wrapped under. The byte layout of both tags is specified in
//! `docs/key-store-format.md`.

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard, PoisonError};

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::key::{
    AuditInfo, AuditRecord, Auth, KekRecord, KekState, KekVersion, KeyAction, KeyScope, StoreChange,
};
use crate::keyring::KeyRing;
use crate::secret::{KEY_LEN, Kek};

/// The reserved scope of the integrity key record.
pub const INTEGRITY_SCOPE: &str = "leakless:integrity";
/// Scope names with this prefix are the library's own; `create_scope` refuses them.
pub const RESERVED_SCOPE_PREFIX: &str = "leakless:";

const MAC_KEY_INFO: &[u8] = b"leakless key-store authentication v1";
const RECORD_LABEL: &[u8] = b"leakless.key-record.v1";
const AUDIT_LABEL: &[u8] = b"leakless.key-audit.v1";
/// How often a read is repeated while other processes keep changing the key store.
const STABLE_READ_ATTEMPTS: usize = 20;
/// How the first audit entry of an upgraded store records how many unauthenticated entries
/// came before it: the reason ends with this, the count and `]`.
const LEGACY_MARK: &str = " [earlier unauthenticated audit entries: ";

/// The HMAC key of a key store, derived from its integrity key. Zeroized on drop.
pub(crate) struct IntegrityKey {
    mac_key: Zeroizing<[u8; KEY_LEN]>,
}

impl IntegrityKey {
    pub(crate) fn from_kek(kek: &Kek) -> Self {
        let hk = Hkdf::<Sha256>::new(None, kek.expose_secret());
        let mut mac_key = Zeroizing::new([0u8; KEY_LEN]);
        // 32 bytes is far below HKDF-SHA256's output limit, so expand cannot fail.
        let _ = hk.expand(MAC_KEY_INFO, mac_key.as_mut());
        Self { mac_key }
    }

    fn mac(&self, input: &[u8]) -> [u8; 32] {
        // HMAC takes keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.mac_key.as_ref())
            .unwrap_or_else(|_| unreachable_hmac());
        mac.update(input);
        mac.finalize().into_bytes().into()
    }

    /// The tag of `record` at audit sequence number `seq`.
    pub(crate) fn record_tag(&self, record: &KekRecord, seq: u64) -> [u8; 32] {
        self.mac(&record_tag_input(record, seq))
    }

    /// The tag of audit entry `entry` at `seq`, chained to the previous entry's tag `prev`.
    pub(crate) fn audit_tag(&self, prev: &[u8; 32], entry: &AuditRecord, seq: u64) -> [u8; 32] {
        self.mac(&audit_tag_input(prev, entry, seq))
    }
}

#[allow(
    clippy::panic,
    reason = "HMAC-SHA256 accepts every key length; this is never reached"
)]
fn unreachable_hmac() -> Hmac<Sha256> {
    panic!("HMAC-SHA256 refused a 32-byte key")
}

fn put_str8(out: &mut Vec<u8>, s: &str) {
    // Scope names, state and action names are at most 64 bytes.
    out.push(u8::try_from(s.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(s.as_bytes());
}

fn put_bytes32(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(b);
}

/// An optional value: a presence byte (1 or 0), then, when present, the value as `put`
/// writes it.
fn put_opt<T>(out: &mut Vec<u8>, v: Option<T>, put: impl FnOnce(&mut Vec<u8>, T)) {
    match v {
        Some(v) => {
            out.push(1);
            put(out, v);
        }
        None => out.push(0),
    }
}

fn put_opt_i64(out: &mut Vec<u8>, v: Option<i64>) {
    put_opt(out, v, |out, v| out.extend_from_slice(&v.to_be_bytes()));
}

fn put_state(out: &mut Vec<u8>, state: KekState) {
    put_str8(out, state.name());
    put_opt_i64(out, state.grace_until().map(|t| t.0));
}

/// The bytes a record's tag covers (`docs/key-store-format.md`, "Record tag").
pub(crate) fn record_tag_input(r: &KekRecord, seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(RECORD_LABEL);
    out.extend_from_slice(&seq.to_be_bytes());
    put_str8(&mut out, r.scope.as_str());
    out.extend_from_slice(&r.version.get().to_be_bytes());
    put_state(&mut out, r.state);
    put_opt_i64(&mut out, r.deactivated_at.map(|t| t.0));
    out.extend_from_slice(&r.recheck_secs.to_be_bytes());
    out.extend_from_slice(&r.created_at.0.to_be_bytes());
    out.extend_from_slice(&r.updated_at.0.to_be_bytes());
    put_opt(&mut out, r.wrapped.as_ref(), |out, w| {
        put_bytes32(out, w.root_key_id.as_bytes());
        put_bytes32(out, &w.ciphertext);
    });
    out
}

/// The bytes an audit entry's tag covers (`docs/key-store-format.md`, "Audit chain").
pub(crate) fn audit_tag_input(prev: &[u8; 32], a: &AuditRecord, seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(AUDIT_LABEL);
    out.extend_from_slice(prev);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&a.at.0.to_be_bytes());
    put_bytes32(&mut out, a.actor.as_bytes());
    put_bytes32(&mut out, a.reason.as_bytes());
    put_str8(&mut out, a.action.name());
    put_str8(&mut out, a.scope.as_str());
    out.extend_from_slice(&a.version.get().to_be_bytes());
    put_opt(&mut out, a.from, put_state);
    put_state(&mut out, a.to);
    out
}

/// What this ring has verified of the audit chain so far.
#[derive(Default)]
pub(crate) struct Chain {
    /// The newest verified entry: its sequence number and tag.
    head: Option<(u64, [u8; 32])>,
    /// The last verified entry of each version: its sequence number and the state it set.
    last: HashMap<(KeyScope, KekVersion), (u64, KekState)>,
}

/// A summary of a whole-store verification ([`KeyRing::verify_store`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreVerification {
    /// Authenticated audit entries, all verified in one unbroken chain.
    pub audit_entries: u64,
    /// Audit entries written before the store was authenticated (not protected).
    pub legacy_audit_entries: u64,
    /// Key records verified (the integrity key's own record included).
    pub records: u64,
}

fn tampered(scope: Option<&KeyScope>, version: Option<KekVersion>, what: String) -> Error {
    Error::KeyStoreTampered {
        scope: scope.cloned(),
        version,
        what,
    }
}

fn not_upgraded() -> Error {
    tampered(
        None,
        None,
        format!(
            "the key store has no integrity key ({INTEGRITY_SCOPE} v1): either it predates \
             authenticated key records (authenticate it once with `leakless-migrate keys \
             upgrade`) or the record was deleted"
        ),
    )
}

fn integrity_scope() -> KeyScope {
    // A valid name by construction.
    KeyScope::new(INTEGRITY_SCOPE).unwrap_or_else(|_| unreachable_scope())
}

#[allow(clippy::panic, reason = "INTEGRITY_SCOPE is a valid scope name")]
fn unreachable_scope() -> KeyScope {
    panic!("INTEGRITY_SCOPE is not a valid scope name")
}

fn tags_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

impl KeyRing {
    fn chain_lock(&self) -> MutexGuard<'_, Chain> {
        self.inner
            .chain
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The integrity key this ring has loaded, if any.
    fn integrity_lock(&self) -> MutexGuard<'_, Option<Arc<IntegrityKey>>> {
        self.inner
            .integrity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The store's integrity key, unwrapped once per ring and checked against its own tag.
    pub(crate) fn integrity_key(&self) -> Result<Arc<IntegrityKey>, Error> {
        if let Some(k) = self.integrity_lock().as_ref() {
            return Ok(Arc::clone(k));
        }
        let scope = integrity_scope();
        let record = self
            .inner
            .store
            .get(&scope, KekVersion::FIRST)?
            .ok_or_else(not_upgraded)?;
        let kek = self.unwrap_record(&record)?;
        let key = Arc::new(IntegrityKey::from_kek(&kek));
        let ok = record
            .auth
            .is_some_and(|a| tags_equal(&key.record_tag(&record, a.seq), &a.tag));
        if !ok {
            return Err(tampered(
                Some(&scope),
                Some(KekVersion::FIRST),
                "the integrity key's record fails its own authentication".into(),
            ));
        }
        *self.integrity_lock() = Some(Arc::clone(&key));
        Ok(key)
    }

    /// The integrity key, made first when the store is new and empty.
    pub(crate) fn ensure_integrity_key(&self, who: &AuditInfo) -> Result<Arc<IntegrityKey>, Error> {
        let scope = integrity_scope();
        if self.inner.store.get(&scope, KekVersion::FIRST)?.is_some() {
            return self.integrity_key();
        }
        if !self.store_is_empty()? {
            return Err(not_upgraded());
        }
        match self.create_integrity_key(who, StoreChange::default(), 0) {
            Ok(key) => {
                let key = Arc::new(key);
                *self.integrity_lock() = Some(Arc::clone(&key));
                Ok(key)
            }
            // Another process made it first: use theirs.
            Err(Error::ConcurrentModification { .. }) => self.integrity_key(),
            Err(e) => Err(e),
        }
    }

    /// Makes the integrity key and writes its record (first in the chain) together with
    /// `also`, whose records and audit entries follow it. Returns the key.
    ///
    /// `legacy_entries` is the number of unauthenticated audit entries the store already has
    /// (an upgraded store): the first entry of the chain commits to it, so that no entry can be
    /// slipped in before the chain later.
    fn create_integrity_key(
        &self,
        who: &AuditInfo,
        also: StoreChange,
        legacy_entries: u64,
    ) -> Result<IntegrityKey, Error> {
        let scope = integrity_scope();
        let now = self.now();
        let kek = Kek::generate();
        let key = IntegrityKey::from_kek(&kek);
        let record = self.new_record(&kek, &scope, KekVersion::FIRST, now)?;
        let mut audit = self.audit(who, KeyAction::CreateScope, &record, None, now);
        if legacy_entries > 0 {
            audit.reason = format!("{}{LEGACY_MARK}{legacy_entries}]", audit.reason);
        }
        let mut change = StoreChange {
            inserts: vec![record],
            updates: vec![],
            audit: vec![audit],
        };
        change.inserts.extend(also.inserts);
        change.updates.extend(also.updates);
        change.audit.extend(also.audit);
        authenticate_change(&key, None, &mut change)?;
        self.inner.store.apply(change)?;
        Ok(key)
    }

    /// Reads the audit entries this ring has not verified yet and verifies them, chained to
    /// the newest one it verified before.
    pub(crate) fn refresh_chain(&self, key: &IntegrityKey) -> Result<MutexGuard<'_, Chain>, Error> {
        let mut chain = self.chain_lock();
        let from = chain.head.map_or(0, |h| h.0);
        let entries = self.inner.store.audit_since(from)?;
        let mut entries = entries.into_iter().filter(|a| a.auth.is_some()).peekable();
        if let Some((seq, tag)) = chain.head {
            match entries.next() {
                Some(a) if a.auth == Some(Auth { seq, tag }) => {}
                _ => {
                    return Err(tampered(
                        None,
                        None,
                        format!(
                            "audit entry #{seq}, verified earlier by this process, is gone or \
                             changed: the audit log was rolled back or edited"
                        ),
                    ));
                }
            }
        }
        let (mut seq, mut prev) = chain.head.unwrap_or((0, [0u8; 32]));
        let mut updates = Vec::new();
        for a in entries {
            let Some(auth) = a.auth else { continue };
            verify_entry(key, &a, auth, seq, &prev)?;
            updates.push(((a.scope.clone(), a.version), (auth.seq, a.to)));
            seq = auth.seq;
            prev = auth.tag;
        }
        chain.last.extend(updates);
        if seq > 0 {
            chain.head = Some((seq, prev));
        }
        Ok(chain)
    }

    /// Whether the store is new: no record, no audit entry, no integrity key yet. Such a store
    /// lists as empty instead of failing verification.
    fn store_is_empty(&self) -> Result<bool, Error> {
        Ok(self.inner.store.scopes()?.is_empty() && self.inner.store.audit_log(None)?.is_empty())
    }

    /// Whether this ring has not loaded an integrity key yet and the store is new
    /// ([`Self::store_is_empty`]): then there is nothing to verify and reads find nothing.
    fn unkeyed_and_empty(&self) -> Result<bool, Error> {
        let unkeyed = self.integrity_lock().is_none();
        Ok(unkeyed && self.store_is_empty()?)
    }

    /// The records of `scope`, each verified against the integrity key and the audit chain.
    pub(crate) fn verified_list(&self, scope: &KeyScope) -> Result<Vec<KekRecord>, Error> {
        if self.unkeyed_and_empty()? {
            return Ok(Vec::new());
        }
        let key = self.integrity_key()?;
        let (records, chain) = self.stable_read(&key, scope, || self.inner.store.list(scope))?;
        records
            .iter()
            .try_for_each(|r| verify_record(&key, &chain, r))
            .and_then(|()| no_deleted_records(&chain, scope, &records))?;
        Ok(records)
    }

    /// Runs `read` between two reads of the audit chain that find the same newest entry, so
    /// what it read is consistent with the verified chain: a change by another process in
    /// between would have appended to the chain (records and audit entries are written in one
    /// atomic change). Under contention it tries again; a mismatch found after a stable read
    /// is tampering, never a race.
    fn stable_read<T>(
        &self,
        key: &IntegrityKey,
        scope: &KeyScope,
        mut read: impl FnMut() -> Result<T, Error>,
    ) -> Result<(T, MutexGuard<'_, Chain>), Error> {
        for _ in 0..STABLE_READ_ATTEMPTS {
            let before = self.refresh_chain(key)?.head;
            let value = read()?;
            let chain = self.refresh_chain(key)?;
            if chain.head == before {
                return Ok((value, chain));
            }
        }
        Err(Error::ConcurrentModification {
            scope: scope.clone(),
            version: KekVersion::FIRST,
        })
    }

    /// One record, verified; `None` when neither the store nor the audit log knows it.
    pub(crate) fn verified_get(
        &self,
        scope: &KeyScope,
        version: KekVersion,
    ) -> Result<Option<KekRecord>, Error> {
        if self.unkeyed_and_empty()? {
            return Ok(None);
        }
        let key = self.integrity_key()?;
        let (record, chain) =
            self.stable_read(&key, scope, || self.inner.store.get(scope, version))?;
        match &record {
            Some(r) => verify_record(&key, &chain, r)?,
            None if chain.last.contains_key(&(scope.clone(), version)) => {
                return Err(tampered(
                    Some(scope),
                    Some(version),
                    "the audit log records this version but its record is gone (deleted)".into(),
                ));
            }
            None => {}
        }
        Ok(record)
    }

    /// Authenticates `change` (sequence numbers and tags for its audit entries, tags for its
    /// records) after the newest verified audit entry, then writes it.
    pub(crate) fn apply_authenticated(&self, mut change: StoreChange) -> Result<(), Error> {
        let key = self.integrity_key()?;
        let head = self.refresh_chain(&key)?.head;
        authenticate_change(&key, head, &mut change)?;
        self.inner.store.apply(change)
    }

    /// Verifies the whole key store from scratch: the audit chain from its first entry, and
    /// every record of every scope against it. Returns counts; the first problem found is a
    /// [`Error::KeyStoreTampered`] that says where (the audit entry's sequence number, or the
    /// record's scope and version).
    ///
    /// # Errors
    /// [`Error::KeyStoreTampered`], or the store's and KMS's own errors.
    pub fn verify_store(&self) -> Result<StoreVerification, Error> {
        let key = self.integrity_key()?;
        // The same discipline as every verified read: a pass that another process's change
        // overlapped (the chain grew meanwhile) is repeated, whatever it found.
        // The newest authenticated entry as stored, unverified: verification is the pass's job.
        let head = || -> Result<Option<Auth>, Error> {
            Ok(self
                .inner
                .store
                .audit_since(0)?
                .iter()
                .filter_map(|a| a.auth)
                .max_by_key(|a| a.seq))
        };
        for _ in 0..STABLE_READ_ATTEMPTS {
            let before = head()?;
            let result = self.verify_store_once(&key);
            if head()? == before {
                return result;
            }
        }
        Err(Error::ConcurrentModification {
            scope: integrity_scope(),
            version: KekVersion::FIRST,
        })
    }

    fn verify_store_once(&self, key: &IntegrityKey) -> Result<StoreVerification, Error> {
        let mut report = StoreVerification::default();
        let mut chain = Chain::default();
        // `audit_since(0)` sorts entries without authentication first, so whether one was
        // written after the chain began shows only in the order the store keeps them: legacy
        // entries all precede the first authenticated one.
        if let Some(a) = self
            .inner
            .store
            .audit_log(None)?
            .iter()
            .skip_while(|a| a.auth.is_none())
            .find(|a| a.auth.is_none())
        {
            return Err(tampered(
                Some(&a.scope),
                Some(a.version),
                format!(
                    "an audit entry without authentication ({} at {}) was written after the \
                     authenticated chain began",
                    a.action, a.at
                ),
            ));
        }
        // The newest entry this ring verified before must still be there, unchanged (a log
        // rolled back behind a running process).
        let remembered = self.chain_lock().head;
        let mut remembered_seen = remembered.is_none();
        let (mut seq, mut prev) = (0u64, [0u8; 32]);
        let mut committed_legacy = 0u64;
        for a in self.inner.store.audit_since(0)? {
            let Some(auth) = a.auth else {
                if seq > 0 {
                    return Err(tampered(
                        Some(&a.scope),
                        Some(a.version),
                        format!(
                            "an audit entry without authentication ({} at {}) sits inside the \
                             authenticated chain",
                            a.action, a.at
                        ),
                    ));
                }
                report.legacy_audit_entries = report.legacy_audit_entries.saturating_add(1);
                continue;
            };
            verify_entry(key, &a, auth, seq, &prev)?;
            if auth.seq == 1 {
                committed_legacy = a
                    .reason
                    .rsplit_once(LEGACY_MARK)
                    .and_then(|(_, n)| n.strip_suffix(']'))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
            }
            remembered_seen |= remembered == Some((auth.seq, auth.tag));
            chain
                .last
                .insert((a.scope.clone(), a.version), (auth.seq, a.to));
            seq = auth.seq;
            prev = auth.tag;
            report.audit_entries = report.audit_entries.saturating_add(1);
        }
        if let Some((s, _)) = remembered.filter(|_| !remembered_seen) {
            return Err(tampered(
                None,
                None,
                format!(
                    "audit entry #{s}, verified earlier by this process, is gone or changed: \
                     the audit log was rolled back or edited"
                ),
            ));
        }
        if report.legacy_audit_entries != committed_legacy {
            return Err(tampered(
                None,
                None,
                format!(
                    "{} audit entries without authentication precede the chain, but its first \
                     entry records {committed_legacy}: entries were slipped in before it or \
                     removed",
                    report.legacy_audit_entries
                ),
            ));
        }
        chain.head = (seq > 0).then_some((seq, prev));
        let mut seen = HashMap::new();
        for scope in self.inner.store.scopes()? {
            let records = self.inner.store.list(&scope)?;
            for r in &records {
                verify_record(key, &chain, r)?;
                seen.insert((r.scope.clone(), r.version), ());
                report.records = report.records.saturating_add(1);
            }
        }
        if let Some(((scope, version), (s, _))) = chain
            .last
            .iter()
            .filter(|(k, _)| !seen.contains_key(*k))
            .min_by_key(|(_, (s, _))| *s)
        {
            return Err(tampered(
                Some(scope),
                Some(*version),
                format!("audit entry #{s} records this version but its record is gone (deleted)"),
            ));
        }
        Ok(report)
    }

    /// Authenticates a key store written before records were authenticated: makes the
    /// integrity key and gives every existing record its first tag, each with an
    /// `authenticate` audit entry, in one atomic change. Earlier audit entries stay as they
    /// were (reported as legacy, not protected). Trust on first use: run it once, on a store
    /// you trust, right after upgrading. Returns how many records it authenticated (0 when
    /// the store is already authenticated).
    ///
    /// # Errors
    /// [`Error::KeyStoreTampered`] when the store was authenticated before but its integrity
    /// key record is gone, or some records are authenticated and others not (both mean
    /// tampering, never a store to re-authenticate).
    pub fn upgrade_store(&self, who: &AuditInfo) -> Result<usize, Error> {
        let scope = integrity_scope();
        let mut legacy = Vec::new();
        let mut authenticated = 0usize;
        for s in self.inner.store.scopes()? {
            for r in self.inner.store.list(&s)? {
                if r.auth.is_some() {
                    authenticated = authenticated.saturating_add(1);
                } else {
                    legacy.push(r);
                }
            }
        }
        let audited = self
            .inner
            .store
            .audit_log(None)?
            .iter()
            .filter(|a| a.auth.is_some())
            .count();
        let has_key = self.inner.store.get(&scope, KekVersion::FIRST)?.is_some();
        if has_key {
            if legacy.is_empty() {
                self.verify_store()?;
                return Ok(0);
            }
            return Err(tampered(
                legacy.first().map(|r| &r.scope),
                legacy.first().map(|r| r.version),
                format!(
                    "the store is authenticated, yet {} records carry no tag: they were \
                     written behind the key ring's back; refusing to authenticate them",
                    legacy.len()
                ),
            ));
        }
        if authenticated > 0 || audited > 0 {
            return Err(tampered(
                Some(&scope),
                Some(KekVersion::FIRST),
                "the store has authenticated records or audit entries but no integrity key \
                 record: it was deleted; refusing to re-authenticate a tampered store"
                    .into(),
            ));
        }
        let now = self.now();
        let mut change = StoreChange::default();
        for before in legacy.iter().cloned() {
            let mut after = before.clone();
            if after.state != KekState::Active && after.deactivated_at.is_none() {
                after.deactivated_at = Some(after.updated_at);
            }
            change.audit.push(self.audit(
                who,
                KeyAction::Authenticate,
                &after,
                Some(before.state),
                now,
            ));
            change
                .updates
                .push(crate::key::RecordUpdate { before, after });
        }
        let n = legacy.len();
        let legacy_entries = u64::try_from(self.inner.store.audit_log(None)?.len()).unwrap_or(0);
        self.create_integrity_key(who, change, legacy_entries)?;
        self.inner.cache.clear();
        Ok(n)
    }
}

fn verify_entry(
    key: &IntegrityKey,
    a: &AuditRecord,
    auth: Auth,
    prev_seq: u64,
    prev_tag: &[u8; 32],
) -> Result<(), Error> {
    if auth.seq != prev_seq.saturating_add(1) {
        return Err(tampered(
            Some(&a.scope),
            Some(a.version),
            format!(
                "the audit chain breaks after entry #{prev_seq}: the next entry is #{} (entries \
                 were deleted or reordered)",
                auth.seq
            ),
        ));
    }
    if !tags_equal(&key.audit_tag(prev_tag, a, auth.seq), &auth.tag) {
        return Err(tampered(
            Some(&a.scope),
            Some(a.version),
            format!(
                "audit entry #{} fails authentication (it was edited, or the entry before it \
                 was)",
                auth.seq
            ),
        ));
    }
    Ok(())
}

fn verify_record(key: &IntegrityKey, chain: &Chain, r: &KekRecord) -> Result<(), Error> {
    let fail = |what: String| tampered(Some(&r.scope), Some(r.version), what);
    let Some(auth) = r.auth else {
        return Err(fail(
            "the record carries no authentication tag (written behind the key ring's back, or \
             the store predates authenticated records: `leakless-migrate keys upgrade`)"
                .into(),
        ));
    };
    if !tags_equal(&key.record_tag(r, auth.seq), &auth.tag) {
        return Err(fail(
            "the record fails authentication: a field (state, grace deadline, root key, \
             material, times) was edited, or the record was copied from another scope or \
             version"
                .into(),
        ));
    }
    match chain.last.get(&(r.scope.clone(), r.version)) {
        Some((seq, state)) if *seq == auth.seq && *state == r.state => Ok(()),
        Some((seq, _)) if *seq > auth.seq => Err(fail(format!(
            "the record is an older copy (replayed): audit entry #{seq} changed it after \
             entry #{}",
            auth.seq
        ))),
        Some((seq, state)) if *seq == auth.seq => Err(fail(format!(
            "the record's state {} differs from what audit entry #{seq} set ({state})",
            r.state
        ))),
        _ => Err(fail(format!(
            "the record names audit entry #{}, which the verified audit chain does not have \
             for this version",
            auth.seq
        ))),
    }
}

fn no_deleted_records(chain: &Chain, scope: &KeyScope, records: &[KekRecord]) -> Result<(), Error> {
    for ((s, v), (seq, _)) in &chain.last {
        if s == scope && !records.iter().any(|r| r.version == *v) {
            return Err(tampered(
                Some(scope),
                Some(*v),
                format!("audit entry #{seq} records this version but its record is gone (deleted)"),
            ));
        }
    }
    Ok(())
}

/// Gives `change`'s audit entries their sequence numbers (after `head`) and chained tags, and
/// each of its records the tag at the sequence number of its own (last) audit entry.
fn authenticate_change(
    key: &IntegrityKey,
    head: Option<(u64, [u8; 32])>,
    change: &mut StoreChange,
) -> Result<(), Error> {
    let (mut seq, mut prev) = head.unwrap_or((0, [0u8; 32]));
    let mut seq_of = HashMap::new();
    for a in &mut change.audit {
        seq = seq.saturating_add(1);
        let tag = key.audit_tag(&prev, a, seq);
        a.auth = Some(Auth { seq, tag });
        prev = tag;
        seq_of.insert((a.scope.clone(), a.version), seq);
    }
    let records = change
        .inserts
        .iter_mut()
        .chain(change.updates.iter_mut().map(|u| &mut u.after));
    for r in records {
        let s = *seq_of
            .get(&(r.scope.clone(), r.version))
            .ok_or_else(|| Error::Internal {
                what: "key store change",
                problem: format!(
                    "{} {} changes without an audit entry describing it",
                    r.scope, r.version
                ),
            })?;
        r.auth = Some(Auth {
            seq: s,
            tag: key.record_tag(r, s),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::UnixTime;

    fn record() -> KekRecord {
        KekRecord {
            scope: KeyScope::new("patients").unwrap_or_else(|_| unreachable_scope()),
            version: KekVersion::FIRST,
            state: KekState::Active,
            wrapped: None,
            created_at: UnixTime(1),
            updated_at: UnixTime(2),
            deactivated_at: None,
            recheck_secs: 300,
            auth: None,
        }
    }

    #[test]
    fn every_record_field_changes_the_tag() {
        let key = IntegrityKey::from_kek(&Kek::generate());
        let base = record();
        let tag = key.record_tag(&base, 7);
        assert_ne!(tag, key.record_tag(&base, 8), "sequence number");
        let mut edits: Vec<KekRecord> = Vec::new();
        let mut r = base.clone();
        r.state = KekState::Retired;
        edits.push(r);
        let mut r = base.clone();
        r.version = KekVersion::new(2).unwrap_or(KekVersion::FIRST);
        edits.push(r);
        let mut r = base.clone();
        r.deactivated_at = Some(UnixTime(5));
        edits.push(r);
        let mut r = base.clone();
        r.recheck_secs = 1;
        edits.push(r);
        let mut r = base.clone();
        r.updated_at = UnixTime(3);
        edits.push(r);
        for edited in edits {
            assert_ne!(tag, key.record_tag(&edited, 7), "{edited:?}");
        }
    }
}
