//! The `clinic` example on PostgreSQL (cargo feature `postgres`): the binary runs end to end on
//! a fresh database (its main path and its `--adopt` path), its output holds no demo plaintext
//! and no password of the server URL, it exports a valid schema manifest, and its migration set
//! applies and reverts cleanly. Without a server URL it fails with a hint, not a panic.
//!
//! The server is `LEAKLESS_PG_URL` (e.g. `postgres://postgres@127.0.0.1:5432/postgres`), or a
//! throwaway one that `leakless-testkit` starts; the tests fail loudly when neither works.
#![cfg(feature = "postgres")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests"
)]

use std::process::{Command, Output};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use leakless::Sealed;
use leakless::manifest::SchemaManifest;
use leakless_examples::clinic::{self, FreshDatabase, Patient};
use leakless_examples::demo_data;
use leakless_examples::{NO_PLAINTEXT_FOUND, POSITIVE_CONTROL_PASSED};
use leakless_testkit::pg_url;

/// The URL with a password added (the local servers trust the user, so it is ignored by
/// the server but must never be printed).
fn url_with_password(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    match rest.split_once('@') {
        Some((user, host)) if !user.contains(':') => {
            format!("{scheme}://{user}:Hunter2-secret-pw@{host}")
        }
        _ => url.to_owned(),
    }
}

fn clinic(args: &[&str], env_url: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clinic"));
    cmd.args(args).env_remove("LEAKLESS_PG_URL");
    if let Some(u) = env_url {
        cmd.env("LEAKLESS_PG_URL", u);
    }
    cmd.output().expect("the clinic binary should start")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8(out.stdout.clone()).unwrap(),
        String::from_utf8(out.stderr.clone()).unwrap(),
    )
}

/// Every sealed demo value, and 16-character pieces of the long ones.
fn plaintext_pieces() -> Vec<String> {
    let mut out = Vec::new();
    for p in demo_data::patients() {
        let mut values = vec![p.address.clone(), p.email.clone()];
        values.extend(p.transcript.clone());
        values.extend(p.gps_texts());
        for v in values {
            let chars: Vec<char> = v.chars().collect();
            for start in (0..chars.len().saturating_sub(16)).step_by(16) {
                out.push(chars[start..start + 16].iter().collect());
            }
            out.push(v);
        }
    }
    out
}

/// Runs the binary with `extra` and `--export-manifest` on a URL holding a password; asserts
/// success, every line of `lines` in stdout, and no demo plaintext nor the password anywhere in
/// the output. Returns stdout and the manifest it wrote.
fn run_clean(extra: &[&str], lines: &[&str]) -> (String, SchemaManifest) {
    let url = url_with_password(&pg_url());
    let dir = tempfile::tempdir().unwrap();
    let manifest_path = dir.path().join("manifest.json");
    let mut args = extra.to_vec();
    args.extend([
        "--database-url",
        &url,
        "--export-manifest",
        manifest_path.to_str().unwrap(),
    ]);
    let out = clinic(&args, None);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "clinic {extra:?} failed:\n{stdout}\n{stderr}"
    );
    for line in lines {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    let all = format!("{stdout}\n{stderr}");
    for piece in plaintext_pieces() {
        assert!(!all.contains(&piece), "output shows {piece:?}:\n{all}");
    }
    if url.contains("Hunter2") {
        assert!(
            !all.contains("Hunter2-secret-pw"),
            "password printed:\n{all}"
        );
    }
    (stdout, SchemaManifest::read_file(&manifest_path).unwrap())
}

#[test]
fn runs_end_to_end_and_prints_no_plaintext_nor_password() {
    let (stdout, read) = run_clean(
        &[],
        &[
            "migrations         2 applied",
            "inserted           1 row, then 4 rows in one statement",
            "opened             5 rows",
            "e-mail look-up     1 row",
            "read back equal",
            "re-wrapped",
            "refused: KeyChangeTooEarly",
            "until every cache can have noticed the rotation (allowed from ",
            "retired            v1; all 5 rows still open under v2",
            POSITIVE_CONTROL_PASSED,
            NO_PLAINTEXT_FOUND,
            "dropped database   leakless_clinic_",
        ],
    );
    // Positive control for the output check: the unsealed name of the looked-up patient is
    // shown (in its redacted Debug), so the search for plaintext does look at the right text.
    assert!(stdout.contains(&demo_data::patients()[2].name), "{stdout}");
    assert_eq!(read, clinic::manifest());
    assert_eq!(read.tables.len(), 1);
    assert_eq!(read.tables[0], Patient::manifest());
}

/// `--adopt`: the legacy plaintext table goes through the adoption stages, the legacy columns
/// are dropped, and the scan that found their plaintext before the drop finds none after it.
#[test]
fn the_adopt_path_runs_end_to_end_and_prints_no_plaintext() {
    let (_, read) = run_clean(
        &["--adopt"],
        &[
            "legacy table       patients",
            "inserted           5 rows of plaintext",
            "opened             5 rows from their legacy columns",
            "backfill           5 rows sealed",
            "inserted           1 row: envelopes only, its legacy columns NULL",
            "opened             6 rows through stage 3 and through the build without adopt(...)",
            "e-mail look-up     1 row",
            POSITIVE_CONTROL_PASSED,
            NO_PLAINTEXT_FOUND,
            "6 rows still open",
            "purge-residue",
            "dropped database   leakless_clinic_",
        ],
    );
    // The manifest is stage 3's: every sealed column in adoption, the GPS point from a pair.
    assert_eq!(read.tables[0], clinic::adopt::Stage3::manifest());
    let gps = read.tables[0]
        .columns
        .iter()
        .find(|c| c.column == "gps")
        .unwrap();
    let pair = gps.adoption.as_ref().unwrap().pair.as_ref().unwrap();
    assert_eq!(pair.second_column, "lon");
    let address = read.tables[0]
        .columns
        .iter()
        .find(|c| c.column == "address_sealed")
        .unwrap();
    assert_eq!(address.bound_name(), "address");
}

#[test]
fn without_a_server_url_it_fails_with_a_hint() {
    let out = clinic(&[], None);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("LEAKLESS_PG_URL"), "{stdout}{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn an_unreachable_server_is_named_with_its_password_masked() {
    let out = clinic(
        &[
            "--database-url",
            "postgres://someone:Hunter2-secret-pw@127.0.0.1:1/postgres?connect_timeout=2",
        ],
        None,
    );
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("connect to the server"), "{stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    assert!(
        !format!("{stdout}{stderr}").contains("Hunter2-secret-pw"),
        "{stdout}{stderr}"
    );
}

#[test]
fn migrations_apply_revert_and_reapply() {
    let db = FreshDatabase::create(&pg_url()).unwrap();
    let mut conn = PgConnection::establish(db.url()).unwrap();
    let applied = clinic::run_migrations(&mut conn).unwrap();
    assert_eq!(applied.len(), 2, "{applied:?}");
    assert!(clinic::run_migrations(&mut conn).unwrap().is_empty());
    // The migrated table has the columns the model's row type expects.
    conn.batch_execute(
        "SELECT id, name, address, email, email_bidx, gps, transcript, created_at FROM patients",
    )
    .unwrap();
    let reverted = clinic::revert_migrations(&mut conn).unwrap();
    assert_eq!(reverted.len(), 2);
    assert!(conn.batch_execute("SELECT 1 FROM patients").is_err());
    assert_eq!(clinic::run_migrations(&mut conn).unwrap().len(), 2);
    drop(conn);
    db.drop_now().unwrap();
}
