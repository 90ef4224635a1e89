//! The sealed `Patient` model of the quickstart, shared: `quickstart` stores it in SQLite, the
//! leak suites of `leakless-leaktest` write it to SQLite, PostgreSQL and MariaDB, and the
//! `clinic` example keeps its table and [`GeoPoint`] (with its own key scopes).
//!
//! A plaintext id (an application-made UUID, bound into every envelope) and display name, a
//! sealed postal address (AES-256-GCM), a sealed e-mail address (XChaCha20-Poly1305) with a
//! blind index under its own key scope, a sealed GPS point (`Json<GeoPoint>`) and a sealed,
//! optional transcript.

use std::fmt;

use leakless::manifest::SchemaManifest;
use leakless::{Json, Sealed};
use serde::{Deserialize, Serialize};

use crate::demo_data::DemoPatient;

/// The table's name, bound into every envelope.
pub const TABLE: &str = "patients";
/// The key scope of the patients' data keys.
pub const SCOPE: &str = "patients";
/// The key scope of the blind-index keys (never the data scope).
pub const BIDX_SCOPE: &str = "bidx";
/// The schema version bound into every envelope.
pub const SCHEMA_VERSION: u32 = 1;

/// The diesel schema of the patients table (any backend: text and binary columns).
pub mod schema {
    diesel::table! {
        /// Patients: `id` and `name` in the clear, the sensitive fields as sealed envelopes.
        patients (id) {
            /// A random UUID as text; the row identity bound into every envelope.
            id -> Text,
            /// A display label, unsealed.
            name -> Text,
            /// Sealed postal address.
            address -> Binary,
            /// Sealed e-mail address.
            email -> Binary,
            /// Blind index of the e-mail address: HMAC tokens under the blind-index scope.
            email_bidx -> Binary,
            /// Sealed GPS point, as JSON.
            gps -> Binary,
            /// Sealed transcript; NULL when there is none.
            transcript -> Nullable<Binary>,
        }
    }
}
pub use schema::patients;

/// A point on the map, sealed as compact JSON. JSON of floats has no fixed length, so it
/// keeps the default length-bucket padding.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct GeoPoint {
    /// Latitude in degrees (WGS 84).
    pub lat: f64,
    /// Longitude in degrees (WGS 84).
    pub lon: f64,
}

/// Redacted: a location is sensitive, so `Debug` never prints the coordinates.
impl fmt::Debug for GeoPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GeoPoint(<redacted>)")
    }
}

/// A patient. The derive generates `PatientRow` (the stored form), sealing and opening,
/// `Patient::email_lookup`, and a `Debug` that prints sealed fields as `<sealed>`.
#[derive(Clone, PartialEq, Sealed)]
#[leakless(table = patients, row_id = id, schema_version = 1, scope = "patients")]
pub struct Patient {
    /// A random UUID (text), made by the application before the insert.
    pub id: String,
    /// A display label, stored in the clear.
    pub name: String,
    /// Postal address, sealed with AES-256-GCM.
    #[leakless(seal(aead = "aes256gcm"))]
    pub address: String,
    /// E-mail address, sealed (XChaCha20-Poly1305), with a blind index (trimmed, lowercased)
    /// for look-ups.
    #[leakless(seal(blind_index(column = email_bidx, scope = "bidx", normalize = "trim_lowercase")))]
    pub email: String,
    /// GPS point, sealed as JSON.
    #[leakless(seal)]
    pub gps: Json<GeoPoint>,
    /// Consultation transcript, sealed; `None` stays SQL `NULL`.
    #[leakless(seal)]
    pub transcript: Option<String>,
}

impl Patient {
    /// The model of a demo patient under a new random id.
    #[must_use]
    pub fn from_demo(p: &DemoPatient) -> Self {
        Self {
            id: random_uuid(),
            name: p.name.clone(),
            address: p.address.clone(),
            email: p.email.clone(),
            gps: Json(GeoPoint {
                lat: p.lat,
                lon: p.lon,
            }),
            transcript: p.transcript.clone(),
        }
    }
}

/// The schema manifest of the model (one table).
#[must_use]
pub fn manifest() -> SchemaManifest {
    SchemaManifest::from_tables([Patient::manifest()])
}

/// A random version-4 UUID in its text form; no need for the uuid crate.
#[must_use]
pub fn random_uuid() -> String {
    let mut id: [u8; 16] = rand::random();
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    let h = hex::encode(id);
    format!(
        "{}-{}-{}-{}-{}",
        h.get(..8).unwrap_or_default(),
        h.get(8..12).unwrap_or_default(),
        h.get(12..16).unwrap_or_default(),
        h.get(16..20).unwrap_or_default(),
        h.get(20..).unwrap_or_default()
    )
}
