//! `#[derive(Sealed)]` on SQLite through ordinary diesel code: single and bulk insert, load one
//! and many, update through a changeset, NULL for `None`, look-up by blind index, redacted
//! `Debug`, and the schema manifest. Also that the stored row, `debug_query`, diesel's
//! instrumentation and the errors of every failed open or seal hold no plaintext (each check
//! with a positive control).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers")]

use std::sync::Arc;

use diesel::prelude::*;
use leakless::key::{Clock, ManualClock, SystemClock, UnixTime};
use leakless::{AuditInfo, Json, KeyRing, KeyScope, PaddingPolicy, Sealed};
use leakless_examples::patient::GeoPoint;

#[allow(
    missing_docs,
    reason = "diesel's table! macro generates undocumented items"
)]
mod schema {
    diesel::table! {
        patients (id) {
        id -> Text,
        clinic -> Text,
        name -> Text,
        address -> Binary,
        email -> Binary,
        email_bidx -> Binary,
        gps -> Binary,
        notes -> Nullable<Binary>,
        }
    }
}
use schema::patients;

/// A patient with sealed fields.
#[derive(Clone, PartialEq, Sealed)]
#[leakless(table = patients, row_id = id, schema_version = 1, scope = "patients")]
pub struct Patient {
    id: String,
    clinic: String,
    name: String,
    #[leakless(seal(aead = "aes256gcm"))]
    address: String,
    #[leakless(seal(blind_index(column = email_bidx, scope = "bidx", normalize = "trim_lowercase")))]
    email: String,
    #[leakless(seal(padding = "marker_only"))]
    gps: Json<GeoPoint>,
    #[leakless(seal)]
    notes: Option<String>,
}

fn ring() -> KeyRing {
    ring_with_clock(Arc::new(SystemClock))
}

/// A ring with both scopes, reading the time from `clock` (a [`ManualClock`] lets a test move
/// past the cache window that retire and destroy wait for, without sleeping).
fn ring_with_clock(clock: Arc<dyn Clock>) -> KeyRing {
    let ring = leakless_examples::throwaway_ring_builder()
        .clock(clock)
        .build();
    let who = AuditInfo::new("test", "setup");
    ring.create_scope(&KeyScope::new("patients").unwrap(), &who)
        .unwrap();
    ring.create_scope(&KeyScope::new("bidx").unwrap(), &who)
        .unwrap();
    ring
}

fn db() -> SqliteConnection {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    diesel::sql_query(
        "CREATE TABLE patients (id TEXT PRIMARY KEY, clinic TEXT NOT NULL, name TEXT NOT NULL,
         address BLOB NOT NULL, email BLOB NOT NULL, email_bidx BLOB NOT NULL,
         gps BLOB NOT NULL, notes BLOB)",
    )
    .execute(&mut conn)
    .unwrap();
    conn
}

/// The stored row of patient `id`.
fn stored(conn: &mut SqliteConnection, id: &str) -> PatientRow {
    patients::table
        .find(id)
        .select(PatientRow::as_select())
        .first(conn)
        .unwrap()
}

/// Inserts `row` into the empty table of `conn` and reads the table back: the one row, as
/// stored.
fn store_and_read_back(conn: &mut SqliteConnection, row: PatientRow) -> PatientRow {
    diesel::insert_into(patients::table)
        .values(row)
        .execute(conn)
        .unwrap();
    let mut loaded = patients::table
        .select(PatientRow::as_select())
        .load(conn)
        .unwrap();
    assert_eq!(loaded.len(), 1, "the table held other rows");
    loaded.remove(0)
}

fn patient(i: u32) -> Patient {
    Patient {
        id: format!("p-{i}"),
        clinic: "north".into(),
        name: format!("Patient {i}"),
        address: format!("{i} Canary Wharf Lane, London"),
        email: format!("Person{i}@Example.org"),
        gps: Json(GeoPoint {
            lat: 51.5 + f64::from(i) / 1000.0,
            lon: -0.12,
        }),
        notes: i
            .is_multiple_of(2)
            .then(|| format!("note number {i} about chest pain")),
    }
}

#[test]
fn insert_load_update_and_look_up_through_diesel() {
    let ring = ring();
    let mut conn = db();

    // Single insert.
    let one = patient(1);
    diesel::insert_into(patients::table)
        .values(one.seal_row(&ring).unwrap())
        .execute(&mut conn)
        .unwrap();
    // Bulk insert of many rows in one statement.
    let many: Vec<Patient> = (2..=50).map(patient).collect();
    let rows = Patient::seal_rows(&many, &ring).unwrap();
    diesel::insert_into(patients::table)
        .values(&rows)
        .execute(&mut conn)
        .unwrap();
    assert_eq!(
        ring.kms_calls().unwraps,
        2,
        "one KEK fetch per scope for the whole batch"
    );

    // Load one and many.
    assert_eq!(
        Patient::open_row(stored(&mut conn, "p-1"), &ring).unwrap(),
        one
    );
    let loaded = patients::table
        .order(patients::id)
        .select(PatientRow::as_select())
        .load(&mut conn)
        .unwrap();
    let opened = Patient::open_rows(loaded, &ring).unwrap();
    assert_eq!(opened.len(), 50);
    assert!(opened.contains(&patient(37)));

    // NULL stays NULL.
    let raw_notes: Option<Vec<u8>> = patients::table
        .find("p-3")
        .select(patients::notes)
        .first(&mut conn)
        .unwrap();
    assert!(raw_notes.is_none());

    // Update through a changeset: a new address and notes cleared.
    let mut changed = patient(2);
    changed.address = "1 New Road, Leeds".into();
    changed.notes = None;
    diesel::update(patients::table.find("p-2"))
        .set(changed.seal_row(&ring).unwrap())
        .execute(&mut conn)
        .unwrap();
    assert_eq!(
        Patient::open_row(stored(&mut conn, "p-2"), &ring).unwrap(),
        changed
    );

    // Look-up by blind index, with the normaliser: case and spaces do not matter.
    let tokens = Patient::email_lookup(&ring, &"  person42@EXAMPLE.org ".to_owned()).unwrap();
    let found = patients::table
        .filter(patients::email_bidx.eq_any(tokens))
        .select(PatientRow::as_select())
        .load(&mut conn)
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        Patient::open_row(found[0].clone(), &ring).unwrap(),
        patient(42)
    );

    // The stored row holds no plaintext of a sealed field.
    let raw = format!("{:?}", found[0]);
    for needle in ["Canary", "Person42", "person42", "51.54", "chest"] {
        assert!(!raw.contains(needle), "{needle} in {raw}");
    }
    let bytes = [
        &found[0].address[..],
        &found[0].email[..],
        &found[0].gps[..],
    ]
    .concat();
    assert!(!String::from_utf8_lossy(&bytes).contains("Canary"));
}

#[test]
fn a_row_copied_to_another_id_does_not_open() {
    let ring = ring();
    let mut row = patient(1).seal_row(&ring).unwrap();
    row.id = "p-2".into();
    let err = Patient::open_row(row, &ring).unwrap_err();
    assert!(
        matches!(err, leakless::Error::DecryptionFailed { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("patients.address row text:p-2"),
        "{err}"
    );
}

#[test]
fn debug_prints_sealed_fields_as_sealed() {
    let p = patient(4);
    let shown = format!("{p:?} {p:#?}");
    assert!(shown.contains("name: \"Patient 4\""), "{shown}");
    for needle in ["Canary", "Person4", "51.504", "chest"] {
        assert!(!shown.contains(needle), "{needle} in {shown}");
    }
    assert!(shown.contains("address: <sealed>"), "{shown}");
}

#[test]
fn manifest_describes_the_sealed_columns() {
    let t = Patient::manifest();
    assert_eq!(t.table, "patients");
    assert_eq!(t.row_id_column, "id");
    assert_eq!(t.row_id_kind.name(), "text");
    assert_eq!(t.schema_version, 1);
    let default = PaddingPolicy::default();
    let cols: Vec<_> = t
        .columns
        .iter()
        .map(|c| {
            (
                c.column.as_str(),
                c.algorithm.name(),
                c.encoding.name(),
                c.nullable,
                c.padding,
            )
        })
        .collect();
    assert_eq!(
        cols,
        vec![
            ("address", "aes256gcm", "string", false, default),
            ("email", "xchacha20poly1305", "string", false, default),
            (
                "gps",
                "xchacha20poly1305",
                "json",
                false,
                PaddingPolicy::MarkerOnly
            ),
            ("notes", "xchacha20poly1305", "string", true, default),
        ]
    );
    let bidx = t.columns[1].blind_index.as_ref().unwrap();
    assert_eq!(
        (bidx.column.as_str(), bidx.scope.as_str(), bidx.bytes),
        ("email_bidx", "bidx", 16)
    );
    let mut m = leakless::manifest::SchemaManifest::new();
    m.tables.push(t);
    m.validate().unwrap();
}

/// The decimal-list form in which `Debug` of a `Vec<u8>` bind would show a plaintext.
fn as_debug_bytes(s: &str) -> String {
    let list = format!("{:?}", s.as_bytes());
    list.trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

#[test]
fn debug_query_and_instrumentation_show_no_plaintext() {
    use diesel::connection::{Instrumentation, InstrumentationEvent};
    use std::sync::Mutex;

    let ring = ring();
    let p = patient(5);
    let needles = [
        p.address.clone(),
        as_debug_bytes(&p.address),
        p.email.clone(),
        as_debug_bytes(&p.email),
    ];

    // Positive control: a query that binds the plaintext bytes shows them in debug_query.
    let leaky = diesel::update(patients::table.find("x"))
        .set(patients::address.eq(p.address.as_bytes().to_vec()));
    let shown = diesel::debug_query::<diesel::sqlite::Sqlite, _>(&leaky).to_string();
    assert!(shown.contains(&as_debug_bytes(&p.address)), "{shown}");

    // The sealed insert shows envelopes only.
    let row = p.seal_row(&ring).unwrap();
    let insert = diesel::insert_into(patients::table).values(row.clone());
    let shown = diesel::debug_query::<diesel::sqlite::Sqlite, _>(&insert).to_string();
    for n in &needles {
        assert!(!shown.contains(n.as_str()), "debug_query shows {n}");
    }

    // diesel's instrumentation sees every statement with its binds.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<String>>>);
    impl Instrumentation for Log {
        fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
            self.0.lock().unwrap().push(format!("{event:?}"));
        }
    }
    let log = Log::default();
    let mut conn = db();
    conn.set_instrumentation(log.clone());
    let loaded = vec![store_and_read_back(&mut conn, row)];
    assert_eq!(Patient::open_rows(loaded, &ring).unwrap(), vec![p.clone()]);
    // Positive control on the same log: a plaintext bind is visible.
    diesel::update(patients::table.find("nobody"))
        .set(patients::name.eq("CONTROL-canary-7f3a"))
        .execute(&mut conn)
        .unwrap();
    let text = log.0.lock().unwrap().join("\n");
    assert!(
        text.contains("CONTROL-canary-7f3a"),
        "instrumentation shows binds: {text}"
    );
    for n in &needles {
        assert!(!text.contains(n.as_str()), "instrumentation shows {n}");
    }
}

/// Every form in which an error could show a plaintext: `Display`, `Debug`, pretty `Debug`,
/// and the `Display` of each error in its `source()` chain.
fn error_texts(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = format!("{err}\n{err:?}\n{err:#?}");
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(&format!("\n{s}\n{s:?}"));
        source = s.source();
    }
    out
}

/// The needles of `p`'s sealed values found in `text`: as text, as a `Debug` byte list, as hex.
fn plaintext_hits(p: &Patient, text: &str) -> Vec<String> {
    let mut values = vec![p.address.clone(), p.email.clone(), p.email.to_lowercase()];
    values.extend(p.notes.clone());
    values.push(serde_json::to_string(&p.gps.0).unwrap());
    let mut needles = Vec::new();
    for v in values {
        needles.push(as_debug_bytes(&v));
        needles.push(hex::encode(v.as_bytes()));
        needles.push(v);
    }
    needles.push(p.gps.0.lat.to_string());
    needles
        .into_iter()
        .filter(|n| text.contains(n.as_str()))
        .collect()
}

#[test]
fn error_messages_show_no_plaintext() {
    let clock = Arc::new(ManualClock::new(UnixTime(1_796_371_200))); // 2026-12-04
    let ring = ring_with_clock(clock.clone());
    let mut conn = db();
    let p = patient(6);
    let row = p.seal_row(&ring).unwrap();

    // Positive control: an error that carries the plaintext is caught by the same check.
    let planted = leakless::Error::InvalidInput {
        what: "planted",
        problem: format!("bad value {:?}", p.address.as_bytes()),
    };
    assert!(!plaintext_hits(&p, &error_texts(&planted)).is_empty());

    let mut errors: Vec<(&str, leakless::Error)> = Vec::new();
    // A ciphertext copied to another row, and to another column.
    let mut copied = row.clone();
    copied.id = "p-7".into();
    errors.push(("copied row", Patient::open_row(copied, &ring).unwrap_err()));
    let mut swapped = row.clone();
    swapped.notes = Some(row.address.clone());
    errors.push((
        "copied column",
        Patient::open_row(swapped, &ring).unwrap_err(),
    ));
    // Tampered, truncated, and plaintext where an envelope belongs (the error must not echo it).
    let mut tampered = row.clone();
    let last = tampered.address.len() - 1;
    tampered.address[last] ^= 1;
    errors.push(("tampered", Patient::open_row(tampered, &ring).unwrap_err()));
    let mut truncated = row.clone();
    truncated.email.truncate(40);
    errors.push((
        "truncated",
        Patient::open_row(truncated, &ring).unwrap_err(),
    ));
    let mut raw = row.clone();
    raw.address = p.address.as_bytes().to_vec();
    errors.push((
        "plaintext stored",
        Patient::open_row(raw, &ring).unwrap_err(),
    ));
    // Another key ring (another root key and key store).
    errors.push((
        "other ring",
        Patient::open_row(row.clone(), &self::ring()).unwrap_err(),
    ));
    // A non-finite float cannot be sealed as JSON.
    let mut nan = p.clone();
    nan.gps.0.lat = f64::NAN;
    let nan_err = nan.seal_row(&ring).unwrap_err();
    // The refusal names the field: table, column and row.
    assert!(
        nan_err
            .to_string()
            .contains(&format!("patients.gps row text:{}", p.id)),
        "{nan_err}"
    );
    errors.push(("NaN", nan_err));
    // A scope that was never created.
    let bare = leakless_examples::throwaway_ring_builder().build();
    errors.push(("no scope", p.seal_row(&bare).unwrap_err()));
    errors.push((
        "no index scope",
        Patient::email_lookup(&bare, &p.email).unwrap_err(),
    ));
    // A destroyed KEK version (crypto-shredded).
    let scope = KeyScope::new("patients").unwrap();
    let who = AuditInfo::new("test", "shred");
    let v1 = ring.versions(&scope).unwrap()[0].version;
    ring.rotate(&scope, std::time::Duration::ZERO, &who)
        .unwrap();
    // Inside the cache window (default: the KEK cache's 5 minutes) the destroy is refused,
    // with a typed error that names the version and the time, and no value.
    let early = ring.destroy(&scope, v1, &who).unwrap_err();
    assert!(
        matches!(early, leakless::Error::KeyChangeTooEarly { .. }),
        "{early:?}"
    );
    errors.push(("destroy too early", early));
    clock.advance(std::time::Duration::from_secs(5 * 60 + 30 + 1));
    ring.destroy(&scope, v1, &who).unwrap();
    errors.push((
        "destroyed",
        Patient::open_row(row.clone(), &ring).unwrap_err(),
    ));

    // The same failures through diesel: a row read back from the database.
    let loaded = store_and_read_back(&mut conn, row);
    errors.push(("loaded", Patient::open_row(loaded, &ring).unwrap_err()));

    let mut kinds = std::collections::BTreeSet::new();
    for (what, err) in &errors {
        let text = error_texts(err);
        let hits = plaintext_hits(&p, &text);
        assert!(hits.is_empty(), "{what}: error shows {hits:?}: {text}");
        kinds.insert(
            format!("{err:?}")
                .split([' ', '{', '('])
                .next()
                .unwrap()
                .to_owned(),
        );
    }
    assert!(kinds.len() >= 6, "a variety of error kinds: {kinds:?}");
}
