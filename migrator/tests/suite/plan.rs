//! The plan's chunk boundaries on every backend and for every kind of row id: the ids at
//! positions 1, 1 + batch, 1 + 2 batch, ... in the database's own id order, each chunk running
//! from one boundary to the next, the first open below and the last open above. PostgreSQL
//! finds them with a recursive index walk and the other backends with a window query; both
//! are held to the list computed here from a plain `ORDER BY` of the same table.

use leakless::manifest::{RowIdKind, SchemaManifest};
use leakless_migrator::db::{Bind, Db, DbUrl, OneText};
use leakless_migrator::engine::{self, Mode};

use crate::support::Backend;

/// The column type of each id kind on `backend` (a primary key).
fn id_type(backend: Backend, kind: RowIdKind) -> &'static str {
    match (backend, kind) {
        (_, RowIdKind::Int) => "BIGINT",
        (Backend::Postgres, RowIdKind::Text) => "TEXT",
        (Backend::Postgres, RowIdKind::Bytes) => "BYTEA",
        (Backend::Postgres, RowIdKind::Uuid) => "UUID",
        (Backend::Mysql, RowIdKind::Text) => "VARCHAR(64)",
        (Backend::Mysql, RowIdKind::Bytes) => "VARBINARY(32)",
        (Backend::Mysql, RowIdKind::Uuid) => "BINARY(16)",
        (Backend::Sqlite, RowIdKind::Text) => "TEXT",
        (Backend::Sqlite, RowIdKind::Bytes | RowIdKind::Uuid) => "BLOB",
    }
}

/// The text form (as `Db::id_text` reads it back) of the `i`-th id of a table of `kind`,
/// scrambled so that insertion order is not id order.
fn id_literal(kind: RowIdKind, i: u64) -> String {
    let x = (i * 7919) % 10_007;
    match kind {
        RowIdKind::Int => format!("{}", i64::try_from(x).unwrap() - 5000),
        // Mixed case and lengths, so the collation's order is what counts.
        RowIdKind::Text => format!("{}{x}", if x.is_multiple_of(2) { "Key-" } else { "key-" }),
        RowIdKind::Bytes => format!("{x:04x}{:02x}", i % 251),
        RowIdKind::Uuid => format!("{x:08x}{i:024x}"),
    }
}

/// The chunk table's `lo` and `hi` of `job`, in chunk order (`None` for an open end).
fn chunks(db: &mut Db, job: &str) -> Vec<(Option<String>, Option<String>)> {
    let column = |db: &mut Db, c: &str| -> Vec<Option<String>> {
        let sql = format!(
            "SELECT COALESCE({c}, '-') AS id FROM leakless_migrate_chunk WHERE job = {} \
             ORDER BY chunk_no",
            db.ph(1)
        );
        db.load::<OneText>(&sql, &[Bind::Text(Some(job.to_owned()))])
            .unwrap()
            .into_iter()
            .map(|r| (r.id != "-").then_some(r.id))
            .collect()
    };
    let lo = column(db, "lo");
    let hi = column(db, "hi");
    lo.into_iter().zip(hi).collect()
}

fn bounds(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (url, _server) = backend.new_database(&dir.path().join("plan.db"));
    let url = if backend == Backend::Sqlite {
        format!("sqlite://{url}")
    } else {
        url
    };
    let mut db = DbUrl::parse(&url).unwrap().connect().unwrap();
    let kinds = [
        (RowIdKind::Int, "int"),
        (RowIdKind::Text, "text"),
        (RowIdKind::Bytes, "bytes"),
        (RowIdKind::Uuid, "uuid"),
    ];
    let tables: Vec<String> = kinds
        .iter()
        .map(|(_, name)| {
            format!(
                r#"{{"table": "plan_{name}", "row_id_column": "id", "row_id_kind": "{name}",
                "schema_version": 1, "scope": {{"kind": "static", "scope": "plan"}},
                "columns": [{{"column": "v", "algorithm": "xchacha20poly1305",
                "encoding": "bytes", "padding": {{"kind": "marker_only"}}, "nullable": true, "blind_index": null}}]}}"#
            )
        })
        .collect();
    let manifest = SchemaManifest::from_json(&format!(
        r#"{{"format": 1, "tables": [{}]}}"#,
        tables.join(",")
    ))
    .unwrap();
    let mut jobs = 0;
    for ((kind, name), t) in kinds.iter().zip(&manifest.tables) {
        let table = format!("plan_{name}");
        db.batch(&format!(
            "CREATE TABLE {table} (id {} PRIMARY KEY, v {})",
            id_type(backend, *kind),
            if backend == Backend::Postgres {
                "BYTEA"
            } else {
                "BLOB"
            }
        ))
        .unwrap();
        let mut inserted = 0u64;
        // (rows in the table, batch): empty, one row, an exact multiple, a remainder, a batch
        // of one, one chunk in all.
        for (rows, batch) in [
            (0u64, 7usize),
            (1, 7),
            (98, 7),
            (100, 7),
            (100, 1),
            (100, 100),
            (100, 1000),
        ] {
            while inserted < rows {
                let id = db.id_from_text(*kind, &format!("'{}'", id_literal(*kind, inserted)));
                db.batch(&format!("INSERT INTO {table} (id) VALUES ({id})"))
                    .unwrap();
                inserted += 1;
            }
            let ids: Vec<String> = db
                .load::<OneText>(
                    &format!(
                        // Qualified: a bare `id` would name the text output column.
                        "SELECT {} AS id FROM {table} ORDER BY {table}.id",
                        db.id_text(*kind, "id")
                    ),
                    &[],
                )
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect();
            assert_eq!(ids.len(), usize::try_from(rows).unwrap());
            let starts: Vec<&String> = ids.iter().step_by(batch).collect();
            let mut want: Vec<(Option<String>, Option<String>)> = Vec::new();
            for i in 0..starts.len().max(1) {
                let lo = (i > 0).then(|| starts[i].clone());
                let hi = starts.get(i + 1).map(|s| (*s).clone());
                want.push((lo, hi));
            }
            jobs += 1;
            let job = format!("plan-test-{jobs}");
            let (total, done) =
                engine::plan(&mut db, &job, &Mode::Rewrap, t, &t.columns[0], batch).unwrap();
            assert_eq!(
                (total, done),
                (u64::try_from(want.len()).unwrap(), 0),
                "{name} ids, {rows} rows, batch {batch}"
            );
            assert_eq!(
                chunks(&mut db, &job),
                want,
                "{name} ids, {rows} rows, batch {batch}: chunk boundaries"
            );
        }
    }
}

backend_tests! {
    bounds => [sqlite, postgres, mariadb],
}
