//! The TPM 2.0 backend's costs against the local backend, measured in the same run, as one
//! median table:
//!
//! * `cold start`: [`TpmKms::open`] (connect, derive the owner storage key, load and unseal the
//!   sealed root key) against [`LocalKms::from_key_file`];
//! * `cold KEK fetch`: opening one 100 B field right after the KEK cache was cleared (one
//!   `unwrap_kek` through the backend, then the field);
//! * `seal` / `open` (warm cache): [`KeyRing::seal`] / [`KeyRing::open`] of a 100 B field,
//!   which never reach the backend and so should match the local backend within noise.
//!
//! Every sample times the local and the TPM op back to back, alternating which goes first, so
//! noise from the shared machine hits both. The ratio column is the median of per-sample ratios.
//!
//! Needs `LEAKLESS_TPM_TCTI` (e.g. from `scripts/services/swtpm start DIR --owner-pid $$`).
//! `cargo bench -p leakless --features tpm --bench kms_tpm` runs the full measurement;
//! `LEAKLESS_BENCH_SAMPLES=N` sets the sample count of the fast rows (default 501; the cold-start
//! row takes a tenth of it). Without `--bench` it runs a short smoke pass.

#![allow(
    clippy::print_stdout,
    reason = "a bench binary's job is to print its table"
)]
#![allow(
    clippy::expect_used,
    reason = "a bench setup failure should stop the bench with its message"
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use leakless::KeyScope;
use leakless::kms::{LocalKms, TpmConfig, TpmKms};
use leakless_testkit::bench::{human_ns as human, paired, ring_rows, ring_with_scope};

const TCTI_ENV: &str = "LEAKLESS_TPM_TCTI";

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let samples = std::env::var("LEAKLESS_BENCH_SAMPLES")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(if full { 501 } else { 5 });
    let cold_samples = (samples / 10).max(3);
    let tcti = std::env::var(TCTI_ENV).expect(
        "LEAKLESS_TPM_TCTI is not set: start a software TPM with `scripts/services/swtpm start \
         DIR --owner-pid $$` and export the line it prints",
    );
    let dir = tempfile::tempdir().expect("temporary folder");
    let tpm_config = TpmConfig::new(&tcti, dir.path().join("root.sealed"));
    let create_start = Instant::now();
    drop(TpmKms::create(&tpm_config).expect("seal a root key to the TPM"));
    let create_time = create_start.elapsed().as_secs_f64() * 1e9;
    let local_path = dir.path().join("root.key");
    drop(LocalKms::generate_key_file(&local_path).expect("local key file"));

    println!("leakless TPM backend benchmark ({tcti}), medians");
    if !full {
        println!("smoke run (no --bench): checks that every op works; the timings mean nothing");
    }
    println!(
        "TpmKms::create (seal a new root key), once: {}",
        human(create_time)
    );
    println!();
    println!(
        "{:<34} {:>8} {:>12} {:>12} {:>8}",
        "operation", "samples", "local", "tpm", "tpm/local"
    );

    let (l, t, r) = paired(
        cold_samples,
        || {
            black_box(LocalKms::from_key_file(&local_path).expect("local open"));
        },
        || {
            black_box(TpmKms::open(&tpm_config).expect("tpm open"));
        },
    );
    row("cold start (open backend)", cold_samples, l, t, r);

    let scope = KeyScope::new("patients").expect("scope");
    let local_ring = ring_with_scope(
        Arc::new(LocalKms::from_key_file(&local_path).expect("local open")),
        &scope,
    );
    let tpm_ring = ring_with_scope(
        Arc::new(TpmKms::open(&tpm_config).expect("tpm open")),
        &scope,
    );
    let (cold_unwraps, warm_unwraps) =
        ring_rows(samples, &local_ring, &tpm_ring, &scope, |name, l, m, r| {
            row(name, samples, l, m, r);
        });

    println!();
    println!(
        "TPM backend unwrap_kek calls: {cold_unwraps} in the cold rows (one per cleared cache), \
         {warm_unwraps} in the warm rows"
    );
    assert_eq!(warm_unwraps, 0, "a warm cache never calls the backend");
}

fn row(name: &str, samples: usize, local: f64, tpm: f64, ratio: f64) {
    println!(
        "{name:<34} {samples:>8} {:>12} {:>12} {ratio:>8.2}x",
        human(local),
        human(tpm)
    );
}
