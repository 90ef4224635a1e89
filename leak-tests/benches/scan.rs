//! Scan throughput of the leak-test scanner against ripgrep, in the same run on the same file.
//!
//! Generates a plain `pg_dump`-like file (a `COPY ... FROM stdin` block of rows whose sealed
//! columns are `\x` hex of random bytes) of `LEAKLESS_BENCH_MB` MiB (default 1024) holding
//! 1,000 canaries (400 addresses, 300 e-mail addresses, 200 GPS points, 100 transcripts), each
//! planted once in a rotating encoding (raw, hex, base64, UTF-16LE, JSON, lowercase, GPS pair)
//! or, for about half of them, with escapes mixed into plain text that only the unescaping pass
//! sees (JSON `\u0020` on spaces and punctuation, the same COPY-doubled, libedit octal,
//! quoted-printable, HTML numeric entities, partial percent-encoding; a third of the GPS pairs
//! with `\u0020`). Then, three times each, alternating:
//! * the leakless scanner with every encoding and the unescaping pass on (streaming, 1 MiB
//!   chunks, each scanned by `Scanner::threads` threads: the available parallelism, at most 4),
//!   which must find all 1,000 planted canaries, the escaped ones after unescaping;
//! * the same scanner on one thread, which must find the same canaries;
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

use leakless::manifest::PlaintextEncoding;
use leakless_leaktest::canary::{Canary, CanarySet, generate};
use leakless_leaktest::encode::{base64, json_escape};
use leakless_leaktest::scan::Scanner;
use leakless_leaktest::unescape::{escape_mixed, regions};

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
            let c = generate(
                &format!("bench.{column}#{i}"),
                column,
                PlaintextEncoding::String,
            );
            set.push(c).unwrap();
        }
    };
    push(400, "address");
    push(300, "email");
    push(200, "gps");
    push(100, "transcript");
    set
}

/// Whether canary `i` is planted with escapes only the unescaping pass sees.
fn escaped(c: &Canary, i: usize) -> bool {
    if c.gps_value().is_some() {
        i.is_multiple_of(3)
    } else {
        i % 12 >= 6
    }
}

/// Each character that is not an ASCII letter or digit through `f`, the rest as is.
fn escape_some(t: &str, f: impl Fn(char) -> String) -> Vec<u8> {
    t.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_string()
            } else {
                f(c)
            }
        })
        .collect::<String>()
        .into_bytes()
}

fn planted(c: &Canary, i: usize) -> Vec<u8> {
    if let Some((lat, lon)) = c.gps_value() {
        let pair = format!("{lat}, {lon}");
        if escaped(c, i) {
            return escape_mixed(&pair, false).into_bytes();
        }
        return format!("{lat},{lon}").into_bytes();
    }
    let t = c.text_value().unwrap();
    let code = |c: char| u32::from(c);
    // Each UTF-8 byte of `c` through `f`.
    let bytes = |c: char, f: fn(u8) -> String| {
        let mut b = [0u8; 4];
        c.encode_utf8(&mut b).bytes().map(f).collect::<String>()
    };
    match i % 12 {
        0 | 1 => t.as_bytes().to_vec(),
        2 => format!("\\\\x{}", hex::encode(t)).into_bytes(),
        3 => base64(t.as_bytes(), false).into_bytes(),
        4 => json_escape(t, true),
        5 => t.to_lowercase().into_bytes(),
        6 => escape_mixed(t, false).into_bytes(),
        7 => escape_mixed(t, true).into_bytes(),
        8 => escape_some(t, |c| bytes(c, |b| format!("\\{b:03o}"))),
        9 => {
            // Quoted-printable, a soft line break after 60 characters (never inside an escape).
            let mut out = String::new();
            let mut line = 0;
            for c in t.chars() {
                let token = if c.is_ascii_alphanumeric() {
                    c.to_string()
                } else {
                    bytes(c, |b| format!("={b:02X}"))
                };
                if line + token.len() > 60 {
                    out.push_str("=\r\n");
                    line = 0;
                }
                line += token.len();
                out.push_str(&token);
            }
            out.into_bytes()
        }
        10 => escape_some(t, |c| format!("&#{};", code(c))),
        // Percent-encoding of punctuation and of every fourth character (lowercase hex, so no
        // percent needle matches).
        _ => t
            .chars()
            .enumerate()
            .map(|(k, c)| {
                if c.is_ascii_alphanumeric() && k % 4 != 0 {
                    c.to_string()
                } else {
                    bytes(c, |b| format!("%{b:02x}"))
                }
            })
            .collect::<String>()
            .into_bytes(),
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
    let mut scanner = Scanner::new(set.clone()).unwrap();
    let build = t.elapsed();
    let threads = scanner.threads();
    eprintln!(
        "scanner: {} canaries, {} needles, matcher {} MiB, built in {build:.1?}",
        set.len(),
        scanner.needle_count(),
        scanner.memory_usage() >> 20
    );

    let mut ours = Vec::new();
    let mut single = Vec::new();
    let mut theirs = Vec::new();
    let mut rg_peak = 0;
    let mut rg_count = 0;
    let mut found = BTreeSet::new();
    let mut unescaped = BTreeSet::new();
    for _ in 0..3 {
        found.clear();
        unescaped.clear();
        let t = Instant::now();
        scanner
            .scan_reader(File::open(&file).unwrap(), |h| {
                found.insert(h.canary);
                if h.layers > 0 {
                    unescaped.insert(h.canary);
                }
            })
            .unwrap();
        ours.push(t.elapsed());
        // The same scan on the calling thread only (what one core gives).
        scanner.set_threads(1);
        let t = Instant::now();
        let mut one = BTreeSet::new();
        scanner
            .scan_reader(File::open(&file).unwrap(), |h| {
                one.insert(h.canary);
            })
            .unwrap();
        single.push(t.elapsed());
        scanner.set_threads(threads);
        assert_eq!(one, found, "one thread found other canaries");
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
    let escaped_planted = (0..set.len())
        .filter(|&i| escaped(&set.canaries[i], i))
        .count();
    let after_unescaping = (0..set.len())
        .filter(|&i| escaped(&set.canaries[i], i) && unescaped.contains(&i))
        .count();
    assert_eq!(
        after_unescaping, escaped_planted,
        "every canary planted with escapes must be found after unescaping"
    );
    let rescanned = scanner.unescaped_bytes() / 6;
    // The unescaping pass's search for escapes alone.
    let mut region_search = Duration::ZERO;
    let mut reader = File::open(&file).unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    let mut region_count = 0usize;
    loop {
        let n = std::io::Read::read(&mut reader, &mut chunk).unwrap();
        if n == 0 {
            break;
        }
        let t = Instant::now();
        region_count += regions(&chunk[..n], 112).len();
        region_search += t.elapsed();
    }
    let our_peak = vm_hwm_kib("self").unwrap_or(0);
    let mbps = |d: Duration| size as f64 / 1e6 / d.as_secs_f64();
    let (o, o1, r) = (median(ours), median(single), median(theirs));
    println!();
    println!(
        "file: {} MB plain pg_dump-like, {} canaries planted ({} with mixed escapes)",
        size / 1_000_000,
        set.len(),
        escaped_planted
    );
    println!("| tool | searches | found | median time | MB/s | peak RSS |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| leakless scanner, {threads} threads | {} needles, every encoding, unescaping | {}/{} canaries ({} escaped ones after unescaping) | {:.2} s | {:.0} | {} MiB |",
        scanner.needle_count(),
        found.len(),
        set.len(),
        after_unescaping,
        o.as_secs_f64(),
        mbps(o),
        our_peak / 1024
    );
    println!(
        "| leakless scanner, 1 thread | the same | the same | {:.2} s | {:.0} | (same process) |",
        o1.as_secs_f64(),
        mbps(o1),
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
        "ratio (leakless / ripgrep throughput): {:.2} with {threads} threads, {:.2} with 1 (ripgrep searches one file on one thread)",
        mbps(o) / mbps(r),
        mbps(o1) / mbps(r)
    );
    println!(
        "unescaping pass: {rescanned} bytes decoded and rescanned per run ({:.4}% of the file, {region_count} regions); searching the file for escapes alone: {:.2} s",
        rescanned as f64 * 100.0 / size as f64,
        region_search.as_secs_f64()
    );
}
