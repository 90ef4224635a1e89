//! Timing for the workspace's bench binaries (`harness = false`, printing tables): a baseline
//! and a measured operation timed in the same samples, alternating which runs first, so the
//! ratio of the two survives a noisy machine; medians throughout.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use leakless::kms::Kms;
use leakless::store::MemoryKeyStore;
use leakless::{AuditInfo, FieldContext, FieldPolicy, KeyRing, KeyScope, RowId};

/// The median (upper median for an even count); NaN for no values. Sorts `v`.
#[must_use]
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs `op` `n` times and returns the mean time per call in nanoseconds.
pub fn time_batch(n: u32, mut op: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        op();
    }
    start.elapsed().as_secs_f64() * 1e9 / f64::from(n.max(1))
}

/// How many calls of `op` fill `batch` (at least one, at most a million).
pub fn calibrate(batch: Duration, mut op: impl FnMut()) -> u32 {
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < batch && n < 1_000_000 {
        op();
        n += 1;
    }
    n.max(1)
}

/// Times `base` and `measured` in each of `samples` samples, as batches of `n_base` and
/// `n_measured` calls, alternating which goes first, after one untimed call of each (sessions,
/// caches, lazy statics). Returns (base median, measured median, median of the per-sample
/// measured/base ratios), in nanoseconds per call.
pub fn paired_n(
    samples: usize,
    (n_base, n_measured): (u32, u32),
    mut base: impl FnMut(),
    mut measured: impl FnMut(),
) -> (f64, f64, f64) {
    base();
    measured();
    let (mut b, mut m, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..samples {
        let (tb, tm) = if i % 2 == 0 {
            let tb = time_batch(n_base, &mut base);
            (tb, time_batch(n_measured, &mut measured))
        } else {
            let tm = time_batch(n_measured, &mut measured);
            (time_batch(n_base, &mut base), tm)
        };
        b.push(tb);
        m.push(tm);
        r.push(tm / tb);
    }
    (median(&mut b), median(&mut m), median(&mut r))
}

/// [`paired_n`] with one call per sample (for operations of tens of microseconds and more).
pub fn paired(samples: usize, base: impl FnMut(), measured: impl FnMut()) -> (f64, f64, f64) {
    paired_n(samples, (1, 1), base, measured)
}

/// [`paired_n`] with batches of 200 calls (for sub-microsecond operations).
pub fn paired_batched(
    samples: usize,
    base: impl FnMut(),
    measured: impl FnMut(),
) -> (f64, f64, f64) {
    paired_n(samples, (200, 200), base, measured)
}

/// [`paired_n`] with each side's batch [`calibrate`]d to last about `batch`.
pub fn paired_calibrated(
    samples: usize,
    batch: Duration,
    mut base: impl FnMut(),
    mut measured: impl FnMut(),
) -> (f64, f64, f64) {
    let n = (calibrate(batch, &mut base), calibrate(batch, &mut measured));
    paired_n(samples, n, base, measured)
}

/// A key ring over `kms` with an in-memory key store and `scope` created.
///
/// # Panics
/// When the scope cannot be created (a bench set-up failure).
#[must_use]
pub fn ring_with_scope(kms: Arc<dyn Kms>, scope: &KeyScope) -> KeyRing {
    let ring = KeyRing::builder(kms, Arc::new(MemoryKeyStore::new())).build();
    ring.create_scope(scope, &AuditInfo::new("bench", "KMS benchmark"))
        .expect("create scope");
    ring
}

/// The value path of a KMS backend against a baseline ring, 100-byte values: a cold KEK fetch
/// and open (each cache cleared first), then seal and open with warm caches. Each row goes to
/// `row(name, base, measured, ratio)`. Returns the measured ring's KMS unwraps in the cold row
/// and in the warm rows (which must be 0: a warm cache never calls the backend).
///
/// # Panics
/// When a seal or open fails (a bench set-up failure).
pub fn ring_rows(
    samples: usize,
    base: &KeyRing,
    measured: &KeyRing,
    scope: &KeyScope,
    mut row: impl FnMut(&str, f64, f64, f64),
) -> (u64, u64) {
    let ctx = FieldContext::new("patients", "address", RowId::Int(42), 1);
    let policy = FieldPolicy::default();
    let plaintext = [0x5a_u8; 100];
    let base_env = base.seal(scope, &ctx, &plaintext, &policy).expect("seal");
    let measured_env = measured
        .seal(scope, &ctx, &plaintext, &policy)
        .expect("seal");

    let unwraps_before = measured.kms_calls().unwraps;
    let (b, m, r) = paired(
        samples,
        || {
            base.cache().clear();
            black_box(base.open(&ctx, &base_env).expect("open"));
        },
        || {
            measured.cache().clear();
            black_box(measured.open(&ctx, &measured_env).expect("open"));
        },
    );
    let cold = measured.kms_calls().unwraps - unwraps_before;
    row("cold KEK fetch + open 100 B", b, m, r);

    // Warm the caches again, then count that the steady state never calls the backend.
    black_box(base.open(&ctx, &base_env).expect("open"));
    black_box(measured.open(&ctx, &measured_env).expect("open"));
    let unwraps_before = measured.kms_calls().unwraps;
    let seal = |ring: &KeyRing| {
        black_box(
            ring.seal(scope, &ctx, black_box(&plaintext), &policy)
                .expect("seal"),
        );
    };
    let (b, m, r) = paired_batched(samples, || seal(base), || seal(measured));
    row("seal 100 B (warm cache)", b, m, r);
    let (b, m, r) = paired_batched(
        samples,
        || {
            black_box(base.open(&ctx, black_box(&base_env)).expect("open"));
        },
        || {
            black_box(measured.open(&ctx, black_box(&measured_env)).expect("open"));
        },
    );
    row("open 100 B (warm cache)", b, m, r);
    (cold, measured.kms_calls().unwraps - unwraps_before)
}

/// Nanoseconds for a table cell: `1.23 ms`, `4.56 us` or `789 ns`.
#[must_use]
pub fn human_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} us", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

#[cfg(test)]
mod tests {
    use super::{human_ns, median, paired_n};

    #[test]
    fn median_and_cells() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert!(median(&mut []).is_nan());
        assert_eq!(human_ns(1_500_000.0), "1.50 ms");
        assert_eq!(human_ns(2_500.0), "2.50 us");
        assert_eq!(human_ns(42.0), "42 ns");
    }

    #[test]
    fn each_side_runs_its_batches_alternating_first() {
        use std::cell::RefCell;
        let order = RefCell::new(Vec::new());
        let (b, m, _) = paired_n(
            4,
            (3, 2),
            || order.borrow_mut().push('b'),
            || order.borrow_mut().push('m'),
        );
        let order: String = order.into_inner().into_iter().collect();
        // One untimed call of each, then samples alternating which side goes first.
        assert_eq!(order, "bmbbbmmmmbbbbbbmmmmbbb");
        assert!(b >= 0.0 && m >= 0.0, "{b} {m}");
    }
}
