//! The sealed application under test: the quickstart's `Patient` model
//! (`leakless_examples::patient`), its canaries generated from the derive's manifest, and the
//! positive-control canaries that the tests plant into deliberately leaky control tables, logs
//! and files.

use std::sync::Arc;

use leakless::kms::{KekBinding, Kms as _, LocalKms};
use leakless::secret::RootKey;
use leakless::store::MemoryKeyStore;
use leakless::{AuditInfo, Json, KeyRing, KeyScope};
use leakless_leaktest::canary::{Canary, CanarySet, fresh_marker};

pub use leakless_examples::patient::{GeoPoint, Patient, PatientRow, manifest, patients};

/// The value of the tests' binary canaries (kind bytes).
pub const CANARY_BYTES: [u8; 10] = [7, 1, 250, 3, 4, 99, 5, 6, 42, 17];

/// Rows per sealed column.
pub const ROWS: usize = 3;

/// The app's canaries (from the manifest) plus the key-material canaries and the controls.
pub struct Fixture {
    pub set: CanarySet,
    pub patients: Vec<Patient>,
    pub controls: Controls,
    /// The ring the app seals with: its root key and the active KEK of each scope are
    /// canaries (`key.root`, `key.kek.patients`, `key.kek.bidx`).
    pub ring: KeyRing,
    kms: Arc<LocalKms>,
    store: Arc<MemoryKeyStore>,
}

impl Fixture {
    /// A new ring over the same KMS and key store as [`Fixture::ring`] (same root key and
    /// KEKs), with a cold cache: its first use unwraps the KEKs through the KMS again.
    pub fn fresh_ring(&self) -> KeyRing {
        KeyRing::builder(self.kms.clone(), self.store.clone()).build()
    }
}

/// The ids of the key-material canaries every fixture carries.
pub const KEY_CANARIES: [&str; 3] = ["key.root", "key.kek.patients", "key.kek.bidx"];

/// A key ring whose root key bytes the test keeps, plus canaries for that root key and for the
/// active KEK of each scope. The KEKs come out through the public `Kms::unwrap_kek` on the
/// records the ring stored (what a thief holding the root key could do), so no key-exposing
/// API is needed. Byte canaries are searched for raw, as hex in both cases (and PostgreSQL's
/// `\x` form) and as standard and URL-safe base64 at every alignment.
fn keyed_ring() -> (KeyRing, Arc<LocalKms>, Arc<MemoryKeyStore>, Vec<Canary>) {
    let mut root_bytes = zeroize::Zeroizing::new([0u8; leakless::secret::KEY_LEN]);
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), root_bytes.as_mut());
    let kms = Arc::new(LocalKms::from_root_key(RootKey::from_bytes(*root_bytes)));
    let store = Arc::new(MemoryKeyStore::new());
    let ring = KeyRing::builder(kms.clone(), store.clone()).build();
    let mut canaries = vec![Canary::bytes(
        "key.root",
        &fresh_marker(),
        root_bytes.as_ref(),
    )];
    for s in ["patients", "bidx"] {
        let scope = KeyScope::new(s).unwrap();
        ring.create_scope(&scope, &AuditInfo::new("leak test", "setup"))
            .unwrap();
        let records = ring.versions(&scope).unwrap();
        assert_eq!(records.len(), 1, "one KEK version after create_scope");
        let record = &records[0];
        let kek = kms
            .unwrap_kek(
                record.wrapped.as_ref().unwrap(),
                &KekBinding {
                    scope: &scope,
                    version: record.version,
                },
            )
            .unwrap();
        canaries.push(Canary::bytes(
            &format!("key.kek.{s}"),
            &fresh_marker(),
            kek.expose_secret(),
        ));
    }
    (ring, kms, store, canaries)
}

/// A canary set holding one positive control: the text canary `id` with `marker`, whose value
/// `value` the test plants where it must be found.
pub fn set_with_control(id: &str, marker: &str, value: &str) -> CanarySet {
    let mut set = CanarySet::new();
    set.push(Canary::text(id, marker, value).unwrap().as_control())
        .unwrap();
    set
}

/// A key ring over a fresh local KMS (random root key) and an in-memory key store, with the
/// scope `scope` created: for tests that seal values and keep no key canary.
pub fn ring_with_scope(scope: &str) -> (KeyRing, KeyScope) {
    let ring = leakless_examples::throwaway_ring_builder().build();
    let scope = KeyScope::new(scope).unwrap();
    ring.create_scope(&scope, &AuditInfo::new("leak test", "setup"))
        .unwrap();
    (ring, scope)
}

/// Positive-control values, planted on purpose.
pub struct Controls {
    /// A short address-like text.
    pub addr: Canary,
    /// A compressible transcript of about 3 KB (PostgreSQL: inline pglz).
    pub pglz: Canary,
    /// A transcript of about 9 KB (PostgreSQL: lz4, out of line in TOAST).
    pub lz4: Canary,
    /// A GPS point, written as text.
    pub gps: Canary,
    /// 32 random bytes shaped like a key, planted as base64 (and hex) where a careless
    /// program would log or store a key: proves the key-material canaries are detectable.
    pub key: Canary,
}

impl Controls {
    pub fn ids(&self) -> [&str; 4] {
        [&self.addr.id, &self.pglz.id, &self.lz4.id, &self.gps.id]
    }

    pub fn addr_text(&self) -> &str {
        self.addr.text_value().unwrap()
    }

    /// The planted key's bytes as standard base64 (padded, as a config file or log holds it).
    pub fn key_base64(&self) -> String {
        leakless_leaktest::encode::base64(&self.key.raw_bytes().unwrap(), false)
    }

    /// The planted key's bytes as uppercase hex.
    pub fn key_hex_upper(&self) -> String {
        hex::encode_upper(self.key.raw_bytes().unwrap().as_slice())
    }

    pub fn gps_wkt(&self) -> String {
        let (lat, lon) = self.gps.gps_value().unwrap();
        format!("POINT({lon} {lat})")
    }
}

fn transcript(marker: &str, len: usize) -> String {
    let words = [
        "patient",
        "reports",
        "dizziness",
        "after",
        "standing",
        "über",
        "résumé",
        "ankle",
        "exercise",
        "glucose",
        "ordered",
        "follow-up",
        "weekly",
        "swims",
        "advised",
    ];
    let mut s = format!("Control transcript {marker}: ");
    let mut x: u32 = 2_463_534_242;
    while s.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        s.push_str(words[usize::try_from(x).unwrap() % words.len()]);
        s.push(if x.is_multiple_of(11) { '.' } else { ' ' });
        if x.is_multiple_of(37) {
            s.push_str(&format!(" {} ", x % 1000));
        }
    }
    s
}

pub fn fixture() -> Fixture {
    let mut set = CanarySet::from_manifest(&manifest(), ROWS).unwrap();
    let get = |id: String| set.get(&id).unwrap().clone();
    let mut patients = Vec::new();
    for i in 0..ROWS {
        let address = get(format!("patients.address#{i}"));
        let email = get(format!("patients.email#{i}"));
        let gps = get(format!("patients.gps#{i}"));
        let tr = get(format!("patients.transcript#{i}"));
        let (lat, lon) = gps.gps_value().unwrap();
        patients.push(Patient {
            id: format!("00000000-0000-4000-8000-00000000000{i}"),
            name: format!("Demo patient {i}"),
            address: address.text_value().unwrap().to_owned(),
            email: email.text_value().unwrap().to_owned(),
            gps: Json(GeoPoint { lat, lon }),
            transcript: Some(tr.text_value().unwrap().to_owned()),
        });
    }
    let m = fresh_marker();
    let addr = Canary::text(
        "control.addr",
        &m,
        &format!("Control {m}, 1 Leaky Lane, Controlton CT1 1AA"),
    )
    .unwrap()
    .as_control();
    let m = fresh_marker();
    let pglz = Canary::transcript("control.pglz", &m, &transcript(&m, 3000))
        .unwrap()
        .as_control();
    let m = fresh_marker();
    let lz4 = Canary::transcript("control.lz4", &m, &transcript(&m, 9000))
        .unwrap()
        .as_control();
    let gps = Canary::gps("control.gps", &fresh_marker(), 47.376_912_3, 8.541_694_1).as_control();
    let mut key_bytes = zeroize::Zeroizing::new([0u8; 32]);
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), key_bytes.as_mut());
    let key = Canary::bytes("control.key", &fresh_marker(), key_bytes.as_ref()).as_control();
    for c in [&addr, &pglz, &lz4, &gps, &key] {
        set.push(c.clone()).unwrap();
    }
    let (ring, kms, store, key_canaries) = keyed_ring();
    for c in key_canaries {
        set.push(c).unwrap();
    }
    Fixture {
        set,
        patients,
        controls: Controls {
            addr,
            pglz,
            lz4,
            gps,
            key,
        },
        ring,
        kms,
        store,
    }
}

/// Inserts `rows` through `insert`, then the first of them again under another id: the same
/// e-mail, so the same blind index, which the unique constraint on `email_bidx` must refuse.
/// Returns that refusal, for the caller to check its message (and scan it).
pub fn insert_and_refuse_duplicate<E: std::fmt::Debug>(
    rows: &[PatientRow],
    mut insert: impl FnMut(&[PatientRow]) -> Result<usize, E>,
) -> E {
    insert(rows).unwrap();
    let mut dup = rows[0].clone();
    dup.id = "duplicate".into();
    insert(std::slice::from_ref(&dup)).expect_err("a second row with the same e-mail was accepted")
}

/// A new SQLite database file `name` in a fresh temporary folder (removed when the returned
/// folder is dropped), its path, and a connection to it.
pub fn sqlite_in_tempdir(
    name: &str,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    diesel::sqlite::SqliteConnection,
) {
    use diesel::Connection as _;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(name);
    let conn = diesel::sqlite::SqliteConnection::establish(db.to_str().unwrap()).unwrap();
    (dir, db, conn)
}

/// Appends a regular file `name` holding `data` (mode 0600) to the archive `b`.
pub fn tar_append<W: std::io::Write>(b: &mut tar::Builder<W>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o600);
    h.set_cksum();
    b.append_data(&mut h, name, data).unwrap();
}

/// A tar archive of the regular files `members` (name, contents).
pub fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        tar_append(&mut b, name, data);
    }
    b.into_inner().unwrap()
}

/// SQL string literal (standard quoting).
pub fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A throwaway PostgreSQL cluster with statement logging on: the server log then holds every
/// statement, its parameters and constraint-violation `DETAIL` lines.
pub fn pg_server() -> leakless_testkit::PgServer {
    leakless_testkit::PgServer::start_with(&leakless_testkit::PgOptions::statement_logging())
        .expect("PostgreSQL must start (scripts/pg-cluster)")
}

/// A realistic address, ~40 bytes, unique per `n`.
pub fn address(n: u64) -> String {
    const STREETS: [&str; 8] = [
        "Lantern Row",
        "Quarry Lane",
        "Musterweg",
        "Sample Close",
        "Harbour View",
        "Mill Street",
        "Orchard Way",
        "Kingsway",
    ];
    const TOWNS: [&str; 4] = ["Exampleton", "Beispielstadt", "Villefictive", "Sampletown"];
    format!(
        "{} {}, Flat {n}, {}",
        n % 397 + 1,
        STREETS[usize::try_from(n % 8).unwrap()],
        TOWNS[usize::try_from(n / 8 % 4).unwrap()]
    )
}
