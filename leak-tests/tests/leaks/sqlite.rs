//! The leak suite on SQLite: the sealed `Patient` app writes its canaries through diesel, a
//! deliberately leaky control table holds the controls in plaintext, and the database file, its
//! `-wal` and a rollback `-journal` must each show every control and no canary. The canaries
//! include the ring's root key and both scopes' KEKs (raw, hex, base64 at every alignment); a
//! key-shaped control planted as base64 and as uppercase hex proves that form is detected. Then the same
//! pipeline with the app writing plaintext must report a leak (exit 1), and a channel whose
//! control was never planted must report "detector broken" (exit 2).

use std::path::Path;

use crate::support::{
    Fixture, Patient, PatientRow, fixture, insert_and_refuse_duplicate, lit, patients,
};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use leakless::Sealed;
use leakless_leaktest::{LeakCheck, Status};

const DDL: &str = "CREATE TABLE patients (
        id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL, address BLOB NOT NULL,
        email BLOB NOT NULL, email_bidx BLOB NOT NULL, gps BLOB NOT NULL, transcript BLOB);
    CREATE UNIQUE INDEX patients_email_bidx ON patients (email_bidx);
    CREATE TABLE leaky_control (id INTEGER PRIMARY KEY, address TEXT, gps TEXT, notes TEXT);";

fn plant_controls(conn: &mut SqliteConnection, fx: &Fixture) {
    conn.batch_execute(&format!(
        "INSERT INTO leaky_control (address, gps, notes) VALUES ({}, {}, {});
         INSERT INTO leaky_control (address, notes) VALUES ({}, {});",
        lit(fx.controls.addr_text()),
        lit(&fx.controls.gps_wkt()),
        lit(fx.controls.pglz.text_value().unwrap()),
        lit(&fx.controls.key_hex_upper()),
        lit(&format!("root_key = {}", fx.controls.key_base64())),
    ))
    .unwrap();
}

/// Writes the app rows: sealed, or (for the leak test) with every field's plaintext bytes
/// where the envelope belongs.
fn write_app(conn: &mut SqliteConnection, fx: &Fixture, sealed: bool) {
    let ring = &fx.ring;
    let mut rows: Vec<PatientRow> = Patient::seal_rows(&fx.patients, ring).unwrap();
    if !sealed {
        for (row, p) in rows.iter_mut().zip(&fx.patients) {
            row.address = p.address.clone().into_bytes();
            row.transcript = p.transcript.clone().map(String::into_bytes);
        }
    }
    // The error path: a duplicate e-mail (same blind index) is refused.
    let err = insert_and_refuse_duplicate(&rows, |r| {
        diesel::insert_into(patients::table).values(r).execute(conn)
    });
    assert!(err.to_string().contains("UNIQUE"), "{err}");
}

fn run(dir: &Path, fx: &Fixture, sealed: bool) -> leakless_leaktest::Report {
    let mut check = LeakCheck::new(fx.set.clone()).unwrap();
    let ctl = [
        fx.controls.addr.id.as_str(),
        &fx.controls.gps.id,
        &fx.controls.pglz.id,
        &fx.controls.key.id,
    ];

    // WAL mode, no checkpoints: everything sits in -wal while the connection is open.
    let db = dir.join("app.db");
    let mut conn = SqliteConnection::establish(db.to_str().unwrap()).unwrap();
    conn.batch_execute("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;")
        .unwrap();
    conn.batch_execute(DDL).unwrap();
    write_app(&mut conn, fx, sealed);
    plant_controls(&mut conn, fx);
    let wal = dir.join("app.db-wal");
    assert!(wal.metadata().unwrap().len() > 0);
    for id in ctl {
        check.expect_control("sqlite/wal", id);
        check.expect_control("sqlite/db", id);
        check.expect_control("sqlite/journal", id);
    }
    check.scan_path("sqlite/wal", &wal);
    drop(conn); // checkpoints into the main file
    check.scan_path("sqlite/db", &db);

    // Rollback journal (PERSIST keeps the file): the pages as they were before an update.
    let jdb = dir.join("journal.db");
    let mut conn = SqliteConnection::establish(jdb.to_str().unwrap()).unwrap();
    conn.batch_execute("PRAGMA journal_mode=PERSIST;").unwrap();
    conn.batch_execute(DDL).unwrap();
    write_app(&mut conn, fx, sealed);
    plant_controls(&mut conn, fx);
    conn.batch_execute(
        "UPDATE patients SET name = name || ' (seen)'; UPDATE leaky_control SET id = id + 100;",
    )
    .unwrap();
    let journal = dir.join("journal.db-journal");
    assert!(journal.metadata().unwrap().len() > 0);
    check.scan_path("sqlite/journal", &journal);
    check.report()
}

#[test]
fn sealed_app_on_sqlite_is_clean_and_every_control_is_found() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let report = run(dir.path(), &fx, true);
    report.assert_clean();
    assert_eq!(report.channels.len(), 3);
    // The planted key was found in both its forms, so a leaked root key or KEK would be too.
    for ch in ["sqlite/wal", "sqlite/db", "sqlite/journal"] {
        let c = report.channel(ch).unwrap();
        for enc in ["base64", "hex-upper"] {
            assert!(
                c.control_findings
                    .iter()
                    .any(|f| f.canary_id == "control.key" && f.encoding.to_string() == enc),
                "{ch}: planted key not found as {enc}"
            );
        }
    }
    for id in crate::support::KEY_CANARIES {
        assert!(fx.set.get(id).is_some(), "{id} is a canary");
    }
}

#[test]
fn plaintext_app_on_sqlite_is_reported_as_a_leak() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let report = run(dir.path(), &fx, false);
    assert_eq!(report.status(), Status::Leak, "{}", report.human());
    assert_eq!(report.exit_code(), 1);
    for ch in ["sqlite/wal", "sqlite/db", "sqlite/journal"] {
        let c = report.channel(ch).unwrap();
        assert!(
            c.leaks
                .iter()
                .any(|f| f.canary_id.starts_with("patients.address#")),
            "{ch}"
        );
        assert!(
            c.leaks
                .iter()
                .any(|f| f.canary_id.starts_with("patients.transcript#")),
            "{ch}"
        );
    }
    // The report names canaries and markers, never values.
    let json = report.to_json().unwrap();
    assert!(!json.contains(&fx.patients[0].address));
    assert!(!report.human().contains(&fx.patients[0].address));
}

#[test]
fn a_missing_control_is_detector_broken_not_clean() {
    let fx = fixture();
    let (dir, db, mut conn) = crate::support::sqlite_in_tempdir("nocontrol.db");
    conn.batch_execute(DDL).unwrap();
    write_app(&mut conn, &fx, true);
    drop(conn);
    let mut check = LeakCheck::new(fx.set.clone()).unwrap();
    check.expect_control("sqlite/db", &fx.controls.addr.id);
    check.scan_path("sqlite/db", &db);
    let report = check.report();
    assert_eq!(
        report.status(),
        Status::DetectorBroken,
        "{}",
        report.human()
    );
    assert_eq!(report.exit_code(), 2);
    assert_eq!(
        report.channels[0].controls_missed,
        vec![fx.controls.addr.id.clone()]
    );
    // A channel without any expected control is not trusted either.
    let mut check = LeakCheck::new(fx.set.clone()).unwrap();
    check.scan_path("sqlite/db", &db);
    assert_eq!(check.report().status(), Status::DetectorBroken);
    // And a missing artifact is a harness error.
    let mut check = LeakCheck::new(fx.set.clone()).unwrap();
    check.expect_control("x", &fx.controls.addr.id);
    check.scan_path("x", &dir.path().join("absent.db"));
    assert_eq!(check.report().status(), Status::HarnessError);
}

#[test]
fn a_leaked_root_key_or_kek_is_reported_as_a_leak() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let root = fx.set.get("key.root").unwrap().raw_bytes().unwrap();
    let kek = fx.set.get("key.kek.patients").unwrap().raw_bytes().unwrap();
    // A log a careless program might write: the root key as URL-safe base64 behind a one-byte
    // prefix (so the encoding starts mid-group), the KEK as raw bytes in a binary dump.
    let mut prefixed = vec![0x5a];
    prefixed.extend_from_slice(&root);
    let mut log = format!(
        "config loaded key={} planted={}\n",
        leakless_leaktest::encode::base64(&prefixed, true),
        fx.controls.key_base64()
    )
    .into_bytes();
    log.extend_from_slice(b"dump:");
    log.extend_from_slice(&kek);
    let path = dir.path().join("app.log");
    std::fs::write(&path, &log).unwrap();
    let mut check = LeakCheck::new(fx.set.clone()).unwrap();
    check.expect_control("log", &fx.controls.key.id);
    check.scan_path("log", &path);
    let report = check.report();
    assert_eq!(report.status(), Status::Leak, "{}", report.human());
    let c = report.channel("log").unwrap();
    for id in ["key.root", "key.kek.patients"] {
        assert!(
            c.leaks.iter().any(|f| f.canary_id == id),
            "{id} not reported"
        );
    }
    assert!(!c.leaks.iter().any(|f| f.canary_id == "key.kek.bidx"));
    // The report names the key canaries, never their bytes.
    let json = report.to_json().unwrap();
    assert!(!json.contains(&hex::encode(root.as_slice())));
}
