//! The `leakless-leakcheck` CLI: help text (snapshot), canary generation from a manifest, and
//! the exit codes: 0 clean (controls found), 1 leak, 2 detector broken or harness error, with
//! `--json` output that names canaries by id and marker only.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::tar_of;
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
        ("residue_help", vec!["residue", "--help"]),
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
          {"column": "address", "algorithm": "aes256gcm", "encoding": "string", "padding": {"kind": "power_of_two", "min": 32, "cap": 4096}, "nullable": false, "blind_index": null},
          {"column": "gps", "algorithm": "xchacha20poly1305", "encoding": "json", "padding": {"kind": "power_of_two", "min": 32, "cap": 4096}, "nullable": false, "blind_index": null},
          {"column": "transcript", "algorithm": "xchacha20poly1305", "encoding": "string", "padding": {"kind": "power_of_two", "min": 32, "cap": 4096}, "nullable": true, "blind_index": null}]}]}"#;
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
    let leaks = json["channels"][0]["leaks"].as_array().unwrap();
    let leak = leaks
        .iter()
        .find(|l| l["canary_id"] == "patients.address#1")
        .unwrap_or_else(|| panic!("address #1 not reported: {}", text(&out.stdout)));
    assert_eq!(leak["encoding"], "base64");
    assert_eq!(leak["channel"], "db");
    // Only the planted value is reported: the other row's address shares no fragment with it.
    assert_eq!(leaks.len(), 1, "{}", text(&out.stdout));
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

#[test]
fn a_run_without_canaries_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a.sql"), "some data").unwrap();
    // An empty canary list: exit 2 even with --no-controls.
    std::fs::write(d.join("empty.json"), r#"{"canaries": []}"#).unwrap();
    let out = cli(&["scan", "-c", "empty.json", "--no-controls", "a.sql"], d);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("no canary to search for"));
    // Only a control, no real canary: also refused (finding the control proves the detector,
    // not the absence of leaks).
    std::fs::write(
        d.join("controls.json"),
        r#"{"canaries": [{"id": "control#0", "marker": "LKQ7M2X9PA", "kind": "text",
            "value": "Control value LKQ7M2X9PA, 1 Leaky Lane", "control": true}]}"#,
    )
    .unwrap();
    let out = cli(&["scan", "-c", "controls.json", "a.sql"], d);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no canary to search for"));
}

#[test]
fn a_label_that_holds_the_value_is_refused_and_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let value = "12 Quarry Lane, Exampleton EX1 4QT";
    for (label, file) in [
        // The marker is the whole value.
        (
            format!(r#""id": "t.a#0", "marker": "{value}", "kind": "text", "value": "{value}""#),
            "same.json",
        ),
        // The marker is most of the value.
        (
            format!(
                r#""id": "t.a#0", "marker": "Quarry Lane, Exampleton", "kind": "text", "value": "{value}""#
            ),
            "most.json",
        ),
        // A GPS label holding the coordinates.
        (
            r#""id": "t.gps#0", "marker": "at 51.507412,-0.127812", "kind": "gps", "value": {"lat": 51.507412, "lon": -0.127812}"#.to_owned(),
            "gps.json",
        ),
        // An id holding the value.
        (
            format!(r#""id": "{value}", "marker": "LKQ7M2X9PA", "kind": "text", "value": "LKQ7M2X9PA {value}""#),
            "id.json",
        ),
    ] {
        std::fs::write(d.join(file), format!(r#"{{"canaries": [{{{label}}}]}}"#)).unwrap();
        let out = cli(&["scan", "-c", file, "--no-controls", "."], d);
        assert_eq!(out.status.code(), Some(2), "{file}: {}", text(&out.stdout));
        let all = text(&out.stdout) + &text(&out.stderr);
        assert!(all.contains("would show the value"), "{file}: {all}");
        assert!(!all.contains("Quarry Lane"), "{file}: {all}");
        assert!(!all.contains("51.5074"), "{file}: {all}");
    }
    // The positive control of this rule: a short random marker inside a longer value passes.
    std::fs::write(
        d.join("ok.json"),
        format!(
            r#"{{"canaries": [{{"id": "t.a#0", "marker": "LKQ7M2X9PA", "kind": "text", "value": "LKQ7M2X9PA {value}"}}]}}"#
        ),
    )
    .unwrap();
    std::fs::write(d.join("data.txt"), "nothing sensitive").unwrap();
    let out = cli(&["scan", "-c", "ok.json", "--no-controls", "data.txt"], d);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

#[test]
fn no_controls_never_turns_nothing_or_a_nested_leak_into_clean() {
    use leakless_leaktest::Canary;
    use std::io::Write as _;

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let value = "Canary LKCLI9Z, 4 Nested Row, Tarville";
    let mut set = CanarySet::new();
    set.push(Canary::text("addr", "LKCLI9Z", value).unwrap())
        .unwrap();
    std::fs::write(d.join("canaries.json"), set.to_json().unwrap().as_bytes()).unwrap();

    // Positive control: a readable folder without canaries is clean under --no-controls.
    std::fs::create_dir(d.join("logs")).unwrap();
    std::fs::write(d.join("logs/app.log"), "nothing sensitive here\n").unwrap();
    let out = cli(&["scan", "-c", "canaries.json", "--no-controls", "logs"], d);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));

    // An empty folder: nothing readable, exit 2.
    std::fs::create_dir(d.join("empty")).unwrap();
    let out = cli(
        &["scan", "-c", "canaries.json", "--no-controls", "empty"],
        d,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("nothing readable in empty"));

    // A tar holding a .sql.gz: the leak inside is found, exit 1.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(format!("INSERT INTO t VALUES ('{value}');\n").as_bytes())
        .unwrap();
    let gz = gz.finish().unwrap();
    std::fs::write(d.join("backup.tar"), tar_of(&[("db.sql.gz", &gz)])).unwrap();
    let out = cli(
        &["scan", "-c", "canaries.json", "--no-controls", "backup.tar"],
        d,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("backup.tar!db.sql.gz[gunzip]"));
    assert!(!text(&out.stdout).contains(value));
}

#[test]
fn residue_reports_old_values_by_row_id_with_exit_1_and_prints_no_value() {
    use diesel::connection::SimpleConnection as _;
    let (dir, db, mut conn) = crate::support::sqlite_in_tempdir("legacy.db");
    let values: Vec<String> = (1..=5)
        .map(|n| format!("{n} Residue Road, Flat {n}{n}{n}, Oldtown"))
        .collect();
    let mut sql = String::from(
        "PRAGMA secure_delete=OFF; CREATE TABLE customers (id INTEGER PRIMARY KEY, address TEXT);",
    );
    for (i, v) in values.iter().enumerate() {
        sql.push_str(&format!("INSERT INTO customers VALUES ({}, '{v}');", i + 1));
    }
    conn.batch_execute(&sql).unwrap();
    drop(conn);
    let url = format!("sqlite://{}", db.display());
    let args = [
        "residue",
        "--database-url",
        url.as_str(),
        "--column",
        "customers.address",
        "--json",
    ];
    let mut with_path = args.to_vec();
    let chan = format!("file={}", db.display());
    with_path.push(&chan);
    let out = cli(&with_path, dir.path());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    // The harness's own control was found in the channel.
    assert_eq!(
        json["report"]["channels"][0]["controls_missed"],
        serde_json::json!([])
    );
    let found = &json["channels"][0]["columns"][0];
    assert_eq!(found["column"], "customers.address");
    assert_eq!(found["rows"], 5);
    assert!(found["row_ids"].as_array().unwrap().contains(&"3".into()));
    for v in &values {
        assert!(!stdout.contains(v.as_str()));
    }
    // A bad column spec is a harness error (exit 2) that names the spec.
    let out = cli(
        &[
            "residue",
            "--database-url",
            &url,
            "--column",
            "customers",
            &chan,
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("customers"));
}
