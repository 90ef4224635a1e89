//! Scan throughput of the leak-test scanner against ripgrep, in the same run on the same file.
//!
//! Generates a plain `pg_dump`-like file (a `COPY ... FROM stdin` block of rows whose sealed
//! columns are `\x` hex of random bytes) of `LEAKLESS_BENCH_MB` MiB (default 1024) holding
//! 1,000 canaries (400 addresses, 300 e-mail addresses, 200 GPS points, 100 transcripts), each
//! planted once in a rotating encoding (raw, hex, base64, UTF-16LE, JSON, lowercase, GPS pair).
//! Then, three times each, alternating:
//! * the leakless scanner with every encoding on (streaming, 1 MiB chunks), which must find all
//!   1,000 planted canaries;
//! * `rg -F -f canaries.txt --count-matches` over the raw canary values (one per line; GPS points as
//!   `lat,lon`), the baseline (Debian package `ripgrep`).
//!
//! Prints the medians as MB/s and each tool's peak RSS (VmHWM: our process's own, ripgrep's
//! polled from /proc while it runs).
//!
//! ```text
//! cargo bench -p leakless-leaktest --bench scan
//! ```
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    reason = "a benchmark binary"
)]

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use leakless_leaktest::canary::{Canary, CanarySet, generate};
use leakless_leaktest::encode::{base64, json_escape};
use leakless_leaktest::scan::Scanner;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn canaries() -> CanarySet {
    let mut set = CanarySet::new();
    let mut push = |n: usize, column: &str| {
        for i in 0..n {
            let c = generate(&format!("bench.{column}#{i}"), column, "string");
            set.push(c).unwrap();
        }
    };
    push(400, "address");
    push(300, "email");
    push(200, "gps");
    push(100, "transcript");
    set
}

fn planted(c: &Canary, i: usize) -> Vec<u8> {
    if let Some((lat, lon)) = c.gps_value() {
        return format!("{lat},{lon}").into_bytes();
    }
    let t = c.text_value().unwrap();
    match i % 6 {
        0 | 1 => t.as_bytes().to_vec(),
        2 => format!("\\\\x{}", hex::encode(t)).into_bytes(),
        3 => base64(t.as_bytes(), false).into_bytes(),
        4 => json_escape(t, true),
        _ => t.to_lowercase().into_bytes(),
    }
}

fn generate_dump(path: &Path, size: u64, set: &CanarySet) {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path).unwrap());
    w.write_all(b"--\n-- PostgreSQL database dump\n--\n\nCOPY public.patients (id, name, address, email, email_bidx, gps, transcript, leaky) FROM stdin;\n").unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut written = 0u64;
    let mut row = 0u64;
    let n = set.len() as u64;
    // Rows are about 1.3 KiB; plant canary k in row k * every.
    let rows_total = size / 1300;
    let every = (rows_total / (n + 1)).max(1);
    let mut line = Vec::with_capacity(8192);
    let mut random = vec![0u8; 600];
    while written < size {
        line.clear();
        write!(
            line,
            "{:08x}-0000-4000-8000-{:012x}\tPatient {row}\t",
            row, row
        )
        .unwrap();
        for len in [120usize, 100, 32, 90, 250] {
            for chunk in random[..len].chunks_mut(8) {
                let v = rng.next().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
            line.extend_from_slice(b"\\\\x");
            line.extend_from_slice(hex::encode(&random[..len]).as_bytes());
            line.push(b'\t');
        }
        let k = row / every;
        if row.is_multiple_of(every) && k < n {
            let k = usize::try_from(k).unwrap();
            line.extend_from_slice(&planted(&set.canaries[k], k));
        } else {
            line.extend_from_slice(b"\\N");
        }
        line.push(b'\n');
        w.write_all(&line).unwrap();
        written += line.len() as u64;
        row += 1;
    }
    assert!(row / every >= n, "file too small to hold every canary");
    w.write_all(b"\\.\n").unwrap();
    w.flush().unwrap();
}

fn vm_hwm_kib(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn run_rg(patterns: &Path, file: &Path) -> (Duration, u64, u64) {
    let t = Instant::now();
    let mut child = Command::new("rg")
        .args(["-F", "-a", "--no-mmap", "--count-matches", "-f"])
        .arg(patterns)
        .arg(file)
        .stdout(Stdio::piped())
        .spawn()
        .expect("rg not found: apt-get install ripgrep");
    let pid = child.id().to_string();
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        if let Some(h) = vm_hwm_kib(&pid) {
            peak = peak.max(h);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = t.elapsed();
    let out = child.wait_with_output().unwrap();
    let count = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (elapsed, peak, count)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes bench binaries with --list
    }
    let mb: u64 = std::env::var("LEAKLESS_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dump.sql");
    let set = canaries();
    let t = Instant::now();
    generate_dump(&file, mb << 20, &set);
    let size = std::fs::metadata(&file).unwrap().len();
    eprintln!("generated {} MiB in {:.1?}", size >> 20, t.elapsed());

    // ripgrep's pattern list: the raw canary values, one per line.
    let patterns = dir.path().join("canaries.txt");
    let mut p = String::new();
    for c in &set.canaries {
        match c.gps_value() {
            Some((lat, lon)) => p.push_str(&format!("{lat},{lon}\n")),
            None => {
                p.push_str(c.text_value().unwrap());
                p.push('\n');
            }
        }
    }
    std::fs::write(&patterns, p).unwrap();

    let t = Instant::now();
    let scanner = Scanner::new(set.clone()).unwrap();
    let build = t.elapsed();
    eprintln!(
        "scanner: {} canaries, {} needles, matcher {} MiB, built in {build:.1?}",
        set.len(),
        scanner.needle_count(),
        scanner.memory_usage() >> 20
    );

    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut rg_peak = 0;
    let mut rg_count = 0;
    let mut found = BTreeSet::new();
    for _ in 0..3 {
        found.clear();
        let t = Instant::now();
        scanner
            .scan_reader(File::open(&file).unwrap(), |h| {
                found.insert(h.canary);
            })
            .unwrap();
        ours.push(t.elapsed());
        let (d, peak, count) = run_rg(&patterns, &file);
        theirs.push(d);
        rg_peak = rg_peak.max(peak);
        rg_count = count;
    }
    assert_eq!(
        found.len(),
        set.len(),
        "the scanner missed planted canaries"
    );
    let our_peak = vm_hwm_kib("self").unwrap_or(0);
    let mbps = |d: Duration| size as f64 / 1e6 / d.as_secs_f64();
    let (o, r) = (median(ours), median(theirs));
    println!();
    println!(
        "file: {} MB plain pg_dump-like, {} canaries planted",
        size / 1_000_000,
        set.len()
    );
    println!("| tool | searches | found | median time | MB/s | peak RSS |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| leakless scanner | {} needles, every encoding | {}/{} canaries | {:.2} s | {:.0} | {} MiB |",
        scanner.needle_count(),
        found.len(),
        set.len(),
        o.as_secs_f64(),
        mbps(o),
        our_peak / 1024
    );
    println!(
        "| rg -F -f canaries.txt | {} raw values | {} matches | {:.2} s | {:.0} | {} MiB |",
        set.len(),
        rg_count,
        r.as_secs_f64(),
        mbps(r),
        rg_peak / 1024
    );
    println!(
        "ratio (leakless / ripgrep throughput): {:.2}",
        mbps(o) / mbps(r)
    );
}
