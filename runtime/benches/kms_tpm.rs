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
    clippy::expect_used,
    reason = "a bench binary prints its table, and a set-up failure stops it with its message"
)]

mod support;

use std::hint::black_box;
use std::sync::Arc;

use leakless::kms::{LocalKms, TpmConfig, TpmKms};
use support::{Samples, open_backend_row, print_table_header, ring_value_rows, timed_once};

fn main() {
    let samples = Samples::from_env(10);
    let tcti = support::service_env("LEAKLESS_TPM_TCTI", "swtpm");
    let dir = tempfile::tempdir().expect("temporary folder");
    let tpm_config = TpmConfig::new(&tcti, dir.path().join("root.sealed"));
    let local_path = dir.path().join("root.key");
    drop(LocalKms::generate_key_file(&local_path).expect("local key file"));

    samples.print_title(&format!("leakless TPM backend benchmark ({tcti}), medians"));
    drop(timed_once("TpmKms::create (seal a new root key)", || {
        TpmKms::create(&tpm_config).expect("seal a root key to the TPM")
    }));
    print_table_header("tpm", "tpm");

    open_backend_row(
        "cold start (open backend)",
        samples.slow,
        &local_path,
        || {
            black_box(TpmKms::open(&tpm_config).expect("tpm open"));
        },
    );

    ring_value_rows(
        samples.fast,
        Arc::new(LocalKms::from_key_file(&local_path).expect("local open")),
        Arc::new(TpmKms::open(&tpm_config).expect("tpm open")),
        "TPM backend",
    );
}
