//! The AWS KMS backend against a real `moto_server` (started by `scripts/services/moto`): the
//! shared KMS suite, the encryption context enforced inside KMS, root-key moves with
//! `ReEncrypt`, HTTP call counts, and credentials that never show up in output.
#![cfg(feature = "aws-kms")]

use std::sync::Arc;
use std::time::Duration;

use leakless::key::KeyAction;
use leakless::kms::{AwsCredentials, AwsKms, AwsKmsConfig, Kms};
use leakless::secret::Kek;
use leakless::{Error, KeyRing, KeyScope};

use crate::support::kms_suite::{
    Fixture, assert_move_keeps_the_binding, audited, kms_error_parts,
    one_request_for_100_000_opens, round_trip, round_trip_between, who,
};
use crate::support::peers::aws::{config, dummy_secret};
use crate::support::peers::{binding, service_env};

/// A new KMS key on the shared moto server, for each call.
fn new_kms() -> AwsKms {
    AwsKms::create_key(config(""), "leakless test root key").unwrap()
}

fn make() -> Arc<dyn Kms> {
    Arc::new(new_kms())
}

leakless_kms_suite!(make);

#[test]
fn a_wrong_encryption_context_is_refused_by_kms() {
    let kms = new_kms();
    let scope = KeyScope::new("patients").unwrap();
    let (_, wrapped) = round_trip(&kms, &scope, 1);
    let err = kms.unwrap_kek(&wrapped, &binding(&scope, 2)).unwrap_err();
    let (backend, operation, detail) = kms_error_parts(&err);
    assert_eq!((backend, operation), ("aws-kms", "unwrap KEK"));
    assert!(detail.starts_with("patients v2:"), "{err}");
    assert!(detail.contains("InvalidCiphertextException"), "{err}");
    // Not retried: a refusal is permanent.
    assert_eq!(kms.retry_counts().retries, 0);
}

#[test]
fn connect_resolves_the_key_arn_and_refuses_unknown_keys() {
    let kms = new_kms();
    let again = AwsKms::connect(AwsKmsConfig {
        key_id: kms.key_arn().to_owned(),
        ..config("")
    })
    .unwrap();
    assert_eq!(again.root_key_id(), kms.root_key_id());
    assert!(kms.root_key_id().starts_with("aws-kms:arn:aws:kms:"));
    // A KEK wrapped through one connection unwraps through the other.
    round_trip_between(&kms, &again, &KeyScope::new("s").unwrap(), 1);

    let err = AwsKms::connect(AwsKmsConfig {
        key_id: "11111111-2222-3333-4444-555555555555".into(),
        ..config("")
    })
    .unwrap_err();
    let (backend, _, detail) = kms_error_parts(&err);
    assert_eq!(backend, "aws-kms");
    assert!(detail.contains("NotFoundException"), "{err}");
}

/// Root-key move with ReEncrypt: the KEK records move to a second KMS key inside KMS, a ring on
/// the second key opens every old row, and each move is audited.
#[test]
fn re_encrypt_moves_every_kek_to_another_key() {
    let old = Arc::new(new_kms());
    let new = Arc::new(new_kms());
    let f = Fixture::new(old.clone());
    let rows: Vec<_> = (0..20).map(|r| f.seal(r, "221B Baker Street")).collect();
    f.ring
        .rotate(&f.scope, Duration::from_secs(86_400), &who())
        .unwrap();
    let newer = f.seal(100, "newer");

    let moved = f
        .ring
        .rewrap_root_in_kms(&old.re_encrypt_to(&new), &who())
        .unwrap();
    assert_eq!(moved, 3, "two KEK versions and the store's integrity key");
    assert_eq!(
        f.ring
            .rewrap_root_in_kms(&old.re_encrypt_to(&new), &who())
            .unwrap(),
        0
    );
    for record in f.ring.versions(&f.scope).unwrap() {
        assert_eq!(
            record.wrapped.unwrap().root_key_id,
            new.root_key_id(),
            "{:?}",
            record.version
        );
    }
    assert_eq!(audited(&f.ring, &f.scope, KeyAction::RewrapRoot), 2);

    let ring = KeyRing::builder(new.clone(), f.store.clone())
        .clock(f.clock.clone())
        .build();
    let open = |row: i64, env: &[u8]| {
        ring.open(
            &leakless::FieldContext::new("patients", "address", leakless::RowId::Int(row), 1),
            env,
        )
        .unwrap()
        .expose_secret()
        .to_vec()
    };
    for (r, env) in (0..).zip(&rows) {
        assert_eq!(open(r, env), b"221B Baker Street");
    }
    assert_eq!(open(100, &newer), b"newer");
    // The old key no longer unwraps the moved records.
    let record = &f.ring.versions(&f.scope).unwrap()[0];
    assert!(
        old.unwrap_kek(record.wrapped.as_ref().unwrap(), &binding(&f.scope, 1))
            .is_err()
    );
}

#[test]
fn re_encrypt_keeps_the_binding() {
    let a = new_kms();
    let b = new_kms();
    let scope = KeyScope::new("tenant-9").unwrap();
    let (kek, wrapped) = round_trip(&a, &scope, 5);
    let moved =
        assert_move_keeps_the_binding(&kek, &scope, 5, &b, |to| a.re_encrypt(&wrapped, to, &b));
    assert_eq!(moved.root_key_id, b.root_key_id());
}

/// The suite counts the ring's `unwrap_kek` calls for 100,000 opens; this counts the requests
/// KMS actually got for 100,000 opens under one KEK version.
#[test]
fn one_decrypt_request_for_100_000_opens() {
    one_request_for_100_000_opens(&Arc::new(new_kms()), AwsKms::retry_counts);
}

#[test]
fn credentials_never_show() {
    let secret = dummy_secret();
    let cfg = config("");
    let shown = format!("{cfg:?}");
    assert!(!shown.contains(&secret), "{shown}");
    let kms = AwsKms::create_key(cfg, "debug check").unwrap();
    let shown = format!("{kms:?}");
    assert!(!shown.contains(&secret), "{shown}");
    let scope = KeyScope::new("s").unwrap();
    let w = kms.wrap_kek(&Kek::generate(), &binding(&scope, 1)).unwrap();
    let err = kms.unwrap_kek(&w, &binding(&scope, 9)).unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains(&secret), "{text}");
}

#[test]
fn a_bad_endpoint_is_refused_up_front() {
    let err = AwsKms::connect(AwsKmsConfig {
        endpoint: Some("127.0.0.1:1".into()),
        ..config("")
    })
    .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
}

/// The guard that marks the child process of `default_credential_chain_from_the_environment`.
const CHAIN_CHILD: &str = "LEAKLESS_TEST_AWS_CHAIN_CHILD";

/// `AwsCredentials::DefaultChain` with the region taken from the chain too: run in a child
/// process (this test binary again, filtered to this one test, with a guard variable so it
/// cannot recurse) whose environment carries `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
/// `AWS_REGION`, since a test must not change its own process's environment.
#[test]
fn default_credential_chain_from_the_environment() {
    if std::env::var_os(CHAIN_CHILD).is_some() {
        let kms = AwsKms::create_key(
            AwsKmsConfig {
                region: None,
                credentials: AwsCredentials::DefaultChain,
                ..config("")
            },
            "default chain",
        )
        .unwrap();
        assert!(
            kms.key_arn().starts_with(&format!(
                "arn:aws:kms:{}:",
                std::env::var("AWS_REGION").unwrap()
            )),
            "the region came from AWS_REGION: {}",
            kms.key_arn()
        );
        round_trip(&kms, &KeyScope::new("chain").unwrap(), 1);
        return;
    }
    let region = service_env("LEAKLESS_AWS_REGION", "moto");
    let out = crate::support::rerun_test(
        module_path!(),
        "default_credential_chain_from_the_environment",
    )
    .env(CHAIN_CHILD, "1")
    .env("AWS_ACCESS_KEY_ID", "AKIALEAKLESSCHAIN")
    .env("AWS_SECRET_ACCESS_KEY", dummy_secret())
    .env("AWS_REGION", &region)
    .env_remove("AWS_PROFILE")
    .env_remove("AWS_SESSION_TOKEN")
    .env("AWS_EC2_METADATA_DISABLED", "true")
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the child run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Inside another tokio runtime (an async service calling the ring directly), calls take the
/// scoped-thread path instead of panicking on a nested `block_on`, and dropping the backend
/// there does not panic either.
#[test]
fn usable_and_droppable_inside_another_tokio_runtime() {
    let outer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let kms = new_kms();
    outer.block_on(async move {
        assert!(tokio::runtime::Handle::try_current().is_ok());
        round_trip(&kms, &KeyScope::new("async").unwrap(), 1);
        drop(kms);
    });
}
