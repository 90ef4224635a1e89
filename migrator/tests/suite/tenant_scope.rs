//! The key-scope check of per-tenant tables: `verify`, `rewrap` and `reencrypt` refuse a value
//! sealed under another tenant's scope (for the right table, column and row), and a tenant
//! column that is neither an integer nor text is refused up front.

use std::fmt::Display;

use leakless::manifest::RowIdKind;
use leakless::{AuditInfo, FieldContext, FieldPolicy, KeyScope, RowId};
use leakless_migrator::db::{Bind, Db, IdBytes};

use crate::support::{
    Backend, DEFAULT_PADDING, Fixture, assert_says, code, column_json, stderr, stdout,
    table_manifest,
};

/// The plaintext of row `id` (fake).
fn note(id: i64) -> String {
    format!("visit-note-{id}: follow-up in two weeks")
}

/// The scope of a tenant, built by the runtime exactly as generated code builds it.
fn tenant_scope(tenant: &dyn Display) -> KeyScope {
    leakless::__private::scope("tenant:", Some(tenant)).unwrap()
}

fn seal(f: &Fixture, scope: &KeyScope, id: i64) -> Vec<u8> {
    let ctx = FieldContext::new("visits", "note", RowId::Int(id), 1);
    f.ring
        .seal(scope, &ctx, note(id).as_bytes(), &FieldPolicy::default())
        .unwrap()
}

/// Writes the fixture's manifest: `visits.note` sealed per tenant (`tenant:<tenant_id>`), with
/// `blind_index` (a JSON object, or `null`).
fn write_manifest(f: &Fixture, blind_index: &str) {
    let scope = r#"{"kind": "per_tenant", "column": "tenant_id", "prefix": "tenant:"}"#;
    let note = column_json("note", "string", DEFAULT_PADDING, blind_index);
    std::fs::write(&f.manifest, table_manifest("visits", scope, &[note])).unwrap();
}

/// The value of `column` in row `id` of `visits`.
fn stored(db: &mut Db, column: &str, id: i64) -> Option<Vec<u8>> {
    let rows: Vec<IdBytes> = db
        .load(
            &format!(
                "SELECT {} AS id, {column} AS val FROM visits WHERE id = {id}",
                db.id_text(RowIdKind::Int, "id")
            ),
            &[],
        )
        .unwrap();
    rows.into_iter().next().unwrap().val
}

/// Rows 1..=4 of tenant `one`, 5..=8 of tenant `two`; the tenant column is `tenant_type`.
/// Before the swap everything opens; a tenant-two envelope sealed for row 2 (a tenant-one row)
/// fails verify, rewrap and reencrypt on row 2 only, and no plaintext is printed.
fn wrong_tenant_is_caught(backend: Backend, tenant_type: &str, one: Bind, two: Bind) {
    let f = Fixture::new(backend);
    write_manifest(&f, "null");
    let mut db = f.db();
    db.batch(&format!(
        "CREATE TABLE visits (id BIGINT NOT NULL PRIMARY KEY, tenant_id {tenant_type} NOT NULL, \
         note {} NULL)",
        backend.binary_type()
    ))
    .unwrap();
    let shown = |b: &Bind| -> String {
        match b {
            Bind::Int(i) => i.to_string(),
            Bind::Text(Some(s)) => s.clone(),
            _ => unreachable!(),
        }
    };
    let (t1, t2) = (shown(&one), shown(&two));
    let (s1, s2) = match (&one, &two) {
        (Bind::Int(a), Bind::Int(b)) => (tenant_scope(a), tenant_scope(b)),
        _ => (tenant_scope(&t1), tenant_scope(&t2)),
    };
    for s in [&s1, &s2] {
        f.ring
            .create_scope(s, &AuditInfo::new("test", "fixture"))
            .unwrap();
    }
    for id in 1..=8 {
        let (tenant, scope) = if id <= 4 { (&one, &s1) } else { (&two, &s2) };
        let tenant = match tenant {
            Bind::Int(i) => Bind::Int(*i),
            Bind::Text(s) => Bind::Text(s.clone()),
            _ => unreachable!(),
        };
        db.exec(
            &format!(
                "INSERT INTO visits (id, tenant_id, note) VALUES ({}, {}, {})",
                db.ph(1),
                db.ph(2),
                db.ph(3)
            ),
            &[
                Bind::Int(id),
                tenant,
                Bind::Bytes(Some(seal(&f, scope, id))),
            ],
        )
        .unwrap();
    }

    // Positive control: every row opens under its own tenant's scope.
    let o = f.run(&["verify"]);
    assert_says(&o, 0, "visits.note: 8 opened, 0 null, 0 failed");
    let o = f.run(&["verify", "--sample", "8"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));

    // Row 2 belongs to tenant one; give it a value sealed for row 2 under tenant two's scope.
    let planted = seal(&f, &s2, 2);
    db.exec(
        &format!(
            "UPDATE visits SET note = {} WHERE id = {}",
            db.ph(1),
            db.ph(2)
        ),
        &[Bind::Bytes(Some(planted.clone())), Bind::Int(2)],
    )
    .unwrap();
    let o = f.run(&["verify"]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("visits.note: 7 opened, 0 null, 1 failed"),
        "{out}"
    );
    assert!(out.contains("failed: visits.note row 2: "), "{out}");
    assert!(out.contains("scope"), "{out}");
    assert!(out.contains(&format!("tenant:{t1}")), "{out}");
    assert!(
        !out.contains("visit-note"),
        "verify printed plaintext: {out}"
    );
    let o = f.run(&["verify", "--sample", "8"]);
    assert_says(&o, 1, "row 2: ");

    // rewrap and reencrypt fail that row (and only it), leaving it as it was.
    for cmd in ["rewrap", "reencrypt"] {
        let o = f.run(&[cmd, "--table", "visits", "--column", "note"]);
        assert_eq!(code(&o), 1, "{cmd}: {}{}", stdout(&o), stderr(&o));
        let out = stdout(&o);
        assert!(out.contains("visits.note row 2: "), "{cmd}: {out}");
        assert!(out.contains("scope"), "{cmd}: {out}");
        assert!(
            !out.contains("visit-note"),
            "{cmd} printed plaintext: {out}"
        );
    }
    assert_eq!(stored(&mut db, "note", 2), Some(planted));
}

/// The same with integer tenant ids (`INTEGER` on SQLite, `BIGINT` elsewhere).
fn wrong_int_tenant_is_caught(backend: Backend) {
    let tenant_type = match backend {
        Backend::Sqlite => "INTEGER",
        _ => "BIGINT",
    };
    wrong_tenant_is_caught(backend, tenant_type, Bind::Int(1), Bind::Int(2));
}

/// The same with text tenant ids (`TEXT` on SQLite, `VARCHAR(64)` elsewhere).
fn wrong_text_tenant_is_caught(backend: Backend) {
    let tenant_type = match backend {
        Backend::Sqlite => "TEXT",
        _ => "VARCHAR(64)",
    };
    let [a, b] = ["acme", "globex"].map(|t| Bind::Text(Some(t.into())));
    wrong_tenant_is_caught(backend, tenant_type, a, b);
}

backend_tests! {
    wrong_int_tenant_is_caught => [sqlite, postgres, mariadb],
    wrong_text_tenant_is_caught => [sqlite, postgres],
}

/// A binary tenant column cannot give the scope's text: refused before any row is read.
fn binary_tenant_is_refused(backend: Backend) {
    let f = Fixture::new(backend);
    write_manifest(&f, "null");
    f.batch(&format!(
        "CREATE TABLE visits (id BIGINT NOT NULL PRIMARY KEY, tenant_id {b} NOT NULL, \
             note {b} NULL)",
        b = backend.binary_type()
    ));
    for args in [
        &["verify"][..],
        &["rewrap", "--table", "visits", "--column", "note"][..],
    ] {
        let o = f.run(args);
        assert_eq!(code(&o), 2, "{args:?}: {}{}", stdout(&o), stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("visits.tenant_id"), "{err}");
        assert!(
            err.contains("needs an integer or text tenant column"),
            "{err}"
        );
    }
}

backend_tests! {
    binary_tenant_is_refused => [sqlite, postgres],
}

/// A blind index with an index key per tenant (`"per_tenant": true`, scope prefix `bidx:`):
/// `reindex` computes each row's token under its tenant's index key, exactly as the model
/// does; `status` counts tokens per tenant scope; retiring one tenant's index key is refused
/// while its tokens use it, naming that tenant's count only.
fn per_tenant_index(backend: Backend) {
    let f = Fixture::new(backend);
    write_manifest(
        &f,
        r#"{"column": "note_bidx", "scope": "bidx:", "bytes": 16, "normalizer": "none",
            "per_tenant": true}"#,
    );
    let mut db = f.db();
    db.batch(&format!(
        "CREATE TABLE visits (id BIGINT NOT NULL PRIMARY KEY, tenant_id VARCHAR(20) NOT NULL, \
         note {b} NULL, note_bidx {b} NULL)",
        b = backend.binary_type()
    ))
    .unwrap();
    let who = AuditInfo::new("test", "tenants");
    for t in ["one", "two"] {
        f.ring.create_scope(&tenant_scope(&t), &who).unwrap();
        f.ring
            .create_scope(
                &leakless::__private::scope("bidx:", Some(&t)).unwrap(),
                &who,
            )
            .unwrap();
    }
    for id in 1..=8i64 {
        let t = if id <= 4 { "one" } else { "two" };
        let sealed = seal(&f, &tenant_scope(&t), id);
        let sql = format!(
            "INSERT INTO visits (id, tenant_id, note) VALUES ({}, {}, {})",
            db.ph(1),
            db.ph(2),
            db.ph(3)
        );
        db.exec(
            &sql,
            &[
                Bind::Int(id),
                Bind::Text(Some(t.to_owned())),
                Bind::Bytes(Some(sealed)),
            ],
        )
        .unwrap();
    }
    let o = f.run(&["reindex"]);
    assert_says(&o, 0, "8 written");

    // Each token is the one the application computes with its tenant's index key.
    let manifest = leakless::manifest::SchemaManifest::from_json(
        &std::fs::read_to_string(&f.manifest).unwrap(),
    )
    .unwrap();
    let index = manifest.tables[0].columns[0].blind_index.clone().unwrap();
    for (id, t) in [(1i64, "one"), (8, "two")] {
        let spec = index.spec("visits", "note", Some(t)).unwrap();
        let want = f.ring.blind_index(&spec, note(id).as_bytes()).unwrap();
        assert_eq!(
            stored(&mut db, "note_bidx", id).as_deref(),
            Some(want.as_bytes()),
            "row {id}"
        );
        let other = index
            .spec(
                "visits",
                "note",
                Some(if t == "one" { "two" } else { "one" }),
            )
            .unwrap();
        assert_ne!(
            f.ring.blind_index(&other, note(id).as_bytes()).unwrap(),
            want,
            "another tenant's key gives another token"
        );
    }

    let o = f.run(&["status", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let versions = j[0]["index"]["versions"].as_array().unwrap();
    let scopes: Vec<(String, u64)> = versions
        .iter()
        .map(|v| {
            (
                v["scope"].as_str().unwrap().to_owned(),
                v["rows"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        scopes,
        [("bidx:one".to_owned(), 4), ("bidx:two".to_owned(), 4)]
    );

    f.ring
        .rotate(
            &leakless::__private::scope("bidx:", Some(&"one")).unwrap(),
            std::time::Duration::from_secs(3600),
            &who,
        )
        .unwrap();
    crate::support::wait_for_cache_window();
    f.assert_fails(
        &["keys", "retire", "bidx:one", "1"],
        1,
        "4 blind-index tokens still use it (visits.note_bidx: 4)",
    );
}

backend_tests! {
    per_tenant_index => [sqlite, postgres],
}
