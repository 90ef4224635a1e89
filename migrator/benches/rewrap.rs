//! Re-wrap throughput and memory of `leakless-migrate` on PostgreSQL.
//!
//! Seeds a table of `LEAKLESS_BENCH_ROWS` rows (default 1,000,000) by adopting a plaintext
//! column with the migrator itself, then, `LEAKLESS_BENCH_RUNS` times (default 3) each:
//!
//! * **baseline**: PostgreSQL rewrites the same column of the same table in one statement
//!   (`UPDATE t SET email = email || ''::bytea`), the floor for touching every row;
//! * **rewrap**: `keys rotate`, then the release `leakless-migrate rewrap` as a child process,
//!   whose peak RSS (`VmHWM` from `/proc/PID/status`, sampled every 20 ms) and KMS calls (its
//!   `--json` summary) are recorded.
//!
//! Prints a table of medians. Needs `LEAKLESS_PG_URL` (an admin URL; a database is created
//! and dropped). Run: `cargo bench -p leakless-migrator --bench rewrap`.

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

use leakless_migrator::db::{DbUrl, OneInt};

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

/// Runs the migrator; returns (seconds, peak RSS in kB, stdout).
fn migrate(bin: &str, envs: &[(&str, String)], args: &[&str]) -> (f64, u64, String) {
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
    let mut peak = 0;
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
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = start.elapsed().as_secs_f64();
    let status = child.wait().unwrap();
    let stdout = reader.join().unwrap();
    assert!(
        status.success(),
        "leakless-migrate {args:?} failed: {stdout}"
    );
    (secs, peak, stdout)
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
    let bin = env!("CARGO_BIN_EXE_leakless-migrate");
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
    leakless::kms::LocalKms::generate_key_file(&key).unwrap();
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
    let (adopt_s, adopt_kb, _) = migrate(
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
    for run in 0..runs {
        let t = Instant::now();
        db.batch("UPDATE bench SET email = email || ''::bytea")
            .unwrap();
        base.push(t.elapsed().as_secs_f64());
        db.batch("VACUUM bench").unwrap();
        migrate(bin, &envs, &["keys", "rotate", "bench", "--grace", "1d"]);
        let (s, kb, out) = migrate(
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

    let (b, r) = (median(base), median(rew));
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
        "\nrewrap / baseline throughput: {:.2}x (target >= 0.5x)",
        b / r
    );
}
