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

/// Reads the row with primary key `$id` of the diesel table `$table` over the connection
/// `$conn` as a `$row` (its `Selectable`), and opens it as the sealed model `$model` with the
/// key ring `$ring`: the `Result` of `open_row`. Fails the test if the row cannot be read.
#[cfg(feature = "sql-store")]
macro_rules! load_model {
    ($conn:expr, $ring:expr, $table:expr, $id:expr, $row:ident, $model:ident) => {{
        let row = $table
            .find($id)
            .select($row::as_select())
            .first($conn)
            .unwrap();
        $model::open_row(row, $ring)
    }};
}

/// Seals the model `$model` with the key ring `$ring` and writes it over the row with primary
/// key `$id` of the diesel table `$table`, over the connection `$conn`: the number of rows
/// written. Fails the test if the model does not seal or the row cannot be written.
#[cfg(feature = "sql-store")]
macro_rules! save_model {
    ($conn:expr, $ring:expr, $table:expr, $id:expr, $model:expr) => {
        diesel::update($table.find($id))
            .set($model.seal_row($ring).unwrap())
            .execute($conn)
            .unwrap()
    };
}

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
