//! The [`KeyRing`]: seals and opens field values, and runs every KEK lifecycle transition.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tracing::{debug, info};

use crate::aead::Algorithm;
use crate::context::FieldContext;
use crate::envelope::{self, SealParams};
use crate::error::Error;
use crate::key::{
    AuditInfo, AuditRecord, Clock, KekRecord, KekState, KekVersion, KeyAction, KeyScope,
    RecordUpdate, StoreChange, SystemClock, UnixTime, WrappedKek,
};
use crate::keyring::cache::CachedKek;
use crate::keyring::integrity::{Chain, IntegrityKey, RESERVED_SCOPE_PREFIX};
use crate::keyring::{CacheConfig, KekCache};
use crate::kms::{InKmsRewrap, KekBinding, Kms};
use crate::padding::PaddingPolicy;
use crate::secret::{Kek, Plaintext};
use crate::store::KeyStore;

/// How one field is sealed: its AEAD and its padding policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FieldPolicy {
    /// The data AEAD.
    pub algorithm: Algorithm,
    /// The length-bucket padding.
    pub padding: PaddingPolicy,
}

/// How many times the ring has called its KMS backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KmsCallCounts {
    /// `wrap_kek` calls (new versions, root rotation).
    pub wraps: u64,
    /// `unwrap_kek` calls (cache misses).
    pub unwraps: u64,
}

/// Builds a [`KeyRing`]. Obtained from [`KeyRing::builder`].
pub struct KeyRingBuilder {
    kms: Arc<dyn Kms>,
    store: Arc<dyn KeyStore>,
    clock: Arc<dyn Clock>,
    cache: CacheConfig,
    cache_window: Option<Duration>,
}

impl std::fmt::Debug for KeyRingBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRingBuilder")
            .field("kms", &self.kms)
            .field("store", &self.store.name())
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl KeyRingBuilder {
    /// Uses `clock` for grace deadlines, audit times and cache ages (default: the system clock).
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the KEK cache bounds (default: [`CacheConfig::default`]).
    #[must_use]
    pub fn cache(mut self, config: CacheConfig) -> Self {
        self.cache = config;
        self
    }

    /// Sets the cache window recorded on the versions this ring creates
    /// ([`KekRecord::recheck_secs`]): how often every application re-reads which version is
    /// active, and how long retire and destroy wait after a rotation. Default: the cache's
    /// `max_age`. Keep it at least as long as the applications' own `max_age` is short: an
    /// application re-checks within the smaller of the two.
    #[must_use]
    pub fn cache_window(mut self, window: Duration) -> Self {
        self.cache_window = Some(window);
        self
    }

    /// Builds the ring. Does not contact the KMS or the store yet.
    #[must_use]
    pub fn build(self) -> KeyRing {
        KeyRing {
            inner: Arc::new(Inner {
                kms: self.kms,
                store: self.store,
                clock: self.clock,
                cache: KekCache::new(self.cache),
                cache_window: self.cache_window.unwrap_or(self.cache.max_age),
                wraps: AtomicU64::new(0),
                unwraps: AtomicU64::new(0),
                chain: Mutex::new(Chain::default()),
                integrity: Mutex::new(None),
                inflight: Mutex::new(HashMap::new()),
            }),
        }
    }
}

pub(crate) struct Inner {
    pub(crate) kms: Arc<dyn Kms>,
    pub(crate) store: Arc<dyn KeyStore>,
    clock: Arc<dyn Clock>,
    pub(crate) cache: KekCache,
    wraps: AtomicU64,
    unwraps: AtomicU64,
    /// The cache window recorded on versions this ring creates.
    cache_window: Duration,
    /// What this ring has verified of the store's audit chain.
    pub(crate) chain: Mutex<Chain>,
    /// The store's integrity key, once unwrapped.
    pub(crate) integrity: Mutex<Option<Arc<IntegrityKey>>>,
    /// One lock per KEK being fetched (scope, version; version 0 for "the active one"), so
    /// concurrent cache misses make one KMS call.
    inflight: Mutex<HashMap<(String, u32), FlightLock>>,
}

/// The lock one KEK fetch holds while it asks the KMS.
type FlightLock = Arc<Mutex<()>>;

/// Seals and opens field values, and manages KEK versions.
///
/// Cheap to clone (an `Arc` inside) and safe to share between threads. Holds a KMS backend, a
/// key store, a clock and the KEK cache.
#[derive(Clone)]
pub struct KeyRing {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("kms", &self.inner.kms)
            .field("store", &self.inner.store.name())
            .field("cache", &self.inner.cache)
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// Starts building a ring over a KMS backend and a key store.
    #[must_use]
    pub fn builder(kms: Arc<dyn Kms>, store: Arc<dyn KeyStore>) -> KeyRingBuilder {
        KeyRingBuilder {
            kms,
            store,
            clock: Arc::new(SystemClock),
            cache: CacheConfig::default(),
            cache_window: None,
        }
    }

    /// The KMS backend.
    #[must_use]
    pub fn kms(&self) -> &Arc<dyn Kms> {
        &self.inner.kms
    }

    /// The key store.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.inner.store
    }

    /// The KEK cache (for its counters and for invalidation).
    #[must_use]
    pub fn cache(&self) -> &KekCache {
        &self.inner.cache
    }

    /// How many KMS calls this ring has made so far.
    #[must_use]
    pub fn kms_calls(&self) -> KmsCallCounts {
        KmsCallCounts {
            wraps: self.inner.wraps.load(Ordering::Relaxed),
            unwraps: self.inner.unwraps.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn now(&self) -> UnixTime {
        self.inner.clock.now()
    }

    pub(crate) fn count_wrap(&self) {
        self.inner.wraps.fetch_add(1, Ordering::Relaxed);
    }

    /// The cache window recorded on versions this ring creates
    /// ([`KeyRingBuilder::cache_window`]), in whole seconds, at least one.
    pub(crate) fn recheck_secs(&self) -> u32 {
        let secs = self.inner.cache_window.as_secs().max(1);
        u32::try_from(secs).unwrap_or(u32::MAX)
    }

    /// The lock that makes concurrent fetches of one KEK a single KMS call.
    fn flight(&self, scope: &str, version: u32) -> Arc<Mutex<()>> {
        let mut map = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry((scope.to_owned(), version)).or_default())
    }

    // ----- sealing and opening -------------------------------------------------------------

    /// Seals `plaintext` for the field at `ctx` under the active KEK of `scope`.
    ///
    /// # Errors
    /// [`Error::ScopeNotFound`] or [`Error::NoActiveKey`] when there is nothing to seal with,
    /// [`Error::Kms`] / [`Error::KeyStore`] on a cache miss that cannot be served,
    /// [`Error::InvalidInput`] for a bad context or policy.
    pub fn seal(
        &self,
        scope: &KeyScope,
        ctx: &FieldContext<'_>,
        plaintext: &[u8],
        policy: &FieldPolicy,
    ) -> Result<Vec<u8>, Error> {
        let span = tracing::trace_span!(
            "leakless.seal",
            table = ctx.table,
            column = ctx.column,
            scope = %scope,
            kek_version = tracing::field::Empty,
        );
        let _entered = span.enter();
        self.with_active_kek(scope, |cached| {
            span.record("kek_version", cached.version.get());
            envelope::seal(
                &SealParams {
                    kek: &cached.keys,
                    scope,
                    kek_version: cached.version,
                    ctx,
                    algorithm: policy.algorithm,
                    padding: policy.padding,
                },
                plaintext,
            )
        })
    }

    /// Opens an envelope sealed for the field at `ctx`, whatever key scope its header names.
    ///
    /// For tools that have no expectation of the scope (inspection, fuzzing). Application code
    /// knows which scope a row must use and calls [`Self::open_in_scope`] (the derive's
    /// generated code always does): without that check, a value sealed under another tenant's
    /// scope for the same table, column and row would open here.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an invalid `ctx` (checked first); a parse error
    /// ([`Error::NotAnEnvelope`], [`Error::UnknownFormatVersion`],
    /// [`Error::UnknownAlgorithm`], [`Error::Truncated`], [`Error::Malformed`]); a key error
    /// ([`Error::KeyVersionNotFound`], [`Error::KeyDestroyed`], [`Error::KeyWrongState`]), or
    /// a KMS/key-store error on a cache miss; or the opaque [`Error::DecryptionFailed`]. All
    /// but the first name the field.
    pub fn open(&self, ctx: &FieldContext<'_>, envelope_bytes: &[u8]) -> Result<Plaintext, Error> {
        self.open_checked(None, ctx, envelope_bytes)
    }

    /// Opens an envelope sealed for the field at `ctx`, refusing it unless its header names
    /// `scope`, the key scope the field's row must use (the model's scope, or its tenant's).
    /// The scope is compared before any key is fetched.
    ///
    /// # Errors
    /// As [`Self::open`], plus [`Error::WrongKeyScope`] (after the parse errors, before the
    /// key errors) when the envelope names another scope.
    pub fn open_in_scope(
        &self,
        scope: &KeyScope,
        ctx: &FieldContext<'_>,
        envelope_bytes: &[u8],
    ) -> Result<Plaintext, Error> {
        self.open_checked(Some(scope), ctx, envelope_bytes)
    }

    fn open_checked(
        &self,
        expected: Option<&KeyScope>,
        ctx: &FieldContext<'_>,
        envelope_bytes: &[u8],
    ) -> Result<Plaintext, Error> {
        let span = tracing::trace_span!(
            "leakless.open",
            table = ctx.table,
            column = ctx.column,
            row = %ctx.row,
            kek_version = tracing::field::Empty,
        );
        let _entered = span.enter();
        let (parsed, context) = parse_for(expected, ctx, envelope_bytes)?;
        span.record("kek_version", parsed.kek_version.get());
        self.with_kek_for_open(parsed.scope, parsed.kek_version, "open", |cached| {
            envelope::open(&cached.keys, &parsed, ctx, context)
        })
        .map_err(|e| e.in_field(ctx.location()))
    }

    /// Moves an envelope's DEK onto the active KEK version of its scope, leaving the data
    /// ciphertext untouched. Returns `None` when it already is on the active version.
    ///
    /// Like [`Self::open`], this does not check which scope the envelope names; use
    /// [`Self::rewrap_in_scope`] when the row's scope is known.
    ///
    /// # Errors
    /// As [`Self::open`] for the old version, and as [`Self::seal`] for the active one.
    pub fn rewrap(
        &self,
        ctx: &FieldContext<'_>,
        envelope_bytes: &[u8],
    ) -> Result<Option<Vec<u8>>, Error> {
        self.rewrap_checked(None, ctx, envelope_bytes, false)
    }

    /// As [`Self::rewrap`], refusing the envelope with [`Error::WrongKeyScope`] unless its
    /// header names `scope`, before any key is fetched.
    ///
    /// # Errors
    /// As [`Self::open_in_scope`] for the old version, and as [`Self::seal`] for the active one.
    pub fn rewrap_in_scope(
        &self,
        scope: &KeyScope,
        ctx: &FieldContext<'_>,
        envelope_bytes: &[u8],
    ) -> Result<Option<Vec<u8>>, Error> {
        self.rewrap_checked(Some(scope), ctx, envelope_bytes, false)
    }

    /// As [`Self::rewrap`] (or [`Self::rewrap_in_scope`] when `scope` is given), and before
    /// re-wrapping, authenticates the data ciphertext too: the envelope is opened with the old
    /// KEK version and the plaintext (a zeroizing buffer) dropped at once. An envelope whose
    /// DEK unwraps but whose data part is corrupt or tampered with then fails with
    /// [`Error::DecryptionFailed`] (or [`Error::Malformed`] for a missing padding marker)
    /// instead of being re-wrapped as if it were sound. An envelope already on the active
    /// version is not opened (`Ok(None)`, as in [`Self::rewrap`]).
    ///
    /// The DEK is unwrapped once for both the check and the re-wrap, so this costs one data
    /// decryption per moved envelope on top of [`Self::rewrap`]; `leakless-migrate rewrap`
    /// uses it.
    ///
    /// # Errors
    /// As [`Self::rewrap_in_scope`] (or [`Self::rewrap`]), plus the errors of [`Self::open`]
    /// for the data part.
    pub fn rewrap_verified(
        &self,
        scope: Option<&KeyScope>,
        ctx: &FieldContext<'_>,
        envelope_bytes: &[u8],
    ) -> Result<Option<Vec<u8>>, Error> {
        self.rewrap_checked(scope, ctx, envelope_bytes, true)
    }

    fn rewrap_checked(
        &self,
        expected: Option<&KeyScope>,
        ctx: &FieldContext<'_>,
        envelope_bytes: &[u8],
        verify_data: bool,
    ) -> Result<Option<Vec<u8>>, Error> {
        let (parsed, context) = parse_for(expected, ctx, envelope_bytes)?;
        let scope = KeyScope::new(parsed.scope)?;
        let active = self.active_kek(&scope)?;
        if active.version == parsed.kek_version {
            return Ok(None);
        }
        let old = self
            .kek_for_open(parsed.scope, parsed.kek_version, "rewrap")
            .map_err(|e| e.in_field(ctx.location()))?;
        let to = envelope::RewrapTarget {
            kek: &active.keys,
            scope: &scope,
            version: active.version,
        };
        envelope::rewrap(&old.keys, &to, &parsed, ctx, context, verify_data).map(Some)
    }

    pub(crate) fn clock_now(&self) -> UnixTime {
        self.now()
    }

    /// A key derived from the active KEK of `scope` under `label` (a blind-index field key),
    /// with the KEK's version. `derive` runs once per cached KEK entry and label; later calls
    /// get the copy kept in the entry, zeroized when the entry is evicted and dropped.
    pub(crate) fn active_derived_key(
        &self,
        scope: &KeyScope,
        label: &[u8],
        derive: impl FnOnce(
            &[u8; crate::secret::KEY_LEN],
        ) -> Result<zeroize::Zeroizing<[u8; crate::secret::KEY_LEN]>, Error>,
    ) -> Result<(KekVersion, zeroize::Zeroizing<[u8; crate::secret::KEY_LEN]>), Error> {
        self.with_active_kek(scope, |cached| {
            let key = cached.derived_key(label, |kek| derive(kek.expose_secret()))?;
            Ok((cached.version, key))
        })
    }

    /// As [`Self::active_derived_key`] for version `version` of `scope`, if it can still open.
    pub(crate) fn derived_key(
        &self,
        scope: &KeyScope,
        version: KekVersion,
        label: &[u8],
        derive: impl FnOnce(
            &[u8; crate::secret::KEY_LEN],
        ) -> Result<zeroize::Zeroizing<[u8; crate::secret::KEY_LEN]>, Error>,
    ) -> Result<zeroize::Zeroizing<[u8; crate::secret::KEY_LEN]>, Error> {
        self.with_kek_for_open(scope.as_str(), version, "blind index", |cached| {
            cached.derived_key(label, |kek| derive(kek.expose_secret()))
        })
    }

    /// `f` on the active KEK of `scope`: borrowed from the cache when it is there (no shared
    /// counter written), else fetched by [`Self::fetch_active`].
    fn with_active_kek<R>(
        &self,
        scope: &KeyScope,
        f: impl FnOnce(&Arc<CachedKek>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let now = self.now();
        match self.inner.cache.with_active(scope.as_str(), now, f) {
            Ok(done) => done,
            Err(f) => f(&self.fetch_active(scope, now)?),
        }
    }

    /// `f` on version `version` of `scope` if that version can still open: borrowed from the
    /// cache when it is there (no shared counter written), else fetched by
    /// [`Self::fetch_for_open`].
    fn with_kek_for_open<R>(
        &self,
        scope: &str,
        version: KekVersion,
        operation: &'static str,
        f: impl FnOnce(&Arc<CachedKek>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let now = self.now();
        match self.inner.cache.with_opening(scope, version, now, f) {
            Ok(Ok(done)) => done,
            Ok(Err(state)) => Err(wrong_state(scope, version, state, operation)),
            Err(f) => f(&self.fetch_for_open(scope, version, operation, now)?),
        }
    }

    fn active_kek(&self, scope: &KeyScope) -> Result<Arc<CachedKek>, Error> {
        self.with_active_kek(scope, |c| Ok(Arc::clone(c)))
    }

    /// The cache miss of [`Self::with_active_kek`]: asks the key store which version of `scope`
    /// is active (one caller per scope at a time), and either starts a new cache window for
    /// the cached entry or fetches and caches the version.
    fn fetch_active(&self, scope: &KeyScope, now: UnixTime) -> Result<Arc<CachedKek>, Error> {
        let flight = self.flight(scope.as_str(), 0);
        let _one = flight.lock().unwrap_or_else(PoisonError::into_inner);
        // Another thread may have fetched it while this one waited.
        if let Some(c) = self.inner.cache.get_active(scope.as_str(), now) {
            return Ok(c);
        }
        let records = self.verified_list(scope)?;
        if records.is_empty() {
            return Err(Error::ScopeNotFound {
                scope: scope.clone(),
            });
        }
        let record = records
            .into_iter()
            .find(|r| r.state == KekState::Active)
            .ok_or_else(|| Error::NoActiveKey {
                scope: scope.clone(),
            })?;
        // The store still names the cached version: a new window, no KMS call.
        if let Some(c) =
            self.inner
                .cache
                .confirm_active(scope, record.version, record.recheck_secs, now)
        {
            return Ok(c);
        }
        let kek = self.unwrap_record(&record)?;
        let entry = Arc::new(CachedKek::new(
            kek,
            record.version,
            record.state,
            record.recheck_secs,
            now,
        ));
        self.inner.cache.insert(scope, Arc::clone(&entry), true);
        Ok(entry)
    }

    fn kek_for_open(
        &self,
        scope: &str,
        version: KekVersion,
        operation: &'static str,
    ) -> Result<Arc<CachedKek>, Error> {
        self.with_kek_for_open(scope, version, operation, |c| Ok(Arc::clone(c)))
    }

    /// The cache miss of [`Self::with_kek_for_open`]: fetches version `version` of `scope` from
    /// the key store (one caller per version at a time) and caches it, if it can still open.
    fn fetch_for_open(
        &self,
        scope: &str,
        version: KekVersion,
        operation: &'static str,
        now: UnixTime,
    ) -> Result<Arc<CachedKek>, Error> {
        let scope = KeyScope::new(scope)?;
        let flight = self.flight(scope.as_str(), version.get());
        let _one = flight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = self.inner.cache.get(scope.as_str(), version, now)
            && c.state.opens_at(now)
        {
            return Ok(c);
        }
        let record =
            self.verified_get(&scope, version)?
                .ok_or_else(|| Error::KeyVersionNotFound {
                    location: None,
                    scope: scope.clone(),
                    version,
                })?;
        match record.state {
            KekState::Destroyed => {
                return Err(Error::KeyDestroyed {
                    location: None,
                    scope,
                    version,
                });
            }
            state if !state.opens_at(now) => {
                return Err(Error::KeyWrongState {
                    location: None,
                    scope,
                    version,
                    state,
                    operation,
                });
            }
            _ => {}
        }
        let kek = self.unwrap_record(&record)?;
        let entry = Arc::new(CachedKek::new(
            kek,
            version,
            record.state,
            record.recheck_secs,
            now,
        ));
        self.inner
            .cache
            .insert(&scope, Arc::clone(&entry), record.state == KekState::Active);
        Ok(entry)
    }

    pub(crate) fn unwrap_record(&self, record: &KekRecord) -> Result<Kek, Error> {
        let wrapped = record.wrapped.as_ref().ok_or_else(|| Error::KeyDestroyed {
            location: None,
            scope: record.scope.clone(),
            version: record.version,
        })?;
        self.inner.unwraps.fetch_add(1, Ordering::Relaxed);
        let _span = tracing::debug_span!(
            "leakless.kek_fetch",
            scope = %record.scope,
            kek_version = record.version.get(),
            backend = self.inner.kms.backend(),
        )
        .entered();
        debug!("KMS unwrap of KEK");
        self.inner.kms.unwrap_kek(
            wrapped,
            &KekBinding {
                scope: &record.scope,
                version: record.version,
            },
        )
    }

    /// A new `Active` record of version `version` of `scope`, created `now`, holding `kek`
    /// wrapped by this ring's KMS.
    pub(crate) fn new_record(
        &self,
        kek: &Kek,
        scope: &KeyScope,
        version: KekVersion,
        now: UnixTime,
    ) -> Result<KekRecord, Error> {
        self.count_wrap();
        let wrapped = self
            .inner
            .kms
            .wrap_kek(kek, &KekBinding { scope, version })?;
        Ok(KekRecord {
            scope: scope.clone(),
            version,
            state: KekState::Active,
            wrapped: Some(wrapped),
            created_at: now,
            updated_at: now,
            deactivated_at: None,
            recheck_secs: self.recheck_secs(),
            auth: None,
        })
    }

    // ----- lifecycle -----------------------------------------------------------------------

    /// The versions of `scope`, oldest first, with their states (no key material).
    ///
    /// # Errors
    /// [`Error::KeyStore`] when the store cannot be read.
    pub fn versions(&self, scope: &KeyScope) -> Result<Vec<KekRecord>, Error> {
        self.verified_list(scope)
    }

    /// The audit log, oldest first; all scopes when `scope` is `None`.
    ///
    /// # Errors
    /// [`Error::KeyStore`] when the store cannot be read.
    pub fn audit_log(&self, scope: Option<&KeyScope>) -> Result<Vec<AuditRecord>, Error> {
        self.inner.store.audit_log(scope)
    }

    pub(crate) fn audit(
        &self,
        who: &AuditInfo,
        action: KeyAction,
        record: &KekRecord,
        from: Option<KekState>,
        now: UnixTime,
    ) -> AuditRecord {
        AuditRecord {
            at: now,
            actor: who.actor.clone(),
            reason: who.reason.clone(),
            action,
            scope: record.scope.clone(),
            version: record.version,
            from,
            to: record.state,
            auth: None,
        }
    }

    fn apply(&self, scope: &KeyScope, change: StoreChange) -> Result<(), Error> {
        let result = self.apply_authenticated(change);
        self.inner.cache.invalidate_scope(scope.as_str());
        result
    }

    /// Creates `scope` with an active version 1.
    ///
    /// # Errors
    /// [`Error::ScopeExists`] when the scope has versions already.
    pub fn create_scope(&self, scope: &KeyScope, who: &AuditInfo) -> Result<KekVersion, Error> {
        if scope.as_str().starts_with(RESERVED_SCOPE_PREFIX) {
            return Err(Error::InvalidInput {
                what: "key scope name",
                problem: format!(
                    "{scope}: names starting with {RESERVED_SCOPE_PREFIX:?} are reserved for \
                     leakless's own records"
                ),
            });
        }
        self.ensure_integrity_key(who)?;
        if !self.inner.store.list(scope)?.is_empty() {
            return Err(Error::ScopeExists {
                scope: scope.clone(),
            });
        }
        let now = self.now();
        let record = self.new_record(&Kek::generate(), scope, KekVersion::FIRST, now)?;
        let audit = self.audit(who, KeyAction::CreateScope, &record, None, now);
        self.apply(
            scope,
            StoreChange {
                inserts: vec![record],
                updates: vec![],
                audit: vec![audit],
            },
        )?;
        info!(%scope, actor = %who.actor, "created key scope with active KEK v1");
        Ok(KekVersion::FIRST)
    }

    /// Makes a new active version of `scope`. The previous active version moves to
    /// `Grace { until: now + grace }` (at least until its cache window ends, see
    /// [`KekRecord::change_allowed_at`]), or straight to `Retired` when `grace` is zero (an
    /// emergency: values that running applications seal under it until their cache window
    /// ends do not open until it is reinstated).
    ///
    /// # Errors
    /// [`Error::ScopeNotFound`], [`Error::NoActiveKey`], [`Error::VersionsExhausted`], or
    /// [`Error::ConcurrentModification`] when another process rotated at the same time
    /// (nothing is written; retry).
    pub fn rotate(
        &self,
        scope: &KeyScope,
        grace: Duration,
        who: &AuditInfo,
    ) -> Result<KekVersion, Error> {
        let records = self.verified_list(scope)?;
        let Some(latest) = records.iter().map(|r| r.version).max() else {
            return Err(Error::ScopeNotFound {
                scope: scope.clone(),
            });
        };
        let old = records
            .iter()
            .find(|r| r.state == KekState::Active)
            .ok_or_else(|| Error::NoActiveKey {
                scope: scope.clone(),
            })?;
        let next = latest.next().ok_or_else(|| Error::VersionsExhausted {
            scope: scope.clone(),
        })?;
        let now = self.now();
        let new = self.new_record(&Kek::generate(), scope, next, now)?;
        let mut demoted = old.clone();
        // A grace period shorter than the cache window would let values that a warm cache
        // seals under the old version stop opening: it lasts at least until the window ends.
        let window = Duration::from_secs(
            u64::from(old.recheck_secs).saturating_add((u64::from(old.recheck_secs) / 10).max(1)),
        );
        demoted.state = if grace.is_zero() {
            KekState::Retired
        } else {
            KekState::Grace {
                until: now.plus(grace.max(window)),
            }
        };
        demoted.updated_at = now;
        demoted.deactivated_at = Some(now);
        let audit = vec![
            self.audit(who, KeyAction::Rotate, &new, None, now),
            self.audit(who, KeyAction::Rotate, &demoted, Some(old.state), now),
        ];
        self.apply(
            scope,
            StoreChange {
                inserts: vec![new],
                updates: vec![RecordUpdate {
                    before: old.clone(),
                    after: demoted,
                }],
                audit,
            },
        )?;
        info!(%scope, new = %next, old = %old.version, actor = %who.actor, "rotated KEK");
        Ok(next)
    }

    fn record(&self, scope: &KeyScope, version: KekVersion) -> Result<KekRecord, Error> {
        self.verified_get(scope, version)?
            .ok_or_else(|| Error::KeyVersionNotFound {
                location: None,
                scope: scope.clone(),
                version,
            })
    }

    fn transition(
        &self,
        before: KekRecord,
        to: KekState,
        action: KeyAction,
        who: &AuditInfo,
    ) -> Result<(), Error> {
        let now = self.now();
        let mut after = before.clone();
        after.state = to;
        after.updated_at = now;
        if to == KekState::Destroyed {
            after.wrapped = None;
        }
        let audit = self.audit(who, action, &after, Some(before.state), now);
        let scope = before.scope.clone();
        info!(%scope, version = %before.version, from = before.state.name(), to = to.name(), action = action.name(), actor = %who.actor, "KEK state change");
        self.apply(
            &scope,
            StoreChange {
                inserts: vec![],
                updates: vec![RecordUpdate { before, after }],
                audit: vec![audit],
            },
        )
    }

    fn wrong_state(record: &KekRecord, operation: &'static str) -> Error {
        Error::KeyWrongState {
            location: None,
            scope: record.scope.clone(),
            version: record.version,
            state: record.state,
            operation,
        }
    }

    /// Refuses a retire or destroy before [`KekRecord::change_allowed_at`]: until then a
    /// running application may still hold the version as its active one and seal under it.
    fn check_cache_window(&self, record: &KekRecord, operation: &'static str) -> Result<(), Error> {
        let mut r = record.clone();
        // Records from before the deactivation time was kept: their last change stands in.
        r.deactivated_at = r.deactivated_at.or(Some(r.updated_at));
        match r.change_allowed_at() {
            Some(allowed_at) if self.now() < allowed_at => Err(Error::KeyChangeTooEarly {
                scope: record.scope.clone(),
                version: record.version,
                operation,
                allowed_at,
            }),
            _ => Ok(()),
        }
    }

    /// Retires a `Grace` version now: it stops opening anything. Refused until every
    /// application's cache can have noticed that the version is no longer active
    /// ([`KekRecord::change_allowed_at`]).
    ///
    /// # Errors
    /// [`Error::KeyWrongState`] unless the version is in `Grace` (an `Active` version leaves
    /// only by [`Self::rotate`]); [`Error::KeyChangeTooEarly`] inside the cache window.
    pub fn retire(
        &self,
        scope: &KeyScope,
        version: KekVersion,
        who: &AuditInfo,
    ) -> Result<(), Error> {
        self.windowed_step(scope, version, who, &RETIRE, true)
    }

    /// As [`Self::retire`], but also inside the cache window. An application that still holds
    /// the version as active may seal under it until its window ends; those values do not open
    /// until the version is reinstated. For tests and for emergencies that accept that.
    ///
    /// # Errors
    /// [`Error::KeyWrongState`] unless the version is in `Grace`.
    pub fn retire_ignoring_cache_window(
        &self,
        scope: &KeyScope,
        version: KekVersion,
        who: &AuditInfo,
    ) -> Result<(), Error> {
        self.windowed_step(scope, version, who, &RETIRE, false)
    }

    /// Takes `step` on a version: refused unless the version is in the state the step leaves
    /// and, when `window` is set, inside the cache window.
    fn windowed_step(
        &self,
        scope: &KeyScope,
        version: KekVersion,
        who: &AuditInfo,
        step: &WindowedStep,
        window: bool,
    ) -> Result<(), Error> {
        let record = self.record(scope, version)?;
        if !(step.leaves)(record.state) {
            return Err(Self::wrong_state(&record, step.operation));
        }
        if window {
            self.check_cache_window(&record, step.operation)?;
        }
        self.transition(record, step.enters, step.action, who)
    }

    /// Puts a `Retired` version back into `Grace` until `now + grace`, or moves a `Grace`
    /// version's deadline there. For undoing a retirement that came too early.
    ///
    /// # Errors
    /// [`Error::KeyWrongState`] for an `Active` or `Destroyed` version;
    /// [`Error::InvalidInput`] for a zero grace.
    pub fn reinstate(
        &self,
        scope: &KeyScope,
        version: KekVersion,
        grace: Duration,
        who: &AuditInfo,
    ) -> Result<(), Error> {
        if grace.is_zero() {
            return Err(Error::InvalidInput {
                what: "grace period",
                problem: "reinstating needs a grace period longer than zero".into(),
            });
        }
        let record = self.record(scope, version)?;
        match record.state {
            KekState::Retired | KekState::Grace { .. } => {
                let until = self.now().plus(grace);
                self.transition(record, KekState::Grace { until }, KeyAction::Reinstate, who)
            }
            _ => Err(Self::wrong_state(&record, "reinstate")),
        }
    }

    /// Destroys a `Retired` version: its wrapped material is erased from the key store and
    /// every value sealed under it becomes unreadable for good (crypto-shredding). Check first
    /// that no row still needs it (the migrator's `status` and `destroy` do). Refused until
    /// every application's cache can have noticed that the version is no longer active
    /// ([`KekRecord::change_allowed_at`]), so no value sealed by a warm cache is lost.
    ///
    /// Old copies of the key store (backups) still hold the wrapped material until the root
    /// epoch it is wrapped under is destroyed too: see `docs/shredding.md`.
    ///
    /// # Errors
    /// [`Error::KeyWrongState`] unless the version is `Retired`; [`Error::KeyChangeTooEarly`]
    /// inside the cache window.
    pub fn destroy(
        &self,
        scope: &KeyScope,
        version: KekVersion,
        who: &AuditInfo,
    ) -> Result<(), Error> {
        self.windowed_step(scope, version, who, &DESTROY, true)
    }

    /// As [`Self::destroy`], but also inside the cache window: values an application seals
    /// under the version until its window ends are lost. For tests and for emergencies that
    /// accept that.
    ///
    /// # Errors
    /// [`Error::KeyWrongState`] unless the version is `Retired`.
    pub fn destroy_ignoring_cache_window(
        &self,
        scope: &KeyScope,
        version: KekVersion,
        who: &AuditInfo,
    ) -> Result<(), Error> {
        self.windowed_step(scope, version, who, &DESTROY, false)
    }

    /// Retires every `Grace` version whose deadline has passed, in every scope, writing one
    /// audit record each. Returns what it retired. Run it from a scheduler; opening already
    /// refuses expired versions whether or not the sweep ran.
    ///
    /// # Errors
    /// [`Error::KeyStore`], or [`Error::ConcurrentModification`] if another process changed a
    /// record meanwhile (the rest stays for the next sweep).
    pub fn expire_grace(&self, who: &AuditInfo) -> Result<Vec<(KeyScope, KekVersion)>, Error> {
        let now = self.now();
        let mut done = Vec::new();
        for scope in self.inner.store.scopes()? {
            for record in self.verified_list(&scope)? {
                if let KekState::Grace { until } = record.state
                    && now >= until
                {
                    let version = record.version;
                    self.transition(record, KekState::Retired, KeyAction::ExpireGrace, who)?;
                    done.push((scope.clone(), version));
                }
            }
        }
        Ok(done)
    }

    /// Re-wraps every KEK record that still has material under the root key of `new_kms`
    /// (root-key rotation): each KEK is unwrapped by this ring's backend and wrapped by
    /// `new_kms`. Records already under it are skipped, so an interrupted run can simply be
    /// repeated. Returns how many records were re-wrapped. Afterwards build a new ring with
    /// `new_kms`; the old root key is no longer needed.
    ///
    /// # Errors
    /// [`Error::Kms`] from either backend (e.g. a record wrapped under a third root key), or
    /// [`Error::ConcurrentModification`].
    pub fn rotate_root(&self, new_kms: &dyn Kms, who: &AuditInfo) -> Result<usize, Error> {
        struct ThroughRing<'a> {
            ring: &'a KeyRing,
            new_kms: &'a dyn Kms,
        }
        impl InKmsRewrap for ThroughRing<'_> {
            fn needs_rewrap(&self, wrapped: &WrappedKek) -> bool {
                wrapped.root_key_id != self.new_kms.root_key_id()
            }
            fn rewrap(
                &self,
                wrapped: &WrappedKek,
                binding: &KekBinding<'_>,
            ) -> Result<WrappedKek, Error> {
                self.ring.inner.unwraps.fetch_add(1, Ordering::Relaxed);
                let kek = self.ring.inner.kms.unwrap_kek(wrapped, binding)?;
                self.ring.inner.wraps.fetch_add(1, Ordering::Relaxed);
                self.new_kms.wrap_kek(&kek, binding)
            }
        }
        let count = self.rewrap_root_in_kms(
            &ThroughRing {
                ring: self,
                new_kms,
            },
            who,
        )?;
        info!(records = count, new_root = new_kms.root_key_id(), actor = %who.actor, "re-wrapped KEKs under a new root key");
        Ok(count)
    }

    /// Re-wraps every stored KEK record that `rewrap` says needs it (root-key rotation inside
    /// the KMS: Vault Transit `rewrap`, AWS `ReEncrypt`; see [`InKmsRewrap`]). Each record is
    /// one compare-and-swap key-store change with its `rewrap_root` audit record, timed by this
    /// ring's clock, and the ring's cache of the scope is dropped. An interrupted run can simply
    /// be repeated. Returns how many records were re-wrapped.
    ///
    /// # Errors
    /// [`Error::Kms`] or [`Error::KmsUnavailable`] from the backend, [`Error::KeyStore`], or
    /// [`Error::ConcurrentModification`] when another process changed a record meanwhile.
    pub fn rewrap_root_in_kms(
        &self,
        rewrap: &dyn InKmsRewrap,
        who: &AuditInfo,
    ) -> Result<usize, Error> {
        let mut scopes = self.inner.store.scopes()?;
        // Nothing left to move (a repeated run): done, without reading the store's integrity
        // key, which may already be under the new root only.
        let mut pending = false;
        for scope in &scopes {
            pending |= self
                .inner
                .store
                .list(scope)?
                .iter()
                .any(|r| r.wrapped.as_ref().is_some_and(|w| rewrap.needs_rewrap(w)));
        }
        if !pending {
            return Ok(0);
        }
        // The integrity key's record moves last: until it has, a rerun of an interrupted move
        // with the old root can still verify the store.
        scopes.sort_by_key(|s| s.as_str() == crate::keyring::INTEGRITY_SCOPE);
        let mut count = 0usize;
        for scope in scopes {
            for record in self.verified_list(&scope)? {
                let Some(wrapped) = &record.wrapped else {
                    continue;
                };
                if !rewrap.needs_rewrap(wrapped) {
                    continue;
                }
                let binding = KekBinding {
                    scope: &record.scope,
                    version: record.version,
                };
                let rewrapped = rewrap.rewrap(wrapped, &binding)?;
                let now = self.now();
                let mut after = record.clone();
                after.wrapped = Some(rewrapped);
                after.updated_at = now;
                let audit = self.audit(who, KeyAction::RewrapRoot, &after, Some(record.state), now);
                self.apply(
                    &scope,
                    StoreChange {
                        inserts: vec![],
                        updates: vec![RecordUpdate {
                            before: record,
                            after,
                        }],
                        audit: vec![audit],
                    },
                )?;
                count = count.saturating_add(1);
            }
        }
        Ok(count)
    }
}

/// A lifecycle step that is refused inside the cache window ([`KeyRing::retire`],
/// [`KeyRing::destroy`]): the one state it leaves, the state it enters, and how the audit log
/// and errors name it.
struct WindowedStep {
    operation: &'static str,
    leaves: fn(KekState) -> bool,
    enters: KekState,
    action: KeyAction,
}

/// A `Grace` version stops opening anything.
const RETIRE: WindowedStep = WindowedStep {
    operation: "retire",
    leaves: |state| matches!(state, KekState::Grace { .. }),
    enters: KekState::Retired,
    action: KeyAction::Retire,
};

/// A `Retired` version's wrapped material is erased.
const DESTROY: WindowedStep = WindowedStep {
    operation: "destroy",
    leaves: |state| state == KekState::Retired,
    enters: KekState::Destroyed,
    action: KeyAction::Destroy,
};

/// The checks of opening that need no key, in the order `docs/envelope-format.md` § 6 gives:
/// the expected context ([`Error::InvalidInput`]), the envelope's structure (parse errors),
/// then, when the caller names the scope the row must use, the header's scope
/// ([`Error::WrongKeyScope`]). Returns the parsed envelope and the context's canonical
/// encoding, in a buffer with room for the associated data [`envelope::open`] builds from it.
fn parse_for<'a>(
    expected: Option<&KeyScope>,
    ctx: &FieldContext<'_>,
    envelope_bytes: &'a [u8],
) -> Result<(envelope::Parsed<'a>, Vec<u8>), Error> {
    let mut context = Vec::with_capacity(envelope::AAD_CAPACITY);
    ctx.encode_into(&mut context)?;
    let parsed = envelope::parse(envelope_bytes).map_err(|e| e.at(ctx.location()))?;
    if let Some(expected) = expected
        && parsed.scope != expected.as_str()
    {
        return Err(Error::WrongKeyScope {
            location: ctx.location(),
            expected: expected.clone(),
            found: KeyScope::new(parsed.scope)?,
        });
    }
    Ok((parsed, context))
}

/// [`Error::KeyWrongState`] for `operation` on version `version` of `scope`, without a field
/// (the caller adds it with [`Error::in_field`]).
fn wrong_state(
    scope: &str,
    version: KekVersion,
    state: KekState,
    operation: &'static str,
) -> Error {
    match KeyScope::new(scope) {
        Ok(scope) => Error::KeyWrongState {
            location: None,
            scope,
            version,
            state,
            operation,
        },
        Err(e) => e,
    }
}
