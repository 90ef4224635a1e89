//! Key lifecycle: every state and transition of a KEK version, grace expiry with a test clock,
//! the audit trail, root-key rotation, and the KEK cache's KMS call bounds.

use std::sync::Arc;
use std::time::Duration;

use leakless::key::{Clock, KekRecord, KeyAction, ManualClock, UnixTime};
use leakless::kms::LocalKms;
use leakless::secret::RootKey;
use leakless::store::MemoryKeyStore;
use leakless::{
    AuditInfo, CacheConfig, Error, FieldContext, FieldPolicy, KekState, KekVersion, KeyRing,
    KeyScope, RowId,
};

use crate::support::store_suite::{ROTATE_RETIRE_DESTROY, transitions};

const DAY: Duration = Duration::from_secs(86_400);
/// The default cache window (five minutes) and its margin: retire and destroy wait this long
/// after a rotation.
const WINDOW: Duration = Duration::from_secs(300 + 30);

struct Fixture {
    ring: KeyRing,
    clock: Arc<ManualClock>,
    store: Arc<MemoryKeyStore>,
    scope: KeyScope,
}

fn who() -> AuditInfo {
    AuditInfo::new("alice", "TICKET-1")
}

fn fixture_with(cache: CacheConfig) -> Fixture {
    let clock = Arc::new(ManualClock::new(UnixTime(1_800_000_000)));
    let store = Arc::new(MemoryKeyStore::new());
    let ring = KeyRing::builder(
        Arc::new(LocalKms::from_root_key(RootKey::generate())),
        store.clone(),
    )
    .clock(clock.clone())
    .cache(cache)
    .build();
    let scope = KeyScope::new("patients").unwrap();
    ring.create_scope(&scope, &who()).unwrap();
    Fixture {
        ring,
        clock,
        store,
        scope,
    }
}

fn fixture() -> Fixture {
    fixture_with(CacheConfig::default())
}

fn ctx(row: i64) -> FieldContext<'static> {
    FieldContext::new("patients", "address", RowId::Int(row), 1)
}

fn v(n: u32) -> KekVersion {
    KekVersion::new(n).unwrap()
}

/// The record of KEK `version` of the fixture's scope.
fn version_record(f: &Fixture, version: u32) -> KekRecord {
    f.ring
        .versions(&f.scope)
        .unwrap()
        .into_iter()
        .find(|r| r.version == v(version))
        .unwrap()
}

fn state(f: &Fixture, version: u32) -> KekState {
    version_record(f, version).state
}

fn seal(f: &Fixture, row: i64, text: &str) -> Vec<u8> {
    f.ring
        .seal(
            &f.scope,
            &ctx(row),
            text.as_bytes(),
            &FieldPolicy::default(),
        )
        .unwrap()
}

fn opens(f: &Fixture, row: i64, env: &[u8]) -> Result<Vec<u8>, Error> {
    f.ring
        .open(&ctx(row), env)
        .map(|p| p.expose_secret().to_vec())
}

/// The error opening `env` at `row` gives; fails the test, without showing the plaintext, if
/// it opens.
fn refused(f: &Fixture, row: i64, env: &[u8]) -> Error {
    match opens(f, row, env) {
        Ok(_) => panic!("row {row} opened"),
        Err(e) => e,
    }
}

#[test]
fn create_makes_one_active_v1_and_refuses_a_second_create() {
    let f = fixture();
    let versions = f.ring.versions(&f.scope).unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].version, v(1));
    assert_eq!(versions[0].state, KekState::Active);
    assert!(matches!(
        f.ring.create_scope(&f.scope, &who()),
        Err(Error::ScopeExists { .. })
    ));
    let env = seal(&f, 1, "10 Downing Street");
    assert_eq!(leakless::envelope::inspect(&env).unwrap().kek_version, v(1));
}

#[test]
fn unknown_scope_cannot_seal_or_rotate() {
    let f = fixture();
    let other = KeyScope::new("nobody").unwrap();
    let err = f
        .ring
        .seal(&other, &ctx(1), b"x", &FieldPolicy::default())
        .unwrap_err();
    assert!(matches!(err, Error::ScopeNotFound { .. }), "{err}");
    assert!(matches!(
        f.ring.rotate(&other, DAY, &who()),
        Err(Error::ScopeNotFound { .. })
    ));
}

#[test]
fn rotate_moves_old_to_grace_and_seals_with_the_new_version() {
    let f = fixture();
    let old = seal(&f, 1, "old address");
    let new_version = f.ring.rotate(&f.scope, DAY, &who()).unwrap();
    assert_eq!(new_version, v(2));
    let now = f.clock.now_for_test();
    assert_eq!(
        state(&f, 1),
        KekState::Grace {
            until: now.plus(DAY)
        }
    );
    assert_eq!(state(&f, 2), KekState::Active);
    let active: Vec<_> = f
        .ring
        .versions(&f.scope)
        .unwrap()
        .into_iter()
        .filter(|r| r.state == KekState::Active)
        .collect();
    assert_eq!(active.len(), 1, "exactly one active version per scope");

    let new = seal(&f, 2, "new address");
    assert_eq!(leakless::envelope::inspect(&new).unwrap().kek_version, v(2));
    assert_eq!(opens(&f, 1, &old).unwrap(), b"old address");
    assert_eq!(opens(&f, 2, &new).unwrap(), b"new address");
}

trait NowForTest {
    fn now_for_test(&self) -> UnixTime;
}
impl NowForTest for ManualClock {
    fn now_for_test(&self) -> UnixTime {
        Clock::now(self)
    }
}

#[test]
fn grace_version_stops_opening_at_its_deadline() {
    let f = fixture();
    let old = seal(&f, 1, "old");
    f.ring.rotate(&f.scope, DAY, &who()).unwrap();
    // Still inside the grace period: opens (and is cached).
    f.clock.advance(DAY - Duration::from_secs(1));
    assert_eq!(opens(&f, 1, &old).unwrap(), b"old");
    // At the deadline: refused, even though the KEK is in the cache.
    f.clock.advance(Duration::from_secs(1));
    let err = refused(&f, 1, &old);
    assert!(
        matches!(
            err,
            Error::KeyWrongState {
                state: KekState::Grace { .. },
                operation: "open",
                ..
            }
        ),
        "{err}"
    );
    // Also refused on a fresh ring with a cold cache.
    f.ring.cache().clear();
    assert!(matches!(refused(&f, 1, &old), Error::KeyWrongState { .. }));
}

#[test]
fn expire_grace_sweeps_only_past_deadlines_and_audits_them() {
    let f = fixture();
    f.ring.rotate(&f.scope, DAY, &who()).unwrap(); // v1 grace until +1d
    f.clock.advance(Duration::from_secs(3600));
    f.ring.rotate(&f.scope, 3 * DAY, &who()).unwrap(); // v2 grace until +3d
    f.clock.advance(DAY);
    let swept = f
        .ring
        .expire_grace(&AuditInfo::new("scheduler", "nightly"))
        .unwrap();
    assert_eq!(swept, vec![(f.scope.clone(), v(1))]);
    assert_eq!(state(&f, 1), KekState::Retired);
    assert!(matches!(state(&f, 2), KekState::Grace { .. }));
    let last = f.ring.audit_log(Some(&f.scope)).unwrap().pop().unwrap();
    assert_eq!(last.action, KeyAction::ExpireGrace);
    assert_eq!(last.actor, "scheduler");
    assert_eq!(last.version, v(1));
    assert_eq!(last.to, KekState::Retired);
    assert!(matches!(last.from, Some(KekState::Grace { .. })));
}

#[test]
fn rotate_with_zero_grace_retires_immediately() {
    let f = fixture();
    let old = seal(&f, 1, "old");
    f.ring.rotate(&f.scope, Duration::ZERO, &who()).unwrap();
    assert_eq!(state(&f, 1), KekState::Retired);
    assert!(matches!(
        refused(&f, 1, &old),
        Error::KeyWrongState {
            state: KekState::Retired,
            ..
        }
    ));
}

/// Retiring, destroying and reinstating v1 are each refused as a wrong state, naming `state`.
fn refuses_every_transition(f: &Fixture, state: KekState) {
    for result in [
        f.ring.retire(&f.scope, v(1), &who()),
        f.ring.destroy(&f.scope, v(1), &who()),
        f.ring.reinstate(&f.scope, v(1), DAY, &who()),
    ] {
        assert!(
            matches!(result, Err(Error::KeyWrongState { state: s, .. }) if s == state),
            "{result:?}"
        );
    }
}

#[test]
fn retire_reinstate_destroy_and_their_refusals() {
    let f = fixture();
    let old = seal(&f, 1, "old");
    // Active cannot be retired or destroyed or reinstated.
    refuses_every_transition(&f, KekState::Active);
    f.ring.rotate(&f.scope, DAY, &who()).unwrap();
    // Grace cannot be destroyed.
    assert!(matches!(
        f.ring.destroy(&f.scope, v(1), &who()),
        Err(Error::KeyWrongState { .. })
    ));
    f.clock.advance(WINDOW);
    f.ring.retire(&f.scope, v(1), &who()).unwrap();
    assert_eq!(state(&f, 1), KekState::Retired);
    assert!(matches!(refused(&f, 1, &old), Error::KeyWrongState { .. }));
    // Retired cannot be retired again.
    assert!(matches!(
        f.ring.retire(&f.scope, v(1), &who()),
        Err(Error::KeyWrongState { .. })
    ));
    // Reinstate brings it back for a new grace period.
    assert!(matches!(
        f.ring.reinstate(&f.scope, v(1), Duration::ZERO, &who()),
        Err(Error::InvalidInput { .. })
    ));
    f.ring.reinstate(&f.scope, v(1), DAY, &who()).unwrap();
    assert!(matches!(state(&f, 1), KekState::Grace { .. }));
    assert_eq!(opens(&f, 1, &old).unwrap(), b"old");
    // Retire again and destroy: crypto-shredded.
    f.ring.retire(&f.scope, v(1), &who()).unwrap();
    f.ring.destroy(&f.scope, v(1), &who()).unwrap();
    let record = version_record(&f, 1);
    assert_eq!(record.state, KekState::Destroyed);
    assert!(
        record.wrapped.is_none(),
        "destroy erases the wrapped material"
    );
    assert!(matches!(refused(&f, 1, &old), Error::KeyDestroyed { .. }));
    // Destroyed is terminal.
    refuses_every_transition(&f, KekState::Destroyed);
    // Unknown versions are named as such.
    assert!(matches!(
        f.ring.retire(&f.scope, v(9), &who()),
        Err(Error::KeyVersionNotFound { .. })
    ));
}

#[test]
fn every_transition_is_audited_with_who_when_why() {
    let f = fixture();
    f.ring
        .rotate(&f.scope, DAY, &AuditInfo::new("bob", "quarterly"))
        .unwrap();
    f.clock.advance(WINDOW);
    f.ring
        .retire(&f.scope, v(1), &AuditInfo::new("carol", "done"))
        .unwrap();
    f.ring
        .destroy(&f.scope, v(1), &AuditInfo::new("dave", "shred"))
        .unwrap();
    let log = f.ring.audit_log(Some(&f.scope)).unwrap();
    assert_eq!(transitions(&log), ROTATE_RETIRE_DESTROY);
    let by: Vec<_> = log
        .iter()
        .map(|a| (a.actor.as_str(), a.reason.as_str()))
        .collect();
    assert_eq!(
        by,
        [
            ("alice", "TICKET-1"),
            ("bob", "quarterly"),
            ("bob", "quarterly"),
            ("carol", "done"),
            ("dave", "shred"),
        ]
    );
    assert!(
        log[3].at.0 == log[2].at.0 + 330,
        "audit times come from the injected clock"
    );
}

#[test]
fn a_lost_race_writes_nothing() {
    // Two rings over one store: both read v1 as active, one rotates first.
    let f = fixture();
    let other = KeyRing::builder(f.ring.kms().clone(), f.store.clone()).build();
    f.ring.rotate(&f.scope, DAY, &who()).unwrap();
    // The second rotation sees the new state (it re-reads), so it succeeds with v3...
    other.rotate(&f.scope, DAY, &who()).unwrap();
    assert_eq!(state(&f, 3), KekState::Active);
    // ...but a transition built on a stale record is refused by the store's compare-and-swap.
    let stale = f.ring.versions(&f.scope).unwrap()[0].clone();
    f.clock.advance(WINDOW);
    f.ring.retire(&f.scope, v(1), &who()).unwrap();
    let mut after = stale.clone();
    after.state = KekState::Destroyed;
    let err = leakless::store::KeyStore::apply(
        &*f.store,
        leakless::key::StoreChange {
            inserts: vec![],
            updates: vec![leakless::key::RecordUpdate {
                before: stale,
                after,
            }],
            audit: vec![],
        },
    )
    .unwrap_err();
    assert!(matches!(err, Error::ConcurrentModification { .. }));
    assert_eq!(state(&f, 1), KekState::Retired);
}

#[test]
fn rewrap_moves_dek_to_active_version_without_touching_data() {
    let f = fixture();
    let old = seal(&f, 1, "221B Baker Street");
    assert!(
        f.ring.rewrap(&ctx(1), &old).unwrap().is_none(),
        "already on the active version"
    );
    f.ring.rotate(&f.scope, DAY, &who()).unwrap();
    let new = f.ring.rewrap(&ctx(1), &old).unwrap().unwrap();
    let (oi, ni) = (
        leakless::envelope::inspect(&old).unwrap(),
        leakless::envelope::inspect(&new).unwrap(),
    );
    assert_eq!((oi.kek_version, ni.kek_version), (v(1), v(2)));
    let tail = |e: &[u8]| e[e.len() - (oi.padded_len + 16 + 24)..].to_vec();
    assert_eq!(
        tail(&old),
        tail(&new),
        "data nonce and ciphertext unchanged"
    );
    // After retiring and destroying v1, the re-wrapped value opens and the old one does not.
    f.clock.advance(WINDOW);
    f.ring.retire(&f.scope, v(1), &who()).unwrap();
    f.ring.destroy(&f.scope, v(1), &who()).unwrap();
    assert_eq!(opens(&f, 1, &new).unwrap(), b"221B Baker Street");
    assert!(matches!(refused(&f, 1, &old), Error::KeyDestroyed { .. }));
    // A re-wrapped value is still bound to its row.
    assert!(matches!(
        refused(&f, 2, &new),
        Error::DecryptionFailed { .. }
    ));
}

#[test]
fn rotate_root_rewraps_every_live_kek_and_old_rows_still_open() {
    let f = fixture();
    let v1 = seal(&f, 1, "one");
    f.ring.rotate(&f.scope, DAY, &who()).unwrap();
    let v2 = seal(&f, 2, "two");
    f.ring.rotate(&f.scope, Duration::ZERO, &who()).unwrap(); // v2 retired at once
    f.clock.advance(WINDOW);
    f.ring.retire(&f.scope, v(1), &who()).unwrap();
    f.ring.destroy(&f.scope, v(1), &who()).unwrap();
    let new_kms = Arc::new(LocalKms::from_root_key(RootKey::generate()));
    let n = f
        .ring
        .rotate_root(&*new_kms, &AuditInfo::new("ops", "root rotation"))
        .unwrap();
    assert_eq!(
        n, 3,
        "v2 (retired), v3 (active) and the store's integrity key have material; destroyed v1 \
         has none"
    );
    // Repeating is a no-op.
    assert_eq!(f.ring.rotate_root(&*new_kms, &who()).unwrap(), 0);
    for r in f.ring.versions(&f.scope).unwrap() {
        if let Some(w) = r.wrapped {
            assert_eq!(w.root_key_id, leakless::kms::Kms::root_key_id(&*new_kms));
        }
    }
    // A ring on the new root opens v3 values and, after reinstating v2, v2 values.
    let ring2 = KeyRing::builder(new_kms, f.store.clone())
        .clock(f.clock.clone())
        .build();
    let v3 = ring2
        .seal(&f.scope, &ctx(3), b"three", &FieldPolicy::default())
        .unwrap();
    assert_eq!(ring2.open(&ctx(3), &v3).unwrap().expose_secret(), b"three");
    ring2.reinstate(&f.scope, v(2), DAY, &who()).unwrap();
    assert_eq!(ring2.open(&ctx(2), &v2).unwrap().expose_secret(), b"two");
    assert!(matches!(
        ring2.open(&ctx(1), &v1),
        Err(Error::KeyDestroyed { .. })
    ));
    // The old root can no longer unwrap anything.
    f.ring.cache().clear();
    assert!(matches!(f.ring.open(&ctx(3), &v3), Err(Error::Kms { .. })));
    let rewraps = ring2
        .audit_log(Some(&f.scope))
        .unwrap()
        .into_iter()
        .filter(|a| a.action == KeyAction::RewrapRoot)
        .count();
    assert_eq!(rewraps, 2);
}

#[test]
fn opening_100k_fields_under_one_kek_version_costs_one_kms_unwrap() {
    let f = fixture();
    let env = seal(&f, 7, "x");
    let before = f.ring.kms_calls();
    f.ring.cache().clear();
    for _ in 0..100_000 {
        f.ring.open(&ctx(7), &env).unwrap();
    }
    let after = f.ring.kms_calls();
    assert_eq!(after.unwraps - before.unwraps, 1);
    assert_eq!(after.wraps, before.wraps);
}

#[test]
fn cache_refetches_after_max_age_and_max_uses() {
    let f = fixture_with(CacheConfig {
        max_age: Duration::from_secs(60),
        max_uses: 10,
        max_entries: 4,
    });
    let env = seal(&f, 1, "x");
    let base = f.ring.kms_calls().unwraps;
    for _ in 0..9 {
        f.ring.open(&ctx(1), &env).unwrap();
    }
    assert_eq!(f.ring.kms_calls().unwraps, base, "served from cache");
    f.ring.open(&ctx(1), &env).unwrap();
    f.ring.open(&ctx(1), &env).unwrap();
    assert_eq!(
        f.ring.kms_calls().unwraps,
        base + 1,
        "use bound forces a refetch"
    );
    f.clock.advance(Duration::from_secs(61));
    f.ring.open(&ctx(1), &env).unwrap();
    assert_eq!(
        f.ring.kms_calls().unwraps,
        base + 2,
        "age bound forces a refetch"
    );
    assert!(f.ring.cache().evictions() >= 2);
}

#[test]
fn cache_holds_at_most_max_entries() {
    let f = fixture_with(CacheConfig {
        max_age: Duration::from_secs(600),
        max_uses: 1 << 20,
        max_entries: 2,
    });
    for i in 0..5 {
        let scope = KeyScope::new(&format!("tenant-{i}")).unwrap();
        f.ring.create_scope(&scope, &who()).unwrap();
        f.ring
            .seal(&scope, &ctx(1), b"x", &FieldPolicy::default())
            .unwrap();
        f.clock.advance(Duration::from_secs(1));
    }
    assert!(f.ring.cache().len() <= 2, "len {}", f.ring.cache().len());
}

#[test]
fn retire_and_destroy_wait_until_every_cache_can_have_noticed_the_rotation() {
    let f = fixture();
    let rotated_at = f.clock.now();
    f.ring
        .rotate(&f.scope, Duration::from_secs(1), &who())
        .unwrap();
    // The grace period lasts at least until the cache window ends, even when asked shorter.
    assert_eq!(
        state(&f, 1),
        KekState::Grace {
            until: UnixTime(rotated_at.0 + 330)
        }
    );
    let record = f.ring.versions(&f.scope).unwrap()[0].clone();
    assert_eq!(record.deactivated_at, Some(rotated_at));
    assert_eq!(record.recheck_secs, 300);
    let allowed = UnixTime(rotated_at.0 + 330);
    assert_eq!(record.change_allowed_at(), Some(allowed));
    f.clock.advance(Duration::from_secs(329));
    match f.ring.retire(&f.scope, v(1), &who()) {
        Err(e @ Error::KeyChangeTooEarly { .. }) => {
            let Error::KeyChangeTooEarly {
                operation,
                allowed_at,
                ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((*operation, *allowed_at), ("retire", allowed));
            assert!(e.to_string().contains(&allowed.to_string()), "{e}");
        }
        other => panic!("expected KeyChangeTooEarly, got {other:?}"),
    }
    assert!(
        matches!(state(&f, 1), KekState::Grace { .. }),
        "nothing written"
    );
    f.clock.advance(Duration::from_secs(1));
    f.ring.retire(&f.scope, v(1), &who()).unwrap();
    f.ring.destroy(&f.scope, v(1), &who()).unwrap();

    // A zero-grace (emergency) rotation retires at once, but destroy still waits, and the
    // explicit override is the only way around it.
    f.ring.rotate(&f.scope, Duration::ZERO, &who()).unwrap();
    assert_eq!(state(&f, 2), KekState::Retired);
    assert!(matches!(
        f.ring.destroy(&f.scope, v(2), &who()),
        Err(Error::KeyChangeTooEarly {
            operation: "destroy",
            ..
        })
    ));
    f.ring
        .destroy_ignoring_cache_window(&f.scope, v(2), &who())
        .unwrap();
    assert_eq!(state(&f, 2), KekState::Destroyed);
}

#[test]
fn a_warm_cache_picks_up_a_rotation_within_the_stored_cache_window() {
    // The app caches KEK bytes for an hour, but the store says "re-check the active version
    // every 60 s" (the window of the ring that created the version).
    let admin_cache = CacheConfig {
        max_age: Duration::from_secs(60),
        ..CacheConfig::default()
    };
    let f = fixture_with(admin_cache);
    let app = KeyRing::builder(f.ring.kms().clone(), f.store.clone())
        .clock(f.clock.clone())
        .cache(CacheConfig {
            max_age: Duration::from_secs(3600),
            ..CacheConfig::default()
        })
        .build();
    let version_of = |sealed: &[u8]| leakless::envelope::inspect(sealed).unwrap().kek_version;
    let seal_app = || {
        app.seal(&f.scope, &ctx(1), b"x", &FieldPolicy::default())
            .unwrap()
    };
    assert_eq!(version_of(&seal_app()), v(1), "warm cache on v1");
    f.clock.advance(Duration::from_secs(10));
    f.ring.rotate(&f.scope, DAY, &who()).unwrap();
    assert_eq!(version_of(&seal_app()), v(1), "still inside its window");
    f.clock.advance(Duration::from_secs(50));
    assert_eq!(
        version_of(&seal_app()),
        v(2),
        "60 s after its fetch the app re-reads the active version"
    );
    // And the admin may retire v1 only after that window (plus margin) since the rotation.
    assert!(matches!(
        f.ring.retire(&f.scope, v(1), &who()),
        Err(Error::KeyChangeTooEarly { .. })
    ));
    f.clock.advance(Duration::from_secs(16));
    f.ring.retire(&f.scope, v(1), &who()).unwrap();
}

#[test]
fn concurrent_cache_misses_on_one_version_make_one_kms_call() {
    let f = fixture();
    let app = KeyRing::builder(f.ring.kms().clone(), f.store.clone())
        .clock(f.clock.clone())
        .build();
    let sealed = seal(&f, 1, "x");
    let barrier = std::sync::Barrier::new(8);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                barrier.wait();
                app.seal(&f.scope, &ctx(2), b"y", &FieldPolicy::default())
                    .unwrap();
                app.open(&ctx(1), &sealed).unwrap();
            });
        }
    });
    // One unwrap of the integrity key, one of the scope's KEK: not one per thread.
    assert_eq!(app.kms_calls().unwraps, 2);
}
