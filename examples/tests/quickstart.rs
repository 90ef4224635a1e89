//! Runs the `quickstart` binary end to end in a temporary folder and checks what it promises:
//! it succeeds with no database server, retire is refused inside the cache window and done
//! after it, the shred is completed with a new root epoch, the attacker with the old key-store
//! backup and today's root key opens every destroyed value before the shred (positive
//! control) and none after it, its leak scan proves itself with a positive control and then
//! finds no plaintext, its output never contains a demo plaintext, a second run in the same
//! folder reuses the keys, and bad input gives an error with a hint, not a panic.
//! The one row value it prints is a patient's redacted `Debug`: the unsealed name, and
//! `<sealed>` for every sealed field.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test helpers: a failure should stop the test with its message"
)]

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use leakless_examples::demo_data;
use leakless_examples::{NO_PLAINTEXT_FOUND, POSITIVE_CONTROL_PASSED};

fn quickstart(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quickstart"))
        .args(args)
        .output()
        .expect("quickstart binary should start")
}

fn run_in(dir: &Path) -> (String, String) {
    let out = quickstart(&["--dir".as_ref(), dir.as_os_str()]);
    let stdout = String::from_utf8(out.stdout).expect("stdout is UTF-8");
    let stderr = String::from_utf8(out.stderr).expect("stderr is UTF-8");
    assert!(
        out.status.success(),
        "quickstart failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// Fails if any sealed demo plaintext (whole, or a 20-character piece of the start, middle or
/// end, or for short values the whole value), or a coordinate as text, appears in `output`.
/// Also fails if more than one unsealed name appears: only the redacted `Debug` line of one
/// patient may show one.
fn assert_no_plaintext(output: &str) {
    let mut names_shown = 0;
    for (n, p) in demo_data::patients().iter().enumerate() {
        let mut sealed = vec![("address", &p.address), ("email", &p.email)];
        if let Some(t) = &p.transcript {
            sealed.push(("transcript", t));
        }
        for (what, value) in sealed {
            let chars: Vec<char> = value.chars().collect();
            assert!(chars.len() >= 20, "patient {n} {what} is too short to cut");
            let mid = chars.len() / 2 - 10;
            let pieces = [
                value.clone(),
                chars[..20].iter().collect::<String>(),
                chars[mid..mid + 20].iter().collect::<String>(),
                chars[chars.len() - 20..].iter().collect::<String>(),
            ];
            for piece in pieces {
                assert!(
                    !output.contains(&piece),
                    "patient {n} {what} (or a piece of it) appears in the output"
                );
            }
        }
        for coordinate in p.gps_texts() {
            assert!(
                !output.contains(&coordinate),
                "patient {n} coordinate appears in the output"
            );
        }
        assert!(
            !output.contains(&p.email.to_uppercase()),
            "patient {n} email (as typed for the look-up) appears in the output"
        );
        if output.contains(&p.name) {
            names_shown += 1;
        }
    }
    assert!(
        names_shown <= 1,
        "{names_shown} patient names appear in the output"
    );
}

/// The line of `stdout` that contains `needle`, and its index; fails the test when none does.
fn line_with<'a>(stdout: &'a str, needle: &str) -> (usize, &'a str) {
    stdout
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{stdout}"))
}

/// Checks the key lifecycle part of one run that rotated `old` away to `new`: the refused
/// early retire and the wait, retire and destroy after it, the attacker opening every
/// destroyed value before the shred and none after it, the completed shred, the live rows
/// still opening, and the verified audit chain.
fn assert_lifecycle(stdout: &str, old: &str, new: &str) {
    let steps = lines_in_order(
        stdout,
        &[
            format!(
                "retire {old} right after the rotation: refused with KeyChangeTooEarly (allowed from 20"
            ),
            "until every cache can have noticed the rotation (allowed from 20".to_owned(),
            format!("retired {old}: an envelope kept"),
            format!("destroyed {old}: its wrapped material"),
            format!(
                "root.key opened 19 of 19 {old} fields, equal to the originals (positive control passed"
            ),
            format!("complete_shred(&LocalKms): shredded patients {old};"),
            "shred states: ".to_owned(),
            format!("(old-backup/keystore.json + today's root.key) opened 0 of 19 {old} fields"),
        ],
    );
    let (waiting, states) = (steps[1], steps[6]);
    // The demo's window is 2 s plus a margin of 1 s: it never waits longer than that.
    let secs: f64 = waiting
        .trim()
        .strip_prefix("waiting ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no wait time in {waiting:?}"));
    assert!(secs > 0.0 && secs <= 3.1, "{waiting}");
    assert!(
        states.contains(&format!("patients {old} complete at 20")),
        "{states}"
    );
    assert!(!states.contains("PENDING"), "{states}");
    line_with(stdout, ": destroyed in the backend");
    line_with(stdout, "copies may remain");
    line_with(stdout, "refused 19 with Kms (");
    line_with(
        stdout,
        &format!("still open all 19 fields of the live rows ({new}): ok"),
    );
    let (_, verified) = line_with(stdout, "verify_store: audit chain of ");
    assert!(verified.contains("entries verified unbroken"), "{verified}");
}

/// The lines holding each of `needles`, which must stand in `stdout` in that order.
fn lines_in_order<'a>(stdout: &'a str, needles: &[String]) -> Vec<&'a str> {
    let mut previous = None;
    needles
        .iter()
        .map(|needle| {
            let (at, line) = line_with(stdout, needle);
            assert!(
                previous.is_none_or(|p| p < at),
                "{needle:?} comes before the step before it:\n{stdout}"
            );
            previous = Some(at);
            line
        })
        .collect()
}

/// Independently of the binary's own output: a key ring over the old key-store backup with
/// today's root key file cannot even unwrap the backup's integrity key (its whole root epoch
/// is gone), while the current key store verifies.
fn assert_old_backup_is_dead(dir: &Path) {
    use leakless::kms::LocalKms;
    use leakless::store::FileKeyStore;
    let ring_over = |store: &Path| {
        leakless::KeyRing::builder(
            Arc::new(LocalKms::from_key_file(dir.join("root.key")).unwrap()),
            Arc::new(FileKeyStore::open(store).unwrap()),
        )
        .build()
    };
    let old = ring_over(&dir.join("old-backup").join("keystore.json")).verify_store();
    assert!(
        matches!(old, Err(leakless::Error::Kms { .. })),
        "the old backup: {old:?}"
    );
    let current = ring_over(&dir.join("keystore.json"))
        .verify_store()
        .unwrap();
    assert!(
        current.audit_entries > 0 && current.records > 0,
        "{current:?}"
    );
    assert!(
        !dir.join("root.key.next").exists(),
        "a staged root key was left behind"
    );
}

#[test]
fn quickstart_runs_scans_clean_and_prints_no_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("workspace-created-by-quickstart");
    let (stdout, stderr) = run_in(&dir);

    assert!(stdout.contains(POSITIVE_CONTROL_PASSED), "{stdout}");
    assert!(stdout.contains(NO_PLAINTEXT_FOUND), "{stdout}");
    assert!(stdout.contains("KeyDestroyed"), "{stdout}");
    assert!(stdout.contains("cache window       2 s"), "{stdout}");
    assert_lifecycle(&stdout, "v1", "v2");
    // The redacted Debug of the patient found by blind index: every sealed field is <sealed>.
    let debug_line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("Patient {"))
        .expect("a Debug line of one patient");
    for field in ["address", "email", "gps", "transcript"] {
        assert!(
            debug_line.contains(&format!("{field}: <sealed>")),
            "{debug_line}"
        );
    }
    for (what, needles) in [
        ("the blind-index look-up", &["found 1 row"][..]),
        (
            "None stays NULL",
            &["1 transcript None -> NULL", "transcript NULL"],
        ),
        ("the WAL file was scanned", &["patients.db-wal"]),
        ("census before and after the re-wrap", &["v1: 19", "v2: 19"]),
        (
            "the old backup and the root key file were scanned",
            &["old-backup/keystore.json", "root.key "],
        ),
    ] {
        assert!(
            needles.iter().all(|n| stdout.contains(n)),
            "{what}: {stdout}"
        );
    }
    assert_no_plaintext(&stdout);
    assert_no_plaintext(&stderr);

    // The files it promised, the root key with owner-only permissions.
    for file in [
        "root.key",
        "keystore.json",
        "patients.db",
        "old-backup/keystore.json",
    ] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    assert_old_backup_is_dead(&dir);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("root.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "root key file mode {mode:o}");
    }

    // A second run in the same folder reuses the root key and the key store: v2 -> v3.
    let (again, stderr) = run_in(&dir);
    assert!(again.contains("root.key: reused"), "{again}");
    assert!(
        again.contains("v2: 19") && again.contains("v3: 19"),
        "{again}"
    );
    assert!(again.contains(NO_PLAINTEXT_FOUND), "{again}");
    assert_lifecycle(&again, "v2", "v3");
    let (_, states) = line_with(&again, "shred states: ");
    assert!(states.contains("patients v1 complete at"), "{states}");
    assert_old_backup_is_dead(&dir);
    assert_no_plaintext(&again);
    assert_no_plaintext(&stderr);
}

#[test]
fn bad_arguments_fail_with_error_and_hint() {
    let out = quickstart(&["--no-such-flag".as_ref()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("error: unknown argument"), "{stderr}");
    assert!(stderr.contains("hint: usage"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_key_store_without_its_root_key_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    run_in(tmp.path());
    std::fs::remove_file(tmp.path().join("root.key")).unwrap();
    let out = quickstart(&["--dir".as_ref(), tmp.path().as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("no root key file"), "{stderr}");
    assert!(stderr.contains("hint:"), "{stderr}");
}

#[test]
fn export_manifest_writes_the_models_sealed_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manifest.json");
    let out = quickstart(&["--export-manifest".as_ref(), path.as_os_str()]);
    assert!(out.status.success(), "{out:?}");
    let m = leakless::manifest::SchemaManifest::read_file(&path).unwrap();
    assert_eq!(m.tables.len(), 1);
    let t = &m.tables[0];
    assert_eq!((t.table.as_str(), t.schema_version), ("patients", 1));
    let columns: Vec<_> = t.columns.iter().map(|c| c.column.as_str()).collect();
    assert_eq!(columns, ["address", "email", "gps", "transcript"]);
    let bidx = t.columns[1].blind_index.as_ref().unwrap();
    assert_eq!(
        (bidx.column.as_str(), bidx.scope.as_str()),
        ("email_bidx", "bidx")
    );
    // Nothing else was done: no demo files, no database.
    assert!(!String::from_utf8(out.stdout).unwrap().contains("[setup]"));

    let missing = quickstart(&["--export-manifest".as_ref()]);
    assert!(!missing.status.success());
}
