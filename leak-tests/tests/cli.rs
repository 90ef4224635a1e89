//! The `leakless-leakcheck` CLI: help text (snapshot), canary generation from a manifest, and
//! the exit codes: 0 clean (controls found), 1 leak, 2 detector broken or harness error, with
//! `--json` output that names canaries by id and marker only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::path::Path;
use std::process::{Command, Output};

use leakless_leaktest::CanarySet;

fn cli(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leakless-leakcheck"))
        .args(args)
        // clap wraps help at the terminal width: pin it, so snapshots match on any terminal.
        .env("COLUMNS", "100")
        .current_dir(dir)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_texts_match_the_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    for (name, args) in [
        ("help", vec!["--help"]),
        ("scan_help", vec!["scan", "--help"]),
        ("canaries_help", vec!["canaries", "--help"]),
    ] {
        let out = cli(&args, dir.path());
        assert!(out.status.success());
        insta::assert_snapshot!(name, text(&out.stdout));
    }
}

#[test]
fn exit_codes_follow_the_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let manifest = r#"{"format": 1, "tables": [{"table": "patients", "row_id_column": "id",
        "row_id_kind": "text", "schema_version": 1, "scope": {"kind": "static", "scope": "patients"},
        "columns": [
          {"column": "address", "algorithm": "aes256gcm", "encoding": "string", "nullable": false, "blind_index": null},
          {"column": "gps", "algorithm": "xchacha20poly1305", "encoding": "json", "nullable": false, "blind_index": null},
          {"column": "transcript", "algorithm": "xchacha20poly1305", "encoding": "string", "nullable": true, "blind_index": null}]}]}"#;
    std::fs::write(d.join("manifest.json"), manifest).unwrap();
    let out = cli(
        &[
            "canaries",
            "-m",
            "manifest.json",
            "--rows",
            "2",
            "-o",
            "canaries.json",
        ],
        d,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let set =
        CanarySet::from_json(&std::fs::read_to_string(d.join("canaries.json")).unwrap()).unwrap();
    assert_eq!(set.len(), 7);
    let control = set
        .get("control#0")
        .unwrap()
        .text_value()
        .unwrap()
        .to_owned();
    let address = set
        .get("patients.address#1")
        .unwrap()
        .text_value()
        .unwrap()
        .to_owned();

    // Clean: the artifact holds the control (the leaky control) and only sealed data besides.
    std::fs::create_dir_all(d.join("dump")).unwrap();
    std::fs::write(
        d.join("dump/a.sql"),
        format!("INSERT INTO t VALUES ('\\x00ff', '{control}');"),
    )
    .unwrap();
    let out = cli(&["scan", "-c", "canaries.json", "dump"], d);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("result: clean (exit 0)"));

    // Leak: an address in base64.
    let b64 = leakless_leaktest::encode::base64(address.as_bytes(), false);
    std::fs::write(d.join("dump/b.log"), format!("payload={b64}")).unwrap();
    let out = cli(&["scan", "-c", "canaries.json", "--json", "db=dump"], d);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["status"], "leak");
    let leak = &json["channels"][0]["leaks"][0];
    assert_eq!(leak["canary_id"], "patients.address#1");
    assert_eq!(leak["encoding"], "base64");
    assert_eq!(leak["channel"], "db");
    assert!(!text(&out.stdout).contains(&address));

    // Detector broken: a channel without the control.
    std::fs::write(d.join("other.sql"), "nothing here").unwrap();
    let out = cli(&["scan", "-c", "canaries.json", "other.sql"], d);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stdout).contains("DETECTOR BROKEN"));

    // Harness errors: a missing artifact, a bad canary file, bad arguments.
    let out = cli(&["scan", "-c", "canaries.json", "absent.sql"], d);
    assert_eq!(out.status.code(), Some(2));
    std::fs::write(d.join("bad.json"), "{").unwrap();
    let out = cli(&["scan", "-c", "bad.json", "dump"], d);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("bad.json") || text(&out.stderr).contains("canary"));
    let out = cli(&["scan"], d);
    assert_eq!(out.status.code(), Some(2));
}
