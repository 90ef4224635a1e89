//! CLI snapshots (help, errors, status output) and exit codes of `leakless-migrate`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{Backend, Fixture, bare, stderr, stdout, wait_for_cache_window};

fn run(args: &[&str]) -> Output {
    bare().args(args).output().unwrap()
}

/// A `rewrap` of the database at `url` with the root key file `key` and the manifest `m` of
/// [`key_and_manifest`], and the key store in the file `keys.json` of its folder `dir`.
fn rewrap(url: &str, dir: &Path, key: &Path, m: &Path) -> Command {
    let mut c = bare();
    c.args([
        "rewrap",
        "--database-url",
        url,
        "--key-store",
        &format!("file:{}", dir.join("keys.json").display()),
        "--root-key-file",
        key.to_str().unwrap(),
        "--manifest",
        m.to_str().unwrap(),
    ]);
    c
}

/// A folder with a root key file `k` and a manifest `m.json` of one sealed column `t.c`, for
/// the cases that fail before they reach a database: (folder, key file, manifest).
fn key_and_manifest() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    leakless::kms::LocalKms::generate_key_file(&key).unwrap();
    let m = dir.path().join("m.json");
    std::fs::write(
        &m,
        r#"{"format": 1, "tables": [{"table": "t", "row_id_column": "id", "row_id_kind": "int",
           "schema_version": 1, "scope": {"kind": "static", "scope": "s"},
           "columns": [{"column": "c", "algorithm": "xchacha20poly1305", "encoding": "string",
           "padding": {"kind": "power_of_two", "min": 32, "cap": 4096}, "nullable": false, "blind_index": null}]}]}"#,
    )
    .unwrap();
    (dir, key, m)
}

#[test]
fn help_snapshots() {
    for (name, args) in [
        ("help", vec!["--help"]),
        ("keys_help", vec!["keys", "--help"]),
        ("rewrap_help", vec!["rewrap", "--help"]),
        ("destroy_help", vec!["keys", "destroy", "--help"]),
        ("rotate_root_help", vec!["keys", "rotate-root", "--help"]),
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(0), "{name}");
        insta::assert_snapshot!(name, stdout(&o));
    }
}

#[test]
fn usage_errors_exit_2() {
    let o = run(&["rewrap", "--workers", "0"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&["keys", "rotate", "s", "--grace", "7 weeks"]);
    assert_eq!(o.status.code(), Some(2));
    insta::assert_snapshot!("bad_grace", stderr(&o));
    let o = run(&["status"]);
    assert_eq!(o.status.code(), Some(2));
    insta::assert_snapshot!("no_manifest", stderr(&o));
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.json");
    std::fs::write(&m, r#"{"format": 1, "tables": [{"table": "t"}]}"#).unwrap();
    let o = run(&[
        "status",
        "--manifest",
        m.to_str().unwrap(),
        "--database-url",
        "x.db",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("error: manifest ") && e.contains("missing field"),
        "{e}"
    );
    assert!(e.contains("\nhelp: "), "{e}");
}

#[test]
fn key_errors_exit_3_and_database_errors_exit_4_without_the_password() {
    let o = run(&[
        "keys",
        "create-scope",
        "s",
        "--database-url",
        "/nonexistent-dir/x.db",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    insta::assert_snapshot!("no_root_key", stderr(&o));

    let (dir, key, m) = key_and_manifest();
    // A planted password must be detectable in raw output...
    let url = "postgres://app:hunter2-secret@127.0.0.1:1/app";
    assert!(url.contains("hunter2"));
    // ...and never appear in the migrator's.
    let o = rewrap(url, dir.path(), &key, &m).output().unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(!all.contains("hunter2"), "password printed: {all}");
    assert!(all.contains("postgres://app:***@127.0.0.1:1/app"), "{all}");
    assert!(all.contains("\nhelp: "), "{all}");
    // With the keys in the same (unreachable) database, it is still a database error about
    // --database-url, not a key-store error.
    let o = run(&[
        "keys",
        "list",
        "--database-url",
        url,
        "--root-key-file",
        key.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(!all.contains("hunter2"), "password printed: {all}");
    assert!(
        all.contains("cannot connect to postgres://app:***@127.0.0.1:1/app"),
        "{all}"
    );
    assert!(all.contains("--database-url"), "{all}");
}

/// Database URLs the migrator must refuse rather than guess at, each with a usage error (exit 2)
/// that shows no 4-character piece of the password and creates no file: a libpq keyword string
/// (once taken as an SQLite path, creating a file named after the password), an unknown scheme,
/// a password with a raw `@` or `?` (libpq split it and printed the rest as a host name), and a
/// bare path with no file there (a typo created an empty database).
#[test]
fn database_urls_that_would_leak_or_be_guessed_are_refused() {
    let (dir, key, m) = key_and_manifest();
    let cwd = tempfile::tempdir().unwrap();
    let password = "Secr3tPw@Tk?9#Zq";
    let cases = [
        (
            format!("host=127.0.0.1 port=1 user=app password='{password} x' dbname=app"),
            "libpq keyword string",
        ),
        (
            "pgsql://app:Secr3tPwTk9Zq@127.0.0.1:1/app".to_owned(),
            "unknown database URL scheme `pgsql://`",
        ),
        (
            format!("postgres://app:{password}@127.0.0.1:1/app"),
            "percent-encode them in the URL",
        ),
        (
            "postgres://app:Secr3tPw Tk9Zq@127.0.0.1:1/app".to_owned(),
            "percent-encode them in the URL",
        ),
        (
            "app-typo.db".to_owned(),
            "no SQLite database file at app-typo.db",
        ),
    ];
    for (url, expected) in &cases {
        let o = rewrap(url, dir.path(), &key, &m)
            .current_dir(cwd.path())
            .output()
            .unwrap();
        let all = format!("{}{}", stdout(&o), stderr(&o));
        assert_eq!(o.status.code(), Some(2), "{url:?}: {all}");
        assert!(all.contains(expected), "{url:?}: {all}");
        assert!(all.contains("\nhelp: "), "{all}");
        // Every 4-character piece of each password, so a partial leak is caught too.
        for pw in [password, "Secr3tPwTk9Zq", "Secr3tPw Tk9Zq"] {
            let chars: Vec<char> = pw.chars().collect();
            for piece in chars.windows(4) {
                let piece: String = piece.iter().collect();
                assert!(!all.contains(&piece), "{url:?} printed {piece:?}: {all}");
            }
        }
        let left: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().collect();
        assert!(left.is_empty(), "{url:?} created files: {left:?}");
    }
}

/// `keys init` writes a usable root key file with mode 0600 and prints no key material; a
/// second run on the same path refuses (exit 2) and leaves the key as it was.
#[test]
fn keys_init_writes_a_private_key_file_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("root.key");
    let o = bare()
        .args(["keys", "init", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let written = std::fs::read_to_string(&key).unwrap();
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let kms = leakless::kms::LocalKms::from_key_file(&key).unwrap();
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(all.contains("wrote a new root key"), "{all}");
    assert!(all.contains(leakless::kms::Kms::root_key_id(&kms)), "{all}");
    assert!(
        !all.contains(&written.trim()[..16]),
        "key material printed: {all}"
    );
    let o = bare()
        .env("LEAKLESS_ROOT_KEY_FILE", &key)
        .args(["keys", "init"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("never overwrites"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), written);
}

#[test]
fn status_snapshot_and_exit_codes_on_sqlite() {
    let f = Fixture::new(Backend::Sqlite);
    f.seed(0, 300, false);
    f.rotate();
    f.seed(300, 400, false);
    f.seed(400, 450, true);
    let o = f.run(&["status"]);
    assert_eq!(o.status.code(), Some(0));
    insta::assert_snapshot!("status", stdout(&o));
    // Unknown column: exit 2 naming what exists.
    let o = f.run(&["status", "--table", "patients", "--column", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    insta::assert_snapshot!("unknown_column", stderr(&o));
    // Destroy refusal: wrong state (exit 3), then rows still on it (exit 1).
    let o = f.run(&["keys", "destroy", "patients", "v1", "--yes"]);
    assert_eq!(o.status.code(), Some(3));
    wait_for_cache_window();
    assert!(f.run(&["keys", "retire", "patients", "1"]).status.success());
    let o = f.run(&["keys", "destroy", "patients", "v1", "--yes"]);
    assert_eq!(o.status.code(), Some(1));
    insta::assert_snapshot!("destroy_refused", stderr(&o));
}

/// The parsed command line's `Debug` (what a panic or a debug log would show) masks the
/// passwords of the database and key-store URLs.
#[test]
fn parsed_options_debug_masks_url_passwords() {
    use clap::Parser as _;
    let cli = leakless_migrator::cli::Cli::try_parse_from([
        "leakless-migrate",
        "--database-url",
        "postgres://app:Hunter2Secret@db.internal/app",
        "--key-store",
        "mysql://keys:Swordfish9@kdb/keys",
        "status",
    ])
    .unwrap();
    let shown = format!("{cli:?}");
    assert!(
        shown.contains("postgres://app:***@db.internal/app"),
        "{shown}"
    );
    assert!(shown.contains("mysql://keys:***@kdb/keys"), "{shown}");
    assert!(
        !shown.contains("Hunter2") && !shown.contains("Swordfish"),
        "{shown}"
    );
}

/// A value that is no envelope in a sealed column (plaintext written past leakless, or
/// damaged) is reported as such by `status`, never as rows "to adopt" of a column that is not
/// in adoption, and its bytes are not printed.
#[test]
fn status_reports_values_that_are_no_envelope_without_calling_them_adoptable() {
    let f = Fixture::new(Backend::Sqlite);
    f.seed(0, 10, false);
    f.batch("UPDATE patients SET email = X'68656c6c6f2d706c61696e2d76616c7565' WHERE id = 3");
    let o = f.run(&["status"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("unsealed"), "{out}");
    assert!(
        out.contains("1 rows hold a value that is no envelope"),
        "{out}"
    );
    assert!(!out.contains("adopt"), "{out}");
    assert!(!out.contains("hello-plain"), "{out}");
}

/// Under `--json` a failure is one JSON object on stderr with the error, the help and the
/// exit code, and stdout stays empty; without it, the two text lines.
#[test]
fn json_errors_are_json() {
    let f = Fixture::new(Backend::Sqlite);
    let o = f.run(&[
        "--json", "status", "--table", "patients", "--column", "nope",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stdout(&o), "");
    let err: serde_json::Value = serde_json::from_str(stderr(&o).trim()).unwrap();
    assert_eq!(err["exit_code"], 2);
    assert!(err["error"].as_str().unwrap().contains("nope"), "{err}");
    assert!(!err["help"].as_str().unwrap().is_empty(), "{err}");
    // The control: the same failure without --json is text.
    let o = f.run(&["status", "--table", "patients", "--column", "nope"]);
    assert!(stderr(&o).starts_with("error: "), "{}", stderr(&o));
    assert!(serde_json::from_str::<serde_json::Value>(stderr(&o).trim()).is_err());
}
