//! The leak suite on MariaDB, on a throwaway server the harness starts itself (binary log in
//! ROW format, general query log on): the sealed `Patient` app writes its canaries through
//! diesel (with a unique-violation error case), a leaky control table holds the controls in
//! plaintext, and `mysqldump`, the binary log, the general query log and the data directory
//! must each show every control and no canary. The canaries include the ring's root key and
//! KEKs; a key-shaped control planted as base64 must be found in every channel.

use crate::support::{Patient, fixture, insert_and_refuse_duplicate, lit, patients};
use diesel::mysql::MysqlConnection;
use diesel::prelude::*;
use leakless::Sealed;
use leakless_leaktest::LeakCheck;
use leakless_testkit::MariaServer;

#[test]
fn sealed_app_on_mariadb_is_clean_in_every_channel_and_every_control_is_found() {
    let fx = fixture();
    let my = MariaServer::start().unwrap();
    my.sql(
        "",
        "CREATE DATABASE app;
         USE app;
         CREATE TABLE patients (
            id VARCHAR(64) PRIMARY KEY, name TEXT NOT NULL, address BLOB NOT NULL,
            email BLOB NOT NULL, email_bidx VARBINARY(64) NOT NULL UNIQUE, gps BLOB NOT NULL,
            transcript MEDIUMBLOB);
         CREATE TABLE leaky_control (
            id INT AUTO_INCREMENT PRIMARY KEY, address VARCHAR(200) UNIQUE, gps TEXT,
            notes MEDIUMTEXT);",
    )
    .unwrap();

    let mut conn = MysqlConnection::establish(&my.url_for("app")).unwrap();
    let rows = Patient::seal_rows(&fx.patients, &fx.ring).unwrap();
    let err = insert_and_refuse_duplicate(&rows, |r| {
        diesel::insert_into(patients::table)
            .values(r)
            .execute(&mut conn)
    });
    assert!(err.to_string().contains("Duplicate"), "{err}");
    drop(conn);

    let c = &fx.controls;
    my.sql(
        "app",
        &format!(
            "INSERT INTO leaky_control (address, gps, notes) VALUES ({}, {}, {});
             INSERT INTO leaky_control (gps) VALUES ({});",
            lit(c.addr_text()),
            lit(&c.gps_wkt()),
            lit(c.pglz.text_value().unwrap()),
            lit(&c.key_base64())
        ),
    )
    .unwrap();
    my.flush_logs().unwrap();

    let out = tempfile::tempdir().unwrap();
    let dump = out.path().join("app.sql");
    my.dump("app", &dump).unwrap();

    let mut check = LeakCheck::new(fx.set.clone()).unwrap();
    let ids = [c.addr.id.as_str(), &c.gps.id, &c.pglz.id, &c.key.id];
    let binlogs = my.binlogs();
    assert!(
        !binlogs.is_empty(),
        "no binary log in {}",
        my.data_dir().display()
    );
    for id in ids {
        for ch in [
            "mariadb/mysqldump",
            "mariadb/binlog",
            "mariadb/general-log",
            "mariadb/data-dir",
        ] {
            check.expect_control(ch, id);
        }
    }
    check.scan_path("mariadb/mysqldump", &dump);
    for b in &binlogs {
        check.scan_path("mariadb/binlog", b);
    }
    check.scan_path("mariadb/general-log", &my.general_log_path());
    check.scan_path("mariadb/data-dir", &my.data_dir());
    let report = check.report();
    report.assert_clean();
    // The general log saw the app's statements (binary parameters, not plaintext).
    let log = std::fs::read(my.general_log_path()).unwrap();
    assert!(log.windows(19).any(|w| w == b"INSERT INTO `patien"));
}
