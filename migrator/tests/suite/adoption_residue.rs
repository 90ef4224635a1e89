//! Nothing left behind, on PostgreSQL, MariaDB and SQLite: a populated plaintext column is
//! adopted with the real binary, dropped, and finished with `purge-residue`; the leak harness's residue scan, built from the column's
//! real values read before the adoption, then finds none of them in the database files, the
//! write-ahead log or the server log. The positive control: the same scan, run after `DROP
//! COLUMN` and before the finishing step, finds every value, and the harness's own planted
//! value is found in every channel each time.

use std::path::{Path, PathBuf};

use leakless_leaktest::residue::{DbControl, ResidueReport, ResidueValues};
use leakless_leaktest::scan::EncodingSet;
use leakless_testkit::{MariaServer, PgOptions, PgServer};

use crate::support::{Backend, Fixture, code, stderr, stdout};

const ROWS: i64 = 120;

/// Rows of `column` found in `channel`.
fn found(report: &ResidueReport, channel: &str, column: &str) -> u64 {
    report
        .channel(channel)
        .and_then(|c| c.columns.iter().find(|c| c.column == column))
        .map_or(0, |c| c.rows)
}

/// Scans `channels` for the values read before adoption, with a freshly planted control.
fn scan(url: &str, values: ResidueValues, channels: &[(&str, PathBuf)]) -> ResidueReport {
    let control = DbControl::plant(url).unwrap();
    let mut check = values
        .check(control.canary(), &EncodingSet::Residue)
        .unwrap();
    for (name, path) in channels {
        check.scan_path(name, path);
    }
    let report = check.report();
    control.drop_table().unwrap();
    for (name, _) in channels {
        let c = report.report.channel(name).expect("channel scanned");
        assert!(
            !c.controls_expected.is_empty() && c.controls_missed.is_empty(),
            "{name}: the planted control was not found, the scan proves nothing:\n{}",
            report.human()
        );
    }
    report
}

/// Seeds plaintext, makes dead row versions, reads the real values, adopts with the CLI and
/// drops the legacy column: the state before the finishing step. The values come back twice
/// (a scan consumes them): one for the scan before the finishing step, one for after.
fn adopt_and_drop(f: &Fixture) -> (ResidueValues, ResidueValues) {
    f.seed(0, ROWS, true);
    // Updates leave the earlier row versions (with the plaintext) behind as dead tuples.
    f.batch("UPDATE patients SET id = id + 0 WHERE id % 2 = 0");
    let url = crate::support::store_url(f.backend, &f.url);
    let read = || {
        let v =
            ResidueValues::read(&url, &["patients.email_plain".parse().unwrap()], "id").unwrap();
        assert_eq!(v.columns()[0].values, ROWS as u64);
        v
    };
    let values = (read(), read());
    let o = f.adopt_email(&[]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    // Refused while the legacy column exists.
    let o = purge_residue(f);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("still exists"), "{}", stderr(&o));
    f.batch("ALTER TABLE patients DROP COLUMN email_plain");
    f.assert_all_open(crate::support::plain);
    values
}

/// Runs `purge-residue` for the legacy column `patients.email_plain`.
fn purge_residue(f: &Fixture) -> std::process::Output {
    f.run(&[
        "purge-residue",
        "--table",
        "patients",
        "--dropped-column",
        "email_plain",
    ])
}

fn purge(f: &Fixture) -> String {
    let o = purge_residue(f);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(!out.contains("patient-"), "the command printed a value");
    eprintln!("{out}");
    out
}

#[test]
fn postgres_adoption_leaves_nothing_after_purge_residue() {
    let pg = PgServer::start_with(&PgOptions::statement_logging())
        .expect("PostgreSQL must start (scripts/pg-cluster)");
    pg.sql("postgres", "CREATE DATABASE app").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = Fixture::on_url(Backend::Postgres, pg.url_for("app"), None, dir);
    let (values, values_again) = adopt_and_drop(&f);
    let url = pg.url_for("app");
    // The whole data directory (tables, catalogs, WAL, statistics), the WAL on its own, and
    // the server log.
    let channels = [
        ("postgres/data-dir", pg.data_dir()),
        ("postgres/wal", pg.wal_dir()),
        ("postgres/log", pg.log_path()),
    ];

    // Before the finishing step: every value is still in the heap file, the WAL and the log
    // (the seed's statements, with their parameters).
    pg.checkpoint().unwrap();
    let before = scan(&url, values, &channels);
    let col = "patients.email_plain";
    for ch in ["postgres/data-dir", "postgres/wal", "postgres/log"] {
        assert_eq!(found(&before, ch, col), ROWS as u64, "{ch} before");
    }

    let out = purge(&f);
    assert!(
        out.contains("done: rewrote patients (VACUUM FULL)"),
        "{out}"
    );
    assert!(out.contains("done: removed all"), "{out}");
    assert!(
        out.contains("cannot reach: the server log (logging_collector is off"),
        "{out}"
    );
    // The operator's part, as the command says: the server log up to now goes.
    truncate(&pg.log_path());

    let after = scan(&url, values_again, &channels);
    eprintln!("{}", after.human());
    for (ch, _) in &channels {
        assert_eq!(found(&after, ch, col), 0, "{ch} after purge-residue");
    }
    assert_eq!(after.exit_code(), 0, "{}", after.human());
}

#[test]
fn sqlite_adoption_leaves_nothing_after_purge_residue() {
    let f = Fixture::new(Backend::Sqlite);
    f.batch("PRAGMA secure_delete = OFF");
    let (values, values_again) = adopt_and_drop(&f);
    let url = format!("sqlite://{}", f.url);
    // The directory holds the database file and its -wal, -shm or -journal files.
    let dir = PathBuf::from(&f.url).parent().unwrap().to_owned();
    let channels = [("sqlite/files", dir)];
    let before = scan(&url, values, &channels);
    let col = "patients.email_plain";
    // SQLite rewrites pages in place, so the adoption's own writes overwrite part of the old
    // cells; the rest stay in free pages and the WAL.
    let n = found(&before, "sqlite/files", col);
    eprintln!("sqlite: {n} of {ROWS} old values found before the finishing step");
    assert!(n >= ROWS as u64 / 2, "{n} found before");

    let out = purge(&f);
    assert!(
        out.contains("done: rewrote the database file (VACUUM"),
        "{out}"
    );

    let after = scan(&url, values_again, &channels);
    eprintln!("{}", after.human());
    for (ch, _) in &channels {
        assert_eq!(found(&after, ch, col), 0, "{ch} after purge-residue");
    }
    assert_eq!(after.exit_code(), 0, "{}", after.human());
}

fn truncate(path: &Path) {
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
}

/// The files of a MariaDB data directory by channel: table files (the database's folder, the
/// system and undo tablespaces), the redo log, the binary logs; and the general query log.
fn mariadb_channels(my: &MariaServer) -> Vec<(&'static str, PathBuf)> {
    let data = my.data_dir();
    let mut channels = vec![
        ("mariadb/table-files", data.join("app")),
        ("mariadb/general-log", my.general_log_path()),
    ];
    for entry in std::fs::read_dir(&data).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("ib_logfile") {
            channels.push(("mariadb/redo-log", p));
        } else if name.starts_with("ibdata") || name.starts_with("undo") {
            channels.push(("mariadb/table-files", p));
        }
    }
    for b in my.binlogs() {
        channels.push(("mariadb/binlog", b));
    }
    channels
}

#[test]
fn mariadb_adoption_leaves_nothing_after_purge_residue() {
    let my = MariaServer::start().expect("MariaDB must start (scripts/mariadb-server)");
    my.sql("", "CREATE DATABASE app").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = Fixture::on_url(Backend::Mysql, my.url_for("app"), None, dir);
    let (values, values_again) = adopt_and_drop(&f);
    let url = my.url_for("app");
    // Write the table's pages into its file now (InnoDB keeps them in memory otherwise).
    my.sql("app", "FLUSH TABLES patients FOR EXPORT; UNLOCK TABLES;")
        .unwrap();

    // Before: the dropped column is still in the table file (DROP COLUMN is instant), and
    // every value is in the redo log, the binary log and the general query log.
    let before = scan(&url, values, &mariadb_channels(&my));
    let col = "patients.email_plain";
    for ch in [
        "mariadb/table-files",
        "mariadb/redo-log",
        "mariadb/binlog",
        "mariadb/general-log",
    ] {
        assert_eq!(found(&before, ch, col), ROWS as u64, "{ch} before");
    }

    let out = purge(&f);
    assert!(out.contains("done: rebuilt patients"), "{out}");
    assert!(out.contains("done: purged every binary log"), "{out}");
    assert!(out.contains("done: replaced the InnoDB redo log"), "{out}");
    assert!(out.contains("cannot reach: the general query log"), "{out}");
    // The operator's part, as the command says: the general log up to now goes.
    truncate(&my.general_log_path());

    let channels = mariadb_channels(&my);
    let after = scan(&url, values_again, &channels);
    eprintln!("{}", after.human());
    for (ch, _) in &channels {
        assert_eq!(found(&after, ch, col), 0, "{ch} after purge-residue");
    }
    assert_eq!(after.exit_code(), 0, "{}", after.human());
}
