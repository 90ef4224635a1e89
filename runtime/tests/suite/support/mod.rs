//! Shared support for the runtime's integration tests: throwaway database services (from
//! `leakless-testkit`, as `support::services`), the key-store and KMS backend conformance
//! suites, the KMS peers, a key ring for the tests that need just one ([`local_ring`]), and
//! [`rerun_test`] for a test that needs a process of its own.

use std::process::Command;
use std::sync::Arc;

use leakless::kms::LocalKms;
use leakless::secret::RootKey;
use leakless::store::MemoryKeyStore;
use leakless::{AuditInfo, KeyRing, KeyScope};

#[macro_use]
pub mod kms_suite;
pub mod peers;
pub use leakless_testkit as services;
pub mod store_suite;

/// A command that runs one test of this binary again, alone, in a child process (`--exact`,
/// one thread, output shown): for a test that needs environment variables of its own
/// (`std::env::set_var` is `unsafe`, and this workspace forbids `unsafe`) or changes state
/// the whole process shares. `module` is the caller's `module_path!()`, `test` the name of
/// the test function in that module.
pub fn rerun_test(module: &str, test: &str) -> Command {
    // A test's name leaves out the crate: `suite::local_kms::x` runs as `local_kms::x`.
    let module = module.split_once("::").map_or("", |(_, rest)| rest);
    let name = if module.is_empty() {
        test.to_owned()
    } else {
        format!("{module}::{test}")
    };
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args(["--exact", &name, "--test-threads=1", "--nocapture"]);
    command
}

/// A key ring over a new local root key and an in-memory key store, with `scopes` created.
pub fn local_ring(scopes: &[&str]) -> KeyRing {
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
