//! The application channels: `tracing` at TRACE (text and JSON), diesel `debug_query` and
//! instrumentation output, error `Display`/`Debug`, panic messages, CLI stdout/stderr, and
//! user-named files and folders (an export folder and a backup archive). The sealed `Patient`
//! app's output must hold no canary; a deliberately leaky control line in each channel must be
//! found.

use std::io::Write as _;
use std::process::Command;
use std::sync::{Arc, Mutex};

use crate::support::{
    Patient, PatientRow, fixture, insert_and_refuse_duplicate, patients, tar_append,
};
use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel::prelude::*;
use diesel::sqlite::{Sqlite, SqliteConnection};
use leakless::Sealed;
use leakless_leaktest::LeakCheck;
use leakless_leaktest::app::{capture_command, capture_panic, capture_tracing};

const DDL: &str = "CREATE TABLE patients (
    id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL, address BLOB NOT NULL,
    email BLOB NOT NULL, email_bidx BLOB NOT NULL UNIQUE, gps BLOB NOT NULL, transcript BLOB)";

/// Diesel instrumentation that records every event's `Debug` form.
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Instrumentation for Recorder {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        self.0.lock().unwrap().push(format!("{event:?}"));
    }
}

#[test]
fn sealed_app_output_is_clean_in_every_application_channel() {
    let fx = fixture();
    let c = &fx.controls;
    let control = c.addr_text().to_owned();
    let mut check = LeakCheck::new(fx.set.clone()).unwrap();

    // --- tracing at TRACE, text and JSON: the app's seal/insert/open path, plus one leaky
    // control event.
    for json in [false, true] {
        let channel = if json {
            "app/tracing-json"
        } else {
            "app/tracing-text"
        };
        let (debug_text, out) = capture_tracing(json, || {
            let ring = fx.fresh_ring();
            let mut conn = SqliteConnection::establish(":memory:").unwrap();
            diesel::sql_query(DDL).execute(&mut conn).unwrap();
            let rows = Patient::seal_rows(&fx.patients, &ring).unwrap();
            diesel::insert_into(patients::table)
                .values(&rows)
                .execute(&mut conn)
                .unwrap();
            let back: Vec<PatientRow> = patients::table
                .select(PatientRow::as_select())
                .load(&mut conn)
                .unwrap();
            let opened = Patient::open_rows(back, &ring).unwrap();
            assert_eq!(opened.len(), fx.patients.len());
            tracing::trace!(address = %control, "leaky control: a plaintext field in a log line");
            format!("{:?}", opened[0])
        });
        check.expect_control(channel, &c.addr.id);
        check.scan_bytes(channel, "captured subscriber output", &out);
        // The model's Debug (derive-generated) is part of application output too.
        check.expect_control("app/debug-display", &c.addr.id);
        check.scan_bytes("app/debug-display", "Patient Debug", debug_text.as_bytes());
    }

    // --- diesel debug_query and instrumentation of the sealed insert.
    let ring = fx.fresh_ring();
    let rows = Patient::seal_rows(&fx.patients, &ring).unwrap();
    let q = diesel::insert_into(patients::table).values(&rows);
    let shown = diesel::debug_query::<Sqlite, _>(&q).to_string();
    check.scan_bytes("app/diesel", "debug_query(insert)", shown.as_bytes());
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    conn.set_instrumentation(Recorder(events.clone()));
    diesel::sql_query(DDL).execute(&mut conn).unwrap();
    // The insert `q` shows, then the error case: a duplicate blind index.
    let err = insert_and_refuse_duplicate(&rows, |r| {
        diesel::insert_into(patients::table)
            .values(r)
            .execute(&mut conn)
    });
    diesel::sql_query(format!(
        "SELECT '{}' AS leaky_control",
        control.replace('\'', "''")
    ))
    .execute(&mut conn)
    .unwrap();
    let log = events.lock().unwrap().join("\n");
    check.expect_control("app/diesel", &c.addr.id);
    check.scan_bytes("app/diesel", "instrumentation events", log.as_bytes());

    // --- errors: Display and Debug of diesel's and leakless's errors on the sealed path.
    let mut tampered = rows[0].clone();
    let last = tampered.address.len() - 1;
    tampered.address[last] ^= 1;
    let open_err = Patient::open_row(tampered.clone(), &ring).err().unwrap();
    let errors = format!(
        "{err}\n{err:?}\n{open_err}\n{open_err:?}\n{:?}",
        fx.patients[0]
    );
    check.scan_bytes(
        "app/debug-display",
        "error Display/Debug",
        errors.as_bytes(),
    );
    check.scan_bytes(
        "app/debug-display",
        "leaky control Debug",
        format!("{:?}", ("leaky", &control)).as_bytes(),
    );

    // --- panic messages: an unwrap of the failed open, and a leaky control panic.
    let msg = capture_panic(|| {
        Patient::open_row(tampered.clone(), &ring).unwrap();
    });
    assert!(!msg.is_empty());
    check.scan_bytes("app/panic", "unwrap of a failed open", msg.as_bytes());
    let msg = capture_panic(|| panic!("leaky control: {control}"));
    check.expect_control("app/panic", &c.addr.id);
    check.scan_bytes("app/panic", "control panic", msg.as_bytes());

    // --- CLI stdout/stderr: the leakcheck CLI reporting on a leaky file must name canaries by
    // id and marker only; a shell echo of the control is the positive control.
    let dir = tempfile::tempdir().unwrap();
    let canaries = dir.path().join("canaries.json");
    std::fs::write(&canaries, fx.set.to_json().unwrap().as_bytes()).unwrap();
    let leaky = dir.path().join("leaky.txt");
    std::fs::write(&leaky, format!("{}\n{control}", fx.patients[1].address)).unwrap();
    let (out, err_out) = capture_command(
        Command::new(env!("CARGO_BIN_EXE_leakless-leakcheck"))
            .arg("scan")
            .arg("-c")
            .arg(&canaries)
            .arg(&leaky),
    )
    .unwrap();
    assert!(String::from_utf8_lossy(&out).contains("patients.address#1"));
    check.scan_bytes("app/cli", "leakless-leakcheck stdout", &out);
    check.scan_bytes("app/cli", "leakless-leakcheck stderr", &err_out);
    let (echo, _) = capture_command(
        Command::new("sh")
            .arg("-c")
            .arg("printf '%s\\n' \"$0\"")
            .arg(&control),
    )
    .unwrap();
    check.expect_control("app/cli", &c.addr.id);
    check.scan_bytes("app/cli", "sh printf (control)", &echo);

    // --- user-named files and folders: an export folder of sealed rows (hex envelopes, JSON)
    // and a backup archive (tar.gz) holding it plus one leaky control file.
    let export = dir.path().join("export");
    std::fs::create_dir_all(export.join("nested")).unwrap();
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| serde_json::json!({"id": r.id, "address": hex::encode(&r.address), "transcript": r.transcript.as_ref().map(hex::encode)}))
        .collect();
    std::fs::write(
        export.join("nested/rows.json"),
        serde_json::to_vec(&json).unwrap(),
    )
    .unwrap();
    let archive = dir.path().join("backup.tar.gz");
    {
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&archive).unwrap(),
            flate2::Compression::default(),
        );
        let mut tar = tar::Builder::new(gz);
        tar.append_dir_all("export", &export).unwrap();
        let body = format!("notes: {}\n", c.pglz.text_value().unwrap());
        tar_append(&mut tar, "control/notes.txt", body.as_bytes());
        tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
    }
    check.expect_control("app/user-files", &c.pglz.id);
    check.scan_path("app/user-files", &export);
    check.scan_path("app/user-files", &archive);

    let report = check.report();
    report.assert_clean();
    assert!(
        report
            .channel("app/user-files")
            .unwrap()
            .control_findings
            .iter()
            .any(|f| f.artifact.contains("[gunzip]"))
    );
}
