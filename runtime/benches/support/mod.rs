//! What the benches share: the sample counts (`--bench` and `LEAKLESS_BENCH_SAMPLES`); for the
//! KMS backend benches, the variables of the services they measure and the table of one
//! backend against the local baseline with its value-path rows through a key ring.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each bench binary uses a part of it"
)]
#![allow(
    clippy::print_stdout,
    clippy::expect_used,
    clippy::panic,
    reason = "bench support: it prints the table, and a set-up failure stops the bench with its \
              message"
)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use leakless::KeyScope;
use leakless::kms::{Kms, LocalKms};
use leakless_testkit::bench::{human_ns, paired, ring_rows, ring_with_scope};

/// How much a bench measures.
#[derive(Debug, Clone, Copy)]
pub struct Samples {
    /// `--bench` was given (`cargo bench`): the full measurement. Without it (`cargo test
    /// --benches`) a short smoke pass checks that every op works.
    pub full: bool,
    /// Samples of the fast rows: `LEAKLESS_BENCH_SAMPLES`, by default 501 (5 in a smoke pass).
    pub fast: usize,
    /// Samples of the slow rows: `fast / slow_divisor`, at least 3.
    pub slow: usize,
}

impl Samples {
    /// The counts of this run; the slow rows take a `slow_divisor`th of the fast rows' count.
    pub fn from_env(slow_divisor: usize) -> Self {
        let (full, fast) = sample_count(501);
        Self {
            full,
            fast,
            slow: (fast / slow_divisor).max(3),
        }
    }

    /// Prints the title line, and in a smoke pass a note that its timings mean nothing.
    pub fn print_title(&self, title: &str) {
        println!("{title}");
        if !self.full {
            println!(
                "smoke run (no --bench): checks that every op works; the timings mean nothing"
            );
        }
    }
}

/// Whether `--bench` was given (`cargo bench`; `cargo test --benches` does not give it), and the
/// sample count: `LEAKLESS_BENCH_SAMPLES`, by default `full_default` (5 in a smoke pass).
pub fn sample_count(full_default: usize) -> (bool, usize) {
    let full = std::env::args().any(|a| a == "--bench");
    let samples = std::env::var("LEAKLESS_BENCH_SAMPLES")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(if full { full_default } else { 5 });
    (full, samples)
}

/// Runs `make` once and prints how long it took as the line `{what}, once: ...`.
pub fn timed_once<T>(what: &str, make: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let made = make();
    println!(
        "{what}, once: {}",
        human_ns(start.elapsed().as_secs_f64() * 1e9)
    );
    made
}

/// The value of `var`, one of the lines `scripts/services/{service} start` prints; stops the
/// bench saying how to start the service when it is not set.
pub fn service_env(var: &str, service: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: start {service} with `scripts/services/{service} start DIR \
             --owner-pid $$` and export the lines it prints"
        )
    })
}

/// Prints the header of a table of `backend` against the local backend (operation, samples,
/// both medians, the median ratio `short/local`).
pub fn print_table_header(backend: &str, short: &str) {
    println!();
    println!(
        "{:<34} {:>8} {:>12} {:>12} {:>8}",
        "operation",
        "samples",
        "local",
        backend,
        format!("{short}/local")
    );
}

/// Times `local` and `measured` back to back `samples` times and prints them as the row
/// `name`.
pub fn paired_row(name: &str, samples: usize, local: impl FnMut(), measured: impl FnMut()) {
    let (l, m, r) = paired(samples, local, measured);
    row(name, samples, l, m, r);
}

/// The row `name` of opening the measured backend (`open`) against opening a local backend
/// from the key file `local_path`.
pub fn open_backend_row(name: &str, samples: usize, local_path: &Path, open: impl FnMut()) {
    paired_row(
        name,
        samples,
        || {
            black_box(LocalKms::from_key_file(local_path).expect("local open"));
        },
        open,
    );
}

/// Prints one row of that table.
pub fn row(name: &str, samples: usize, local: f64, measured: f64, ratio: f64) {
    println!(
        "{name:<34} {samples:>8} {:>12} {:>12} {ratio:>8.2}x",
        human_ns(local),
        human_ns(measured)
    );
}

/// The value path through a key ring (a cold KEK fetch and open, then warm seal and open of a
/// 100 B field) on `measured` against `local`, as rows of the table; then the backend calls
/// the measured ring made, of which the warm rows must make none.
pub fn ring_value_rows(samples: usize, local: Arc<dyn Kms>, measured: Arc<dyn Kms>, backend: &str) {
    let scope = KeyScope::new("patients").expect("scope");
    let local_ring = ring_with_scope(local, &scope);
    let measured_ring = ring_with_scope(measured, &scope);
    let (cold_unwraps, warm_unwraps) = ring_rows(
        samples,
        &local_ring,
        &measured_ring,
        &scope,
        |name, l, m, r| {
            row(name, samples, l, m, r);
        },
    );
    println!();
    println!(
        "{backend} unwrap_kek calls through the ring: {cold_unwraps} in the cold row (one per \
         cleared cache), {warm_unwraps} in the warm rows"
    );
    assert_eq!(warm_unwraps, 0, "a warm cache never calls the backend");
}
