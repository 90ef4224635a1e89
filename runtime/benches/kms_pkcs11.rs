//! The PKCS#11 backend's costs (SoftHSM2) against the local backend, measured in the same run,
//! as one median table:
//!
//! * `open backend`: [`Pkcs11Kms::open`] on a module that is already loaded and a token that
//!   is already logged in (find the key by label, check its protection attributes) against
//!   [`LocalKms::from_key_file`];
//! * `wrap KEK` / `unwrap KEK`: one [`Kms::wrap_kek`] / [`Kms::unwrap_kek`] call, the
//!   backend's own cost (AES-256-GCM on the token);
//! * `cold KEK fetch + open 100 B`: opening one field right after the KEK cache was cleared
//!   (one `unwrap_kek` through the backend, then the field);
//! * `seal` / `open` (warm cache): [`KeyRing::seal`] / [`KeyRing::open`] of a 100 B field,
//!   which never reach the backend and so should match the local backend within noise.
//!
//! Every sample times the local and the PKCS#11 op back to back, alternating which goes first,
//! so noise from the shared machine hits both. The ratio column is the median of per-sample
//! ratios.
//!
//! Needs the variables of `scripts/services/softhsm start DIR --owner-pid $$`.
//! `cargo bench -p leakless --features pkcs11 --bench kms_pkcs11` runs the full measurement;
//! `LEAKLESS_BENCH_SAMPLES=N` sets the sample count (default 501; the open-backend row takes a
//! tenth of it). Without `--bench` (as `cargo test --benches` runs it) it makes a short smoke
//! pass.

#![allow(
    clippy::print_stdout,
    clippy::expect_used,
    reason = "a bench binary prints its table, and a set-up failure stops it with its message"
)]

mod support;

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use leakless::key::{KekVersion, KeyScope, WrappedKek};
use leakless::kms::{KekBinding, Kms, LocalKms, PinSource, Pkcs11Config, Pkcs11Kms};
use leakless::secret::Kek;
use support::{
    Samples, open_backend_row, paired_row, print_table_header, ring_value_rows, timed_once,
};

fn env(var: &str) -> String {
    support::service_env(var, "softhsm")
}

fn main() {
    let samples = Samples::from_env(10);
    env("SOFTHSM2_CONF");
    let config = Pkcs11Config {
        module: PathBuf::from(env("LEAKLESS_PKCS11_MODULE")),
        token_label: env("LEAKLESS_PKCS11_TOKEN"),
        key_label: format!("bench-{:016x}", rand::random::<u64>()),
        pin: PinSource::File(PathBuf::from(env("LEAKLESS_PKCS11_PIN_FILE"))),
    };
    let dir = tempfile::tempdir().expect("temporary folder");
    let local_path = dir.path().join("root.key");
    let local = Arc::new(LocalKms::generate_key_file(&local_path).expect("local key file"));

    samples.print_title(&format!(
        "leakless PKCS#11 backend benchmark ({}, token {}), medians",
        config.module.display(),
        config.token_label
    ));
    let pkcs11 = timed_once(
        "Pkcs11Kms::create (load module, log in, generate the key)",
        || Arc::new(Pkcs11Kms::create(&config).expect("create a root key on the token")),
    );
    print_table_header("pkcs11", "p11");

    open_backend_row(
        "open backend (token logged in)",
        samples.slow,
        &local_path,
        || {
            black_box(Pkcs11Kms::open(&config).expect("pkcs11 open"));
        },
    );

    let bind_scope = KeyScope::new("bench").expect("scope");
    let binding = KekBinding {
        scope: &bind_scope,
        version: KekVersion::FIRST,
    };
    let kek = Kek::generate();
    let local_wrapped = local.wrap_kek(&kek, &binding).expect("local wrap");
    let p11_wrapped = pkcs11.wrap_kek(&kek, &binding).expect("pkcs11 wrap");
    // Each row times one backend call on both backends.
    let kms_row = |name: &str, call: &dyn Fn(&dyn Kms, &WrappedKek)| {
        paired_row(
            name,
            samples.fast,
            || call(&*local, &local_wrapped),
            || call(&*pkcs11, &p11_wrapped),
        );
    };
    kms_row("wrap KEK", &|kms, _| {
        black_box(kms.wrap_kek(&kek, &binding).expect("wrap"));
    });
    kms_row("unwrap KEK", &|kms, wrapped| {
        black_box(kms.unwrap_kek(wrapped, &binding).expect("unwrap"));
    });

    ring_value_rows(samples.fast, local, pkcs11, "PKCS#11 backend");
}
