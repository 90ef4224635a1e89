//! `reindex`: compute the blind-index tokens of sealed values. It backfills an index added to
//! a column that already holds rows (and the rows `adopt` sealed), and re-keys every token onto
//! the index scope's active version after `keys rotate` of the index scope, so that the old
//! version can be retired and destroyed without a look-up missing a row. Online, batched,
//! resumable (see [`crate::engine`]): each token is written with compare-and-swap on the old
//! token and on the sealed value it was computed from, so an application write meanwhile wins.

use crate::commands::jobs::{ColumnJobArgs, dry_run_line, run_jobs};
use crate::commands::status::index_status;
use crate::engine::Mode;
use crate::env::Env;
use crate::error::{Failure, Kind, Result};

/// Options of `reindex`.
pub type Args = ColumnJobArgs;

/// Runs `reindex`.
///
/// # Errors
/// [`Kind::Usage`] when the chosen columns have no blind index; see [`run_jobs`].
pub fn run(env: &mut Env, args: &Args) -> Result<()> {
    let targets = env.targets(args.columns.table(), args.columns.column())?;
    if let Some((t, c)) = targets
        .iter()
        .find(|(_, c)| args.columns.column.is_some() && c.blind_index.is_none())
    {
        return Err(Failure::new(
            Kind::Usage,
            format!(
                "{}.{} has no blind index in the manifest",
                t.table, c.column
            ),
            "name a column with `blind_index(...)`, or regenerate the manifest from the model",
        ));
    }
    if !targets.iter().any(|(_, c)| c.blind_index.is_some()) {
        return Err(Failure::new(
            Kind::Usage,
            "no column of the manifest (in the chosen tables) has a blind index",
            "check --table, or regenerate the manifest from the model",
        ));
    }
    if args.job.dry_run {
        let store = env.key_store()?;
        let mut db = env.connect()?;
        for (t, c) in &targets {
            if let Some(b) = &c.blind_index {
                let s = index_status(&mut db, &*store, t, c, b)?;
                dry_run_line(env, "reindex", &t.table, &c.column, s.reindex_work);
            }
        }
        return Ok(());
    }
    run_jobs(env, &Mode::Reindex, &args.columns, &args.job).map(|_| ())
}
