//! The KMS backend conformance suite (`support/kms_suite.rs`) on the local backend: the
//! reference run that proves the suite itself passes on a known-good backend.

use std::sync::Arc;

use leakless::Error;
use leakless::key::{KekVersion, KeyScope, WrappedKek};
use leakless::kms::{KekBinding, Kms, LocalKms};
use leakless::secret::{Kek, RootKey};

fn make() -> Arc<dyn Kms> {
    Arc::new(LocalKms::from_root_key(RootKey::generate()))
}

leakless_kms_suite!(make);

/// A backend that ignores the binding (every KEK wrapped as if for `ignored` v1). The suite
/// must catch it: this proves the wrong-binding check can fail.
struct IgnoresBinding(LocalKms);

impl Kms for IgnoresBinding {
    fn backend(&self) -> &'static str {
        "local"
    }
    fn root_key_id(&self) -> &str {
        self.0.root_key_id()
    }
    fn wrap_kek(&self, kek: &Kek, _: &KekBinding<'_>) -> Result<WrappedKek, Error> {
        self.0.wrap_kek(kek, &fixed())
    }
    fn unwrap_kek(&self, wrapped: &WrappedKek, _: &KekBinding<'_>) -> Result<Kek, Error> {
        self.0.unwrap_kek(wrapped, &fixed())
    }
}

fn fixed() -> KekBinding<'static> {
    static SCOPE: std::sync::LazyLock<KeyScope> =
        std::sync::LazyLock::new(|| KeyScope::new("ignored").unwrap());
    KekBinding {
        scope: &SCOPE,
        version: KekVersion::FIRST,
    }
}

#[test]
fn the_suite_catches_a_backend_that_ignores_the_binding() {
    let make_bad = || -> Arc<dyn Kms> {
        Arc::new(IgnoresBinding(LocalKms::from_root_key(RootKey::generate())))
    };
    // The lifecycle still works with such a backend...
    crate::support::kms_suite::create_seal_open(&make_bad);
    // ...but the binding check fails on it.
    let caught = std::panic::catch_unwind(|| {
        crate::support::kms_suite::wrong_binding_foreign_root_and_tamper_fail(&make_bad);
    });
    assert!(caught.is_err(), "the suite accepted an unbound wrap");
}
