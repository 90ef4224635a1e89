//! `reencrypt`: the emergency mode for a suspected DEK or plaintext exposure. Every envelope is
//! opened and sealed again: a new DEK and a new data ciphertext under the active KEK, with the
//! same online and resume guarantees as `rewrap`. Rotate the scope first (`keys rotate`), so
//! the new values are under a new KEK too.

use crate::commands::jobs::{ColumnJobArgs, run_column_job};
use crate::engine::Mode;
use crate::env::Env;
use crate::error::Result;

/// Options of `reencrypt`.
pub type Args = ColumnJobArgs;

/// Runs `reencrypt`.
///
/// # Errors
/// See [`crate::commands::jobs::run_jobs`].
pub fn run(env: &mut Env, args: &Args) -> Result<()> {
    // Every sealed value is opened and sealed again.
    run_column_job(env, args, &Mode::Reencrypt, "re-encrypt", |s| {
        s.versions.iter().map(|v| v.rows).sum()
    })
}
