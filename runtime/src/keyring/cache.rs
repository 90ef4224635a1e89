//! The in-memory KEK cache: unwrapped KEKs with a bounded age and use count.
//!
//! The cache is what keeps KMS calls proportional to KEK versions rather than rows: a KEK is
//! unwrapped once, then wraps and unwraps DEKs locally until it is `max_age` old or has been used
//! `max_uses` times, whichever comes first. Each entry also keeps the KEK's expanded cipher state
//! for DEK wraps (the XAES-256-GCM key schedule, see `KekKeys` in the envelope module), so no
//! value pays a KEK key schedule. Evicted KEKs and their state are zeroized as soon as the last
//! in-flight operation holding them finishes ([`Kek`] and the cipher state zeroize on drop).
//!
//! Reading the cache writes nothing that other threads read: the entries are an immutable
//! snapshot behind an [`ArcSwap`] (a change builds a new snapshot; the old one, and every entry
//! only it holds, drops when the last reader lets go of it), an operation borrows its entry
//! from the snapshot instead of cloning a reference count, and uses are counted in blocks of
//! [`USE_BLOCK`] that each thread reserves from the entry and spends alone. Threads opening or
//! sealing side by side therefore do not bounce one cache line between cores per value.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use zeroize::Zeroizing;

use crate::envelope::KekKeys;
use crate::key::{KekState, KekVersion, KeyScope, UnixTime};
use crate::secret::{KEY_LEN, Kek};

/// How many derived keys (blind-index field keys) one cached KEK keeps; past that, keys are
/// derived again on every use rather than cached.
const MAX_DERIVED: usize = 1024;

/// How many uses of an entry one thread reserves at a time (see [`CacheConfig::max_uses`]). A
/// block is taken from the entry's budget before any of its uses, never beyond it, so an entry
/// serves at most `max_uses` operations; a thread that stops using an entry leaves the rest of its block
/// unspent, which can only make the entry expire sooner.
const USE_BLOCK: u64 = 64;

/// How many entries' blocks one thread keeps at once.
const RESERVED_SLOTS: usize = 4;

/// Identifies cached entries to the per-thread use blocks; never reused, 0 is "no entry".
static NEXT_ENTRY_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's reserved use blocks: (entry id, uses left). It holds no key material and
    /// no reference to an entry, so an evicted entry still drops as soon as its last operation
    /// ends.
    static RESERVED: Cell<[(u64, u64); RESERVED_SLOTS]> =
        const { Cell::new([(0, 0); RESERVED_SLOTS]) };
}

/// Bounds of the KEK cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// How long an unwrapped KEK stays usable before it is fetched again. This is also how long
    /// another process's key-state change (rotate, retire) can take to reach this one.
    /// Default: 5 minutes.
    pub max_age: Duration,
    /// How many DEK wraps and unwraps one cached KEK serves at most before it is fetched
    /// again. Threads take uses in blocks of 64, so with several threads an entry may be
    /// fetched again a little sooner, never later. Default: 2^24 (about 16.8 million).
    pub max_uses: u64,
    /// How many KEK versions are held at once; the oldest fetch is evicted first. Default: 256.
    pub max_entries: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(300),
            max_uses: 1 << 24,
            max_entries: 256,
        }
    }
}

/// One unwrapped KEK in the cache.
pub(crate) struct CachedKek {
    /// The KEK with its expanded wrap cipher state, built once when the entry is made.
    pub(crate) keys: KekKeys,
    pub(crate) version: KekVersion,
    /// The state when fetched; a `Grace` deadline is checked again on every use.
    pub(crate) state: KekState,
    /// How long, in seconds, this entry may answer "which version is active": the record's
    /// cache window (the store's policy), so a rotation reaches this process in time.
    recheck_secs: u32,
    fetched_at: UnixTime,
    /// When the key store last confirmed this version as the active one.
    active_checked_at: AtomicI64,
    /// This entry's identity in the threads' use blocks.
    id: u64,
    /// Uses handed out so far, in blocks (see [`USE_BLOCK`]).
    uses: AtomicU64,
    /// Keys derived from this KEK (blind-index field keys), by derivation label, read without a
    /// lock; zeroized when the entry is dropped (each map replaced by a larger one is zeroized
    /// as it drops), so they live exactly as long as the KEK itself.
    derived: ArcSwap<DerivedKeys>,
    /// Serialises additions to `derived`.
    derived_write: Mutex<()>,
}

/// The derived keys of one cached KEK, by label.
type DerivedKeys = HashMap<Vec<u8>, Zeroizing<[u8; KEY_LEN]>>;

impl CachedKek {
    pub(crate) fn new(
        kek: Kek,
        version: KekVersion,
        state: KekState,
        recheck_secs: u32,
        now: UnixTime,
    ) -> Self {
        Self {
            keys: KekKeys::new(kek),
            version,
            state,
            recheck_secs,
            fetched_at: now,
            active_checked_at: AtomicI64::new(now.0),
            id: NEXT_ENTRY_ID.fetch_add(1, Ordering::Relaxed),
            uses: AtomicU64::new(0),
            derived: ArcSwap::from_pointee(HashMap::new()),
            derived_write: Mutex::new(()),
        }
    }

    /// Takes one use of this entry for the calling thread, from its reserved block or from a
    /// new block; `false` once `max_uses` uses have been handed out.
    fn take_use(&self, max_uses: u64) -> bool {
        RESERVED.with(|cell| {
            let mut blocks = cell.get();
            if let Some(block) = blocks
                .iter_mut()
                .find(|(id, left)| *id == self.id && *left > 0)
            {
                block.1 -= 1;
                cell.set(blocks);
                return true;
            }
            let mut handed = self.uses.load(Ordering::Relaxed);
            let block = loop {
                if handed >= max_uses {
                    return false;
                }
                let block = (max_uses - handed).min(USE_BLOCK);
                match self.uses.compare_exchange_weak(
                    handed,
                    handed + block,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break block,
                    Err(now) => handed = now,
                }
            };
            // Replace this entry's spent block, else an empty or spent slot, else the first.
            let slot = blocks
                .iter()
                .position(|(id, _)| *id == self.id)
                .or_else(|| blocks.iter().position(|(_, left)| *left == 0))
                .unwrap_or(0);
            if let Some(reserved) = blocks.get_mut(slot) {
                *reserved = (self.id, block - 1);
                cell.set(blocks);
            }
            true
        })
    }

    /// The key derived from this KEK under `label`, computed by `derive` on first use and then
    /// served from this entry (up to [`MAX_DERIVED`] labels).
    pub(crate) fn derived_key<E>(
        &self,
        label: &[u8],
        derive: impl FnOnce(&Kek) -> Result<Zeroizing<[u8; KEY_LEN]>, E>,
    ) -> Result<Zeroizing<[u8; KEY_LEN]>, E> {
        if let Some(k) = self.derived.load().get(label) {
            return Ok(Zeroizing::new(**k));
        }
        let key = derive(self.keys.kek())?;
        let _one = self
            .derived_write
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.derived.load();
        if current.len() < MAX_DERIVED && !current.contains_key(label) {
            let mut next = DerivedKeys::clone(&current);
            next.insert(label.to_vec(), Zeroizing::new(*key));
            self.derived.store(Arc::new(next));
        }
        Ok(key)
    }
}

#[derive(Clone, Default)]
struct ScopeSlot {
    active: Option<KekVersion>,
    versions: HashMap<KekVersion, Arc<CachedKek>>,
}

/// The cached entries, by scope.
type Slots = HashMap<KeyScope, ScopeSlot>;

/// The KEK cache. One per [`KeyRing`](crate::KeyRing); not shared between processes.
pub struct KekCache {
    config: CacheConfig,
    /// The current snapshot; replaced whole, under `write`, on every change.
    slots: ArcSwap<Slots>,
    /// Serialises changes, so none is lost between reading a snapshot and storing the next.
    write: Mutex<()>,
    evictions: AtomicU64,
}

impl std::fmt::Debug for KekCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KekCache")
            .field("config", &self.config)
            .field("entries", &self.len())
            .finish_non_exhaustive()
    }
}

impl KekCache {
    /// An empty cache with these bounds.
    #[must_use]
    pub fn new(config: CacheConfig) -> Self {
        Self {
            config,
            slots: ArcSwap::from_pointee(HashMap::new()),
            write: Mutex::new(()),
            evictions: AtomicU64::new(0),
        }
    }

    /// The bounds.
    #[must_use]
    pub fn config(&self) -> CacheConfig {
        self.config
    }

    /// How many KEK versions are cached.
    #[must_use]
    pub fn len(&self) -> usize {
        self.slots.load().values().map(|s| s.versions.len()).sum()
    }

    /// Whether the cache is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many entries have been evicted for age, use count or size so far.
    #[must_use]
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Whether `entry` is young enough and has a use left, taking that use.
    fn fresh(&self, entry: &CachedKek, now: UnixTime) -> bool {
        let age_ok = u128::from(now.seconds_since(entry.fetched_at))
            < self.config.max_age.as_secs().max(1).into();
        age_ok && entry.take_use(self.config.max_uses)
    }

    /// The entry of `scope`/`version` in `slots` if it is fresh, counting one use.
    fn fresh_entry<'a>(
        &self,
        slots: &'a Slots,
        scope: &str,
        version: KekVersion,
        now: UnixTime,
    ) -> Option<&'a Arc<CachedKek>> {
        let entry = slots.get(scope)?.versions.get(&version)?;
        self.fresh(entry, now).then_some(entry)
    }

    /// Applies `change` to a copy of the current snapshot and makes the copy current.
    fn change<R>(&self, change: impl FnOnce(&mut Slots) -> R) -> R {
        let _one = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = Slots::clone(&self.slots.load());
        let out = change(&mut next);
        self.slots.store(Arc::new(next));
        out
    }

    /// `f` on the fresh cached KEK for `scope`/`version`, counting one use; `f` is handed back
    /// when there is none. The entry is borrowed for the call: an eviction meanwhile drops it
    /// (zeroizing the KEK) when the call returns.
    pub(crate) fn with<F, R>(
        &self,
        scope: &str,
        version: KekVersion,
        now: UnixTime,
        f: F,
    ) -> Result<R, F>
    where
        F: FnOnce(&Arc<CachedKek>) -> R,
    {
        let slots = self.slots.load();
        match self.fresh_entry(&slots, scope, version, now) {
            Some(entry) => Ok(f(entry)),
            None => Err(f),
        }
    }

    /// As [`Self::with`], for an operation that needs the version to still open: `f` runs only
    /// when the entry's state opens at `now`, and otherwise the state is returned.
    pub(crate) fn with_opening<F, R>(
        &self,
        scope: &str,
        version: KekVersion,
        now: UnixTime,
        f: F,
    ) -> Result<Result<R, KekState>, F>
    where
        F: FnOnce(&Arc<CachedKek>) -> R,
    {
        let slots = self.slots.load();
        match self.fresh_entry(&slots, scope, version, now) {
            Some(entry) if entry.state.opens_at(now) => Ok(Ok(f(entry))),
            Some(entry) => Ok(Err(entry.state)),
            None => Err(f),
        }
    }

    /// A fresh cached KEK for `scope`/`version`, counting one use.
    pub(crate) fn get(
        &self,
        scope: &str,
        version: KekVersion,
        now: UnixTime,
    ) -> Option<Arc<CachedKek>> {
        self.with(scope, version, now, Arc::clone).ok()
    }

    /// `f` on the fresh cached active KEK of `scope`, counting one use; `f` is handed back when
    /// there is none. An entry answers "which version is active" only within its record's cache
    /// window (`recheck_secs`), even when its KEK bytes could stay cached longer.
    pub(crate) fn with_active<F, R>(&self, scope: &str, now: UnixTime, f: F) -> Result<R, F>
    where
        F: FnOnce(&Arc<CachedKek>) -> R,
    {
        // One snapshot and one look-up of the scope: this runs once per sealed value.
        let slots = self.slots.load();
        let Some(entry) = slots.get(scope).and_then(|s| s.versions.get(&s.active?)) else {
            return Err(f);
        };
        if !self.fresh(entry, now) {
            return Err(f);
        }
        let window = u64::from(entry.recheck_secs.max(1));
        let checked = UnixTime(entry.active_checked_at.load(Ordering::Relaxed));
        if now.seconds_since(checked) < window {
            Ok(f(entry))
        } else {
            Err(f)
        }
    }

    /// The fresh cached active KEK of `scope`, counting one use (see [`Self::with_active`]).
    pub(crate) fn get_active(&self, scope: &str, now: UnixTime) -> Option<Arc<CachedKek>> {
        self.with_active(scope, now, Arc::clone).ok()
    }

    /// After the key store confirmed `version` as the active one of `scope`: the cached entry,
    /// if it is still fresh and was fetched as active, starts a new cache window without a
    /// KMS call.
    pub(crate) fn confirm_active(
        &self,
        scope: &KeyScope,
        version: KekVersion,
        recheck_secs: u32,
        now: UnixTime,
    ) -> Option<Arc<CachedKek>> {
        let entry = self.get(scope.as_str(), version, now)?;
        if entry.state != KekState::Active || entry.recheck_secs != recheck_secs {
            return None;
        }
        entry.active_checked_at.store(now.0, Ordering::Relaxed);
        self.change(|slots| slots.entry(scope.clone()).or_default().active = Some(version));
        Some(entry)
    }

    /// Caches `entry` (replacing a stale one), marking it active for its scope if `active`.
    pub(crate) fn insert(&self, scope: &KeyScope, entry: Arc<CachedKek>, active: bool) {
        let max_entries = self.config.max_entries;
        let evicted = self.change(|slots| {
            let mut evicted = 0;
            let slot = slots.entry(scope.clone()).or_default();
            if active {
                slot.active = Some(entry.version);
            }
            if slot.versions.insert(entry.version, entry).is_some() {
                evicted += 1;
            }
            let total: usize = slots.values().map(|s| s.versions.len()).sum();
            if total > max_entries {
                // Evict the entry fetched longest ago.
                let oldest = slots
                    .iter()
                    .flat_map(|(s, slot)| {
                        slot.versions
                            .values()
                            .map(move |e| (s.clone(), e.version, e.fetched_at))
                    })
                    .min_by_key(|(_, _, t)| *t);
                if let Some((s, v, _)) = oldest {
                    if let Some(slot) = slots.get_mut(&s) {
                        slot.versions.remove(&v);
                        if slot.active == Some(v) {
                            slot.active = None;
                        }
                    }
                    evicted += 1;
                }
            }
            evicted
        });
        self.evictions.fetch_add(evicted, Ordering::Relaxed);
    }

    /// Drops every cached KEK of `scope` (after a key-state change in this process).
    pub fn invalidate_scope(&self, scope: &str) {
        let n = self.change(|slots| slots.remove(scope).map_or(0, |s| s.versions.len()));
        self.evictions
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Drops every cached KEK.
    pub fn clear(&self) {
        let n = self.change(|slots| {
            let n: usize = slots.values().map(|s| s.versions.len()).sum();
            slots.clear();
            n
        });
        self.evictions
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Weak;

    use super::*;

    fn entry(max_uses: u64) -> (KekCache, KeyScope, KekVersion) {
        let cache = KekCache::new(CacheConfig {
            max_uses,
            ..CacheConfig::default()
        });
        let scope = KeyScope::new("cache.test").unwrap();
        let version = KekVersion::new(1).unwrap();
        let kek = Kek::generate();
        let cached = CachedKek::new(kek, version, KekState::Active, 60, UnixTime(1_000));
        cache.insert(&scope, Arc::new(cached), true);
        (cache, scope, version)
    }

    /// Threads that each reserve blocks of uses never get more than `max_uses` out of one
    /// entry together, and get all of them: a block is only handed out from what is left.
    #[test]
    fn threads_together_get_exactly_max_uses() {
        for max_uses in [1, 63, 64, 65, 1_000, 4_097] {
            let (cache, scope, version) = entry(max_uses);
            let served: u64 = std::thread::scope(|s| {
                let workers: Vec<_> = (0..4)
                    .map(|_| {
                        s.spawn(|| {
                            let mut n = 0u64;
                            while cache
                                .get(scope.as_str(), version, UnixTime(1_001))
                                .is_some()
                            {
                                n += 1;
                            }
                            n
                        })
                    })
                    .collect();
                workers.into_iter().map(|w| w.join().unwrap()).sum()
            });
            assert_eq!(served, max_uses, "max_uses {max_uses}");
        }
    }

    /// An evicted entry is freed (its KEK zeroized) as soon as no operation borrows it, even
    /// though this thread still holds unspent uses of it, and an operation that borrowed it
    /// before the eviction finishes with it.
    #[test]
    fn an_evicted_entry_drops_when_its_last_borrow_ends() {
        let (cache, scope, version) = entry(1 << 20);
        let weak: Weak<CachedKek> = cache
            .get(scope.as_str(), version, UnixTime(1_001))
            .as_ref()
            .map(Arc::downgrade)
            .unwrap();
        let during = cache.with(scope.as_str(), version, UnixTime(1_001), |e| {
            cache.invalidate_scope(scope.as_str());
            // Still borrowed from the old snapshot here.
            (weak.upgrade().is_some(), e.version)
        });
        assert!(matches!(during, Ok((true, v)) if v == version));
        assert!(
            weak.upgrade().is_none(),
            "the evicted entry outlived its last borrow"
        );
        assert!(
            cache
                .get(scope.as_str(), version, UnixTime(1_001))
                .is_none()
        );
        assert_eq!(cache.evictions(), 1);
    }

    /// An entry past `max_age` is not served, whatever uses it has left.
    #[test]
    fn an_old_entry_is_not_served() {
        let (cache, scope, version) = entry(1 << 20);
        let too_late = UnixTime(1_000 + 300);
        assert!(
            cache
                .get(scope.as_str(), version, UnixTime(1_299))
                .is_some()
        );
        assert!(cache.get(scope.as_str(), version, too_late).is_none());
    }
}
