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
    reason = "a bench binary's job is to print its table"
)]
#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "a bench setup failure should stop the bench with its message"
)]

mod support;

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use leakless::key::{KekVersion, KeyScope};
use leakless::kms::{KekBinding, Kms, LocalKms, PinSource, Pkcs11Config, Pkcs11Kms};
use leakless::secret::Kek;
use leakless_testkit::bench::{human_ns, paired};
use support::{Samples, print_table_header, ring_value_rows, row};

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
    let create_start = Instant::now();
    let pkcs11 = Arc::new(Pkcs11Kms::create(&config).expect("create a root key on the token"));
    let create_time = create_start.elapsed().as_secs_f64() * 1e9;
    let dir = tempfile::tempdir().expect("temporary folder");
    let local_path = dir.path().join("root.key");
    let local = Arc::new(LocalKms::generate_key_file(&local_path).expect("local key file"));

    samples.print_title(&format!(
        "leakless PKCS#11 backend benchmark ({}, token {}), medians",
        config.module.display(),
        config.token_label
    ));
    println!(
        "Pkcs11Kms::create (load module, log in, generate the key), once: {}",
        human_ns(create_time)
    );
    print_table_header("pkcs11", "p11");

    let (l, p, r) = paired(
        samples.slow,
        || {
            black_box(LocalKms::from_key_file(&local_path).expect("local open"));
        },
        || {
            black_box(Pkcs11Kms::open(&config).expect("pkcs11 open"));
        },
    );
    row("open backend (token logged in)", samples.slow, l, p, r);

    let bind_scope = KeyScope::new("bench").expect("scope");
    let binding = KekBinding {
        scope: &bind_scope,
        version: KekVersion::FIRST,
    };
    let kek = Kek::generate();
    let (l, p, r) = paired(
        samples.fast,
        || {
            black_box(local.wrap_kek(&kek, &binding).expect("local wrap"));
        },
        || {
            black_box(pkcs11.wrap_kek(&kek, &binding).expect("pkcs11 wrap"));
        },
    );
    row("wrap KEK", samples.fast, l, p, r);
    let local_wrapped = local.wrap_kek(&kek, &binding).expect("local wrap");
    let p11_wrapped = pkcs11.wrap_kek(&kek, &binding).expect("pkcs11 wrap");
    let (l, p, r) = paired(
        samples.fast,
        || {
            black_box(local.unwrap_kek(&local_wrapped, &binding).expect("unwrap"));
        },
        || {
            black_box(pkcs11.unwrap_kek(&p11_wrapped, &binding).expect("unwrap"));
        },
    );
    row("unwrap KEK", samples.fast, l, p, r);

    ring_value_rows(samples.fast, local, pkcs11, "PKCS#11 backend");
}
