//! Numeric forms of GPS canaries on real storage: `real`, `double precision` and `numeric`
//! (unconstrained, `numeric(9,6)`, `numeric(10,7)`) pairs in PostgreSQL's heap files, WAL and
//! `pg_basebackup`; `DECIMAL(9,6)`, `DECIMAL(10,7)` and `FLOAT` pairs in MariaDB's InnoDB
//! files, redo log and binary log; SQLite `REAL` in the database file. Each test first finds a
//! plaintext control; a point sharing only its latitude with a stored one is not reported as
//! the pair.

use std::path::Path;

use diesel::prelude::*;
use leakless_leaktest::encode::{mariadb_decimal, needles_for, pg_numeric, round_decimal};
use leakless_leaktest::report::Report;
use leakless_leaktest::scan::self_test;
use leakless_leaktest::{Canary, CanarySet, Encoding, LeakCheck, Scanner};
use leakless_testkit::MariaServer;

const CONTROL: &str = "Control LKNUMCTRL1, 7 Leaky Lane";

/// The points, one per column type, and a point that shares its latitude with `n96` only.
const REAL: (f64, f64) = (40.689_249_4, -74.044_500_4);
const DOUBLE: (f64, f64) = (27.175_144_8, 78.042_142_2);
const NUM: (f64, f64) = (-33.856_784_412, 151.215_296_733);
const N96: (f64, f64) = (48.858_370_1, 2.294_481_3);
const N107: (f64, f64) = (-22.951_897, -43.210_487_2);
const OTHER: (f64, f64) = (48.858_370_1, 2.352_221_9);
/// 17 significant digits: a float8 cast to numeric keeps 15.
const F8: (f64, f64) = (12.345_678_912_345_678, -61.234_567_891_234_57);

fn canaries() -> CanarySet {
    let mut set = crate::support::set_with_control("control", "LKNUMCTRL1", CONTROL);
    for (id, (lat, lon)) in [
        ("real", REAL),
        ("double", DOUBLE),
        ("num", NUM),
        ("n96", N96),
        ("n107", N107),
        ("other", OTHER),
        ("f8", F8),
    ] {
        set.push(Canary::gps(id, &format!("LKNUM{id}"), lat, lon))
            .unwrap();
    }
    set
}

/// Whether `channel` reports canary `id` in `encoding` with form `form`, optionally only in
/// artifacts whose name contains `artifact`.
fn seen(report: &Report, channel: &str, id: &str, encoding: Encoding, form: &str) -> bool {
    report
        .channels
        .iter()
        .filter(|c| c.channel == channel)
        .flat_map(|c| c.leaks.iter().chain(&c.control_findings))
        .any(|f| f.canary_id == id && f.encoding == encoding && f.form == form)
}

fn assert_seen(report: &Report, channel: &str, id: &str, encoding: Encoding, form: &str) {
    assert!(
        seen(report, channel, id, encoding, form),
        "{channel}: {id} not found as {encoding} {form}:\n{}",
        report.human()
    );
}

/// The control is found, there are no harness errors, and `other` is never reported as a pair.
fn assert_control_and_no_false_pair(report: &Report, channel: &str) {
    let c = report.assert_controls_found(channel);
    assert!(c.errors.is_empty(), "{channel}: {:?}", c.errors);
    let false_pair = c
        .leaks
        .iter()
        .filter(|f| f.canary_id == "other")
        .find(|f| f.form.starts_with("pair") || f.form == "f32-pair");
    assert!(
        false_pair.is_none(),
        "{channel}: a point sharing only its latitude was reported as a pair: {false_pair:?}"
    );
}

#[test]
fn encoders_match_reference_vectors() {
    // decimal2bin's own example: 1234567890.1234 as DECIMAL(14,4), and its negation.
    assert_eq!(
        mariadb_decimal(false, "1234567890", "1234", 10, 4).unwrap(),
        [0x81, 0x0D, 0xFB, 0x38, 0xD2, 0x04, 0xD2]
    );
    assert_eq!(
        mariadb_decimal(true, "1234567890", "1234", 10, 4).unwrap(),
        [0x7E, 0xF2, 0x04, 0xC7, 0x2D, 0xFB, 0x2D]
    );
    assert!(mariadb_decimal(false, "123", "5", 2, 1).is_none());
    // 51.507412 as numeric with dscale 6: 9-byte short varlena, header 0x8300, digits
    // 51, 5074, 1200.
    assert_eq!(
        pg_numeric(false, "51", "507412").unwrap(),
        [0x13, 0x00, 0x83, 0x33, 0x00, 0xD2, 0x13, 0xB0, 0x04]
    );
    // -0.1277 (dscale 4): weight -1, sign bit, one digit 1277.
    assert_eq!(
        pg_numeric(true, "0", "1277").unwrap(),
        [0x0B, 0x7F, 0xA2, 0xFD, 0x04]
    );
    // A float8 with 17 significant digits, bound to a numeric column, is stored as its
    // 15-digit form (scale 13 here): that pair is among the needles.
    let c = Canary::gps("f8", "LKF8", 12.345_678_912_345_678, -3.000_000_7);
    let mut needles = Vec::new();
    needles_for(0, &c, &mut needles).unwrap();
    let want = [
        pg_numeric(false, "12", "3456789123457").unwrap(),
        pg_numeric(true, "3", "0000007").unwrap(),
    ]
    .concat();
    assert!(
        needles
            .iter()
            .any(|n| n.encoding == Encoding::PgNumeric && *n.bytes == want)
    );
    assert_eq!(
        round_decimal(2.294_481_35, 7),
        (false, "2".into(), "2944814".into())
    );
    assert_eq!(
        round_decimal(-0.999_96, 4),
        (true, "1".into(), "0000".into())
    );
}

#[test]
fn the_self_test_plants_every_numeric_form() {
    let scanner = Scanner::new(canaries()).unwrap();
    assert_eq!(self_test(&scanner), Vec::<String>::new());
}

fn scan_dir(check: &mut LeakCheck, channel: &str, path: &Path) {
    check.expect_control(channel, "control");
    check.scan_path(channel, path);
}

#[test]
fn postgres_real_double_and_numeric_pairs_are_found_in_heap_wal_and_basebackup() {
    let pg = crate::support::pg_server();
    pg.sql("postgres", "CREATE DATABASE g").unwrap();
    let row = |(lat, lon): (f64, f64)| format!("('{lat}', '{lon}')");
    pg.sql(
        "g",
        &format!(
            "SET synchronous_commit = on;
             CREATE TABLE leaky (v text);
             INSERT INTO leaky VALUES ('{CONTROL}');
             CREATE TABLE t_real (id int, lat real, lon real);
             CREATE TABLE t_double (id int, lat double precision, lon double precision);
             CREATE TABLE t_num (id int, lat numeric, lon numeric);
             CREATE TABLE t_n96 (id int, lat numeric(9,6), lon numeric(9,6));
             CREATE TABLE t_n107 (id int, lat numeric(10,7), lon numeric(10,7));
             CREATE TABLE t_f8 (id int, lat numeric, lon numeric);
             INSERT INTO t_f8 (lat, lon) VALUES ({}::float8, {}::float8);
             INSERT INTO t_real (lat, lon) VALUES {};
             INSERT INTO t_double (lat, lon) VALUES {};
             INSERT INTO t_num (lat, lon) VALUES {};
             INSERT INTO t_n96 (lat, lon) VALUES {}, {};
             INSERT INTO t_n107 (lat, lon) VALUES {};",
            F8.0,
            F8.1,
            row(REAL),
            row(DOUBLE),
            row(NUM),
            row(N96),
            // The other point's latitude with a third longitude: not the `other` pair.
            row((OTHER.0, 2.4)),
            row(N107),
        ),
    )
    .unwrap();
    let mut check = LeakCheck::new(canaries()).unwrap();
    let started = std::time::Instant::now();
    scan_dir(&mut check, "wal", &pg.wal_dir());
    pg.checkpoint().unwrap();
    scan_dir(&mut check, "data-dir", &pg.data_dir().join("base"));
    let out = tempfile::tempdir().unwrap();
    pg.basebackup(out.path(), false).unwrap();
    scan_dir(&mut check, "basebackup", out.path());
    eprintln!("scans took {:?}", started.elapsed());
    let report = check.report();
    for channel in ["wal", "data-dir", "basebackup"] {
        assert_control_and_no_false_pair(&report, channel);
        assert_seen(&report, channel, "real", Encoding::F32Le, "f32-pair");
        assert_seen(&report, channel, "double", Encoding::F64Le, "f64");
        assert_seen(&report, channel, "num", Encoding::PgNumeric, "pair/full");
        assert_seen(&report, channel, "n96", Encoding::PgNumeric, "pair/6dp");
        assert_seen(&report, channel, "n107", Encoding::PgNumeric, "pair/7dp");
        // A float8 parameter stored in a numeric column (15 significant digits).
        assert_seen(&report, channel, "f8", Encoding::PgNumeric, "pair/full");
        // The stored latitude alone (a 9-byte datum) is found, for both canaries holding it.
        assert_seen(
            &report,
            channel,
            "other",
            Encoding::PgNumeric,
            "decimal/6dp",
        );
    }
}

#[test]
fn sqlite_real_pair_is_found_in_the_database_file() {
    let (_dir, db, mut conn) = crate::support::sqlite_in_tempdir("g.db");
    diesel::sql_query("CREATE TABLE leaky (v TEXT)")
        .execute(&mut conn)
        .unwrap();
    diesel::sql_query(format!("INSERT INTO leaky VALUES ('{CONTROL}')"))
        .execute(&mut conn)
        .unwrap();
    diesel::sql_query("CREATE TABLE t (id INTEGER PRIMARY KEY, lat REAL, lon REAL)")
        .execute(&mut conn)
        .unwrap();
    for (lat, lon) in [DOUBLE, (OTHER.0, 2.4)] {
        diesel::sql_query(format!("INSERT INTO t (lat, lon) VALUES ({lat}, {lon})"))
            .execute(&mut conn)
            .unwrap();
    }
    drop(conn);
    let mut check = LeakCheck::new(canaries()).unwrap();
    scan_dir(&mut check, "sqlite", &db);
    let report = check.report();
    assert_control_and_no_false_pair(&report, "sqlite");
    assert_seen(&report, "sqlite", "double", Encoding::F64Be, "f64");
    assert_seen(&report, "sqlite", "other", Encoding::F64Be, "f64");
}

#[test]
fn mariadb_decimal_and_float_pairs_are_found_in_innodb_redo_and_binlog() {
    let db = MariaServer::start().unwrap();
    let row = |(lat, lon): (f64, f64)| format!("('{lat}', '{lon}')");
    db.sql(
        "",
        &format!(
            "SET GLOBAL innodb_flush_log_at_trx_commit = 1;
             CREATE DATABASE g;
             USE g;
             CREATE TABLE leaky (id INT PRIMARY KEY AUTO_INCREMENT, v TEXT) ENGINE=InnoDB;
             INSERT INTO leaky (v) VALUES ('{CONTROL}');
             CREATE TABLE t_float (id INT PRIMARY KEY AUTO_INCREMENT, lat FLOAT, lon FLOAT);
             CREATE TABLE t_d96 (id INT PRIMARY KEY AUTO_INCREMENT,
                 lat DECIMAL(9,6), lon DECIMAL(9,6));
             CREATE TABLE t_d107 (id INT PRIMARY KEY AUTO_INCREMENT,
                 lat DECIMAL(10,7), lon DECIMAL(10,7));
             INSERT INTO t_float (lat, lon) VALUES {};
             INSERT INTO t_d96 (lat, lon) VALUES {}, {};
             INSERT INTO t_d107 (lat, lon) VALUES {};
             FLUSH TABLES leaky, t_float, t_d96, t_d107 FOR EXPORT;
             UNLOCK TABLES;",
            row(REAL),
            row(N96),
            row((OTHER.0, 2.4)),
            row(N107),
        ),
    )
    .unwrap();
    db.flush_logs().unwrap();
    let mut check = LeakCheck::new(canaries()).unwrap();
    let data = db.data_dir();
    scan_dir(&mut check, "innodb", &data.join("g"));
    scan_dir(&mut check, "redo", &data.join("ib_logfile0"));
    check.expect_control("binlog", "control");
    for b in db.binlogs() {
        check.scan_path("binlog", &b);
    }
    let report = check.report();
    for channel in ["innodb", "redo", "binlog"] {
        assert_control_and_no_false_pair(&report, channel);
        assert_seen(&report, channel, "real", Encoding::F32Le, "f32-pair");
        assert_seen(
            &report,
            channel,
            "n96",
            Encoding::MariadbDecimal,
            "pair/6dp",
        );
        assert_seen(
            &report,
            channel,
            "n107",
            Encoding::MariadbDecimal,
            "pair/7dp",
        );
    }
}
