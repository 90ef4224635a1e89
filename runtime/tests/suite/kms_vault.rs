//! The Vault Transit backend against a real OpenBao server (`bao server -dev`, started by
//! `scripts/services/openbao`): the shared KMS suite, Transit key versions with `rewrap` and
//! `min_decryption_version`, the binding enforced inside Vault, HTTP call counts, and a token
//! that never shows up in output.
#![cfg(feature = "vault")]

use std::sync::Arc;
use std::time::Duration;

use leakless::kms::{Kms, VaultConfig, VaultToken, VaultTransitKms};
use leakless::secret::Kek;
use leakless::{Error, KeyScope};

use crate::support::kms_suite::{
    Fixture, assert_move_keeps_the_binding, audited, kms_error_parts,
    one_request_for_100_000_opens, round_trip, who,
};
use crate::support::peers::vault::{config, token, token_text};
use crate::support::peers::{binding, service_env, unique_name};

/// A new derived Transit key on the shared server, for each call.
fn new_kms() -> VaultTransitKms {
    VaultTransitKms::create_key(config(&unique_name("leakless-test")), token()).unwrap()
}

fn make() -> Arc<dyn Kms> {
    Arc::new(new_kms())
}

leakless_kms_suite!(make);

#[test]
fn wrapped_keks_name_their_transit_key_version() {
    let kms = new_kms();
    let scope = KeyScope::new("patients").unwrap();
    let (_, wrapped) = round_trip(&kms, &scope, 1);
    assert!(wrapped.ciphertext.starts_with(b"vault:v1:"));
    assert_eq!(kms.rotate_key().unwrap(), 2);
    let wrapped2 = kms.wrap_kek(&Kek::generate(), &binding(&scope, 2)).unwrap();
    assert!(wrapped2.ciphertext.starts_with(b"vault:v2:"));
}

/// Rotate the Transit key, re-wrap the stored KEKs inside Vault, then raise
/// `min_decryption_version`: old rows still open, and a KEK still wrapped under the old Transit
/// version is refused by Vault.
#[test]
fn rotate_rewrap_and_min_decryption_version() {
    let kms = Arc::new(new_kms());
    let f = Fixture::new(kms.clone());
    let rows: Vec<_> = (0..20).map(|r| f.seal(r, "12 Rue de la Paix")).collect();
    f.ring
        .rotate(&f.scope, Duration::from_secs(86_400), &who())
        .unwrap();
    let newer: Vec<_> = (100..110).map(|r| f.seal(r, "newer")).collect();
    let v1_before = f.ring.versions(&f.scope).unwrap()[0]
        .wrapped
        .clone()
        .unwrap();
    assert!(v1_before.ciphertext.starts_with(b"vault:v1:"));

    assert_eq!(kms.rotate_key().unwrap(), 2);
    let info = kms.key_info().unwrap();
    assert_eq!((info.latest_version, info.min_decryption_version), (2, 1));

    // Before the re-wrap, refusing Transit v1 would make the old KEK records unreadable.
    kms.set_min_decryption_version(2).unwrap();
    let err = kms
        .unwrap_kek(&v1_before, &binding(&f.scope, 1))
        .unwrap_err();
    let (backend, _, detail) = kms_error_parts(&err);
    assert_eq!(backend, "vault");
    assert!(detail.contains("patients v1"), "{err}");
    assert!(detail.contains("HTTP 400"), "{err}");
    kms.set_min_decryption_version(1).unwrap();

    let changed = f
        .ring
        .rewrap_root_in_kms(&kms.rewrap_to_latest().unwrap(), &who())
        .unwrap();
    assert_eq!(
        changed, 3,
        "both KEK versions and the store's integrity key were on Transit v1"
    );
    for record in f.ring.versions(&f.scope).unwrap() {
        let w = record.wrapped.unwrap();
        assert!(
            w.ciphertext.starts_with(b"vault:v2:"),
            "{:?}",
            record.version
        );
    }
    assert_eq!(
        f.ring
            .rewrap_root_in_kms(&kms.rewrap_to_latest().unwrap(), &who())
            .unwrap(),
        0,
        "repeatable"
    );
    assert_eq!(
        audited(&f.ring, &f.scope, leakless::key::KeyAction::RewrapRoot),
        2
    );

    kms.set_min_decryption_version(2).unwrap();
    f.ring.cache().clear();
    for (r, env) in (0..).zip(&rows) {
        assert_eq!(f.open(r, env).unwrap(), b"12 Rue de la Paix");
    }
    for (r, env) in (100..).zip(&newer) {
        assert_eq!(f.open(r, env).unwrap(), b"newer");
    }
    // The copy taken before the re-wrap is on Transit v1, which Vault now refuses.
    let err = kms
        .unwrap_kek(&v1_before, &binding(&f.scope, 1))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Kms {
                backend: "vault",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().to_lowercase().contains("disallowed")
            || err.to_string().contains("too old"),
        "{err}"
    );
}

#[test]
fn rewrap_keeps_the_binding() {
    let kms = new_kms();
    let scope = KeyScope::new("tenant-7").unwrap();
    let (kek, wrapped) = round_trip(&kms, &scope, 3);
    kms.rotate_key().unwrap();
    // A re-wrap under the wrong binding is refused inside Vault.
    let rewrapped =
        assert_move_keeps_the_binding(&kek, &scope, 3, &kms, |to| kms.rewrap(&wrapped, to));
    assert!(rewrapped.ciphertext.starts_with(b"vault:v2:"));
}

/// The shared suite counts the ring's `unwrap_kek` calls for 100,000 opens; this counts the
/// HTTP requests Vault actually got for 100,000 opens under one KEK version.
#[test]
fn one_decrypt_request_for_100_000_opens() {
    one_request_for_100_000_opens(&Arc::new(new_kms()), VaultTransitKms::retry_counts);
}

#[test]
fn a_key_that_is_not_derived_is_refused() {
    let name = unique_name("leakless-test");
    // Make a plain (non-derived) key with the bao CLI, as an operator might by mistake.
    let mut bao = std::process::Command::new("bao");
    bao.args(["write", "-f", &format!("transit/keys/{name}")])
        .env("BAO_ADDR", service_env("LEAKLESS_VAULT_ADDR", "openbao"))
        .env("BAO_TOKEN", token_text())
        .stdout(std::process::Stdio::null());
    if let Some(ca) = std::env::var_os("LEAKLESS_VAULT_CACERT") {
        bao.env("BAO_CACERT", ca);
    }
    let status = bao
        .status()
        .expect("run bao (installed by scripts/services/openbao install)");
    assert!(status.success());
    let err = VaultTransitKms::connect(config(&name), token()).unwrap_err();
    let (backend, operation, detail) = kms_error_parts(&err);
    assert_eq!((backend, operation), ("vault", "connect"), "{err}");
    assert!(detail.contains("is not derived"), "{err}");
    // create_key on an existing non-derived key refuses too, rather than using it.
    let err = VaultTransitKms::create_key(config(&name), token()).unwrap_err();
    let (backend, operation, detail) = kms_error_parts(&err);
    assert_eq!((backend, operation), ("vault", "create key"), "{err}");
    assert!(detail.contains("not derived; pick another name"), "{err}");
}

#[test]
fn a_missing_key_is_a_typed_error() {
    let err = VaultTransitKms::connect(config(&unique_name("leakless-test")), token()).unwrap_err();
    let (backend, operation, _) = kms_error_parts(&err);
    assert_eq!((backend, operation), ("vault", "read key"));
}

#[test]
fn the_token_never_shows() {
    let secret = token_text();
    let kms = new_kms();
    let shown = format!("{kms:?} {:?}", token());
    assert!(!shown.contains(&secret), "{shown}");

    // A wrong token: Vault answers 403, which is not retried, and the error names neither
    // token.
    let wrong = format!("s.{}", "x".repeat(24));
    let bad = VaultTransitKms::connect(config("whatever"), VaultToken::new(wrong.clone()).unwrap())
        .unwrap_err();
    let text = format!("{bad} {bad:?}");
    assert!(text.contains("HTTP 403"), "{text}");
    assert!(!text.contains(&wrong) && !text.contains(&secret), "{text}");
}

#[test]
fn a_loose_token_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "s.abcdef\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = VaultToken::from_file(&path).unwrap_err();
    assert!(matches!(err, Error::KeyFile { .. }), "{err}");
    assert!(err.to_string().contains("chmod 600"));
    assert!(!err.to_string().contains("abcdef"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(VaultToken::from_file(&path).is_ok());
}

/// The shared server speaks HTTPS with a CA made for this run: without that CA the connection
/// is refused at once (a certificate problem is not retried), with it everything above works.
#[test]
fn https_without_the_run_ca_is_refused_at_once() {
    assert!(
        service_env("LEAKLESS_VAULT_ADDR", "openbao").starts_with("https://"),
        "the shared OpenBao must run with TLS (scripts/services/openbao start without \
         --plain-http) so that this test checks certificate handling"
    );
    service_env("LEAKLESS_VAULT_CACERT", "openbao");
    let started = std::time::Instant::now();
    let err = VaultTransitKms::connect(
        VaultConfig {
            ca_cert: None,
            ..config("k")
        },
        token(),
    )
    .unwrap_err();
    // An Error::Kms, not Error::KmsUnavailable: not retried.
    let (backend, _, detail) = kms_error_parts(&err);
    assert_eq!(backend, "vault");
    assert!(detail.to_lowercase().contains("certificate"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2), "not retried");
}

#[test]
fn a_ca_file_without_certificates_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, "not a certificate\n").unwrap();
    let err = VaultTransitKms::connect(
        VaultConfig {
            ca_cert: Some(path),
            ..config("k")
        },
        token(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    assert!(err.to_string().contains("no PEM certificate"), "{err}");
}
