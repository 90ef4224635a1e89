//! The life of a blind index, through the real binary on SQLite, PostgreSQL and MariaDB: an
//! index added to a populated column is backfilled (`reindex`), its key rotated, the tokens
//! re-keyed, the old version retired and destroyed, with look-ups asserted after every step
//! (and shown to miss rows exactly where the product refuses to go: tokens on a retired
//! version). `adopt` on a column with a blind index computes the tokens too.

use std::collections::BTreeSet;
use std::time::Duration;

use leakless::{AuditInfo, BlindIndexSpec, FieldContext, KeyRing, KeyScope, Normalizer, RowId};
use leakless_migrator::db::{Bind, OneText};

use crate::support::{
    Backend, DEFAULT_PADDING, Fixture, PATIENTS_SCOPE, adopting, code, column_json, plain, stderr,
    stdout, table_manifest, wait_for_cache_window,
};

const INDEX_SCOPE: &str = "bidx";
const ROWS: i64 = 300;
/// Rows checked by look-up after each step (first, last, and some between).
const PROBES: [i64; 6] = [0, 1, 57, 150, 298, 299];

fn spec() -> BlindIndexSpec {
    let mut s = BlindIndexSpec::new("patients", "email", KeyScope::new(INDEX_SCOPE).unwrap());
    s.normalizer = Normalizer::TrimLowercase;
    s
}

/// The manifest of the fixture's table with a blind index on `email` (and, when `adopt`, the
/// adoption from `email_plain`).
fn write_manifest(f: &Fixture, adopt: bool) {
    let index = r#"{"column": "email_bidx", "scope": "bidx", "bytes": 16,
                    "normalizer": "trim_lowercase"}"#;
    let mut email = column_json("email", "string", DEFAULT_PADDING, index);
    if adopt {
        email = adopting(&email, "email_plain", "read_plaintext");
    }
    std::fs::write(
        &f.manifest,
        table_manifest("patients", PATIENTS_SCOPE, &[email]),
    )
    .unwrap();
}

fn add_index_column(f: &Fixture) {
    let bin = match f.backend {
        Backend::Postgres => "bytea",
        Backend::Mysql => "VARBINARY(64)",
        Backend::Sqlite => "BLOB",
    };
    f.batch(&format!(
        "ALTER TABLE patients ADD COLUMN email_bidx {bin} NULL"
    ));
    f.ring
        .create_scope(
            &KeyScope::new(INDEX_SCOPE).unwrap(),
            &AuditInfo::new("test", "index scope"),
        )
        .unwrap();
}

/// The rows an application finds for `plain(i)`, written as a user would type it (spaces,
/// upper case): tokens of every version that still opens, matched with `IN`.
fn lookup(f: &Fixture, ring: &KeyRing, i: i64) -> BTreeSet<i64> {
    let typed = format!("  {}  ", plain(i).to_uppercase());
    let tokens = ring
        .blind_index_candidates(&spec(), typed.as_bytes())
        .unwrap();
    let mut db = f.db();
    let marks: Vec<String> = (1..=tokens.len()).map(|n| db.ph(n)).collect();
    let sql = format!(
        "SELECT {} AS id FROM patients WHERE email_bidx IN ({})",
        db.id_text(leakless::manifest::RowIdKind::Int, "id"),
        marks.join(", ")
    );
    let binds: Vec<Bind> = tokens
        .iter()
        .map(|t| Bind::Bytes(Some(t.as_bytes().to_vec())))
        .collect();
    let rows: Vec<OneText> = db.load(&sql, &binds).unwrap();
    rows.into_iter().map(|r| r.id.parse().unwrap()).collect()
}

/// Every probe finds exactly its row, through a ring with an empty cache (as an application
/// started now).
fn assert_lookups_find_all(f: &Fixture, step: &str) {
    let ring = f.fresh_ring();
    for i in PROBES {
        assert_eq!(
            lookup(f, &ring, i),
            BTreeSet::from([i]),
            "after {step}: look-up of row {i}"
        );
    }
}

fn status_index(f: &Fixture) -> serde_json::Value {
    let o = f.run(&["status", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    j[0]["index"].clone()
}

/// `(version, tokens)` per index key version, from `status --json`.
fn token_versions(f: &Fixture) -> Vec<(u64, u64)> {
    status_index(f)["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_u64().unwrap(), v["rows"].as_u64().unwrap()))
        .collect()
}

fn lifecycle(backend: Backend) {
    let f = Fixture::with_cache_window(backend, Duration::from_secs(1));
    f.seed(0, ROWS, false);
    add_index_column(&f);
    write_manifest(&f, false);

    // An index added to a populated column: no row has a token, and look-ups miss every row
    // (the miss the assertions below would catch); status says so.
    let ring = f.fresh_ring();
    assert!(lookup(&f, &ring, 57).is_empty());
    let ix = status_index(&f);
    assert_eq!(ix["missing"], ROWS, "{ix}");
    assert_eq!(ix["reindex_work"], ROWS, "{ix}");
    let o = f.run(&["status"]);
    assert!(
        stdout(&o).contains(&format!("{ROWS} missing")) && stdout(&o).contains("run `reindex`"),
        "{}",
        stdout(&o)
    );

    // Backfill.
    let o = f.run(&["reindex", "--dry-run"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("would reindex {ROWS} rows of patients.email")),
        "{}",
        stdout(&o)
    );
    let o = f.run(&["reindex", "--batch-size", "64"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("{ROWS} written")),
        "{}",
        stdout(&o)
    );
    assert_lookups_find_all(&f, "the backfill");
    assert_eq!(token_versions(&f), vec![(1, ROWS as u64)]);
    assert_eq!(status_index(&f)["missing"], 0);
    // A second run has nothing to do.
    let o = f.run(&["reindex"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains(" 0 written"), "{}", stdout(&o));

    // Rotation of the index key: look-ups ask for both versions, all rows still found.
    let o = f.run(&["keys", "rotate", INDEX_SCOPE]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("index key of patients.email")
            && stdout(&o).contains("leakless-migrate reindex"),
        "{}",
        stdout(&o)
    );
    assert_lookups_find_all(&f, "the rotation");
    wait_for_cache_window();

    // Retiring v1 while tokens use it is refused: look-ups would miss those rows.
    let o = f.run(&["keys", "retire", INDEX_SCOPE, "1"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("{ROWS} blind-index tokens still use it"))
            && stderr(&o).contains("patients.email_bidx")
            && stderr(&o).contains("reindex"),
        "{}",
        stderr(&o)
    );
    assert_lookups_find_all(&f, "the refused retire");

    // Without the manifest the migrator cannot know v1 is an index key: retire goes through,
    // and look-ups do miss the rows (the failure the refusal prevents). `destroy`, which needs
    // the manifest, refuses while the tokens exist, naming them.
    let o = f
        .cmd()
        .env_remove("LEAKLESS_MANIFEST")
        .args(["keys", "retire", INDEX_SCOPE, "1"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(lookup(&f, &f.fresh_ring(), 57).is_empty());
    let o = f.run(&["keys", "destroy", INDEX_SCOPE, "1", "--yes"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("patients.email_bidx (index tokens)") && stderr(&o).contains("reindex"),
        "{}",
        stderr(&o)
    );
    let o = f.run(&["keys", "reinstate", INDEX_SCOPE, "1"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_lookups_find_all(&f, "the reinstate");

    // An application write meanwhile carries a token of the active version.
    let ring = f.fresh_ring();
    let mut db = f.db();
    let id = ROWS;
    let ctx = FieldContext::new("patients", "email", RowId::Int(id), 1);
    let sealed = ring
        .seal(
            &KeyScope::new(crate::support::SCOPE).unwrap(),
            &ctx,
            plain(id).as_bytes(),
            &leakless::FieldPolicy::default(),
        )
        .unwrap();
    let token = ring.blind_index(&spec(), plain(id).as_bytes()).unwrap();
    assert_eq!(token.version().unwrap().get(), 2);
    db.exec(
        &format!(
            "INSERT INTO patients (id, email, email_bidx) VALUES ({}, {}, {})",
            db.ph(1),
            db.ph(2),
            db.ph(3)
        ),
        &[
            Bind::Int(id),
            Bind::Bytes(Some(sealed)),
            Bind::Bytes(Some(token.as_bytes().to_vec())),
        ],
    )
    .unwrap();

    // Re-key: every v1 token moves to v2; the new row is left alone.
    let o = f.run(&["reindex", "--workers", "2", "--batch-size", "50"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("{ROWS} written")),
        "{}",
        stdout(&o)
    );
    assert_eq!(token_versions(&f), vec![(2, ROWS as u64 + 1)]);
    assert_lookups_find_all(&f, "the re-key");
    assert_eq!(
        lookup(&f, &f.fresh_ring(), id),
        BTreeSet::from([id]),
        "the application's row"
    );

    // Retire and destroy v1: no token uses it, nothing is missed.
    wait_for_cache_window();
    let o = f.run(&["keys", "retire", INDEX_SCOPE, "1"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_lookups_find_all(&f, "the retire");
    let o = f.run(&["keys", "destroy", INDEX_SCOPE, "1", "--yes"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_lookups_find_all(&f, "the destroy");
    let ix = status_index(&f);
    assert_eq!(ix["reindex_work"], 0, "{ix}");
}

backend_tests! {
    lifecycle => [sqlite, postgres, mariadb],
}

/// `adopt` on a column with a blind index seals the plaintext and computes the tokens, so
/// look-ups find the adopted rows.
fn adopt_computes_tokens(backend: Backend) {
    let f = Fixture::new(backend);
    f.seed(0, ROWS, true);
    add_index_column(&f);
    write_manifest(&f, true);
    assert!(lookup(&f, &f.fresh_ring(), 150).is_empty());
    let o = f.run(&["adopt", "--table", "patients", "--column", "email"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("reindex patients.email"),
        "{}",
        stdout(&o)
    );
    assert_lookups_find_all(&f, "adopt");
    assert_eq!(token_versions(&f), vec![(1, ROWS as u64)]);
}

backend_tests! {
    adopt_computes_tokens => [sqlite, postgres],
}
