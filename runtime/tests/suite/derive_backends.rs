//! The `#[derive(Sealed)]` behaviour suite, run on SQLite, PostgreSQL and MariaDB through the
//! same diesel code (one macro body, instantiated per backend):
//!
//! * a round trip of every field type (`String`, `Vec<u8>`, `Json<T>` of a struct and of a
//!   point, `Option<String>`), with unicode, empty strings and empty bytes, and `None` as SQL
//!   `NULL`;
//! * a 1 MiB transcript;
//! * a bulk insert of 10,000 rows (1,000 rows per statement, one KEK fetch per scope) and a
//!   load of all of them;
//! * updates through a changeset (a sealed value changed, an `Option` set to `NULL` and back);
//! * blind-index look-ups, also after the index key was rotated;
//! * a ciphertext copied to another row or another column failing to open, with an error that
//!   names the place and shows no plaintext;
//! * rows read after a KEK rotation: old rows open in grace, new rows seal under the new
//!   version, re-wrapped rows open after the old version is retired;
//! * concurrent writers: four threads, each with its own connection and a shared key ring;
//! * `debug_query` of the sealed insert showing no plaintext (with a positive control).
//!
//! Needs `cargo test -p leakless --all-features`; PostgreSQL and MariaDB come from the services
//! of `leakless-testkit` (never skipped: a missing server fails the test, naming it).
#![cfg(feature = "sql-store")]

use std::time::Duration;

use diesel::prelude::*;
use leakless::{AuditInfo, Error, Json, KeyRing, KeyScope, Sealed};
use serde::{Deserialize, Serialize};

mod schema {
    diesel::table! {
        patients (id) {
            id -> Text,
            clinic -> Text,
            name -> Binary,
            address -> Binary,
            email -> Binary,
            email_bidx -> Binary,
            gps -> Binary,
            photo -> Binary,
            transcript -> Nullable<Binary>,
        }
    }
}
use schema::patients;

use crate::support::local_ring;

/// A postal address, sealed as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PostalAddress {
    street: String,
    city: String,
    postcode: String,
}

/// A point on the map, sealed as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GeoPoint {
    lat: f64,
    lon: f64,
}

/// A patient with one sealed field of every supported kind.
#[derive(Clone, PartialEq, Sealed)]
#[leakless(table = patients, row_id = id, schema_version = 1, scope = "patients")]
pub struct Patient {
    id: String,
    clinic: String,
    #[leakless(seal)]
    name: String,
    #[leakless(seal(aead = "aes256gcm"))]
    address: Json<PostalAddress>,
    #[leakless(seal(blind_index(column = email_bidx, scope = "bidx", normalize = "trim_lowercase")))]
    email: String,
    #[leakless(seal)]
    gps: Json<GeoPoint>,
    #[leakless(seal(aead = "aes256gcm"))]
    photo: Vec<u8>,
    #[leakless(seal)]
    transcript: Option<String>,
}

#[cfg(feature = "sqlite")]
const SQLITE_DDL: &str = "CREATE TABLE patients (id TEXT PRIMARY KEY, clinic TEXT NOT NULL,
    name BLOB NOT NULL, address BLOB NOT NULL, email BLOB NOT NULL, email_bidx BLOB NOT NULL,
    gps BLOB NOT NULL, photo BLOB NOT NULL, transcript BLOB)";
#[cfg(feature = "postgres")]
const PG_DDL: &str = "CREATE TABLE patients (id TEXT PRIMARY KEY, clinic TEXT NOT NULL,
    name BYTEA NOT NULL, address BYTEA NOT NULL, email BYTEA NOT NULL, email_bidx BYTEA NOT NULL,
    gps BYTEA NOT NULL, photo BYTEA NOT NULL, transcript BYTEA)";
#[cfg(feature = "mysql")]
const MYSQL_DDL: &str = "CREATE TABLE patients (id VARCHAR(64) PRIMARY KEY,
    clinic VARCHAR(64) NOT NULL, name BLOB NOT NULL, address BLOB NOT NULL, email BLOB NOT NULL,
    email_bidx VARBINARY(64) NOT NULL, gps BLOB NOT NULL, photo BLOB NOT NULL,
    transcript LONGBLOB, INDEX (email_bidx))";

fn patient(i: u32) -> Patient {
    Patient {
        id: format!("p-{i:05}"),
        clinic: "north".into(),
        name: format!("Patient Number {i}"),
        address: Json(PostalAddress {
            street: format!("{i} Canary Wharf Lane"),
            city: "London".into(),
            postcode: "E14 5AB".into(),
        }),
        email: format!("Person{i}@Example.org"),
        gps: Json(GeoPoint {
            lat: 51.5 + f64::from(i) / 100_000.0,
            lon: -0.0235,
        }),
        photo: i.to_be_bytes().repeat(4),
        transcript: i
            .is_multiple_of(2)
            .then(|| format!("visit {i}: chest pain since Tuesday")),
    }
}

/// Unicode in every sealed text, in JSON and in the row id.
fn unicode_patient() -> Patient {
    Patient {
        id: "p-ü-東京-🚑".into(),
        clinic: "süd".into(),
        name: "Zoë Ångström-Ñúñez 王秀英".into(),
        address: Json(PostalAddress {
            street: "Straße des 17. Juni 135, Wohnung «3»".into(),
            city: "Москва / 東京 / القاهرة".into(),
            postcode: "𝟙𝟘𝟙𝟙𝟝".into(),
        }),
        email: "ZOË@Exämple.ORG".into(),
        gps: Json(GeoPoint {
            lat: -33.8688,
            lon: 151.2093,
        }),
        photo: vec![0, 0xff, 0xfe, 0x80, 0],
        transcript: Some("Patientin klagt über Übelkeit 🤢; 医生建议休息。\n\t\u{200b}end".into()),
    }
}

/// Empty strings and empty bytes are values, not NULL.
fn empty_patient() -> Patient {
    Patient {
        id: "p-empty".into(),
        clinic: String::new(),
        name: String::new(),
        address: Json(PostalAddress {
            street: String::new(),
            city: String::new(),
            postcode: String::new(),
        }),
        email: String::new(),
        gps: Json(GeoPoint { lat: 0.0, lon: 0.0 }),
        photo: Vec::new(),
        transcript: Some(String::new()),
    }
}

/// About 1 MiB of text, not repetitive enough to compress to nothing.
fn one_mib_transcript() -> String {
    let mut s = String::with_capacity(1 << 20);
    let mut i = 0u64;
    while s.len() < (1 << 20) - 64 {
        s.push_str(&format!(
            "line {i}: patient reports pain level {} ",
            i * 7919 % 11
        ));
        i += 1;
    }
    while s.len() < 1 << 20 {
        s.push('.');
    }
    s
}

/// Asserts that neither the `Display` nor the `Debug` of `err` holds any of `needles`.
fn assert_no_plaintext(err: &Error, needles: &[&str]) {
    let shown = format!("{err} {err:?}");
    for n in needles {
        assert!(!shown.contains(n), "error shows {n:?}: {shown}");
    }
}

/// The suite, one module per backend: `$conn` is the connection type, `$new` makes a fresh
/// database with the `patients` table, a `$db` whose `conn()` opens a connection.
macro_rules! behaviour_suite {
    ($backend:ident, $conn:ty, $db:ty, $new:expr) => {
        mod $backend {
            use super::*;

            fn db() -> $db {
                $new
            }

            /// A fresh database (its guard), a connection to it, and a key ring with the
            /// `patients` and `bidx` scopes.
            fn setup() -> ($db, $conn, KeyRing) {
                let db = db();
                let conn = db.conn();
                (db, conn, local_ring(&["patients", "bidx"]))
            }

            fn insert_one(conn: &mut $conn, ring: &KeyRing, p: &Patient) {
                diesel::insert_into(patients::table)
                    .values(p.seal_row(ring).unwrap())
                    .execute(conn)
                    .unwrap();
            }

            fn load_one(conn: &mut $conn, ring: &KeyRing, id: &str) -> Result<Patient, Error> {
                load_model!(conn, ring, patients::table, id, PatientRow, Patient)
            }

            /// The `transcript` column of row `id` as stored (an envelope, or NULL).
            fn stored_transcript(conn: &mut $conn, id: &str) -> Option<Vec<u8>> {
                patients::table
                    .find(id)
                    .select(patients::transcript)
                    .first(conn)
                    .unwrap()
            }

            fn count(conn: &mut $conn) -> i64 {
                patients::table.count().get_result(conn).unwrap()
            }

            #[test]
            fn round_trip_of_every_field_type_with_unicode_empty_values_and_nulls() {
                let (_db, mut conn, ring) = setup();
                let mut no_transcript = patient(3);
                no_transcript.transcript = None;
                let people = [
                    patient(2),
                    unicode_patient(),
                    empty_patient(),
                    no_transcript,
                ];
                for p in &people {
                    insert_one(&mut conn, &ring, p);
                }
                for p in &people {
                    assert!(load_one(&mut conn, &ring, &p.id).unwrap() == *p, "{}", p.id);
                }

                // NULL stays NULL; an empty string is a sealed value, not NULL.
                let raw = stored_transcript(&mut conn, "p-00003");
                assert!(raw.is_none(), "None is stored as NULL");
                let raw = stored_transcript(&mut conn, "p-empty");
                assert!(leakless::envelope::looks_like_envelope(&raw.unwrap()));

                // The stored row holds envelopes, none of the plaintext (positive control: the
                // same search finds the one unsealed column).
                let rows: Vec<PatientRow> = patients::table
                    .select(PatientRow::as_select())
                    .load(&mut conn)
                    .unwrap();
                let raw = format!("{rows:?}");
                assert!(raw.contains("süd"), "control: the clear column is visible");
                for n in [
                    "Ångström",
                    "Straße",
                    "Canary",
                    "Person2",
                    "chest",
                    "Übelkeit",
                ] {
                    assert!(!raw.contains(n), "stored rows show {n}");
                }
            }

            #[test]
            fn a_one_mib_transcript_round_trips() {
                let (_db, mut conn, ring) = setup();
                let mut p = patient(1);
                p.transcript = Some(one_mib_transcript());
                insert_one(&mut conn, &ring, &p);
                let raw = stored_transcript(&mut conn, &p.id);
                assert!(raw.unwrap().len() >= 1 << 20);
                assert!(load_one(&mut conn, &ring, &p.id).unwrap() == p);
            }

            #[test]
            fn bulk_insert_of_10000_rows_fetches_each_kek_once() {
                let (_db, mut conn, ring) = setup();
                let people: Vec<Patient> = (1..=10_000).map(patient).collect();
                let rows = Patient::seal_rows(&people, &ring).unwrap();
                assert_eq!(
                    ring.kms_calls().unwraps,
                    2,
                    "one KEK fetch per scope for all rows"
                );
                // 1,000 rows per statement: under every backend's bind-parameter limit.
                conn.transaction::<_, diesel::result::Error, _>(|conn| {
                    for chunk in rows.chunks(1_000) {
                        diesel::insert_into(patients::table)
                            .values(chunk)
                            .execute(conn)?;
                    }
                    Ok(())
                })
                .unwrap();
                assert_eq!(count(&mut conn), 10_000);
                let loaded = Patient::open_rows(
                    patients::table
                        .order(patients::id)
                        .select(PatientRow::as_select())
                        .load(&mut conn)
                        .unwrap(),
                    &ring,
                )
                .unwrap();
                assert!(loaded == people, "every row opens to what was inserted");
                assert_eq!(ring.kms_calls().unwraps, 2, "opening fetched no KEK again");
            }

            #[test]
            fn changeset_updates_change_sealed_values_and_nulls() {
                let (_db, mut conn, ring) = setup();
                for i in 1..=3 {
                    insert_one(&mut conn, &ring, &patient(i));
                }
                let update = |conn: &mut $conn, p: &Patient| {
                    let n = save_model!(conn, &ring, patients::table, &p.id, p);
                    assert_eq!(n, 1);
                };
                let mut changed = patient(2);
                changed.address.0.street = "1 New Road".into();
                changed.address.0.city = "Leeds".into();
                changed.transcript = None;
                changed.photo = vec![9; 300];
                update(&mut conn, &changed);
                assert!(load_one(&mut conn, &ring, "p-00002").unwrap() == changed);
                let raw = stored_transcript(&mut conn, "p-00002");
                assert!(raw.is_none(), "the changeset wrote NULL for None");

                // NULL back to a value, and a new e-mail that the blind index follows.
                changed.transcript = Some("follow-up: no more pain".into());
                changed.email = "moved@example.net".into();
                update(&mut conn, &changed);
                assert!(load_one(&mut conn, &ring, "p-00002").unwrap() == changed);
                let old = Patient::email_lookup(&ring, &"person2@example.org".to_owned()).unwrap();
                let new = Patient::email_lookup(&ring, &"Moved@Example.net".to_owned()).unwrap();
                let hits = |conn: &mut $conn, tokens: Vec<Vec<u8>>| -> Vec<String> {
                    patients::table
                        .filter(patients::email_bidx.eq_any(tokens))
                        .select(patients::id)
                        .load(conn)
                        .unwrap()
                };
                assert!(hits(&mut conn, old).is_empty());
                assert_eq!(hits(&mut conn, new), vec!["p-00002".to_owned()]);
                // The neighbours are untouched.
                assert!(load_one(&mut conn, &ring, "p-00001").unwrap() == patient(1));
                assert!(load_one(&mut conn, &ring, "p-00003").unwrap() == patient(3));
            }

            #[test]
            fn blind_index_look_ups_also_after_the_index_key_rotates() {
                let (_db, mut conn, ring) = setup();
                let people: Vec<Patient> = (1..=50).map(patient).collect();
                diesel::insert_into(patients::table)
                    .values(Patient::seal_rows(&people, &ring).unwrap())
                    .execute(&mut conn)
                    .unwrap();
                insert_one(&mut conn, &ring, &unicode_patient());
                let find = |conn: &mut $conn, email: &str| -> Vec<Patient> {
                    let tokens = Patient::email_lookup(&ring, &email.to_owned()).unwrap();
                    Patient::open_rows(
                        patients::table
                            .filter(patients::email_bidx.eq_any(tokens))
                            .select(PatientRow::as_select())
                            .load(conn)
                            .unwrap(),
                        &ring,
                    )
                    .unwrap()
                };
                assert!(find(&mut conn, "  PERSON17@example.ORG") == vec![patient(17)]);
                assert!(find(&mut conn, "zoë@exämple.org") == vec![unicode_patient()]);
                assert!(find(&mut conn, "person17@example.org.evil").is_empty());
                assert!(find(&mut conn, "").is_empty());

                // Rotate the index key: old rows are still found (their v1 token is among the
                // candidates), and a row written after the rotation is found too.
                let who = AuditInfo::new("test", "rotate index key");
                ring.rotate(
                    &KeyScope::new("bidx").unwrap(),
                    Duration::from_secs(3600),
                    &who,
                )
                .unwrap();
                insert_one(&mut conn, &ring, &patient(99));
                assert!(find(&mut conn, "person17@example.org") == vec![patient(17)]);
                assert!(find(&mut conn, "person99@example.org") == vec![patient(99)]);
            }

            #[test]
            fn a_ciphertext_copied_to_another_row_or_column_does_not_open() {
                let (_db, mut conn, ring) = setup();
                insert_one(&mut conn, &ring, &patient(1));
                insert_one(&mut conn, &ring, &patient(2));
                let secrets = ["Canary", "Person1", "Person2", "chest", "51.5"];

                // Loading `id` fails to decrypt, naming `place`, and shows no secret.
                let refused = |conn: &mut $conn, id: &str, place: &str| {
                    let err = load_one(conn, &ring, id).unwrap_err();
                    assert!(matches!(err, Error::DecryptionFailed { .. }), "{err}");
                    assert!(err.to_string().contains(place), "{err}");
                    assert_no_plaintext(&err, &secrets);
                };

                let (address, name): (Vec<u8>, Vec<u8>) = patients::table
                    .find("p-00001")
                    .select((patients::address, patients::name))
                    .first(&mut conn)
                    .unwrap();
                // Row 1's address envelope pasted into row 2.
                diesel::update(patients::table.find("p-00002"))
                    .set(patients::address.eq(&address))
                    .execute(&mut conn)
                    .unwrap();
                refused(&mut conn, "p-00002", "patients.address row text:p-00002");
                // Row 1's name envelope pasted into its own transcript column (same type).
                diesel::update(patients::table.find("p-00001"))
                    .set(patients::transcript.eq(Some(&name)))
                    .execute(&mut conn)
                    .unwrap();
                refused(&mut conn, "p-00001", "patients.transcript row text:p-00001");

                // A whole row copied under a new id.
                let mut row: PatientRow = patients::table
                    .find("p-00001")
                    .select(PatientRow::as_select())
                    .first(&mut conn)
                    .unwrap();
                row.id = "p-copy".into();
                diesel::insert_into(patients::table)
                    .values(&row)
                    .execute(&mut conn)
                    .unwrap();
                refused(&mut conn, "p-copy", "row text:p-copy");
            }

            #[test]
            fn rows_read_after_a_kek_rotation() {
                let (_db, mut conn, ring) = setup();
                let scope = KeyScope::new("patients").unwrap();
                let who = AuditInfo::new("test", "rotation");
                let old: Vec<Patient> = (1..=20).map(patient).collect();
                diesel::insert_into(patients::table)
                    .values(Patient::seal_rows(&old, &ring).unwrap())
                    .execute(&mut conn)
                    .unwrap();
                let v1 = ring.versions(&scope).unwrap()[0].version;
                let v2 = ring
                    .rotate(&scope, Duration::from_secs(3600), &who)
                    .unwrap();
                assert_ne!(v1, v2);

                // Old rows open while v1 is in grace; new rows seal under v2.
                insert_one(&mut conn, &ring, &patient(21));
                let kek_of = |conn: &mut $conn, id: &str| {
                    let e: Vec<u8> = patients::table
                        .find(id)
                        .select(patients::address)
                        .first(conn)
                        .unwrap();
                    leakless::envelope::inspect(&e).unwrap().kek_version
                };
                assert_eq!(kek_of(&mut conn, "p-00001"), v1);
                assert_eq!(kek_of(&mut conn, "p-00021"), v2);
                let all = |conn: &mut $conn| {
                    patients::table
                        .order(patients::id)
                        .select(PatientRow::as_select())
                        .load(conn)
                        .unwrap()
                };
                let mut expected = old.clone();
                expected.push(patient(21));
                assert!(Patient::open_rows(all(&mut conn), &ring).unwrap() == expected);

                // Re-wrap the old rows onto v2 (DEKs only), then retire v1: every row opens.
                let rows = all(&mut conn);
                let kept = rows[0].address.clone();
                conn.transaction::<_, diesel::result::Error, _>(|conn| {
                    for mut row in rows {
                        let ctx = |column| {
                            leakless::FieldContext::new(
                                "patients",
                                column,
                                leakless::RowId::Text(&row.id),
                                1,
                            )
                        };
                        let rewrap = |column, env: &[u8]| {
                            ring.rewrap(&ctx(column), env)
                                .unwrap()
                                .unwrap_or_else(|| env.to_vec())
                        };
                        let new = PatientRow {
                            name: rewrap("name", &row.name),
                            address: rewrap("address", &row.address),
                            email: rewrap("email", &row.email),
                            gps: rewrap("gps", &row.gps),
                            photo: rewrap("photo", &row.photo),
                            transcript: row.transcript.as_deref().map(|t| rewrap("transcript", t)),
                            ..row.clone()
                        };
                        row = new;
                        diesel::update(patients::table.find(&row.id))
                            .set(&row)
                            .execute(conn)?;
                    }
                    Ok(())
                })
                .unwrap();
                // The test runs in one process with nothing else caching v1: no cache window
                // to wait for.
                ring.retire_ignoring_cache_window(&scope, v1, &who).unwrap();
                ring.cache().clear();
                assert_eq!(kek_of(&mut conn, "p-00001"), v2);
                assert!(Patient::open_rows(all(&mut conn), &ring).unwrap() == expected);

                // An envelope kept from before the re-wrap is on v1, which opens nothing now:
                // the error names the key, not the data.
                let ctx = leakless::FieldContext::new(
                    "patients",
                    "address",
                    leakless::RowId::Text("p-00001"),
                    1,
                );
                let err = ring.open(&ctx, &kept).unwrap_err();
                assert!(matches!(err, Error::KeyWrongState { .. }), "{err}");
                assert_no_plaintext(&err, &["Canary", "London"]);
            }

            #[test]
            fn concurrent_writers_with_their_own_connections() {
                const WRITERS: u32 = 4;
                const ROWS: u32 = 25;
                let db = db();
                let ring = local_ring(&["patients", "bidx"]);
                std::thread::scope(|s| {
                    for w in 0..WRITERS {
                        let (db, ring) = (&db, &ring);
                        s.spawn(move || {
                            let mut conn = db.conn();
                            for i in 0..ROWS {
                                let n = w * 1_000 + i;
                                if i % 5 == 4 {
                                    // Every fifth write is a small batch in a transaction.
                                    let batch: Vec<Patient> =
                                        (0..3).map(|k| patient(50_000 + n * 10 + k)).collect();
                                    let rows = Patient::seal_rows(&batch, ring).unwrap();
                                    conn.transaction::<_, diesel::result::Error, _>(|c| {
                                        diesel::insert_into(patients::table)
                                            .values(&rows)
                                            .execute(c)
                                    })
                                    .unwrap();
                                } else {
                                    insert_one(&mut conn, ring, &patient(n));
                                }
                            }
                        });
                    }
                });
                let mut conn = db.conn();
                let per_writer = i64::from(ROWS / 5 * 3 + (ROWS - ROWS / 5));
                assert_eq!(count(&mut conn), i64::from(WRITERS) * per_writer);
                let all = Patient::open_rows(
                    patients::table
                        .select(PatientRow::as_select())
                        .load(&mut conn)
                        .unwrap(),
                    &ring,
                )
                .unwrap();
                assert!(
                    all.contains(&patient(3_007))
                        && all.contains(&patient(50_000 + 1_004 * 10 + 2))
                );
                // The KEK cache has no single-flight: writers that miss at the same moment may
                // each fetch, but never more than once per writer and scope (4 writers, 2 scopes).
                let unwraps = ring.kms_calls().unwraps;
                assert!(
                    (2..=8).contains(&unwraps),
                    "{unwraps} KEK fetches: more than one per writer and scope"
                );
            }
        }
    };
}

/// A SQLite database file in a temporary folder (WAL, busy timeout), so that several
/// connections can write to it.
#[cfg(feature = "sqlite")]
struct SqliteDb(tempfile::TempDir);

#[cfg(feature = "sqlite")]
impl SqliteDb {
    fn new() -> Self {
        let db = Self(tempfile::tempdir().unwrap());
        diesel::sql_query(SQLITE_DDL)
            .execute(&mut db.conn())
            .unwrap();
        db
    }

    fn conn(&self) -> SqliteConnection {
        use diesel::connection::SimpleConnection;
        let path = self.0.path().join("suite.db");
        let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
        conn.batch_execute("PRAGMA busy_timeout = 30000; PRAGMA journal_mode = WAL;")
            .unwrap();
        conn
    }
}

#[cfg(feature = "sqlite")]
behaviour_suite!(sqlite, SqliteConnection, SqliteDb, SqliteDb::new());

/// A server database of its own (PostgreSQL or MariaDB, reached through connections of type
/// `C`) with the `patients` table. Shared by the suite's threads, so the connection type is
/// only named, never held.
#[cfg(any(feature = "postgres", feature = "mysql"))]
struct ServerDb<C>(
    crate::support::services::TestDb,
    std::marker::PhantomData<fn() -> C>,
);

#[cfg(any(feature = "postgres", feature = "mysql"))]
impl<C: Connection> ServerDb<C> {
    /// `db` with the `patients` table made by `ddl`.
    fn with_table(db: crate::support::services::TestDb, ddl: &str) -> Self {
        let db = Self(db, std::marker::PhantomData);
        db.conn().batch_execute(ddl).unwrap();
        db
    }

    fn conn(&self) -> C {
        C::establish(self.0.url()).unwrap()
    }
}

#[cfg(feature = "postgres")]
behaviour_suite!(
    postgres,
    PgConnection,
    ServerDb<PgConnection>,
    ServerDb::with_table(crate::support::services::TestDb::postgres(), PG_DDL)
);

#[cfg(feature = "mysql")]
behaviour_suite!(
    mariadb,
    MysqlConnection,
    ServerDb<MysqlConnection>,
    ServerDb::with_table(crate::support::services::TestDb::mysql(), MYSQL_DDL)
);
