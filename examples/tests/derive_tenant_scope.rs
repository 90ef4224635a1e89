//! Per-tenant `#[derive(Sealed)]` models on SQLite: a component that holds only tenant B's
//! keys writes a value into tenant A's row (same table, column and row, so the associated data
//! matches), and loading the row refuses it with `Error::WrongKeyScope` naming the field; a
//! blind index with an index key per tenant neither links tenants nor survives a tenant's
//! shred.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers"
)]

use diesel::prelude::*;
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
    let ring = leakless_examples::throwaway_ring_builder().build();
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

#[allow(
    missing_docs,
    reason = "diesel's table! macro generates undocumented items"
)]
mod members_schema {
    diesel::table! {
        members (id) {
            id -> Text,
            clinic -> Text,
            email -> Binary,
            email_bidx -> Binary,
        }
    }
}
use members_schema::members;

/// A member looked up by e-mail with an index key per clinic (`bidx:<clinic>`).
#[derive(Clone, PartialEq, Sealed)]
#[leakless(table = members, row_id = id, schema_version = 1,
           scope_prefix = "tenant:", scope_from = clinic)]
pub struct Member {
    id: String,
    clinic: String,
    #[leakless(seal(blind_index(column = email_bidx, scope_prefix = "bidx:",
                                normalize = "nfkc_casefold")))]
    email: String,
}

/// Per-tenant index keys: the same e-mail in two clinics has unrelated tokens (no linking
/// across tenants), a clinic's look-up finds only its own row, and once the clinic's index key
/// is destroyed its tokens cannot be recomputed, so they confirm no guess. (With one shared
/// index key equal values have equal tokens: `runtime/tests/suite/blind_index.rs`.)
#[test]
fn per_tenant_index_keys_do_not_link_tenants_and_die_with_the_shred() {
    let ring = ring();
    let who = AuditInfo::new("test", "setup");
    for s in ["bidx:a", "bidx:b"] {
        ring.create_scope(&KeyScope::new(s).unwrap(), &who).unwrap();
    }
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    diesel::sql_query(
        "CREATE TABLE members (id TEXT PRIMARY KEY, clinic TEXT NOT NULL, email BLOB NOT NULL,
         email_bidx BLOB NOT NULL)",
    )
    .execute(&mut conn)
    .unwrap();
    let same = "Shared.Person@Example.org";
    for (id, clinic) in [("m-a", "a"), ("m-b", "b")] {
        let m = Member {
            id: id.into(),
            clinic: clinic.into(),
            email: same.into(),
        };
        diesel::insert_into(members::table)
            .values(m.seal_row(&ring).unwrap())
            .execute(&mut conn)
            .unwrap();
    }
    let tokens: Vec<Vec<u8>> = members::table
        .order(members::id)
        .select(members::email_bidx)
        .load(&mut conn)
        .unwrap();
    assert_ne!(tokens[0], tokens[1], "equal values link across tenants");

    let find = |conn: &mut SqliteConnection, clinic: &str, value: &str| -> Vec<String> {
        let t = Member::email_lookup(&ring, &clinic.to_owned(), &value.to_owned()).unwrap();
        members::table
            .filter(members::email_bidx.eq_any(t))
            .select(members::id)
            .load(conn)
            .unwrap()
    };
    // Typed another way (case, spaces): the clinic finds its own row only.
    assert_eq!(find(&mut conn, "a", " shared.person@EXAMPLE.org "), ["m-a"]);
    assert_eq!(find(&mut conn, "b", same), ["m-b"]);

    // Shred clinic a's index key: no token of it can be recomputed.
    let a = KeyScope::new("bidx:a").unwrap();
    let v1 = ring.versions(&a).unwrap()[0].version;
    // A rotation without grace retires the old version at once.
    ring.rotate(&a, std::time::Duration::ZERO, &who).unwrap();
    ring.destroy_ignoring_cache_window(&a, v1, &who).unwrap();
    // The new key gives another token: the stored one confirms nothing.
    let now = Member::email_lookup(&ring, &"a".to_owned(), &same.to_owned()).unwrap();
    assert!(!now.contains(&tokens[0]));
    // Clinic b is untouched.
    assert_eq!(find(&mut conn, "b", same), ["m-b"]);
}
