//! The DBA migrator `leakless-migrate` as a library: key lifecycle (`keys`), `status`, online
//! resumable `rewrap`, `adopt`ion of plaintext columns and `purge-residue` after it, `copy` of
//! sealed values into a column that takes the legacy column's name, blind-index `reindex`,
//! emergency `reencrypt`, and `verify`, on PostgreSQL, SQLite and MariaDB. The binary is a
//! thin wrapper around [`main_with_args`].
//!
//! The runbooks for DBAs are `docs/operations.md` and `docs/adoption.md`; the exit codes are listed in [`error`].

pub mod cli;
pub mod commands;
pub mod db;
pub mod engine;
pub mod env;
pub mod error;
pub mod kms;
pub mod progress;
pub mod scan;
pub mod tenant;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::Cli;
use crate::env::Env;

/// Parses `args` (including the program name), runs the command and returns the exit code.
/// Errors are printed on stderr as `error: ...` followed by `help: ...`.
#[must_use]
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // Before any key or plaintext is loaded: no core dumps, not dumpable or traceable by the
    // same user, memory locked against swap where the limit allows (best effort, see
    // `leakless::harden_process`).
    let _ = leakless::harden_process();
    let json = cli.global.json;
    let mut env = Env::new(cli.global);
    match commands::run(&mut env, &cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            env::note(if json { f.to_json() } else { f.to_string() });
            f.exit_code()
        }
    }
}
