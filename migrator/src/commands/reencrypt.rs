//! `reencrypt`: the emergency mode for a suspected DEK or plaintext exposure. Every envelope is
//! opened and sealed again: a new DEK and a new data ciphertext under the active KEK, with the
//! same online and resume guarantees as `rewrap`. Rotate the scope first (`keys rotate`), so
//! the new values are under a new KEK too.

use crate::commands::jobs::{Columns, JobArgs, dry_run_line, run_jobs};
use crate::commands::status::column_status;
use crate::engine::Mode;
use crate::env::Env;
use crate::error::Result;

/// Options of `reencrypt`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which columns.
    #[command(flatten)]
    pub columns: Columns,
    /// Batch, worker, throttle and job options.
    #[command(flatten)]
    pub job: JobArgs,
}

/// Runs `reencrypt`.
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
            let sealed: u64 = s.versions.iter().map(|v| v.rows).sum();
            dry_run_line(env, "re-encrypt", &t.table, &c.column, sealed);
        }
        return Ok(());
    }
    run_jobs(
        env,
        &Mode::Reencrypt,
        args.columns.table(),
        args.columns.column(),
        &args.job,
    )
    .map(|_| ())
}
