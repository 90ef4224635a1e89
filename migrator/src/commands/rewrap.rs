//! `rewrap`: move every DEK onto the active KEK version of its scope, leaving the data
//! ciphertext untouched. Online, batched, resumable (see [`crate::engine`]).

use crate::commands::jobs::{ColumnJobArgs, run_column_job};
use crate::engine::Mode;
use crate::env::Env;
use crate::error::Result;

/// Options of `rewrap`.
pub type Args = ColumnJobArgs;

/// Runs `rewrap`.
///
/// # Errors
/// See [`crate::commands::jobs::run_jobs`].
pub fn run(env: &mut Env, args: &Args) -> Result<()> {
    run_column_job(env, args, &Mode::Rewrap, "rewrap", |s| s.rewrap_work)
}
