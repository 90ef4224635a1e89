//! Seal / open / re-wrap cost against a raw single-AEAD baseline, printed as one table.
//!
//! For each AEAD and plaintext size (32 B, 100 B, 4 KiB, 64 KiB) this measures, in the same
//! process and the same sample loop:
//!
//! * `raw enc` / `raw dec`: one [`aead::encrypt_in_place`] / [`aead::decrypt_in_place`] of the
//!   plaintext with a fixed key and nonce and the canonical field context as associated data
//!   (no DEK, no wrap, no padding);
//! * `seal` / `open`: [`KeyRing::seal`] / [`KeyRing::open`] with a warm KEK cache (one seal is
//!   done before measuring) and the default [`FieldPolicy`] padding; `open/seal` is the ratio of
//!   their medians, and the 64 KiB rows' throughput (GB/s of plaintext) is printed under the
//!   table next to the raw calls';
//! * `rewrap`: [`KeyRing::rewrap`] of a 100 B envelope from KEK v1 (in grace) to the active v2;
//! * `parallel`: opens of 100 B AES-256-GCM envelopes under one warm KEK, on one thread and on
//!   one thread per core at once (one ring), paired per sample; the scaling is how many times
//!   the one-thread rate all threads reach together (the core count if nothing is shared).
//!
//! A second table compares the two AEAD engines of [`aead`] on the same calls (one encryption
//! with a fresh key schedule, as leakless does per value): RustCrypto ([`aead::portable`])
//! against AWS-LC ([`aead::awslc`], the default engine), at 32 B, 100 B, 4, 8 and 64 KiB, with
//! each engine's throughput at 64 KiB. The first table's raw and sealed columns both use the
//! build's default engine ([`aead::ENGINE`]).
//!
//! The machine these run on is noisy (other builds share its two cores), so every sample times a
//! batch of the baseline op and a batch of the measured op back to back, alternating which goes
//! first; the table shows medians over all samples, and the ratios are medians of the per-sample
//! ratios (noise that hits a sample hits both of its halves).
//!
//! `cargo bench -p leakless --bench envelope` runs the full measurement.
//! `LEAKLESS_BENCH_SAMPLES=N` overrides the sample count (default 1001);
//! `LEAKLESS_BENCH_ONLY=aes256gcm:100` restricts the run to one AEAD and size (for profiling;
//! either half may be empty, `rewrap` selects only the re-wrap). Without `--bench`
//! (e.g. `cargo test --all-targets`) it runs a short smoke pass that only checks the ops work.

#![allow(
    clippy::print_stdout,
    clippy::expect_used,
    reason = "a bench binary prints its table, and a set-up failure stops it with its message"
)]

mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use leakless_testkit::bench::{median, paired_calibrated};

use leakless::aead::{self, TAG_LEN};
use leakless::kms::LocalKms;
use leakless::secret::RootKey;
use leakless::store::MemoryKeyStore;
use leakless::{
    Algorithm, AuditInfo, FieldContext, FieldPolicy, KeyRing, KeyScope, PaddingPolicy, RowId,
};
use rand::RngCore;

/// The plaintext sizes measured: a short field, an address, a page, a long transcript.
const SIZES: [usize; 4] = [32, 100, 4096, 65536];
/// The size the per-value targets apply to.
const TARGET_SIZE: usize = 100;
/// Target: seal at most this many times the raw encryption at [`TARGET_SIZE`].
const SEAL_TARGET: f64 = 2.0;
/// Target: open at most this many times the raw decryption at [`TARGET_SIZE`].
const OPEN_TARGET: f64 = 2.0;
/// Target: from 4 KiB up, open at most this many times seal (medians).
const OPEN_SEAL_TARGET: f64 = 1.2;
/// Each timed batch runs long enough to dwarf the timer's own cost.
const BATCH_TIME: Duration = Duration::from_micros(40);

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not.
    let (full, samples) = support::sample_count(1001);

    let ctx = FieldContext::new("patients", "address", RowId::Int(42), 1);
    let policy_padding = PaddingPolicy::default();
    println!("leakless envelope benchmark: {samples} samples per cell, medians");
    if !full {
        println!("smoke run (no --bench): checks that every op works; the timings mean nothing");
    }
    println!(
        "padding: FieldPolicy default = {policy_padding:?} (100 B -> 128 B, 4 KiB -> 8 KiB, 64 KiB -> 68 KiB)"
    );
    println!(
        "baseline: one raw AEAD call, plaintext size, fixed key+nonce, AAD = canonical context ({} B)",
        ctx.encode().expect("context encodes").len()
    );
    println!();

    let only = std::env::var("LEAKLESS_BENCH_ONLY").unwrap_or_default();
    let (only_alg, only_size) = only.split_once(':').unwrap_or((&only, ""));
    let mut rows = Vec::new();
    for alg in [Algorithm::XChaCha20Poly1305, Algorithm::Aes256Gcm] {
        for size in SIZES {
            let alg_ok = only_alg.is_empty() || only_alg == alg.name();
            let size_ok = only_size.is_empty() || only_size == size.to_string();
            if alg_ok && size_ok {
                rows.push(measure_cell(alg, size, &ctx, samples));
            }
        }
    }
    let rewrap = (only.is_empty() || only == "rewrap").then(|| measure_rewrap(&ctx, samples));
    let parallel =
        (only.is_empty() || only == "parallel").then(|| measure_parallel(&ctx, samples, full));
    #[cfg(feature = "aws-lc")]
    let engines = (only.is_empty() || only == "engines").then(|| measure_engines(&ctx, samples));

    println!("engine of both raw and sealed: {}", aead::ENGINE);
    println!(
        "{:<18} {:>7} {:>11} {:>11} {:>7} {:>11} {:>11} {:>7} {:>10}  target",
        "aead",
        "size",
        "raw enc ns",
        "seal ns",
        "seal/x",
        "raw dec ns",
        "open ns",
        "open/x",
        "open/seal"
    );
    for r in &rows {
        let open_seal = r.open / r.seal;
        let verdict = if !full {
            String::new()
        } else if r.size == TARGET_SIZE {
            format!(
                "seal <= {SEAL_TARGET}x {}, open <= {OPEN_TARGET}x {}",
                pass(r.seal_ratio <= SEAL_TARGET),
                pass(r.open_ratio <= OPEN_TARGET)
            )
        } else if r.size >= 4096 {
            format!(
                "open <= {OPEN_SEAL_TARGET}x seal {}",
                pass(open_seal <= OPEN_SEAL_TARGET)
            )
        } else {
            String::new()
        };
        println!(
            "{:<18} {:>7} {:>11.0} {:>11.0} {:>6.2}x {:>11.0} {:>11.0} {:>6.2}x {:>9.2}x  {}",
            r.alg.name(),
            human(r.size),
            r.raw_enc,
            r.seal,
            r.seal_ratio,
            r.raw_dec,
            r.open,
            r.open_ratio,
            open_seal,
            verdict
        );
    }
    println!();
    // Throughput of the largest size: plaintext bytes per ns = GB/s.
    for r in rows.iter().filter(|r| r.size == 65536) {
        let gbs = |ns: f64| r.size as f64 / ns;
        println!(
            "{:<18} 64 KiB throughput: seal {:.2} GB/s, open {:.2} GB/s; raw {} enc {:.2} GB/s, \
             dec {:.2} GB/s",
            r.alg.name(),
            gbs(r.seal),
            gbs(r.open),
            aead::ENGINE,
            gbs(r.raw_enc),
            gbs(r.raw_dec)
        );
    }
    println!();
    if let Some(rewrap) = &rewrap {
        println!(
            "rewrap (100 B envelope, KEK v1 -> v2, warm cache): {:.0} ns median; raw \
             XChaCha20-Poly1305 encryption of a 32 B DEK: {:.0} ns median ({:.2}x)",
            rewrap.rewrap, rewrap.raw_wrap, rewrap.ratio
        );
    }
    if let Some(p) = &parallel {
        println!(
            "parallel opens (100 B, aes256gcm, one warm KEK): 1 thread {:.0} ns per open; \
             {} threads {:.0} ns per open each; together {:.2}x the 1-thread rate \
             ({} would be no contention)",
            p.one, p.threads, p.each, p.scaling, p.threads
        );
    }
    println!(
        "KMS unwraps during measurement (warm cache => 0 expected): {}",
        rows.iter().map(|r| r.kms_unwraps).sum::<u64>()
            + rewrap.as_ref().map_or(0, |r| r.kms_unwraps)
            + parallel.as_ref().map_or(0, |p| p.kms_unwraps)
    );
    #[cfg(feature = "aws-lc")]
    if let Some(engines) = &engines {
        println!();
        print_engines(engines);
    }
}

/// One engine comparison: (algorithm, size, RustCrypto ns, AWS-LC ns, median ratio).
#[cfg(feature = "aws-lc")]
type EngineRow = (Algorithm, usize, f64, f64, f64);

/// Encrypts one plaintext per size with each engine, paired in the same samples.
#[cfg(feature = "aws-lc")]
fn measure_engines(ctx: &FieldContext<'_>, samples: usize) -> Vec<EngineRow> {
    let aad = ctx.encode().expect("context encodes");
    let key = random_bytes(32);
    let mut rows = Vec::new();
    for alg in [Algorithm::XChaCha20Poly1305, Algorithm::Aes256Gcm] {
        let nonce = random_bytes(alg.nonce_len());
        for size in [32, 100, 4096, 8192, 65536] {
            let mut a = random_bytes(size);
            let mut b = a.clone();
            let (p, w, r) = paired_calibrated(
                samples,
                BATCH_TIME,
                || {
                    black_box(
                        aead::portable::encrypt_in_place(alg, &key, &nonce, &aad, &mut a)
                            .expect("encrypts"),
                    );
                },
                || {
                    black_box(
                        aead::awslc::encrypt_in_place(alg, &key, &nonce, &aad, &mut b)
                            .expect("encrypts"),
                    );
                },
            );
            rows.push((alg, size, p, w, r));
        }
    }
    rows
}

#[cfg(feature = "aws-lc")]
fn print_engines(rows: &[EngineRow]) {
    println!("AEAD engines, one encryption with a fresh key schedule (ns, medians):");
    println!(
        "{:<18} {:>7} {:>12} {:>12} {:>9}",
        "aead", "size", "rustcrypto", "aws-lc", "aws-lc/rc"
    );
    for &(alg, size, p, w, r) in rows {
        let gbs = |ns: f64| size as f64 / ns;
        let rate = if size == 65536 {
            format!("  {:.2} GB/s vs {:.2} GB/s", gbs(p), gbs(w))
        } else {
            String::new()
        };
        println!(
            "{:<18} {:>7} {:>12.0} {:>12.0} {:>8.2}x{}",
            alg.name(),
            human(size),
            p,
            w,
            r,
            rate
        );
    }
    println!();
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

fn human(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

struct Row {
    alg: Algorithm,
    size: usize,
    raw_enc: f64,
    seal: f64,
    seal_ratio: f64,
    raw_dec: f64,
    open: f64,
    open_ratio: f64,
    kms_unwraps: u64,
}

struct RewrapRow {
    rewrap: f64,
    raw_wrap: f64,
    ratio: f64,
    kms_unwraps: u64,
}

fn ring_with_scope(scope: &KeyScope) -> KeyRing {
    let ring = KeyRing::builder(
        Arc::new(LocalKms::from_root_key(RootKey::generate())),
        Arc::new(MemoryKeyStore::new()),
    )
    .build();
    ring.create_scope(scope, &AuditInfo::new("bench", "envelope benchmark"))
        .expect("create scope");
    ring
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

fn measure_cell(alg: Algorithm, size: usize, ctx: &FieldContext<'_>, samples: usize) -> Row {
    let scope = KeyScope::new("patients").expect("scope name");
    let ring = ring_with_scope(&scope);
    let policy = FieldPolicy {
        algorithm: alg,
        padding: PaddingPolicy::default(),
    };
    let plaintext = random_bytes(size);
    // Warm the KEK cache: the first seal unwraps the KEK through the KMS.
    let sealed = ring
        .seal(&scope, ctx, &plaintext, &policy)
        .expect("warm-up seal");
    assert_eq!(
        ring.open(ctx, &sealed)
            .expect("warm-up open")
            .expose_secret(),
        &plaintext[..],
        "warm-up round trip"
    );
    let unwraps_before = ring.kms_calls().unwraps;

    // Baseline: one AEAD call with a fixed key and nonce over the same plaintext.
    let key = random_bytes(32);
    let nonce = random_bytes(alg.nonce_len());
    let aad = ctx.encode().expect("context encodes");
    let mut buf = plaintext.clone();
    let tag = aead::encrypt_in_place(alg, &key, &nonce, &aad, &mut buf).expect("raw encrypt");
    let ciphertext = buf.clone();
    let mut work = vec![0u8; size];
    assert_eq!(tag.len(), TAG_LEN);

    let (raw_enc, seal, seal_ratio) = paired_calibrated(
        samples,
        BATCH_TIME,
        || {
            work.copy_from_slice(&plaintext);
            let t = aead::encrypt_in_place(alg, &key, &nonce, &aad, black_box(&mut work));
            black_box(t.expect("raw encrypt"));
        },
        || {
            let s = ring.seal(&scope, ctx, black_box(&plaintext), &policy);
            black_box(s.expect("seal"));
        },
    );
    let mut work = vec![0u8; size];
    let (raw_dec, open, open_ratio) = paired_calibrated(
        samples,
        BATCH_TIME,
        || {
            work.copy_from_slice(&ciphertext);
            let r = aead::decrypt_in_place(alg, &key, &nonce, &aad, black_box(&mut work), &tag);
            r.expect("raw decrypt");
            black_box(&work);
        },
        || {
            let p = ring.open(ctx, black_box(&sealed));
            black_box(p.expect("open"));
        },
    );
    Row {
        alg,
        size,
        raw_enc,
        seal,
        seal_ratio,
        raw_dec,
        open,
        open_ratio,
        kms_unwraps: ring.kms_calls().unwraps - unwraps_before,
    }
}

fn measure_rewrap(ctx: &FieldContext<'_>, samples: usize) -> RewrapRow {
    let scope = KeyScope::new("patients").expect("scope name");
    let ring = ring_with_scope(&scope);
    let policy = FieldPolicy::default();
    let plaintext = random_bytes(TARGET_SIZE);
    let old = ring
        .seal(&scope, ctx, &plaintext, &policy)
        .expect("seal under v1");
    let who = AuditInfo::new("bench", "rotation for the rewrap benchmark");
    ring.rotate(&scope, Duration::from_secs(24 * 3600), &who)
        .expect("rotate");
    // Warm both versions (rotation invalidated the scope's cache entries) and check the result.
    let moved = ring
        .rewrap(ctx, &old)
        .expect("rewrap")
        .expect("v1 envelope moves to v2");
    assert_eq!(
        ring.open(ctx, &moved)
            .expect("open rewrapped")
            .expose_secret(),
        &plaintext[..]
    );
    let unwraps_before = ring.kms_calls().unwraps;

    let key = random_bytes(32);
    let nonce = random_bytes(Algorithm::XChaCha20Poly1305.nonce_len());
    let dek = random_bytes(32);
    let mut work = vec![0u8; 32];
    let aad = ctx.encode().expect("context encodes");
    // rewrap returns None once an envelope is on the active version, so always re-wrap the
    // original v1 envelope.
    let (raw_wrap, rewrap, ratio) = paired_calibrated(
        samples,
        BATCH_TIME,
        || {
            work.copy_from_slice(&dek);
            let t = aead::encrypt_in_place(
                Algorithm::XChaCha20Poly1305,
                &key,
                &nonce,
                &aad,
                black_box(&mut work),
            );
            black_box(t.expect("raw wrap"));
        },
        || {
            let r = ring.rewrap(ctx, black_box(&old));
            black_box(r.expect("rewrap").expect("moved"));
        },
    );
    RewrapRow {
        rewrap,
        raw_wrap,
        ratio,
        kms_unwraps: ring.kms_calls().unwraps - unwraps_before,
    }
}

/// Opens on one thread against opens on every core at once.
struct ParallelRow {
    threads: usize,
    /// Median ns per open on one thread.
    one: f64,
    /// Median ns per open on each of `threads` threads running together.
    each: f64,
    /// Median of the per-sample `threads * one / each`.
    scaling: f64,
    kms_unwraps: u64,
}

fn measure_parallel(ctx: &FieldContext<'_>, samples: usize, full: bool) -> ParallelRow {
    let scope = KeyScope::new("patients").expect("scope name");
    let ring = ring_with_scope(&scope);
    let policy = FieldPolicy {
        algorithm: Algorithm::Aes256Gcm,
        padding: PaddingPolicy::default(),
    };
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    // Each thread opens its own envelopes (the same field context), so only the ring is shared.
    let sets: Vec<Vec<Vec<u8>>> = (0..threads)
        .map(|_| {
            (0..64)
                .map(|_| {
                    ring.seal(&scope, ctx, &random_bytes(TARGET_SIZE), &policy)
                        .expect("seal")
                })
                .collect()
        })
        .collect();
    let unwraps_before = ring.kms_calls().unwraps;
    let per_batch = if full { 20_000 } else { 64 };
    let open_all = |set: &[Vec<u8>]| {
        for envelope in set.iter().cycle().take(per_batch) {
            black_box(ring.open(ctx, black_box(envelope)).expect("open"));
        }
    };
    let (mut one, mut each, mut scaling) = (Vec::new(), Vec::new(), Vec::new());
    // Each sample takes tens of milliseconds, so fewer of them.
    for i in 0..samples.div_ceil(20).max(3) {
        let time_one = || {
            let t = std::time::Instant::now();
            open_all(sets.first().expect("one thread at least"));
            t.elapsed().as_secs_f64() * 1e9 / per_batch as f64
        };
        let time_all = || {
            let t = std::time::Instant::now();
            std::thread::scope(|s| {
                for set in &sets {
                    s.spawn(|| open_all(set));
                }
            });
            t.elapsed().as_secs_f64() * 1e9 / per_batch as f64
        };
        let (a, b) = if i % 2 == 0 {
            let a = time_one();
            (a, time_all())
        } else {
            let b = time_all();
            (time_one(), b)
        };
        one.push(a);
        each.push(b);
        scaling.push(threads as f64 * a / b);
    }
    ParallelRow {
        threads,
        one: median(&mut one),
        each: median(&mut each),
        scaling: median(&mut scaling),
        kms_unwraps: ring.kms_calls().unwraps - unwraps_before,
    }
}
