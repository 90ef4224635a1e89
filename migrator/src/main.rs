//! `leakless-migrate`: see the library docs and `docs/operations.md`.

use std::process::ExitCode;

fn main() -> ExitCode {
    leakless_migrator::main_with_args(std::env::args_os())
}
