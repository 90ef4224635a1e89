//! The migrator's integration tests, one module per subject, in one test binary (one link of
//! the runtime, diesel, libpq and libmysqlclient instead of one per file). Each test drives the
//! real `leakless-migrate` binary against a fixture database (`support`); run one subject with
//! a filter: `cargo test -p leakless-migrator --all-features --test suite backends::`.
//!
//! `tests/crash.rs` (SIGKILLs migrators and stops its own PostgreSQL cluster mid-run) is a
//! binary of its own that shares `tests/support` with this one.
//!
//! PostgreSQL and MariaDB come from `leakless-testkit`; SoftHSM2, moto, OpenBao and swtpm from
//! `scripts/services/` (`scripts/test` starts them and exports their variables). A missing
//! service fails the tests that need it, naming it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stderr,
    clippy::float_cmp,
    reason = "tests: a failed set-up or check must stop the test loudly and say why"
)]

#[macro_use]
#[path = "../support/mod.rs"]
mod support;

mod adopt_pair;
mod adoption_residue;
mod backends;
mod blind_index_lifecycle;
mod cli;
mod exit_codes;
mod keep_name;
mod kms_backends;
mod online;
mod plan;
mod rewrap_data_check;
mod shamir_cli;
mod shred;
mod tamper_cli;
mod tenant_scope;
mod two_process;
