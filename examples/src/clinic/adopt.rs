//! The "adopt an existing table" path of the `clinic` example (`clinic --adopt`): a
//! `patients` table that a legacy application filled with plaintext (text columns, a GPS point
//! as two `double precision` columns) is brought under leakless while it keeps serving, through
//! the three adoption stages of `docs/adoption.md`.
//!
//! Each stage is one build of the application, here one model. Every sealed field is stored in
//! a new column beside its legacy one (`stored_in = address_sealed`, still binding the name
//! `address` into its envelopes) and adopted from the legacy column of its own name; the GPS
//! point is adopted from the pair `lat`/`lon` into one `Json<GeoPoint>`; the e-mail keeps a
//! blind index, whose tokens every stage writes.

use diesel::pg::PgConnection;
use diesel::prelude::*;
use leakless::{Json, KeyRing, Sealed};

use super::GeoPoint;
use crate::demo_data::DemoPatient;

/// The diesel schema while the adoption runs: the legacy columns and the sealed ones.
pub mod schema {
    diesel::table! {
        /// Patients of the legacy application, with the sealed columns added beside.
        patients (id) {
            /// The legacy application's id (text).
            id -> Text,
            /// A display label, never sealed.
            name -> Text,
            /// Legacy plaintext postal address.
            address -> Nullable<Text>,
            /// Legacy plaintext e-mail address.
            email -> Nullable<Text>,
            /// Legacy latitude.
            lat -> Nullable<Double>,
            /// Legacy longitude.
            lon -> Nullable<Double>,
            /// Legacy plaintext transcript.
            transcript -> Nullable<Text>,
            /// Sealed postal address.
            address_sealed -> Nullable<Binary>,
            /// Sealed e-mail address.
            email_sealed -> Nullable<Binary>,
            /// Blind index of the e-mail address.
            email_bidx -> Nullable<Binary>,
            /// Sealed GPS point (JSON).
            gps -> Nullable<Binary>,
            /// Sealed transcript.
            transcript_sealed -> Nullable<Binary>,
        }
    }
}
use schema::patients;

/// The legacy application's table, as it made it.
pub const LEGACY_DDL: &str = "CREATE TABLE patients (id TEXT PRIMARY KEY, name TEXT NOT NULL, \
     address TEXT NOT NULL, email TEXT NOT NULL, lat DOUBLE PRECISION NOT NULL, \
     lon DOUBLE PRECISION NOT NULL, transcript TEXT)";

/// The DBA's first step: the sealed columns beside the legacy ones, which become nullable
/// (stage 2 writes NULL into them).
pub const ADD_SEALED_COLUMNS: &str = "ALTER TABLE patients \
     ADD COLUMN address_sealed BYTEA, ADD COLUMN email_sealed BYTEA, ADD COLUMN email_bidx BYTEA, \
     ADD COLUMN gps BYTEA, ADD COLUMN transcript_sealed BYTEA, \
     ALTER COLUMN address DROP NOT NULL, ALTER COLUMN email DROP NOT NULL, \
     ALTER COLUMN lat DROP NOT NULL, ALTER COLUMN lon DROP NOT NULL; \
     CREATE INDEX patients_email_bidx ON patients (email_bidx)";

/// The DBA's last step, once only the build without `adopt(...)` ([`Adopted`]) runs: the
/// legacy columns go, and the sealed ones every row now has become NOT NULL.
pub const DROP_LEGACY_COLUMNS: &str = "ALTER TABLE patients DROP COLUMN address, \
     DROP COLUMN email, DROP COLUMN lat, DROP COLUMN lon, DROP COLUMN transcript, \
     ALTER COLUMN address_sealed SET NOT NULL, ALTER COLUMN email_sealed SET NOT NULL, \
     ALTER COLUMN email_bidx SET NOT NULL, ALTER COLUMN gps SET NOT NULL";

/// The diesel schema of the adopted table: the sealed columns only.
pub mod adopted_schema {
    diesel::table! {
        /// Patients, adopted: the sealed columns in every row.
        patients (id) {
            /// The legacy id.
            id -> Text,
            /// A display label, never sealed.
            name -> Text,
            /// Sealed postal address.
            address_sealed -> Binary,
            /// Sealed e-mail address.
            email_sealed -> Binary,
            /// Blind index of the e-mail address.
            email_bidx -> Binary,
            /// Sealed GPS point (JSON).
            gps -> Binary,
            /// Sealed transcript.
            transcript_sealed -> Nullable<Binary>,
        }
    }
}

/// The build without `adopt(...)`: deployed after stage 3 and the backfill, before the legacy
/// columns are dropped (it never selects them). The envelopes it reads are the ones the
/// stages wrote: they bind the field names, not the columns they sit in.
#[derive(Clone, PartialEq, Sealed)]
#[leakless(table = adopted_schema::patients, row_id = id, schema_version = 1, scope = "clinic.patients")]
pub struct Adopted {
    /// The legacy id.
    pub id: String,
    /// A display label, stored in the clear.
    pub name: String,
    /// Postal address.
    #[leakless(seal(aead = "aes256gcm", stored_in = address_sealed))]
    pub address: String,
    /// E-mail address, with its blind index.
    #[leakless(seal(aead = "aes256gcm", stored_in = email_sealed,
        blind_index(column = email_bidx, scope = "clinic.bidx", normalize = "trim_lowercase")))]
    pub email: String,
    /// GPS point.
    #[leakless(seal(aead = "aes256gcm"))]
    pub gps: Json<GeoPoint>,
    /// Consultation transcript, if any.
    #[leakless(seal(aead = "aes256gcm", stored_in = transcript_sealed))]
    pub transcript: Option<String>,
}

impl Adopted {
    /// Loads and opens every row, by id.
    ///
    /// # Errors
    /// diesel's error, or the runtime's for a row that does not open.
    pub fn load_all(
        conn: &mut PgConnection,
        ring: &KeyRing,
    ) -> Result<Vec<Self>, Box<dyn std::error::Error>> {
        let rows = adopted_schema::patients::table
            .order(adopted_schema::patients::id)
            .select(AdoptedRow::as_select())
            .load(conn)?;
        Ok(Self::open_rows(rows, ring)?)
    }

    /// The sealed fields of the model as a demo patient's, to compare with what the legacy
    /// application stored.
    #[must_use]
    pub fn same_as(&self, p: &DemoPatient) -> bool {
        same(
            p,
            &self.name,
            &self.address,
            &self.email,
            &self.gps.0,
            self.transcript.as_deref(),
        )
    }
}

/// Defines one build of the application: the same fields, adopted at `$stage`.
macro_rules! stage_model {
    ($(#[$doc:meta])* $name:ident, $stage:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Sealed)]
        #[leakless(table = schema::patients, row_id = id, schema_version = 1, scope = "clinic.patients")]
        pub struct $name {
            /// The legacy id.
            pub id: String,
            /// A display label, stored in the clear.
            pub name: String,
            /// Postal address: sealed into `address_sealed`, adopted from `address`.
            #[leakless(seal(aead = "aes256gcm", stored_in = address_sealed,
                adopt(from = address, stage = $stage)))]
            pub address: String,
            /// E-mail address, with a blind index for look-ups.
            #[leakless(seal(aead = "aes256gcm", stored_in = email_sealed,
                adopt(from = email, stage = $stage),
                blind_index(column = email_bidx, scope = "clinic.bidx", normalize = "trim_lowercase")))]
            pub email: String,
            /// GPS point, adopted from the two numeric columns.
            #[leakless(seal(aead = "aes256gcm", adopt(pair(lat = lat, lon = lon), stage = $stage)))]
            pub gps: Json<GeoPoint>,
            /// Consultation transcript, if any.
            #[leakless(seal(aead = "aes256gcm", stored_in = transcript_sealed,
                adopt(from = transcript, stage = $stage)))]
            pub transcript: Option<String>,
        }

        impl $name {
            /// Loads and opens every row, by id.
            ///
            /// # Errors
            /// diesel's error, or the runtime's for a row that does not open.
            pub fn load_all(
                conn: &mut PgConnection,
                ring: &KeyRing,
            ) -> Result<Vec<Self>, Box<dyn std::error::Error>> {
                let rows = patients::table
                    .order(patients::id)
                    .select(<Self as Sealed>::Row::as_select())
                    .load(conn)?;
                Ok(Self::open_rows(rows, ring)?)
            }

            /// Whether the fields equal a demo patient's.
            #[must_use]
            pub fn same_as(&self, p: &DemoPatient) -> bool {
                same(p, &self.name, &self.address, &self.email, &self.gps.0, self.transcript.as_deref())
            }
        }
    };
}

/// Whether the fields of a model equal a demo patient's (the GPS point exactly: the pair
/// columns hold the same `f64`s).
fn same(
    p: &DemoPatient,
    name: &str,
    address: &str,
    email: &str,
    gps: &GeoPoint,
    transcript: Option<&str>,
) -> bool {
    name == p.name
        && address == p.address
        && email == p.email
        && gps.lat.to_bits() == p.lat.to_bits()
        && gps.lon.to_bits() == p.lon.to_bits()
        && transcript == p.transcript.as_deref()
}

stage_model!(
    /// Stage 1 (`read_plaintext`): reads the legacy columns where no envelope is stored;
    /// writes the envelopes and keeps writing the legacy columns for the old build.
    Stage1,
    "read_plaintext"
);
stage_model!(
    /// Stage 2 (`write_sealed_only`): reads as stage 1; writes NULL into the legacy columns.
    Stage2,
    "write_sealed_only"
);
stage_model!(
    /// Stage 3 (`sealed_only`): reads and writes the sealed columns only.
    Stage3,
    "sealed_only"
);

/// Fills the legacy table the way the legacy application did: plaintext only.
///
/// # Errors
/// diesel's error.
pub fn fill_legacy(
    conn: &mut PgConnection,
    people: &[(String, &DemoPatient)],
) -> QueryResult<usize> {
    let rows: Vec<_> = people
        .iter()
        .map(|(id, p)| {
            (
                patients::id.eq(id),
                patients::name.eq(&p.name),
                patients::address.eq(&p.address),
                patients::email.eq(&p.email),
                patients::lat.eq(p.lat),
                patients::lon.eq(p.lon),
                patients::transcript.eq(&p.transcript),
            )
        })
        .collect();
    diesel::insert_into(patients::table)
        .values(rows)
        .execute(conn)
}

/// The application-side backfill a stage-1 build can run: every row without an envelope is
/// opened from its legacy columns and written back through the model, which seals it (and its
/// blind-index token). One transaction, for a demo table; a production table is adopted online,
/// resumably and verified with `leakless-migrate adopt` instead (`docs/adoption.md`). Returns
/// how many rows it sealed.
///
/// # Errors
/// diesel's error, or the runtime's.
pub fn backfill(
    conn: &mut PgConnection,
    ring: &KeyRing,
) -> Result<usize, Box<dyn std::error::Error>> {
    conn.transaction(|conn| {
        let rows = patients::table
            .filter(patients::address_sealed.is_null())
            .select(Stage1Row::as_select())
            .for_update()
            .load(conn)?;
        let mut sealed = 0;
        for p in Stage1::open_rows(rows, ring)? {
            diesel::update(patients::table.find(&p.id))
                .set(&p.seal_row(ring)?)
                .execute(conn)?;
            sealed += 1;
        }
        Ok(sealed)
    })
}
