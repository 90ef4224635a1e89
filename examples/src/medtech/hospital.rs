//! The hospital server: opens frames from the gateway and stores each reading through
//! `#[derive(leakless::Sealed)]` in an embedded SQLite database.
//!
//! The reading's values are sealed (a `leakless::Json<Reading>` field); the device id stays in
//! the clear so rows can be found per device. Each device has its own key scope
//! (`device:<id>`), so one device's data can be crypto-shredded without touching the others.
//! The root key is a `LocalKms` key file and the wrapped KEKs live in a `FileKeyStore`, both
//! made at run time in the server's folder.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use leakless::kms::LocalKms;
use leakless::store::FileKeyStore;
use leakless::{AuditInfo, Json, KeyRing, KeyScope, Sealed};

use super::Reading;
use super::channel::{ChannelError, Frame, FrameReceiver};

/// The diesel schema of the readings table.
pub mod schema {
    diesel::table! {
        /// One row per stored reading.
        readings (id) {
            /// A random 128-bit id (hex), bound into the row's envelope.
            id -> Text,
            /// The device, in the clear; also names the row's key scope.
            device_id -> Text,
            /// The sealed reading.
            reading -> Binary,
        }
    }
}
use schema::readings;

/// A stored reading: the device id in the clear, the reading sealed under the device's scope.
#[derive(Clone, PartialEq, Sealed)]
#[leakless(
    table = readings,
    row_id = id,
    schema_version = 1,
    scope_prefix = "device:",
    scope_from = device_id
)]
pub struct StoredReading {
    /// The row id.
    pub id: String,
    /// The device.
    pub device_id: String,
    /// The reading (heart rate, battery, timestamp, device id), sealed.
    #[leakless(seal)]
    pub reading: Json<Reading>,
}

/// Why the server refused a frame or could not store or load a reading.
#[derive(Debug)]
pub enum HospitalError {
    /// The channel refused the frame (replayed, reordered or tampered).
    Channel(ChannelError),
    /// The frame authenticated but did not hold a reading.
    Malformed {
        /// The frame's sequence number.
        seq: u64,
    },
    /// leakless could not seal or open a value, or manage a key.
    Keys(leakless::Error),
    /// SQLite could not open the database.
    Connection(ConnectionError),
    /// A query failed.
    Database(diesel::result::Error),
}

impl std::fmt::Display for HospitalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Channel(e) => write!(f, "hospital server: {e}"),
            Self::Malformed { seq } => {
                write!(f, "hospital server: frame {seq} does not hold a reading")
            }
            Self::Keys(e) => write!(f, "hospital server: {e}"),
            Self::Connection(e) => write!(f, "hospital server: opening the database: {e}"),
            Self::Database(e) => write!(f, "hospital server: database: {e}"),
        }
    }
}

impl std::error::Error for HospitalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Channel(e) => Some(e),
            Self::Keys(e) => Some(e),
            Self::Connection(e) => Some(e),
            Self::Database(e) => Some(e),
            Self::Malformed { .. } => None,
        }
    }
}

impl From<ChannelError> for HospitalError {
    fn from(e: ChannelError) -> Self {
        Self::Channel(e)
    }
}
impl From<leakless::Error> for HospitalError {
    fn from(e: leakless::Error) -> Self {
        Self::Keys(e)
    }
}
impl From<ConnectionError> for HospitalError {
    fn from(e: ConnectionError) -> Self {
        Self::Connection(e)
    }
}
impl From<diesel::result::Error> for HospitalError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Database(e)
    }
}

/// The hospital server: the channel's receiving end, the key ring and the database.
pub struct HospitalServer {
    receiver: FrameReceiver,
    ring: KeyRing,
    conn: SqliteConnection,
    scopes: HashSet<String>,
}

impl std::fmt::Debug for HospitalServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HospitalServer")
            .field("receiver", &self.receiver)
            .field("device_scopes", &self.scopes.len())
            .finish_non_exhaustive()
    }
}

impl HospitalServer {
    /// Sets up a server in `dir` (which should be empty and private): a new `LocalKms` root
    /// key file `root.key` (mode 0600), a key store `keystore.json` and a database
    /// `readings.db`.
    ///
    /// # Errors
    /// If a file cannot be made or the database cannot be opened.
    pub fn open(dir: &Path, receiver: FrameReceiver) -> Result<Self, HospitalError> {
        let kms = LocalKms::generate_key_file(dir.join("root.key"))?;
        let store = FileKeyStore::open(dir.join("keystore.json"))?;
        let ring = KeyRing::builder(Arc::new(kms), Arc::new(store)).build();
        let db = dir.join("readings.db");
        let mut conn = SqliteConnection::establish(&db.to_string_lossy())?;
        conn.batch_execute(
            "CREATE TABLE readings (id TEXT PRIMARY KEY, device_id TEXT NOT NULL, \
             reading BLOB NOT NULL)",
        )?;
        Ok(Self {
            receiver,
            ring,
            conn,
            scopes: HashSet::new(),
        })
    }

    /// Opens a frame from the gateway and stores the reading it holds, sealed. Returns the
    /// new row's id.
    ///
    /// # Errors
    /// [`HospitalError::Channel`] for a replayed, reordered or tampered frame (nothing is
    /// stored), or a storage error.
    pub fn receive(&mut self, frame: &Frame) -> Result<String, HospitalError> {
        let plaintext = self.receiver.open(frame)?;
        let reading: Reading = serde_json::from_slice(&plaintext)
            .map_err(|_| HospitalError::Malformed { seq: frame.seq })?;
        self.ensure_scope(&reading.device_id)?;
        let id = hex::encode(rand::random::<[u8; 16]>());
        let stored = StoredReading {
            id: id.clone(),
            device_id: reading.device_id.clone(),
            reading: Json(reading),
        };
        diesel::insert_into(readings::table)
            .values(stored.seal_row(&self.ring)?)
            .execute(&mut self.conn)?;
        Ok(id)
    }

    fn ensure_scope(&mut self, device_id: &str) -> Result<(), HospitalError> {
        if self.scopes.contains(device_id) {
            return Ok(());
        }
        let scope = KeyScope::new(&format!("device:{device_id}"))?;
        // Create the scope and accept "already there": listing the versions of a brand-new,
        // empty key store is refused (it has no integrity key yet), and creating directly
        // is one store round-trip either way.
        match self.ring.create_scope(
            &scope,
            &AuditInfo::new("hospital-server", "first reading of a device"),
        ) {
            Ok(_) | Err(leakless::Error::ScopeExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.scopes.insert(device_id.to_owned());
        Ok(())
    }

    /// How many device key scopes the server has set up.
    #[must_use]
    pub fn device_scopes(&self) -> usize {
        self.scopes.len()
    }

    /// Loads and opens every stored reading, sorted by device then timestamp.
    ///
    /// # Errors
    /// If a row cannot be loaded or opened.
    pub fn load_all(&mut self) -> Result<Vec<Reading>, HospitalError> {
        let rows = readings::table
            .select(StoredReadingRow::as_select())
            .load(&mut self.conn)?;
        let mut out: Vec<Reading> = StoredReading::open_rows(rows, &self.ring)?
            .into_iter()
            .map(|s| s.reading.0)
            .collect();
        out.sort_by(|a, b| {
            (a.device_id.as_str(), a.timestamp_ms).cmp(&(b.device_id.as_str(), b.timestamp_ms))
        });
        Ok(out)
    }

    /// The raw stored `reading` column of every row (envelopes), for checks that no
    /// plaintext reached the database.
    ///
    /// # Errors
    /// If the query fails.
    pub fn raw_envelopes(&mut self) -> Result<Vec<Vec<u8>>, HospitalError> {
        Ok(readings::table
            .select(readings::reading)
            .load(&mut self.conn)?)
    }
}
