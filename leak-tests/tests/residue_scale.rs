//! The residue scan at scale: 1,000,000 real addresses (~40 bytes each) COPYed into a
//! PostgreSQL table, read back through the database URL, and all of them found in the table's
//! heap file and in the WAL, reported by row id, none printed. Prints the time of each phase
//! and the process's peak memory (VmHWM; this test has a binary of its own, outside `leaks`,
//! so the figure is its own).
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::print_stderr,
    reason = "tests: a failed step stops the test with its message"
)]

#[path = "leaks/support.rs"]
#[allow(
    dead_code,
    unused_imports,
    unreachable_pub,
    reason = "the leaks suite's support: this binary uses two of its parts"
)]
mod support;

use std::io::Write as _;
use std::time::Instant;

use leakless_leaktest::residue::{ColumnSpec, DbControl, ResidueValues};
use leakless_leaktest::scan::EncodingSet;
use support::address;

const ROWS: u64 = 1_000_000;

fn vm_hwm_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

#[test]
fn a_million_real_values_are_found_in_the_heap_file_and_the_wal_by_row_id() {
    let pg = support::pg_server();
    // Keep every WAL segment of the load: the scan reads them after the control's CHECKPOINT.
    pg.sql(
        "postgres",
        "ALTER SYSTEM SET wal_keep_size = '2GB'; ALTER SYSTEM SET max_wal_size = '4GB';
         SELECT pg_reload_conf(); CREATE DATABASE app;",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("customers.csv");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&csv).unwrap());
        for n in 1..=ROWS {
            writeln!(f, "{n}\t{}", address(n)).unwrap();
        }
    }
    pg.sql(
        "app",
        &format!(
            "CREATE TABLE customers (id bigint PRIMARY KEY, address text);
             COPY customers FROM '{}';",
            csv.display()
        ),
    )
    .unwrap();
    std::fs::remove_file(&csv).unwrap();
    let heap = pg
        .sql("app", "SELECT pg_relation_filepath('customers')")
        .unwrap();
    let heap = pg.data_dir().join(heap.trim());
    let url = pg.url_for("app");

    let t = Instant::now();
    let values = ResidueValues::read(
        &url,
        &["customers.address".parse::<ColumnSpec>().unwrap()],
        "id",
    )
    .unwrap();
    let read = t.elapsed();
    assert_eq!(values.len(), 1_000_000);
    let control = DbControl::plant(&url).unwrap();
    let t = Instant::now();
    let mut check = values
        .check(control.canary(), &EncodingSet::Residue)
        .unwrap();
    let build = t.elapsed();
    let scanner = check.leak_check().scanner();
    let (needles, needle_mem, matcher_mem) = (
        scanner.needle_count(),
        scanner.needle_memory(),
        scanner.memory_usage(),
    );
    let t = Instant::now();
    // The control is in its own table's file: scan both files as the heap channel.
    let control_heap = pg
        .sql(
            "app",
            &format!(
                "SELECT pg_relation_filepath('{}')",
                leakless_leaktest::residue::CONTROL_TABLE
            ),
        )
        .unwrap();
    check.scan_path("postgres/heap", &heap);
    check.scan_path("postgres/heap", &pg.data_dir().join(control_heap.trim()));
    check.scan_path("postgres/wal", &pg.wal_dir());
    let scan = t.elapsed();
    let report = check.report();
    control.drop_table().unwrap();
    let human = report.human();
    let json = report.to_json().unwrap();
    eprintln!("{human}");
    eprintln!(
        "residue scale: {ROWS} values, {needles} needles (needles {} MiB, matcher {} MiB); \
         read {read:.1?}, build {build:.1?}, scan {scan:.1?} ({} MB); peak RSS (VmHWM) {} MiB",
        needle_mem >> 20,
        matcher_mem >> 20,
        report.report.channels.iter().map(|c| c.bytes).sum::<u64>() / 1_000_000,
        vm_hwm_mib()
    );
    for ch in ["postgres/heap", "postgres/wal"] {
        report.report.assert_controls_found(ch);
        let found = report.channel(ch).unwrap();
        let col = found
            .columns
            .iter()
            .find(|c| c.column == "customers.address")
            .unwrap();
        if ch == "postgres/heap" {
            assert_eq!(col.rows, ROWS, "{ch}: every value found");
        } else {
            // A record that runs from one 16 MiB segment file into the next is not
            // reassembled across the two files: a value in it may be cut in two.
            let segments = std::fs::read_dir(pg.wal_dir()).unwrap().count();
            let segments = u64::try_from(segments).unwrap();
            assert!(
                col.rows + segments >= ROWS,
                "{ch}: {} of {ROWS} found",
                col.rows
            );
        }
        assert_eq!(col.row_ids.len(), 20, "{ch}: a sample of row ids");
    }
    assert!(check.found("postgres/heap", "customers.address", "777777"));
    assert_eq!(report.exit_code(), 1);
    for n in (1..=ROWS).step_by(9973) {
        let a = address(n);
        assert!(
            !human.contains(&a) && !json.contains(&a),
            "a value was printed"
        );
    }
}
