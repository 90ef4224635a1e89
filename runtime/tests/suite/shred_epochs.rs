//! Proofs that a completed crypto-shred (invariant 4) holds against the attacker who has every
//! backup of the key store taken before the destroy and every credential that exists after it,
//! per KMS backend, against the real peers (no mocks).
//!
//! Each test: a `KeyRing` over a `FileKeyStore`; two scopes with sealed values; the attacker's
//! backup of the key store; rotate (zero grace) and destroy one scope's version; the root-epoch
//! sequence (begin next epoch, move every record, check none is left, destroy the old epoch in
//! the backend); then the attacker builds a fresh backend from the *current* configuration and
//! a ring over the *old* backup and opens nothing. Positive controls: before the epoch destroy
//! the same attacker tooling did open the destroyed version's values, and every value of the
//! surviving scope still opens with the current store and backend (the application's own
//! backend instance, never restarted, and a freshly built one).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use leakless::key::WrappedKek;
use leakless::key::{Clock, ManualClock, SystemClock};
use leakless::keyring::{ShredState, ShredStatus};
use leakless::kms::{Destruction, EpochDestroyed, KekBinding, Kms, RootEpoch, RootEpochs};
use leakless::secret::Kek;
use leakless::store::FileKeyStore;
use leakless::{AuditInfo, Error, FieldContext, FieldPolicy, KekVersion, KeyRing, KeyScope, RowId};

use crate::support::kms_suite::kms_error_parts;
use crate::support::peers::binding;

const ROWS: i64 = 6;

fn who() -> AuditInfo {
    AuditInfo::new("shred-test", "subject erasure request")
}

fn ctx(table: &'static str, row: i64) -> FieldContext<'static> {
    FieldContext::new(table, "address", RowId::Int(row), 1)
}

fn plaintext(scope: &str, row: i64) -> Vec<u8> {
    format!("{scope} row {row}: 12 Rue des Secrets").into_bytes()
}

struct Sealed {
    table: &'static str,
    row: i64,
    envelope: Vec<u8>,
}

fn seal_rows(ring: &KeyRing, scope: &KeyScope, table: &'static str) -> Vec<Sealed> {
    (0..ROWS)
        .map(|row| Sealed {
            table,
            row,
            envelope: ring
                .seal(
                    scope,
                    &ctx(table, row),
                    &plaintext(scope.as_str(), row),
                    &FieldPolicy::default(),
                )
                .unwrap(),
        })
        .collect()
}

fn opens_all(ring: &KeyRing, scope: &KeyScope, values: &[Sealed]) {
    for v in values {
        let opened = ring
            .open(&ctx(v.table, v.row), &v.envelope)
            .unwrap_or_else(|e| panic!("{scope} row {} should open: {e}", v.row));
        assert_eq!(
            opened.expose_secret(),
            &plaintext(scope.as_str(), v.row)[..]
        );
    }
}

/// Every value fails with a typed error (no panic), and the error shows no plaintext.
fn opens_none(ring: &KeyRing, scope: &KeyScope, values: &[Sealed]) -> Vec<Error> {
    values
        .iter()
        .map(|v| {
            let err = match ring.open(&ctx(v.table, v.row), &v.envelope) {
                Ok(_) => panic!("{scope} row {} opened for the attacker", v.row),
                Err(e) => e,
            };
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("Rue des Secrets"), "{shown}");
            err
        })
        .collect()
}

/// A copy of the key store file, as a backup would hold it, in a ring of its own.
fn ring_over_copy(kms: Arc<dyn Kms>, backup: &Path, scratch: &Path) -> KeyRing {
    std::fs::copy(backup, scratch).unwrap();
    KeyRing::builder(kms, Arc::new(FileKeyStore::open(scratch).unwrap())).build()
}

/// What a scenario leaves for backend-specific checks.
struct Outcome {
    destroyed: EpochDestroyed,
    attacker_errors: Vec<Error>,
    /// How many old-backup values the attacker opened (only ever non-zero when the peer is
    /// known not to enforce the backend's refusal, see `Attacker::PeerGap`).
    attacker_opened: usize,
}

impl Outcome {
    /// Asserts the old epoch is destroyed, the backend's note on copies names each of
    /// `copies`, and every error the attacker got names `refusal`.
    fn assert_destroyed(&self, copies: &[&str], refusal: &str) {
        assert_eq!(self.destroyed.status, Destruction::Destroyed);
        for needle in copies {
            assert!(
                self.destroyed.copies_may_remain.contains(needle),
                "{}",
                self.destroyed.copies_may_remain
            );
        }
        for e in &self.attacker_errors {
            assert!(e.to_string().contains(refusal), "{e}");
        }
    }
}

/// What the attacker must see after the epoch destroy.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attacker {
    /// Every value of the old backup fails with the backend's typed refusal.
    Refused,
    /// The test peer does not implement the refusal the real service makes (moto_server 5.2
    /// decrypts under a key pending deletion); the attempt is made and counted, not asserted.
    PeerGap,
}

/// The whole proof. `app` is the application's backend (kept across the epoch change, never
/// rebuilt); `epochs` runs the shred (built from the same configuration); `fresh` builds a new
/// backend from the current configuration and credentials (a restarted app, or the attacker).
fn prove_shred(
    dir: &Path,
    app: Arc<dyn Kms>,
    epochs: &dyn RootEpochs,
    fresh: &dyn Fn() -> Arc<dyn Kms>,
    attacker: Attacker,
) -> Outcome {
    let store_path = dir.join("keys.json");
    let store = Arc::new(FileKeyStore::open(&store_path).unwrap());
    // A test clock, so the destroy need not wait out the five-minute cache window.
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let ring = KeyRing::builder(app.clone(), store)
        .clock(clock.clone())
        .build();
    let shredded = KeyScope::new("tenant_gone").unwrap();
    let kept = KeyScope::new("tenant_kept").unwrap();
    ring.create_scope(&shredded, &who()).unwrap();
    ring.create_scope(&kept, &who()).unwrap();
    let gone_values = seal_rows(&ring, &shredded, "gone");
    let kept_values = seal_rows(&ring, &kept, "kept");

    // The attacker's backup of the key store, taken before the destroy.
    let backup = dir.join("backup-keys.json");
    std::fs::copy(&store_path, &backup).unwrap();

    // Destroy the version in the ring: rotate with zero grace (Retired), then destroy.
    ring.rotate(&shredded, Duration::ZERO, &who()).unwrap();
    clock.advance(Duration::from_secs(330));
    ring.destroy(&shredded, KekVersion::FIRST, &who()).unwrap();
    assert!(matches!(
        ring.shred_states().unwrap().as_slice(),
        [ShredState {
            status: ShredStatus::Pending { .. },
            ..
        }]
    ));
    let errors = opens_none(&ring, &shredded, &gone_values);
    assert!(
        errors
            .iter()
            .all(|e| matches!(e, Error::KeyDestroyed { .. })),
        "{errors:?}"
    );

    // Positive control: the attacker's tooling works while the old epoch exists.
    let before = ring_over_copy(fresh(), &backup, &dir.join("attacker-before.json"));
    opens_all(&before, &shredded, &gone_values);
    opens_all(&before, &kept, &kept_values);
    drop(before);

    // The root-epoch sequence, as the key ring runs it for every pending shred.
    let report = ring
        .complete_shred(epochs, &who())
        .unwrap()
        .expect("a shred was pending");
    assert_eq!(report.shredded, vec![(shredded.clone(), KekVersion::FIRST)]);
    assert_eq!(
        report.records_moved, 3,
        "kept v1, the shredded scope's v2 and the integrity key move; v1 has no material"
    );
    // Where each epoch has its own root key id, no record is left under the destroyed one (for
    // Vault's key versions under one id, complete_shred checked it with still_on_retiring).
    if report.destroyed.epoch.key_version.is_none() {
        for scope in ring.store().scopes().unwrap() {
            for record in ring.store().list(&scope).unwrap() {
                if let Some(w) = &record.wrapped {
                    assert_ne!(
                        w.root_key_id, report.destroyed.epoch.root_key_id,
                        "{scope} {} still on the destroyed epoch",
                        record.version
                    );
                }
            }
        }
    }
    let destroyed = report.destroyed;
    let retiring = destroyed.epoch.clone();
    assert!(!destroyed.copies_may_remain.is_empty());
    let status = ring.shred_states().unwrap();
    assert!(
        matches!(
            status.as_slice(),
            [ShredState {
                status: ShredStatus::Complete { .. } | ShredStatus::Scheduled { .. },
                ..
            }]
        ),
        "{status:?}"
    );
    // Nothing is pending any more: a second run does nothing.
    assert_eq!(ring.complete_shred(epochs, &who()).unwrap(), None);
    // Repeating the backend's destroy is safe and says the same (or "already gone").
    let again = epochs.destroy_epoch(&retiring).unwrap();
    match (destroyed.status, again.status) {
        (Destruction::Scheduled { at }, Destruction::Scheduled { at: at2 }) => assert_eq!(at, at2),
        (Destruction::Destroyed | Destruction::AlreadyGone, Destruction::AlreadyGone) => {}
        other => panic!("repeated destroy: {other:?}"),
    }
    ring.verify_store().unwrap();
    // The current epoch cannot be destroyed.
    assert!(
        epochs
            .destroy_epoch(&epochs.current_epoch().unwrap())
            .is_err()
    );

    // Survivors: the app's own backend (no restart) and a fresh one, with the current store.
    ring.cache().clear();
    opens_all(&ring, &kept, &kept_values);
    let restarted = KeyRing::builder(fresh(), ring.store().clone()).build();
    opens_all(&restarted, &kept, &kept_values);
    // New wraps work on the new epoch, from the app's backend.
    ring.rotate(&kept, Duration::from_secs(3600), &who())
        .unwrap();
    let after_rotate = seal_rows(&ring, &kept, "kept2");
    opens_all(&restarted, &kept, &after_rotate);
    opens_all(&ring, &kept, &kept_values);
    // The destroyed version stays destroyed for the current store.
    opens_none(&restarted, &shredded, &gone_values);

    // The attacker: old backup + today's configuration and credentials. Nothing opens, and the
    // surviving scope's old records are dead too (the whole old key store is useless).
    let after = ring_over_copy(fresh(), &backup, &dir.join("attacker-after.json"));
    if attacker == Attacker::PeerGap {
        let all = gone_values.iter().chain(&kept_values);
        let opened = all
            .filter(|v| after.open(&ctx(v.table, v.row), &v.envelope).is_ok())
            .count();
        return Outcome {
            destroyed,
            attacker_errors: vec![],
            attacker_opened: opened,
        };
    }
    let mut attacker_errors = opens_none(&after, &shredded, &gone_values);
    attacker_errors.extend(opens_none(&after, &kept, &kept_values));
    for e in &attacker_errors {
        assert!(
            matches!(e, Error::Kms { .. } | Error::KmsUnavailable { .. }),
            "attacker's error should be the backend refusing: {e:?}"
        );
    }
    Outcome {
        destroyed,
        attacker_errors,
        attacker_opened: 0,
    }
}

/// [`prove_shred`] for a backend whose attacker is refused, with a probe: a KEK the app's
/// backend wraps directly on the first epoch before the shred, which that backend itself
/// refuses afterwards with a typed error (the old root key is gone from the backend, not only
/// from the key store's records).
fn prove_refused_shred(
    dir: &Path,
    app: Arc<dyn Kms>,
    epochs: &dyn RootEpochs,
    fresh: &dyn Fn() -> Arc<dyn Kms>,
) -> Outcome {
    let scope = KeyScope::new("probe").unwrap();
    let binding = binding(&scope, 1);
    let probe = app.wrap_kek(&Kek::generate(), &binding).unwrap();
    let out = prove_shred(dir, app.clone(), epochs, fresh, Attacker::Refused);
    let err = app.unwrap_kek(&probe, &binding).unwrap_err();
    assert!(matches!(err, Error::Kms { .. }), "{err:?}");
    out
}

/// A KEK on the first epoch and its copy moved to the next, as [`begin_epoch_change`] leaves
/// them.
struct EpochMove {
    first: RootEpoch,
    next: RootEpoch,
    kek: Kek,
    on_first: WrappedKek,
    moved: WrappedKek,
}

/// Begins an epoch change on `kms`, whose only epoch is current (destroying it is refused),
/// and moves a new KEK of `binding` to the next epoch. Checks that the next epoch differs from
/// the first, that the change tells the two records apart, that beginning again resumes onto
/// the same next epoch instead of making another, and that the next epoch, now current,
/// cannot be destroyed. `begun` runs right after the change begins.
fn begin_epoch_change<K: Kms + RootEpochs>(
    kms: &K,
    binding: &KekBinding<'_>,
    begun: &dyn Fn(),
) -> EpochMove {
    let first = kms.current_epoch().unwrap();
    assert!(matches!(
        kms.destroy_epoch(&first),
        Err(Error::InvalidInput { .. })
    ));
    let kek = Kek::generate();
    let on_first = kms.wrap_kek(&kek, binding).unwrap();

    let change = kms.begin_next_epoch().unwrap();
    begun();
    let next = change.next().clone();
    assert_eq!(change.retiring(), &first);
    assert_ne!(next, first);
    assert!(change.still_on_retiring(&on_first));
    let moved = change.mover().rewrap(&on_first, binding).unwrap();
    assert!(!change.still_on_retiring(&moved));
    assert_eq!(moved.root_key_id, next.root_key_id);
    drop(change);
    let again = kms.begin_next_epoch().unwrap();
    assert_eq!(again.next(), &next);
    assert_eq!(again.retiring(), &first);
    drop(again);
    assert!(matches!(
        kms.destroy_epoch(&next),
        Err(Error::InvalidInput { .. })
    ));
    EpochMove {
        first,
        next,
        kek,
        on_first,
        moved,
    }
}

/// During the move, `kms` (an instance opened before the change, or while it runs) opens the
/// KEK on either epoch, and its new wraps already go to the next epoch.
fn follows_the_change(kms: &dyn Kms, m: &EpochMove, binding: &KekBinding<'_>) {
    for w in [&m.on_first, &m.moved] {
        let back = kms.unwrap_kek(w, binding).unwrap();
        assert_eq!(back.expose_secret(), m.kek.expose_secret());
    }
    let fresh_wrap = kms.wrap_kek(&Kek::generate(), binding).unwrap();
    assert_eq!(fresh_wrap.root_key_id, m.next.root_key_id);
}

/// What every epoch backend must do once the first epoch of `m` is destroyed: a second
/// destroy finds it gone; an instance opened before the change (`stale`, never rebuilt)
/// refuses the record still on the destroyed epoch with a typed error and opens the moved one;
/// and `destroy_epoch` refuses each epoch of `others` (another key's, another kind) as invalid.
fn after_epoch_destroy(
    epochs: &dyn RootEpochs,
    stale: &dyn Kms,
    m: &EpochMove,
    binding: &KekBinding<'_>,
    others: &[RootEpoch],
) {
    assert_eq!(
        epochs.destroy_epoch(&m.first).unwrap().status,
        Destruction::AlreadyGone
    );
    let err = stale.unwrap_kek(&m.on_first, binding).unwrap_err();
    assert!(matches!(err, Error::Kms { .. }), "{err:?}");
    let back = stale.unwrap_kek(&m.moved, binding).unwrap();
    assert_eq!(back.expose_secret(), m.kek.expose_secret());
    for other in others {
        assert!(
            matches!(epochs.destroy_epoch(other), Err(Error::InvalidInput { .. })),
            "{other}"
        );
    }
}

mod local {
    use super::*;
    use leakless::kms::LocalKms;

    #[test]
    fn local_key_file_epoch_shred_defeats_old_backups() {
        let dir = tempfile::tempdir().unwrap();
        let key_dir = dir.path().join("etc");
        std::fs::create_dir(&key_dir).unwrap();
        let key_path = key_dir.join("root.key");
        let app: Arc<LocalKms> = Arc::new(LocalKms::generate_key_file(&key_path).unwrap());
        let old_key = std::fs::read_to_string(&key_path).unwrap();
        let orchestrator = LocalKms::from_key_file(&key_path).unwrap();
        let fresh = || -> Arc<dyn Kms> { Arc::new(LocalKms::from_key_file(&key_path).unwrap()) };

        let out = prove_refused_shred(dir.path(), app.clone(), &orchestrator, &fresh);
        out.assert_destroyed(&["snapshots"], "wrapped under root key");

        // The key file holds a new key, nothing is staged, and the old key's bytes are in no
        // file of its folder; the mode is still 0600.
        let new_key = std::fs::read_to_string(&key_path).unwrap();
        assert_ne!(new_key, old_key);
        assert!(!key_dir.join("root.key.next").exists());
        for entry in std::fs::read_dir(&key_dir).unwrap() {
            let content = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(
                !content
                    .windows(64)
                    .any(|w| w == old_key.trim_end().as_bytes()),
                "old key bytes still in the key folder"
            );
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // The app's backend switched without a restart.
        assert_eq!(
            app.root_key_id(),
            LocalKms::from_key_file(&key_path).unwrap().root_key_id()
        );
    }

    #[test]
    fn local_epochs_resume_and_refuse_unsafe_destroys() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("root.key");
        let kms = LocalKms::generate_key_file(&key_path).unwrap();
        let first = kms.current_epoch().unwrap();
        // No next epoch staged: destroying the only key is refused.
        assert!(kms.destroy_epoch(&first).is_err());
        let a = kms.begin_next_epoch().unwrap().next().clone();
        // An interrupted shred resumes the staged epoch instead of making another.
        let b = kms.begin_next_epoch().unwrap().next().clone();
        assert_eq!(a, b);
        // The staged epoch is not a retiring one.
        assert!(kms.destroy_epoch(&a).is_err());
        // Keys from memory or the environment have no epochs.
        let mem = LocalKms::from_root_key(leakless::secret::RootKey::generate());
        assert!(matches!(
            mem.begin_next_epoch(),
            Err(Error::InvalidInput { .. })
        ));
    }
}

#[cfg(feature = "vault")]
mod vault {
    use super::*;
    use leakless::kms::VaultTransitKms;

    use crate::support::peers::unique_name;
    use crate::support::peers::vault::{config, token};

    #[test]
    fn vault_transit_epoch_shred_trims_old_versions() {
        let name = unique_name("leakless-shred");
        let app = Arc::new(VaultTransitKms::create_key(config(&name), token()).unwrap());
        let orchestrator = VaultTransitKms::connect(config(&name), token()).unwrap();
        let fresh = || -> Arc<dyn Kms> {
            Arc::new(VaultTransitKms::connect(config(&name), token()).unwrap())
        };
        // Vault itself refuses the probe made under v1 (the ciphertext's version is trimmed).
        let dir = tempfile::tempdir().unwrap();
        let out = prove_refused_shred(dir.path(), app.clone(), &orchestrator, &fresh);
        // Vault's own answer for the attacker: the version is gone.
        out.assert_destroyed(&[], "vault");
        assert_eq!(
            out.destroyed.epoch,
            RootEpoch {
                root_key_id: app.root_key_id().to_owned(),
                key_version: Some(1)
            }
        );
        let info = app.key_info().unwrap();
        assert_eq!(info.latest_version, 2);
        assert_eq!(info.min_decryption_version, 2);
    }
}

#[cfg(feature = "aws-kms")]
mod aws {
    use super::*;
    use leakless::kms::AwsKms;

    use crate::support::peers::aws::config;
    use crate::support::peers::unique_name;

    #[test]
    fn aws_kms_epoch_shred_schedules_old_key_deletion() {
        let first = AwsKms::create_key(config(""), "leakless shred test, epoch 1").unwrap();
        let alias = unique_name("alias/leakless-shred");
        first.create_alias(&alias).unwrap();
        let old_arn = first.key_arn().to_owned();
        let app = Arc::new(AwsKms::connect(config(&alias)).unwrap());
        let orchestrator = AwsKms::connect(config(&alias)).unwrap();
        let fresh = || -> Arc<dyn Kms> { Arc::new(AwsKms::connect(config(&alias)).unwrap()) };
        // Epochs need an alias.
        assert!(matches!(
            first.begin_next_epoch(),
            Err(Error::InvalidInput { .. })
        ));

        let dir = tempfile::tempdir().unwrap();
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        // moto_server 5.2 does not refuse Decrypt under a key pending deletion (real AWS
        // answers KMSInvalidStateException), and never deletes it: the attacker half of the
        // proof is run but cannot be asserted against this peer. What is asserted: the alias
        // moved, every record moved, the old key is PendingDeletion with a ~7-day date.
        let out = prove_shred(
            dir.path(),
            app.clone(),
            &orchestrator,
            &fresh,
            Attacker::PeerGap,
        );
        eprintln!(
            "moto: attacker opened {} of {} old-backup values under a key pending deletion \
             (peer gap; AWS refuses)",
            out.attacker_opened,
            2 * ROWS
        );
        let Destruction::Scheduled { at } = out.destroyed.status else {
            panic!("AWS schedules deletion: {:?}", out.destroyed.status);
        };
        let week = 7 * 86_400;
        let at = u64::try_from(at.0).unwrap();
        assert!(
            at + 86_400 >= started + week && at <= started + week + 86_400,
            "deletion date {at} is not about 7 days after {started}"
        );
        assert_eq!(
            out.destroyed.epoch.root_key_id,
            format!("aws-kms:{old_arn}")
        );
        assert_ne!(app.key_arn(), old_arn, "the app followed the alias");
        assert!(out.attacker_errors.is_empty());
        // KMS reports the old key as pending deletion, so it cannot be a root key any more.
        let err = AwsKms::connect(config(&old_arn)).unwrap_err();
        let (backend, _, detail) = kms_error_parts(&err);
        assert_eq!(backend, "aws-kms", "{err}");
        assert!(detail.contains("PendingDeletion"), "{err}");
    }
}

#[cfg(feature = "pkcs11")]
mod pkcs11 {
    use super::*;
    use leakless::kms::Pkcs11Kms;

    use crate::support::peers::pkcs11::{config, env};
    use crate::support::peers::unique_name;

    fn id(label: &str) -> String {
        format!("pkcs11:{}/{label}", env("LEAKLESS_PKCS11_TOKEN"))
    }

    #[test]
    fn pkcs11_epoch_shred_destroys_the_old_key_object() {
        let label = unique_name("shred");
        let app = Arc::new(Pkcs11Kms::create(&config(&label)).unwrap());
        let orchestrator = Pkcs11Kms::open(&config(&label)).unwrap();
        let fresh = || -> Arc<dyn Kms> { Arc::new(Pkcs11Kms::open(&config(&label)).unwrap()) };
        // The token itself refuses the probe wrapped under epoch 0.
        let dir = tempfile::tempdir().unwrap();
        let out = prove_refused_shred(dir.path(), app.clone(), &orchestrator, &fresh);
        out.assert_destroyed(&["HSM", "tokendir"], "wrapped under root key");
        assert_eq!(out.destroyed.epoch, RootEpoch::of_key(id(&label)));
        // On the token: only the new epoch's object is left, and the app followed it without
        // a restart.
        let next = format!("{label}@e1");
        assert_eq!(
            orchestrator.epoch_object_labels().unwrap(),
            vec![next.clone()]
        );
        assert_eq!(app.root_key_id(), id(&next));
        assert_eq!(app.current_object_label(), next);
        // A backend opened from the configured label now finds epoch 1, and it is protected.
        let reopened = Pkcs11Kms::open(&config(&label)).unwrap();
        assert_eq!(reopened.root_key_id(), id(&next));
        assert!(reopened.key_protection().unwrap().is_protected());
    }

    #[test]
    fn pkcs11_epochs_resume_follow_and_refuse_unsafe_destroys() {
        let label = unique_name("epochs");
        let kms = Pkcs11Kms::create(&config(&label)).unwrap();
        // Opened before the epoch change and never rebuilt.
        let stale = Pkcs11Kms::open(&config(&label)).unwrap();
        let scope = KeyScope::new("orders").unwrap();
        let binding = binding(&scope, 1);
        let m = begin_epoch_change(&kms, &binding, &|| {});
        assert_eq!(m.first, RootEpoch::of_key(id(&label)));
        assert_eq!(m.next, RootEpoch::of_key(id(&format!("{label}@e1"))));
        assert_eq!(
            kms.epoch_object_labels().unwrap(),
            vec![label.clone(), format!("{label}@e1")]
        );
        follows_the_change(&stale, &m, &binding);
        assert_eq!(stale.root_key_id(), m.next.root_key_id);

        let gone = kms.destroy_epoch(&m.first).unwrap();
        assert_eq!(gone.status, Destruction::Destroyed);
        // Epochs of other keys, and other kinds of epoch, are refused.
        let others = [
            RootEpoch::of_key(id("someone-else")),
            RootEpoch::of_key(format!("pkcs11:other-token/{label}")),
            RootEpoch {
                root_key_id: id(&label),
                key_version: Some(1),
            },
        ];
        after_epoch_destroy(&kms, &stale, &m, &binding, &others);
        // A configured label that names an epoch is refused: configure the base label.
        let err = Pkcs11Kms::open(&config(&format!("{label}@e1"))).unwrap_err();
        let (backend, operation, detail) = kms_error_parts(&err);
        assert_eq!((backend, operation), ("pkcs11", "open root key"), "{err}");
        assert!(detail.contains("configure the base label"), "{err}");
        // Creating the label again is refused while any of its epochs exists.
        assert!(Pkcs11Kms::create(&config(&label)).is_err());
    }
}

#[cfg(feature = "tpm")]
mod tpm {
    use super::*;
    use leakless::kms::{TpmConfig, TpmKms};

    use crate::support::peers::tpm::tcti;

    /// The persistent handles a version 2 sealed file names now.
    fn handles(path: &Path) -> Vec<u32> {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        ["current", "previous"]
            .iter()
            .filter_map(|k| v.get(*k))
            .map(|e| {
                let h = e["handle"].as_str().unwrap().strip_prefix("0x").unwrap();
                u32::from_str_radix(h, 16).unwrap()
            })
            .collect()
    }

    /// Whether the objects a copy of a sealed file names are still in the TPM (checked by
    /// name: a freed handle may already hold another test's object).
    fn still_there(copy: &Path) -> bool {
        // Evicting through a copy touches only objects with the recorded names; put back what
        // would go is impossible, so only ask about copies whose objects should be gone, or
        // use `TpmKms::open`.
        TpmKms::evict_persistent(&TpmConfig::new(tcti(), copy)).unwrap() > 0
    }

    /// Evicts every persistent object the test made, however it ends: persistent handles are
    /// scarce, and a rerun must not find the TPM full. Records every handle the sealed file
    /// ever named.
    struct Evict {
        config: TpmConfig,
        seen: std::cell::RefCell<Vec<(u32, String)>>,
    }

    impl Evict {
        fn new(config: &TpmConfig) -> Self {
            Self {
                config: config.clone(),
                seen: std::cell::RefCell::new(Vec::new()),
            }
        }

        /// Remembers the file's current content (call after every epoch change).
        fn note(&self) {
            if let Ok(text) = std::fs::read_to_string(self.config.sealed_path()) {
                for h in handles(self.config.sealed_path()) {
                    self.seen.borrow_mut().push((h, text.clone()));
                }
            }
        }
    }

    impl Drop for Evict {
        fn drop(&mut self) {
            self.note();
            // Each remembered file version names its own objects; evicting through it checks
            // the name first, so nothing else at a reused handle is touched.
            let dir = tempfile::tempdir().unwrap();
            for (i, (_, text)) in self.seen.borrow().iter().enumerate() {
                let path = dir.path().join(format!("{i}.sealed"));
                std::fs::write(&path, text).unwrap();
                let _ = TpmKms::evict_persistent(&TpmConfig::new(self.config.tcti(), path));
            }
        }
    }

    #[test]
    fn tpm_epoch_shred_evicts_the_old_sealed_object() {
        let dir = tempfile::tempdir().unwrap();
        let config = TpmConfig::new(tcti(), dir.path().join("root.sealed"));
        let evict = Evict::new(&config);
        let app = Arc::new(TpmKms::create(&config).unwrap());
        evict.note();
        let first_id = app.root_key_id().to_owned();
        // The attacker's copy of the sealed file, taken before the shred.
        let old_file = dir.path().join("old-copy.sealed");
        std::fs::copy(config.sealed_path(), &old_file).unwrap();
        let orchestrator = TpmKms::open(&config).unwrap();
        let fresh = || -> Arc<dyn Kms> { Arc::new(TpmKms::open(&config).unwrap()) };

        let out = prove_refused_shred(dir.path(), app.clone(), &orchestrator, &fresh);
        evict.note();
        out.assert_destroyed(
            &["never held", "swtpm", "snapshot"],
            "wrapped under root key",
        );
        assert_eq!(out.destroyed.epoch, RootEpoch::of_key(first_id.clone()));
        // The old object is evicted; the file names only the new one; the app followed.
        assert!(!still_there(&old_file));
        assert_eq!(handles(config.sealed_path()).len(), 1);
        let current_copy = dir.path().join("current-copy.sealed");
        std::fs::copy(config.sealed_path(), &current_copy).unwrap();
        assert_ne!(app.root_key_id(), first_id);
        assert_eq!(
            app.root_key_id(),
            TpmKms::open(&config).unwrap().root_key_id()
        );
        // The attacker's copy of the old sealed file opens nothing any more.
        let err = TpmKms::open(&TpmConfig::new(tcti(), &old_file)).unwrap_err();
        assert!(matches!(err, Error::Kms { .. }), "{err:?}");
        assert!(
            !std::fs::read_to_string(config.sealed_path())
                .unwrap()
                .contains("private")
        );

        // The guard evicts what the test made.
        drop(orchestrator);
        drop(evict);
        assert!(TpmKms::open(&TpmConfig::new(tcti(), &current_copy)).is_err());
        assert!(!still_there(&current_copy));
    }

    #[test]
    fn tpm_epochs_resume_follow_and_refuse_unsafe_destroys() {
        let dir = tempfile::tempdir().unwrap();
        let config = TpmConfig::new(tcti(), dir.path().join("root.sealed"));
        let evict = Evict::new(&config);
        let kms = TpmKms::create(&config).unwrap();
        evict.note();
        // Opened before the epoch change and never rebuilt.
        let stale = TpmKms::open(&config).unwrap();
        let scope = KeyScope::new("orders").unwrap();
        let binding = binding(&scope, 1);
        let m = begin_epoch_change(&kms, &binding, &|| evict.note());
        assert_eq!(handles(config.sealed_path()).len(), 2);
        // A process started during the move follows it too.
        let started_during = TpmKms::open(&config).unwrap();
        for k in [&stale, &started_during] {
            follows_the_change(k, &m, &binding);
        }

        // A copy of the file that names only the retiring epoch, as a backup could.
        let retiring_copy = dir.path().join("retiring-copy.sealed");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(config.sealed_path()).unwrap()).unwrap();
        v["current"] = v["previous"].take();
        v.as_object_mut().unwrap().remove("previous");
        std::fs::write(&retiring_copy, v.to_string()).unwrap();
        assert!(TpmKms::open(&TpmConfig::new(tcti(), &retiring_copy)).is_ok());
        let gone = kms.destroy_epoch(&m.first).unwrap();
        assert_eq!(gone.status, Destruction::Destroyed);
        assert!(TpmKms::open(&TpmConfig::new(tcti(), &retiring_copy)).is_err());
        assert!(!still_there(&retiring_copy));
        // Other kinds of epoch, and ids this root never had, are refused.
        let others = [
            RootEpoch::of_key("local:0011223344556677"),
            RootEpoch::of_key("tpm:00000000000000000000000000000000"),
            RootEpoch {
                root_key_id: m.next.root_key_id.clone(),
                key_version: Some(1),
            },
        ];
        after_epoch_destroy(&kms, &stale, &m, &binding, &others);
        // A second full cycle works too.
        let change = kms.begin_next_epoch().unwrap();
        evict.note();
        let third = change.next().clone();
        let moved_again = change.mover().rewrap(&m.moved, &binding).unwrap();
        drop(change);
        kms.destroy_epoch(&m.next).unwrap();
        let back = stale.unwrap_kek(&moved_again, &binding).unwrap();
        assert_eq!(back.expose_secret(), m.kek.expose_secret());
        assert_eq!(stale.root_key_id(), third.root_key_id);
    }
}
