//! MariaDB's compression seen through: rows of a `PAGE_COMPRESSED=1` table found in its `.ibd`
//! only through the inflated page view, rows of a `ROW_FORMAT=COMPRESSED` table through the
//! inflated page stream, and rows and statements in compressed binary log events
//! (`log_bin_compress=ON`) only through the inflated event view. Pages and logs the harness cannot decode (other
//! algorithms, encryption) are harness errors, never clean. Each test first finds a plaintext
//! control in the same channel.

use std::io::Write as _;

use crate::support::{set_with_control, tar_of};
use leakless_leaktest::report::Report;
use leakless_leaktest::scan::Finding;
use leakless_leaktest::{Canary, CanarySet, LeakCheck, Status};
use leakless_testkit::MariaServer;

const CONTROL: &str = "Control LKMZCTRL01, 7 Leaky Lane";
const PAGE: &str = "Page-compressed LKMZPAGE01, 12 Inflate Street, Zlibton";
const ZIP: &str = "Row-format-compressed LKMZZIP001, 3 Deflate Road, Zipford";

fn long_value() -> String {
    long_text("Binlog-compressed LKMZBIN001 transcript: ")
}

fn statement_value() -> String {
    long_text("Statement-compressed LKMZSTM001 transcript: ")
}

fn long_text(start: &str) -> String {
    let mut s = String::from(start);
    let mut i = 0u32;
    while s.len() < 600 {
        s.push_str(&format!("word{i} x{} ", i * 7919 % 1009));
        i += 1;
    }
    s
}

fn canaries() -> CanarySet {
    let mut set = set_with_control("control", "LKMZCTRL01", CONTROL);
    set.push(Canary::text("page", "LKMZPAGE01", PAGE).unwrap())
        .unwrap();
    set.push(Canary::text("zip", "LKMZZIP001", ZIP).unwrap())
        .unwrap();
    set.push(Canary::transcript("bin", "LKMZBIN001", &long_value()).unwrap())
        .unwrap();
    set.push(Canary::transcript("stmt", "LKMZSTM001", &statement_value()).unwrap())
        .unwrap();
    set
}

fn leaks<'a>(report: &'a Report, channel: &str, id: &str) -> Vec<&'a Finding> {
    report
        .channels
        .iter()
        .filter(|c| c.channel == channel)
        .flat_map(|c| &c.leaks)
        .filter(|f| f.canary_id == id)
        .collect()
}

#[test]
fn compressed_innodb_pages_and_binlog_events_are_inflated_and_scanned() {
    let db = MariaServer::start().unwrap();
    db.sql(
        "",
        &format!(
            "SET GLOBAL innodb_flush_log_at_trx_commit = 1;
             SET GLOBAL log_bin_compress = ON;
             SET SESSION binlog_annotate_row_events = OFF;
             CREATE DATABASE g;
             USE g;
             CREATE TABLE leaky (id INT PRIMARY KEY AUTO_INCREMENT, v TEXT) ENGINE=InnoDB;
             INSERT INTO leaky (v) VALUES ('{CONTROL}');
             CREATE TABLE pc (id INT PRIMARY KEY AUTO_INCREMENT, v TEXT)
                 ENGINE=InnoDB PAGE_COMPRESSED=1;
             INSERT INTO pc (v) VALUES ('{PAGE}');
             CREATE TABLE zc (id INT PRIMARY KEY AUTO_INCREMENT, v TEXT)
                 ENGINE=InnoDB ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE=8;
             INSERT INTO zc (v) VALUES ('{ZIP}');
             INSERT INTO zc (v) SELECT CONCAT('filler ', seq, ' ', md5(seq)) FROM seq_1_to_300;
             ALTER TABLE zc FORCE;
             CREATE TABLE bl (id INT PRIMARY KEY AUTO_INCREMENT, v TEXT) ENGINE=InnoDB;
             INSERT INTO bl (v) VALUES ('{}');
             SET SESSION binlog_format = 'STATEMENT';
             INSERT INTO bl (v) VALUES ('{}');
             SET SESSION binlog_format = 'ROW';
             FLUSH TABLES leaky, pc, zc FOR EXPORT;
             UNLOCK TABLES;",
            long_value(),
            statement_value()
        ),
    )
    .unwrap();
    db.flush_logs().unwrap();
    let mut check = LeakCheck::new(canaries()).unwrap();
    check.expect_control("innodb", "control");
    check.scan_path("innodb", &db.data_dir().join("g"));
    check.expect_control("binlog", "control");
    for b in db.binlogs() {
        check.scan_path("binlog", &b);
    }
    let report = check.report();
    for ch in ["innodb", "binlog"] {
        let c = report.assert_controls_found(ch);
        assert!(c.errors.is_empty(), "{ch}: {:?}", c.errors);
    }

    // Each compressed value is found in its decoded view (`found_in`), and only in decoded
    // views (`only_in`): were it in the raw file, the test would prove nothing.
    for (channel, id, found_in, only_in) in [
        // The page-compressed row: only in the inflated page view of pc.ibd.
        ("innodb", "page", "pc.ibd[innodb-page-zlib@", "["),
        // The ROW_FORMAT=COMPRESSED row, after the table was rebuilt: in the inflated stream.
        ("innodb", "zip", "zc.ibd[innodb-zip-zlib@", "["),
        // The compressed rows event, and a statement-format insert (a QUERY_COMPRESSED
        // event): not in the raw binlog, found in the inflated events.
        ("binlog", "bin", "[binlog-zlib@", "[binlog-zlib@"),
        ("binlog", "stmt", "[binlog-zlib@", "[binlog-zlib@"),
    ] {
        let found = leaks(&report, channel, id);
        assert!(
            found.iter().any(|f| f.artifact.contains(found_in)),
            "{id} not found in {found_in}: {found:?}\n{}",
            report.human()
        );
        assert!(
            found.iter().all(|f| f.artifact.contains(only_in)),
            "{id} found outside {only_in} (not compressed?): {found:?}"
        );
    }
}

fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A 16 KiB page with page number `n`, type `ty`, an 8-byte algorithm field and `data` at 40
/// (the pre-`full_crc32` page-compressed layout).
fn page(n: u32, ty: u16, algo: u64, data: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 16384];
    p[4..8].copy_from_slice(&n.to_be_bytes());
    p[24..26].copy_from_slice(&ty.to_be_bytes());
    p[26..34].copy_from_slice(&algo.to_be_bytes());
    p[38..40].copy_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
    p[40..40 + data.len()].copy_from_slice(data);
    p
}

/// An uncompressed 16 KiB page body holding [`CONTROL`] at byte 100.
fn control_page_body() -> Vec<u8> {
    let mut inner = vec![b'.'; 16384];
    inner[100..100 + CONTROL.len()].copy_from_slice(CONTROL.as_bytes());
    inner
}

/// A binary log event of type `ty` with `body` (a 19-byte header holding the type and the
/// event's length).
fn binlog_event(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut e = vec![0u8; 19];
    e[4] = ty;
    e[9..13].copy_from_slice(&u32::try_from(19 + body.len()).unwrap().to_le_bytes());
    e.extend_from_slice(body);
    e
}

/// A binary log: the magic, a format description event, then a compressed query event
/// holding [`CONTROL`] (`0x82`, the length, a zlib stream), then the events `more`.
fn binlog_with_compressed_control(more: &[Vec<u8>]) -> Vec<u8> {
    let mut log = b"\xfebin".to_vec();
    log.extend(binlog_event(15, &[0u8; 40]));
    let mut q = vec![0u8; 13];
    q.push(0x82);
    q.extend_from_slice(&u16::try_from(CONTROL.len()).unwrap().to_be_bytes());
    q.extend(zlib(CONTROL.as_bytes()));
    log.extend(binlog_event(165, &q));
    log.extend(more.concat());
    log
}

#[test]
fn pages_and_binlogs_that_cannot_be_decoded_are_harness_errors() {
    let dir = tempfile::tempdir().unwrap();
    let inner = control_page_body();
    let ibd = dir.path().join("t.ibd");
    let file = [
        page(0, 8, 0, &[]),
        page(1, 34354, 1, &zlib(&inner)),
        // lzma, then encrypted: not decodable here.
        page(2, 34354, 4, &[0x5d, 0, 0, 0x80]),
        page(3, 37401, 0, &[1, 2, 3, 4]),
    ]
    .concat();
    std::fs::write(&ibd, file).unwrap();
    // full_crc32 layout: the algorithm is in the space flags of page 0 (bits 5..7), the page
    // type has bit 15 set and the stream starts at byte 26. Here: lzma by the flags.
    let fcrc32 = |n: u32, data: &[u8]| {
        let mut p = vec![0u8; 16384];
        p[4..8].copy_from_slice(&n.to_be_bytes());
        p[24..26].copy_from_slice(&0x8001u16.to_be_bytes());
        p[26..26 + data.len()].copy_from_slice(data);
        p
    };
    let mut page0 = page(0, 8, 0, &[]);
    page0[54..58].copy_from_slice(&(0x10u32 | (4 << 5) | 5).to_be_bytes());
    let lzma_ibd = dir.path().join("lzma.ibd");
    std::fs::write(
        &lzma_ibd,
        [
            page0,
            fcrc32(1, &[0x5d, 0, 0, 0x80]),
            fcrc32(2, &[0x5d, 0, 0, 0x80]),
        ]
        .concat(),
    )
    .unwrap();
    // And zlib by the flags, holding the control.
    let mut page0 = page(0, 8, 0, &[]);
    page0[54..58].copy_from_slice(&(0x10u32 | (1 << 5) | 5).to_be_bytes());
    let zlib_ibd = dir.path().join("zlib.ibd");
    std::fs::write(&zlib_ibd, [page0, fcrc32(1, &zlib(&inner))].concat()).unwrap();
    // A binlog: the compressed control, then START_ENCRYPTION and an event past it.
    let binlog = dir.path().join("binlog.000001");
    std::fs::write(
        &binlog,
        binlog_with_compressed_control(&[
            binlog_event(164, &[1u8; 17]),
            binlog_event(2, &[0u8; 30]),
        ]),
    )
    .unwrap();

    let mut check = LeakCheck::new(canaries()).unwrap();
    for (channel, path) in [
        ("ibd", &ibd),
        ("binlog", &binlog),
        ("fcrc32", &zlib_ibd),
        ("fcrc32", &lzma_ibd),
    ] {
        check.expect_control(channel, "control");
        check.scan_path(channel, path);
    }
    let report = check.report();
    for channel in ["ibd", "binlog", "fcrc32"] {
        let c = report
            .channels
            .iter()
            .find(|c| c.channel == channel)
            .unwrap();
        assert!(
            c.controls_missed.is_empty(),
            "{channel}: the control in the decodable part was not found:\n{}",
            report.human()
        );
        assert_eq!(c.status(), Status::HarnessError, "{}", report.human());
    }
    let errors = |channel: &str| {
        report
            .channels
            .iter()
            .find(|c| c.channel == channel)
            .unwrap()
            .errors
            .join("\n")
    };
    let ibd_errors = errors("ibd");
    assert!(
        ibd_errors.contains("cannot decode") && ibd_errors.contains("lzma"),
        "{ibd_errors}"
    );
    assert!(
        ibd_errors.contains("FIL_PAGE_PAGE_COMPRESSED_ENCRYPTED"),
        "{ibd_errors}"
    );
    let fcrc32_errors = errors("fcrc32");
    assert!(
        fcrc32_errors.contains("cannot decode")
            && fcrc32_errors.contains("lzma")
            && fcrc32_errors.contains("2 pages")
            && !fcrc32_errors.contains("zlib.ibd"),
        "{fcrc32_errors}"
    );
    let bin_errors = errors("binlog");
    assert!(
        bin_errors.contains("cannot decode") && bin_errors.contains("encrypted binary log"),
        "{bin_errors}"
    );
    assert!(
        !report.human().contains("Leaky Lane"),
        "a value in the report"
    );
}

/// A tablespace and a binary log inside a gzipped tar (a file-level backup of the data
/// directory) get the same decoded views as on disk: the compressed control is found only
/// there.
#[test]
fn tablespaces_and_binlogs_inside_archives_are_inflated_too() {
    let ibd = [
        page(0, 8, 0, &[]),
        page(1, 34354, 1, &zlib(&control_page_body())),
    ]
    .concat();
    let log = binlog_with_compressed_control(&[binlog_event(2, &[0u8; 30])]);
    let tar = tar_of(&[("mysql/app/t.ibd", &ibd), ("mysql/binlog.000001", &log)]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("datadir.tar.gz");
    std::fs::write(&backup, gz.finish().unwrap()).unwrap();

    let mut check = LeakCheck::new(canaries()).unwrap();
    check.expect_control("backup", "control");
    check.scan_path("backup", &backup);
    let report = check.report();
    let c = report.channel("backup").unwrap();
    assert_eq!(c.status(), Status::Clean, "{}", report.human());
    let views: Vec<&str> = c
        .control_findings
        .iter()
        .map(|f| f.artifact.as_str())
        .collect();
    // Only the decoded views hold the control (it is zlib-compressed in both files).
    assert!(
        views
            .iter()
            .all(|a| a.contains("[innodb-page-zlib@") || a.contains("[binlog-zlib@")),
        "{views:?}"
    );
    assert!(
        views
            .iter()
            .any(|a| a.contains("datadir.tar.gz[gunzip]!mysql/app/t.ibd[innodb-page-zlib@")),
        "{views:?}"
    );
    assert!(
        views
            .iter()
            .any(|a| a.contains("datadir.tar.gz[gunzip]!mysql/binlog.000001[binlog-zlib@")),
        "{views:?}"
    );
}
