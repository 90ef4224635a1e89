//! Runs the `quickstart` binary end to end in a temporary folder and checks what it promises:
//! it succeeds with no database server, its leak scan proves itself with a positive control
//! and then finds no plaintext, its output never contains a demo plaintext, a second run in
//! the same folder reuses the keys, and bad input gives an error with a hint, not a panic.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "test helpers: a failure should stop the test with its message"
)]

use std::path::Path;
use std::process::{Command, Output};

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

/// Fails if any demo plaintext (whole, or a 20-character piece of the start, middle or end),
/// or a coordinate as text, appears in `output`.
fn assert_no_plaintext(output: &str) {
    for (n, p) in demo_data::patients().iter().enumerate() {
        for (what, value) in [("address", &p.address), ("transcript", &p.transcript)] {
            let chars: Vec<char> = value.chars().collect();
            let mid = chars.len() / 2;
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
            !output.contains(&p.name),
            "patient {n} name appears in the output (quickstart prints no row values at all)"
        );
    }
}

#[test]
fn quickstart_runs_scans_clean_and_prints_no_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("workspace-created-by-quickstart");
    let (stdout, stderr) = run_in(&dir);

    assert!(stdout.contains(POSITIVE_CONTROL_PASSED), "{stdout}");
    assert!(stdout.contains(NO_PLAINTEXT_FOUND), "{stdout}");
    assert!(stdout.contains("KeyDestroyed"), "{stdout}");
    assert!(
        stdout.contains("patients.db-wal"),
        "the WAL file was scanned: {stdout}"
    );
    assert!(
        stdout.contains("v1: 15") && stdout.contains("v2: 15"),
        "census before and after the re-wrap: {stdout}"
    );
    assert_no_plaintext(&stdout);
    assert_no_plaintext(&stderr);

    // The files it promised, the root key with owner-only permissions.
    for file in ["root.key", "keystore.json", "patients.db"] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
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
        again.contains("v2: 15") && again.contains("v3: 15"),
        "{again}"
    );
    assert!(again.contains(NO_PLAINTEXT_FOUND), "{again}");
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
