//! A per-tenant `#[derive(Sealed)]` model on SQLite: a component that holds only tenant B's
//! keys writes a value into tenant A's row (same table, column and row, so the associated data
//! matches), and loading the row refuses it with `Error::WrongKeyScope` naming the field.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers"
)]

use std::sync::Arc;

use diesel::prelude::*;
use leakless::kms::LocalKms;
use leakless::secret::RootKey;
use leakless::store::MemoryKeyStore;
use leakless::{AuditInfo, Error, KeyRing, KeyScope, Sealed};

#[allow(
    missing_docs,
    reason = "diesel's table! macro generates undocumented items"
)]
mod schema {
    diesel::table! {
        visits (id) {
            id -> Text,
            clinic -> Text,
            transcript -> Binary,
            notes -> Nullable<Binary>,
        }
    }
}
use schema::visits;

/// A visit whose key scope is its clinic's (`tenant:<clinic>`).
#[derive(Clone, PartialEq, Sealed)]
#[leakless(table = visits, row_id = id, schema_version = 1,
           scope_prefix = "tenant:", scope_from = clinic)]
pub struct Visit {
    id: String,
    clinic: String,
    #[leakless(seal)]
    transcript: String,
    #[leakless(seal)]
    notes: Option<String>,
}

const B_SECRET: &str = "clinic B transcript: chest pain since Tuesday";

fn ring() -> KeyRing {
    let ring = KeyRing::builder(
        Arc::new(LocalKms::from_root_key(RootKey::generate())),
        Arc::new(MemoryKeyStore::new()),
    )
    .build();
    let who = AuditInfo::new("test", "setup");
    for t in ["tenant:a", "tenant:b"] {
        ring.create_scope(&KeyScope::new(t).unwrap(), &who).unwrap();
    }
    ring
}

fn db() -> SqliteConnection {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    diesel::sql_query(
        "CREATE TABLE visits (id TEXT PRIMARY KEY, clinic TEXT NOT NULL,
         transcript BLOB NOT NULL, notes BLOB)",
    )
    .execute(&mut conn)
    .unwrap();
    conn
}

fn load(conn: &mut SqliteConnection, ring: &KeyRing, id: &str) -> Result<Visit, Error> {
    let row = visits::table
        .find(id)
        .select(VisitRow::as_select())
        .first(conn)
        .unwrap();
    Visit::open_row(row, ring)
}

#[test]
fn another_tenants_value_in_a_row_is_refused_naming_the_field() {
    let ring = ring();
    let mut conn = db();
    let a = Visit {
        id: "v-1".into(),
        clinic: "a".into(),
        transcript: "clinic A transcript".into(),
        notes: Some("clinic A notes".into()),
    };
    diesel::insert_into(visits::table)
        .values(a.seal_row(&ring).unwrap())
        .execute(&mut conn)
        .unwrap();
    assert_eq!(load(&mut conn, &ring, "v-1").unwrap(), a);

    // Tenant B's component seals for the same table, column and row id under its own scope
    // and writes the envelopes into tenant A's row.
    let forged = Visit {
        clinic: "b".into(),
        transcript: B_SECRET.into(),
        notes: Some(B_SECRET.into()),
        ..a.clone()
    }
    .seal_row(&ring)
    .unwrap();
    diesel::update(visits::table.find("v-1"))
        .set(visits::transcript.eq(&forged.transcript))
        .execute(&mut conn)
        .unwrap();

    let err = load(&mut conn, &ring, "v-1").unwrap_err();
    match &err {
        Error::WrongKeyScope {
            location,
            expected,
            found,
        } => {
            assert_eq!(
                (location.table.as_str(), location.column.as_str()),
                ("visits", "transcript")
            );
            assert_eq!(location.row, "text:v-1");
            assert_eq!(expected.as_str(), "tenant:a");
            assert_eq!(found.as_str(), "tenant:b");
        }
        other => panic!("expected WrongKeyScope, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("visits.transcript row text:v-1"), "{msg}");
    assert!(!msg.contains("chest pain") && !format!("{err:?}").contains("chest pain"));

    // An `Option` field is checked too.
    diesel::update(visits::table.find("v-1"))
        .set((
            visits::transcript.eq(a.seal_row(&ring).unwrap().transcript),
            visits::notes.eq(&forged.notes),
        ))
        .execute(&mut conn)
        .unwrap();
    let err = load(&mut conn, &ring, "v-1").unwrap_err();
    assert!(
        matches!(&err, Error::WrongKeyScope { location, .. } if location.column == "notes"),
        "{err}"
    );

    // Moving the whole row to tenant B (its tenant column too) is what makes it B's row.
    diesel::update(visits::table.find("v-1"))
        .set((
            visits::clinic.eq("b"),
            visits::transcript.eq(&forged.transcript),
        ))
        .execute(&mut conn)
        .unwrap();
    let opened = load(&mut conn, &ring, "v-1").unwrap();
    assert_eq!(opened.transcript, B_SECRET);
}
