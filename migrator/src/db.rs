//! One database connection on PostgreSQL, MariaDB/MySQL or SQLite, through diesel, with the
//! few dialect differences the migrator needs (identifier quoting, placeholders, how a row
//! identity is read as text and bound back).
//!
//! Table and column names come from the schema manifest, never from row data; they are
//! checked to be plain identifiers ([`ident`]) before they are put into SQL. Every value is a
//! bound parameter.

use std::fmt;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Binary, Nullable, Text};
use diesel::{MysqlConnection, PgConnection, SqliteConnection};
use leakless::manifest::RowIdKind;
use leakless::redact::{redact_url, scrub};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Failure, Kind};

/// Which database a connection talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// MariaDB or MySQL.
    Mysql,
    /// SQLite.
    Sqlite,
}

impl Backend {
    /// `"postgres"`, `"mysql"` or `"sqlite"`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Mysql => "mysql",
            Backend::Sqlite => "sqlite",
        }
    }
}

/// A database URL, kept zeroized, shown only redacted.
#[derive(Clone)]
pub struct DbUrl {
    backend: Backend,
    /// What diesel connects with (URL or SQLite path).
    target: Zeroizing<String>,
    shown: String,
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbUrl({})", self.shown)
    }
}

impl DbUrl {
    /// Parses `postgres://`/`postgresql://`, `mysql://`/`mariadb://`, `sqlite://PATH`,
    /// `sqlite:PATH`, or a bare path to an existing SQLite file.
    ///
    /// # Errors
    /// [`Kind::Usage`], never echoing what was given beyond a URL's scheme: an unknown scheme
    /// (`pgsql://`), a libpq keyword string (`host=db user=app password=...`), a URL whose
    /// user-info holds an unescaped `@ ? # /` or a space (the driver would split it elsewhere
    /// and print part of the password as a host name), or a bare path with no file there (a
    /// typo would create an empty SQLite database; `sqlite://PATH` creates one on purpose).
    pub fn parse(url: &str) -> Result<Self, Failure> {
        let lower = url.to_ascii_lowercase();
        let usage = |what: String, help: &str| Failure::new(Kind::Usage, what, help.to_owned());
        if let Some((scheme, rest)) = url.split_once("://") {
            let known = ["postgres", "postgresql", "mysql", "mariadb", "sqlite"];
            if !known.contains(&scheme.to_ascii_lowercase().as_str()) {
                let scheme = if scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                {
                    scheme
                } else {
                    "(not a scheme)"
                };
                return Err(usage(
                    format!("unknown database URL scheme `{scheme}://`"),
                    "use postgres://, postgresql://, mysql://, mariadb:// or sqlite://PATH",
                ));
            }
            if !scheme.eq_ignore_ascii_case("sqlite")
                && let Some(at) = rest.rfind('@')
                && rest
                    .get(..at)
                    .unwrap_or_default()
                    .chars()
                    .any(|c| "@?#/".contains(c) || c.is_whitespace())
            {
                return Err(usage(
                    "the database URL's user or password holds an unescaped `@`, `?`, `#`, `/` \
                     or space"
                        .to_owned(),
                    "percent-encode them in the URL: @ as %40, ? as %3F, # as %23, / as %2F, \
                     space as %20",
                ));
            }
        } else if url.split_whitespace().count() > 1
            && url.split_whitespace().any(|w| {
                w.split_once('=').is_some_and(|(k, _)| {
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_alphabetic() || c == '_')
                })
            })
        {
            return Err(usage(
                "the database URL looks like a libpq keyword string (`host=... user=...`), \
                 which is not supported"
                    .to_owned(),
                "pass a URL instead: postgres://USER:PASSWORD@HOST:PORT/DB, with the password \
                 percent-encoded",
            ));
        }
        let (backend, target) =
            if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
                (Backend::Postgres, url.to_owned())
            } else if lower.starts_with("mysql://") {
                (Backend::Mysql, url.to_owned())
            } else if lower.starts_with("mariadb://") {
                (
                    Backend::Mysql,
                    format!(
                        "mysql://{}",
                        url.get("mariadb://".len()..).unwrap_or_default()
                    ),
                )
            } else if lower.starts_with("sqlite:") {
                let path = url.get("sqlite:".len()..).unwrap_or_default();
                (
                    Backend::Sqlite,
                    path.strip_prefix("//").unwrap_or(path).to_owned(),
                )
            } else {
                if !std::path::Path::new(url).is_file() {
                    return Err(usage(
                        format!("no SQLite database file at {url}"),
                        "check the path; to create a new SQLite database, pass sqlite://PATH",
                    ));
                }
                (Backend::Sqlite, url.to_owned())
            };
        Ok(Self {
            backend,
            shown: redact_url(url),
            target: Zeroizing::new(target),
        })
    }

    /// The backend.
    #[must_use]
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL with its password masked: the only form ever printed.
    #[must_use]
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The URL the runtime's SQL key store accepts for the same database.
    #[must_use]
    pub fn key_store_url(&self) -> Zeroizing<String> {
        match self.backend {
            Backend::Sqlite => Zeroizing::new(format!("sqlite://{}", &*self.target)),
            _ => self.target.clone(),
        }
    }

    /// Opens a connection.
    ///
    /// # Errors
    /// [`Kind::Database`] naming the redacted URL; the password never appears.
    pub fn connect(&self) -> Result<Db, Failure> {
        let fail = |e: ConnectionError| {
            Failure::new(
                Kind::Database,
                format!(
                    "cannot connect to {}: {}",
                    self.shown,
                    scrub(&e.to_string(), &self.target)
                ),
                "check that the server runs and the URL (--database-url or \
                 LEAKLESS_DATABASE_URL) is right",
            )
        };
        let conn = match self.backend {
            Backend::Postgres => Conn::Pg(PgConnection::establish(&self.target).map_err(fail)?),
            Backend::Mysql => {
                let mut c = MysqlConnection::establish(&self.target).map_err(fail)?;
                // A compare-and-swap retry must read the latest committed value, not the
                // snapshot REPEATABLE READ (MariaDB's default) would keep showing.
                c.batch_execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .map_err(|e| db_failure("configure MariaDB", &e, &self.target))?;
                Conn::My(c)
            }
            Backend::Sqlite => {
                let mut c = SqliteConnection::establish(&self.target).map_err(fail)?;
                c.batch_execute("PRAGMA busy_timeout = 30000;")
                    .map_err(|e| db_failure("configure SQLite", &e, &self.target))?;
                Conn::Lite(c)
            }
        };
        Ok(Db {
            conn,
            backend: self.backend,
            target: self.target.clone(),
        })
    }
}

fn db_failure(operation: &str, e: &diesel::result::Error, target: &str) -> Failure {
    Failure::new(
        Kind::Database,
        format!(
            "database: {operation} failed: {}",
            scrub(&e.to_string(), target)
        ),
        "check the database is reachable and the migrator's user may read and write the \
         tables named; rerunning is safe (finished batches are checkpointed)",
    )
}

enum Conn {
    Pg(PgConnection),
    My(MysqlConnection),
    Lite(SqliteConnection),
}

/// A bound parameter.
#[derive(Clone)]
pub enum Bind {
    /// Text (or NULL).
    Text(Option<String>),
    /// Bytes (or NULL).
    Bytes(Option<Vec<u8>>),
    /// An integer.
    Int(i64),
}

impl fmt::Debug for Bind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Bound values can be envelopes or (during adoption) plaintext: never print them.
        f.write_str("Bind(..)")
    }
}

/// One compare-and-swap write: set the row `id` to `new` if it still holds `old` (`None`:
/// still NULL).
pub struct CasWrite {
    /// The row identity as text.
    pub id: String,
    /// The value read.
    pub old: Option<Vec<u8>>,
    /// The value to write.
    pub new: Vec<u8>,
    /// `reindex`: the sealed value the new token was computed from; the write happens only if
    /// the sealed column still holds it (`None` in the other modes).
    pub guard: Option<Vec<u8>>,
    /// PostgreSQL: the physical row address (`ctid`) read with the row, so the update finds
    /// the row without an index look-up. Checked together with the id and the old value, so a
    /// moved or updated row simply loses the compare-and-swap and is read again.
    pub tid: Option<String>,
}

impl fmt::Debug for CasWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CasWrite({}, ..)", self.id)
    }
}

/// A row identity (as text) and a binary value.
#[derive(QueryableByName)]
pub struct IdBytes {
    /// The row identity, rendered as text by [`Db::id_text`].
    #[diesel(sql_type = Text)]
    pub id: String,
    /// The value.
    #[diesel(sql_type = Nullable<Binary>)]
    pub val: Option<Vec<u8>>,
}

/// A row identity (as text), a binary value and the row's tenant as text (per-tenant tables).
#[derive(QueryableByName)]
pub struct IdBytesTenant {
    /// The row identity, rendered as text by [`Db::id_text`].
    #[diesel(sql_type = Text)]
    pub id: String,
    /// The value.
    #[diesel(sql_type = Nullable<Binary>)]
    pub val: Option<Vec<u8>>,
    /// The tenant column as text, or NULL (static-scope tables).
    #[diesel(sql_type = Nullable<Text>)]
    pub tenant: Option<String>,
}

impl fmt::Debug for IdBytesTenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdBytesTenant({}, ..)", self.id)
    }
}

impl fmt::Debug for IdBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdBytes({}, ..)", self.id)
    }
}

/// A row identity, a binary value and a second binary value (adoption: sealed and plain),
/// and on PostgreSQL the row's `ctid`.
#[derive(QueryableByName)]
pub struct IdTwo {
    /// PostgreSQL `ctid` as text; NULL elsewhere.
    #[diesel(sql_type = Nullable<Text>)]
    pub tid: Option<String>,
    /// The row identity as text.
    #[diesel(sql_type = Text)]
    pub id: String,
    /// The first value.
    #[diesel(sql_type = Nullable<Binary>)]
    pub a: Option<Vec<u8>>,
    /// The second value.
    #[diesel(sql_type = Nullable<Binary>)]
    pub b: Option<Vec<u8>>,
    /// Per-tenant tables: the tenant column as text (see [`crate::tenant::TenantScope`]);
    /// NULL elsewhere.
    #[diesel(sql_type = Nullable<Text>)]
    pub tenant: Option<String>,
}

/// The values may be legacy plaintext (`adopt`, `verify`): wiped when the row is dropped.
impl Drop for IdTwo {
    fn drop(&mut self) {
        self.a.zeroize();
        self.b.zeroize();
    }
}

impl fmt::Debug for IdTwo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdTwo({}, ..)", self.id)
    }
}

/// One text value.
#[derive(QueryableByName, Debug)]
pub struct OneText {
    /// The value.
    #[diesel(sql_type = Text)]
    pub id: String,
}

/// A binary value (a token's version prefix), the tenant (per-tenant index keys; NULL
/// otherwise) and how many rows hold it.
#[derive(QueryableByName, Debug)]
pub struct BytesCount {
    /// The tenant column as text, or NULL.
    #[diesel(sql_type = Nullable<Text>)]
    pub tenant: Option<String>,
    /// The value.
    #[diesel(sql_type = Nullable<Binary>)]
    pub val: Option<Vec<u8>>,
    /// Rows.
    #[diesel(sql_type = BigInt)]
    pub n: i64,
}

/// One count.
#[derive(QueryableByName, Debug)]
pub struct OneInt {
    /// The value.
    #[diesel(sql_type = BigInt)]
    pub n: i64,
}

/// A chunk row of the checkpoint table.
#[derive(QueryableByName, Debug)]
pub struct ChunkRow {
    /// Chunk number.
    #[diesel(sql_type = BigInt)]
    pub chunk_no: i64,
    /// Lower bound (inclusive), as id text; `None` = unbounded.
    #[diesel(sql_type = Nullable<Text>)]
    pub lo: Option<String>,
    /// Upper bound (exclusive), as id text; `None` = unbounded.
    #[diesel(sql_type = Nullable<Text>)]
    pub hi: Option<String>,
}

macro_rules! bind_all {
    ($q:expr, $binds:expr) => {{
        let mut q = $q;
        for b in $binds {
            q = match b {
                Bind::Text(t) => q.bind::<Nullable<Text>, _>(t.clone()),
                Bind::Bytes(v) => q.bind::<Nullable<Binary>, _>(v.clone()),
                Bind::Int(i) => q.bind::<BigInt, _>(*i),
            };
        }
        q
    }};
}

/// An open connection.
pub struct Db {
    conn: Conn,
    backend: Backend,
    target: Zeroizing<String>,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Db({})", self.backend.name())
    }
}

/// Checks that `name` is a plain SQL identifier (letters, digits, `_`, not starting with a
/// digit, at most 63 bytes), so it can be quoted into a statement.
///
/// # Errors
/// [`Kind::Usage`] naming the identifier.
pub fn ident(name: &str) -> Result<&str, Failure> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes().first().is_some_and(u8::is_ascii_digit);
    if ok {
        Ok(name)
    } else {
        Err(Failure::new(
            Kind::Usage,
            format!("{name:?} is not a plain SQL identifier"),
            "table and column names in the manifest must be letters, digits and _",
        ))
    }
}

impl Db {
    /// The backend.
    #[must_use]
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// `name` quoted as an identifier (call [`ident`] first).
    #[must_use]
    pub fn q(&self, name: &str) -> String {
        match self.backend {
            Backend::Mysql => format!("`{name}`"),
            _ => format!("\"{name}\""),
        }
    }

    /// The `n`-th placeholder (1-based).
    #[must_use]
    pub fn ph(&self, n: usize) -> String {
        match self.backend {
            Backend::Postgres => format!("${n}"),
            _ => "?".to_owned(),
        }
    }

    /// SQL rendering the id column `col` (of manifest kind `kind`) as text.
    #[must_use]
    pub fn id_text(&self, kind: RowIdKind, col: &str) -> String {
        let c = self.q(col);
        match (self.backend, kind) {
            (Backend::Postgres, RowIdKind::Bytes) => format!("encode({c}, 'hex')"),
            (Backend::Postgres, RowIdKind::Text) => c,
            (Backend::Postgres, RowIdKind::Int | RowIdKind::Uuid) => format!("{c}::text"),
            (Backend::Mysql, RowIdKind::Bytes | RowIdKind::Uuid) => format!("LOWER(HEX({c}))"),
            (Backend::Mysql, RowIdKind::Text) => c,
            (Backend::Mysql, RowIdKind::Int) => format!("CAST({c} AS CHAR)"),
            (Backend::Sqlite, RowIdKind::Bytes | RowIdKind::Uuid) => format!("lower(hex({c}))"),
            (Backend::Sqlite, RowIdKind::Text) => c,
            (Backend::Sqlite, RowIdKind::Int) => format!("CAST({c} AS TEXT)"),
        }
    }

    /// SQL turning the text expression `expr` back into the id column's type.
    #[must_use]
    pub fn id_from_text(&self, kind: RowIdKind, expr: &str) -> String {
        match (self.backend, kind) {
            (Backend::Postgres, RowIdKind::Uuid) => format!("CAST({expr} AS uuid)"),
            (Backend::Postgres, RowIdKind::Int) => format!("CAST({expr} AS bigint)"),
            (Backend::Postgres, RowIdKind::Bytes) => format!("decode({expr}, 'hex')"),
            (Backend::Mysql, RowIdKind::Bytes | RowIdKind::Uuid) => format!("UNHEX({expr})"),
            (Backend::Mysql, RowIdKind::Int) => format!("CAST({expr} AS SIGNED)"),
            (Backend::Sqlite, RowIdKind::Bytes | RowIdKind::Uuid) => format!("unhex({expr})"),
            (Backend::Sqlite, RowIdKind::Int) => format!("CAST({expr} AS INTEGER)"),
            (_, RowIdKind::Text) => expr.to_owned(),
        }
    }

    /// SQL for a random order.
    #[must_use]
    pub fn random(&self) -> &'static str {
        match self.backend {
            Backend::Mysql => "RAND()",
            _ => "random()",
        }
    }

    /// The declared type of `table.column` (the table as an unqualified statement finds it) as
    /// the database names it (PostgreSQL and MariaDB:
    /// `information_schema.columns.data_type`, e.g. `bytea`, `jsonb`, `character varying`,
    /// `longblob`; SQLite: the declared type, e.g. `BLOB`), or `None` when the table has no such
    /// column.
    ///
    /// # Errors
    /// [`Kind::Database`].
    pub fn column_type(&mut self, table: &str, column: &str) -> Result<Option<String>, Failure> {
        let sql = match self.backend() {
            // The schema the search path resolves the table name to, as an unqualified
            // statement would.
            Backend::Postgres => {
                "SELECT data_type AS id FROM information_schema.columns \
                 WHERE table_schema = (SELECT n.nspname FROM pg_class c \
                   JOIN pg_namespace n ON n.oid = c.relnamespace \
                   WHERE c.oid = to_regclass(quote_ident($1))) \
                 AND table_name = $1 AND column_name = $2"
            }
            Backend::Mysql => {
                "SELECT CAST(DATA_TYPE AS CHAR) AS id FROM information_schema.columns \
                 WHERE table_schema = DATABASE() AND table_name = ? AND column_name = ?"
            }
            Backend::Sqlite => "SELECT type AS id FROM pragma_table_info(?) WHERE name = ?",
        };
        let binds = [
            Bind::Text(Some(table.to_owned())),
            Bind::Text(Some(column.to_owned())),
        ];
        let types: Vec<OneText> = self.load(sql, &binds)?;
        Ok(types.into_iter().next().map(|r| r.id))
    }

    /// Checks that the manifest's sealed column `table.column` and the table's row id column
    /// exist, before any statement names them.
    ///
    /// # Errors
    /// [`Kind::Usage`] naming what is missing (a manifest ahead of or behind the database);
    /// [`Kind::Database`].
    pub fn require_column(
        &mut self,
        table: &str,
        row_id: &str,
        column: &str,
    ) -> Result<(), Failure> {
        for c in [row_id, column] {
            if self.column_type(table, c)?.is_none() {
                return Err(Failure::new(
                    Kind::Usage,
                    format!("the manifest names {table}.{c}, which the database does not have"),
                    "run the application's migrations first, or fix the manifest (regenerate \
                     it from the models)",
                ));
            }
        }
        Ok(())
    }

    /// Runs statements without parameters.
    ///
    /// # Errors
    /// [`Kind::Database`].
    pub fn batch(&mut self, sql: &str) -> Result<(), Failure> {
        let r = match &mut self.conn {
            Conn::Pg(c) => c.batch_execute(sql),
            Conn::My(c) => c.batch_execute(sql),
            Conn::Lite(c) => c.batch_execute(sql),
        };
        r.map_err(|e| db_failure("statement", &e, &self.target))
    }

    /// Starts a transaction (`BEGIN IMMEDIATE` on SQLite, so writers queue up front).
    ///
    /// # Errors
    /// [`Kind::Database`].
    pub fn begin(&mut self) -> Result<(), Failure> {
        match self.backend {
            Backend::Sqlite => self.batch("BEGIN IMMEDIATE"),
            _ => self.batch("BEGIN"),
        }
    }

    /// Commits.
    ///
    /// # Errors
    /// [`Kind::Database`].
    pub fn commit(&mut self) -> Result<(), Failure> {
        self.batch("COMMIT")
    }

    /// Rolls back, ignoring errors (the connection may be gone already).
    pub fn rollback(&mut self) {
        let _ = self.batch("ROLLBACK");
    }

    /// Runs `f` in one transaction: commits when it returns `Ok`, rolls back when it fails.
    ///
    /// # Errors
    /// [`Kind::Database`] from `BEGIN` or `COMMIT`, or the error of `f`.
    pub fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        self.begin()?;
        match f(self) {
            Ok(v) => {
                self.commit()?;
                Ok(v)
            }
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    /// Runs one statement with parameters; returns the affected row count.
    ///
    /// # Errors
    /// [`Kind::Database`].
    pub fn exec(&mut self, sql: &str, binds: &[Bind]) -> Result<usize, Failure> {
        let r = match &mut self.conn {
            Conn::Pg(c) => bind_all!(diesel::sql_query(sql).into_boxed(), binds).execute(c),
            Conn::My(c) => bind_all!(diesel::sql_query(sql).into_boxed(), binds).execute(c),
            Conn::Lite(c) => bind_all!(diesel::sql_query(sql).into_boxed(), binds).execute(c),
        };
        r.map_err(|e| db_failure("update", &e, &self.target))
    }

    /// Runs `sql`, a query of one count `n` (`SELECT COUNT(*) AS n ...`), and returns it: 0
    /// when there is no row.
    ///
    /// # Errors
    /// [`Kind::Database`].
    pub fn count(&mut self, sql: &str, binds: &[Bind]) -> Result<u64, Failure> {
        let rows: Vec<OneInt> = self.load(sql, binds)?;
        Ok(rows.first().map_or(0, |r| u64::try_from(r.n).unwrap_or(0)))
    }

    /// Whether a table named `table` exists (in the connection's schema search path on
    /// PostgreSQL, in the current database on MariaDB/MySQL, in the main database on SQLite).
    ///
    /// # Errors
    /// [`Kind::Database`].
    pub fn table_exists(&mut self, table: &str) -> Result<bool, Failure> {
        let sql = match self.backend() {
            Backend::Postgres => {
                "SELECT COUNT(*) AS n FROM pg_class WHERE oid = to_regclass(quote_ident($1))"
            }
            Backend::Mysql => {
                "SELECT COUNT(*) AS n FROM information_schema.tables \
                 WHERE table_schema = DATABASE() AND table_name = ?"
            }
            Backend::Sqlite => {
                "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = ?"
            }
        };
        Ok(self.count(sql, &[Bind::Text(Some(table.to_owned()))])? > 0)
    }

    /// Runs one query with parameters and loads rows of type `T`.
    ///
    /// # Errors
    /// [`Kind::Database`].
    pub fn load<T>(&mut self, sql: &str, binds: &[Bind]) -> Result<Vec<T>, Failure>
    where
        T: QueryableByName<diesel::pg::Pg>
            + QueryableByName<diesel::mysql::Mysql>
            + QueryableByName<diesel::sqlite::Sqlite>
            + 'static,
    {
        let r = match &mut self.conn {
            Conn::Pg(c) => bind_all!(diesel::sql_query(sql).into_boxed(), binds).load::<T>(c),
            Conn::My(c) => bind_all!(diesel::sql_query(sql).into_boxed(), binds).load::<T>(c),
            Conn::Lite(c) => bind_all!(diesel::sql_query(sql).into_boxed(), binds).load::<T>(c),
        };
        r.map_err(|e| db_failure("query", &e, &self.target))
    }

    /// PostgreSQL bulk compare-and-swap: sets `col` to the new value for every `(id, old,
    /// new)` whose row still holds `old` (or is still NULL when `old` is `None`). Returns the
    /// ids that lost the race (not updated).
    ///
    /// The writes go in with one `COPY ... FROM STDIN (FORMAT binary)` into a temporary table
    /// of this session (`pg_temp.leakless_migrate_cas`, emptied at every commit), then one
    /// `UPDATE ... FROM` that joins it on each row's `ctid` (a TID scan, no index look-up) and
    /// checks the id and the old value, so a row changed since it was read is left alone. The
    /// COPY stream is parsed by the server as it arrives; no statement parameter holds the
    /// batch's values.
    ///
    /// The statement returns only a row count, not the updated ids: when every row was
    /// updated (the common case) nothing else is sent back or decoded. Only when the count
    /// falls short does a second query, in the same transaction, name the ids whose row does
    /// not hold its new value (a fresh envelope, which nobody else can have written).
    ///
    /// # Errors
    /// [`Kind::Database`]; [`Kind::Usage`] on another backend.
    pub fn pg_bulk_cas(
        &mut self,
        table: &str,
        id_col: &str,
        id_kind: RowIdKind,
        col: &str,
        guard_col: Option<&str>,
        rows: &[CasWrite],
    ) -> Result<Vec<String>, Failure> {
        let id_expr = self.id_from_text(id_kind, "u.id");
        let Conn::Pg(c) = &mut self.conn else {
            return Err(Failure::new(
                Kind::Usage,
                "the COPY bulk path is PostgreSQL only",
                "use Db::exec per row on other backends",
            ));
        };
        let target = &self.target;
        let fail = |what: &str, e: &diesel::result::Error| db_failure(what, e, target);
        // Created once per session (a no-op afterwards, also after a rolled-back batch took
        // its creation with it); emptied here in case an earlier page of the same transaction
        // used it, and by every commit.
        c.batch_execute(CAS_TABLE_DDL)
            .map_err(|e| fail("bulk update (temporary table)", &e))?;
        let copied = diesel::copy_from(cas_table::leakless_migrate_cas::table)
            .from_raw_data(cas_table::leakless_migrate_cas::table, |w| {
                write_copy_binary(w, rows)
                    .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))
            })
            .with_format(diesel::pg::CopyFormat::Binary)
            .execute(c)
            .map_err(|e| fail("bulk update (COPY)", &e))?;
        if copied != rows.len() {
            return Err(Failure::new(
                Kind::Database,
                format!(
                    "database: bulk update (COPY) took {copied} of {} rows",
                    rows.len()
                ),
                "rerun; finished batches are checkpointed",
            ));
        }
        let (t, i, v) = (
            format!("\"{table}\""),
            format!("\"{id_col}\""),
            format!("\"{col}\""),
        );
        let by_tid = rows
            .iter()
            .all(|r| r.tid.as_deref().and_then(tid_binary).is_some());
        let tid_cond = if by_tid {
            format!("{t}.ctid = u.tid AND ")
        } else {
            String::new()
        };
        let guard_cond =
            guard_col.map_or_else(String::new, |g| format!(" AND {t}.\"{g}\" = u.guard"));
        let sql = format!(
            "UPDATE {t} SET {v} = u.new FROM pg_temp.leakless_migrate_cas u \
             WHERE {tid_cond}{t}.{i} = {id_expr} \
             AND ({t}.{v} = u.old OR ({t}.{v} IS NULL AND u.old IS NULL)){guard_cond}"
        );
        let updated = diesel::sql_query(sql)
            .execute(c)
            .map_err(|e| fail("bulk update", &e))?;
        if updated == rows.len() {
            return Ok(Vec::new());
        }
        let lost = format!(
            "SELECT u.id AS id FROM pg_temp.leakless_migrate_cas u \
             WHERE NOT EXISTS (SELECT 1 FROM {t} WHERE {t}.{i} = {id_expr} AND {t}.{v} = u.new)"
        );
        diesel::sql_query(lost)
            .load::<OneText>(c)
            .map(|v| v.into_iter().map(|r| r.id).collect())
            .map_err(|e| fail("bulk update (lost rows)", &e))
    }
}

/// The session's temporary table the PostgreSQL bulk compare-and-swap copies its writes into
/// (see [`Db::pg_bulk_cas`]): created if missing, emptied.
const CAS_TABLE_DDL: &str = "CREATE TEMP TABLE IF NOT EXISTS leakless_migrate_cas (id text NOT NULL, \
     old bytea, new bytea NOT NULL, tid tid, guard bytea) ON COMMIT DELETE ROWS; \
     DELETE FROM pg_temp.leakless_migrate_cas";

mod cas_table {
    diesel::table! {
        // The column types only name the columns for `COPY`; the data is written raw.
        pg_temp.leakless_migrate_cas (id) {
            id -> Text,
            old -> Nullable<Binary>,
            new -> Binary,
            tid -> Nullable<Binary>,
            guard -> Nullable<Binary>,
        }
    }
}

/// A PostgreSQL `tid` in its binary form (block number, then offset, big-endian) from its
/// text form `(block,offset)`.
fn tid_binary(text: &str) -> Option<[u8; 6]> {
    let (block, offset) = text.strip_prefix('(')?.strip_suffix(')')?.split_once(',')?;
    let block: u32 = block.parse().ok()?;
    let offset: u16 = offset.parse().ok()?;
    let mut out = [0u8; 6];
    let (b, o) = out.split_at_mut(4);
    b.copy_from_slice(&block.to_be_bytes());
    o.copy_from_slice(&offset.to_be_bytes());
    Some(out)
}

/// Writes `rows` as a binary `COPY` stream of `(id, old, new, tid, guard)`, buffered.
fn write_copy_binary(w: &mut dyn std::io::Write, rows: &[CasWrite]) -> std::io::Result<()> {
    use std::io::Write as _;

    fn field(w: &mut impl std::io::Write, v: Option<&[u8]>) -> std::io::Result<()> {
        match v {
            None => w.write_all(&(-1i32).to_be_bytes()),
            Some(v) => {
                let len = i32::try_from(v.len()).map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "value over 2 GiB")
                })?;
                w.write_all(&len.to_be_bytes())?;
                w.write_all(v)
            }
        }
    }
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, w);
    w.write_all(b"PGCOPY\n\xff\r\n\0")?;
    w.write_all(&0i32.to_be_bytes())?; // flags
    w.write_all(&0i32.to_be_bytes())?; // header extension length
    for r in rows {
        w.write_all(&5i16.to_be_bytes())?;
        field(&mut w, Some(r.id.as_bytes()))?;
        field(&mut w, r.old.as_deref())?;
        field(&mut w, Some(&r.new))?;
        let tid = r.tid.as_deref().and_then(tid_binary);
        field(&mut w, tid.as_ref().map(|t| &t[..]))?;
        field(&mut w, r.guard.as_deref())?;
    }
    w.write_all(&(-1i16).to_be_bytes())?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::tid_binary;

    #[test]
    fn tid_text_to_binary() {
        assert_eq!(tid_binary("(0,1)"), Some([0, 0, 0, 0, 0, 1]));
        assert_eq!(
            tid_binary("(4294967295,65535)"),
            Some([255, 255, 255, 255, 255, 255])
        );
        assert_eq!(tid_binary("(258,3)"), Some([0, 0, 1, 2, 0, 3]));
        assert_eq!(tid_binary("1,2"), None);
        assert_eq!(tid_binary("(1,70000)"), None);
    }
}
