//! The `#[derive(Sealed)]` behaviour suite, run on SQLite, PostgreSQL and MariaDB through the
//! same diesel code: single and bulk insert, load one and many, update through a changeset,
//! NULL for `None`, look-up by blind index, and one KEK fetch per scope for a whole batch.
//! Needs `cargo test -p leakless --all-features`; PostgreSQL and MariaDB come from the services
//! of `support/services.rs` (never skipped: a missing server fails the test, naming it).
#![cfg(feature = "sql-store")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers")]

mod support;

use std::sync::Arc;

use diesel::prelude::*;
use leakless::kms::LocalKms;
use leakless::secret::RootKey;
use leakless::store::MemoryKeyStore;
use leakless::{AuditInfo, KeyRing, KeyScope, Sealed};

#[allow(
    missing_docs,
    reason = "diesel's table! macro generates undocumented items"
)]
mod schema {
    diesel::table! {
        patients (id) {
            id -> Text,
            clinic -> Text,
            address -> Binary,
            email -> Binary,
            email_bidx -> Binary,
            notes -> Nullable<Binary>,
        }
    }
}
use schema::patients;

/// A patient whose address, e-mail and notes are sealed.
#[derive(Clone, PartialEq, Sealed)]
#[leakless(table = patients, row_id = id, schema_version = 1, scope = "patients")]
pub struct Patient {
    id: String,
    clinic: String,
    #[leakless(seal(aead = "aes256gcm"))]
    address: String,
    #[leakless(seal(blind_index(column = email_bidx, scope = "bidx", normalize = "trim_lowercase")))]
    email: String,
    #[leakless(seal)]
    notes: Option<String>,
}

fn ring() -> KeyRing {
    let ring = KeyRing::builder(
        Arc::new(LocalKms::from_root_key(RootKey::generate())),
        Arc::new(MemoryKeyStore::new()),
    )
    .build();
    let who = AuditInfo::new("test", "setup");
    ring.create_scope(&KeyScope::new("patients").unwrap(), &who)
        .unwrap();
    ring.create_scope(&KeyScope::new("bidx").unwrap(), &who)
        .unwrap();
    ring
}

fn patient(i: u32) -> Patient {
    Patient {
        id: format!("p-{i:03}"),
        clinic: "north".into(),
        address: format!("{i} Canary Wharf Lane, London"),
        email: format!("Person{i}@Example.org"),
        notes: i.is_multiple_of(2).then(|| format!("note {i}: chest pain")),
    }
}

/// The suite, as a macro so that one body runs on each backend's connection type.
macro_rules! behaviour_suite {
    ($conn:expr) => {{
        let conn = $conn;
        let ring = ring();
        let one = patient(1);
        diesel::insert_into(patients::table)
            .values(one.seal_row(&ring).unwrap())
            .execute(conn)
            .unwrap();
        let many: Vec<Patient> = (2..=40).map(patient).collect();
        diesel::insert_into(patients::table)
            .values(Patient::seal_rows(&many, &ring).unwrap())
            .execute(conn)
            .unwrap();
        assert_eq!(
            ring.kms_calls().unwraps,
            2,
            "one KEK fetch per scope for all rows"
        );

        let row = patients::table
            .find("p-001")
            .select(PatientRow::as_select())
            .first(conn)
            .unwrap();
        assert!(Patient::open_row(row, &ring).unwrap() == one);
        let all = Patient::open_rows(
            patients::table
                .order(patients::id)
                .select(PatientRow::as_select())
                .load(conn)
                .unwrap(),
            &ring,
        )
        .unwrap();
        assert_eq!(all.len(), 40);
        assert!(all.iter().zip(1..).all(|(p, i)| *p == patient(i)));

        let notes: Option<Vec<u8>> = patients::table
            .find("p-003")
            .select(patients::notes)
            .first(conn)
            .unwrap();
        assert!(notes.is_none(), "None is stored as NULL");

        let mut changed = patient(2);
        changed.address = "1 New Road, Leeds".into();
        changed.notes = None;
        diesel::update(patients::table.find("p-002"))
            .set(changed.seal_row(&ring).unwrap())
            .execute(conn)
            .unwrap();
        let row = patients::table
            .find("p-002")
            .select(PatientRow::as_select())
            .first(conn)
            .unwrap();
        assert!(Patient::open_row(row, &ring).unwrap() == changed);

        let tokens = Patient::email_lookup(&ring, &" PERSON17@example.ORG".to_owned()).unwrap();
        let found = patients::table
            .filter(patients::email_bidx.eq_any(tokens))
            .select(PatientRow::as_select())
            .load(conn)
            .unwrap();
        assert_eq!(found.len(), 1);
        assert!(Patient::open_row(found[0].clone(), &ring).unwrap() == patient(17));
        let shown = format!("{:?}", found[0]);
        assert!(
            !shown.contains("Canary") && !shown.contains("Person17"),
            "{shown}"
        );
    }};
}

#[cfg(feature = "sqlite")]
#[test]
fn sqlite() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    diesel::sql_query(
        "CREATE TABLE patients (id TEXT PRIMARY KEY, clinic TEXT NOT NULL, address BLOB NOT NULL,
         email BLOB NOT NULL, email_bidx BLOB NOT NULL, notes BLOB)",
    )
    .execute(&mut conn)
    .unwrap();
    behaviour_suite!(&mut conn);
}

#[cfg(feature = "postgres")]
#[test]
fn postgres() {
    let db = support::services::TestDb::postgres();
    let mut conn = PgConnection::establish(db.url()).unwrap();
    diesel::sql_query(
        "CREATE TABLE patients (id TEXT PRIMARY KEY, clinic TEXT NOT NULL, address BYTEA NOT NULL,
         email BYTEA NOT NULL, email_bidx BYTEA NOT NULL, notes BYTEA)",
    )
    .execute(&mut conn)
    .unwrap();
    behaviour_suite!(&mut conn);
}

#[cfg(feature = "mysql")]
#[test]
fn mariadb() {
    let db = support::services::TestDb::mysql();
    let mut conn = MysqlConnection::establish(db.url()).unwrap();
    diesel::sql_query(
        "CREATE TABLE patients (id VARCHAR(64) PRIMARY KEY, clinic VARCHAR(64) NOT NULL,
         address BLOB NOT NULL, email BLOB NOT NULL, email_bidx VARBINARY(64) NOT NULL,
         notes BLOB)",
    )
    .execute(&mut conn)
    .unwrap();
    behaviour_suite!(&mut conn);
}
