//! The batch engine behind `rewrap`, `reencrypt`, `adopt` and `reindex`: online, batched,
//! resumable and idempotent.
//!
//! # How a run works
//!
//! 1. **Plan** (once per job): the table's ids are cut into chunks of `batch` rows by one
//!    query (`chunk_bounds_sql`); one row per chunk goes into `leakless_migrate_chunk`, under
//!    a job row in `leakless_migrate_job`, in one transaction. A second process planning the
//!    same job at the same time waits on the job row and then uses the first one's plan. A
//!    job whose chunks are all done is planned afresh (a new pass).
//! 2. **Work**: each worker, in one transaction, claims the first undone chunk
//!    (`FOR UPDATE SKIP LOCKED` on PostgreSQL and MariaDB, so workers in several processes
//!    and machines never take the same chunk), reads its rows, computes the new values,
//!    writes them with compare-and-swap on the old value (`... WHERE id = ? AND col = old`;
//!    on PostgreSQL one binary `COPY` of the page's writes into a temporary table and one
//!    `UPDATE ... FROM` it per page, see [`Db::pg_bulk_cas`]), marks the chunk done with its
//!    counts, and commits. The rows and the checkpoint commit together or not at all, so a
//!    `kill -9` or a server crash at any point loses nothing and redoes nothing.
//! 3. **Online**: a row the application changed between the read and the write fails the
//!    compare-and-swap; it is read again and redone (up to [`RETRIES`] times), so an
//!    application write is never overwritten with a stale value.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use leakless::key::KekState;
use leakless::manifest::{AdoptionPair, BlindIndexColumn, ScopeSource, SealedColumn, SealedTable};
use leakless::{
    BlindIndex, BlindIndexSpec, FieldContext, FieldPolicy, KekVersion, KeyRing, KeyScope,
};
use serde::Serialize;

use crate::db::{Backend, Bind, CasWrite, ChunkRow, Db, DbUrl, IdTwo, OneText};
use crate::error::{Failure, Kind, Result};
use crate::scan::{OwnedRowId, Range, page_sql};
use crate::tenant::TenantScope;

/// How often a row that keeps changing under the migrator is retried before it is reported.
pub const RETRIES: usize = 5;

/// What a job does to each row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Move the DEK onto the active KEK version; the data ciphertext is checked to open
    /// (decrypted and discarded) and kept as it is.
    Rewrap,
    /// Open and seal again: new DEK, new data ciphertext.
    Reencrypt,
    /// Seal the plaintext column `from` into the (NULL) sealed column.
    Adopt {
        /// The plaintext column.
        from: String,
    },
    /// Copy the envelopes of the column `from` (a sealed column being moved out of, with the
    /// same bound column name) into the column wherever the two differ, each checked to open
    /// first.
    Copy {
        /// The column the envelopes move out of.
        from: String,
    },
    /// Compute the blind-index token of every sealed value whose token is missing or made with
    /// an index key version other than the active one (backfill after adding an index,
    /// re-keying after an index-key rotation).
    Reindex,
}

impl Mode {
    /// The command's name: `rewrap`, `reencrypt`, `adopt`, `copy` or `reindex`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Rewrap => "rewrap",
            Mode::Reencrypt => "reencrypt",
            Mode::Adopt { .. } => "adopt",
            Mode::Copy { .. } => "copy",
            Mode::Reindex => "reindex",
        }
    }
}

/// Knobs of a run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Rows per chunk (and per transaction).
    pub batch: usize,
    /// Worker threads in this process.
    pub workers: usize,
    /// Overall throttle, rows per second.
    pub max_rows_per_sec: Option<u64>,
    /// Job name; default `<mode>:<table>.<column>`.
    pub job: Option<String>,
}

/// One row that could not be processed: where, and why (never a value).
#[derive(Clone, Debug, Serialize)]
pub struct RowFailure {
    /// Table.
    pub table: String,
    /// Column.
    pub column: String,
    /// Row identity.
    pub row: String,
    /// The error.
    pub error: String,
    /// What kind of fix it needs.
    pub cause: FailureCause,
}

/// Why a row failed, which decides the fix the command suggests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCause {
    /// The row's key cannot be used now (its version is retired, destroyed or missing, or the
    /// scope has no active version): fixing the keys and rerunning moves it.
    Key,
    /// The stored value is not a valid envelope for its place (corrupt, truncated, tampered
    /// with, or copied from another row, column or tenant): no key change opens it; restore
    /// the value from a backup.
    Data,
    /// The row kept changing under concurrent writes: rerunning moves it.
    Busy,
}

impl FailureCause {
    /// The cause of a runtime error on one row.
    #[must_use]
    pub fn of(e: &leakless::Error) -> Self {
        use leakless::Error as E;
        match e {
            E::KeyVersionNotFound { .. }
            | E::ScopeNotFound { .. }
            | E::KeyDestroyed { .. }
            | E::KeyWrongState { .. }
            | E::NoActiveKey { .. }
            | E::KeyChangeTooEarly { .. } => FailureCause::Key,
            E::ConcurrentModification { .. } => FailureCause::Busy,
            _ => FailureCause::Data,
        }
    }
}

/// Live counters, shared with the progress display.
#[derive(Debug, Default)]
pub struct Counters {
    /// Rows read.
    pub seen: AtomicU64,
    /// Rows written.
    pub changed: AtomicU64,
    /// Rows that changed under the migrator and were redone.
    pub retried: AtomicU64,
    /// Rows that failed.
    pub failed: AtomicU64,
    /// Chunks committed in this run.
    pub chunks: AtomicU64,
}

/// The outcome of one job.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Job name.
    pub job: String,
    /// Mode.
    pub mode: &'static str,
    /// Table.
    pub table: String,
    /// Column.
    pub column: String,
    /// Chunks in the plan.
    pub chunks_total: u64,
    /// Chunks already done when this run started (resumed).
    pub chunks_done_before: u64,
    /// Chunks this run committed.
    pub chunks_done_now: u64,
    /// Rows read.
    pub rows_seen: u64,
    /// Rows written.
    pub rows_changed: u64,
    /// Rows redone after a concurrent change.
    pub rows_retried: u64,
    /// Rows that failed.
    pub rows_failed: u64,
    /// The first failures (at most 100).
    pub failures: Vec<RowFailure>,
    /// Wall time.
    pub seconds: f64,
}

/// The statements creating the checkpoint tables (idempotent).
pub const CHECKPOINT_DDL: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS leakless_migrate_job (job VARCHAR(200) NOT NULL PRIMARY KEY, \
     kind VARCHAR(32) NOT NULL, tbl VARCHAR(64) NOT NULL, col VARCHAR(64) NOT NULL, \
     created_at BIGINT NOT NULL, chunks BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS leakless_migrate_chunk (job VARCHAR(200) NOT NULL, \
     chunk_no BIGINT NOT NULL, lo TEXT, hi TEXT, done SMALLINT NOT NULL DEFAULT 0, \
     rows_seen BIGINT NOT NULL DEFAULT 0, rows_changed BIGINT NOT NULL DEFAULT 0, \
     rows_failed BIGINT NOT NULL DEFAULT 0, finished_at BIGINT, PRIMARY KEY (job, chunk_no))",
];

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The default job name.
#[must_use]
pub fn job_name(mode: &Mode, t: &SealedTable, c: &SealedColumn) -> String {
    format!("{}:{}.{}", mode.name(), t.table, c.column)
}

/// Creates the checkpoint tables.
///
/// # Errors
/// [`Kind::Database`].
pub fn ensure_tables(db: &mut Db) -> Result<()> {
    for s in CHECKPOINT_DDL {
        db.batch(s)?;
    }
    Ok(())
}

/// Plans `job` if it has no plan yet or its last pass is complete. Returns (chunks total,
/// chunks already done).
///
/// # Errors
/// [`Kind::Database`].
pub fn plan(
    db: &mut Db,
    job: &str,
    mode: &Mode,
    t: &SealedTable,
    c: &SealedColumn,
    batch: usize,
) -> Result<(u64, u64)> {
    ensure_tables(db)?;
    db.transaction(|db| {
        let insert = match db.backend() {
            Backend::Postgres => {
                "INSERT INTO leakless_migrate_job (job, kind, tbl, col, created_at, chunks) \
                 VALUES ($1, $2, $3, $4, $5, 0) ON CONFLICT DO NOTHING"
            }
            Backend::Mysql => {
                "INSERT IGNORE INTO leakless_migrate_job (job, kind, tbl, col, created_at, chunks) \
                 VALUES (?, ?, ?, ?, ?, 0)"
            }
            Backend::Sqlite => {
                "INSERT OR IGNORE INTO leakless_migrate_job (job, kind, tbl, col, created_at, chunks) \
                 VALUES (?, ?, ?, ?, ?, 0)"
            }
        };
        let inserted = db.exec(
            insert,
            &[
                Bind::Text(Some(job.to_owned())),
                Bind::Text(Some(mode.name().to_owned())),
                Bind::Text(Some(t.table.clone())),
                Bind::Text(Some(c.column.clone())),
                Bind::Int(now_secs()),
            ],
        )?;
        let lock = if db.backend() == Backend::Sqlite {
            ""
        } else {
            " FOR UPDATE"
        };
        let this_job = [Bind::Text(Some(job.to_owned()))];
        let _: Vec<OneText> = db.load(
            &format!(
                "SELECT job AS id FROM leakless_migrate_job WHERE job = {}{lock}",
                db.ph(1)
            ),
            &this_job,
        )?;
        // The job's chunks, those matching `filter` (an SQL condition after `AND`, or none).
        let chunks = |db: &mut Db, filter: &str| {
            db.count(
                &format!(
                    "SELECT COUNT(*) AS n FROM leakless_migrate_chunk WHERE job = {}{filter}",
                    db.ph(1)
                ),
                &this_job,
            )
        };
        if inserted == 0 {
            let (total, done) = (chunks(db, "")?, chunks(db, " AND done = 1")?);
            if total > 0 && done < total {
                return Ok((total, done));
            }
            db.exec(
                &format!(
                    "DELETE FROM leakless_migrate_chunk WHERE job = {}",
                    db.ph(1)
                ),
                &this_job,
            )?;
        }
        let bounds: Vec<OneText> = db.load(&chunk_bounds_sql(db, t, batch), &[])?;
        // Chunk i covers [bound_i, bound_{i+1}); the first is open below, the last open above,
        // so rows inserted later at either end still belong to a chunk.
        let n = bounds.len().max(1);
        let mut rows = Vec::with_capacity(n);
        for i in 0..n {
            let lo = if i == 0 {
                None
            } else {
                bounds.get(i).map(|b| b.id.clone())
            };
            let hi = bounds.get(i + 1).map(|b| b.id.clone());
            rows.push((i, lo, hi));
        }
        for group in rows.chunks(200) {
            let mut values = Vec::new();
            let mut binds = Vec::new();
            let mut k = 0usize;
            for (i, lo, hi) in group {
                values.push(format!(
                    "({}, {}, {}, {})",
                    db.ph(k + 1),
                    db.ph(k + 2),
                    db.ph(k + 3),
                    db.ph(k + 4)
                ));
                k += 4;
                binds.push(Bind::Text(Some(job.to_owned())));
                binds.push(Bind::Int(i64::try_from(*i).unwrap_or(i64::MAX)));
                binds.push(Bind::Text(lo.clone()));
                binds.push(Bind::Text(hi.clone()));
            }
            db.exec(
                &format!(
                    "INSERT INTO leakless_migrate_chunk (job, chunk_no, lo, hi) VALUES {}",
                    values.join(", ")
                ),
                &binds,
            )?;
        }
        db.exec(
            &format!(
                "UPDATE leakless_migrate_job SET chunks = {} WHERE job = {}",
                db.ph(1),
                db.ph(2)
            ),
            &[
                Bind::Int(i64::try_from(n).unwrap_or(i64::MAX)),
                Bind::Text(Some(job.to_owned())),
            ],
        )?;
        Ok((u64::try_from(n).unwrap_or(u64::MAX), 0))
    })
}

/// Everything a worker needs.
#[derive(Debug, Clone)]
pub struct Work {
    /// Job name.
    pub job: String,
    /// Mode.
    pub mode: Mode,
    /// Table.
    pub table: SealedTable,
    /// Column.
    pub column: SealedColumn,
    /// Key ring.
    pub ring: KeyRing,
    /// Rows per page.
    pub batch: usize,
    /// Per-worker throttle, rows per second.
    pub per_worker_rate: Option<f64>,
    /// Per-tenant tables: how each row's scope is read (`None` for a static scope).
    pub tenant: Option<TenantScope>,
    /// The (scope, version) pairs whose keys are in the ring's cache already. The first use of
    /// each runs under this lock, so parallel workers make one KMS call per KEK version, not
    /// one per worker.
    pub warmed: Arc<Mutex<HashSet<(String, u32)>>>,
    /// Adoption: the SQL that reads the plaintext column as the bytes to seal (see
    /// [`source_expr`]); `None` in the other modes.
    pub source: Option<String>,
    /// `reindex`: the blind index being computed; `None` in the other modes.
    pub index: Option<IndexTarget>,
}

/// The blind index a `reindex` job computes.
#[derive(Debug, Clone)]
pub struct IndexTarget {
    /// The token column.
    pub column: String,
    /// The index, from the manifest.
    pub index: BlindIndexColumn,
    /// Table and sealed column name, bound into the token's key.
    pub table: String,
    /// The column name the sealed column's envelopes bind (and the token's key with them).
    pub sealed: String,
    /// An index with one key: that scope's active version when the job started (a token of
    /// this version is kept without opening the row). `None` for a per-tenant index key, whose
    /// rows are all opened and compared.
    pub active: Option<KekVersion>,
}

impl IndexTarget {
    /// The index of `c`, with its scope's active version.
    ///
    /// # Errors
    /// [`Kind::Usage`] when the manifest gives `c` no blind index; [`Kind::Keys`] when the
    /// index scope has no active version.
    pub fn of(ring: &KeyRing, t: &SealedTable, c: &SealedColumn) -> Result<Self> {
        let Some(b) = &c.blind_index else {
            return Err(Failure::new(
                Kind::Usage,
                format!(
                    "{}.{} has no blind index in the manifest",
                    t.table, c.column
                ),
                "add `blind_index(...)` to the field's `seal(...)` and regenerate the manifest",
            ));
        };
        let active = if b.per_tenant {
            None
        } else {
            let spec = b.spec(&t.table, c.bound_name(), None)?;
            let v = ring
                .versions(&spec.scope)?
                .into_iter()
                .find(|r| r.state == KekState::Active)
                .map(|r| r.version)
                .ok_or_else(|| {
                    Failure::from(leakless::Error::NoActiveKey {
                        scope: spec.scope.clone(),
                    })
                })?;
            Some(v)
        };
        Ok(Self {
            column: b.column.clone(),
            index: b.clone(),
            table: t.table.clone(),
            sealed: c.bound_name().to_owned(),
            active,
        })
    }

    /// The spec for a row of `tenant` (the tenant column's text; ignored for one index key).
    fn spec(&self, tenant: Option<&str>) -> std::result::Result<BlindIndexSpec, leakless::Error> {
        self.index.spec(&self.table, &self.sealed, tenant)
    }
}

/// A row's new value, or why not.
enum Outcome {
    Write(Vec<u8>),
    Keep,
    Fail(String, FailureCause),
    /// A failure of the root of trust or the key store, not of the row (a tampered key store,
    /// a KMS that refuses or cannot be reached, a wrong root key, a key file that cannot be
    /// read): the batch stops, its transaction rolls back, and the command reports this one
    /// error instead of failing every row with it.
    Abort(leakless::Error),
}

/// The outcome of a runtime error on one row: a row failure, or an abort when the error is
/// about the keys as a whole.
fn row_error(e: leakless::Error) -> Outcome {
    if is_key_wide(&e) {
        Outcome::Abort(e)
    } else {
        let cause = FailureCause::of(&e);
        Outcome::Fail(e.to_string(), cause)
    }
}

/// The help for a command whose rows failed: the fix of each cause among `failures`.
pub fn failure_help<'a>(failures: impl IntoIterator<Item = &'a RowFailure>) -> String {
    let mut causes = HashSet::new();
    causes.extend(failures.into_iter().map(|f| f.cause));
    let mut help = Vec::new();
    if causes.contains(&FailureCause::Key) {
        help.push(
            "for rows whose key version cannot be used, see `leakless-migrate keys list`: a \
             retired version goes back into grace with `keys reinstate`; then rerun",
        );
    }
    if causes.contains(&FailureCause::Data) {
        help.push(
            "rows whose stored value is not a valid envelope for its place (corrupt, tampered \
             with, or copied from another row or tenant) open under no key: restore those \
             values from a backup (or set them NULL); `leakless-migrate verify` lists them all",
        );
    }
    if causes.contains(&FailureCause::Busy) {
        help.push("rows that kept changing under concurrent writes: rerun");
    }
    help.join("; ")
}

/// Whether a runtime error met on one row is about the keys as a whole (a tampered or corrupt
/// key store, a KMS that refuses or cannot be reached, a wrong root key, a key file that cannot be read):
/// then the command stops with that one error instead of failing every row with it.
#[must_use]
pub fn is_key_wide(e: &leakless::Error) -> bool {
    use leakless::Error as E;
    matches!(
        e,
        E::KeyStoreTampered { .. }
            | E::Kms { .. }
            | E::KmsUnavailable { .. }
            | E::KeyStore { .. }
            | E::KeyStoreCorrupt { .. }
            | E::KeyFile { .. }
    )
}

impl Work {
    fn policy(&self) -> FieldPolicy {
        FieldPolicy {
            algorithm: self.column.algorithm,
            padding: self.column.padding,
        }
    }

    fn adopt_scope(&self) -> Result<KeyScope> {
        match &self.table.scope {
            ScopeSource::Static { scope } => Ok(KeyScope::new(scope)?),
            ScopeSource::PerTenant { .. } => Err(Failure::new(
                Kind::Usage,
                format!(
                    "{}: adopt supports tables with one static key scope",
                    self.table.table
                ),
                "adopt a per-tenant table by sealing in the application, or split it per tenant",
            )),
        }
    }

    /// The scope the row's envelope must name: the table's static scope, or the prefix plus
    /// the row's tenant (read as text with the row, see [`TenantScope`]). `Err` when a
    /// per-tenant row has no usable tenant.
    fn expected_scope(&self, row: &IdTwo) -> std::result::Result<Option<KeyScope>, String> {
        match &self.tenant {
            Some(t) => t.expected(row.tenant.as_deref()).map(Some),
            None => Ok(static_scope(&self.table)),
        }
    }

    /// The value expressions read per row: `a` (the sealed column) and `b` (the plaintext
    /// column for adoption, else NULL).
    fn select(&self, db: &Db) -> String {
        let a = db.q(&self.column.column);
        let b = match (&self.source, &self.index) {
            (Some(expr), _) => expr.clone(),
            (None, Some(ix)) => db.q(&ix.column),
            (None, None) => "NULL".to_owned(),
        };
        let b = if db.backend() == Backend::Postgres && b == "NULL" {
            "NULL::bytea".to_owned()
        } else {
            b
        };
        let tid = match db.backend() {
            Backend::Postgres => format!("{}.ctid::text", db.q(&self.table.table)),
            Backend::Mysql => "CAST(NULL AS CHAR)".to_owned(),
            Backend::Sqlite => "NULL".to_owned(),
        };
        let tenant = match &self.tenant {
            Some(t) => t.expr.clone(),
            None => TenantScope::null_expr(db.backend()).to_owned(),
        };
        format!("{a} AS a, {b} AS b, {tid} AS tid, {tenant} AS tenant")
    }

    fn outcome(&self, row: &IdTwo, adopt_scope: Option<&KeyScope>) -> Outcome {
        let key = match (&row.a, adopt_scope) {
            (Some(env), _) => crate::scan::header(env),
            (None, Some(s)) => Some((s.as_str().to_owned(), 0)),
            (None, None) => None,
        };
        let Some(key) = key else {
            return self.outcome_inner(row, adopt_scope);
        };
        let lock = || self.warmed.lock().unwrap_or_else(PoisonError::into_inner);
        if lock().contains(&key) {
            return self.outcome_inner(row, adopt_scope);
        }
        let mut warmed = lock();
        let r = self.outcome_inner(row, adopt_scope);
        warmed.insert(key);
        r
    }

    fn outcome_inner(&self, row: &IdTwo, adopt_scope: Option<&KeyScope>) -> Outcome {
        let rid = match OwnedRowId::parse(self.table.row_id_kind, &row.id) {
            Ok(r) => r,
            Err(e) => return Outcome::Fail(e.what, FailureCause::Data),
        };
        let ctx = FieldContext::new(
            &self.table.table,
            self.column.bound_name(),
            rid.as_row_id(),
            self.table.schema_version,
        );
        let expected = match (&self.mode, &row.a) {
            (Mode::Rewrap | Mode::Reencrypt | Mode::Reindex, Some(_)) | (Mode::Copy { .. }, _) => {
                match self.expected_scope(row) {
                    Ok(s) => s,
                    Err(e) => return Outcome::Fail(e, FailureCause::Data),
                }
            }
            _ => None,
        };
        match (&self.mode, &row.a) {
            (Mode::Adopt { .. }, Some(_)) => Outcome::Keep,
            (Mode::Adopt { .. }, None) => match (&row.b, adopt_scope) {
                (Some(plain), Some(scope)) => {
                    match self.ring.seal(scope, &ctx, plain, &self.policy()) {
                        Ok(v) => Outcome::Write(v),
                        Err(e) => row_error(e),
                    }
                }
                _ => Outcome::Keep,
            },
            (Mode::Copy { .. }, current) => match &row.b {
                // The column already holds the same envelope.
                Some(env) if current.as_deref() == Some(env.as_slice()) => Outcome::Keep,
                // The copy must open where it goes: same table, row and bound column name.
                Some(env) => match expected.map_or_else(
                    || self.ring.open(&ctx, env),
                    |scope| self.ring.open_in_scope(&scope, &ctx, env),
                ) {
                    Ok(_) => Outcome::Write(env.clone()),
                    Err(e) => row_error(e),
                },
                None => Outcome::Keep,
            },
            (_, None) => Outcome::Keep,
            (Mode::Reindex, Some(env)) => self.reindex_outcome(row, &ctx, expected.as_ref(), env),
            // The data part is authenticated too: a row whose DEK unwraps but whose data does
            // not open fails (cause `data`) and keeps its value.
            (Mode::Rewrap, Some(env)) => {
                match self.ring.rewrap_verified(expected.as_ref(), &ctx, env) {
                    Ok(Some(v)) => Outcome::Write(v),
                    Ok(None) => Outcome::Keep,
                    Err(e) => row_error(e),
                }
            }
            (Mode::Reencrypt, Some(env)) => {
                let Some((scope, _)) = crate::scan::header(env) else {
                    return Outcome::Fail("not a leakless envelope".into(), FailureCause::Data);
                };
                let scope = match KeyScope::new(&scope) {
                    Ok(s) => s,
                    Err(e) => return row_error(e),
                };
                let opened = match expected {
                    Some(expected) => self.ring.open_in_scope(&expected, &ctx, env),
                    None => self.ring.open(&ctx, env),
                };
                match opened {
                    Ok(p) => match self
                        .ring
                        .seal(&scope, &ctx, p.expose_secret(), &self.policy())
                    {
                        Ok(v) => Outcome::Write(v),
                        Err(e) => row_error(e),
                    },
                    Err(e) => row_error(e),
                }
            }
        }
    }

    /// `reindex` of one row whose sealed value is `env`: keep a token of the active version,
    /// else open the value and compute its token.
    fn reindex_outcome(
        &self,
        row: &IdTwo,
        ctx: &FieldContext<'_>,
        expected: Option<&KeyScope>,
        env: &[u8],
    ) -> Outcome {
        let Some(ix) = &self.index else {
            return Outcome::Fail("no blind index to compute".into(), FailureCause::Data);
        };
        if let Some(old) = &row.b
            && ix.active.is_some()
            && BlindIndex::stored_version(old) == ix.active
            && old.len() == 4 + ix.index.bytes
        {
            return Outcome::Keep;
        }
        let spec = match ix.spec(row.tenant.as_deref()) {
            Ok(s) => s,
            Err(e) => return Outcome::Fail(e.to_string(), FailureCause::Data),
        };
        let opened = match expected {
            Some(scope) => self.ring.open_in_scope(scope, ctx, env),
            None => self.ring.open(ctx, env),
        };
        let plain = match opened {
            Ok(p) => p,
            Err(e) => return row_error(e),
        };
        match self.ring.blind_index(&spec, plain.expose_secret()) {
            Ok(token) if row.b.as_deref() == Some(token.as_bytes()) => Outcome::Keep,
            Ok(token) => Outcome::Write(token.as_bytes().to_vec()),
            Err(e) => row_error(e),
        }
    }

    /// The column a job writes: the token column for `reindex`, else the sealed column.
    fn written_column(&self) -> &str {
        self.index
            .as_ref()
            .map_or(&self.column.column, |ix| &ix.column)
    }

    /// Writes `(id, old, new)` with compare-and-swap; returns the ids that lost the race.
    /// `reindex` also requires the sealed column to still hold the value the token came from.
    fn cas(&self, db: &mut Db, writes: &[CasWrite]) -> Result<Vec<String>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let guard_col = self.index.as_ref().map(|_| self.column.column.as_str());
        if db.backend() == Backend::Postgres {
            return db.pg_bulk_cas(
                &self.table.table,
                &self.table.row_id_column,
                self.table.row_id_kind,
                self.written_column(),
                guard_col,
                writes,
            );
        }
        let col = db.q(self.written_column());
        let id = db.q(&self.table.row_id_column);
        let id_bind = db.id_from_text(self.table.row_id_kind, "?");
        let mut lost = Vec::new();
        for CasWrite {
            id: rid,
            old,
            new,
            guard,
            ..
        } in writes
        {
            let mut binds = vec![
                Bind::Bytes(Some(new.clone())),
                Bind::Text(Some(rid.clone())),
            ];
            let old_cond = match old {
                Some(old) => {
                    binds.push(Bind::Bytes(Some(old.clone())));
                    format!("{col} = ?")
                }
                None => format!("{col} IS NULL"),
            };
            let guard_cond = match (guard_col, guard) {
                (Some(g), Some(v)) => {
                    binds.push(Bind::Bytes(Some(v.clone())));
                    format!(" AND {} = ?", db.q(g))
                }
                _ => String::new(),
            };
            let sql = format!(
                "UPDATE {} SET {col} = ? WHERE {id} = {id_bind} AND {old_cond}{guard_cond}",
                db.q(&self.table.table)
            );
            if db.exec(&sql, &binds)? == 0 {
                lost.push(rid.clone());
            }
        }
        Ok(lost)
    }

    /// The compare-and-swap write of `new` into the row read as `row`.
    fn cas_write(&self, mut row: IdTwo, new: Vec<u8>) -> CasWrite {
        let (old, guard) = if self.index.is_some() {
            (row.b.take(), row.a.take())
        } else {
            (row.a.take(), None)
        };
        CasWrite {
            id: std::mem::take(&mut row.id),
            old,
            new,
            guard,
            tid: row.tid.take(),
        }
    }

    fn reread(&self, db: &mut Db, rid: &str) -> Result<Option<IdTwo>> {
        let t = db.q(&self.table.table);
        let sql = format!(
            "SELECT {} AS id, {} FROM {t} WHERE {t}.{} = {}",
            db.id_text(self.table.row_id_kind, &self.table.row_id_column),
            self.select(db),
            db.q(&self.table.row_id_column),
            db.id_from_text(self.table.row_id_kind, &db.ph(1)),
        );
        let mut rows: Vec<IdTwo> = db.load(&sql, &[Bind::Text(Some(rid.to_owned()))])?;
        Ok(rows.pop())
    }

    /// Processes the rows of one page inside the open transaction. Returns (rows seen, rows
    /// changed, rows failed); each failure is also counted in `counters` and, for the first
    /// 100, described in `failures`.
    fn page(
        &self,
        db: &mut Db,
        rows: Vec<IdTwo>,
        adopt_scope: Option<&KeyScope>,
        counters: &Counters,
        failures: &mut Vec<RowFailure>,
    ) -> Result<(u64, u64, u64)> {
        let seen = u64::try_from(rows.len()).unwrap_or(u64::MAX);
        let mut changed = 0u64;
        let mut failed = 0u64;
        let mut writes = Vec::new();
        let mut fail = |id: &str, error: String, cause, failures: &mut Vec<RowFailure>| {
            failed += 1;
            counters.failed.fetch_add(1, Ordering::Relaxed);
            if failures.len() < 100 {
                failures.push(RowFailure {
                    table: self.table.table.clone(),
                    column: self.column.column.clone(),
                    row: id.to_owned(),
                    error,
                    cause,
                });
            }
        };
        for row in rows {
            match self.outcome(&row, adopt_scope) {
                Outcome::Write(v) => writes.push(self.cas_write(row, v)),
                Outcome::Keep => {}
                Outcome::Fail(e, cause) => fail(&row.id, e, cause, failures),
                Outcome::Abort(e) => return Err(Failure::from(e)),
            }
        }
        let planned = u64::try_from(writes.len()).unwrap_or(u64::MAX);
        let mut lost = self.cas(db, &writes)?;
        changed += planned - u64::try_from(lost.len()).unwrap_or(0);
        drop(writes);
        for attempt in 0..=RETRIES {
            if lost.is_empty() {
                break;
            }
            counters
                .retried
                .fetch_add(u64::try_from(lost.len()).unwrap_or(0), Ordering::Relaxed);
            if attempt == RETRIES {
                for id in &lost {
                    fail(
                        id,
                        format!("row kept changing during {RETRIES} retries; rerun"),
                        FailureCause::Busy,
                        failures,
                    );
                }
                break;
            }
            let mut again = Vec::new();
            for id in &lost {
                let Some(row) = self.reread(db, id)? else {
                    continue; // deleted meanwhile: nothing to do
                };
                match self.outcome(&row, adopt_scope) {
                    Outcome::Write(v) => again.push(self.cas_write(row, v)),
                    Outcome::Keep => {}
                    Outcome::Fail(e, cause) => fail(&row.id, e, cause, failures),
                    Outcome::Abort(e) => return Err(Failure::from(e)),
                }
            }
            let n = u64::try_from(again.len()).unwrap_or(0);
            lost = self.cas(db, &again)?;
            changed += n - u64::try_from(lost.len()).unwrap_or(0);
        }
        counters.seen.fetch_add(seen, Ordering::Relaxed);
        counters.changed.fetch_add(changed, Ordering::Relaxed);
        Ok((seen, changed, failed))
    }

    /// Claims and processes chunks until none is left. Each chunk is one transaction.
    ///
    /// # Errors
    /// [`Kind::Database`] (the open chunk rolls back; rerun to resume), [`Kind::Usage`].
    pub fn run_worker(
        &self,
        url: &DbUrl,
        counters: &Counters,
        failures: &mut Vec<RowFailure>,
    ) -> Result<()> {
        let mut db = url.connect()?;
        let adopt_scope = match self.mode {
            Mode::Adopt { .. } => Some(self.adopt_scope()?),
            _ => None,
        };
        let started = Instant::now();
        let mut my_rows = 0u64;
        loop {
            let claimed =
                db.transaction(|db| self.one_chunk(db, adopt_scope.as_ref(), counters, failures))?;
            let Some(seen) = claimed else {
                return Ok(());
            };
            counters.chunks.fetch_add(1, Ordering::Relaxed);
            my_rows += seen;
            if let Some(rate) = self.per_worker_rate {
                #[allow(clippy::cast_precision_loss, reason = "a rate")]
                let due = Duration::from_secs_f64(my_rows as f64 / rate);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
    }

    fn one_chunk(
        &self,
        db: &mut Db,
        adopt_scope: Option<&KeyScope>,
        counters: &Counters,
        failures: &mut Vec<RowFailure>,
    ) -> Result<Option<u64>> {
        let lock = match db.backend() {
            Backend::Sqlite => "",
            _ => " FOR UPDATE SKIP LOCKED",
        };
        let claim: Vec<ChunkRow> = db.load(
            &format!(
                "SELECT chunk_no, lo, hi FROM leakless_migrate_chunk WHERE job = {} AND done = 0 \
                 ORDER BY chunk_no LIMIT 1{lock}",
                db.ph(1)
            ),
            &[Bind::Text(Some(self.job.clone()))],
        )?;
        let Some(chunk) = claim.into_iter().next() else {
            return Ok(None);
        };
        let range = Range {
            lo: chunk.lo,
            hi: chunk.hi,
        };
        let (mut seen, mut changed, mut failed) = (0u64, 0u64, 0u64);
        let mut after: Option<String> = None;
        loop {
            let (sql, binds) = page_sql(
                db,
                &self.table,
                &self.select(db),
                &range,
                after.as_deref(),
                self.batch,
            );
            let rows: Vec<IdTwo> = db.load(&sql, &binds)?;
            let full = rows.len() == self.batch;
            after = rows.last().map(|r| r.id.clone());
            let (s, c, f) = self.page(db, rows, adopt_scope, counters, failures)?;
            seen += s;
            changed += c;
            failed += f;
            if !full {
                break;
            }
        }
        db.exec(
            &format!(
                "UPDATE leakless_migrate_chunk SET done = 1, rows_seen = {}, rows_changed = {}, \
                 rows_failed = {}, finished_at = {} WHERE job = {} AND chunk_no = {}",
                db.ph(1),
                db.ph(2),
                db.ph(3),
                db.ph(4),
                db.ph(5),
                db.ph(6)
            ),
            &[
                Bind::Int(to_i64(seen)),
                Bind::Int(to_i64(changed)),
                Bind::Int(to_i64(failed)),
                Bind::Int(now_secs()),
                Bind::Text(Some(self.job.clone())),
                Bind::Int(chunk.chunk_no),
            ],
        )?;
        Ok(Some(seen))
    }
}

/// The query listing the job's chunk boundaries as text, in id order: the first id and every
/// `batch`-th one after it (the ids at positions 1, 1 + `batch`, 1 + 2 `batch`, ... in id order).
///
/// On PostgreSQL a recursive query steps from one boundary to the next through the primary
/// key's index (`OFFSET batch - 1` past the last boundary), converting only the boundaries to
/// text: on 1,000,000 rows about 80 ms with the visibility map set (300 ms without), where
/// numbering every row with `ROW_NUMBER()` took 330 ms (630 ms), time in which no worker runs.
/// MariaDB caps recursion at 1,000 steps by default (`cte_max_recursion_depth`), so it and
/// SQLite keep the window query.
fn chunk_bounds_sql(db: &Db, t: &SealedTable, batch: usize) -> String {
    let id = db.q(&t.row_id_column);
    let table = db.q(&t.table);
    let id_text = db.id_text(t.row_id_kind, &t.row_id_column);
    if db.backend() == Backend::Postgres {
        let skip = batch.max(1) - 1;
        // The walk's column has its own name: ordered by a column called `id`, the outer
        // query would sort by its text output, not by the id.
        let bound_text = db.id_text(t.row_id_kind, "leakless_bound");
        format!(
            "WITH RECURSIVE b(leakless_bound) AS (\
             SELECT (SELECT r.{id} FROM {table} r ORDER BY r.{id} LIMIT 1) \
             UNION ALL SELECT (SELECT r.{id} FROM {table} r WHERE r.{id} > b.leakless_bound \
             ORDER BY r.{id} OFFSET {skip} LIMIT 1) FROM b WHERE b.leakless_bound IS NOT NULL) \
             SELECT {bound_text} AS id FROM b WHERE b.leakless_bound IS NOT NULL \
             ORDER BY b.leakless_bound"
        )
    } else {
        format!(
            "SELECT idt AS id FROM (SELECT {id_text} AS idt, ROW_NUMBER() OVER (ORDER BY {id}) \
             AS rn FROM {table}) s WHERE (rn - 1) % {batch} = 0 ORDER BY rn"
        )
    }
}

/// The SQL expression that reads the legacy plaintext column `from` of `table` as the bytes
/// adoption seals and verifies: a bytes column (`bytea`) as stored; any other type through its
/// text form in UTF-8 (so `text`, `varchar`, `json` and `jsonb` all work; a `jsonb` document
/// reads as PostgreSQL prints it). MariaDB and SQLite read every type as its bytes (`BINARY`,
/// `BLOB`), which for text and JSON is the UTF-8 text.
///
/// # Errors
/// [`Kind::Usage`] when the table has no column `from`; [`Kind::Database`].
pub fn source_expr(db: &mut Db, table: &str, from: &str) -> Result<String> {
    crate::db::ident(from)?;
    let Some(ty) = db.column_type(table, from)? else {
        return Err(Failure::new(
            Kind::Usage,
            format!("{table}.{from}: no such column to adopt from"),
            "check --from, or the field's `adopt(from = ...)` in the model and the manifest",
        ));
    };
    let p = db.q(from);
    Ok(match db.backend() {
        Backend::Postgres if ty == "bytea" => p,
        Backend::Postgres => format!("convert_to({p}::text, 'UTF8')"),
        Backend::Mysql => format!("CAST({p} AS BINARY)"),
        Backend::Sqlite => format!("CAST({p} AS BLOB)"),
    })
}

/// The SQL expression of an adopted column's legacy plaintext as bytes, NULL where there is
/// none: the column `from` ([`source_expr`]), or for a pair adoption the compact JSON object of
/// its two numeric columns, NULL when either is NULL (as the derive's stages read it). One
/// expression serves the backfill, `adopt`'s dry run and verification, and `status`.
///
/// # Errors
/// [`Kind::Usage`] for a column the table does not have; [`Kind::Database`].
pub fn adoption_source(
    db: &mut Db,
    table: &str,
    from: &str,
    pair: Option<&AdoptionPair>,
) -> Result<String> {
    let Some(p) = pair else {
        return source_expr(db, table, from);
    };
    for c in [from, p.second_column.as_str()] {
        crate::db::ident(c)?;
        if db.column_type(table, c)?.is_none() {
            return Err(Failure::new(
                Kind::Usage,
                format!("{table}.{c}: no such column to adopt from"),
                "check the field's `adopt(pair(...))` in the model and the manifest",
            ));
        }
    }
    // The manifest's validation keeps the keys to letters, digits and `_`: safe as literals.
    let (a, b, k0, k1) = (
        db.q(from),
        db.q(&p.second_column),
        &p.first_key,
        &p.second_key,
    );
    let object = match db.backend() {
        Backend::Postgres => {
            format!("convert_to(json_build_object('{k0}', {a}, '{k1}', {b})::text, 'UTF8')")
        }
        Backend::Mysql => format!("CAST(JSON_OBJECT('{k0}', {a}, '{k1}', {b}) AS BINARY)"),
        Backend::Sqlite => format!("CAST(json_object('{k0}', {a}, '{k1}', {b}) AS BLOB)"),
    };
    Ok(format!(
        "CASE WHEN {a} IS NULL OR {b} IS NULL THEN NULL ELSE {object} END"
    ))
}

/// The rows of `table` still to adopt: its sealed `column` NULL and the plaintext `source` (an
/// [`adoption_source`] expression) not.
///
/// # Errors
/// [`Kind::Database`].
pub fn adoption_pending(db: &mut Db, table: &str, column: &str, source: &str) -> Result<u64> {
    let sql = format!(
        "SELECT COUNT(*) AS n FROM {} WHERE {} IS NULL AND {source} IS NOT NULL",
        db.q(table),
        db.q(column),
    );
    db.count(&sql, &[])
}

/// Plans and runs a job with `opts.workers` threads; `tick` is called about twice a second
/// with the live counters (for progress display).
///
/// # Errors
/// The first worker error; rows already committed stay done.
pub fn run(
    url: &DbUrl,
    ring: &KeyRing,
    mode: &Mode,
    t: &SealedTable,
    c: &SealedColumn,
    opts: &Options,
    tick: &mut dyn FnMut(&Counters, u64, u64),
) -> Result<Summary> {
    let started = Instant::now();
    let job = opts.job.clone().unwrap_or_else(|| job_name(mode, t, c));
    let mut db = url.connect()?;
    db.require_column(&t.table, &t.row_id_column, &c.column)?;
    // Refuse a per-tenant table whose tenant column cannot give the scope before planning.
    let tenant = TenantScope::probe(&mut db, t)?;
    let source = match mode {
        Mode::Adopt { from } => Some(adoption_source(
            &mut db,
            &t.table,
            from,
            c.adoption.as_ref().and_then(|a| a.pair.as_ref()),
        )?),
        Mode::Copy { from } => Some(source_expr(&mut db, &t.table, from)?),
        _ => None,
    };
    let index = match mode {
        Mode::Reindex => {
            let ix = IndexTarget::of(ring, t, c)?;
            db.require_column(&t.table, &t.row_id_column, &ix.column)?;
            Some(ix)
        }
        _ => None,
    };
    let (total, done_before) = plan(&mut db, &job, mode, t, c, opts.batch)?;
    drop(db);
    let workers = if url.backend() == Backend::Sqlite {
        1
    } else {
        opts.workers.max(1)
    };
    #[allow(clippy::cast_precision_loss, reason = "a rate")]
    let per_worker_rate = opts
        .max_rows_per_sec
        .map(|r| (r.max(1) as f64) / (workers as f64));
    let work = Arc::new(Work {
        job: job.clone(),
        mode: mode.clone(),
        table: t.clone(),
        column: c.clone(),
        ring: ring.clone(),
        batch: opts.batch.max(1),
        per_worker_rate,
        tenant,
        warmed: Arc::default(),
        source,
        index,
    });
    let counters = Arc::new(Counters::default());
    // Each worker holds a sender that nothing is ever sent on; the channel disconnects when the
    // last worker has ended (returned or panicked), which wakes the progress loop at once
    // instead of at its next 200 ms tick.
    let (alive, ended) = std::sync::mpsc::channel::<std::convert::Infallible>();
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let work = Arc::clone(&work);
            let counters = Arc::clone(&counters);
            let url = url.clone();
            let alive = alive.clone();
            std::thread::spawn(move || {
                let _alive = alive;
                let mut failures = Vec::new();
                let r = work.run_worker(&url, &counters, &mut failures);
                (r, failures)
            })
        })
        .collect();
    drop(alive);
    loop {
        tick(&counters, total, done_before);
        if let Err(RecvTimeoutError::Disconnected) = ended.recv_timeout(Duration::from_millis(200))
        {
            break;
        }
    }
    tick(&counters, total, done_before);
    let mut failures = Vec::new();
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok((r, f)) => {
                failures.extend(f);
                if let Err(e) = r {
                    first_err.get_or_insert(e);
                }
            }
            Err(_) => {
                first_err.get_or_insert(Failure::new(
                    Kind::Database,
                    "a worker thread panicked",
                    "rerun; finished chunks are checkpointed",
                ));
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    failures.truncate(100);
    Ok(Summary {
        job,
        mode: mode.name(),
        table: t.table.clone(),
        column: c.column.clone(),
        chunks_total: total,
        chunks_done_before: done_before,
        chunks_done_now: counters.chunks.load(Ordering::Relaxed),
        rows_seen: counters.seen.load(Ordering::Relaxed),
        rows_changed: counters.changed.load(Ordering::Relaxed),
        rows_retried: counters.retried.load(Ordering::Relaxed),
        rows_failed: counters.failed.load(Ordering::Relaxed),
        failures,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The one key scope of a table whose manifest names a static scope; `None` for a per-tenant
/// table (each row's scope comes from its tenant, see [`TenantScope`]) or an invalid name
/// (which the manifest check refuses).
#[must_use]
pub fn static_scope(table: &SealedTable) -> Option<KeyScope> {
    match &table.scope {
        ScopeSource::Static { scope } => KeyScope::new(scope).ok(),
        ScopeSource::PerTenant { .. } => None,
    }
}
