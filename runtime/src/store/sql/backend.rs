//! The queries, written once and compiled for each enabled diesel connection type.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::result::Error as DieselError;

use super::schema::{leakless_kek as kek, leakless_key_audit as audit};
use super::{AuditRow, Failure, KekRow, SqlBackend, check_cas, conflict, unique_is_conflict};
use crate::key::{AuditRecord, Auth, KekRecord, StoreChange};

/// One open connection, of whichever backend.
pub(crate) enum Conn {
    #[cfg(feature = "sqlite")]
    Sqlite(SqliteConnection),
    #[cfg(feature = "postgres")]
    Postgres(PgConnection),
    #[cfg(feature = "mysql")]
    Mysql(MysqlConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Conn")
    }
}

/// Runs `$body` with `$c` bound to the concrete connection.
macro_rules! on_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            #[cfg(feature = "sqlite")]
            Conn::Sqlite($c) => $body,
            #[cfg(feature = "postgres")]
            Conn::Postgres($c) => $body,
            #[cfg(feature = "mysql")]
            Conn::Mysql($c) => $body,
        }
    };
}

impl Conn {
    /// Connects; the error is the driver's message (the caller scrubs it).
    pub(crate) fn establish(backend: SqlBackend, target: &str) -> Result<Self, String> {
        match backend {
            #[cfg(feature = "sqlite")]
            SqlBackend::Sqlite => {
                prepare_sqlite_file(target)?;
                let mut c = SqliteConnection::establish(target).map_err(|e| e.to_string())?;
                // Wait for another connection's write transaction instead of failing at once.
                c.batch_execute("PRAGMA busy_timeout = 30000")
                    .map_err(|e| e.to_string())?;
                Ok(Conn::Sqlite(c))
            }
            #[cfg(feature = "postgres")]
            SqlBackend::Postgres => PgConnection::establish(target)
                .map(Conn::Postgres)
                .map_err(|e| e.to_string()),
            #[cfg(feature = "mysql")]
            SqlBackend::Mysql => MysqlConnection::establish(target)
                .map(Conn::Mysql)
                .map_err(|e| e.to_string()),
            #[allow(
                unreachable_patterns,
                reason = "reachable when a backend feature is off"
            )]
            other => Err(format!(
                "this build of leakless has no {other} support (enable the cargo feature `{}`)",
                match other {
                    SqlBackend::Postgres => "postgres",
                    SqlBackend::Mysql => "mysql",
                    SqlBackend::Sqlite => "sqlite",
                }
            )),
        }
    }

    pub(crate) fn create_schema(&mut self) -> Result<(), DieselError> {
        on_conn!(self, c => c.create_schema())
    }

    pub(crate) fn list(&mut self, scope: &str) -> Result<Vec<KekRow>, DieselError> {
        on_conn!(self, c => c.list(scope))
    }

    pub(crate) fn get(&mut self, scope: &str, version: i64) -> Result<Option<KekRow>, DieselError> {
        on_conn!(self, c => c.get(scope, version))
    }

    pub(crate) fn scopes(&mut self) -> Result<Vec<String>, DieselError> {
        on_conn!(self, c => c.scopes())
    }

    pub(crate) fn audit(&mut self, scope: Option<&str>) -> Result<Vec<AuditRow>, DieselError> {
        on_conn!(self, c => c.audit(scope))
    }

    pub(crate) fn audit_since(&mut self, from: i64) -> Result<Vec<AuditRow>, DieselError> {
        on_conn!(self, c => c.audit_since(from))
    }

    pub(crate) fn apply(&mut self, change: &StoreChange) -> Result<(), Failure> {
        on_conn!(self, c => c.apply(change))
    }
}

/// Creates a missing SQLite file with mode `0600` before SQLite creates it with the umask.
#[cfg(feature = "sqlite")]
fn prepare_sqlite_file(target: &str) -> Result<(), String> {
    if target.is_empty() || target == ":memory:" || target.starts_with("file:") {
        return Ok(());
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(target) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("{target}: {e}")),
    }
}

/// The operations every backend implements with the same diesel code.
trait StoreConn {
    fn create_schema(&mut self) -> Result<(), DieselError>;
    fn list(&mut self, scope: &str) -> Result<Vec<KekRow>, DieselError>;
    fn get(&mut self, scope: &str, version: i64) -> Result<Option<KekRow>, DieselError>;
    fn scopes(&mut self) -> Result<Vec<String>, DieselError>;
    fn audit(&mut self, scope: Option<&str>) -> Result<Vec<AuditRow>, DieselError>;
    fn audit_since(&mut self, from: i64) -> Result<Vec<AuditRow>, DieselError>;
    fn apply(&mut self, change: &StoreChange) -> Result<(), Failure>;
}

fn grace(record: &KekRecord) -> Option<i64> {
    record.state.grace_until().map(|t| t.0)
}

fn root_key_id(record: &KekRecord) -> Option<&str> {
    record.wrapped.as_ref().map(|w| w.root_key_id.as_str())
}

fn wrapped(record: &KekRecord) -> Option<&[u8]> {
    record.wrapped.as_ref().map(|w| w.ciphertext.as_slice())
}

fn version(record: &KekRecord) -> i64 {
    i64::from(record.version.get())
}

fn seq(auth: Option<Auth>) -> Option<i64> {
    auth.map(|a| i64::try_from(a.seq).unwrap_or(i64::MAX))
}

fn tag(auth: &Option<Auth>) -> Option<&[u8]> {
    auth.as_ref().map(|a| a.tag.as_slice())
}

/// The columns of an audit row as [`AuditRow`] has them.
macro_rules! audit_columns {
    () => {
        (
            audit::at,
            audit::actor,
            audit::reason,
            audit::action,
            audit::scope,
            audit::version,
            audit::from_state,
            audit::from_grace_until,
            audit::to_state,
            audit::to_grace_until,
            audit::seq,
            audit::tag,
        )
    };
}

/// Implements [`StoreConn`] for one connection type. `txn` names the method that opens the
/// write transaction; `lock` is what a locking read appends (`.for_update()`, or nothing on
/// SQLite, whose `BEGIN IMMEDIATE` already holds the database's write lock).
macro_rules! impl_store_conn {
    ($conn:ty, schema: $schema:expr, txn: $txn:ident, lock: [$($lock:tt)*]) => {
        impl StoreConn for $conn {
            fn create_schema(&mut self) -> Result<(), DieselError> {
                let schema: fn(&mut $conn) -> Result<(), DieselError> = $schema;
                schema(self)
            }

            fn list(&mut self, scope: &str) -> Result<Vec<KekRow>, DieselError> {
                kek::table
                    .filter(kek::scope.eq(scope))
                    .order(kek::version.asc())
                    .load::<KekRow>(self)
            }

            fn get(&mut self, scope: &str, version: i64) -> Result<Option<KekRow>, DieselError> {
                kek::table
                    .filter(kek::scope.eq(scope))
                    .filter(kek::version.eq(version))
                    .get_result::<KekRow>(self)
                    .optional()
            }

            fn scopes(&mut self) -> Result<Vec<String>, DieselError> {
                kek::table
                    .select(kek::scope)
                    .distinct()
                    .order(kek::scope.asc())
                    .load::<String>(self)
            }

            fn audit_since(&mut self, from: i64) -> Result<Vec<AuditRow>, DieselError> {
                audit::table
                    .filter(audit::seq.ge(from))
                    .order(audit::seq.asc())
                    .select(audit_columns!())
                    .load::<AuditRow>(self)
            }

            fn audit(&mut self, scope: Option<&str>) -> Result<Vec<AuditRow>, DieselError> {
                let columns = audit_columns!();
                match scope {
                    Some(scope) => audit::table
                        .filter(audit::scope.eq(scope))
                        .order(audit::id.asc())
                        .select(columns)
                        .load::<AuditRow>(self),
                    None => audit::table
                        .order(audit::id.asc())
                        .select(columns)
                        .load::<AuditRow>(self),
                }
            }

            fn apply(&mut self, change: &StoreChange) -> Result<(), Failure> {
                self.$txn(|c| {
                    // 1. Lock every record to update and check it is still what was read.
                    for u in &change.updates {
                        let stored = kek::table
                            .filter(kek::scope.eq(u.before.scope.as_str()))
                            .filter(kek::version.eq(version(&u.before)))
                            $($lock)*
                            .get_result::<KekRow>(c)
                            .optional()?;
                        check_cas(stored, &u.before)?;
                    }
                    // 2. Updates first: a rotation demotes the old active version before the
                    //    insert of the new one meets the one-active-version index.
                    for u in &change.updates {
                        let a = &u.after;
                        let n = unique_is_conflict(
                            diesel::update(
                                kek::table
                                    .filter(kek::scope.eq(a.scope.as_str()))
                                    .filter(kek::version.eq(version(a))),
                            )
                            .set(kek_values(a))
                            .execute(c),
                            a,
                        )?;
                        if n != 1 {
                            return Err(conflict(&u.before));
                        }
                    }
                    // 3. Inserts: a duplicate key or a second active version is a lost race.
                    for r in &change.inserts {
                        unique_is_conflict(
                            diesel::insert_into(kek::table)
                                .values((
                                    kek::scope.eq(r.scope.as_str()),
                                    kek::version.eq(version(r)),
                                    kek_values(r),
                                ))
                                .execute(c),
                            r,
                        )?;
                    }
                    // 4. The audit records, in order. A sequence number taken already means
                    //    another writer extended the audit chain first: a lost race.
                    for a in &change.audit {
                        insert_audit(a, |values| {
                            diesel::insert_into(audit::table).values(values).execute(c)
                        })
                        .map_err(|e| match e {
                            DieselError::DatabaseError(
                                diesel::result::DatabaseErrorKind::UniqueViolation,
                                _,
                            ) => Failure::Conflict {
                                scope: a.scope.clone(),
                                version: a.version,
                            },
                            other => Failure::Db(other),
                        })?;
                    }
                    Ok(())
                })
            }
        }
    };
}

/// The columns of a key record but its key (`scope`, `version`): what an update sets, and what
/// an insert writes besides the key.
type KekValues<'a> = (
    diesel::dsl::Eq<kek::state, &'static str>,
    diesel::dsl::Eq<kek::grace_until, Option<i64>>,
    diesel::dsl::Eq<kek::root_key_id, Option<&'a str>>,
    diesel::dsl::Eq<kek::wrapped_kek, Option<&'a [u8]>>,
    diesel::dsl::Eq<kek::created_at, i64>,
    diesel::dsl::Eq<kek::updated_at, i64>,
    diesel::dsl::Eq<kek::deactivated_at, Option<i64>>,
    diesel::dsl::Eq<kek::recheck_secs, Option<i64>>,
    diesel::dsl::Eq<kek::seq, Option<i64>>,
    diesel::dsl::Eq<kek::tag, Option<&'a [u8]>>,
);

/// The [`KekValues`] of `r`.
fn kek_values(r: &KekRecord) -> KekValues<'_> {
    (
        kek::state.eq(r.state.name()),
        kek::grace_until.eq(grace(r)),
        kek::root_key_id.eq(root_key_id(r)),
        kek::wrapped_kek.eq(wrapped(r)),
        kek::created_at.eq(r.created_at.0),
        kek::updated_at.eq(r.updated_at.0),
        kek::deactivated_at.eq(r.deactivated_at.map(|t| t.0)),
        kek::recheck_secs.eq(Some(i64::from(r.recheck_secs))),
        kek::seq.eq(seq(r.auth)),
        kek::tag.eq(tag(&r.auth)),
    )
}

/// The values of one audit row, as diesel inserts them.
type AuditValues<'a> = (
    diesel::dsl::Eq<audit::at, i64>,
    diesel::dsl::Eq<audit::actor, &'a str>,
    diesel::dsl::Eq<audit::reason, &'a str>,
    diesel::dsl::Eq<audit::action, &'static str>,
    diesel::dsl::Eq<audit::scope, &'a str>,
    diesel::dsl::Eq<audit::version, i64>,
    diesel::dsl::Eq<audit::from_state, Option<&'static str>>,
    diesel::dsl::Eq<audit::from_grace_until, Option<i64>>,
    diesel::dsl::Eq<audit::to_state, &'static str>,
    diesel::dsl::Eq<audit::to_grace_until, Option<i64>>,
    diesel::dsl::Eq<audit::seq, Option<i64>>,
    diesel::dsl::Eq<audit::tag, Option<&'a [u8]>>,
);

fn insert_audit<'a>(
    a: &'a AuditRecord,
    insert: impl FnOnce(AuditValues<'a>) -> Result<usize, DieselError>,
) -> Result<usize, DieselError> {
    insert((
        audit::at.eq(a.at.0),
        audit::actor.eq(a.actor.as_str()),
        audit::reason.eq(a.reason.as_str()),
        audit::action.eq(a.action.name()),
        audit::scope.eq(a.scope.as_str()),
        audit::version.eq(i64::from(a.version.get())),
        audit::from_state.eq(a.from.map(|s| s.name())),
        audit::from_grace_until.eq(a.from.and_then(|s| s.grace_until()).map(|t| t.0)),
        audit::to_state.eq(a.to.name()),
        audit::to_grace_until.eq(a.to.grace_until().map(|t| t.0)),
        audit::seq.eq(seq(a.auth)),
        audit::tag.eq(tag(&a.auth)),
    ))
}

/// Runs upgrade statements one by one; an error whose message contains one of `fine` means
/// there is nothing to upgrade (no table yet, or the column is already there).
#[cfg(any(feature = "sqlite", feature = "mysql"))]
fn run_tolerant<C: SimpleConnection>(
    c: &mut C,
    statements: &[&str],
    fine: &[&str],
) -> Result<(), DieselError> {
    for statement in statements {
        match c.batch_execute(statement) {
            Err(DieselError::DatabaseError(_, info))
                if fine.iter().any(|f| info.message().contains(f)) => {}
            other => other?,
        }
    }
    Ok(())
}

/// Runs the statements of a schema one by one.
fn run_statements<C: SimpleConnection>(c: &mut C, statements: &[&str]) -> Result<(), DieselError> {
    for statement in statements {
        c.batch_execute(statement)?;
    }
    Ok(())
}

#[cfg(feature = "sqlite")]
impl_store_conn!(
    SqliteConnection,
    schema: |c| c.immediate_transaction(|c| {
        run_tolerant(c, super::schema::ADD_AUTH_COLUMNS, &["no such table", "duplicate column name"])?;
        run_statements(c, super::schema::SQLITE)
    }),
    txn: immediate_transaction,
    lock: []
);

#[cfg(feature = "postgres")]
impl_store_conn!(
    PgConnection,
    // A store that is up to date gets no DDL at all: `ALTER TABLE ... ADD COLUMN IF NOT
    // EXISTS` takes an ACCESS EXCLUSIVE lock before it finds the column there, so every
    // migrator start would wait behind any open transaction on the key store, and every key
    // read of the applications would queue behind that. The advisory lock serializes
    // concurrent `CREATE ... IF NOT EXISTS`, which PostgreSQL does not do by itself.
    schema: |c| c.transaction(|c| {
        if diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
            super::schema::POSTGRES_CURRENT,
        ))
        .get_result::<bool>(c)?
        {
            return Ok(());
        }
        c.batch_execute("SELECT pg_advisory_xact_lock(7226376577356866406)")?;
        run_statements(c, super::schema::POSTGRES)
    }),
    txn: transaction,
    lock: [.for_update()]
);

#[cfg(feature = "mysql")]
impl_store_conn!(
    MysqlConnection,
    schema: |c| {
        run_tolerant(
            c,
            super::schema::ADD_AUTH_COLUMNS,
            &["doesn't exist", "Duplicate column name"],
        )?;
        run_tolerant(
            c,
            &[super::schema::MYSQL_ADD_SEQ_INDEX],
            &["doesn't exist", "Duplicate key name"],
        )?;
        run_statements(c, super::schema::MYSQL)
    },
    txn: transaction,
    lock: [.for_update()]
);
