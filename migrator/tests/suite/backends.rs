//! Every command on SQLite, PostgreSQL and MariaDB through the real binary: status, rewrap,
//! verify (also catching a planted bad envelope), the key lifecycle with destroy's refusal,
//! reencrypt, and the full adopt sequence on a plaintext column.

use leakless::PaddingPolicy;
use leakless_migrator::db::Bind;

use crate::support::{
    Backend, DEFAULT_PADDING, Fixture, PATIENTS_SCOPE, SCOPE, adopting, assert_says, code,
    column_json, plain, stderr, stdout, table_manifest, wait_for_cache_window,
};

fn lifecycle(backend: Backend) {
    let f = Fixture::new(backend);
    f.seed(0, 1200, false);
    f.rotate();

    // status: all 1200 rows on v1 (grace), rewrap work 1200; JSON agrees.
    let o = f.run(&["status", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j[0]["rewrap_work"], 1200);
    assert_eq!(j[0]["versions"][0]["state"], "grace");

    // dry run writes nothing.
    let o = f.run(&["rewrap", "--dry-run"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("would rewrap 1200 rows"),
        "{}",
        stdout(&o)
    );
    // reencrypt counts every sealed row, on any version.
    let o = f.run(&["reencrypt", "--dry-run", "--table", "patients"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("would re-encrypt 1200 rows of patients.email"),
        "{}",
        stdout(&o)
    );
    assert_eq!(f.versions().get(&1), Some(&1200));

    // destroy of v1 is refused: wrong state first (grace), then rows still on it.
    let o = f.run(&["keys", "destroy", SCOPE, "1", "--yes"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    // Retire inside the cache window is refused (exit 1, saying when); after it, allowed.
    let o = f.run(&["keys", "retire", SCOPE, "v1"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("too early to retire"), "{}", stderr(&o));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    wait_for_cache_window();
    let o = f.run(&["keys", "retire", SCOPE, "v1"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = f.assert_fails(
        &["keys", "destroy", SCOPE, "1", "--yes"],
        1,
        "1200 rows still use it",
    );
    assert!(stderr(&o).contains("help: "), "{}", stderr(&o));

    // rewrap from a retired version fails per row (exit 1), nothing lost; reinstate and rerun.
    let o = f.run(&["rewrap", "--batch-size", "500"]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    assert!(
        stdout(&o).contains("failed: patients.email row 0:"),
        "{}",
        stdout(&o)
    );
    let o = f.run(&["keys", "reinstate", SCOPE, "1", "--grace", "1h"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = f.run(&["rewrap", "--batch-size", "500", "--workers", "2", "--json"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["jobs"][0]["rows_changed"], 1200);
    assert_eq!(
        j["jobs"][0]["rows_seen"], 1200,
        "a chunk was read twice or skipped: {j}"
    );
    // One unwrap per KEK version involved (v1 and v2), and one of the store's integrity key.
    assert_eq!(j["kms_calls"]["unwraps"], 3);
    assert_eq!(f.versions().get(&2), Some(&1200));
    f.assert_all_open(plain);
    assert_eq!(f.checkpoint_changed("rewrap:patients.email"), 1200);

    // A second rewrap is a no-op pass.
    let o = f.run(&["rewrap", "--json"]);
    assert_eq!(code(&o), 0);
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["jobs"][0]["rows_changed"], 0);

    // verify passes, then catches an envelope copied to another row (exit 1, row named).
    let o = f.run(&["verify"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let o = f.run(&["verify", "--sample", "50"]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(stdout(&o).contains("50 opened"), "{}", stdout(&o));
    let mut db = f.db();
    let p1 = db.ph(1);
    db.exec(
        &format!("UPDATE patients SET email = (SELECT email FROM (SELECT email FROM patients WHERE id = 1) s) WHERE id = {p1}"),
        &[Bind::Int(7)],
    )
    .unwrap();
    let o = f.run(&["verify"]);
    assert_eq!(code(&o), 1);
    assert!(stdout(&o).contains("row 7: "), "{}", stdout(&o));
    assert!(!stdout(&o).contains("patient-"), "verify printed plaintext");
    db.exec(
        &format!("DELETE FROM patients WHERE id = {p1}"),
        &[Bind::Int(7)],
    )
    .unwrap();

    // Now v1 is unused: retire and destroy succeed; the audit log shows every step.
    let o = f.run(&["keys", "retire", SCOPE, "1"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = f.run(&["keys", "destroy", SCOPE, "1"]);
    assert_eq!(code(&o), 1, "no --yes and no tty must refuse");
    assert!(
        stderr(&o).contains("stdin is not a terminal"),
        "{}",
        stderr(&o)
    );
    let o = f.run(&["keys", "destroy", SCOPE, "1", "--yes"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = f.run(&["keys", "audit", "--json"]);
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let actions: Vec<&str> = j
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "create_scope", // the store's integrity key
            "create_scope",
            "rotate",
            "rotate",
            "retire",
            "reinstate",
            "retire",
            "destroy"
        ]
    );

    // reencrypt: every row gets a new envelope, still opens to the same plaintext.
    let before = f.rows();
    let o = f.run(&["reencrypt", "--batch-size", "300"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let after = f.rows();
    assert_eq!(before.len(), after.len());
    assert!(
        before
            .iter()
            .zip(&after)
            .all(|(a, b)| a.0 == b.0 && a.1 != b.1)
    );
    f.assert_all_open(plain);

    // rotate-root: records re-wrapped under a new root key; the old key no longer opens.
    let new_key = f.dir.path().join("new-root.key");
    let o = f.run(&[
        "keys",
        "rotate-root",
        "--new-root-key-file",
        new_key.to_str().unwrap(),
        "--generate",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = f.run_with("LEAKLESS_ROOT_KEY_FILE", &new_key, &["verify"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let o = f.run(&["verify"]);
    assert_eq!(
        code(&o),
        3,
        "the old root key must no longer open the KEKs: one key error"
    );
}

fn adopt(backend: Backend) {
    let f = Fixture::new(backend);
    f.seed(0, 700, true);
    let o = f.run(&["status", "--json"]);
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        j[0]["nulls"], 700,
        "nullable sealed column, not adopted yet"
    );
    let o = f.adopt_email(&["--dry-run"]);
    assert!(stdout(&o).contains("would seal 700 rows"), "{}", stdout(&o));
    // Verify before the backfill fails and names rows.
    let o = f.adopt_email(&["--verify-only"]);
    assert_eq!(code(&o), 1);
    assert!(stdout(&o).contains("700 mismatches"), "{}", stdout(&o));
    // The application (stage 1) already wrote a sealed value for one row: it must survive.
    let ctx = leakless::FieldContext::new("patients", "email", leakless::RowId::Int(5), 1);
    let app = f
        .ring
        .seal(
            &leakless::KeyScope::new(SCOPE).unwrap(),
            &ctx,
            plain(5).as_bytes(),
            &leakless::FieldPolicy::default(),
        )
        .unwrap();
    let mut db = f.db();
    let sql = format!("UPDATE patients SET email = {} WHERE id = 5", db.ph(1));
    db.exec(&sql, &[Bind::Bytes(Some(app.clone()))]).unwrap();
    let o = f.adopt_email(&["--batch-size", "250"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("699 written"), "{out}");
    assert!(out.contains("0 mismatches"), "{out}");
    let q = if backend == Backend::Mysql { "`" } else { "\"" };
    assert!(
        out.contains(&format!(
            "ALTER TABLE {q}patients{q} DROP COLUMN {q}email_plain{q};"
        )),
        "{out}"
    );
    assert!(!out.contains("patient-"), "adopt printed plaintext");
    f.assert_all_open(plain);
    assert_eq!(
        f.rows().iter().find(|r| r.0 == 5).unwrap().1.as_deref(),
        Some(app.as_slice())
    );
    // The plaintext column is still there: adopt never drops.
    let n: Vec<leakless_migrator::db::OneInt> = f
        .db()
        .load(
            "SELECT COUNT(*) AS n FROM patients WHERE email_plain IS NOT NULL",
            &[],
        )
        .unwrap();
    assert_eq!(n[0].n, 700);

    // An application version without leakless changes the plaintext of a row sealed before:
    // the verification names the row, its help gives the repair, and the repair works.
    let changed = "changed-later@example.test, 1 New Road";
    let sql = format!(
        "UPDATE patients SET email_plain = {} WHERE id = 7",
        db.ph(1)
    );
    db.exec(&sql, &[Bind::Text(Some(changed.to_owned()))])
        .unwrap();
    let o = f.adopt_email(&["--verify-only"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stdout(&o).contains("1 mismatches"), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("row 7: sealed value differs"),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o)
            .contains("leakless-migrate adopt --table patients --column email --repair-stale"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("changed-later"), "{}", stderr(&o));
    // A plain rerun writes nothing and still fails; the repair re-seals row 7 only.
    let o = f.adopt_email(&[]);
    assert_says(&o, 1, " 0 written");
    let o = f.adopt_email(&["--repair-stale"]);
    assert_says(&o, 0, "0 mismatches, 1 stale rows re-sealed");
    let o = f.adopt_email(&["--verify-only"]);
    assert_says(&o, 0, "0 mismatches");
    f.assert_all_open(|id| {
        if id == 7 {
            changed.to_owned()
        } else {
            plain(id)
        }
    });
}

backend_tests! {
    lifecycle => [sqlite, postgres, mariadb],
    adopt => [sqlite, postgres, mariadb],
}

/// `status` and `adopt` driven by the manifest's `adoption` field: status separates the rows
/// only in plaintext from the rows NULL in both, and `adopt` takes its source column from the
/// manifest (an explicit `--from` that agrees still works, one that conflicts is refused).
fn adopt_from_manifest(backend: Backend) {
    let f = Fixture::new(backend);
    let email = column_json("email", "string", DEFAULT_PADDING, "null");
    let email = adopting(&email, "email_plain", "read_plaintext");
    std::fs::write(
        &f.manifest,
        table_manifest("patients", PATIENTS_SCOPE, &[email]),
    )
    .unwrap();
    f.seed(0, 300, true);
    f.seed(300, 400, false);
    let mut db = f.db();
    db.batch(
        "INSERT INTO patients (id, email, email_plain) VALUES (400, NULL, NULL), (401, NULL, NULL)",
    )
    .unwrap();

    let o = f.run(&["status", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j[0]["rows"], 402);
    assert_eq!(j[0]["nulls"], 2, "only the rows NULL in both columns");
    assert_eq!(j[0]["plaintext"], 0);
    assert_eq!(j[0]["adoption"]["stage"], "read_plaintext");
    assert_eq!(j[0]["adoption"]["from_column"], "email_plain");
    assert_eq!(j[0]["adoption"]["pending"], 300);
    let o = f.run(&["status"]);
    let out = stdout(&o);
    assert!(
        out.contains(
            "adoption from email_plain at stage read_plaintext: 300 rows only in plaintext"
        ),
        "{out}"
    );
    assert!(!out.contains("patient-"), "status printed plaintext");

    // A conflicting --from is refused before anything is written.
    f.assert_fails(
        &[
            "adopt", "--table", "patients", "--column", "email", "--from", "id2",
        ],
        2,
        "conflicts with the manifest",
    );
    // An agreeing --from is fine (dry run), and no --from takes the manifest's column.
    let o = f.adopt_email(&["--dry-run"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("would seal 300 rows"), "{}", stdout(&o));
    let o = f.run(&["adopt", "--table", "patients", "--column", "email"]);
    assert_says(&o, 0, "300 written");
    assert!(stdout(&o).contains("0 mismatches"), "{}", stdout(&o));

    let o = f.run(&["status", "--json"]);
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j[0]["adoption"]["pending"], 0);
    assert_eq!(j[0]["nulls"], 2);
    let o = f.run(&["status"]);
    assert!(
        stdout(&o).contains("adoption from email_plain at stage read_plaintext: backfill complete"),
        "{}",
        stdout(&o)
    );
}

backend_tests! {
    adopt_from_manifest => [sqlite, postgres, mariadb],
}

/// The legacy column types a model's fields are adopted from: a `Json<T>` field from `bytea`
/// (what the derive maps `Json<T>` to) and from `jsonb`/`JSON`, a `Vec<u8>` field from a binary
/// column holding bytes that are not UTF-8, a `String` field from `varchar`. Every value opens
/// to the legacy value (a `jsonb` document as an equal document).
fn adopt_legacy_types(backend: Backend) {
    let f = Fixture::new(backend);
    let (bin, json, varchar) = match backend {
        Backend::Postgres => ("bytea", "jsonb", "varchar(200)"),
        Backend::Mysql => ("LONGBLOB", "JSON", "VARCHAR(200)"),
        Backend::Sqlite => ("BLOB", "TEXT", "VARCHAR(200)"),
    };
    let mut db = f.db();
    db.batch(&format!(
        "CREATE TABLE legacy (id BIGINT NOT NULL PRIMARY KEY, \
         doc {bin} NULL, doc_old {bin} NULL, meta {bin} NULL, meta_old {json} NULL, \
         raw {bin} NULL, raw_old {bin} NULL, note {bin} NULL, note_old {varchar} NULL)"
    ))
    .unwrap();
    // Each column with its own padding policy, none of them the default: adopt and reencrypt
    // must seal under the manifest's policy, not a default of their own.
    let policies = [
        ("doc", PaddingPolicy::MarkerOnly),
        (
            "meta",
            PaddingPolicy::PowerOfTwo {
                min: 256,
                cap: 1024,
            },
        ),
        ("raw", PaddingPolicy::Multiple { block: 48 }),
        ("note", PaddingPolicy::Multiple { block: 100 }),
    ];
    let col = |name: &str, encoding: &str| {
        let padding = policies.iter().find(|(c, _)| *c == name).unwrap().1;
        column_json(
            name,
            encoding,
            &serde_json::to_string(&padding).unwrap(),
            "null",
        )
    };
    let columns = [
        col("doc", "json"),
        col("meta", "json"),
        col("raw", "bytes"),
        col("note", "string"),
    ];
    std::fs::write(
        &f.manifest,
        table_manifest("legacy", PATIENTS_SCOPE, &columns),
    )
    .unwrap();
    let doc = |i: i64| format!(r#"{{"street":"{i} Rue de l'Église","lat":48.85,"lon":2.35}}"#);
    let blob = |i: i64| vec![0u8, 0xff, 0xfe, u8::try_from(i).unwrap(), 0x80, b'\\', b'x'];
    let note = |i: i64| format!("note {i}: café, 12 ½ rooms");
    let rows = 40;
    for i in 0..rows {
        let json_value = match backend {
            Backend::Postgres => format!("CAST({} AS jsonb)", db.ph(2)),
            _ => db.ph(2),
        };
        let sql = format!(
            "INSERT INTO legacy (id, meta_old, doc_old, raw_old, note_old) \
             VALUES ({}, {json_value}, {}, {}, {})",
            db.ph(1),
            db.ph(3),
            db.ph(4),
            db.ph(5)
        );
        db.exec(
            &sql,
            &[
                Bind::Int(i),
                Bind::Text(Some(doc(i))),
                Bind::Bytes(Some(doc(i).into_bytes())),
                Bind::Bytes(Some(blob(i))),
                Bind::Text(Some(note(i))),
            ],
        )
        .unwrap();
    }
    for c in ["doc", "meta", "raw", "note"] {
        let from = format!("{c}_old");
        let args = ["adopt", "--table", "legacy", "--column", c, "--from", &from];
        let o = f.run(&[&args[..], &["--dry-run"]].concat());
        assert_eq!(code(&o), 0, "{c} dry run: {}{}", stdout(&o), stderr(&o));
        assert!(
            stdout(&o).contains("would seal 40 rows"),
            "{c}: {}",
            stdout(&o)
        );
        let o = f.run(&args);
        assert_eq!(code(&o), 0, "{c}: {}{}", stdout(&o), stderr(&o));
        assert!(stdout(&o).contains("40 written"), "{c}: {}", stdout(&o));
        assert!(stdout(&o).contains("0 mismatches"), "{c}: {}", stdout(&o));
    }
    let ring = f.fresh_ring();
    let sql = format!(
        "SELECT {} AS id, doc AS a, meta AS b, raw AS c, note AS d FROM legacy ORDER BY id",
        db.id_text(leakless::manifest::RowIdKind::Int, "id")
    );
    // Opens one value and checks that it was padded under its column's policy.
    let open = |column: &str, id: i64, env: &Option<Vec<u8>>| -> Vec<u8> {
        let ctx = leakless::FieldContext::new("legacy", column, leakless::RowId::Int(id), 1);
        let env = env
            .as_deref()
            .unwrap_or_else(|| panic!("{column} row {id}: NULL"));
        let plain = ring.open(&ctx, env).unwrap().expose_secret().to_vec();
        let policy = policies.iter().find(|(c, _)| *c == column).unwrap().1;
        assert_eq!(
            leakless::envelope::inspect(env).unwrap().padded_len,
            policy.padded_len(plain.len()).unwrap(),
            "{column} row {id}: not padded under {policy:?}"
        );
        plain
    };
    let check = |sealed: &[Sealed4]| {
        assert_eq!(sealed.len(), 40);
        for r in sealed {
            let id: i64 = r.id.parse().unwrap();
            assert_eq!(open("doc", id, &r.a), doc(id).into_bytes(), "doc row {id}");
            let meta: serde_json::Value = serde_json::from_slice(&open("meta", id, &r.b)).unwrap();
            let want: serde_json::Value = serde_json::from_str(&doc(id)).unwrap();
            assert_eq!(meta, want, "meta row {id}");
            assert_eq!(open("raw", id, &r.c), blob(id), "raw row {id}");
            assert_eq!(
                open("note", id, &r.d),
                note(id).into_bytes(),
                "note row {id}"
            );
        }
    };
    let adopted: Vec<Sealed4> = db.load(&sql, &[]).unwrap();
    check(&adopted);
    // The policies differ from the default in what they give these values (the control that
    // makes the check above able to fail).
    let r = adopted.iter().find(|r| r.id == "7").unwrap();
    let sizes = |env: &Option<Vec<u8>>| {
        leakless::envelope::inspect(env.as_deref().unwrap())
            .unwrap()
            .padded_len
    };
    assert_eq!(sizes(&r.a), doc(7).len() + 1, "marker only: exact length");
    assert_eq!(sizes(&r.b), 256);
    assert_eq!(sizes(&r.c), 48);
    assert_eq!(sizes(&r.d), 100);
    // reencrypt reseals every value under the same policies.
    let o = f.run(&["reencrypt", "--yes"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let resealed: Vec<Sealed4> = db.load(&sql, &[]).unwrap();
    assert!(
        adopted
            .iter()
            .zip(&resealed)
            .all(|(a, b)| a.a != b.a && a.d != b.d),
        "reencrypt left a value as it was"
    );
    check(&resealed);
    // A source column that is not there: a usage error before anything runs.
    f.assert_fails(
        &[
            "adopt", "--table", "legacy", "--column", "note", "--from", "nope",
        ],
        2,
        "legacy.nope: no such column to adopt from",
    );
}

/// Four sealed columns of a `legacy` row.
#[derive(diesel::QueryableByName)]
struct Sealed4 {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Binary>)]
    a: Option<Vec<u8>>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Binary>)]
    b: Option<Vec<u8>>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Binary>)]
    c: Option<Vec<u8>>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Binary>)]
    d: Option<Vec<u8>>,
}

backend_tests! {
    adopt_legacy_types => [sqlite, postgres, mariadb],
}

/// A manifest naming a column or table the database does not have (the application's
/// migrations not run yet) is a usage error (exit 2) naming it, for every command that reads
/// the column, not a database error.
fn manifest_ahead_of_the_database(backend: Backend) {
    let f = Fixture::new(backend);
    for (table, column) in [("patients", "phone"), ("ghosts", "email")] {
        let columns = [column_json(column, "string", DEFAULT_PADDING, "null")];
        std::fs::write(&f.manifest, table_manifest(table, PATIENTS_SCOPE, &columns)).unwrap();
        for args in [
            &["status"][..],
            &["verify"],
            &["rewrap"],
            &["reencrypt", "--yes"],
        ] {
            let o = f.run(args);
            assert_eq!(code(&o), 2, "{args:?} {table}.{column}: {}", stderr(&o));
            assert!(
                stderr(&o).contains(&format!(
                    "the manifest names {table}.{column}, which the database does not have"
                )) || stderr(&o).contains(&format!("the manifest names {table}.id")),
                "{args:?}: {}",
                stderr(&o)
            );
        }
    }
}

backend_tests! {
    manifest_ahead_of_the_database => [sqlite, postgres, mariadb],
}
