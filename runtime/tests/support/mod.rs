//! Shared support for the runtime's integration tests: throwaway database services (from
//! `leakless-testkit`, as `support::services`) and the key-store and KMS backend conformance
//! suites. Each test binary uses only part of it.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a different part of the support code"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr,
    clippy::indexing_slicing,
    reason = "test support: a failed set-up must stop the test loudly"
)]

pub mod kms_suite;
#[allow(
    unused_imports,
    reason = "each test binary uses a different part of the support code"
)]
pub use leakless_testkit as services;
pub mod store_suite;
