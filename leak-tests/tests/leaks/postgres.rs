//! The leak suite on PostgreSQL, on a throwaway cluster the harness starts itself (statement
//! logging on): the sealed `Patient` app writes its canaries through diesel (with a
//! unique-violation error case), a leaky control table holds the controls in plaintext (one
//! transcript inline pglz-compressed, one lz4-compressed out of line in TOAST), and every
//! channel must show its controls and no canary: `pg_dump` plain, custom and directory,
//! `pg_basebackup` tar and tar.gz, the data directory's heap and TOAST files, the WAL and the
//! server log. The canaries include the ring's root key and KEKs; a key-shaped control
//! planted as base64 must be found in every storage channel and the server log.

use crate::support::{Patient, fixture, insert_and_refuse_duplicate, lit, patients};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use leakless::Sealed;
use leakless_leaktest::LeakCheck;
use leakless_testkit::DumpFormat;

#[test]
fn sealed_app_on_postgres_is_clean_in_every_channel_and_every_control_is_found() {
    let fx = fixture();
    let pg = crate::support::pg_server();
    pg.sql("postgres", "CREATE DATABASE app").unwrap();
    pg.sql(
        "app",
        "CREATE TABLE patients (
            id TEXT PRIMARY KEY, name TEXT NOT NULL, address BYTEA NOT NULL,
            email BYTEA NOT NULL, email_bidx BYTEA NOT NULL UNIQUE, gps BYTEA NOT NULL,
            transcript BYTEA);
         CREATE TABLE leaky_control (
            id SERIAL PRIMARY KEY, address TEXT UNIQUE, gps TEXT,
            notes_pglz TEXT COMPRESSION pglz, notes_lz4 TEXT COMPRESSION lz4);
         ALTER TABLE leaky_control ALTER COLUMN notes_pglz SET STORAGE MAIN;",
    )
    .unwrap();

    // The app, through diesel, with bound parameters (logged by log_statement = all).
    let mut conn = PgConnection::establish(&pg.url_for("app")).unwrap();
    let rows = Patient::seal_rows(&fx.patients, &fx.ring).unwrap();
    // Error case: the same e-mail again violates the blind-index unique constraint, and the
    // server log's DETAIL prints the key: it must be the token, not the address.
    let err = insert_and_refuse_duplicate(&rows, |r| {
        diesel::insert_into(patients::table)
            .values(r)
            .execute(&mut conn)
    });
    assert!(err.to_string().contains("duplicate key"), "{err}");
    drop(conn);

    // The leaky control, and its own unique violation (DETAIL prints the plaintext key).
    let c = &fx.controls;
    let insert = format!(
        "INSERT INTO leaky_control (address, gps, notes_pglz, notes_lz4) VALUES ({}, {}, {}, {});",
        lit(c.addr_text()),
        lit(&c.gps_wkt()),
        lit(c.pglz.text_value().unwrap()),
        lit(c.lz4.text_value().unwrap())
    );
    pg.sql("app", &insert).unwrap();
    // A key-shaped control, as a careless app would keep a key: base64 text.
    pg.sql(
        "app",
        &format!(
            "INSERT INTO leaky_control (gps) VALUES ({});",
            lit(&c.key_base64())
        ),
    )
    .unwrap();
    let detail = pg
        .sql_expect_error(
            "app",
            &format!(
                "INSERT INTO leaky_control (address) VALUES ({});",
                lit(c.addr_text())
            ),
        )
        .unwrap();
    assert!(detail.contains("already exists"), "{detail}");
    // The pglz value is stored inline compressed, the lz4 one out of line in TOAST.
    let storage = pg
        .sql(
            "app",
            "SELECT pg_column_compression(notes_pglz), pg_column_compression(notes_lz4),
                    pg_column_size(notes_pglz) < octet_length(notes_pglz),
                    (SELECT count(*) FROM pg_class t JOIN pg_class c ON c.reltoastrelid = t.oid
                      WHERE c.relname = 'leaky_control' AND t.relpages >= 0)
               FROM leaky_control",
        )
        .unwrap();
    assert!(storage.trim().starts_with("pglz|lz4|t"), "{storage}");
    // WAL: the inserts are in the current segment until the next checkpoint recycles it.
    pg.sql("app", "SELECT pg_switch_wal()").unwrap();
    let mut check = LeakCheck::new(fx.set.clone()).unwrap();
    check.expect_control("postgres/wal", &c.addr.id);
    check.expect_control("postgres/wal", &c.gps.id);
    // The inline pglz value is in the insert record compressed: seen through too.
    check.expect_control("postgres/wal", &c.pglz.id);
    check.scan_path("postgres/wal", &pg.wal_dir());
    pg.checkpoint().unwrap();

    let out = tempfile::tempdir().unwrap();
    let plain = out.path().join("app.sql");
    let custom = out.path().join("app.dump");
    let directory = out.path().join("app.dir");
    pg.dump("app", DumpFormat::Plain, &plain).unwrap();
    pg.dump("app", DumpFormat::Custom, &custom).unwrap();
    pg.dump("app", DumpFormat::Directory, &directory).unwrap();
    let tar = out.path().join("base-tar");
    let tgz = out.path().join("base-tgz");
    pg.basebackup(&tar, false).unwrap();
    pg.basebackup(&tgz, true).unwrap();

    let all = c.ids();
    let storage_channels = [
        ("postgres/pg_dump-plain", plain.clone()),
        ("postgres/pg_dump-custom", custom.clone()),
        ("postgres/pg_dump-directory", directory.clone()),
        ("postgres/basebackup-tar", tar.clone()),
        ("postgres/basebackup-tar-gz", tgz.clone()),
        ("postgres/data-dir", pg.data_dir().join("base")),
        ("postgres/server-log", pg.log_path()),
    ];
    for (name, path) in &storage_channels {
        for id in all {
            check.expect_control(name, id);
        }
        check.expect_control(name, &c.key.id);
        check.scan_path(name, path);
    }
    let report = check.report();
    report.assert_clean();
    // Proof that compressed values were seen through, not skipped.
    for (channel, control, view) in [
        ("pg_dump-custom", &c.lz4, "[pg_restore]"),
        ("pg_dump-directory", &c.lz4, "[gunzip]"),
        ("data-dir", &c.pglz, "[heap-pglz"),
        ("data-dir", &c.lz4, "[toast-lz4"),
        ("basebackup-tar-gz", &c.lz4, "[toast-lz4"),
        ("basebackup-tar", &c.pglz, "[heap-pglz"),
        ("wal", &c.pglz, "[wal-pglz"),
    ] {
        report.assert_control_seen_through(&format!("postgres/{channel}"), &control.id, view);
    }
    // The error case reached the server log, with only the blind-index token as its key.
    let log = std::fs::read_to_string(pg.log_path()).unwrap();
    assert!(
        log.contains("DETAIL:  Key (email_bidx)=("),
        "no unique-violation DETAIL in the log"
    );
    assert!(log.contains("DETAIL:  Key (address)=("));
}
