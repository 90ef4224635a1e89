//! Adopting a plaintext column at run time with `#[leakless(seal(adopt(...)))]`, end to end on
//! SQLite, PostgreSQL and MariaDB through the same diesel code (one macro body, instantiated per
//! backend): a table whose legacy rows hold only plaintext, read and written by the same model
//! in each of the three stages.
//!
//! * stage `read_plaintext`: legacy rows open from the plaintext column; writes seal the value
//!   AND keep the plaintext copy (old application versions still read it);
//! * stage `write_sealed_only`: reads as stage 1; writes set the plaintext column to NULL;
//! * stage `sealed_only`: the plaintext column is ignored; a row not yet backfilled is a typed
//!   error (never a default), while an `Option` field reads `None`.
//!
//! Plus: a present envelope always wins and never falls back to plaintext (fail closed), the
//! generated row's `Debug` redacts the plaintext column, the manifest records the adoption,
//! and a backfill driven by the manifest alone (what `leakless-migrate adopt` does) produces
//! envelopes the stage-3 model opens.
//!
//! PostgreSQL and MariaDB come from the services of `leakless-testkit` (never skipped: a
//! missing server fails the test, naming it).
#![cfg(feature = "sqlite")]

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use leakless::manifest::{AdoptionColumn, AdoptionStage, SchemaManifest};
use leakless::{Error, FieldContext, FieldPolicy, KeyRing, KeyScope, RowId, Sealed};

mod schema {
    diesel::table! {
        people (id) {
            id -> Text,
            address -> Nullable<Binary>,
            address_plain -> Nullable<Text>,
            photo -> Nullable<Binary>,
            photo_plain -> Nullable<Binary>,
        }
    }
}
use schema::people;

use crate::support::local_ring;

/// Stage 1: plaintext reads allowed, writes go to both columns.
#[derive(Clone, PartialEq, Sealed)]
#[leakless(table = people, row_id = id, schema_version = 1, scope = "people")]
pub struct Stage1 {
    id: String,
    #[leakless(seal(adopt(from = address_plain, stage = "read_plaintext")))]
    address: String,
    #[leakless(seal(adopt(from = photo_plain, stage = "read_plaintext")))]
    photo: Option<Vec<u8>>,
}

/// Stage 2: plaintext reads allowed, writes clear the plaintext column.
#[derive(Clone, PartialEq, Sealed)]
#[leakless(table = people, row_id = id, schema_version = 1, scope = "people")]
pub struct Stage2 {
    id: String,
    #[leakless(seal(adopt(from = address_plain, stage = "write_sealed_only")))]
    address: String,
    #[leakless(seal(adopt(from = photo_plain, stage = "write_sealed_only")))]
    photo: Option<Vec<u8>>,
}

/// Stage 3: sealed only.
#[derive(Clone, PartialEq, Sealed)]
#[leakless(table = people, row_id = id, schema_version = 1, scope = "people")]
pub struct Stage3 {
    id: String,
    #[leakless(seal(adopt(from = address_plain, stage = "sealed_only")))]
    address: String,
    #[leakless(seal(adopt(from = photo_plain, stage = "sealed_only")))]
    photo: Option<Vec<u8>>,
}

const LEGACY_1: &str = "1 Legacy Road, Leeds";
const LEGACY_2: &str = "2 Old Street, York";
const LEGACY_3: &str = "3 Never Backfilled Lane";

const SQLITE_DDL: &str = "CREATE TABLE people (id TEXT PRIMARY KEY, address BLOB, \
     address_plain TEXT, photo BLOB, photo_plain BLOB)";
#[cfg(feature = "postgres")]
const PG_DDL: &str = "CREATE TABLE people (id TEXT PRIMARY KEY, address BYTEA, \
     address_plain TEXT, photo BYTEA, photo_plain BYTEA)";
#[cfg(feature = "mysql")]
const MYSQL_DDL: &str = "CREATE TABLE people (id VARCHAR(64) PRIMARY KEY, address BLOB, \
     address_plain TEXT, photo BLOB, photo_plain BLOB)";

/// An in-memory SQLite database with the `people` table (no guard needed).
fn sqlite_db() -> ((), SqliteConnection) {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    diesel::sql_query(SQLITE_DDL).execute(&mut conn).unwrap();
    ((), conn)
}

/// The server database `db` (its guard) and a connection of type `C` to it, with the
/// `people` table made by `ddl`.
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn server_db<C: Connection>(
    db: crate::support::services::TestDb,
    ddl: &str,
) -> (crate::support::services::TestDb, C) {
    let mut conn = C::establish(db.url()).unwrap();
    conn.batch_execute(ddl).unwrap();
    (db, conn)
}

/// A PostgreSQL database of its own with the `people` table.
#[cfg(feature = "postgres")]
fn postgres_db() -> (crate::support::services::TestDb, PgConnection) {
    server_db(crate::support::services::TestDb::postgres(), PG_DDL)
}

/// A MariaDB database of its own with the `people` table.
#[cfg(feature = "mysql")]
fn mariadb_db() -> (crate::support::services::TestDb, MysqlConnection) {
    server_db(crate::support::services::TestDb::mysql(), MYSQL_DDL)
}

/// The stage tests on one backend: `$setup` gives a guard (the throwaway database) and a
/// connection to an empty `people` table.
macro_rules! stages_suite {
    ($backend:ident, $conn:ty, $setup:path) => {
        mod $backend {
            use super::*;

            /// Puts `conn`'s database in the state before adoption: the sealed columns were just added
            /// (NULL), the legacy rows hold plaintext only.
            fn fill_legacy(conn: &mut $conn) {
                for (id, address, photo) in [
                    ("p1", LEGACY_1, Some(vec![0x0a_u8, 0x0b, 0x0c])),
                    ("p2", LEGACY_2, None),
                    ("p3", LEGACY_3, Some(vec![0xff_u8])),
                ] {
                    diesel::insert_into(people::table)
                        .values((
                            people::id.eq(id),
                            people::address_plain.eq(address),
                            people::photo_plain.eq(photo),
                        ))
                        .execute(conn)
                        .unwrap();
                }
            }

            type Raw = (
                Option<Vec<u8>>,
                Option<String>,
                Option<Vec<u8>>,
                Option<Vec<u8>>,
            );

            /// The stored columns of one row, as the database holds them.
            fn raw(conn: &mut $conn, id: &str) -> Raw {
                people::table
                    .find(id)
                    .select((
                        people::address,
                        people::address_plain,
                        people::photo,
                        people::photo_plain,
                    ))
                    .first(conn)
                    .unwrap()
            }

            fn contains(hay: &[u8], needle: &[u8]) -> bool {
                hay.windows(needle.len()).any(|w| w == needle)
            }

            fn load1(conn: &mut $conn, ring: &KeyRing, id: &str) -> Stage1 {
                load_model!(conn, ring, people::table, id, Stage1Row, Stage1).unwrap()
            }

            fn load2(conn: &mut $conn, ring: &KeyRing, id: &str) -> Stage2 {
                load_model!(conn, ring, people::table, id, Stage2Row, Stage2).unwrap()
            }

            fn load3(conn: &mut $conn, ring: &KeyRing, id: &str) -> Result<Stage3, Error> {
                load_model!(conn, ring, people::table, id, Stage3Row, Stage3)
            }

            #[test]
            fn the_three_stages_end_to_end() {
                let ring = local_ring(&["people"]);
                let (_db, mut conn) = $setup();
                fill_legacy(&mut conn);

                // Positive control: the legacy rows really hold plaintext, and no envelope yet.
                let (sealed, plain, photo, photo_plain) = raw(&mut conn, "p1");
                assert_eq!((sealed, plain.as_deref()), (None, Some(LEGACY_1)));
                assert_eq!((photo, photo_plain), (None, Some(vec![0x0a, 0x0b, 0x0c])));

                // Stage 1, read: legacy rows open from the plaintext columns.
                let p1 = load1(&mut conn, &ring, "p1");
                assert_eq!(p1.address, LEGACY_1);
                assert_eq!(p1.photo, Some(vec![0x0a, 0x0b, 0x0c]));
                assert_eq!(load1(&mut conn, &ring, "p2").photo, None);
                // Debug of the model and of the generated row shows no plaintext.
                let row = people::table
                    .find("p1")
                    .select(Stage1Row::as_select())
                    .first(&mut conn)
                    .unwrap();
                let row_debug = format!("{row:?}");
                assert!(row_debug.contains("address_plain"), "{row_debug}");
                assert!(!row_debug.contains("Legacy"), "{row_debug}");
                assert!(!format!("{p1:?}").contains("Legacy"));

                // Stage 1, write: the envelope is written and the plaintext copy kept for old versions.
                let mut p1 = p1;
                p1.address = "10 New Road, Leeds".into();
                save_model!(&mut conn, &ring, people::table, "p1", p1);
                let (sealed, plain, photo, photo_plain) = raw(&mut conn, "p1");
                let sealed = sealed.expect("stage 1 writes the envelope");
                assert!(!contains(&sealed, b"New Road"));
                assert_eq!(plain.as_deref(), Some("10 New Road, Leeds"));
                assert!(!contains(
                    &photo.expect("photo sealed"),
                    &[0x0a, 0x0b, 0x0c]
                ));
                assert_eq!(photo_plain, Some(vec![0x0a, 0x0b, 0x0c]));
                assert_eq!(load1(&mut conn, &ring, "p1"), p1);
                // A new row in stage 1 also fills both columns.
                let p4 = Stage1 {
                    id: "p4".into(),
                    address: "4 Fresh Street".into(),
                    photo: None,
                };
                diesel::insert_into(people::table)
                    .values(&p4.seal_row(&ring).unwrap())
                    .execute(&mut conn)
                    .unwrap();
                let (sealed, plain, photo, photo_plain) = raw(&mut conn, "p4");
                assert!(sealed.is_some());
                assert_eq!(plain.as_deref(), Some("4 Fresh Street"));
                assert_eq!((photo, photo_plain), (None, None));

                // Stage 2, read: as stage 1 (legacy p2 from plaintext, p1 from its envelope).
                assert_eq!(load2(&mut conn, &ring, "p2").address, LEGACY_2);
                assert_eq!(load2(&mut conn, &ring, "p1").address, "10 New Road, Leeds");
                // Stage 2, write: the plaintext columns become NULL.
                for id in ["p1", "p2"] {
                    let p = load2(&mut conn, &ring, id);
                    save_model!(&mut conn, &ring, people::table, id, p);
                    let (sealed, plain, _, photo_plain) = raw(&mut conn, id);
                    assert!(sealed.is_some(), "{id}");
                    assert_eq!((plain, photo_plain), (None, None), "{id}");
                    assert_eq!(load2(&mut conn, &ring, id), p);
                }

                // Stage 3, read: backfilled rows open from their envelopes...
                let p1 = load3(&mut conn, &ring, "p1").unwrap();
                assert_eq!(p1.address, "10 New Road, Leeds");
                assert_eq!(p1.photo, Some(vec![0x0a, 0x0b, 0x0c]));
                assert_eq!(load3(&mut conn, &ring, "p2").unwrap().address, LEGACY_2);
                // ...and the plaintext column is ignored even when something still sits in it.
                diesel::update(people::table.find("p1"))
                    .set(people::address_plain.eq("planted plaintext"))
                    .execute(&mut conn)
                    .unwrap();
                assert_eq!(
                    load3(&mut conn, &ring, "p1").unwrap().address,
                    "10 New Road, Leeds"
                );
                // A row not yet backfilled is a typed error naming the place, without its plaintext.
                let err = load3(&mut conn, &ring, "p3").unwrap_err();
                let msg = err.to_string();
                match err {
                    Error::NotBackfilled { location, problem } => {
                        assert_eq!(
                            (location.table.as_str(), location.column.as_str()),
                            ("people", "address")
                        );
                        assert_eq!(location.row, "text:p3");
                        assert!(problem.contains("leakless-migrate adopt"), "{problem}");
                    }
                    other => panic!("expected Error::NotBackfilled, got {other:?}"),
                }
                assert!(!msg.contains("Never Backfilled"), "{msg}");
                // Stage 3, write: envelopes only.
                let mut p1 = p1;
                p1.address = "11 Final Road".into();
                save_model!(&mut conn, &ring, people::table, "p1", p1);
                let (sealed, plain, _, photo_plain) = raw(&mut conn, "p1");
                assert!(sealed.is_some());
                assert_eq!((plain, photo_plain), (None, None));
                assert_eq!(load3(&mut conn, &ring, "p1").unwrap(), p1);
            }

            /// An `Option` field with NULL in both columns reads `None` in every stage; in stage 3 a
            /// NULL envelope is `None` too (the field may be NULL), never the plaintext.
            #[test]
            fn option_fields_in_stage_three_ignore_plaintext() {
                let ring = local_ring(&["people"]);
                let (_db, mut conn) = $setup();
                fill_legacy(&mut conn);
                // p1's address is backfilled through stage 2; its photo_plain is then planted again.
                let p = load2(&mut conn, &ring, "p1");
                save_model!(&mut conn, &ring, people::table, "p1", p);
                diesel::update(people::table.find("p1"))
                    .set((
                        people::photo.eq(None::<Vec<u8>>),
                        people::photo_plain.eq(Some(vec![7_u8])),
                    ))
                    .execute(&mut conn)
                    .unwrap();
                assert_eq!(load2(&mut conn, &ring, "p1").photo, Some(vec![7]));
                assert_eq!(load3(&mut conn, &ring, "p1").unwrap().photo, None);
            }

            /// A present envelope never falls back to the plaintext column: a broken envelope is an
            /// error even in stage 1 with a plaintext value beside it (fail closed).
            #[test]
            fn a_bad_envelope_does_not_fall_back_to_plaintext() {
                let ring = local_ring(&["people"]);
                let (_db, mut conn) = $setup();
                fill_legacy(&mut conn);
                // Positive control: p1 opens from its plaintext in stage 1.
                assert_eq!(load1(&mut conn, &ring, "p1").address, LEGACY_1);
                // The envelope of p2 moved onto p1: it is bound to p2's row id.
                let p2 = load1(&mut conn, &ring, "p2");
                let sealed_p2 = p2.seal_row(&ring).unwrap().address;
                diesel::update(people::table.find("p1"))
                    .set(people::address.eq(sealed_p2))
                    .execute(&mut conn)
                    .unwrap();
                let err = load_model!(&mut conn, &ring, people::table, "p1", Stage1Row, Stage1)
                    .unwrap_err();
                assert!(!err.to_string().contains("Legacy"), "{err}");
            }

            /// The backfill `leakless-migrate adopt` does, driven only by the manifest (table, column, row
            /// id, schema version, scope, AEAD, padding), seals rows that the derived model then
            /// opens in stage 3: the derive and the migrator agree on the envelope's binding.
            #[test]
            fn a_manifest_driven_backfill_opens_in_stage_three() {
                let ring = local_ring(&["people"]);
                let (_db, mut conn) = $setup();
                fill_legacy(&mut conn);
                let m = Stage3::manifest();
                let leakless::manifest::ScopeSource::Static { scope } = &m.scope else {
                    panic!("static scope expected")
                };
                let scope = KeyScope::new(scope).unwrap();
                let c = &m.columns[0];
                let adoption = c.adoption.as_ref().unwrap();
                assert_eq!(adoption.from_column, "address_plain");
                // Positive control: p3 is not backfilled, so stage 3 refuses it.
                assert!(load3(&mut conn, &ring, "p3").is_err());
                // Backfill the address of every row whose envelope is NULL, as the migrator does.
                let rows: Vec<(String, Option<String>)> = people::table
                    .filter(people::address.is_null())
                    .select((people::id, people::address_plain))
                    .load(&mut conn)
                    .unwrap();
                assert_eq!(rows.len(), 3);
                for (id, plain) in rows {
                    let ctx =
                        FieldContext::new(&m.table, &c.column, RowId::Text(&id), m.schema_version);
                    let policy = FieldPolicy {
                        algorithm: c.algorithm,
                        padding: c.padding,
                    };
                    let sealed = ring
                        .seal(&scope, &ctx, plain.unwrap().as_bytes(), &policy)
                        .unwrap();
                    diesel::update(people::table.find(&id))
                        .set(people::address.eq(sealed))
                        .execute(&mut conn)
                        .unwrap();
                }
                assert_eq!(load3(&mut conn, &ring, "p1").unwrap().address, LEGACY_1);
                assert_eq!(load3(&mut conn, &ring, "p3").unwrap().address, LEGACY_3);
                // photo was not backfilled: an Option field reads None in stage 3.
                assert_eq!(load3(&mut conn, &ring, "p3").unwrap().photo, None);
            }
        }
    };
}

stages_suite!(sqlite, SqliteConnection, sqlite_db);
#[cfg(feature = "postgres")]
stages_suite!(postgres, PgConnection, postgres_db);
#[cfg(feature = "mysql")]
stages_suite!(mariadb, MysqlConnection, mariadb_db);

/// The manifest records the adoption; manifests without the field still read.
#[test]
fn the_manifest_records_source_column_and_stage() {
    let m = Stage2::manifest();
    assert_eq!(
        m.columns[0].adoption,
        Some(AdoptionColumn {
            from_column: "address_plain".into(),
            stage: AdoptionStage::WriteSealedOnly,
            pair: None,
        })
    );
    assert_eq!(
        Stage3::manifest().columns[1]
            .adoption
            .as_ref()
            .unwrap()
            .stage,
        AdoptionStage::SealedOnly
    );
    let manifest = SchemaManifest::from_tables([m]);
    let json = manifest.to_json().unwrap();
    assert!(json.contains("\"from_column\""), "{json}");
    assert!(json.contains("\"stage\": \"write_sealed_only\""), "{json}");
    assert_eq!(SchemaManifest::from_json(&json).unwrap(), manifest);
    // The same JSON without the adoption field (as written before it existed) reads as None.
    let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
    for c in old["tables"][0]["columns"].as_array_mut().unwrap() {
        c.as_object_mut().unwrap().remove("adoption");
    }
    let read = SchemaManifest::from_json(&old.to_string()).unwrap();
    assert!(read.tables[0].columns.iter().all(|c| c.adoption.is_none()));
}
