//! The KMS backend conformance suite: the same key-ring lifecycle run against every [`Kms`]
//! backend (local, PKCS#11, AWS KMS, Vault Transit, TPM), each against its real peer.
//!
//! # How to use it
//!
//! A backend's test module hands the suite a *factory*: a
//! closure that returns a backend holding a **new, distinct root key** on every call (a new
//! token key, a new KMS key, a new Transit key, ...). The suite calls it once for the backend
//! under test and again wherever it needs a second root key (root rotation, foreign-root
//! checks), and asserts the two ids differ.
//!
//! ```ignore
//! fn make() -> std::sync::Arc<dyn leakless::kms::Kms> { /* a new root key on the peer */ }
//!
//! // One #[test] per check, so that a failure names the check:
//! leakless_kms_suite!(make);
//! ```
//!
//! The rings are built over a [`MemoryKeyStore`] and a [`ManualClock`], so only the KMS
//! backend varies. Each check asserts something that fails if the backend does not bind a
//! wrapped KEK to its scope and version, confuses root keys, or is called more than once per
//! KEK version per cache lifetime.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::peers::binding;
use leakless::key::{KekRecord, KeyAction, ManualClock, UnixTime, WrappedKek};
use leakless::kms::{KekBinding, Kms, LocalKms, RetryCounts};
use leakless::secret::{Kek, RootKey};
use leakless::store::MemoryKeyStore;
use leakless::{
    AuditInfo, Error, FieldContext, FieldPolicy, KekState, KekVersion, KeyRing, KeyScope, RowId,
};

/// Makes a backend holding a new, distinct root key on each call.
pub type Factory<'a> = &'a dyn Fn() -> Arc<dyn Kms>;

/// The default cache window and its margin: retire and destroy wait this long after a rotation.
const WINDOW: Duration = Duration::from_secs(330);
const DAY: Duration = Duration::from_secs(86_400);

/// Generates one `#[test]` per suite check, each calling `$make` (a `fn() -> Arc<dyn Kms>` or
/// a closure expression) as its factory, in a module `kms_suite` of the invoking module (so a
/// test is named `kms_suite::CHECK`). Use it once per test module.
#[macro_export]
macro_rules! leakless_kms_suite {
    ($make:expr) => {
        $crate::leakless_kms_suite!(
            @checks $make;
            create_seal_open,
            rotate_and_grace,
            retire_reinstate_destroy,
            rotate_root_to_second_root_key,
            rotate_root_through_local_and_back,
            wrong_binding_foreign_root_and_tamper_fail,
            one_unwrap_per_kek_version,
            concurrent_use,
        );
    };
    (@checks $make:expr; $($check:ident,)+) => {
        mod kms_suite {
            use super::*;
            $(
                #[test]
                fn $check() {
                    $crate::support::kms_suite::$check(&$make);
                }
            )+
        }
    };
}

/// A ring on one backend, a store and a clock that the checks can share with a second ring.
pub struct Fixture {
    /// The ring under test.
    pub ring: KeyRing,
    /// Its backend.
    pub kms: Arc<dyn Kms>,
    /// Its key store (shared with rings on other backends during root rotation).
    pub store: Arc<MemoryKeyStore>,
    /// Its clock.
    pub clock: Arc<ManualClock>,
    /// A scope created at set-up, with an active v1.
    pub scope: KeyScope,
}

impl Fixture {
    /// A ring over `kms` with scope `patients` created.
    pub fn new(kms: Arc<dyn Kms>) -> Self {
        let clock = Arc::new(ManualClock::new(UnixTime(1_800_000_000)));
        let store = Arc::new(MemoryKeyStore::new());
        let ring = ring_on(kms.clone(), &store, &clock);
        let scope = KeyScope::new("patients").unwrap();
        ring.create_scope(&scope, &who()).unwrap();
        Self {
            ring,
            kms,
            store,
            clock,
            scope,
        }
    }

    /// Seals `text` for row `row` under the active version.
    pub fn seal(&self, row: i64, text: &str) -> Vec<u8> {
        seal_on(&self.ring, &self.scope, row, text)
    }

    /// Opens row `row`'s envelope.
    pub fn open(&self, row: i64, env: &[u8]) -> Result<Vec<u8>, Error> {
        open_on(&self.ring, row, env)
    }

    /// The stored record of `version`.
    pub fn record(&self, version: u32) -> KekRecord {
        self.ring
            .versions(&self.scope)
            .unwrap()
            .into_iter()
            .find(|r| r.version == v(version))
            .unwrap()
    }

    /// The state of `version`.
    pub fn state(&self, version: u32) -> KekState {
        self.record(version).state
    }
}

fn ring_on(kms: Arc<dyn Kms>, store: &Arc<MemoryKeyStore>, clock: &Arc<ManualClock>) -> KeyRing {
    KeyRing::builder(kms, store.clone())
        .clock(clock.clone())
        .build()
}

fn seal_on(ring: &KeyRing, scope: &KeyScope, row: i64, text: &str) -> Vec<u8> {
    ring.seal(scope, &ctx(row), text.as_bytes(), &FieldPolicy::default())
        .unwrap()
}

fn open_on(ring: &KeyRing, row: i64, env: &[u8]) -> Result<Vec<u8>, Error> {
    ring.open(&ctx(row), env)
        .map(|p| p.expose_secret().to_vec())
}

/// Who the KMS tests' key ring changes are made by, for the audit log.
pub fn who() -> AuditInfo {
    AuditInfo::new("kms-suite", "conformance")
}

fn ctx(row: i64) -> FieldContext<'static> {
    FieldContext::new("patients", "address", RowId::Int(row), 1)
}

fn v(n: u32) -> KekVersion {
    KekVersion::new(n).unwrap()
}

/// Wraps a new KEK for `scope` v`version` on `wrap_on`, asserts that `unwrap_on` (the same
/// root key, possibly through another instance) unwraps it to the same key under that
/// binding, and returns the KEK and its wrapped form.
pub fn round_trip_between(
    wrap_on: &dyn Kms,
    unwrap_on: &dyn Kms,
    scope: &KeyScope,
    version: u32,
) -> (Kek, WrappedKek) {
    let kek = Kek::generate();
    let wrapped = wrap_on.wrap_kek(&kek, &binding(scope, version)).unwrap();
    assert_unwraps_to(unwrap_on, &wrapped, scope, version, &kek);
    (kek, wrapped)
}

/// [`round_trip_between`] on one backend.
pub fn round_trip(kms: &dyn Kms, scope: &KeyScope, version: u32) -> (Kek, WrappedKek) {
    round_trip_between(kms, kms, scope, version)
}

/// Asserts that `kms` unwraps `wrapped` under `scope` v`version` to `kek`.
pub fn assert_unwraps_to(
    kms: &dyn Kms,
    wrapped: &WrappedKek,
    scope: &KeyScope,
    version: u32,
    kek: &Kek,
) {
    let back = kms.unwrap_kek(wrapped, &binding(scope, version)).unwrap();
    assert_eq!(back.expose_secret(), kek.expose_secret());
}

/// Asserts that `kms` refuses `wrapped` under each of `bindings` (scope, version) with an
/// [`Error::Kms`] of its backend kind from `unwrap KEK`, and returns the errors' details.
pub fn refusals(kms: &dyn Kms, wrapped: &WrappedKek, bindings: &[(&KeyScope, u32)]) -> Vec<String> {
    bindings
        .iter()
        .map(|&(scope, version)| {
            let err = kms
                .unwrap_kek(wrapped, &binding(scope, version))
                .unwrap_err();
            let (backend, operation, detail) = kms_error_parts(&err);
            assert_eq!(
                (backend, operation),
                (kms.backend(), "unwrap KEK"),
                "{scope} v{version}: {err}"
            );
            detail.to_owned()
        })
        .collect()
}

/// Checks a move inside the KMS (`move_under(binding)` moves one wrap of `kek`, made for
/// `scope` v`version`, onto `to`'s key): under the next version it is refused with an error
/// of `to`'s backend kind; under its own binding it gives a wrap that `to` unwraps to `kek`
/// under that binding and under no other. Returns the moved wrap.
pub fn assert_move_keeps_the_binding(
    kek: &Kek,
    scope: &KeyScope,
    version: u32,
    to: &dyn Kms,
    move_under: impl Fn(&KekBinding<'_>) -> Result<WrappedKek, Error>,
) -> WrappedKek {
    let err = move_under(&binding(scope, version + 1)).unwrap_err();
    assert_kms_error(&err, to, "a move under another binding");
    let moved = move_under(&binding(scope, version)).unwrap();
    assert_unwraps_to(to, &moved, scope, version, kek);
    assert!(to.unwrap_kek(&moved, &binding(scope, version + 1)).is_err());
    moved
}

/// Asserts that 100,000 opens under one KEK version cost `kms`'s peer one request in all
/// (`counts` reads the backend's request counters), not retried.
pub fn one_request_for_100_000_opens<K: Kms + 'static>(
    kms: &Arc<K>,
    counts: impl Fn(&K) -> RetryCounts,
) {
    let f = Fixture::new(kms.clone());
    let env = f.seal(1, "x");
    f.ring.cache().clear();
    let before = counts(kms);
    for _ in 0..100_000 {
        f.open(1, &env).unwrap();
    }
    let after = counts(kms);
    assert_eq!(after.attempts - before.attempts, 1, "one request in all");
    assert_eq!(after.retries, 0);
}

/// The backend, operation and detail of `err`, which must be an [`Error::Kms`].
pub fn kms_error_parts(err: &Error) -> (&'static str, &'static str, &str) {
    match err {
        Error::Kms {
            backend,
            operation,
            detail,
        } => (backend, operation, detail),
        other => panic!("expected Error::Kms, got {other}"),
    }
}

/// How many audit records of `scope` in `ring`'s store record `action`.
pub fn audited(ring: &KeyRing, scope: &KeyScope, action: KeyAction) -> usize {
    ring.audit_log(Some(scope))
        .unwrap()
        .iter()
        .filter(|a| a.action == action)
        .count()
}

/// Asserts `err` is a KMS error from `kms`'s backend kind.
fn assert_kms_error(err: &Error, kms: &dyn Kms, what: &str) {
    match err {
        Error::Kms { backend, .. } => assert_eq!(
            *backend,
            kms.backend(),
            "{what}: error names the wrong backend: {err}"
        ),
        other => panic!(
            "{what}: expected Error::Kms from {}, got {other}",
            kms.backend()
        ),
    }
}

/// Create a scope: one wrap call, the stored record carries this backend's root key id, and a
/// sealed value opens again with a cold cache (a real unwrap on the backend).
pub fn create_seal_open(make: Factory<'_>) {
    let f = Fixture::new(make());
    assert!(!f.kms.root_key_id().is_empty());
    assert_eq!(
        f.ring.kms_calls().wraps,
        2,
        "create wraps the store's integrity key and v1, once each"
    );
    let versions = f.ring.versions(&f.scope).unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].state, KekState::Active);
    let wrapped = versions[0].wrapped.clone().unwrap();
    assert_eq!(wrapped.root_key_id, f.kms.root_key_id());
    assert!(
        wrapped.ciphertext.len() >= 32,
        "a wrapped 32-byte KEK cannot be shorter than the KEK"
    );
    let env = f.seal(1, "10 Downing Street");
    f.ring.cache().clear();
    let before = f.ring.kms_calls().unwraps;
    assert_eq!(f.open(1, &env).unwrap(), b"10 Downing Street");
    assert_eq!(
        f.ring.kms_calls().unwraps,
        before + 1,
        "cold open unwraps once"
    );
    // A second ring on the same backend and store (another process, say) opens it too.
    let other = ring_on(f.kms.clone(), &f.store, &f.clock);
    assert_eq!(open_on(&other, 1, &env).unwrap(), b"10 Downing Street");
    // The value stays bound to its row.
    assert!(matches!(
        f.open(2, &env),
        Err(Error::DecryptionFailed { .. })
    ));
}

/// Rotate: the old version opens during grace (also from a cold cache) and not from its
/// deadline on; new values seal under the new version.
pub fn rotate_and_grace(make: Factory<'_>) {
    let f = Fixture::new(make());
    let old = f.seal(1, "old address");
    assert_eq!(f.ring.rotate(&f.scope, DAY, &who()).unwrap(), v(2));
    assert_eq!(f.ring.kms_calls().wraps, 3);
    assert!(matches!(f.state(1), KekState::Grace { .. }));
    assert_eq!(f.state(2), KekState::Active);
    let new = f.seal(2, "new address");
    assert_eq!(leakless::envelope::inspect(&new).unwrap().kek_version, v(2));
    f.ring.cache().clear();
    assert_eq!(f.open(1, &old).unwrap(), b"old address");
    assert_eq!(f.open(2, &new).unwrap(), b"new address");
    // Re-wrapping the old value moves it onto v2 through the backend's unwrap of both.
    let moved = f.ring.rewrap(&ctx(1), &old).unwrap().unwrap();
    assert_eq!(
        leakless::envelope::inspect(&moved).unwrap().kek_version,
        v(2)
    );
    f.clock.advance(DAY);
    assert!(matches!(f.open(1, &old), Err(Error::KeyWrongState { .. })));
    f.ring.cache().clear();
    assert!(matches!(f.open(1, &old), Err(Error::KeyWrongState { .. })));
    assert_eq!(f.open(1, &moved).unwrap(), b"old address");
}

/// Retire stops opening; reinstate brings it back; destroy erases the wrapped material so the
/// value is crypto-shredded.
pub fn retire_reinstate_destroy(make: Factory<'_>) {
    let f = Fixture::new(make());
    let old = f.seal(1, "old");
    f.ring.rotate(&f.scope, DAY, &who()).unwrap();
    f.clock.advance(WINDOW);
    f.ring.retire(&f.scope, v(1), &who()).unwrap();
    assert_eq!(f.state(1), KekState::Retired);
    assert!(matches!(
        f.open(1, &old),
        Err(Error::KeyWrongState {
            state: KekState::Retired,
            ..
        })
    ));
    f.ring.reinstate(&f.scope, v(1), DAY, &who()).unwrap();
    f.ring.cache().clear();
    assert_eq!(
        f.open(1, &old).unwrap(),
        b"old",
        "reinstated v1 unwraps again"
    );
    f.ring.retire(&f.scope, v(1), &who()).unwrap();
    f.ring.destroy(&f.scope, v(1), &who()).unwrap();
    let record = f.record(1);
    assert_eq!(record.state, KekState::Destroyed);
    assert!(record.wrapped.is_none(), "destroy erases the wrapped KEK");
    assert!(matches!(f.open(1, &old), Err(Error::KeyDestroyed { .. })));
}

/// Root rotation to a second root key on the same kind of backend: every live record is
/// re-wrapped, old rows (active and grace) open on a ring over the new root only, destroyed
/// ones stay shredded, a repeat is a no-op, and the old root can no longer unwrap.
pub fn rotate_root_to_second_root_key(make: Factory<'_>) {
    let f = Fixture::new(make());
    let new_kms = make();
    assert_ne!(
        f.kms.root_key_id(),
        new_kms.root_key_id(),
        "the factory must return a distinct root key on each call"
    );
    let r1 = f.seal(1, "one");
    f.ring.rotate(&f.scope, DAY, &who()).unwrap();
    let r2 = f.seal(2, "two");
    f.ring.rotate(&f.scope, DAY, &who()).unwrap();
    let r3 = f.seal(3, "three");
    f.clock.advance(WINDOW);
    f.ring.retire(&f.scope, v(1), &who()).unwrap();
    f.ring.destroy(&f.scope, v(1), &who()).unwrap();
    let n = f.ring.rotate_root(&*new_kms, &who()).unwrap();
    assert_eq!(
        n, 3,
        "v2 (grace), v3 (active) and the integrity key; destroyed v1 has no material"
    );
    assert_eq!(f.ring.rotate_root(&*new_kms, &who()).unwrap(), 0);
    for r in f.ring.versions(&f.scope).unwrap() {
        if let Some(w) = r.wrapped {
            assert_eq!(w.root_key_id, new_kms.root_key_id());
        }
    }
    let ring2 = ring_on(new_kms.clone(), &f.store, &f.clock);
    assert_eq!(open_on(&ring2, 2, &r2).unwrap(), b"two");
    assert_eq!(open_on(&ring2, 3, &r3).unwrap(), b"three");
    assert!(matches!(
        open_on(&ring2, 1, &r1),
        Err(Error::KeyDestroyed { .. })
    ));
    let r4 = seal_on(&ring2, &f.scope, 4, "four");
    assert_eq!(open_on(&ring2, 4, &r4).unwrap(), b"four");
    f.ring.cache().clear();
    let err = f.open(3, &r3).unwrap_err();
    assert_kms_error(&err, &*f.kms, "old root unwrapping a re-wrapped KEK");
    assert_eq!(audited(&ring2, &f.scope, KeyAction::RewrapRoot), 2);
}

/// Migration between backend kinds: from this backend to a local root key and back again,
/// opening the same old rows at every step.
pub fn rotate_root_through_local_and_back(make: Factory<'_>) {
    let f = Fixture::new(make());
    let r1 = f.seal(1, "first");
    f.ring.rotate(&f.scope, DAY, &who()).unwrap();
    let r2 = f.seal(2, "second");
    let local: Arc<dyn Kms> = Arc::new(LocalKms::from_root_key(RootKey::generate()));
    assert_eq!(f.ring.rotate_root(&*local, &who()).unwrap(), 3);
    let on_local = ring_on(local, &f.store, &f.clock);
    assert_eq!(open_on(&on_local, 1, &r1).unwrap(), b"first");
    assert_eq!(open_on(&on_local, 2, &r2).unwrap(), b"second");
    assert_eq!(on_local.rotate_root(&*f.kms, &who()).unwrap(), 3);
    let back = ring_on(f.kms.clone(), &f.store, &f.clock);
    assert_eq!(open_on(&back, 1, &r1).unwrap(), b"first");
    assert_eq!(open_on(&back, 2, &r2).unwrap(), b"second");
    for r in back.versions(&f.scope).unwrap() {
        assert_eq!(r.wrapped.unwrap().root_key_id, f.kms.root_key_id());
    }
}

/// Direct backend calls: a wrapped KEK unwraps to the same key under its own binding, and
/// fails with a typed error naming the backend under another scope, another version, another
/// root key, or after a bit flip or truncation. Two wraps of one KEK differ (fresh IV/nonce).
pub fn wrong_binding_foreign_root_and_tamper_fail(make: Factory<'_>) {
    let kms = make();
    let other = make();
    let s1 = KeyScope::new("tenant-a").unwrap();
    let s2 = KeyScope::new("tenant-b").unwrap();
    let kek = Kek::generate();
    let wrapped = kms.wrap_kek(&kek, &binding(&s1, 1)).unwrap();
    assert_eq!(wrapped.root_key_id, kms.root_key_id());
    let back = kms.unwrap_kek(&wrapped, &binding(&s1, 1)).unwrap();
    assert_eq!(back.expose_secret(), kek.expose_secret());
    assert!(
        !wrapped
            .ciphertext
            .windows(32)
            .any(|w| w == kek.expose_secret()),
        "the wrapped form must not contain the KEK"
    );
    let again = kms.wrap_kek(&kek, &binding(&s1, 1)).unwrap();
    assert_ne!(again.ciphertext, wrapped.ciphertext, "wraps are randomized");
    for (scope, n, what) in [(&s2, 1, "other scope"), (&s1, 2, "other version")] {
        let err = kms.unwrap_kek(&wrapped, &binding(scope, n)).unwrap_err();
        assert_kms_error(&err, &*kms, what);
    }
    let err = other.unwrap_kek(&wrapped, &binding(&s1, 1)).unwrap_err();
    assert_kms_error(&err, &*other, "foreign root key");
    // Claiming the other root's id does not help: the ciphertext still fails to authenticate.
    let mut relabelled = wrapped.clone();
    relabelled.root_key_id = other.root_key_id().to_owned();
    let err = other.unwrap_kek(&relabelled, &binding(&s1, 1)).unwrap_err();
    assert_kms_error(&err, &*other, "foreign root key, relabelled");
    let len = wrapped.ciphertext.len();
    for i in [0, len / 2, len - 1] {
        let mut tampered = wrapped.clone();
        tampered.ciphertext[i] ^= 0x01;
        let err = kms.unwrap_kek(&tampered, &binding(&s1, 1)).unwrap_err();
        assert_kms_error(&err, &*kms, &format!("bit flip at byte {i}"));
    }
    for keep in [0, 8, len - 1] {
        let mut truncated = wrapped.clone();
        truncated.ciphertext.truncate(keep);
        let err = kms.unwrap_kek(&truncated, &binding(&s1, 1)).unwrap_err();
        assert_kms_error(&err, &*kms, &format!("truncated to {keep} bytes"));
    }
    // No error message carries KEK bytes.
    let shown = format!("{err:?} {err}");
    assert!(!shown.contains(&hex_lower(kek.expose_secret())));
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Opening 100,000 fields under one KEK version costs one unwrap call; a second version costs
/// one more; sealing 1,000 values under the active version costs none after the first.
pub fn one_unwrap_per_kek_version(make: Factory<'_>) {
    let f = Fixture::new(make());
    let env = f.seal(7, "x");
    f.ring.cache().clear();
    let before = f.ring.kms_calls();
    for _ in 0..100_000 {
        f.open(7, &env).unwrap();
    }
    let after = f.ring.kms_calls();
    assert_eq!(
        after.unwraps - before.unwraps,
        1,
        "100,000 opens under one KEK version cost one unwrap"
    );
    assert_eq!(after.wraps, before.wraps, "opening never wraps");
    f.ring.rotate(&f.scope, DAY, &who()).unwrap();
    let before = f.ring.kms_calls();
    let mut fresh = Vec::new();
    for row in 0..1_000 {
        fresh.push(f.seal(row, "y"));
    }
    for (row, env2) in (0..).zip(&fresh) {
        f.open(row, env2).unwrap();
        f.open(7, &env).unwrap();
    }
    let after = f.ring.kms_calls();
    assert_eq!(
        after.unwraps - before.unwraps,
        2,
        "v2 (new active) and v1 (grace, re-read after the rotation cleared the scope's cache)"
    );
}

/// Eight threads seal and open through one ring and one backend from a cold cache, and each
/// thread also calls the backend directly: the backend must be safe to share.
pub fn concurrent_use(make: Factory<'_>) {
    let f = Fixture::new(make());
    f.ring.cache().clear();
    thread::scope(|s| {
        for t in 0..8i64 {
            let f = &f;
            s.spawn(move || {
                let scope = KeyScope::new(&format!("thread-{t}")).unwrap();
                let kek = Kek::generate();
                for n in 1..=3 {
                    let wrapped = f.kms.wrap_kek(&kek, &binding(&scope, n)).unwrap();
                    let back = f.kms.unwrap_kek(&wrapped, &binding(&scope, n)).unwrap();
                    assert_eq!(back.expose_secret(), kek.expose_secret());
                }
                for i in 0..50 {
                    let row = t * 1_000 + i;
                    let env = f.seal(row, "concurrent");
                    assert_eq!(f.open(row, &env).unwrap(), b"concurrent");
                }
            });
        }
    });
    assert!(
        f.ring.kms_calls().unwraps <= 9,
        "at most one miss per thread, and the integrity key once"
    );
}
