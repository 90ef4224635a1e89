//! The record and audit tags of an authenticated key store as plain functions of the integrity
//! key, for independent verifiers and the known-answer vectors of
//! `docs/key-store-format.md` (sections "Record tag" and "Audit tag and the chain"). The key
//! ring itself uses the same code through [`IntegrityKey`].

use crate::key::{AuditRecord, KekRecord};
use crate::keyring::integrity::IntegrityKey;
use crate::secret::Kek;

/// The authentication tag of `record` at audit sequence number `seq`, under the key store's
/// integrity key `integrity_kek` (the unwrapped material of the `leakless:integrity` v1
/// record): `HMAC-SHA256(HKDF-SHA256(integrity_kek), record fields || seq)`, exactly as the key
/// ring computes and checks it. `record.auth` is not an input.
#[must_use]
pub fn record_tag(integrity_kek: &Kek, record: &KekRecord, seq: u64) -> [u8; 32] {
    IntegrityKey::from_kek(integrity_kek).record_tag(record, seq)
}

/// The authentication tag of audit entry `entry` at sequence number `seq`, chained to the
/// previous entry's tag `prev` (32 zero bytes for the first entry, `seq` 1), under the key
/// store's integrity key `integrity_kek`, exactly as the key ring computes and checks it.
/// `entry.auth` is not an input.
#[must_use]
pub fn audit_tag(integrity_kek: &Kek, prev: &[u8; 32], entry: &AuditRecord, seq: u64) -> [u8; 32] {
    IntegrityKey::from_kek(integrity_kek).audit_tag(prev, entry, seq)
}
