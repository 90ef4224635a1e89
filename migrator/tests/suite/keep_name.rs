//! Adopting a plaintext column so that the sealed column ends with the legacy column's name
//! (docs/adoption.md, "Keeping the column's name"), end to end on SQLite, PostgreSQL and
//! MariaDB: every build of the path is a `#[derive(Sealed)]` model read and written through
//! diesel, the database steps run the real `leakless-migrate` (`adopt`, `copy`, `verify`), and
//! at every step the two builds that run side by side during a rolling deploy read each
//! other's writes.
//!
//! The attacker here is the rolling deploy itself: a build that reads a column another build
//! no longer writes shows a stale value, and a build that selects a dropped column fails. The
//! test plays both (a step-6 build updating only the old column after the moving build
//! started; a row the copy has not reached) and asserts that no build ever reads a stale or
//! missing value, that `copy` refuses an envelope that does not open in its new place, and
//! that the envelopes bind the column name `email` wherever they are stored.

use diesel::prelude::*;
use leakless::manifest::RowIdKind;
use leakless::manifest::SchemaManifest;
use leakless::{Error, FieldContext, KeyScope, RowId, Sealed};
use leakless_migrator::db::{Bind, IdBytes};

#[allow(
    missing_docs,
    reason = "diesel's table! macro generates undocumented items"
)]
mod schema {
    /// A module `$step` holding the table `customers (id)` as that step's builds see it: `id`
    /// and the given columns.
    macro_rules! customers {
        ($(#[$doc:meta])* $step:ident { $($column:ident -> $type:ident $(<$inner:ident>)?),+ }) => {
            $(#[$doc])*
            pub(crate) mod $step {
                diesel::table! {
                    customers (id) {
                        id -> BigInt,
                        $($column -> $type $(<$inner>)?,)+
                    }
                }
            }
        };
    }

    customers!(
        /// Steps 1-5: the plaintext `email`, the sealed `email_sealed` (NULL until adopted).
        adopting { email -> Nullable<Text>, email_sealed -> Nullable<Binary> }
    );
    customers!(
        /// Steps 6-8: every row holds `email_sealed`.
        adopted { email_sealed -> Binary }
    );
    customers!(
        /// Steps 8-11: the binary `email` beside `email_sealed`.
        moving { email -> Nullable<Binary>, email_sealed -> Nullable<Binary> }
    );
    customers!(
        /// Steps 11-12: the sealed `email`, in every row.
        done { email -> Binary }
    );
}
use schema::{adopted, adopting, done, moving};

use crate::support::{Backend, Fixture, SCOPE, stderr, stdout};

/// Step 0: the application before leakless.
#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = adopting::customers)]
struct Legacy {
    id: i64,
    email: Option<String>,
}

/// Steps 2-5, adoption stage 1: the envelopes go to `email_sealed`, bound to `email`.
#[derive(Clone, PartialEq, Sealed)]
#[leakless(table = adopting::customers, row_id = id, schema_version = 1, scope = "patients")]
struct Stage1 {
    id: i64,
    #[leakless(seal(stored_in = email_sealed, adopt(from = email, stage = "read_plaintext")))]
    email: String,
}

/// Adoption stage 2.
#[derive(Clone, PartialEq, Sealed)]
#[leakless(table = adopting::customers, row_id = id, schema_version = 1, scope = "patients")]
struct Stage2 {
    id: i64,
    #[leakless(seal(stored_in = email_sealed, adopt(from = email, stage = "write_sealed_only")))]
    email: String,
}

/// Adoption stage 3.
#[derive(Clone, PartialEq, Sealed)]
#[leakless(table = adopting::customers, row_id = id, schema_version = 1, scope = "patients")]
struct Stage3 {
    id: i64,
    #[leakless(seal(stored_in = email_sealed, adopt(from = email, stage = "sealed_only")))]
    email: String,
}

/// Step 6: adopted, still stored in `email_sealed`; it never selects the plaintext `email`.
#[derive(Clone, PartialEq, Sealed)]
#[leakless(table = adopted::customers, row_id = id, schema_version = 1, scope = "patients")]
struct Stored {
    id: i64,
    #[leakless(seal(stored_in = email_sealed))]
    email: String,
}

/// Step 8: writes both columns, reads `email_sealed` first.
#[derive(Clone, PartialEq, Sealed)]
#[leakless(table = moving::customers, row_id = id, schema_version = 1, scope = "patients")]
struct ReadOld {
    id: i64,
    #[leakless(seal(moving(from = email_sealed, stage = "read_old")))]
    email: String,
}

/// Step 10: writes both columns, reads `email` first.
#[derive(Clone, PartialEq, Sealed)]
#[leakless(table = moving::customers, row_id = id, schema_version = 1, scope = "patients")]
struct ReadNew {
    id: i64,
    #[leakless(seal(moving(from = email_sealed, stage = "read_new")))]
    email: String,
}

/// Step 11: the final build; the sealed column is `email`.
#[derive(Clone, PartialEq, Sealed)]
#[leakless(table = done::customers, row_id = id, schema_version = 1, scope = "patients")]
struct Final {
    id: i64,
    #[leakless(seal)]
    email: String,
}

/// The `copy` of the envelopes into the column that takes the legacy column's name.
const COPY: [&str; 5] = ["copy", "--table", "customers", "--column", "email"];

/// The legacy value of row `id` (fake).
fn email(id: i64) -> String {
    format!("customer-{id}@example.test")
}

/// Writes row `$id` through build `$model` and records the value in `$expected`: an insert
/// of the row's legacy value (the row's `Insertable`), or an update to a changed value (its
/// `AsChangeset`).
macro_rules! writes {
    ($f:expr, $expected:expr, insert, $model:ident, $table:path, $id:expr) => {{
        let value = email($id);
        let row = $model {
            id: $id,
            email: value.clone(),
        }
        .seal_row(&$f.ring)
        .unwrap();
        on_conn!($f, |c| diesel::insert_into($table)
            .values(&row)
            .execute(c)
            .unwrap());
        $expected.insert($id, value);
    }};
    ($f:expr, $expected:expr, update, $model:ident, $table:path, $id:expr) => {{
        let value = format!("changed-{}@example.test", $id);
        let row = $model {
            id: $id,
            email: value.clone(),
        }
        .seal_row(&$f.ring)
        .unwrap();
        let n = on_conn!($f, |c| diesel::update($table.find($id))
            .set(&row)
            .execute(c)
            .unwrap());
        assert_eq!(n, 1);
        $expected.insert($id, value);
    }};
}

/// Reads row `id` through build `$model` (its stored row type from `$table`):
/// `Result<$model, Error>`.
macro_rules! read {
    ($f:expr, $model:ident, $table:path, $id:expr) => {{
        let row: <$model as Sealed>::Row = on_conn!($f, |c| $table
            .find($id)
            .select(<$model as Sealed>::Row::as_select())
            .first(c)
            .unwrap());
        $model::open_row(row, &$f.ring)
    }};
}

/// Asserts that each build `$model` (table `$table`) reads `$expected[id]` for every row.
macro_rules! reads_all {
    ($f:expr, $expected:expr, $(($model:ident, $table:path)),+) => {{
        $(
            for (id, value) in $expected.iter() {
                let got = read!($f, $model, $table, *id)
                    .unwrap_or_else(|e| panic!("{} reading row {id}: {e}", stringify!($model)));
                assert_eq!(&got.email, value, "{} reading row {id}", stringify!($model));
            }
        )+
    }};
}

/// The raw bytes of `column` in row `id`.
fn raw(f: &Fixture, column: &str, id: i64) -> Option<Vec<u8>> {
    let mut db = f.db();
    let sql = format!(
        "SELECT {} AS id, {column} AS val FROM customers WHERE id = {}",
        db.id_text(RowIdKind::Int, "id"),
        db.ph(1)
    );
    let rows: Vec<IdBytes> = db.load(&sql, &[Bind::Int(id)]).unwrap();
    assert_eq!(rows.len(), 1, "row {id}");
    rows.into_iter().next().and_then(|r| r.val)
}

/// Sets `email_sealed` of row `id` to `value`.
fn set_old(f: &Fixture, id: i64, value: Vec<u8>) {
    let mut db = f.db();
    let sql = format!(
        "UPDATE customers SET email_sealed = {} WHERE id = {}",
        db.ph(1),
        db.ph(2)
    );
    assert_eq!(
        db.exec(&sql, &[Bind::Bytes(Some(value)), Bind::Int(id)])
            .unwrap(),
        1
    );
}

/// Writes the manifest of `table` (a model's) where the CLI reads it.
fn use_manifest(f: &Fixture, table: leakless::manifest::SealedTable) {
    let json = SchemaManifest::from_tables([table]).to_json().unwrap();
    std::fs::write(&f.manifest, json).unwrap();
}

/// Runs the migrator and asserts exit code `code` and no plaintext in its output; returns
/// stdout and stderr.
fn run(f: &Fixture, args: &[&str], code: i32) -> String {
    let o = f.run(args);
    assert_eq!(
        o.status.code(),
        Some(code),
        "{args:?}:\n{}{}",
        stdout(&o),
        stderr(&o)
    );
    let text = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        !text.contains("@example.test"),
        "the CLI printed plaintext: {text}"
    );
    text
}

fn keep_name(backend: Backend) {
    let f = Fixture::new(backend);
    let (bin, text_null, text_not_null) = match backend {
        Backend::Postgres => (
            "BYTEA",
            "",
            "ALTER TABLE customers ALTER COLUMN email DROP NOT NULL",
        ),
        Backend::Mysql => ("BLOB", "", "ALTER TABLE customers MODIFY email TEXT NULL"),
        // SQLite cannot drop NOT NULL in place: the legacy column is created nullable.
        Backend::Sqlite => ("BLOB", " NULL", ""),
    };
    let not_null = if text_null.is_empty() {
        " NOT NULL"
    } else {
        text_null
    };
    let mut db = f.db();
    db.batch(&format!(
        "CREATE TABLE customers (id BIGINT NOT NULL PRIMARY KEY, email TEXT{not_null})"
    ))
    .unwrap();
    let mut expected = std::collections::BTreeMap::new();
    for id in 1..=4 {
        on_conn!(&f, |c| diesel::insert_into(adopting::customers::table)
            .values((
                adopting::customers::id.eq(id),
                adopting::customers::email.eq(email(id))
            ))
            .execute(c)
            .unwrap());
        expected.insert(id, email(id));
    }

    // Step 1: the sealed column beside the plaintext one, which becomes nullable.
    db.batch(&format!(
        "ALTER TABLE customers ADD COLUMN email_sealed {bin} NULL"
    ))
    .unwrap();
    if !text_not_null.is_empty() {
        db.batch(text_not_null).unwrap();
    }

    // Steps 2-5: the adoption stages, the legacy build beside stage 1.
    use adopting::customers::table as adopting_t;
    reads_all!(&f, expected, (Stage1, adopting_t));
    writes!(&f, expected, insert, Stage1, adopting_t, 5);
    let legacy: Legacy = on_conn!(&f, |c| adopting_t
        .find(5)
        .select(Legacy::as_select())
        .first(c)
        .unwrap());
    assert_eq!(legacy.email.as_deref(), Some(email(5).as_str()));
    assert!(
        raw(&f, "email_sealed", 5).is_some(),
        "stage 1 writes the envelope"
    );
    writes!(&f, expected, insert, Stage2, adopting_t, 6);
    assert_eq!(raw(&f, "email", 6), None, "stage 2 writes no plaintext");
    reads_all!(&f, expected, (Stage1, adopting_t), (Stage2, adopting_t));

    use_manifest(&f, Stage3::manifest());
    let out = run(
        &f,
        &["adopt", "--table", "customers", "--column", "email_sealed"],
        0,
    );
    assert!(out.contains("4 written"), "{out}");
    assert!(out.contains("0 mismatches"), "{out}");
    assert!(out.contains("DROP COLUMN"), "{out}");
    writes!(&f, expected, update, Stage3, adopting_t, 2);
    reads_all!(&f, expected, (Stage2, adopting_t), (Stage3, adopting_t));

    // Step 6: the build without adopt(...), beside stage 3.
    use adopted::customers::table as adopted_t;
    reads_all!(&f, expected, (Stored, adopted_t));
    writes!(&f, expected, insert, Stored, adopted_t, 7);
    reads_all!(&f, expected, (Stage3, adopting_t));

    // Step 7: the plaintext column goes; `email` comes back as a binary column.
    db.batch("ALTER TABLE customers DROP COLUMN email").unwrap();
    db.batch(&format!(
        "ALTER TABLE customers ADD COLUMN email {bin} NULL"
    ))
    .unwrap();
    reads_all!(&f, expected, (Stored, adopted_t));

    // Step 8: the first moving build beside the step-6 build.
    use moving::customers::table as moving_t;
    reads_all!(&f, expected, (ReadOld, moving_t));
    writes!(&f, expected, insert, ReadOld, moving_t, 8);
    assert_eq!(
        raw(&f, "email", 8),
        raw(&f, "email_sealed", 8),
        "one envelope, both columns"
    );
    reads_all!(&f, expected, (Stored, adopted_t));
    // The step-6 build updates only email_sealed: email goes stale, and nobody reads it yet.
    writes!(&f, expected, update, Stored, adopted_t, 8);
    assert_ne!(raw(&f, "email", 8), raw(&f, "email_sealed", 8));
    reads_all!(&f, expected, (ReadOld, moving_t));
    // A row neither column reached: a typed error naming both columns, never a default.
    db.batch("INSERT INTO customers (id) VALUES (99)").unwrap();
    match read!(&f, ReadOld, moving_t, 99) {
        Err(Error::NotBackfilled { location, problem }) => {
            assert_eq!(
                (location.table.as_str(), location.column.as_str()),
                ("customers", "email")
            );
            assert!(problem.contains("customers.email_sealed"), "{problem}");
        }
        other => panic!("expected NotBackfilled, got {:?}", other.map(|m| m.id)),
    }
    db.batch("DELETE FROM customers WHERE id = 99").unwrap();

    // Step 9: copy. First an envelope that does not open in its new place (row 1's, planted
    // in row 3's old column): copy refuses it and leaves row 3's new column alone.
    use_manifest(&f, ReadOld::manifest());
    // Both copies are sealed columns to the migrator while the move runs.
    let out = run(&f, &["status"], 0);
    assert!(out.contains("customers.email_sealed"), "{out}");
    let out = run(&f, &[&COPY[..], &["--dry-run"]].concat(), 0);
    // Rows 1-7 were never copied, row 8 is stale.
    assert!(out.contains("8 rows"), "{out}");
    let row3 = raw(&f, "email_sealed", 3).unwrap();
    set_old(&f, 3, raw(&f, "email_sealed", 1).unwrap());
    let o = f.run(&COPY);
    let text = format!("{}{}", stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("customers.email row 3"), "{text}");
    assert!(!text.contains("@example.test"), "{text}");
    assert_eq!(raw(&f, "email", 3), None, "a foreign envelope was copied");
    set_old(&f, 3, row3);
    let out = run(&f, &COPY, 0);
    assert!(out.contains("DROP COLUMN"), "{out}");
    for id in expected.keys() {
        let new = raw(&f, "email", *id).expect("copied");
        assert_eq!(
            Some(&new),
            raw(&f, "email_sealed", *id).as_ref(),
            "row {id}"
        );
        // Positive control for the binding: the envelope names `email`, wherever it sits.
        let ctx = FieldContext::new("customers", "email", RowId::Int(*id), 1);
        let scope = KeyScope::new(SCOPE).unwrap();
        assert!(f.ring.open_in_scope(&scope, &ctx, &new).is_ok(), "row {id}");
        let elsewhere = FieldContext::new("customers", "email_sealed", RowId::Int(*id), 1);
        assert!(
            f.ring.open_in_scope(&scope, &elsewhere, &new).is_err(),
            "row {id}"
        );
        assert!(
            !new.windows(9).any(|w| w == b"@example."),
            "plaintext in the envelope of row {id}"
        );
    }
    let out = run(&f, &[&COPY[..], &["--dry-run"]].concat(), 0);
    assert!(out.contains("0 rows"), "{out}");
    run(&f, &["verify"], 0);

    // Step 10: the second moving build beside the first.
    reads_all!(&f, expected, (ReadNew, moving_t));
    writes!(&f, expected, insert, ReadNew, moving_t, 9);
    writes!(&f, expected, update, ReadOld, moving_t, 4);
    reads_all!(&f, expected, (ReadOld, moving_t), (ReadNew, moving_t));

    // Step 11: the final build beside the second moving build.
    use done::customers::table as done_t;
    reads_all!(&f, expected, (Final, done_t));
    writes!(&f, expected, insert, Final, done_t, 10);
    writes!(&f, expected, update, Final, done_t, 1);
    assert_eq!(
        raw(&f, "email_sealed", 10),
        None,
        "the final build writes only email"
    );
    reads_all!(&f, expected, (ReadNew, moving_t));

    // Step 12: the old column goes; the final build reads every row, verify agrees.
    db.batch("ALTER TABLE customers DROP COLUMN email_sealed")
        .unwrap();
    reads_all!(&f, expected, (Final, done_t));
    use_manifest(&f, Final::manifest());
    let out = run(&f, &["verify"], 0);
    assert!(out.contains("customers.email"), "{out}");
}

/// `copy` refuses to finish while a build without `moving(...)` still writes only the old
/// column: a trigger plays that build, replacing row 2's old envelope (with another valid one)
/// right after `copy` wrote the new column. The refusal names the rows left; once the old
/// build is gone (the trigger dropped), a rerun finishes.
#[test]
fn copy_refuses_while_an_old_build_writes() {
    let f = Fixture::new(Backend::Sqlite);
    let db = &mut f.db();
    db.batch(
        "CREATE TABLE customers (id BIGINT NOT NULL PRIMARY KEY, email BLOB NULL, \
         email_sealed BLOB NULL); CREATE TABLE spare (id BIGINT PRIMARY KEY, env BLOB)",
    )
    .unwrap();
    use moving::customers::table as moving_t;
    let mut expected = std::collections::BTreeMap::new();
    for id in 1..=3 {
        writes!(&f, expected, insert, ReadOld, moving_t, id);
    }
    // The old build's next write of row 2, kept aside; then the new column emptied.
    let spare = ReadOld {
        id: 2,
        email: "changed-2@example.test".into(),
    }
    .seal_row(&f.ring)
    .unwrap()
    .email_sealed
    .unwrap();
    let sql = format!("INSERT INTO spare (id, env) VALUES (2, {})", db.ph(1));
    db.exec(&sql, &[Bind::Bytes(Some(spare))]).unwrap();
    db.batch(
        "UPDATE customers SET email = NULL; \
         CREATE TRIGGER old_build AFTER UPDATE OF email ON customers WHEN NEW.id = 2 BEGIN \
         UPDATE customers SET email_sealed = (SELECT env FROM spare WHERE id = 2) WHERE id = 2; \
         END",
    )
    .unwrap();
    use_manifest(&f, ReadOld::manifest());
    let out = run(&f, &COPY, 1);
    assert!(
        out.contains("1 rows of customers.email still differ from email_sealed"),
        "{out}"
    );
    assert!(out.contains("then rerun `copy`"), "{out}");
    assert_ne!(raw(&f, "email", 2), raw(&f, "email_sealed", 2));
    db.batch("DROP TRIGGER old_build").unwrap();
    let out = run(&f, &COPY, 0);
    assert!(out.contains("DROP COLUMN"), "{out}");
    assert_eq!(raw(&f, "email", 2), raw(&f, "email_sealed", 2));
    expected.insert(2, "changed-2@example.test".to_owned());
    reads_all!(&f, expected, (ReadNew, moving_t));
}

backend_tests! {
    keep_name => [sqlite, postgres, mariadb],
}

/// The manifest of a moving build lists both columns, the old one as moving to the new one,
/// both binding `email`; a step-6 build's lists `email_sealed` bound as `email`.
#[test]
fn the_manifest_records_where_envelopes_live_and_what_they_bind() {
    let stored = Stored::manifest();
    assert_eq!(stored.columns.len(), 1);
    assert_eq!(stored.columns[0].column, "email_sealed");
    assert_eq!(stored.columns[0].bound_name(), "email");
    let adopting = Stage1::manifest();
    let a = adopting.columns[0].adoption.as_ref().unwrap();
    assert_eq!(a.from_column, "email");
    assert_eq!(adopting.columns[0].column, "email_sealed");
    let moving = ReadOld::manifest();
    let names: Vec<_> = moving
        .columns
        .iter()
        .map(|c| (c.column.as_str(), c.bound_name(), c.moving_to.as_deref()))
        .collect();
    assert_eq!(
        names,
        [
            ("email", "email", None),
            ("email_sealed", "email", Some("email"))
        ]
    );
    SchemaManifest::from_tables([moving]).validate().unwrap();
    let done = Final::manifest();
    assert_eq!(done.columns[0].bound_as, None);
}
