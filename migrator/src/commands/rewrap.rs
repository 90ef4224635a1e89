//! `rewrap`: move every DEK onto the active KEK version of its scope, leaving the data
//! ciphertext untouched. Each moved row's data is first checked to open (decrypted with the
//! unwrapped DEK and discarded), so a row whose data is corrupt or tampered with is reported as
//! a failed row (cause `data`) and keeps its value instead of being re-wrapped as if sound.
//! Online, batched, resumable (see [`crate::engine`]).

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
