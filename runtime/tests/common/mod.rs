//! What more than one of the runtime's test binaries needs: `tests/suite` (through its
//! `support` module), `tests/engine` and `tests/freed_copies.rs` each include this file as a
//! module of their own.

use std::sync::Arc;

use leakless::kms::LocalKms;
use leakless::secret::RootKey;
use leakless::store::MemoryKeyStore;
use leakless::{AuditInfo, KeyRing, KeyScope};

/// A key ring over a new local root key and an in-memory key store, with `scopes` created.
pub(crate) fn local_ring(scopes: &[&str]) -> KeyRing {
    let ring = KeyRing::builder(
        Arc::new(LocalKms::from_root_key(RootKey::generate())),
        Arc::new(MemoryKeyStore::new()),
    )
    .build();
    for s in scopes {
        ring.create_scope(&KeyScope::new(s).unwrap(), &AuditInfo::new("test", "setup"))
            .unwrap();
    }
    ring
}
