//! `purge-residue`: the finishing step of an adoption. After the legacy plaintext column is
//! dropped, its old values still sit in the table's file (dead row versions, and the dropped
//! column's bytes, which `DROP COLUMN` only hides), in the write-ahead log and in the server's
//! logs. This command rewrites the table and purges the log files the server lets SQL reach,
//! per database, and lists what it cannot reach (archives, replicas, server log files, freed
//! file-system blocks, backups), each with what the operator does about it. It never drops a
//! column itself, and refuses while the named legacy column still exists.
//!
//! See `docs/adoption.md`, "Residue: what adoption leaves behind".

use serde::Serialize;

use crate::db::{Backend, Db, OneInt, OneText, ident};
use crate::env::{Env, out, out_json};
use crate::error::{Failure, Kind, Result};

/// Options of `purge-residue`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The adopted table to rewrite.
    #[arg(long)]
    pub table: String,
    /// The legacy plaintext column, already dropped: refused while it still exists (the
    /// residue would come straight back).
    #[arg(long)]
    pub dropped_column: Option<String>,
    /// PostgreSQL: how many WAL segment switches and checkpoints to try before reporting the
    /// segments that stay (held by `wal_keep_size`, a replication slot or the archiver).
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub wal_rounds: u64,
}

/// What the command did and what it could not do.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    /// The steps done, in order.
    pub done: Vec<String>,
    /// What it cannot reach, each with what the operator does about it.
    pub cannot_reach: Vec<String>,
}

/// Runs `purge-residue`.
///
/// # Errors
/// [`Kind::Usage`] for a missing table or a legacy column that still exists;
/// [`Kind::Database`] when a step fails (for example without the privilege it needs: a
/// superuser or the `pg_checkpoint` and `pg_monitor` roles on PostgreSQL, `RELOAD` and
/// `BINLOG ADMIN` on MariaDB).
pub fn run(env: &mut Env, args: &Args) -> Result<()> {
    ident(&args.table)?;
    let mut db = env.connect()?;
    if !db.table_exists(&args.table)? {
        return Err(Failure::new(
            Kind::Usage,
            format!("no table {} in the database", args.table),
            "check --table",
        ));
    }
    if let Some(col) = &args.dropped_column {
        ident(col)?;
        if db.column_type(&args.table, col)?.is_some() {
            return Err(Failure::new(
                Kind::Usage,
                format!(
                    "{}.{col} still exists: purging now would leave its values in place",
                    args.table
                ),
                format!(
                    "drop it first, once no build that selects it runs (docs/adoption.md, step \
                     7): ALTER TABLE {} DROP COLUMN {};",
                    db.q(&args.table),
                    db.q(col)
                ),
            ));
        }
    }
    let outcome = match db.backend() {
        Backend::Postgres => postgres(&mut db, args)?,
        Backend::Mysql => mariadb(&mut db, &args.table)?,
        Backend::Sqlite => sqlite(&mut db)?,
    };
    if env.global.json {
        out_json(&outcome)?;
    } else {
        for d in &outcome.done {
            out(format!("done: {d}"));
        }
        for c in &outcome.cannot_reach {
            out(format!("cannot reach: {c}"));
        }
    }
    Ok(())
}

fn text(db: &mut Db, sql: &str) -> Result<String> {
    let rows: Vec<OneText> = db.load(sql, &[])?;
    Ok(rows.into_iter().next().map(|r| r.id).unwrap_or_default())
}

fn count(db: &mut Db, sql: &str) -> Result<i64> {
    let rows: Vec<OneInt> = db.load(sql, &[])?;
    Ok(rows.first().map_or(0, |r| r.n))
}

const FS_BLOCKS: &str = "blocks the file system freed (the old table file, deleted log files) and \
     the storage below it (SSD remapping, volume snapshots): keep the data directory on an \
     encrypted volume whose key you can destroy, or wipe the storage as a whole";
const BACKUPS: &str = "backups taken before the adoption: expire them like a leaked copy (every \
     backup older than the DROP COLUMN)";

fn postgres(db: &mut Db, args: &Args) -> Result<Outcome> {
    let mut o = Outcome::default();
    let t = db.q(&args.table);
    db.batch(&format!("VACUUM FULL {t}"))?;
    o.done.push(format!(
        "rewrote {} (VACUUM FULL): a new file without dead row versions or dropped columns, \
         its TOAST table and indexes rebuilt",
        args.table
    ));
    // Column statistics of the dropped column were deleted with it, leaving dead rows in
    // pg_statistic that can hold its most common values.
    match db.batch("VACUUM FULL pg_catalog.pg_statistic") {
        Ok(()) => o.done.push(
            "rewrote pg_statistic (VACUUM FULL): the dropped column's statistics held sample \
             values"
                .to_owned(),
        ),
        Err(e) => o.cannot_reach.push(format!(
            "pg_statistic ({}): a superuser runs VACUUM FULL pg_catalog.pg_statistic; the \
             dropped column's statistics may hold sample values",
            e.what
        )),
    }
    // Every segment file there is now may hold the old rows: the ones written up to now, and
    // the future ones, which are earlier segments renamed for reuse with their contents.
    let segments = |db: &mut Db| -> Result<Vec<String>> {
        let rows: Vec<OneText> = db.load(
            "SELECT name AS id FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$' ORDER BY name",
            &[],
        )?;
        Ok(rows.into_iter().map(|r| r.id).collect())
    };
    let old = segments(db)?;
    let recycle = text(db, "SELECT current_setting('wal_recycle') AS id")?;
    if recycle == "on" {
        db.batch("ALTER SYSTEM SET wal_recycle = off")?;
        db.batch("SELECT pg_reload_conf()")?;
        // The checkpointer reads the new setting on its next wake-up.
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let left = |db: &mut Db| -> Result<Vec<String>> {
        Ok(segments(db)?
            .into_iter()
            .filter(|s| old.contains(s))
            .collect())
    };
    let mut rounds = 0;
    // Each round moves to the next segment (a switch pads the rest of the current one) and
    // lets a checkpoint delete the segments before it; the checkpoint's own record makes the
    // next switch move on.
    let mut purge = |db: &mut Db| -> Result<Vec<String>> {
        let mut remaining = left(db)?;
        while !remaining.is_empty() && rounds < args.wal_rounds {
            db.batch("SELECT pg_switch_wal()")?;
            db.batch("CHECKPOINT")?;
            rounds += 1;
            remaining = left(db)?;
        }
        Ok(remaining)
    };
    let remaining = purge(db);
    // wal_recycle goes back on whatever happened above.
    if recycle == "on" {
        db.batch("ALTER SYSTEM RESET wal_recycle")?;
        db.batch("SELECT pg_reload_conf()")?;
    }
    let remaining = remaining?;
    if remaining.is_empty() {
        o.done.push(format!(
            "removed all {} WAL segment files that existed before ({rounds} segment switches \
             and checkpoints, with wal_recycle off meanwhile so that old segments are deleted, \
             not renamed for reuse with their contents)",
            old.len()
        ));
    } else {
        let keep = text(db, "SELECT current_setting('wal_keep_size') AS id")?;
        let slots = count(db, "SELECT COUNT(*) AS n FROM pg_replication_slots")?;
        o.cannot_reach.push(format!(
            "{} of {} earlier WAL segment files stay after {rounds} rounds ({} to {}; \
             wal_keep_size = {keep}, {slots} replication slots): let standbys and slots catch \
             up, lower wal_keep_size, and rerun (--wal-rounds for more rounds)",
            remaining.len(),
            old.len(),
            remaining.first().map_or("", String::as_str),
            remaining.last().map_or("", String::as_str),
        ));
    }
    let last_old = old.last().cloned().unwrap_or_default();
    if text(db, "SELECT current_setting('archive_mode') AS id")? != "off" {
        o.cannot_reach.push(format!(
            "archived WAL (archive_mode is on): delete the segments up to {last_old} where \
             archive_command stores them"
        ));
    }
    if count(db, "SELECT COUNT(*) AS n FROM pg_stat_replication")? > 0 {
        o.cannot_reach.push(
            "standbys: each keeps its own copy of the data and WAL; run this step there after \
             they replay it, or rebuild them from a new base backup"
                .to_owned(),
        );
    }
    if text(db, "SELECT current_setting('logging_collector') AS id")? == "on" {
        db.batch("SELECT pg_rotate_logfile()")?;
        let dir = text(db, "SELECT current_setting('log_directory') AS id")?;
        o.cannot_reach.push(format!(
            "the server log files: rotated just now; delete the files in log_directory ({dir}) \
             older than now: with log_statement set they hold the application's writes, \
             parameters included"
        ));
    } else {
        o.cannot_reach.push(
            "the server log (logging_collector is off: it goes to the server's standard error, \
             wherever the service manager keeps it): delete or truncate what it wrote up to now; \
             with log_statement set it holds the application's writes, parameters included"
                .to_owned(),
        );
    }
    o.cannot_reach.push(FS_BLOCKS.to_owned());
    o.cannot_reach.push(BACKUPS.to_owned());
    Ok(o)
}

fn mariadb(db: &mut Db, table: &str) -> Result<Outcome> {
    let mut o = Outcome::default();
    db.batch(&format!("ALTER TABLE {} FORCE", db.q(table)))?;
    o.done.push(format!(
        "rebuilt {table} (ALTER TABLE ... FORCE): a new tablespace without old records or the \
         dropped column"
    ));
    if count(db, "SELECT CAST(@@log_bin AS SIGNED) AS n")? == 1 {
        db.batch("FLUSH BINARY LOGS")?;
        let current: Vec<MasterStatus> = db.load("SHOW MASTER STATUS", &[])?;
        let Some(current) = current.into_iter().next() else {
            return Err(Failure::new(
                Kind::Database,
                "SHOW MASTER STATUS names no binary log although log_bin is on",
                "check the server's binary log settings",
            ));
        };
        ident_like_file(&current.file)?;
        db.batch(&format!("PURGE BINARY LOGS TO '{}'", current.file))?;
        o.done.push(format!(
            "purged every binary log before the new {} (FLUSH BINARY LOGS, PURGE BINARY LOGS \
             TO); replicas must have read them first",
            current.file
        ));
    }
    // The redo log is circular: old records stay until overwritten. Resizing it (dynamic since
    // MariaDB 10.11) makes the server write a new log file and delete the old one; resizing
    // back restores the setting.
    let size = count(db, "SELECT CAST(@@innodb_log_file_size AS SIGNED) AS n")?;
    let resized = db
        .batch(&format!(
            "SET GLOBAL innodb_log_file_size = {}",
            size.saturating_add(1 << 20)
        ))
        .and_then(|()| db.batch(&format!("SET GLOBAL innodb_log_file_size = {size}")));
    match resized {
        Ok(()) => o.done.push(
            "replaced the InnoDB redo log (ib_logfile0) by resizing it and back: the server \
             wrote a new file and deleted the old one"
                .to_owned(),
        ),
        Err(e) => o.cannot_reach.push(format!(
            "the InnoDB redo log (ib_logfile0), which keeps old records until the server writes \
             innodb_log_file_size of new changes over them: resizing it failed ({}); MariaDB \
             10.11 resizes it online, older servers at a restart with a new size",
            e.what
        )),
    }
    if count(db, "SELECT CAST(@@general_log AS SIGNED) AS n")? == 1 {
        let file = text(db, "SELECT CAST(@@general_log_file AS CHAR) AS id")?;
        o.cannot_reach.push(format!(
            "the general query log ({file}): it holds the application's statements; move it \
             away, run FLUSH GENERAL LOGS, and delete the old file"
        ));
    }
    o.cannot_reach.push(FS_BLOCKS.to_owned());
    o.cannot_reach.push(BACKUPS.to_owned());
    Ok(o)
}

/// The first column of `SHOW MASTER STATUS`.
#[derive(diesel::QueryableByName)]
struct MasterStatus {
    #[diesel(sql_type = diesel::sql_types::Text, column_name = "File")]
    file: String,
}

/// A binary log file name as the server reports it (`binlog.000012`): refused if it could
/// break out of the quoted literal it goes into.
fn ident_like_file(name: &str) -> Result<()> {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        Ok(())
    } else {
        Err(Failure::new(
            Kind::Database,
            "the server reported a binary log name with unexpected characters",
            "purge the binary logs by hand (PURGE BINARY LOGS TO ...)",
        ))
    }
}

fn sqlite(db: &mut Db) -> Result<Outcome> {
    let mut o = Outcome::default();
    db.batch("PRAGMA secure_delete = ON")?;
    db.batch("VACUUM")?;
    o.done.push(
        "rewrote the database file (VACUUM, with secure_delete on): no free page keeps an old \
         record"
            .to_owned(),
    );
    db.batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
    o.done.push(
        "emptied the write-ahead log (wal_checkpoint(TRUNCATE)); a rollback journal is deleted \
         after each transaction"
            .to_owned(),
    );
    o.cannot_reach.push(FS_BLOCKS.to_owned());
    o.cannot_reach.push(BACKUPS.to_owned());
    Ok(o)
}
