//! The library part of the `clinic` example (cargo feature `postgres`): the patients table as
//! a diesel migration set, the sealed `Patient` model, and the throwaway database the example
//! and its tests run in.
//!
//! The model is quickstart's ([`crate::patient`]: the same table and [`GeoPoint`]) on
//! PostgreSQL, under the clinic's own key scopes: a plaintext id (an application-made UUID,
//! bound into every envelope) and display name, a sealed postal address, a sealed e-mail
//! address with a blind index under its own key scope, a sealed GPS point (`Json<GeoPoint>`)
//! and a sealed, optional transcript. Every field uses AES-256-GCM, the faster AEAD on servers
//! with AES instructions (x86-64 AES-NI, ARMv8 crypto extensions; see `docs/performance.md`),
//! where quickstart shows both. The table comes from `examples/migrations/`, embedded into the
//! binary with `diesel_migrations`.

use std::error::Error;
use std::fmt;

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use zeroize::Zeroizing;

use leakless::manifest::SchemaManifest;
use leakless::redact::redact_url;
use leakless::{Json, Sealed};

use crate::demo_data::DemoPatient;

/// The migration set of `examples/migrations/`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// The key scope of the patients' data keys.
pub const SCOPE: &str = "clinic.patients";
/// The key scope of the blind-index keys (never the data scope).
pub const BIDX_SCOPE: &str = "clinic.bidx";

pub mod adopt;

/// The diesel schema of the migrated database: the quickstart's patients table.
pub use crate::patient::{GeoPoint, random_uuid, schema};

/// A patient of the clinic. The derive makes `PatientRow` (the stored form), the seal and open
/// conversions, `Patient::email_lookup`, and a `Debug` that prints sealed fields as `<sealed>`.
#[derive(Clone, PartialEq, Sealed)]
#[leakless(table = schema::patients, row_id = id, schema_version = 1, scope = "clinic.patients")]
pub struct Patient {
    /// A random UUID (text), made by the application before the insert.
    pub id: String,
    /// A display label, stored in the clear.
    pub name: String,
    /// Postal address, sealed with AES-256-GCM.
    #[leakless(seal(aead = "aes256gcm"))]
    pub address: String,
    /// E-mail address, sealed, with a blind index (trimmed, lowercased) for look-ups.
    #[leakless(seal(aead = "aes256gcm", blind_index(column = email_bidx, scope = "clinic.bidx", normalize = "trim_lowercase")))]
    pub email: String,
    /// GPS point, sealed as JSON.
    #[leakless(seal(aead = "aes256gcm"))]
    pub gps: Json<GeoPoint>,
    /// Consultation transcript, sealed; `None` stays SQL `NULL`.
    #[leakless(seal(aead = "aes256gcm"))]
    pub transcript: Option<String>,
}

impl Patient {
    /// The model of a demo patient under a new random id (the quickstart's, under the clinic's
    /// key scopes).
    #[must_use]
    pub fn from_demo(p: &DemoPatient) -> Self {
        let q = crate::patient::Patient::from_demo(p);
        Self {
            id: q.id,
            name: q.name,
            address: q.address,
            email: q.email,
            gps: q.gps,
            transcript: q.transcript,
        }
    }
}

/// The schema manifest of every sealed model of the clinic (one table today).
#[must_use]
pub fn manifest() -> SchemaManifest {
    SchemaManifest::from_tables([Patient::manifest()])
}

/// Runs every pending migration of [`MIGRATIONS`]; returns the versions it applied.
///
/// # Errors
/// The migration harness's error (a failed statement names the migration).
pub fn run_migrations(
    conn: &mut PgConnection,
) -> Result<Vec<String>, Box<dyn Error + Send + Sync>> {
    let applied = conn.run_pending_migrations(MIGRATIONS)?;
    Ok(applied.iter().map(ToString::to_string).collect())
}

/// Reverts every applied migration of [`MIGRATIONS`], newest first; returns their versions.
///
/// # Errors
/// The migration harness's error.
pub fn revert_migrations(
    conn: &mut PgConnection,
) -> Result<Vec<String>, Box<dyn Error + Send + Sync>> {
    let reverted = conn.revert_all_migrations(MIGRATIONS)?;
    Ok(reverted.iter().map(ToString::to_string).collect())
}

/// A database of its own on a PostgreSQL server, `leakless_clinic_<random>`, dropped by
/// [`FreshDatabase::drop_now`] or on drop (unless [`FreshDatabase::keep`] was called).
///
/// Its URLs hold the server's password, if any: `Debug` shows them redacted.
pub struct FreshDatabase {
    admin_url: Zeroizing<String>,
    url: Zeroizing<String>,
    name: String,
    keep: bool,
}

impl fmt::Debug for FreshDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FreshDatabase")
            .field("name", &self.name)
            .field("url", &redact_url(&self.url))
            .field("keep", &self.keep)
            .finish()
    }
}

/// Why a server URL cannot be used, with its password masked.
#[derive(Debug)]
pub struct DatabaseError {
    /// What was being done (`connect to the server`, `CREATE DATABASE ...`).
    pub action: String,
    /// The server's URL, password masked.
    pub server: String,
    /// The driver's message (libpq's messages do not repeat the password).
    pub detail: String,
}

impl fmt::Display for DatabaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PostgreSQL at {}: {} failed: {}",
            self.server,
            self.action,
            self.detail.trim()
        )
    }
}

impl Error for DatabaseError {}

impl FreshDatabase {
    /// Connects to the server of `admin_url` (any database the user may `CREATE DATABASE`
    /// from) and creates a new, empty database.
    ///
    /// # Errors
    /// [`DatabaseError`] when the server cannot be reached or refuses.
    pub fn create(admin_url: &str) -> Result<Self, DatabaseError> {
        let name = format!("leakless_clinic_{:016x}", rand::random::<u64>());
        let err = |action: String, e: &dyn fmt::Display| DatabaseError {
            action,
            server: redact_url(admin_url),
            detail: e.to_string(),
        };
        let mut admin = PgConnection::establish(admin_url)
            .map_err(|e| err("connect to the server".into(), &e))?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .map_err(|e| err(format!("CREATE DATABASE {name}"), &e))?;
        let url = with_database(admin_url, &name).ok_or_else(|| DatabaseError {
            action: "read the URL".into(),
            server: redact_url(admin_url),
            detail: "expected postgres://user@host:port/database".into(),
        })?;
        Ok(Self {
            admin_url: Zeroizing::new(admin_url.to_owned()),
            url: Zeroizing::new(url),
            name,
            keep: false,
        })
    }

    /// The database's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its URL (holds the password, if any: print it only through `redact_url`).
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Keeps the database when this value is dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Drops the database now (closing other sessions on it).
    ///
    /// # Errors
    /// [`DatabaseError`] when the server refuses.
    pub fn drop_now(mut self) -> Result<(), DatabaseError> {
        self.keep = true;
        self.drop_database()
    }

    fn drop_database(&self) -> Result<(), DatabaseError> {
        let action = format!("DROP DATABASE {}", self.name);
        let err = |e: &dyn fmt::Display| DatabaseError {
            action: action.clone(),
            server: redact_url(&self.admin_url),
            detail: e.to_string(),
        };
        let mut admin = PgConnection::establish(&self.admin_url).map_err(|e| err(&e))?;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .map_err(|e| err(&e))
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        if !self.keep {
            // Best effort on an error path; `drop_now` reports failures.
            let _ = self.drop_database();
        }
    }
}

/// `url` with its database (the path) replaced by `name`, keeping user, host and query.
/// `None` unless `url` has a `scheme://` prefix.
#[must_use]
pub fn with_database(url: &str, name: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let (before_query, query) = rest.find('?').map_or((rest, ""), |i| rest.split_at(i));
    let host_start = before_query.rfind('@').map_or(0, |i| i + 1);
    let authority_end = before_query
        .get(host_start..)?
        .find('/')
        .map_or(before_query.len(), |i| host_start + i);
    Some(format!(
        "{scheme}://{}/{name}{query}",
        before_query.get(..authority_end)?
    ))
}

/// The text form of every row of every table in the `public` schema (bytea as `\x` hex), one
/// line per row: what a thief with read access to the database sees. The leak scan of the
/// example searches it.
///
/// # Errors
/// diesel's error when a query fails.
pub fn dump_tables(conn: &mut PgConnection) -> Result<String, diesel::result::Error> {
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        table_name: String,
    }
    #[derive(QueryableByName)]
    struct Rows {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        rows: Option<String>,
    }
    let tables: Vec<Name> = diesel::sql_query(
        "SELECT table_name::text AS table_name FROM information_schema.tables \
         WHERE table_schema = 'public' ORDER BY table_name",
    )
    .load(conn)?;
    let mut out = String::new();
    for t in tables {
        let quoted = t.table_name.replace('"', "\"\"");
        let rows: Rows = diesel::sql_query(format!(
            "SELECT string_agg(t::text, E'\\n') AS rows FROM \"{quoted}\" t"
        ))
        .get_result(conn)?;
        out.push_str(&rows.rows.unwrap_or_default());
        out.push('\n');
    }
    Ok(out)
}
