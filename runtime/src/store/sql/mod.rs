//! Key stores in the application's own database, through diesel: SQLite (feature `sqlite`),
//! PostgreSQL (`postgres`) and MariaDB/MySQL (`mysql`).
//!
//! # Tables
//!
//! * `leakless_kek`: one row per KEK version, primary key `(scope, version)`, with `state`,
//!   `grace_until`, `root_key_id`, `wrapped_kek` (NULL once destroyed), `created_at` and
//!   `updated_at` (Unix seconds). The schema itself allows one `active` version per scope: a
//!   partial unique index on SQLite and PostgreSQL, a generated column `active_one` with a
//!   unique key on MariaDB/MySQL.
//! * `leakless_key_audit`: the audit log, ordered by an auto-increment `id`.
//!
//! [`SqlKeyStore::create_schema`] creates both (idempotent, `CREATE ... IF NOT EXISTS`); to
//! manage them with your own migrations instead, take the statements from
//! [`SqlBackend::schema_sql`].
//!
//! # Atomicity and races
//!
//! [`KeyStore::apply`] runs in one transaction. It first reads every record it updates under
//! a row lock (`SELECT ... FOR UPDATE` on PostgreSQL and MariaDB; SQLite takes the database's
//! write lock up front with `BEGIN IMMEDIATE`) and compares it with the update's `before`
//! exactly as the in-memory store does (state, grace deadline, wrapped material). A mismatch,
//! a missing record, a duplicate insert, a second active version, a deadlock or a
//! serialization failure rolls the whole transaction back and returns
//! [`Error::ConcurrentModification`]. Two processes rotating the same scope at once therefore
//! cannot both win: the second one waits for the first one's row lock and then sees the
//! changed record.
//!
//! # Connections and secrets
//!
//! A store holds one connection behind a mutex and reconnects after the server closed it. The
//! connection URL is kept (zeroized on drop) for reconnecting, but never shown: `Debug`
//! prints the backend and the URL with its password masked ([`redact_url`]), and every error
//! detail is scrubbed of the password.
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # fn main() -> Result<(), leakless::Error> {
//! use leakless::store::sql::SqlKeyStore;
//! let store = SqlKeyStore::connect("postgres://app:secret@db.internal/app")?;
//! store.create_schema()?;
//! assert_eq!(format!("{store:?}"),
//!     r#"SqlKeyStore { backend: "postgres", url: "postgres://app:***@db.internal/app" }"#);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "postgres"))]
//! # fn main() {}
//! ```

mod backend;
mod schema;

#[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
compile_error!("the `sql-store` feature needs at least one of `sqlite`, `postgres`, `mysql`");

use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::key::{
    AuditRecord, Auth, KekRecord, KekState, KekVersion, KeyAction, KeyScope, StoreChange, UnixTime,
    WrappedKek,
};
use crate::redact::{redact_url, scrub};
use crate::store::{KeyStore, cas_matches, paired};

use backend::Conn;

/// A database backend of [`SqlKeyStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SqlBackend {
    /// SQLite (feature `sqlite`).
    Sqlite,
    /// PostgreSQL (feature `postgres`).
    Postgres,
    /// MariaDB or MySQL (feature `mysql`).
    Mysql,
}

impl SqlBackend {
    /// The store name in errors and logs: `"sqlite"`, `"postgres"` or `"mysql"`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            SqlBackend::Sqlite => "sqlite",
            SqlBackend::Postgres => "postgres",
            SqlBackend::Mysql => "mysql",
        }
    }

    /// The statements that create the key-store tables on this backend, in order. Each is
    /// idempotent (`IF NOT EXISTS`); copy them into your migrations if you manage the schema
    /// yourself.
    #[must_use]
    pub fn schema_sql(self) -> &'static [&'static str] {
        match self {
            SqlBackend::Sqlite => schema::SQLITE,
            SqlBackend::Postgres => schema::POSTGRES,
            SqlBackend::Mysql => schema::MYSQL,
        }
    }

    /// The backend a connection URL names: `postgres://` or `postgresql://`, `mysql://` or
    /// `mariadb://`, `sqlite://<path>` or `sqlite:<path>`. `None` for anything else.
    #[must_use]
    pub fn from_url(url: &str) -> Option<Self> {
        let scheme = url.split_once(':')?.0.to_ascii_lowercase();
        match scheme.as_str() {
            "postgres" | "postgresql" => Some(SqlBackend::Postgres),
            "mysql" | "mariadb" => Some(SqlBackend::Mysql),
            "sqlite" => Some(SqlBackend::Sqlite),
            _ => None,
        }
    }
}

impl fmt::Display for SqlBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A [`KeyStore`] in two database tables (see the [module docs](self)).
pub struct SqlKeyStore {
    backend: SqlBackend,
    /// What `connect` needs again on reconnect: a URL or an SQLite path. Never printed.
    target: Zeroizing<String>,
    /// `target` with its password masked.
    shown: String,
    conn: Mutex<Option<Conn>>,
}

impl fmt::Debug for SqlKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlKeyStore")
            .field("backend", &self.backend.name())
            .field("url", &self.shown)
            .finish()
    }
}

/// Why a database call failed, before it becomes an [`Error`].
#[derive(Debug)]
pub(crate) enum Failure {
    /// A compare-and-swap precondition failed, or a uniqueness rule was hit.
    Conflict {
        scope: KeyScope,
        version: KekVersion,
    },
    /// The database said no.
    Db(DieselError),
    /// A stored row cannot be decoded.
    Corrupt(Corrupt),
    /// An argument is invalid.
    Invalid(Error),
}

impl From<DieselError> for Failure {
    fn from(e: DieselError) -> Self {
        Failure::Db(e)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Invalid(e)
    }
}

impl SqlKeyStore {
    /// Opens (creating it with mode `0600` if missing) the SQLite database at `path`.
    ///
    /// # Errors
    /// [`Error::KeyStore`] when the file cannot be created or opened.
    #[cfg(feature = "sqlite")]
    pub fn sqlite(path: impl AsRef<std::path::Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = path.to_str().ok_or_else(|| Error::KeyStore {
            store: SqlBackend::Sqlite.name(),
            operation: "connect",
            detail: format!("{}: path is not UTF-8", path.display()),
        })?;
        Self::open(SqlBackend::Sqlite, text.to_owned())
    }

    /// Connects to PostgreSQL (`postgres://user:password@host:port/db?sslmode=...`).
    ///
    /// # Errors
    /// [`Error::KeyStore`] when the connection fails (the detail never holds the password).
    #[cfg(feature = "postgres")]
    pub fn postgres(url: &str) -> Result<Self, Error> {
        Self::open(SqlBackend::Postgres, url.to_owned())
    }

    /// Connects to MariaDB or MySQL (`mysql://user:password@host:port/db`).
    ///
    /// # Errors
    /// [`Error::KeyStore`] when the connection fails (the detail never holds the password).
    #[cfg(feature = "mysql")]
    pub fn mysql(url: &str) -> Result<Self, Error> {
        Self::open(SqlBackend::Mysql, url.to_owned())
    }

    /// Connects to the backend `url` names (see [`SqlBackend::from_url`]): `postgres://...`,
    /// `mysql://...` (also `mariadb://...`), or `sqlite://<path>` / `sqlite:<path>`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an unknown scheme or a backend whose cargo feature is off;
    /// [`Error::KeyStore`] when the connection fails.
    pub fn connect(url: &str) -> Result<Self, Error> {
        let backend = SqlBackend::from_url(url).ok_or_else(|| Error::InvalidInput {
            what: "key store URL",
            problem: format!(
                "{}: expected postgres://, mysql:// or sqlite://",
                redact_url(url)
            ),
        })?;
        let target = match backend {
            SqlBackend::Sqlite => {
                let path = url.get("sqlite:".len()..).unwrap_or_default();
                path.strip_prefix("//").unwrap_or(path).to_owned()
            }
            SqlBackend::Mysql => match url.get(.."mariadb:".len()) {
                Some(s) if s.eq_ignore_ascii_case("mariadb:") => {
                    format!("mysql:{}", url.get("mariadb:".len()..).unwrap_or_default())
                }
                _ => url.to_owned(),
            },
            SqlBackend::Postgres => url.to_owned(),
        };
        Self::open(backend, target)
    }

    fn open(backend: SqlBackend, target: String) -> Result<Self, Error> {
        let target = Zeroizing::new(target);
        let shown = redact_url(&target);
        let store = Self {
            backend,
            target,
            shown,
            conn: Mutex::new(None),
        };
        let conn = store.establish()?;
        *store.lock() = Some(conn);
        Ok(store)
    }

    /// The backend.
    #[must_use]
    pub fn backend(&self) -> SqlBackend {
        self.backend
    }

    /// Creates the two tables and their indexes if they do not exist yet. Safe to call on
    /// every start.
    ///
    /// # Errors
    /// [`Error::KeyStore`] when the database refuses (e.g. no `CREATE` privilege).
    pub fn create_schema(&self) -> Result<(), Error> {
        self.with_conn("create schema", |c| c.create_schema().map_err(Failure::Db))
    }

    fn lock(&self) -> MutexGuard<'_, Option<Conn>> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn establish(&self) -> Result<Conn, Error> {
        Conn::establish(self.backend, &self.target).map_err(|detail| Error::KeyStore {
            store: self.backend.name(),
            operation: "connect",
            detail: format!("{}: {}", self.shown, scrub(&detail, &self.target)),
        })
    }

    fn error(&self, operation: &'static str, failure: Failure) -> Error {
        match failure {
            Failure::Conflict { scope, version } => {
                Error::ConcurrentModification { scope, version }
            }
            Failure::Invalid(e) => e,
            Failure::Corrupt(c) => Error::KeyStoreCorrupt {
                store: self.backend.name(),
                record: c.record,
                field: c.field,
                problem: c.problem,
            },
            Failure::Db(e) => Error::KeyStore {
                store: self.backend.name(),
                operation,
                detail: scrub(&e.to_string(), &self.target),
            },
        }
    }

    /// Runs `f` on the connection, connecting first if an earlier call found it closed.
    fn with_conn<T>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&mut Conn) -> Result<T, Failure>,
    ) -> Result<T, Error> {
        let mut guard = self.lock();
        let conn = match guard.take() {
            Some(conn) => conn,
            None => self.establish()?,
        };
        let conn = guard.insert(conn);
        let result = f(conn);
        if let Err(Failure::Db(e)) = &result
            && is_broken(e)
        {
            tracing::warn!(
                store = self.backend.name(),
                operation,
                "key store connection lost; reconnecting on the next call"
            );
            *guard = None;
        }
        result.map_err(|e| self.error(operation, e))
    }
}

/// Whether the connection is unusable after `e`.
fn is_broken(e: &DieselError) -> bool {
    match e {
        DieselError::BrokenTransactionManager => true,
        DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => true,
        DieselError::DatabaseError(_, info) => {
            let m = info.message();
            m.contains("server has gone away")
                || m.contains("Lost connection")
                || m.contains("server closed the connection")
                || m.contains("terminating connection")
        }
        _ => false,
    }
}

/// Whether `e` means another transaction won a race. diesel reports a serialization failure
/// (PostgreSQL SQLSTATE 40001) and a MariaDB/MySQL deadlock (error 1213) as
/// `SerializationFailure`, but a PostgreSQL deadlock (SQLSTATE 40P01) only as `Unknown` with
/// the server's message, which is all there is to match on.
fn is_lost_race(e: &DieselError) -> bool {
    match e {
        DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => true,
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            info.message().starts_with("deadlock detected")
        }
        _ => false,
    }
}

/// A `leakless_kek` row as selected: scope, version, state, grace_until, root_key_id,
/// wrapped_kek, created_at, updated_at, deactivated_at, recheck_secs, seq, tag.
pub(crate) type KekRow = (
    String,
    i64,
    String,
    Option<i64>,
    Option<String>,
    Option<Vec<u8>>,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<Vec<u8>>,
);

/// A `leakless_key_audit` row without its id: at, actor, reason, action, scope, version,
/// from_state, from_grace_until, to_state, to_grace_until, seq, tag.
pub(crate) type AuditRow = (
    i64,
    String,
    String,
    String,
    String,
    i64,
    Option<String>,
    Option<i64>,
    String,
    Option<i64>,
    Option<i64>,
    Option<Vec<u8>>,
);

/// A stored row that cannot be decoded, before the store's name is added.
#[derive(Debug)]
pub(crate) struct Corrupt {
    record: String,
    field: &'static str,
    problem: String,
}

fn corrupt(record: &str, field: &'static str, problem: String) -> Failure {
    Failure::Corrupt(Corrupt {
        record: record.to_owned(),
        field,
        problem,
    })
}

fn decode_auth(
    seq: Option<i64>,
    tag: Option<Vec<u8>>,
    record: &str,
) -> Result<Option<Auth>, Failure> {
    let Some((seq, tag)) = paired(seq, tag, || unpaired(record, "seq, tag"))? else {
        return Ok(None);
    };
    let seq =
        u64::try_from(seq).map_err(|_| corrupt(record, "seq", format!("{seq} is negative")))?;
    let tag: [u8; 32] = tag
        .as_slice()
        .try_into()
        .map_err(|_| corrupt(record, "tag", format!("{} bytes, expected 32", tag.len())))?;
    Ok(Some(Auth { seq, tag }))
}

/// Two columns of a stored row of which only one is set.
fn unpaired(record: &str, fields: &'static str) -> Failure {
    corrupt(
        record,
        fields,
        "must both be set or both be NULL".to_owned(),
    )
}

fn decode_scope(scope: &str, record: &str) -> Result<KeyScope, Failure> {
    KeyScope::new(scope).map_err(|e| match e {
        Error::InvalidInput { problem, .. } => corrupt(record, "scope", problem),
        other => Failure::Invalid(other),
    })
}

fn decode_version(v: i64, record: &str) -> Result<KekVersion, Failure> {
    u32::try_from(v)
        .ok()
        .and_then(|v| KekVersion::new(v).ok())
        .ok_or_else(|| corrupt(record, "version", format!("{v} is not a KEK version")))
}

fn decode_state(
    state: &str,
    grace_until: Option<i64>,
    record: &str,
    field: &'static str,
) -> Result<KekState, Failure> {
    KekState::from_parts(state, grace_until).map_err(|_| {
        corrupt(
            record,
            field,
            crate::store::state_problem(state, grace_until),
        )
    })
}

pub(crate) fn decode_record(row: KekRow) -> Result<KekRecord, Failure> {
    let (
        scope,
        version,
        state,
        grace_until,
        root_key_id,
        wrapped,
        created_at,
        updated_at,
        deactivated_at,
        recheck_secs,
        seq,
        tag,
    ) = row;
    let record = format!("key record {scope} v{version}");
    let record = record.as_str();
    let auth = decode_auth(seq, tag, record)?;
    let recheck_secs = match recheck_secs {
        None => crate::key::LEGACY_RECHECK_SECS,
        Some(v) => u32::try_from(v)
            .map_err(|_| corrupt(record, "recheck_secs", format!("{v} is out of range")))?,
    };
    let wrapped = paired(root_key_id, wrapped, || {
        unpaired(record, "root_key_id, wrapped_kek")
    })?
    .map(|(root_key_id, ciphertext)| WrappedKek {
        root_key_id,
        ciphertext,
    });
    Ok(KekRecord {
        scope: decode_scope(&scope, record)?,
        version: decode_version(version, record)?,
        state: decode_state(&state, grace_until, record, "state")?,
        wrapped,
        created_at: UnixTime(created_at),
        updated_at: UnixTime(updated_at),
        deactivated_at: deactivated_at.map(UnixTime),
        recheck_secs,
        auth,
    })
}

pub(crate) fn decode_audit(row: AuditRow) -> Result<AuditRecord, Failure> {
    let (
        at,
        actor,
        reason,
        action,
        scope,
        version,
        from_state,
        from_grace,
        to_state,
        to_grace,
        seq,
        tag,
    ) = row;
    let record = format!("audit entry of {scope} v{version}");
    let record = record.as_str();
    let auth = decode_auth(seq, tag, record)?;
    Ok(AuditRecord {
        at: UnixTime(at),
        actor,
        reason,
        action: KeyAction::from_name(&action)
            .ok_or_else(|| corrupt(record, "action", format!("unknown action {action:?}")))?,
        scope: decode_scope(&scope, record)?,
        version: decode_version(version, record)?,
        from: from_state
            .map(|s| decode_state(&s, from_grace, record, "from_state"))
            .transpose()?,
        to: decode_state(&to_state, to_grace, record, "to_state")?,
        auth,
    })
}

/// Checks one compare-and-swap precondition against the row read under lock.
pub(crate) fn check_cas(stored: Option<KekRow>, expected: &KekRecord) -> Result<(), Failure> {
    let matches = match stored {
        Some(row) => cas_matches(&decode_record(row)?, expected),
        None => false,
    };
    if matches {
        Ok(())
    } else {
        Err(conflict(expected))
    }
}

pub(crate) fn conflict(record: &KekRecord) -> Failure {
    Failure::Conflict {
        scope: record.scope.clone(),
        version: record.version,
    }
}

/// Turns a uniqueness violation (duplicate `(scope, version)`, a second active version) into a
/// conflict on `record`.
pub(crate) fn unique_is_conflict<T>(
    result: Result<T, DieselError>,
    record: &KekRecord,
) -> Result<T, Failure> {
    result.map_err(|e| match e {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => conflict(record),
        other => Failure::Db(other),
    })
}

/// Checks what the tables cannot: an update keeps its record's identity.
fn validate(change: &StoreChange) -> Result<(), Error> {
    for u in &change.updates {
        if u.before.scope != u.after.scope || u.before.version != u.after.version {
            return Err(Error::Internal {
                what: "key store update",
                problem: format!(
                    "an update of {} {} may not change the record's scope or version",
                    u.before.scope, u.before.version
                ),
            });
        }
    }
    Ok(())
}

impl KeyStore for SqlKeyStore {
    fn name(&self) -> &'static str {
        self.backend.name()
    }

    fn list(&self, scope: &KeyScope) -> Result<Vec<KekRecord>, Error> {
        self.with_conn("list", |c| {
            let rows = c.list(scope.as_str())?;
            let mut records = rows
                .into_iter()
                .map(decode_record)
                .collect::<Result<Vec<_>, _>>()?;
            records.sort_by_key(|r| r.version);
            Ok(records)
        })
    }

    fn get(&self, scope: &KeyScope, version: KekVersion) -> Result<Option<KekRecord>, Error> {
        self.with_conn("get", |c| {
            c.get(scope.as_str(), i64::from(version.get()))?
                .map(decode_record)
                .transpose()
        })
    }

    fn scopes(&self) -> Result<Vec<KeyScope>, Error> {
        self.with_conn("scopes", |c| {
            let mut scopes = c
                .scopes()?
                .iter()
                .map(|s| decode_scope(s, &format!("key record of scope {s:?}")))
                .collect::<Result<Vec<_>, _>>()?;
            scopes.sort();
            scopes.dedup();
            Ok(scopes)
        })
    }

    fn apply(&self, change: StoreChange) -> Result<(), Error> {
        validate(&change)?;
        self.with_conn("apply", |c| {
            c.apply(&change).map_err(|f| match f {
                // A deadlock or serialization failure means another writer got there first.
                Failure::Db(e) if is_lost_race(&e) => match change
                    .updates
                    .first()
                    .map(|u| &u.before)
                    .or(change.inserts.first())
                {
                    Some(record) => conflict(record),
                    None => Failure::Db(e),
                },
                other => other,
            })
        })
    }

    fn audit_log(&self, scope: Option<&KeyScope>) -> Result<Vec<AuditRecord>, Error> {
        self.with_conn("audit log", |c| {
            c.audit(scope.map(KeyScope::as_str))?
                .into_iter()
                .map(decode_audit)
                .collect::<Result<Vec<_>, _>>()
        })
    }

    fn audit_since(&self, from: u64) -> Result<Vec<AuditRecord>, Error> {
        if from == 0 {
            let mut log = self.audit_log(None)?;
            log.sort_by_key(|a| a.auth.map_or(0, |x| x.seq));
            return Ok(log);
        }
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        self.with_conn("audit log", |c| {
            c.audit_since(from)?
                .into_iter()
                .map(decode_audit)
                .collect::<Result<Vec<_>, _>>()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_backend_and_redacted_url_only() {
        let store = SqlKeyStore {
            backend: SqlBackend::Mysql,
            target: Zeroizing::new("mysql://app:p@ss:w0rd@db:3306/keys".into()),
            shown: redact_url("mysql://app:p@ss:w0rd@db:3306/keys"),
            conn: Mutex::new(None),
        };
        let debug = format!("{store:?}");
        assert_eq!(
            debug,
            r#"SqlKeyStore { backend: "mysql", url: "mysql://app:***@db:3306/keys" }"#
        );
        assert!(!debug.contains("w0rd"));
    }

    #[test]
    fn database_errors_are_scrubbed_of_the_password() {
        let store = SqlKeyStore {
            backend: SqlBackend::Postgres,
            target: Zeroizing::new("postgres://app:hunter2hunter2@db/keys".into()),
            shown: redact_url("postgres://app:hunter2hunter2@db/keys"),
            conn: Mutex::new(None),
        };
        let err = store.error(
            "list",
            Failure::Db(DieselError::QueryBuilderError(
                "echo postgres://app:hunter2hunter2@db/keys".into(),
            )),
        );
        let text = format!("{err} {err:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(matches!(
            err,
            Error::KeyStore {
                store: "postgres",
                operation: "list",
                ..
            }
        ));
    }

    #[test]
    fn backends_from_url() {
        assert_eq!(
            SqlBackend::from_url("postgres://h/db"),
            Some(SqlBackend::Postgres)
        );
        assert_eq!(
            SqlBackend::from_url("PostgreSQL://h/db"),
            Some(SqlBackend::Postgres)
        );
        assert_eq!(SqlBackend::from_url("mysql://h/"), Some(SqlBackend::Mysql));
        assert_eq!(
            SqlBackend::from_url("mariadb://h/"),
            Some(SqlBackend::Mysql)
        );
        assert_eq!(
            SqlBackend::from_url("sqlite:///tmp/x.db"),
            Some(SqlBackend::Sqlite)
        );
        assert_eq!(SqlBackend::from_url("/tmp/x.db"), None);
        assert_eq!(SqlBackend::from_url("redis://h"), None);
        for backend in [SqlBackend::Sqlite, SqlBackend::Postgres, SqlBackend::Mysql] {
            assert!(
                backend
                    .schema_sql()
                    .iter()
                    .any(|s| s.contains("leakless_kek"))
            );
        }
    }
}
