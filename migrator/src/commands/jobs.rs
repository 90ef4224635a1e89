//! What `rewrap`, `reencrypt`, `adopt`, `copy` and `reindex` share: running the batch engine over the manifest's
//! columns with progress, and printing the summary.

use serde::Serialize;

use crate::engine::{self, Mode, Options, Summary};
use crate::env::{Env, note, out, out_json};
use crate::error::{Failure, Kind, Result};
use crate::progress::Progress;

/// The manifest columns a command works on (`rewrap`, `reencrypt`, `reindex`, `status`,
/// `verify`).
#[derive(Debug, Clone, clap::Args)]
pub struct Columns {
    /// Only this table (default: every sealed table in the manifest).
    #[arg(long)]
    pub table: Option<String>,
    /// Only this column (with --table).
    #[arg(long, requires = "table")]
    pub column: Option<String>,
}

impl Columns {
    /// Only the column `table.column`.
    #[must_use]
    pub fn one(table: &str, column: &str) -> Self {
        Self {
            table: Some(table.to_owned()),
            column: Some(column.to_owned()),
        }
    }

    /// `--table`, if given.
    #[must_use]
    pub fn table(&self) -> Option<&str> {
        self.table.as_deref()
    }

    /// `--column`, if given.
    #[must_use]
    pub fn column(&self) -> Option<&str> {
        self.column.as_deref()
    }
}

/// The one manifest column a command works on (`adopt`: the sealed column being filled;
/// `copy`: the column envelopes move into).
#[derive(Debug, Clone, clap::Args)]
pub struct Column {
    /// The table.
    #[arg(long)]
    pub table: String,
    /// The sealed column, as the manifest lists it.
    #[arg(long)]
    pub column: String,
}

/// The options of the commands that run one job over manifest columns (`rewrap`,
/// `reencrypt`, `reindex`).
#[derive(Debug, clap::Args)]
pub struct ColumnJobArgs {
    /// Which columns.
    #[command(flatten)]
    pub columns: Columns,
    /// Batch, worker, throttle and job options.
    #[command(flatten)]
    pub job: JobArgs,
}

/// Runs `mode` over `args`' columns with [`run_jobs`]; under `--dry-run`, prints instead, per
/// column, the rows `work` counts in its status ("would `what` N rows").
///
/// # Errors
/// As [`run_jobs`], and [`crate::commands::status::column_status`] for a dry run.
pub fn run_column_job(
    env: &mut Env,
    args: &ColumnJobArgs,
    mode: &Mode,
    what: &str,
    work: impl Fn(&crate::commands::status::ColumnStatus) -> u64,
) -> Result<()> {
    if args.job.dry_run {
        let targets = env.targets(args.columns.table(), args.columns.column())?;
        let store = env.key_store()?;
        let mut db = env.connect()?;
        for (t, c) in &targets {
            let s = crate::commands::status::column_status(&mut db, &*store, t, c)?;
            dry_run_line(env, what, &t.table, &c.column, work(&s));
        }
        return Ok(());
    }
    run_jobs(env, mode, &args.columns, &args.job).map(|_| ())
}

/// Options every batch command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct JobArgs {
    /// Rows per batch: each batch's writes and its checkpoint commit in one transaction.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub batch_size: u64,
    /// Parallel workers in this process (PostgreSQL and MariaDB; SQLite uses one). Workers in
    /// other processes or machines running the same job share the work.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub workers: u64,
    /// Throttle: at most this many rows per second over all workers of this process.
    #[arg(long)]
    pub max_rows_per_sec: Option<u64>,
    /// Job name for the checkpoint table (default: `<command>:<table>.<column>`). Runs with
    /// the same name resume and share each other's work.
    #[arg(long)]
    pub job: Option<String>,
    /// Count what would change; write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl JobArgs {
    /// The engine options.
    #[must_use]
    pub fn options(&self) -> Options {
        Options {
            batch: usize::try_from(self.batch_size).unwrap_or(2000),
            workers: usize::try_from(self.workers).unwrap_or(1),
            max_rows_per_sec: self.max_rows_per_sec,
            job: self.job.clone(),
        }
    }
}

/// KMS calls of a run.
#[derive(Debug, Serialize)]
struct KmsCalls {
    unwraps: u64,
    wraps: u64,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    jobs: &'a [Summary],
    kms_calls: KmsCalls,
    failed_rows: u64,
}

/// Runs `mode` over the manifest's `columns` and prints the summary. Rows that failed make it
/// return [`Kind::Refused`] (exit 1) after everything else was done.
///
/// # Errors
/// As [`engine::run`]; [`Kind::Refused`] when rows failed.
pub fn run_jobs(
    env: &mut Env,
    mode: &Mode,
    columns: &Columns,
    args: &JobArgs,
) -> Result<Vec<Summary>> {
    let mut targets = env.targets(columns.table(), columns.column())?;
    if *mode == Mode::Reindex {
        targets.retain(|(_, c)| c.blind_index.is_some());
    }
    let url = env.db_url()?;
    let ring = env.ring()?;
    // Refuse a manifest column the database lacks, and a per-tenant table whose tenant column
    // cannot give the scope, before any job runs (each job checks its own table again before
    // planning).
    let mut db = url.connect()?;
    for (t, c) in &targets {
        db.require_column(&t.table, &t.row_id_column, &c.column)?;
        if matches!(
            mode,
            Mode::Rewrap | Mode::Reencrypt | Mode::Reindex | Mode::Copy { .. }
        ) {
            crate::tenant::TenantScope::probe(&mut db, t)?;
        }
    }
    drop(db);
    let opts = args.options();
    let mut summaries = Vec::new();
    for (t, c) in &targets {
        let label = format!("{} {}.{}", mode.name(), t.table, c.column);
        let mut progress = Progress::new(&label, estimate(env, t)?, env.global.json);
        let s = engine::run(&url, &ring, mode, t, c, &opts, &mut |cs, total, before| {
            progress.tick(cs, total, before);
        });
        progress.finish();
        summaries.push(s?);
    }
    let calls = ring.kms_calls();
    let failed: u64 = summaries.iter().map(|s| s.rows_failed).sum();
    if env.global.json {
        let r = Report {
            jobs: &summaries,
            kms_calls: KmsCalls {
                unwraps: calls.unwraps,
                wraps: calls.wraps,
            },
            failed_rows: failed,
        };
        out_json(&r)?;
    } else {
        for s in &summaries {
            out(format!(
                "{} {}.{}: {} rows read, {} written, {} redone after concurrent writes, {} failed; \
                 chunks {}/{} ({} were done before) in {:.1} s",
                s.mode,
                s.table,
                s.column,
                s.rows_seen,
                s.rows_changed,
                s.rows_retried,
                s.rows_failed,
                s.chunks_done_before + s.chunks_done_now,
                s.chunks_total,
                s.chunks_done_before,
                s.seconds
            ));
            for f in &s.failures {
                out(format!(
                    "  failed: {}.{} row {}: {}",
                    f.table, f.column, f.row, f.error
                ));
            }
        }
        out(format!(
            "KMS calls: {} unwraps, {} wraps",
            calls.unwraps, calls.wraps
        ));
    }
    if failed > 0 {
        return Err(Failure::new(
            Kind::Refused,
            format!("{failed} rows could not be processed (listed above)"),
            format!(
                "{}; rows already done are not redone",
                engine::failure_help(summaries.iter().flat_map(|s| &s.failures))
            ),
        ));
    }
    Ok(summaries)
}

fn estimate(env: &Env, t: &leakless::manifest::SealedTable) -> Result<u64> {
    let mut db = env.connect()?;
    db.count(
        &format!("SELECT COUNT(*) AS n FROM {}", db.q(&t.table)),
        &[],
    )
}

/// Prints a dry-run line.
pub fn dry_run_line(env: &Env, what: &str, table: &str, column: &str, rows: u64) {
    if env.global.json {
        out(format!(
            "{{\"dry_run\": true, \"table\": {}, \"column\": {}, \"rows\": {rows}}}",
            serde_json::Value::from(table),
            serde_json::Value::from(column)
        ));
    } else {
        out(format!(
            "dry run: would {what} {rows} rows of {table}.{column}"
        ));
    }
    note_once();
}

fn note_once() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| note("dry run: nothing was written"));
}
