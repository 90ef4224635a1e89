//! Shared support for the runtime's integration tests: throwaway database services (from
//! `leakless-testkit`, as `support::services`), the key-store and KMS backend conformance
//! suites, the KMS peers, a key ring for the tests that need just one ([`local_ring`]), and
//! [`rerun_test`] for a test that needs a process of its own.

use std::process::Command;

#[path = "../../common/mod.rs"]
mod common;
#[macro_use]
pub mod kms_suite;
pub mod peers;
pub use leakless_testkit as services;
pub mod store_suite;

pub(crate) use common::local_ring;

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
