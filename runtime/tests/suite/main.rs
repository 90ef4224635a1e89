//! The runtime's integration tests, one module per subject, in one test binary (one link of
//! AWS-LC, diesel, libpq and libmysqlclient instead of one per file). Run one subject with a
//! filter: `cargo test -p leakless --all-features --test suite kms_tpm::`.
//!
//! Two subjects have binaries of their own: `tests/engine` (the envelope, vector and
//! Wycheproof tests, which `scripts/test` runs a second time on the portable AEAD engine, built
//! without the default features) and `tests/hardening.rs` (`harden_process` changes the whole
//! process). A test that needs its own environment variables runs itself again in a child
//! process ([`support::rerun_test`]).
//!
//! Services: PostgreSQL and MariaDB come from `leakless-testkit`; SoftHSM2, moto, OpenBao and
//! swtpm from `scripts/services/` (`scripts/test` starts them and exports their variables). A
//! missing service fails the tests that need it, naming it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub,
    reason = "tests: a failed set-up or check must stop the test loudly and say why"
)]

#[macro_use]
mod support;

mod adoption;
mod blind_index;
mod codec;
mod derive_backends;
mod file_store;
mod key_scope;
mod key_store_faults;
mod key_store_format;
mod key_stores;
mod kms_aws;
mod kms_faults;
mod kms_local_suite;
mod kms_pkcs11;
mod kms_tpm;
mod kms_vault;
mod layering;
mod lifecycle;
mod local_kms;
mod manifest;
mod shamir;
mod shred_epochs;
mod store_upgrade;
mod tamper;
mod tracing;
