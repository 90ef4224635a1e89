//! The in-memory KEK cache: unwrapped KEKs with a bounded age and use count.
//!
//! The cache is what keeps KMS calls proportional to KEK versions rather than rows: a KEK is
//! unwrapped once, then wraps and unwraps DEKs locally until it is `max_age` old or has been used
//! `max_uses` times, whichever comes first. Each entry also keeps the KEK's expanded cipher state
//! for DEK wraps (the XAES-256-GCM key schedule, see `KekKeys` in the envelope module), so no
//! value pays a KEK key schedule. Evicted KEKs and their state are zeroized as soon as the last
//! in-flight operation holding them finishes ([`Kek`] and the cipher state zeroize on drop).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use zeroize::Zeroizing;

use crate::envelope::KekKeys;
use crate::key::{KekState, KekVersion, KeyScope, UnixTime};
use crate::secret::{KEY_LEN, Kek};

/// How many derived keys (blind-index field keys) one cached KEK keeps; past that, keys are
/// derived again on every use rather than cached.
const MAX_DERIVED: usize = 1024;

/// Bounds of the KEK cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// How long an unwrapped KEK stays usable before it is fetched again. This is also how long
    /// another process's key-state change (rotate, retire) can take to reach this one.
    /// Default: 5 minutes.
    pub max_age: Duration,
    /// How many DEK wraps and unwraps one cached KEK serves before it is fetched again.
    /// Default: 2^24 (about 16.8 million).
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
    uses: AtomicU64,
    /// Keys derived from this KEK (blind-index field keys), by derivation label; zeroized when
    /// the entry is dropped, so they live exactly as long as the KEK itself.
    derived: Mutex<HashMap<Vec<u8>, Zeroizing<[u8; KEY_LEN]>>>,
}

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
            uses: AtomicU64::new(0),
            derived: Mutex::new(HashMap::new()),
        }
    }

    /// The key derived from this KEK under `label`, computed by `derive` on first use and then
    /// served from this entry (up to [`MAX_DERIVED`] labels).
    pub(crate) fn derived_key<E>(
        &self,
        label: &[u8],
        derive: impl FnOnce(&Kek) -> Result<Zeroizing<[u8; KEY_LEN]>, E>,
    ) -> Result<Zeroizing<[u8; KEY_LEN]>, E> {
        {
            let map = self.derived.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(k) = map.get(label) {
                return Ok(Zeroizing::new(**k));
            }
        }
        let key = derive(self.keys.kek())?;
        let mut map = self.derived.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() < MAX_DERIVED {
            map.insert(label.to_vec(), Zeroizing::new(*key));
        }
        Ok(key)
    }
}

#[derive(Default)]
struct ScopeSlot {
    active: Option<KekVersion>,
    versions: HashMap<KekVersion, Arc<CachedKek>>,
}

/// The KEK cache. One per [`KeyRing`](crate::KeyRing); not shared between processes.
pub struct KekCache {
    config: CacheConfig,
    slots: RwLock<HashMap<KeyScope, ScopeSlot>>,
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
            slots: RwLock::new(HashMap::new()),
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
        let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
        slots.values().map(|s| s.versions.len()).sum()
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

    fn fresh(&self, entry: &CachedKek, now: UnixTime) -> bool {
        let age_ok = u128::from(now.seconds_since(entry.fetched_at))
            < self.config.max_age.as_secs().max(1).into();
        age_ok && entry.uses.load(Ordering::Relaxed) < self.config.max_uses
    }

    /// A fresh cached KEK for `scope`/`version`, counting one use.
    pub(crate) fn get(
        &self,
        scope: &str,
        version: KekVersion,
        now: UnixTime,
    ) -> Option<Arc<CachedKek>> {
        let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
        let entry = slots.get(scope)?.versions.get(&version)?;
        if self.fresh(entry, now) {
            entry.uses.fetch_add(1, Ordering::Relaxed);
            Some(Arc::clone(entry))
        } else {
            None
        }
    }

    /// The fresh cached active KEK of `scope`, counting one use. An entry answers "which
    /// version is active" only within its record's cache window (`recheck_secs`), even when
    /// its KEK bytes could stay cached longer.
    pub(crate) fn get_active(&self, scope: &str, now: UnixTime) -> Option<Arc<CachedKek>> {
        // One lock and one look-up of the scope: this runs once per sealed value.
        let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
        let slot = slots.get(scope)?;
        let entry = slot.versions.get(&slot.active?)?;
        if !self.fresh(entry, now) {
            return None;
        }
        entry.uses.fetch_add(1, Ordering::Relaxed);
        let window = u64::from(entry.recheck_secs.max(1));
        let checked = UnixTime(entry.active_checked_at.load(Ordering::Relaxed));
        (now.seconds_since(checked) < window).then(|| Arc::clone(entry))
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
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        slots.entry(scope.clone()).or_default().active = Some(version);
        Some(entry)
    }

    /// Caches `entry` (replacing a stale one), marking it active for its scope if `active`.
    pub(crate) fn insert(&self, scope: &KeyScope, entry: Arc<CachedKek>, active: bool) {
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        let slot = slots.entry(scope.clone()).or_default();
        if active {
            slot.active = Some(entry.version);
        }
        if slot.versions.insert(entry.version, entry).is_some() {
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        let total: usize = slots.values().map(|s| s.versions.len()).sum();
        if total > self.config.max_entries {
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
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Drops every cached KEK of `scope` (after a key-state change in this process).
    pub fn invalidate_scope(&self, scope: &str) {
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.remove(scope) {
            let n = u64::try_from(slot.versions.len()).unwrap_or(u64::MAX);
            self.evictions.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Drops every cached KEK.
    pub fn clear(&self) {
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        let n: usize = slots.values().map(|s| s.versions.len()).sum();
        slots.clear();
        self.evictions
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}
