//! `copy`: the database side of moving a sealed column to another column (the last part of
//! an adoption that keeps the legacy column's name, docs/adoption.md). Envelopes bind the
//! column name the model gives them, not the column that stores them, so they stay valid when
//! copied. With every instance of the application on a build whose field says
//! `seal(moving(from = old, stage = "read_old"))` (it reads the old column and writes the same
//! envelope into both), `copy` makes the new column equal the old one in every row (NULL, or
//! stale from a build that wrote only the old column): online, batched, resumable like
//! `rewrap`, each value checked to open in its new place first, each write a compare-and-swap
//! on the new column's value read (an application write meanwhile wins). It never drops
//! anything.

use crate::commands::jobs::{Column, Columns, JobArgs, dry_run_line, run_jobs};
use crate::engine::Mode;
use crate::env::{Env, out};
use crate::error::{Failure, Kind, Result};

/// Options of `copy`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which column.
    #[command(flatten)]
    pub target: Column,
    /// Batch, worker, throttle and job options.
    #[command(flatten)]
    pub job: JobArgs,
}

/// Runs `copy`.
///
/// # Errors
/// [`Kind::Usage`] when the manifest moves nothing into the column; [`Kind::Refused`] when rows
/// failed (a value that does not open in its new place is not copied); see [`run_jobs`].
pub fn run(env: &mut Env, args: &Args) -> Result<()> {
    let (t, c) = env.target(&args.target)?;
    let Some(from) = t
        .columns
        .iter()
        .find(|o| o.moving_to.as_deref() == Some(c.column.as_str()))
        .map(|o| o.column.clone())
    else {
        return Err(Failure::new(
            Kind::Usage,
            format!(
                "no column of the manifest moves into {}.{}",
                t.table, c.column
            ),
            "mark the field `#[leakless(seal(moving(from = old_column, stage = \"read_old\")))]`, \
             regenerate the manifest, and deploy that build before copying",
        ));
    };
    let mut db = env.connect()?;
    db.require_column(&t.table, &t.row_id_column, &from)?;
    let pending = |db: &mut crate::db::Db| -> Result<u64> {
        let sql = format!(
            "SELECT COUNT(*) AS n FROM {t} WHERE {f} IS NOT NULL AND ({c} IS NULL OR {c} <> {f})",
            t = db.q(&t.table),
            c = db.q(&c.column),
            f = db.q(&from),
        );
        db.count(&sql, &[])
    };
    if args.job.dry_run {
        let rows = pending(&mut db)?;
        dry_run_line(env, &format!("copy from {from}"), &t.table, &c.column, rows);
        return Ok(());
    }
    let drop_sql = format!(
        "ALTER TABLE {} DROP COLUMN {};",
        db.q(&t.table),
        db.q(&from)
    );
    drop(db);
    let only = Columns::one(&t.table, &c.column);
    run_jobs(env, &Mode::Copy { from: from.clone() }, &only, &args.job)?;
    let left = pending(&mut env.connect()?)?;
    if left > 0 {
        return Err(Failure::new(
            Kind::Refused,
            format!(
                "copy: {left} rows of {}.{} still differ from {from}",
                t.table, c.column
            ),
            "a build without `moving(...)` wrote only the old column meanwhile: make sure every \
             instance runs the `stage = \"read_old\"` build, then rerun `copy`",
        ));
    }
    if !env.global.json {
        out(format!(
            "every row of {}.{} holds its envelope. Deploy the build with `stage = \"read_new\"`, \
             then the build without `moving(...)`; once no instance of a `moving` build runs, \
             drop the old column yourself:\n  {drop_sql}",
            t.table, c.column
        ));
    }
    Ok(())
}
