//! The network KMS backends (Vault Transit on OpenBao, AWS KMS on moto_server) against the
//! local backend, measured in the same run, as one median table:
//!
//! * `cold KEK fetch`: opening one 100 B field right after the KEK cache was cleared, i.e. one
//!   `unwrap_kek` round trip through the backend, then the field;
//! * `seal` / `open` (warm cache): [`KeyRing::seal`] / [`KeyRing::open`] of a 100 B field, which
//!   never reach the backend and so should match the local backend within noise.
//!
//! Every sample times the three backends back to back, rotating which goes first, so noise from
//! the shared machine hits all of them. The ratio columns are medians of per-sample ratios to
//! the local backend.
//!
//! Needs `LEAKLESS_VAULT_ADDR` + `LEAKLESS_VAULT_TOKEN_FILE` (from `scripts/services/openbao
//! start DIR --owner-pid $$`) and `LEAKLESS_AWS_KMS_ENDPOINT` + `LEAKLESS_AWS_REGION` (from
//! `scripts/services/moto start DIR --owner-pid $$`).
//! `cargo bench -p leakless --features vault,aws-kms --bench kms_network` runs the full
//! measurement; `LEAKLESS_BENCH_SAMPLES=N` sets the sample count of the warm rows (default 501;
//! the cold row takes a fifth of it). Without `--bench` it runs a short smoke pass.

#![allow(
    clippy::print_stdout,
    clippy::expect_used,
    reason = "a bench binary prints its table, and a set-up failure stops it with its message"
)]

mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use leakless_testkit::bench::{human_ns, median};

use leakless::kms::{
    AwsCredentials, AwsKms, AwsKmsConfig, Kms, LocalKms, VaultConfig, VaultToken, VaultTransitKms,
};
use leakless::secret::RootKey;
use leakless::store::MemoryKeyStore;
use leakless::{AuditInfo, FieldContext, FieldPolicy, KeyRing, KeyScope, RowId};
use support::{Samples, service_env};
use zeroize::Zeroizing;

const FIELD: [u8; 100] = [b'a'; 100];

struct Subject {
    name: &'static str,
    ring: KeyRing,
    scope: KeyScope,
    envelope: Vec<u8>,
}

fn ctx() -> FieldContext<'static> {
    FieldContext::new("patients", "address", RowId::Int(1), 1)
}

impl Subject {
    fn new(name: &'static str, kms: Arc<dyn Kms>) -> Self {
        let ring = KeyRing::builder(kms, Arc::new(MemoryKeyStore::new())).build();
        let scope = KeyScope::new("bench").expect("scope");
        ring.create_scope(&scope, &AuditInfo::new("bench", "kms_network"))
            .expect("create scope");
        let envelope = ring
            .seal(&scope, &ctx(), &FIELD, &FieldPolicy::default())
            .expect("seal");
        Self {
            name,
            ring,
            scope,
            envelope,
        }
    }

    /// Nanoseconds of one cold open (cache cleared first; the clear is not timed).
    fn cold_open(&self) -> f64 {
        self.ring.cache().clear();
        let start = Instant::now();
        black_box(self.ring.open(&ctx(), &self.envelope).expect("open"));
        start.elapsed().as_secs_f64() * 1e9
    }

    /// Nanoseconds per op of `batch` warm seals.
    fn seal(&self, batch: u32) -> f64 {
        let start = Instant::now();
        for _ in 0..batch {
            black_box(
                self.ring
                    .seal(&self.scope, &ctx(), &FIELD, &FieldPolicy::default())
                    .expect("seal"),
            );
        }
        start.elapsed().as_secs_f64() * 1e9 / f64::from(batch)
    }

    /// Nanoseconds per op of `batch` warm opens.
    fn open(&self, batch: u32) -> f64 {
        let start = Instant::now();
        for _ in 0..batch {
            black_box(self.ring.open(&ctx(), &self.envelope).expect("open"));
        }
        start.elapsed().as_secs_f64() * 1e9 / f64::from(batch)
    }
}

/// Runs `op` on every subject `samples` times, rotating the order; returns the per-subject
/// medians and the medians of per-sample ratios to subject 0.
fn measure(subjects: &[Subject], samples: usize, op: impl Fn(&Subject) -> f64) -> Vec<(f64, f64)> {
    let n = subjects.len();
    let mut times = vec![Vec::with_capacity(samples); n];
    let mut ratios = vec![Vec::with_capacity(samples); n];
    for s in 0..samples {
        let mut this = vec![0.0; n];
        for k in 0..n {
            let i = (s + k) % n;
            if let (Some(slot), Some(subject)) = (this.get_mut(i), subjects.get(i)) {
                *slot = op(subject);
            }
        }
        let base = this.first().copied().unwrap_or(f64::NAN);
        for (i, t) in this.iter().enumerate() {
            if let (Some(tv), Some(rv)) = (times.get_mut(i), ratios.get_mut(i)) {
                tv.push(*t);
                rv.push(*t / base);
            }
        }
    }
    times
        .iter_mut()
        .zip(ratios.iter_mut())
        .map(|(t, r)| (median(t), median(r)))
        .collect()
}

fn main() {
    let run = Samples::from_env(5);
    let (samples, cold_samples) = (run.fast, run.slow);
    let batch = if run.full { 200 } else { 5 };

    let _ = service_env("LEAKLESS_VAULT_ADDR", "openbao");
    let vault = VaultTransitKms::create_key(
        VaultConfig::from_env(format!("leakless-bench-{}", std::process::id()))
            .expect("Vault config"),
        VaultToken::from_file(service_env("LEAKLESS_VAULT_TOKEN_FILE", "openbao")).expect("token"),
    )
    .expect("Vault Transit key");
    let aws = AwsKms::create_key(
        AwsKmsConfig {
            region: Some(service_env("LEAKLESS_AWS_REGION", "moto")),
            endpoint: Some(service_env("LEAKLESS_AWS_KMS_ENDPOINT", "moto")),
            credentials: AwsCredentials::Static {
                access_key_id: "AKIALEAKLESSBENCH".into(),
                secret_access_key: Zeroizing::new(hex::encode(RootKey::generate().expose_secret())),
                session_token: None,
            },
            ..AwsKmsConfig::new("")
        },
        "leakless bench",
    )
    .expect("AWS KMS key");
    let subjects = [
        Subject::new(
            "local",
            Arc::new(LocalKms::from_root_key(RootKey::generate())),
        ),
        Subject::new("vault (OpenBao)", Arc::new(vault)),
        Subject::new("aws-kms (moto)", Arc::new(aws)),
    ];

    run.print_title("leakless network KMS benchmark, medians, 100 B field");
    println!("samples: {cold_samples} cold, {samples} warm (each warm sample: {batch} ops)\n");
    let cold = measure(&subjects, cold_samples, Subject::cold_open);
    // Warm the caches again after the cold rows.
    for s in &subjects {
        s.open(1);
    }
    let seal = measure(&subjects, samples, |s| s.seal(batch));
    let open = measure(&subjects, samples, |s| s.open(batch));

    print!("| op |");
    for s in &subjects {
        print!(" {} |", s.name);
    }
    for s in subjects.iter().skip(1) {
        print!(" {} / local |", s.name);
    }
    println!();
    println!("|---|{}", "---|".repeat(subjects.len() * 2 - 1));
    for (label, rows) in [
        ("cold KEK fetch + open", &cold),
        ("seal (warm cache)", &seal),
        ("open (warm cache)", &open),
    ] {
        print!("| {label} |");
        for (t, _) in rows {
            print!(" {} |", human_ns(*t));
        }
        for (_, r) in rows.iter().skip(1) {
            print!(" {r:.2}x |");
        }
        println!();
    }
}
