//! The residue scan from real values on SQLite, PostgreSQL and MariaDB: a legacy table holds
//! plaintext, its values are read through the database URL, the table is "adopted" (the
//! plaintext overwritten, or the table dropped), and the scan built from the values read before
//! finds the old values in the file / data directory / WAL / binlog **by row id**, while its
//! human and JSON reports contain none of them. The harness's own control (planted through the
//! same URL) must be found in every channel first. The scale test reads 1,000,000 addresses
//! from PostgreSQL and finds all of them in the heap file and the WAL.

use std::path::PathBuf;
use std::time::Instant;

use leakless_leaktest::Status;
use leakless_leaktest::residue::{
    ColumnSpec, ColumnSummary, DbControl, RealValue, ResidueCheck, ResidueReport, ResidueValues,
};
use leakless_leaktest::scan::EncodingSet;
use leakless_testkit::MariaServer;
use zeroize::Zeroizing;

use crate::support::address;

fn email(n: u64) -> String {
    format!("customer.{n}.{}@mail.example", n * 7919 % 10007)
}

/// The values of `columns` (`table.column` specs) read from the database at `url`, by the row
/// id column `id`.
fn read_columns(url: &str, columns: &[&str]) -> ResidueValues {
    let specs: Vec<ColumnSpec> = columns.iter().map(|c| c.parse().unwrap()).collect();
    ResidueValues::read(url, &specs, "id").unwrap()
}

/// The check of `values` with a control canary of the test's own (no database to plant it
/// through), and the control's text, for the test to plant where it scans.
fn check_with_own_control(values: ResidueValues) -> (ResidueCheck, String) {
    let marker = leakless_leaktest::canary::fresh_marker();
    let text = format!("control {marker} value");
    let mut controls = leakless_leaktest::CanarySet::new();
    controls
        .push(leakless_leaktest::Canary::text("ctl", &marker, &text).unwrap())
        .unwrap();
    (values.check(controls, &EncodingSet::Residue).unwrap(), text)
}

/// The harness's control planted through `url` (it reached the disk: no notes), and the check
/// of `read`'s values with it.
fn check_with_control(url: &str, read: ResidueValues) -> (DbControl, ResidueCheck) {
    let control = DbControl::plant(url).unwrap();
    assert!(control.notes().is_empty(), "{:?}", control.notes());
    let check = read.check(control.canary(), &EncodingSet::Residue).unwrap();
    (control, check)
}

/// The report mentions none of `values`, in its human or its JSON form.
fn assert_no_values(report: &ResidueReport, values: &[String]) {
    let human = report.human();
    let json = report.to_json().unwrap();
    for v in values {
        assert!(!human.contains(v.as_str()), "a value in the human report");
        assert!(!json.contains(v.as_str()), "a value in the JSON report");
    }
}

/// The report of `check` once its scans are done: the control's table is dropped, the human
/// report printed, and in each of `channels` the control must have been found (the detector
/// works there), then `rows` rows of each of `columns`.
fn finish_with_every_row_found(
    control: DbControl,
    check: ResidueCheck,
    channels: &[&str],
    columns: &[&str],
    rows: u64,
) -> ResidueReport {
    let report = check.report();
    control.drop_table().unwrap();
    eprintln!("{}", report.human());
    for ch in channels {
        report.report.assert_controls_found(ch);
        for col in columns {
            assert_eq!(found_rows(&report, ch, col).0, rows, "{ch}: {col}");
        }
    }
    report
}

/// The summary of `column` (a `table.column` spec) among the values read.
fn column_summary<'a>(read: &'a ResidueValues, column: &str) -> &'a ColumnSummary {
    read.columns()
        .iter()
        .find(|c| c.column == column)
        .unwrap_or_else(|| panic!("no column {column} was read"))
}

fn found_rows(report: &ResidueReport, channel: &str, column: &str) -> (u64, Vec<String>) {
    report
        .channel(channel)
        .and_then(|c| c.columns.iter().find(|c| c.column == column))
        .map(|c| (c.rows, c.row_ids.clone()))
        .unwrap_or_default()
}

#[test]
fn sqlite_old_values_of_a_dropped_table_are_found_by_row_id_and_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let url = format!("sqlite://{}", db.display());
    let mut sql = String::from(
        "PRAGMA journal_mode=DELETE; PRAGMA secure_delete=OFF;
         CREATE TABLE customers (id INTEGER PRIMARY KEY, address TEXT, email TEXT, token BLOB,
            code TEXT, lat REAL, lon REAL, profile TEXT);
         BEGIN;",
    );
    let mut values = Vec::new();
    for n in 1..=40u64 {
        let (a, e) = (address(n), email(n));
        // Rows 39 and 40 share row 1's e-mail: one value, three rows.
        let e = if n >= 39 { email(1) } else { e };
        sql.push_str(&format!(
            "INSERT INTO customers VALUES ({n}, '{a}', '{e}', X'{:032x}', 'C{n}', {}, {},
             '{{\"nickname\": \"Nick-{n}-Quixotic\"}}');",
            u128::from(n) * 0x1234_5678_9abc_def1_u128,
            51.0 + f64::from(u32::try_from(n).unwrap()) / 1000.0 + 0.000_000_7,
            -0.5 - f64::from(u32::try_from(n).unwrap()) / 1000.0 - 0.000_000_3,
        ));
        values.push(a);
        values.push(e);
        values.push(format!("Nick-{n}-Quixotic"));
    }
    sql.push_str("COMMIT;");
    {
        use diesel::connection::SimpleConnection as _;
        use diesel::prelude::*;
        let mut c = SqliteConnection::establish(db.to_str().unwrap()).unwrap();
        c.batch_execute(&sql).unwrap();
    }

    let t = Instant::now();
    let read = read_columns(
        &url,
        &[
            "customers.address",
            "customers.email",
            "customers.token",
            "customers.code",
            "customers.lat+lon",
            "customers.profile",
        ],
    );
    let codes = column_summary(&read, "customers.code");
    assert_eq!(
        codes.skipped_short, 40,
        "short codes are counted as skipped"
    );
    assert_eq!(codes.skipped_rows.len(), 20, "with a sample of their rows");
    let emails = column_summary(&read, "customers.email");
    assert_eq!(
        (emails.rows, emails.values),
        (40, 38),
        "duplicates are one value"
    );

    // Adoption: the plaintext table is copied sealed (here: replaced) and dropped; its pages go
    // to the freelist with their content.
    {
        use diesel::connection::SimpleConnection as _;
        use diesel::prelude::*;
        let mut c = SqliteConnection::establish(db.to_str().unwrap()).unwrap();
        c.batch_execute(
            "CREATE TABLE customers_sealed (id INTEGER PRIMARY KEY, address BLOB);
             INSERT INTO customers_sealed SELECT id, randomblob(64) FROM customers;
             DROP TABLE customers;",
        )
        .unwrap();
    }

    let control = DbControl::plant(&url).unwrap();
    let mut check = read.check(control.canary(), &EncodingSet::Residue).unwrap();
    check.scan_path("sqlite/file", &db);
    let mut report = check.report();
    report.source = leakless::redact::redact_url(&url);
    control.drop_table().unwrap();
    eprintln!("{}", report.human());
    eprintln!("sqlite residue: {:?}", t.elapsed());

    report.report.assert_controls_found("sqlite/file");
    assert_eq!(report.status(), Status::Leak);
    assert_eq!(report.exit_code(), 1);
    let (rows, ids) = found_rows(&report, "sqlite/file", "customers.address");
    assert_eq!(rows, 40, "every old address is found");
    assert!(ids.contains(&"1".to_owned()));
    let (rows, ids) = found_rows(&report, "sqlite/file", "customers.email");
    assert_eq!(
        rows, 40,
        "the shared e-mail counts for all three of its rows"
    );
    assert!(ids.contains(&"39".to_owned()) && ids.contains(&"40".to_owned()));
    assert_eq!(found_rows(&report, "sqlite/file", "customers.token").0, 40);
    assert_eq!(
        found_rows(&report, "sqlite/file", "customers.lat+lon").0,
        40
    );
    assert_eq!(
        found_rows(&report, "sqlite/file", "customers.profile[json]").0,
        40,
        "strings inside JSON documents are values of their own"
    );
    assert!(check.found("sqlite/file", "customers.address", "17"));
    assert_no_values(&report, &values);
}

#[test]
fn library_values_and_a_clean_channel() {
    // A channel without any of the values is clean once its control is found.
    let mut v = ResidueValues::new();
    for n in 0..10u64 {
        v.add(
            "people.address",
            &n.to_string(),
            RealValue::Text(Zeroizing::new(address(n))),
        )
        .unwrap();
    }
    v.add(
        "people.address",
        "99",
        RealValue::Text(Zeroizing::new("short".into())),
    )
    .unwrap();
    let (mut check, control) = check_with_own_control(v);
    let hay = format!("unrelated text; {control}; more text");
    check.scan_bytes("mem", "buffer", hay.as_bytes());
    let report = check.report();
    report.report.assert_controls_found("mem");
    assert_eq!(report.status(), Status::Clean, "{}", report.human());
    assert!(report.human().contains("1 too short to scan (rows 99)"));
    // The same check finds a value planted as UTF-16LE, reported by row id.
    let planted: Vec<u8> = address(7)
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    let mut hay2 = format!("{control} ").into_bytes();
    hay2.extend_from_slice(&planted);
    check.scan_bytes("mem2", "buffer", &hay2);
    let report = check.report();
    assert_eq!(
        found_rows(&report, "mem2", "people.address"),
        (1, vec!["7".to_owned()])
    );
    assert_no_values(&report, &(0..10).map(address).collect::<Vec<_>>());
}

#[test]
fn postgres_dead_tuples_and_wal_hold_the_old_values_by_row_id() {
    let pg = crate::support::pg_server();
    pg.sql("postgres", "CREATE DATABASE app").unwrap();
    let mut sql = String::from(
        "CREATE TABLE customers (id bigint PRIMARY KEY, address text, doc bytea, lat double precision,
            lon double precision, profile jsonb) WITH (autovacuum_enabled = off);
         INSERT INTO customers SELECT g, NULL, NULL, NULL, NULL, NULL FROM generate_series(1, 30) g;",
    );
    let mut values = Vec::new();
    for n in 1..=30u64 {
        let a = address(n);
        sql.push_str(&format!(
            "UPDATE customers SET address = '{a}', doc = '\\x{:040x}'::bytea, lat = {}, lon = {},
             profile = '{{\"nickname\": \"Nick-{n}-Quixotic\"}}' WHERE id = {n};",
            u128::from(n) * 0x0123_4567_89ab_cdef_0123_u128,
            48.0 + f64::from(u32::try_from(n).unwrap()) / 997.0,
            2.0 + f64::from(u32::try_from(n).unwrap()) / 991.0,
        ));
        values.push(a);
        values.push(format!("Nick-{n}-Quixotic"));
    }
    pg.sql("app", &sql).unwrap();
    let url = pg.url_for("app");
    let read = read_columns(
        &url,
        &[
            "customers.address",
            "customers.doc",
            "customers.lat+lon",
            "customers.profile",
        ],
    );
    assert_eq!(read.columns()[0].values, 30);
    // Adoption: the plaintext is overwritten (the sealed copy would go elsewhere); the old
    // tuples are dead but still on disk, and in the WAL.
    pg.sql(
        "app",
        "UPDATE customers SET address = md5(address), doc = NULL, lat = 0, lon = 0, profile = '{}';",
    )
    .unwrap();
    let (control, mut check) = check_with_control(&url, read);
    check.scan_path("postgres/data-dir", &pg.data_dir().join("base"));
    check.scan_path("postgres/wal", &pg.wal_dir());
    let report = finish_with_every_row_found(
        control,
        check,
        &["postgres/data-dir", "postgres/wal"],
        &[
            "customers.address",
            "customers.doc",
            "customers.lat+lon",
            "customers.profile[json]",
        ],
        30,
    );
    assert_eq!(report.exit_code(), 1);
    assert_no_values(&report, &values);
}

#[test]
fn mariadb_binlog_and_data_dir_hold_the_old_values_by_row_id() {
    let my = MariaServer::start().expect("MariaDB must start (scripts/mariadb-server)");
    let mut sql = String::from(
        "CREATE DATABASE app; USE app;
         CREATE TABLE customers (id INT PRIMARY KEY, address VARCHAR(200), email TEXT,
            token VARBINARY(32));",
    );
    let mut values = Vec::new();
    for n in 1..=25u64 {
        let (a, e) = (address(n), email(n));
        sql.push_str(&format!(
            "INSERT INTO customers VALUES ({n}, '{a}', '{e}', UNHEX('{:032x}'));",
            u128::from(n) * 0x1357_9bdf_2468_ace0_u128
        ));
        values.push(a);
        values.push(e);
    }
    my.sql("", &sql).unwrap();
    let url = my.url_for("app");
    let read = read_columns(
        &url,
        &["customers.address", "customers.email", "customers.token"],
    );
    my.sql(
        "app",
        "UPDATE customers SET address = SHA2(address, 256), email = NULL, token = NULL;",
    )
    .unwrap();
    let (control, mut check) = check_with_control(&url, read);
    let binlogs: Vec<PathBuf> = my.binlogs();
    assert!(!binlogs.is_empty());
    for b in &binlogs {
        check.scan_path("mariadb/binlog", b);
    }
    check.scan_path("mariadb/data-dir", &my.data_dir());
    let report = finish_with_every_row_found(
        control,
        check,
        &["mariadb/binlog", "mariadb/data-dir"],
        &["customers.address", "customers.email", "customers.token"],
        25,
    );
    assert_no_values(&report, &values);
}

#[test]
fn values_opened_from_sealed_columns_with_the_key_ring_are_found_by_row_id() {
    use leakless::{FieldContext, FieldPolicy, RowId};

    let (ring, scope) = crate::support::ring_with_scope("customers");
    let sealed: Vec<(i64, Vec<u8>)> = (1..=6i64)
        .map(|n| {
            let ctx = FieldContext::new("customers", "address", RowId::Int(n), 1);
            let plain = address(u64::try_from(n).unwrap());
            let env = ring
                .seal(&scope, &ctx, plain.as_bytes(), &FieldPolicy::default())
                .unwrap();
            (n, env)
        })
        .collect();
    let mut values = ResidueValues::new();
    values
        .add_sealed(
            &ring,
            &scope,
            "customers",
            "address",
            1,
            sealed.iter().map(|(n, e)| (RowId::Int(*n), e.as_slice())),
        )
        .unwrap();
    assert_eq!(values.len(), 6);
    // An envelope under the wrong row is refused with the row named, no value.
    let mut bad = ResidueValues::new();
    let e = bad
        .add_sealed(
            &ring,
            &scope,
            "customers",
            "address",
            1,
            [(RowId::Int(2), sealed[0].1.as_slice())],
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("customers.address#row=2"), "{e}");
    assert!(!e.contains(&address(1)));

    let (mut check, control) = check_with_own_control(values);
    // A backup of the table from before adoption: plaintext of rows 2 and 5, lower-cased.
    let backup = format!(
        "{control}\n2\t{}\n5\t{}\n",
        address(2).to_lowercase(),
        address(5).to_lowercase()
    );
    check.scan_bytes("backup", "customers.copy", backup.as_bytes());
    let report = check.report();
    report.report.assert_controls_found("backup");
    let (rows, mut ids) = found_rows(&report, "backup", "customers.address");
    ids.sort();
    assert_eq!((rows, ids), (2, vec!["2".to_owned(), "5".to_owned()]));
    assert_no_values(&report, &(1..=6).map(address).collect::<Vec<_>>());
}
