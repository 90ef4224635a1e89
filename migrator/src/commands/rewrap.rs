//! `rewrap`: move every DEK onto the active KEK version of its scope, leaving the data
//! ciphertext untouched. Online, batched, resumable (see [`crate::engine`]).

use crate::commands::jobs::{Columns, JobArgs, dry_run_line, run_jobs};
use crate::commands::status::column_status;
use crate::engine::Mode;
use crate::env::Env;
use crate::error::Result;

/// Options of `rewrap`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which columns.
    #[command(flatten)]
    pub columns: Columns,
    /// Batch, worker, throttle and job options.
    #[command(flatten)]
    pub job: JobArgs,
}

/// Runs `rewrap`.
///
/// # Errors
/// See [`run_jobs`].
pub fn run(env: &mut Env, args: &Args) -> Result<()> {
    if args.job.dry_run {
        let targets = env.targets(args.columns.table(), args.columns.column())?;
        let store = env.key_store()?;
        let mut db = env.connect()?;
        for (t, c) in &targets {
            let s = column_status(&mut db, &*store, t, c)?;
            dry_run_line(env, "rewrap", &t.table, &c.column, s.rewrap_work);
        }
        return Ok(());
    }
    run_jobs(
        env,
        &Mode::Rewrap,
        args.columns.table(),
        args.columns.column(),
        &args.job,
    )
    .map(|_| ())
}
