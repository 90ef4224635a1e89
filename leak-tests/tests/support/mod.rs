//! The sealed application under test: the quickstart's `Patient` model through
//! `#[derive(Sealed)]` (the same fields and attributes as `examples/src/bin/quickstart.rs`),
//! its canaries generated from the derive's manifest, and the positive-control canaries that
//! the tests plant into deliberately leaky control tables, logs and files.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::print_stderr,
    reason = "test support; each test binary uses a part"
)]

use std::sync::Arc;

use leakless::kms::LocalKms;
use leakless::manifest::SchemaManifest;
use leakless::secret::RootKey;
use leakless::store::MemoryKeyStore;
use leakless::{AuditInfo, Json, KeyRing, KeyScope, Sealed};
use leakless_leaktest::canary::{Canary, CanarySet, fresh_marker};
use serde::{Deserialize, Serialize};

#[allow(
    missing_docs,
    reason = "diesel's table! macro generates undocumented items"
)]
pub mod schema {
    diesel::table! {
        patients (id) {
            id -> Text,
            name -> Text,
            address -> Binary,
            email -> Binary,
            email_bidx -> Binary,
            gps -> Binary,
            transcript -> Nullable<Binary>,
        }
    }
}
pub use schema::patients;

/// A point on the map, sealed as JSON (as in quickstart).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct GeoPoint {
    pub lat: f64,
    pub lon: f64,
}

/// The quickstart's model.
#[derive(Clone, PartialEq, Sealed)]
#[leakless(table = patients, row_id = id, schema_version = 1, scope = "patients")]
pub struct Patient {
    pub id: String,
    pub name: String,
    #[leakless(seal(aead = "aes256gcm"))]
    pub address: String,
    #[leakless(seal(blind_index(column = email_bidx, scope = "bidx", normalize = "trim_lowercase")))]
    pub email: String,
    #[leakless(seal)]
    pub gps: Json<GeoPoint>,
    #[leakless(seal)]
    pub transcript: Option<String>,
}

/// Rows per sealed column.
pub const ROWS: usize = 3;

/// The manifest of the sealed app, from the derive.
pub fn manifest() -> SchemaManifest {
    let mut m = SchemaManifest::new();
    m.tables.push(Patient::manifest());
    m
}

/// A key ring with the `patients` and `bidx` scopes.
pub fn ring() -> KeyRing {
    let ring = KeyRing::builder(
        Arc::new(LocalKms::from_root_key(RootKey::generate())),
        Arc::new(MemoryKeyStore::new()),
    )
    .build();
    for s in ["patients", "bidx"] {
        ring.create_scope(
            &KeyScope::new(s).unwrap(),
            &AuditInfo::new("leak test", "setup"),
        )
        .unwrap();
    }
    ring
}

/// The app's canaries (from the manifest) plus the controls.
pub struct Fixture {
    pub set: CanarySet,
    pub patients: Vec<Patient>,
    pub controls: Controls,
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
}

impl Controls {
    pub fn ids(&self) -> [&str; 4] {
        [&self.addr.id, &self.pglz.id, &self.lz4.id, &self.gps.id]
    }

    pub fn addr_text(&self) -> &str {
        self.addr.text_value().unwrap()
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
    for c in [&addr, &pglz, &lz4, &gps] {
        set.push(c.clone()).unwrap();
    }
    Fixture {
        set,
        patients,
        controls: Controls {
            addr,
            pglz,
            lz4,
            gps,
        },
    }
}

/// SQL string literal (standard quoting).
pub fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Asserts every channel of the report is clean (no leak, every control found), printing the
/// human report on failure.
pub fn assert_clean(report: &leakless_leaktest::Report) {
    let human = report.human();
    eprintln!("{human}");
    for c in &report.channels {
        assert_eq!(
            c.status(),
            leakless_leaktest::Status::Clean,
            "channel {} is not clean:\n{human}",
            c.channel
        );
    }
    assert_eq!(report.exit_code(), 0, "{human}");
}

/// Asserts a control of `channel` was found through a view whose artifact name contains
/// `view` (e.g. `[heap-pglz`).
pub fn assert_seen_through(
    report: &leakless_leaktest::Report,
    channel: &str,
    id: &str,
    view: &str,
) {
    let c = report.channel(channel).unwrap();
    assert!(
        c.control_findings
            .iter()
            .any(|f| f.canary_id == id && f.artifact.contains(view)),
        "{channel}: control {id} not found through {view}: {:?}",
        c.control_findings
            .iter()
            .map(|f| (&f.canary_id, &f.artifact))
            .collect::<Vec<_>>()
    );
}
