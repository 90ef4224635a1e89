//! The key-store conformance suite: what every [`KeyStore`] must do, whatever it stores in.
//!
//! Each check takes a [`Fixture`]: a fresh, empty store that can be opened more than once (a
//! second handle on the same storage: a new connection, a new `FileKeyStore` on the same path,
//! a clone of the same in-memory store). `key_stores.rs` runs every check on every store.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use leakless::key::{
    Auth, KekRecord, KekState, KekVersion, KeyAction, KeyScope, ManualClock, RecordUpdate,
    StoreChange, UnixTime, WrappedKek,
};
use leakless::kms::LocalKms;
use leakless::secret::RootKey;
use leakless::store::KeyStore;
use leakless::{AuditInfo, AuditRecord, Error, FieldContext, FieldPolicy, KeyRing, RowId};

/// A fresh, empty store that can be opened several times.
pub trait Fixture {
    /// A new handle on the fixture's storage. Handles see each other's writes.
    fn open(&self) -> Arc<dyn KeyStore>;
}

fn scope(name: &str) -> KeyScope {
    KeyScope::new(name).unwrap()
}

fn v(n: u32) -> KekVersion {
    KekVersion::new(n).unwrap()
}

fn wrapped(root: &str, bytes: &[u8]) -> Option<WrappedKek> {
    Some(WrappedKek {
        root_key_id: root.to_owned(),
        ciphertext: bytes.to_vec(),
    })
}

/// A record with distinct, recognizable timestamps.
fn record(s: &str, n: u32, state: KekState) -> KekRecord {
    let material = if state == KekState::Destroyed {
        None
    } else {
        wrapped("local:test-root", &[u8::try_from(n % 251).unwrap(); 40])
    };
    KekRecord {
        scope: scope(s),
        version: v(n),
        state,
        wrapped: material,
        created_at: UnixTime(1_700_000_000 + i64::from(n)),
        updated_at: UnixTime(1_700_000_500 + i64::from(n)),
        deactivated_at: None,
        recheck_secs: 300,
        auth: None,
    }
}

/// An unauthenticated audit entry for `action` on record `r` (from state `from` to its
/// current state) at Unix time `at`, by actor `suite`.
pub fn audit(r: &KekRecord, action: KeyAction, from: Option<KekState>, at: i64) -> AuditRecord {
    AuditRecord {
        at: UnixTime(at),
        actor: "suite".into(),
        reason: format!("{action} {} {}", r.scope, r.version),
        action,
        scope: r.scope.clone(),
        version: r.version,
        from,
        to: r.state,
        auth: None,
    }
}

/// An audit entry as its action, KEK version, and the names of the states it left (if any)
/// and entered.
pub type Transition = (KeyAction, u32, Option<&'static str>, &'static str);

/// Each entry of `log` as a [`Transition`].
pub fn transitions(log: &[AuditRecord]) -> Vec<Transition> {
    log.iter()
        .map(|a| {
            (
                a.action,
                a.version.get(),
                a.from.map(|f| f.name()),
                a.to.name(),
            )
        })
        .collect()
}

/// The audit trail of a scope created, rotated with a grace period, and its v1 then retired
/// and destroyed.
pub const ROTATE_RETIRE_DESTROY: [Transition; 5] = [
    (KeyAction::CreateScope, 1, None, "active"),
    (KeyAction::Rotate, 2, None, "active"),
    (KeyAction::Rotate, 1, Some("active"), "grace"),
    (KeyAction::Retire, 1, Some("grace"), "retired"),
    (KeyAction::Destroy, 1, Some("retired"), "destroyed"),
];

fn insert(store: &dyn KeyStore, records: Vec<KekRecord>) {
    let audit = records
        .iter()
        .map(|r| audit(r, KeyAction::CreateScope, None, 1_700_000_000))
        .collect();
    store
        .apply(StoreChange {
            inserts: records,
            updates: vec![],
            audit,
        })
        .unwrap();
}

fn assert_conflict(result: Result<(), Error>, s: &str, n: u32) {
    match result {
        Err(Error::ConcurrentModification { scope: es, version }) => {
            assert_eq!(es.as_str(), s);
            assert_eq!(version, v(n));
        }
        other => panic!("expected ConcurrentModification on {s} v{n}, got {other:?}"),
    }
}

/// An unknown scope lists nothing; nothing is stored yet.
pub fn empty_store(f: &dyn Fixture) {
    let store = f.open();
    let s = scope("nobody");
    assert!(store.list(&s).unwrap().is_empty());
    assert_eq!(store.get(&s, v(1)).unwrap(), None);
    assert!(store.scopes().unwrap().is_empty());
    assert!(store.audit_log(None).unwrap().is_empty());
    assert!(store.audit_log(Some(&s)).unwrap().is_empty());
    assert!(!store.name().is_empty());
}

/// Every field comes back exactly: states with grace deadlines, wrapped bytes of every value,
/// timestamps, a destroyed record without material, audit records with odd text.
pub fn round_trips_every_field(f: &dyn Fixture) {
    let store = f.open();
    let all_bytes: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let records = vec![
        KekRecord {
            scope: scope("rt"),
            version: v(3),
            state: KekState::Active,
            wrapped: wrapped("aws-kms:arn:aws:kms:eu-west-1:1:key/ü-ß", &all_bytes),
            created_at: UnixTime(1_800_000_000),
            updated_at: UnixTime(1_800_000_001),
            deactivated_at: None,
            recheck_secs: 1,
            auth: Some(Auth {
                seq: 1,
                tag: [0xa5; 32],
            }),
        },
        KekRecord {
            scope: scope("rt"),
            version: v(1),
            state: KekState::Destroyed,
            wrapped: None,
            created_at: UnixTime(0),
            updated_at: UnixTime(-5),
            deactivated_at: Some(UnixTime(-3)),
            recheck_secs: u32::MAX,
            auth: Some(Auth {
                seq: 3,
                tag: std::array::from_fn(|i| u8::try_from(i).unwrap()),
            }),
        },
        KekRecord {
            scope: scope("rt"),
            version: v(2),
            state: KekState::Grace {
                until: UnixTime(4_102_444_800),
            },
            wrapped: wrapped("", &[0u8]),
            created_at: UnixTime(i64::from(u32::MAX) + 7),
            updated_at: UnixTime(i64::MAX),
            deactivated_at: Some(UnixTime(i64::MAX)),
            recheck_secs: 300,
            auth: Some(Auth {
                seq: 2,
                tag: [0xff; 32],
            }),
        },
        KekRecord {
            scope: scope("rt"),
            version: v(u32::MAX),
            state: KekState::Retired,
            wrapped: wrapped("r", b"\x00\xff\x00'\";--"),
            created_at: UnixTime(i64::MIN),
            updated_at: UnixTime(1),
            deactivated_at: Some(UnixTime(i64::MIN)),
            recheck_secs: 0,
            auth: None,
        },
    ];
    let audit_records = vec![
        AuditRecord {
            at: UnixTime(1_800_000_000),
            actor: "O'Brien \"ops\"; DROP TABLE leakless_kek; --".into(),
            reason: "ticket SEC-1 ✓\nsecond line\ttab".into(),
            action: KeyAction::CreateScope,
            scope: scope("rt"),
            version: v(3),
            from: None,
            to: KekState::Active,
            auth: Some(Auth {
                seq: 1,
                tag: [1; 32],
            }),
        },
        AuditRecord {
            at: UnixTime(-1),
            actor: String::new(),
            reason: String::new(),
            action: KeyAction::Reinstate,
            scope: scope("rt"),
            version: v(2),
            from: Some(KekState::Grace {
                until: UnixTime(17),
            }),
            to: KekState::Grace {
                until: UnixTime(4_102_444_800),
            },
            auth: Some(Auth {
                seq: 2,
                tag: [2; 32],
            }),
        },
        AuditRecord {
            at: UnixTime(5),
            actor: "a".into(),
            reason: "b".into(),
            action: KeyAction::Destroy,
            scope: scope("rt"),
            version: v(1),
            from: Some(KekState::Retired),
            to: KekState::Destroyed,
            auth: Some(Auth {
                seq: 3,
                tag: [3; 32],
            }),
        },
    ];
    store
        .apply(StoreChange {
            inserts: records.clone(),
            updates: vec![],
            audit: audit_records.clone(),
        })
        .unwrap();

    for store in [store, f.open()] {
        for r in &records {
            assert_eq!(store.get(&r.scope, r.version).unwrap().as_ref(), Some(r));
        }
        let mut sorted = records.clone();
        sorted.sort_by_key(|r| r.version);
        assert_eq!(store.list(&scope("rt")).unwrap(), sorted);
        assert_eq!(store.get(&scope("rt"), v(4)).unwrap(), None);
        assert_eq!(store.get(&scope("RT"), v(1)).unwrap(), None);
        assert!(store.list(&scope("RT")).unwrap().is_empty());
        assert_eq!(store.audit_log(None).unwrap(), audit_records);
        assert_eq!(store.audit_log(Some(&scope("rt"))).unwrap(), audit_records);
    }
}

/// `scopes()` is sorted (bytewise, as `KeyScope` orders) and has each scope once.
pub fn scopes_sorted_and_deduplicated(f: &dyn Fixture) {
    let store = f.open();
    let names = [
        "b",
        "a_1",
        "Z",
        "a-1",
        "a/b",
        "a:x",
        "a.b",
        "A",
        "a",
        "tenant:42/eu",
    ];
    for name in names {
        insert(
            &*store,
            vec![
                record(name, 1, KekState::Retired),
                record(name, 2, KekState::Active),
            ],
        );
    }
    let mut expected: Vec<KeyScope> = names.iter().map(|n| scope(n)).collect();
    expected.sort();
    let got = store.scopes().unwrap();
    assert_eq!(got, expected);
    assert_eq!(got.first().map(KeyScope::as_str), Some("A"));
}

/// A change whose second update fails compare-and-swap writes nothing: not its inserts, not
/// its first (valid) update, not its audit records. Same for a second, duplicate insert.
pub fn apply_is_atomic(f: &dyn Fixture) {
    let store = f.open();
    let v1 = record("atomic", 1, KekState::Active);
    let v2 = record(
        "atomic",
        2,
        KekState::Grace {
            until: UnixTime(2_000_000_000),
        },
    );
    insert(&*store, vec![v1.clone(), v2.clone()]);
    let before_audit = store.audit_log(None).unwrap();

    let mut v2_retired = v2.clone();
    v2_retired.state = KekState::Retired;
    let mut stale_v1 = v1.clone();
    stale_v1.state = KekState::Retired; // not what is stored
    let mut v1_grace = v1.clone();
    v1_grace.state = KekState::Grace {
        until: UnixTime(2_100_000_000),
    };
    let v3 = record("atomic", 3, KekState::Active);
    let other = record("atomic-other", 1, KekState::Active);
    let result = store.apply(StoreChange {
        inserts: vec![other.clone(), v3.clone()],
        updates: vec![
            RecordUpdate {
                before: v2.clone(),
                after: v2_retired.clone(),
            },
            RecordUpdate {
                before: stale_v1,
                after: v1_grace,
            },
        ],
        audit: vec![
            audit(&v3, KeyAction::Rotate, None, 1),
            audit(&v2_retired, KeyAction::Retire, Some(v2.state), 1),
        ],
    });
    assert_conflict(result, "atomic", 1);

    // A duplicate second insert after a fresh first one.
    let result = store.apply(StoreChange {
        inserts: vec![other.clone(), v2.clone()],
        updates: vec![RecordUpdate {
            before: v2.clone(),
            after: v2_retired,
        }],
        audit: vec![audit(&other, KeyAction::CreateScope, None, 2)],
    });
    assert_conflict(result, "atomic", 2);

    for store in [store, f.open()] {
        assert_eq!(
            store.list(&scope("atomic")).unwrap(),
            vec![v1.clone(), v2.clone()]
        );
        assert!(store.list(&scope("atomic-other")).unwrap().is_empty());
        assert_eq!(store.scopes().unwrap(), vec![scope("atomic")]);
        assert_eq!(store.audit_log(None).unwrap(), before_audit);
    }
}

/// Inserting an existing `(scope, version)` fails and keeps the stored record.
pub fn duplicate_insert_conflicts(f: &dyn Fixture) {
    let store = f.open();
    let original = record("dup", 1, KekState::Active);
    insert(&*store, vec![original.clone()]);
    let mut copy = original.clone();
    copy.wrapped = wrapped("another-root", b"other bytes");
    copy.state = KekState::Retired;
    assert_conflict(
        store.apply(StoreChange {
            inserts: vec![copy],
            updates: vec![],
            audit: vec![],
        }),
        "dup",
        1,
    );
    assert_eq!(store.get(&scope("dup"), v(1)).unwrap(), Some(original));
    assert_eq!(store.audit_log(None).unwrap().len(), 1);
}

/// An update whose `before` is stale (state, grace deadline, wrapped bytes, root key id, or a
/// record that does not exist) fails and writes nothing.
pub fn stale_cas_conflicts(f: &dyn Fixture) {
    let store = f.open();
    let grace = record(
        "cas",
        1,
        KekState::Grace {
            until: UnixTime(2_000_000_000),
        },
    );
    let active = record("cas", 2, KekState::Active);
    insert(&*store, vec![grace.clone(), active.clone()]);

    let update = |before: KekRecord, after: KekRecord| StoreChange {
        inserts: vec![],
        updates: vec![RecordUpdate { before, after }],
        audit: vec![],
    };
    let mut retired = grace.clone();
    retired.state = KekState::Retired;
    retired.updated_at = UnixTime(1_900_000_000);

    // Wrong grace deadline, wrong bytes, wrong root key id, wrong state, missing record.
    let mut wrong_deadline = grace.clone();
    wrong_deadline.state = KekState::Grace {
        until: UnixTime(2_000_000_001),
    };
    assert_conflict(
        store.apply(update(wrong_deadline, retired.clone())),
        "cas",
        1,
    );
    let mut wrong_bytes = grace.clone();
    wrong_bytes.wrapped.as_mut().unwrap().ciphertext.push(0);
    assert_conflict(store.apply(update(wrong_bytes, retired.clone())), "cas", 1);
    let mut wrong_root = grace.clone();
    wrong_root.wrapped.as_mut().unwrap().root_key_id.push('x');
    assert_conflict(store.apply(update(wrong_root, retired.clone())), "cas", 1);
    let mut no_material = grace.clone();
    no_material.wrapped = None;
    assert_conflict(store.apply(update(no_material, retired.clone())), "cas", 1);
    let mut wrong_state = grace.clone();
    wrong_state.state = KekState::Retired;
    assert_conflict(store.apply(update(wrong_state, retired.clone())), "cas", 1);
    let missing = record("cas", 9, KekState::Retired);
    assert_conflict(store.apply(update(missing.clone(), missing)), "cas", 9);
    assert_eq!(
        store.get(&scope("cas"), v(1)).unwrap().as_ref(),
        Some(&grace)
    );

    // Timestamps are not compared: a `before` differing only in updated_at still matches.
    let mut other_time = grace.clone();
    other_time.updated_at = UnixTime(3);
    store.apply(update(other_time, retired.clone())).unwrap();
    assert_eq!(
        store.get(&scope("cas"), v(1)).unwrap().as_ref(),
        Some(&retired)
    );

    // The same update again is stale now.
    assert_conflict(store.apply(update(grace, retired.clone())), "cas", 1);
    assert_eq!(store.get(&scope("cas"), v(1)).unwrap(), Some(retired));
    assert_eq!(store.get(&scope("cas"), v(2)).unwrap(), Some(active));
}

/// The audit log keeps write order (not time order) and filters by scope.
pub fn audit_log_order_and_filter(f: &dyn Fixture) {
    let store = f.open();
    let a1 = record("audit-a", 1, KekState::Active);
    let b1 = record("audit-b", 1, KekState::Active);
    let mut all = Vec::new();
    let mut at = 2_000_000_000i64;
    for r in [&a1, &b1] {
        let entry = audit(r, KeyAction::CreateScope, None, at);
        at -= 100; // later writes carry earlier times: order must not come from `at`
        store
            .apply(StoreChange {
                inserts: vec![r.clone()],
                updates: vec![],
                audit: vec![entry.clone()],
            })
            .unwrap();
        all.push(entry);
    }
    let mut prev_a = a1.clone();
    let mut prev_b = b1.clone();
    for round in 0..3u32 {
        for (prev, name) in [(&mut prev_b, "audit-b"), (&mut prev_a, "audit-a")] {
            let mut next = prev.clone();
            next.updated_at = UnixTime(next.updated_at.0 + 1);
            next.wrapped = wrapped(&format!("root-{round}"), name.as_bytes());
            let entries = vec![
                audit(&next, KeyAction::RewrapRoot, Some(prev.state), at),
                audit(&next, KeyAction::RewrapRoot, Some(prev.state), at + 1_000),
            ];
            at -= 10;
            store
                .apply(StoreChange {
                    inserts: vec![],
                    updates: vec![RecordUpdate {
                        before: prev.clone(),
                        after: next.clone(),
                    }],
                    audit: entries.clone(),
                })
                .unwrap();
            all.extend(entries);
            *prev = next;
        }
    }
    for store in [store, f.open()] {
        assert_eq!(store.audit_log(None).unwrap(), all);
        for name in ["audit-a", "audit-b"] {
            let s = scope(name);
            let only: Vec<AuditRecord> = all.iter().filter(|a| a.scope == s).cloned().collect();
            assert_eq!(only.len(), 7);
            assert_eq!(store.audit_log(Some(&s)).unwrap(), only);
        }
        assert!(store.audit_log(Some(&scope("audit"))).unwrap().is_empty());
    }
}

/// Applies `change(0)` on `a` and `change(1)` on `b` at the same moment (two threads meeting
/// at a barrier); the two results, in that order.
fn race(
    a: &Arc<dyn KeyStore>,
    b: &Arc<dyn KeyStore>,
    change: impl Fn(usize) -> StoreChange,
) -> Vec<Result<(), Error>> {
    let barrier = Barrier::new(2);
    thread::scope(|t| {
        let handles: Vec<_> = [a, b]
            .into_iter()
            .enumerate()
            .map(|(i, store)| {
                let change = change(i);
                let barrier = &barrier;
                t.spawn(move || {
                    barrier.wait();
                    store.apply(change)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Two handles racing the same change: exactly one wins, the other gets
/// `ConcurrentModification`, and the store holds the winner's change once.
pub fn racing_cas_has_one_winner(f: &dyn Fixture) {
    const ROUNDS: u32 = 6;
    let a = f.open();
    let b = f.open();
    for round in 0..ROUNDS {
        let name = format!("race-{round}");
        let v1 = record(&name, 1, KekState::Active);
        insert(&*a, vec![v1.clone()]);
        let mut demoted = v1.clone();
        demoted.state = KekState::Grace {
            until: UnixTime(2_000_000_000),
        };
        let v2 = record(&name, 2, KekState::Active);
        let change = StoreChange {
            inserts: vec![v2.clone()],
            updates: vec![RecordUpdate {
                before: v1.clone(),
                after: demoted.clone(),
            }],
            audit: vec![
                audit(&v2, KeyAction::Rotate, None, 1),
                audit(&demoted, KeyAction::Rotate, Some(KekState::Active), 1),
            ],
        };
        let results = race(&a, &b, |_| change.clone());
        let wins = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {results:?}");
        // The loser's error names the record it lost on: the updated v1 or the inserted v2.
        for r in results.into_iter().filter(Result::is_err) {
            match r {
                Err(Error::ConcurrentModification { scope: es, version }) => {
                    assert_eq!(es.as_str(), name);
                    assert!(version == v(1) || version == v(2), "{version}");
                }
                other => panic!("round {round}: expected ConcurrentModification, got {other:?}"),
            }
        }
        let s = scope(&name);
        assert_eq!(a.list(&s).unwrap(), vec![demoted, v2]);
        assert_eq!(b.audit_log(Some(&s)).unwrap().len(), 3);
    }

    // Two handles racing an update-only change (a root re-wrap): the compare-and-swap alone
    // must pick one winner.
    for round in 0..ROUNDS {
        let name = format!("race-update-{round}");
        let v1 = record(&name, 1, KekState::Active);
        insert(&*a, vec![v1.clone()]);
        let results = race(&a, &b, |i| {
            let mut after = v1.clone();
            after.wrapped = wrapped(&format!("new-root-{i}"), b"rewrapped");
            StoreChange {
                inserts: vec![],
                updates: vec![RecordUpdate {
                    before: v1.clone(),
                    after: after.clone(),
                }],
                audit: vec![audit(&after, KeyAction::RewrapRoot, Some(v1.state), 1)],
            }
        });
        let winners: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_ok())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for r in results.into_iter().filter(Result::is_err) {
            assert_conflict(r, &name, 1);
        }
        let stored = b.get(&scope(&name), v(1)).unwrap().unwrap();
        let root = format!("new-root-{}", winners[0]);
        assert_eq!(stored.wrapped.unwrap().root_key_id, root);
        assert_eq!(a.audit_log(Some(&scope(&name))).unwrap().len(), 2);
    }

    // Two handles creating the same scope: one wins.
    let first = record("race-create", 1, KekState::Active);
    let results = race(&a, &b, |_| StoreChange {
        inserts: vec![first.clone()],
        updates: vec![],
        audit: vec![audit(&first, KeyAction::CreateScope, None, 1)],
    });
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert_eq!(a.audit_log(Some(&scope("race-create"))).unwrap().len(), 1);
}

/// A `KeyRing` lifecycle on the store: create, seal, rotate with grace, open old and new,
/// retire, destroy; one audit record per transition; a reopened store sees it all.
pub fn keyring_round(f: &dyn Fixture) {
    let kms = Arc::new(LocalKms::from_root_key(RootKey::generate()));
    let clock = Arc::new(ManualClock::new(UnixTime(1_800_000_000)));
    let ring = KeyRing::builder(kms.clone(), f.open())
        .clock(clock.clone())
        .build();
    let s = scope("patients");
    let who = AuditInfo::new("suite", "key-store conformance");
    let policy = FieldPolicy::default();
    let ctx = |row: i64| FieldContext::new("patients", "address", RowId::Int(row), 1);

    assert_eq!(ring.create_scope(&s, &who).unwrap(), v(1));
    assert!(matches!(
        ring.create_scope(&s, &who),
        Err(Error::ScopeExists { .. })
    ));
    let old = ring
        .seal(&s, &ctx(1), b"221B Baker Street", &policy)
        .unwrap();

    let v2 = ring.rotate(&s, Duration::from_secs(3600), &who).unwrap();
    assert_eq!(v2, v(2));
    let new = ring
        .seal(&s, &ctx(2), b"12 Grimmauld Place", &policy)
        .unwrap();
    assert_eq!(
        ring.open(&ctx(1), &old).unwrap().expose_secret(),
        b"221B Baker Street"
    );
    assert_eq!(
        ring.open(&ctx(2), &new).unwrap().expose_secret(),
        b"12 Grimmauld Place"
    );
    let states: Vec<KekState> = ring.versions(&s).unwrap().iter().map(|r| r.state).collect();
    assert!(
        matches!(
            states.as_slice(),
            [KekState::Grace { .. }, KekState::Active]
        ),
        "{states:?}"
    );

    // Retire waits for the cache window (five minutes and its margin) after the rotation.
    clock.advance(Duration::from_secs(330));
    ring.retire(&s, v(1), &who).unwrap();
    assert!(matches!(
        ring.open(&ctx(1), &old),
        Err(Error::KeyWrongState { .. })
    ));
    ring.destroy(&s, v(1), &who).unwrap();
    assert!(matches!(
        ring.open(&ctx(1), &old),
        Err(Error::KeyDestroyed { .. })
    ));
    assert_eq!(
        ring.open(&ctx(2), &new).unwrap().expose_secret(),
        b"12 Grimmauld Place"
    );

    let check = |store: &dyn KeyStore| {
        let log = store.audit_log(Some(&s)).unwrap();
        assert_eq!(transitions(&log), ROTATE_RETIRE_DESTROY);
        assert!(
            log.iter()
                .all(|a| a.actor == "suite" && a.reason == "key-store conformance")
        );
        let records = store.list(&s).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].state, KekState::Destroyed);
        assert_eq!(records[0].wrapped, None);
        assert_eq!(records[1].state, KekState::Active);
        assert!(records[1].wrapped.is_some());
        assert_eq!(
            store.scopes().unwrap(),
            vec![scope(leakless::keyring::INTEGRITY_SCOPE), s.clone()],
            "the scope and the store's integrity key"
        );
    };
    check(&**ring.store());

    // A new handle (new connection, new file store on the same path) and a new ring with the
    // same root key see the same keys.
    let reopened = f.open();
    check(&*reopened);
    let ring2 = KeyRing::builder(kms, reopened).build();
    assert_eq!(
        ring2.open(&ctx(2), &new).unwrap().expose_secret(),
        b"12 Grimmauld Place"
    );
    assert!(matches!(
        ring2.open(&ctx(1), &old),
        Err(Error::KeyDestroyed { .. })
    ));
    let newer = ring2.seal(&s, &ctx(3), b"4 Privet Drive", &policy).unwrap();
    assert_eq!(
        ring.open(&ctx(3), &newer).unwrap().expose_secret(),
        b"4 Privet Drive"
    );
}

/// SQL stores only: the schema itself refuses a second active version in a scope, even when
/// a caller bypasses the key ring.
pub fn schema_allows_one_active_version(f: &dyn Fixture) {
    let store = f.open();
    insert(&*store, vec![record("one", 1, KekState::Active)]);
    assert_conflict(
        store.apply(StoreChange {
            inserts: vec![record("one", 2, KekState::Active)],
            updates: vec![],
            audit: vec![],
        }),
        "one",
        2,
    );
    // Another scope may have its own active version, and a retired one is no conflict.
    insert(&*store, vec![record("two", 1, KekState::Active)]);
    insert(&*store, vec![record("one", 3, KekState::Retired)]);
    let mut promoted = record("one", 3, KekState::Retired);
    promoted.state = KekState::Active;
    assert_conflict(
        store.apply(StoreChange {
            inserts: vec![],
            updates: vec![RecordUpdate {
                before: record("one", 3, KekState::Retired),
                after: promoted,
            }],
            audit: vec![],
        }),
        "one",
        3,
    );
    let states: Vec<KekState> = store
        .list(&scope("one"))
        .unwrap()
        .iter()
        .map(|r| r.state)
        .collect();
    assert_eq!(states, vec![KekState::Active, KekState::Retired]);
}
