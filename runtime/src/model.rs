//! Sealed models: what `#[derive(Sealed)]` implements, and the hidden runtime path its
//! generated code calls.
//!
//! A model type holds plaintext fields; its generated `…Row` type holds what the database
//! stores (envelopes for sealed fields, blind-index tokens beside them). [`Sealed::seal_row`]
//! turns a model into its row, [`Sealed::open_row`] turns a loaded row back into the model.
//! There is no other way from a model to a row, so a sealed field cannot be stored unsealed by
//! mistake.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::context::RowId;
use crate::error::Error;
use crate::keyring::KeyRing;
use crate::manifest::{RowIdKind, SealedTable};

/// A model whose sealed fields are stored as envelopes. Implemented by `#[derive(Sealed)]`.
pub trait Sealed: Sized {
    /// The stored form: the same fields, sealed ones as envelope bytes, plus blind-index
    /// columns. It derives diesel's `Insertable`, `Queryable`, `Selectable` and `AsChangeset`.
    type Row;

    /// Seals every sealed field of `self` into a row for insert or update.
    ///
    /// # Errors
    /// The errors of [`KeyRing::seal`] and of the field's plaintext encoding.
    fn seal_row(&self, ring: &KeyRing) -> Result<Self::Row, Error>;

    /// Opens every sealed field of a loaded row. Each envelope must be sealed under the row's
    /// key scope (the model's, or the one its tenant column gives).
    ///
    /// # Errors
    /// The errors of [`KeyRing::open_in_scope`] (naming table, column and row; among them
    /// [`Error::WrongKeyScope`]) and of decoding.
    fn open_row(row: Self::Row, ring: &KeyRing) -> Result<Self, Error>;

    /// As [`Sealed::open_row`], handing the row's envelope and blind-index buffers to `spent`
    /// instead of freeing them; [`Sealed::open_rows`] calls it on its worker threads. The
    /// derive implements it; the default opens with `open_row`, which frees them at once.
    ///
    /// # Errors
    /// As [`Sealed::open_row`].
    #[doc(hidden)]
    fn open_row_spending(
        row: Self::Row,
        ring: &KeyRing,
        spent: &mut SpentBuffers,
    ) -> Result<Self, Error> {
        let _ = spent;
        Self::open_row(row, ring)
    }

    /// Seals many models in one pass (for a bulk `insert_into(...).values(&rows)`), in order.
    ///
    /// From 256 rows on, the batch is sealed on scoped threads, one per available core
    /// (`std::thread::available_parallelism`), the calling thread among them, which take
    /// blocks of 64 rows in turn until none is left (so a core the host slows down seals fewer
    /// of them). The first row is sealed before the threads start, so the KEKs it uses are in
    /// the cache and fetched once; a KEK version that first appears later in the batch may be
    /// fetched once per thread. Tracing spans of the worker threads are not children of the
    /// caller's span.
    ///
    /// # Errors
    /// The first error of [`Sealed::seal_row`] in row order; nothing is returned partially.
    fn seal_rows(items: &[Self], ring: &KeyRing) -> Result<Vec<Self::Row>, Error>
    where
        Self: Sync,
        Self::Row: Send,
    {
        parallel_map(items, |m: &Self| m.seal_row(ring))
    }

    /// Opens many loaded rows, in order; from 256 rows on on several threads, one per available
    /// core, which take blocks of 64 rows in turn, as [`Sealed::seal_rows`] describes.
    ///
    /// The worker threads do not free the rows' envelope buffers: they hand them back, and
    /// this thread, which allocated them (diesel loads rows on the calling thread), frees them
    /// between its own blocks and after the workers finish. Freed on a worker, each buffer
    /// would go back to this thread's allocator arena under its lock, against this thread's
    /// own allocations: measured on two cores, that made opening 10,000 rows on both slower
    /// than on one.
    ///
    /// On PostgreSQL, a large result loads faster through diesel's row-by-row mode: collect
    /// `load_iter::<Row, diesel::pg::PgRowByRowLoadingMode>` into a `Vec` and pass it here
    /// (libpq then never holds every row at once; figures in `docs/performance.md`).
    ///
    /// # Errors
    /// The first error of [`Sealed::open_row`] in row order.
    fn open_rows(rows: Vec<Self::Row>, ring: &KeyRing) -> Result<Vec<Self>, Error>
    where
        Self: Send,
        Self::Row: Send,
    {
        if rows.len() < PARALLEL_MIN_ROWS {
            return rows.into_iter().map(|r| Self::open_row(r, ring)).collect();
        }
        let mut rows = rows.into_iter();
        let mut out = Vec::with_capacity(rows.len());
        // The first row warms the KEK cache for the versions it uses before threads start.
        if let Some(first) = rows.next() {
            out.push(Self::open_row(first, ring)?);
        }
        let mut rest: Vec<Option<Self::Row>> = rows.map(Some).collect();
        let opened = parallel_chunks_mut(
            &mut rest,
            |slot: &mut Option<Self::Row>, spent| match slot.take() {
                Some(r) => Self::open_row_spending(r, ring, spent),
                None => Err(Error::Internal {
                    what: "open_rows",
                    problem: "a row was taken twice".into(),
                }),
            },
        )?;
        out.extend(opened);
        Ok(out)
    }

    /// The model's entry in the schema manifest.
    fn manifest() -> SealedTable;
}

/// From how many rows [`Sealed::seal_rows`] and [`Sealed::open_rows`] use several threads.
const PARALLEL_MIN_ROWS: usize = 256;

/// How many threads a batch of `len` rows is split over: one per available core, at most one
/// per [`PARALLEL_MIN_ROWS`] / 2 rows, and 1 below [`PARALLEL_MIN_ROWS`].
fn threads_for(len: usize) -> usize {
    if len < PARALLEL_MIN_ROWS {
        return 1;
    }
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    cores.min(len / (PARALLEL_MIN_ROWS / 2)).max(1)
}

/// `f` over `items` in order, on several scoped threads for large batches (see
/// [`parallel_blocks`]); the first row runs first, alone. Returns the first error in row order.
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> Result<R, Error> + Sync,
) -> Result<Vec<R>, Error> {
    let threads = threads_for(items.len());
    if threads <= 1 {
        return items.iter().map(&f).collect();
    }
    let Some((first, rest)) = items.split_first() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(items.len());
    out.push(f(first)?);
    out.extend(parallel_blocks(
        rest.chunks(BLOCK_ROWS).collect(),
        threads,
        |block, _| block.iter().map(&f).collect(),
        || {},
    )?);
    Ok(out)
}

/// How many rows a thread of [`parallel_blocks`] takes at a time: few enough that a thread the
/// host slows down leaves little for the others to wait for, enough that taking a block (an
/// atomic add and an uncontended lock) costs nothing next to sealing or opening its rows.
const BLOCK_ROWS: usize = 64;

/// As [`parallel_map`], over mutable slots (so rows can be moved out of them), without the
/// first-row-alone step (the caller does it).
///
/// `f` gets the [`SpentBuffers`] of its block: on the calling thread they free at once; a
/// worker keeps them and hands them back, and the calling thread frees them between its own
/// blocks and, for the last ones, after every worker has finished.
fn parallel_chunks_mut<T: Send, R: Send>(
    items: &mut [T],
    f: impl Fn(&mut T, &mut SpentBuffers) -> Result<R, Error> + Sync,
) -> Result<Vec<R>, Error> {
    let threads = threads_for(items.len() + 1);
    if threads <= 1 {
        let mut spent = SpentBuffers::free_now();
        return items.iter_mut().map(|t| f(t, &mut spent)).collect();
    }
    let handed_back: Mutex<Vec<SpentBuffers>> = Mutex::new(Vec::new());
    let out = parallel_blocks(
        items.chunks_mut(BLOCK_ROWS).collect(),
        threads,
        |block, on_caller| {
            let mut spent = if on_caller {
                SpentBuffers::free_now()
            } else {
                SpentBuffers::keep_for_caller()
            };
            let rows = block.iter_mut().map(|t| f(t, &mut spent)).collect();
            if !on_caller {
                lock(&handed_back).push(spent);
            }
            rows
        },
        || drop(std::mem::take(&mut *lock(&handed_back))),
    );
    drop(handed_back);
    out
}

/// `work` over `blocks` on `threads` scoped threads, the calling thread among them: each
/// thread takes the next block in order until none is left, so a thread the host slows down
/// takes fewer. `work` is told whether it runs on the calling thread, and `between` runs there
/// before each block it takes. Returns the blocks' rows in block order, or the first error in
/// row order: blocks are taken in order and each one taken is finished, so every block before
/// a failed one is done and its error found without the rest; after an error no thread takes
/// another block.
fn parallel_blocks<B: Send, R: Send>(
    blocks: Vec<B>,
    threads: usize,
    work: impl Fn(B, bool) -> Result<Vec<R>, Error> + Sync,
    between: impl Fn() + Sync,
) -> Result<Vec<R>, Error> {
    // One uncontended lock per block hands it to exactly one thread (a `&mut` slice cannot be
    // shared otherwise without `unsafe`).
    let slots: Vec<Mutex<Option<B>>> = blocks.into_iter().map(|b| Mutex::new(Some(b))).collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let per_thread = on_threads(threads, |on_caller| {
        let mut done: Vec<(usize, Result<Vec<R>, Error>)> = Vec::new();
        while !failed.load(Ordering::Relaxed) {
            if on_caller {
                between();
            }
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(block) = slots.get(i).and_then(|b| lock(b).take()) else {
                break;
            };
            let rows = work(block, on_caller);
            if rows.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            done.push((i, rows));
        }
        done
    });
    let mut by_block: Vec<(usize, Result<Vec<R>, Error>)> =
        per_thread.into_iter().flatten().collect();
    by_block.sort_unstable_by_key(|&(i, _)| i);
    let rows = by_block
        .iter()
        .map(|(_, r)| r.as_ref().map_or(0, Vec::len))
        .sum();
    let mut out = Vec::with_capacity(rows);
    for (_, rows) in by_block {
        out.extend(rows?);
    }
    Ok(out)
}

/// Locks `m`, also after a panic on another thread (the data here stays consistent: a block is
/// either taken or not, a list of buffers either has one more or not).
fn lock<X>(m: &Mutex<X>) -> std::sync::MutexGuard<'_, X> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `work` on `threads` threads: once on this thread (`work` is told so with `true`) and once
/// on each of `threads - 1` scoped threads; returns their outputs, this thread's first, after
/// every thread has finished. A panic in a thread resumes here.
fn on_threads<O: Send>(threads: usize, work: impl Fn(bool) -> O + Sync) -> Vec<O> {
    let work = &work;
    std::thread::scope(|s| {
        let handles: Vec<_> = (1..threads).map(|_| s.spawn(move || work(false))).collect();
        let mut outputs = Vec::with_capacity(threads);
        outputs.push(work(true));
        for h in handles {
            outputs.push(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        outputs
    })
}

/// Where [`Sealed::open_row_spending`] puts a row's envelope and blind-index buffers once it
/// has opened them: freed at once, or kept for the thread that allocated them (see
/// [`Sealed::open_rows`]). They hold ciphertext and tokens only, never plaintext.
#[doc(hidden)]
pub struct SpentBuffers {
    kept: Option<Vec<Vec<u8>>>,
}

impl std::fmt::Debug for SpentBuffers {
    /// How many buffers are kept, not their bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpentBuffers")
            .field("kept", &self.kept.as_ref().map(Vec::len))
            .finish()
    }
}

impl SpentBuffers {
    /// Buffers handed to [`Self::keep`] are freed at once.
    #[must_use]
    pub fn free_now() -> Self {
        Self { kept: None }
    }

    /// Buffers handed to [`Self::keep`] are kept until this value is dropped.
    fn keep_for_caller() -> Self {
        Self {
            kept: Some(Vec::new()),
        }
    }

    /// Takes a spent buffer (an envelope or blind-index column's value; `None` is nothing).
    pub fn keep(&mut self, buffer: impl Into<Option<Vec<u8>>>) {
        if let (Some(kept), Some(buffer)) = (&mut self.kept, buffer.into()) {
            kept.push(buffer);
        }
    }

    /// Whether buffers are kept (on a worker thread of [`Sealed::open_rows`]).
    #[cfg(test)]
    fn keeps(&self) -> bool {
        self.kept.is_some()
    }
}

/// A type usable as a model's row identity (bound into every envelope's context).
pub trait AsRowId {
    /// The kind, as the schema manifest records it.
    const KIND: RowIdKind;
    /// The identity.
    fn row_id(&self) -> RowId<'_>;
}

impl AsRowId for i64 {
    const KIND: RowIdKind = RowIdKind::Int;
    fn row_id(&self) -> RowId<'_> {
        RowId::Int(*self)
    }
}

impl AsRowId for i32 {
    const KIND: RowIdKind = RowIdKind::Int;
    fn row_id(&self) -> RowId<'_> {
        RowId::Int(i64::from(*self))
    }
}

impl AsRowId for String {
    const KIND: RowIdKind = RowIdKind::Text;
    fn row_id(&self) -> RowId<'_> {
        RowId::Text(self)
    }
}

impl AsRowId for Vec<u8> {
    const KIND: RowIdKind = RowIdKind::Bytes;
    fn row_id(&self) -> RowId<'_> {
        RowId::Bytes(self)
    }
}

impl AsRowId for [u8; 16] {
    const KIND: RowIdKind = RowIdKind::Uuid;
    fn row_id(&self) -> RowId<'_> {
        RowId::Uuid(*self)
    }
}

/// The runtime path of generated code. Not a public API: it may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::aead::Algorithm;
    pub use crate::blind_index::{BlindIndexSpec, Normalizer};
    pub use crate::codec::Sealable;
    pub use crate::context::RowId;
    pub use crate::error::Error;
    pub use crate::key::KeyScope;
    pub use crate::keyring::{FieldPolicy, KeyRing};
    pub use crate::manifest::{
        AdoptionColumn, AdoptionPair, AdoptionStage, BlindIndexColumn, PlaintextEncoding,
        RowIdKind, ScopeSource, SealedColumn, SealedTable,
    };
    pub use crate::model::{AsRowId, Sealed, SpentBuffers};
    pub use crate::padding::PaddingPolicy;

    pub use crate::context::FieldContext;

    use crate::context::FieldLocation;
    use crate::secret::Plaintext;

    /// The key scope of a row: static, or a prefix plus the tenant value.
    pub fn scope(name: &str, tenant: Option<&dyn core::fmt::Display>) -> Result<KeyScope, Error> {
        match tenant {
            None => KeyScope::new(name),
            Some(t) => KeyScope::new(&format!("{name}{t}")),
        }
    }

    /// The blind-index token of one field value.
    pub fn blind_index<T: Sealable>(
        ring: &KeyRing,
        spec: &BlindIndexSpec,
        value: &T,
    ) -> Result<Vec<u8>, Error> {
        Ok(ring
            .blind_index(spec, &value.to_plaintext()?)?
            .as_bytes()
            .to_vec())
    }

    /// The look-up tokens of one value (every index-key version that still opens).
    pub fn blind_index_candidates<T: Sealable>(
        ring: &KeyRing,
        spec: &BlindIndexSpec,
        value: &T,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let tokens = ring.blind_index_candidates(spec, &value.to_plaintext()?)?;
        Ok(tokens.iter().map(|t| t.as_bytes().to_vec()).collect())
    }
    /// Opens one field being adopted from a plaintext column. The envelope wins when present
    /// (opened at `at`, under `scope`: the row's scope); otherwise, only when `plaintext_reads`
    /// (stages `read_plaintext` and `write_sealed_only`), the legacy plaintext value is decoded
    /// through [`Plaintext`] (wiped on drop), as an opened value would be. `Ok(None)` when
    /// neither gives a value.
    pub fn open_adopting<T: Sealable>(
        ring: &KeyRing,
        scope: &KeyScope,
        at: &FieldContext<'_>,
        envelope: Option<&[u8]>,
        plaintext: Option<Vec<u8>>,
        plaintext_reads: bool,
    ) -> Result<Option<T>, Error> {
        if let Some(e) = envelope {
            return ring.open_value(scope, at, e).map(Some);
        }
        match plaintext {
            Some(p) if plaintext_reads => T::from_plaintext(Plaintext::new(p)).map(Some),
            // Stage `sealed_only`: the legacy column is ignored, and its copy is wiped here.
            Some(p) => {
                drop(Plaintext::new(p));
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// The error for a non-`Option` adopted field whose sealed column is still NULL (and, in
    /// stage `sealed_only`, whose plaintext is no longer read): never a silent default.
    pub fn not_backfilled(table: &str, column: &str, row: RowId<'_>, stage: &str) -> Error {
        null_column(
            table,
            column,
            row,
            format!(
                "NULL, and stage `{stage}` reads no plaintext for it: the row was not \
                 backfilled; run `leakless-migrate adopt` for this column (see \
                 docs/adoption.md), or go back to stage `write_sealed_only`"
            ),
        )
    }

    /// The error for a non-`Option` field moving between columns (`moving(...)`) whose new and
    /// old columns are both NULL: the copy has not reached the row.
    pub fn not_moved(table: &str, column: &str, from: &str, row: RowId<'_>) -> Error {
        null_column(
            table,
            column,
            row,
            format!(
                "NULL, and so is the old column {table}.{from}: the envelopes were not copied \
                 into `{column}` yet; copy them (docs/adoption.md, \"Keeping the column's \
                 name\") before a build that reads only `{column}`"
            ),
        )
    }

    /// [`Error::NotBackfilled`] for `column` of `row` in `table`, which is NULL as `problem`
    /// says.
    fn null_column(table: &str, column: &str, row: RowId<'_>, problem: String) -> Error {
        Error::NotBackfilled {
            location: FieldLocation {
                table: table.to_owned(),
                column: column.to_owned(),
                row: row.to_string(),
            },
            problem,
        }
    }

    /// The legacy plaintext copy of a value for a text column (stage `read_plaintext` keeps
    /// writing it so that older application versions still read the row).
    pub fn plaintext_text<T: Sealable>(value: &T) -> Result<String, Error> {
        let bytes = value.to_plaintext()?;
        std::str::from_utf8(&bytes)
            .map(str::to_owned)
            .map_err(|_| Error::InvalidInput {
                what: "adopted column",
                problem: format!(
                    "{} bytes that are not UTF-8 cannot go to a text plaintext column",
                    bytes.len()
                ),
            })
    }

    /// The legacy plaintext copy of a value for a binary column.
    pub fn plaintext_bytes<T: Sealable>(value: &T) -> Result<Vec<u8>, Error> {
        Ok(value.to_plaintext()?.to_vec())
    }

    fn pair_error(problem: String) -> Error {
        Error::InvalidInput {
            what: "adopted pair",
            problem,
        }
    }

    /// The legacy plaintext of a value adopted from two numeric columns (`adopt(pair(...))`):
    /// the compact JSON object `{"<key 0>":<value 0>,"<key 1>":<value 1>}` of `members` (each
    /// `(key, column, value)`), or `None` when either column is NULL (the migrator's backfill
    /// reads a pair the same way). The keys are plain names (the derive checks them).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming table, column and row for a NaN or an infinity.
    pub fn pair_plaintext(
        table: &str,
        row: RowId<'_>,
        members: [(&str, &str, Option<f64>); 2],
    ) -> Result<Option<Vec<u8>>, Error> {
        let [(k0, c0, Some(v0)), (k1, c1, Some(v1))] = members else {
            return Ok(None);
        };
        let num = |column: &str, v: f64| {
            serde_json::Number::from_f64(v).ok_or_else(|| {
                pair_error(format!(
                    "{table}.{column} of row {row} holds NaN or an infinity, which no JSON \
                     number is"
                ))
            })
        };
        let text = format!("{{\"{k0}\":{},\"{k1}\":{}}}", num(c0, v0)?, num(c1, v1)?);
        Ok(Some(text.into_bytes()))
    }

    /// The two numbers a value adopted from a pair writes back to its legacy columns (stage
    /// `read_plaintext`): the members `keys` of the value's JSON object.
    pub fn plaintext_pair<T: Sealable>(value: &T, keys: [&str; 2]) -> Result<[f64; 2], Error> {
        let bytes = value.to_plaintext()?;
        let json: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|_| pair_error("the value's plaintext is not JSON".to_owned()))?;
        let get = |k: &str| {
            json.get(k)
                .and_then(serde_json::Value::as_f64)
                .ok_or_else(|| {
                    pair_error(format!(
                        "the value's JSON has no number under `{k}`: the pair's keys must name \
                         two numeric fields of the type"
                    ))
                })
        };
        Ok([get(keys[0])?, get(keys[1])?])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use super::{SpentBuffers, parallel_chunks_mut, parallel_map, threads_for};
    use crate::error::Error;

    fn fail_at(i: usize) -> Error {
        Error::InvalidInput {
            what: "row",
            problem: format!("{i}"),
        }
    }

    #[test]
    fn parallel_map_keeps_row_order_and_reports_the_first_error_by_row() {
        let items: Vec<usize> = (0..1_000).collect();
        let doubled = parallel_map(&items, |&i| Ok(i * 2)).unwrap();
        assert_eq!(doubled, (0..1_000).map(|i| i * 2).collect::<Vec<_>>());

        // Rows 300 and 900 fail (in different chunks on two or more cores): 300 is reported.
        let err = parallel_map(&items, |&i| {
            if i == 300 || i == 900 {
                Err(fail_at(i))
            } else {
                Ok(i)
            }
        })
        .unwrap_err();
        assert!(matches!(err, Error::InvalidInput { ref problem, .. } if problem == "300"));
        // Only a late chunk fails: its error still comes back.
        let err =
            parallel_map(&items, |&i| if i == 999 { Err(fail_at(i)) } else { Ok(i) }).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { ref problem, .. } if problem == "999"));
    }

    #[test]
    fn parallel_chunks_mut_moves_each_row_once_in_order() {
        let mut slots: Vec<Option<String>> = (0..777).map(|i| Some(i.to_string())).collect();
        let out = parallel_chunks_mut(&mut slots, |s, _| {
            s.take().ok_or_else(|| fail_at(usize::MAX))
        })
        .unwrap();
        assert_eq!(out, (0..777).map(|i| i.to_string()).collect::<Vec<_>>());
        assert!(slots.iter().all(Option::is_none));
        let mut slots: Vec<Option<usize>> = (0..777).map(Some).collect();
        let err = parallel_chunks_mut(&mut slots, |s, _| match s.take() {
            Some(i) if i == 100 || i == 700 => Err(fail_at(i)),
            Some(i) => Ok(i),
            None => Err(fail_at(usize::MAX)),
        })
        .unwrap_err();
        assert!(matches!(err, Error::InvalidInput { ref problem, .. } if problem == "100"));
    }

    /// Rows opened on a worker thread keep their spent buffers for the calling thread to free;
    /// rows opened on the calling thread free them at once. (On a one-core machine every row
    /// runs on the calling thread, and nothing is kept.) The calling thread's rows wait until
    /// a worker has opened one, so that both kinds occur however the threads are scheduled.
    #[test]
    fn only_worker_threads_keep_spent_buffers_for_the_caller() {
        let caller = std::thread::current().id();
        let multi = threads_for(778) > 1;
        let worker_ran = AtomicBool::new(false);
        let mut slots: Vec<Option<Vec<u8>>> = (0..777).map(|i| Some(vec![0u8; i % 50])).collect();
        let seen = parallel_chunks_mut(&mut slots, |s, spent: &mut SpentBuffers| {
            let here = std::thread::current().id() == caller;
            if !here {
                worker_ran.store(true, Ordering::Relaxed);
            }
            let waited = Instant::now();
            while multi && here && !worker_ran.load(Ordering::Relaxed) {
                assert!(
                    waited.elapsed() < Duration::from_secs(30),
                    "no worker started"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            let keeps = spent.keeps();
            spent.keep(s.take());
            Ok((here, keeps))
        })
        .unwrap();
        assert!(seen.iter().all(|&(here, keeps)| here != keeps));
        let on_workers = seen.iter().filter(|&&(here, _)| !here).count();
        if multi {
            assert!(on_workers > 0, "no row ran on a worker thread");
        } else {
            assert_eq!(on_workers, 0);
        }
        let mut free_now = SpentBuffers::free_now();
        free_now.keep(vec![1, 2, 3]);
        assert!(!free_now.keeps());
        let mut kept = SpentBuffers::keep_for_caller();
        kept.keep(None);
        kept.keep(vec![1]);
        assert_eq!(kept.kept.as_ref().map(Vec::len), Some(1));
    }

    /// The threads take blocks as they go: a thread that is slow on every row opens fewer of
    /// them, and the rows still come back in order.
    #[test]
    fn a_slow_thread_takes_fewer_blocks() {
        let caller = std::thread::current().id();
        let mut slots: Vec<Option<usize>> = (0..2_000).map(Some).collect();
        let seen = parallel_chunks_mut(&mut slots, |s, _| {
            let here = std::thread::current().id() == caller;
            if here {
                std::thread::sleep(Duration::from_micros(500));
            }
            s.take()
                .map(|i| (i, here))
                .ok_or_else(|| fail_at(usize::MAX))
        })
        .unwrap();
        assert_slow_caller_took_fewer(&seen, "opened");
    }

    /// `seen` (row, whether it ran on the calling thread) is every row in order, and the
    /// calling thread, slow on every row, did fewer than 1,000 of them (all of them on one
    /// core).
    fn assert_slow_caller_took_fewer(seen: &[(usize, bool)], did: &str) {
        assert!(seen.iter().map(|&(i, _)| i).eq(0..seen.len()));
        let on_caller = seen.iter().filter(|&&(_, here)| here).count();
        if threads_for(seen.len()) > 1 {
            assert!(
                on_caller < 1_000,
                "the slow calling thread {did} {on_caller} of {} rows",
                seen.len()
            );
        } else {
            assert_eq!(
                on_caller,
                seen.len(),
                "one core: every row on the calling thread"
            );
        }
    }

    /// The same for [`parallel_map`] (`seal_rows`): with one fixed chunk per thread, the
    /// calling thread would take the first row and half of the rest, 1,001 of 2,001.
    #[test]
    fn a_slow_thread_seals_fewer_blocks() {
        let caller = std::thread::current().id();
        let items: Vec<usize> = (0..2_001).collect();
        let seen = parallel_map(&items, |&i| {
            let here = std::thread::current().id() == caller;
            if here {
                std::thread::sleep(Duration::from_micros(500));
            }
            Ok((i, here))
        })
        .unwrap();
        assert_slow_caller_took_fewer(&seen, "sealed");
    }
}
