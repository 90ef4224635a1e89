//! Re-wrap throughput and memory of `leakless-migrate` on PostgreSQL.
//!
//! Seeds a table of `LEAKLESS_BENCH_ROWS` rows (default 1,000,000) by adopting a plaintext
//! column with the migrator itself, then, `LEAKLESS_BENCH_RUNS` times (default 3) each:
//!
//! * **baseline**: PostgreSQL rewrites the same column of the same table in one statement
//!   (`UPDATE t SET email = email || ''::bytea`), the floor for touching every row;
//! * **rewrap**: `keys rotate`, then the release `leakless-migrate rewrap` as a child process,
//!   whose peak RSS (`VmHWM` from `/proc/PID/status`, sampled every 20 ms), CPU time
//!   (`/proc/PID/stat`) and KMS calls (its `--json` summary) are recorded.
//!
//! The seeding `adopt` (4 workers, batches of `LEAKLESS_BENCH_BATCH`) is timed too: the adopt
//! throughput (seal a plaintext column into the sealed one, then the verification pass that
//! opens every row again). After the first rotation, in this process, the CPU cost of the data
//! check `rewrap` makes on each moved row (`KeyRing::rewrap_verified` against the DEK-only
//! `KeyRing::rewrap_in_scope`) is measured on 20,000 of the rows.
//!
//! Prints a table of medians with the per-run ratios. Needs `LEAKLESS_PG_URL` (an admin URL; a
//! database is created and dropped). `LEAKLESS_BENCH_MIGRATOR=PATH` measures another build of
//! the migrator (an older commit's, for a before/after under the same load). Run:
//! `cargo bench -p leakless-migrator --bench rewrap`.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_precision_loss,
    clippy::indexing_slicing,
    reason = "a benchmark binary"
)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use leakless::kms::LocalKms;
use leakless::store::sql::SqlKeyStore;
use leakless::{FieldContext, KeyRing, KeyScope, RowId};
use leakless_migrator::db::{DbUrl, IdBytes, OneInt};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn with_db(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("a URL with a database path");
    format!("{base}/{db}")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time of the calling thread so far, in ns (`/proc/thread-self/schedstat`): what a
/// measurement on a shared machine should count, not wall time.
fn thread_cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

/// What checking each row's data costs `rewrap`: in this process, on the first `n` rows of the
/// table (just rotated, so every row moves), measures the CPU time of `KeyRing::rewrap_in_scope`
/// (the DEK only) and `KeyRing::rewrap_verified` (what the migrator calls: the data is opened
/// and discarded first) in alternating batches; returns the medians in CPU ns per row (DEK
/// only, verified).
fn data_check_cost(
    url: &str,
    key: &std::path::Path,
    db: &mut leakless_migrator::db::Db,
    n: usize,
) -> (f64, f64) {
    let ring = KeyRing::builder(
        Arc::new(LocalKms::from_key_file(key).unwrap()),
        Arc::new(SqlKeyStore::connect(url).unwrap()),
    )
    .build();
    let scope = KeyScope::new("bench").unwrap();
    let rows: Vec<IdBytes> = db
        .load(
            &format!("SELECT id::text AS id, email AS val FROM bench ORDER BY id LIMIT {n}"),
            &[],
        )
        .unwrap();
    let rows: Vec<(i64, Vec<u8>)> = rows
        .into_iter()
        .map(|r| (r.id.parse().unwrap(), r.val.unwrap()))
        .collect();
    let pass = |verify: bool| {
        let t = thread_cpu_ns();
        for (id, env) in &rows {
            let ctx = FieldContext::new("bench", "email", RowId::Int(*id), 1);
            let moved = if verify {
                ring.rewrap_verified(Some(&scope), &ctx, env)
            } else {
                ring.rewrap_in_scope(&scope, &ctx, env)
            };
            assert!(std::hint::black_box(moved.unwrap()).is_some());
        }
        (thread_cpu_ns() - t) as f64 / rows.len() as f64
    };
    // Warm the KEK cache (one KMS unwrap per version) outside the timed batches.
    pass(true);
    let (mut plain, mut verified) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        plain.push(pass(false));
        verified.push(pass(true));
    }
    (median(plain), median(verified))
}

/// CPU seconds (user + system) the process `pid` has used so far (`/proc/PID/stat`, in clock
/// ticks of 10 ms).
fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses): utime and stime are the 12th and
    // 13th of them.
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Runs the migrator; returns (seconds, peak RSS in kB, CPU seconds, stdout). The CPU time is
/// the last 20 ms sample before the process exited.
fn migrate(bin: &str, envs: &[(&str, String)], args: &[&str]) -> (f64, u64, f64, String) {
    let start = Instant::now();
    let mut child = Command::new(bin)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (mut peak, mut cpu) = (0, 0.0);
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).unwrap();
        s
    });
    while child.try_wait().unwrap().is_none() {
        if let Some(kb) = vm_hwm_kb(pid) {
            peak = peak.max(kb);
        }
        if let Some(c) = cpu_secs(pid) {
            cpu = c;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = start.elapsed().as_secs_f64();
    let status = child.wait().unwrap();
    let stdout = reader.join().unwrap();
    assert!(
        status.success(),
        "leakless-migrate {args:?} failed: {stdout}"
    );
    (secs, peak, cpu, stdout)
}

fn main() {
    let admin = std::env::var("LEAKLESS_PG_URL").unwrap_or_else(|_| {
        panic!(
            "LEAKLESS_PG_URL is not set: this benchmark needs PostgreSQL. Start one with \
             `scripts/pg-cluster start DIR --owner-pid $$` and export the URL it prints"
        )
    });
    let rows = env_num("LEAKLESS_BENCH_ROWS", 1_000_000);
    let runs = env_num("LEAKLESS_BENCH_RUNS", 3).max(1);
    let workers = env_num("LEAKLESS_BENCH_WORKERS", 4).to_string();
    let batch = env_num("LEAKLESS_BENCH_BATCH", 5000).to_string();
    // Another build of the migrator can be measured against the same baseline (e.g. an older
    // commit's binary, for a before/after on the same machine and load).
    let bin_override = std::env::var("LEAKLESS_BENCH_MIGRATOR").ok();
    let bin = bin_override
        .as_deref()
        .unwrap_or(env!("CARGO_BIN_EXE_leakless-migrate"));
    let name = format!("leakless_bench_{:08x}", rand::random::<u32>());
    let mut admin_db = DbUrl::parse(&admin).unwrap().connect().unwrap();
    admin_db.batch(&format!("CREATE DATABASE {name}")).unwrap();
    let url = with_db(&admin, &name);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("root.key");
    let manifest = dir.path().join("manifest.json");
    std::fs::write(
        &manifest,
        r#"{"format": 1, "tables": [{"table": "bench", "row_id_column": "id",
            "row_id_kind": "int", "schema_version": 1,
            "scope": {"kind": "static", "scope": "bench"},
            "columns": [{"column": "email", "algorithm": "xchacha20poly1305",
                "encoding": "string", "padding": {"kind": "power_of_two", "min": 32, "cap": 4096}, "nullable": true, "blind_index": null}]}]}"#,
    )
    .unwrap();
    LocalKms::generate_key_file(&key).unwrap();
    let envs = [
        ("LEAKLESS_DATABASE_URL", url.clone()),
        ("LEAKLESS_ROOT_KEY_FILE", key.display().to_string()),
        ("LEAKLESS_MANIFEST", manifest.display().to_string()),
        ("LEAKLESS_ACTOR", "bench".to_owned()),
    ];
    let mut db = DbUrl::parse(&url).unwrap().connect().unwrap();
    db.batch(&format!(
        "CREATE TABLE bench (id BIGINT PRIMARY KEY, email bytea, email_plain text); \
         INSERT INTO bench SELECT g, NULL, 'patient-' || g || '@example.test, 221B Baker Street' \
         FROM generate_series(1, {rows}) g"
    ))
    .unwrap();
    db.batch("VACUUM ANALYZE bench").unwrap();
    migrate(bin, &envs, &["keys", "create-scope", "bench"]);
    eprintln!("sealing {rows} rows with `adopt` ...");
    let (adopt_s, adopt_kb, _, _) = migrate(
        bin,
        &envs,
        &[
            "adopt",
            "--table",
            "bench",
            "--column",
            "email",
            "--from",
            "email_plain",
            "--batch-size",
            &batch,
            "--workers",
            &workers,
        ],
    );
    db.batch("ALTER TABLE bench DROP COLUMN email_plain")
        .unwrap();
    db.batch("VACUUM FULL ANALYZE bench").unwrap();

    let (mut base, mut rew, mut rss, mut unwraps) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut check = (0.0, 0.0);
    let mut cpu = Vec::new();
    for run in 0..runs {
        let t = Instant::now();
        db.batch("UPDATE bench SET email = email || ''::bytea")
            .unwrap();
        base.push(t.elapsed().as_secs_f64());
        db.batch("VACUUM bench").unwrap();
        migrate(bin, &envs, &["keys", "rotate", "bench", "--grace", "1d"]);
        if run == 0 {
            check = data_check_cost(&url, &key, &mut db, 20_000);
        }
        let (s, kb, cpu_s, out) = migrate(
            bin,
            &envs,
            &[
                "rewrap",
                "--json",
                "--batch-size",
                &batch,
                "--workers",
                &workers,
            ],
        );
        let j: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            j["jobs"][0]["rows_changed"].as_u64(),
            Some(rows),
            "not every row moved"
        );
        unwraps.push(j["kms_calls"]["unwraps"].as_u64().unwrap());
        rew.push(s);
        rss.push(kb as f64);
        cpu.push(cpu_s);
        db.batch("VACUUM bench").unwrap();
        eprintln!(
            "run {run}: baseline {:.1} s, rewrap {s:.1} s, peak RSS {} MB",
            base[base.len() - 1],
            kb / 1024
        );
    }
    let n: Vec<OneInt> = db.load("SELECT COUNT(*) AS n FROM bench", &[]).unwrap();
    assert_eq!(u64::try_from(n[0].n).unwrap(), rows);
    drop(db);
    admin_db
        .batch(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .unwrap();

    let ratios: Vec<String> = base
        .iter()
        .zip(&rew)
        .map(|(b, r)| format!("{:.2}", b / r))
        .collect();
    let (b, r) = (median(base.clone()), median(rew.clone()));
    let rows_f = rows as f64;
    println!(
        "\nleakless-migrate rewrap on PostgreSQL, {rows} rows, {runs} runs, medians, workers {workers}, batch {batch}"
    );
    println!("| what | seconds | rows/s | peak RSS | KMS unwraps |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| baseline: one UPDATE rewriting the column in-server | {b:.2} | {:.0} | - | - |",
        rows_f / b
    );
    println!(
        "| rewrap (rotate, then leakless-migrate rewrap) | {r:.2} | {:.0} | {:.1} MB | {} |",
        rows_f / r,
        median(rss) / 1024.0,
        unwraps.iter().max().unwrap()
    );
    println!(
        "| adopt (seal the plaintext column, + verify pass), once | {adopt_s:.2} | {:.0} | {:.1} MB | - |",
        rows_f / adopt_s,
        adopt_kb as f64 / 1024.0
    );
    println!(
        "\nrewrap / baseline throughput: {:.2}x (target >= 0.7x); per run: {}",
        b / r,
        ratios.join(", ")
    );
    let (dek_only, verified) = check;
    println!(
        "data check (open and discard each moved row's data), CPU time of one thread, in \
         process: rewrap {dek_only:.0} ns/row DEK only, {verified:.0} ns/row with the check \
         (+{:.0} ns/row, +{:.0}%; the whole rewrap above took {:.0} ns of wall time per row, \
         {:.0} ns of CPU per row in the migrator)",
        verified - dek_only,
        (verified - dek_only) / dek_only * 100.0,
        r * 1e9 / rows_f,
        median(cpu) / rows_f * 1e9
    );
}
