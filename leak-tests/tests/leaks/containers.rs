//! Containers and streams: every compressor (gzip, zstd, xz, bzip2, lz4 frame), zip (stored
//! and deflated), tar in tar, `.sql.gz` in tar, nesting, an lz4 leak hidden in back-references,
//! corrupt streams that keep their prefix's findings, symbolic links (loops, dangling), the
//! depth and decompression bounds, and "nothing readable is not clean". Each test plants a
//! positive control next to the leak and requires it first. The test inputs are made here with
//! the crates' encoders.

use std::io::{Cursor, Write as _};
use std::path::Path;

use crate::support::{set_with_control, tar_append, tar_of};
use leakless_leaktest::containers::Codec;
use leakless_leaktest::report::ChannelReport;
use leakless_leaktest::{Canary, LeakCheck, Report, Status};
use leakless_testkit::{DumpFormat, PgOptions, PgServer};

const LEAK_MARKER: &str = "LKCONT7Q";
const LEAK: &str = "Canary LKCONT7Q, 12 Archive Lane, Zipville";
const CONTROL: &str = "Control LKCTRL5W, 1 Known Street, Testtown";
const CH: &str = "c";

fn check() -> LeakCheck {
    let mut set = set_with_control("ctl", "LKCTRL5W", CONTROL);
    set.push(Canary::text("addr", LEAK_MARKER, LEAK).unwrap())
        .unwrap();
    let mut c = LeakCheck::new(set).unwrap();
    c.expect_all_controls(CH);
    c
}

/// A small SQL dump holding the leak and the control.
fn sql() -> Vec<u8> {
    format!(
        "CREATE TABLE patients (id text, address text);\n\
         INSERT INTO patients VALUES ('p1', '{LEAK}');\n\
         INSERT INTO control VALUES ('c1', '{CONTROL}');\n"
    )
    .into_bytes()
}

/// Pseudo-random printable filler (compresses poorly, so streams span many blocks).
fn filler(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b' ' + u8::try_from(x % 90).unwrap()
        })
        .collect()
}

fn compress(codec: Codec, data: &[u8]) -> Vec<u8> {
    match codec {
        Codec::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Codec::Zstd => ruzstd::encoding::compress_to_vec(
            Cursor::new(data),
            ruzstd::encoding::CompressionLevel::Fastest,
        ),
        Codec::Xz => {
            let mut w =
                lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::with_preset(1))
                    .unwrap();
            w.write_all(data).unwrap();
            w.finish().unwrap()
        }
        Codec::Bzip2 => {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Codec::Lz4 => {
            let info = lz4_flex::frame::FrameInfo::new().content_checksum(true);
            let mut e = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
    }
}

fn ext(codec: Codec) -> &'static str {
    match codec {
        Codec::Gzip => "gz",
        Codec::Zstd => "zst",
        Codec::Xz => "xz",
        Codec::Bzip2 => "bz2",
        Codec::Lz4 => "lz4",
    }
}

const CODECS: [Codec; 5] = [
    Codec::Gzip,
    Codec::Zstd,
    Codec::Xz,
    Codec::Bzip2,
    Codec::Lz4,
];

fn zip_of(members: &[(&str, &[u8], zip::CompressionMethod)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, data, method) in members {
        let opts = zip::write::SimpleFileOptions::default().compression_method(*method);
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn scan(path: &Path) -> Report {
    let mut c = check();
    c.scan_path(CH, path);
    c.report()
}

fn channel(r: &Report) -> &ChannelReport {
    r.channel(CH).unwrap()
}

/// The positive control was found, and the leak was found in exactly `artifact`.
fn assert_leak_in(r: &Report, artifact: &str) {
    let c = r.assert_controls_found(CH);
    assert!(
        c.leaks.iter().any(|f| f.artifact == artifact),
        "no leak in {artifact}:\n{}",
        r.human()
    );
    assert_eq!(r.status(), Status::Leak);
}

/// A leak was found in an artifact whose name starts with `prefix`.
fn assert_leak_under(r: &Report, prefix: &str) {
    assert!(
        channel(r)
            .leaks
            .iter()
            .any(|f| f.artifact.starts_with(prefix)),
        "no leak inside {prefix}:\n{}",
        r.human()
    );
}

fn assert_error_contains(r: &Report, needle: &str) {
    assert!(
        channel(r).errors.iter().any(|e| e.contains(needle)),
        "no harness error containing {needle:?}:\n{}",
        r.human()
    );
}

fn assert_clean_of_errors(r: &Report) {
    assert!(channel(r).errors.is_empty(), "{}", r.human());
}

/// [`assert_leak_in`] for `base` followed by each of `members`, then
/// [`assert_clean_of_errors`].
fn assert_leaks_in_members(r: &Report, base: &str, members: &[&str]) {
    for member in members {
        assert_leak_in(r, &format!("{base}{member}"));
    }
    assert_clean_of_errors(r);
}

#[test]
fn every_compressor_is_seen_through() {
    let dir = tempfile::tempdir().unwrap();
    for codec in CODECS {
        let path = dir.path().join(format!("dump.sql.{}", ext(codec)));
        std::fs::write(&path, compress(codec, &sql())).unwrap();
        let r = scan(&path);
        assert_leak_in(&r, &format!("{}[{}]", path.display(), codec.view()));
        assert_clean_of_errors(&r);
    }
}

#[test]
fn zstd_skippable_and_concatenated_frames_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frames.zst");
    let mut data = vec![0x5a, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3];
    data.extend(compress(Codec::Zstd, b"first frame, nothing in it\n"));
    data.extend(compress(Codec::Zstd, &sql()));
    std::fs::write(&path, data).unwrap();
    let r = scan(&path);
    assert_leak_in(&r, &format!("{}[zstd]", path.display()));
    assert_clean_of_errors(&r);
}

#[test]
fn zip_members_stored_deflated_bzip2_and_xz_are_seen_through() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("export.zip");
    let data = sql();
    std::fs::write(
        &path,
        zip_of(&[
            ("stored.sql", &data, zip::CompressionMethod::Stored),
            ("deflated.sql", &data, zip::CompressionMethod::Deflated),
            ("bzip2.sql", &data, zip::CompressionMethod::Bzip2),
            ("xz.sql", &data, zip::CompressionMethod::Xz),
        ]),
    )
    .unwrap();
    let r = scan(&path);
    let base = path.display().to_string();
    assert_leaks_in_members(
        &r,
        &base,
        &["!stored.sql", "!deflated.sql", "!bzip2.sql", "!xz.sql"],
    );
    // The deflated member hides the value from the raw scan: only the member view sees it.
    assert!(
        !channel(&r)
            .leaks
            .iter()
            .any(|f| f.artifact == base && f.offset > 200),
        "{}",
        r.human()
    );
}

#[test]
fn tar_in_tar_and_sql_gz_in_tar_are_seen_through() {
    let dir = tempfile::tempdir().unwrap();
    let gz = compress(Codec::Gzip, &sql());
    let inner = tar_of(&[("inner/db.sql", &sql())]);
    let path = dir.path().join("backup.tar");
    std::fs::write(&path, tar_of(&[("db.sql.gz", &gz), ("inner.tar", &inner)])).unwrap();
    let r = scan(&path);
    assert_leaks_in_members(
        &r,
        &path.display().to_string(),
        &["!db.sql.gz[gunzip]", "!inner.tar!inner/db.sql"],
    );
}

#[test]
fn containers_nested_two_levels_deep_are_seen_through() {
    // backup.tar.zst holds export.zip, which holds db.sql.xz (deflated).
    let dir = tempfile::tempdir().unwrap();
    let xz = compress(Codec::Xz, &sql());
    let zip = zip_of(&[("db.sql.xz", &xz, zip::CompressionMethod::Deflated)]);
    let tar = tar_of(&[("export.zip", &zip)]);
    let path = dir.path().join("backup.tar.zst");
    std::fs::write(&path, compress(Codec::Zstd, &tar)).unwrap();
    let r = scan(&path);
    assert_leak_in(
        &r,
        &format!("{}[zstd]!export.zip!db.sql.xz[xz]", path.display()),
    );
    assert_clean_of_errors(&r);
}

#[test]
fn an_lz4_leak_held_only_in_back_references_is_found() {
    // The value's two halves appear apart first; its whole occurrence later compresses to
    // back-references, so the compressed file never holds it as a literal run.
    let (a, b) = LEAK.split_at(LEAK.len() / 2);
    let mut data = format!("-- header\n{a}#########\n{b}$$$$$$$$$\n").into_bytes();
    data.extend(filler(4000));
    data.extend(format!("\n{CONTROL}\n").as_bytes());
    data.extend(format!("INSERT INTO patients VALUES ('{LEAK}');\n").as_bytes());
    let compressed = compress(Codec::Lz4, &data);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dump.sql.lz4");
    std::fs::write(&path, &compressed).unwrap();
    let r = scan(&path);
    let base = path.display().to_string();
    assert!(
        !channel(&r).leaks.iter().any(|f| f.artifact == base),
        "precondition: the raw lz4 file must not show the leak:\n{}",
        r.human()
    );
    assert_leak_in(&r, &format!("{base}[lz4]"));
    assert_clean_of_errors(&r);
}

/// The leak and the control at the front, then enough filler for several blocks, compressed
/// by each codec (made once, shared by the tests that damage it).
fn long_streams() -> &'static [(Codec, Vec<u8>)] {
    static STREAMS: std::sync::OnceLock<Vec<(Codec, Vec<u8>)>> = std::sync::OnceLock::new();
    STREAMS.get_or_init(|| {
        let mut data = sql();
        data.extend(filler(3 << 20));
        CODECS.iter().map(|&c| (c, compress(c, &data))).collect()
    })
}

/// Writes `stream`, a damaged `codec` stream, to `path` and scans it: the leak in the prefix
/// that still decodes is found in the codec's view, and the damage is a harness error naming
/// that view. Returns the report.
fn scan_damaged_stream(path: &Path, codec: Codec, stream: &[u8]) -> Report {
    std::fs::write(path, stream).unwrap();
    let r = scan(path);
    let view = format!("{}[{}]", path.display(), codec.view());
    assert_leak_in(&r, &view);
    assert_error_contains(
        &r,
        &format!("{view}: corrupt or truncated {} stream", codec.view()),
    );
    r
}

#[test]
fn truncated_streams_keep_the_findings_of_their_prefix() {
    let dir = tempfile::tempdir().unwrap();
    for (codec, full) in long_streams() {
        let cut = full.len() * 3 / 5;
        let path = dir.path().join(format!("cut.sql.{}", ext(*codec)));
        let r = scan_damaged_stream(&path, *codec, &full[..cut]);
        assert!(r.human().contains("LEAK") && r.human().contains("HARNESS ERROR"));
    }
}

#[test]
fn bit_flipped_streams_keep_the_findings_of_their_prefix() {
    let dir = tempfile::tempdir().unwrap();
    for (codec, full) in long_streams() {
        let mut bad = full.clone();
        let at = bad.len() * 7 / 10;
        bad[at] ^= 0x10;
        let path = dir.path().join(format!("flipped.sql.{}", ext(*codec)));
        scan_damaged_stream(&path, *codec, &bad);
    }
}

#[test]
fn symlinks_are_followed_and_loops_terminate() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(tree.join("control.txt"), CONTROL).unwrap();
    std::fs::write(outside.join("leak.sql"), sql()).unwrap();
    // A folder outside the tree, a loop back to the root, and a second name for a file.
    std::os::unix::fs::symlink(&outside, tree.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink("..", tree.join("sub/up")).unwrap();
    std::os::unix::fs::symlink("../control.txt", tree.join("sub/again.txt")).unwrap();
    let r = scan(&tree);
    assert_leak_in(&r, &tree.join("elsewhere/leak.sql").display().to_string());
    assert_clean_of_errors(&r);
    let links = &channel(&r).links_followed;
    assert_eq!(links.len(), 3, "{links:?}");
    assert!(
        links
            .iter()
            .any(|l| l.starts_with(&format!("{} -> ", tree.join("elsewhere").display())))
    );
    let again: Vec<_> = links
        .iter()
        .filter(|l| l.contains("already scanned"))
        .collect();
    assert_eq!(again.len(), 2, "the loop and the second name: {links:?}");
    // Each file was scanned once.
    assert_eq!(
        channel(&r)
            .control_findings
            .iter()
            .filter(|f| f.artifact.ends_with(".txt"))
            .count(),
        1
    );
    assert!(r.human().contains("followed symbolic link"));
    assert!(r.to_json().unwrap().contains("links_followed"));
}

#[test]
fn a_dangling_symlink_is_a_harness_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dump.sql"), sql()).unwrap();
    std::os::unix::fs::symlink("gone.sql", dir.path().join("moved.sql")).unwrap();
    let mut c = check();
    c.scan_path(CH, dir.path());
    let r = c.report();
    // The positive control is found through the readable file.
    assert!(channel(&r).controls_missed.is_empty());
    assert_error_contains(
        &r,
        &format!(
            "{}: dangling symbolic link",
            dir.path().join("moved.sql").display()
        ),
    );
}

#[test]
fn nothing_readable_is_a_harness_error_not_clean() {
    let dir = tempfile::tempdir().unwrap();
    // Positive control: the same call on a folder with the control in it is clean.
    let full = dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("log.txt"), CONTROL).unwrap();
    assert_eq!(scan(&full).status(), Status::Clean);
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("zero-bytes.log"), b"").unwrap();
    let mut c = check();
    c.waive_controls(CH);
    c.scan_path(CH, &empty);
    let r = c.report();
    assert_eq!(r.status(), Status::HarnessError, "{}", r.human());
    assert_error_contains(&r, &format!("nothing readable in {}", empty.display()));
}

#[test]
fn nesting_deeper_than_the_bound_is_a_harness_error() {
    let mut data = sql();
    for _ in 0..10 {
        data = compress(Codec::Gzip, &data);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.gz");
    std::fs::write(&path, data).unwrap();
    let r = scan(&path);
    assert_error_contains(&r, "nested deeper than 8 levels");
    // Positive control: eight layers are within the bound and the leak is found.
    let mut data = sql();
    for _ in 0..8 {
        data = compress(Codec::Gzip, &data);
    }
    std::fs::write(&path, data).unwrap();
    let r = scan(&path);
    assert_leak_in(&r, &format!("{}{}", path.display(), "[gunzip]".repeat(8)));
    assert_clean_of_errors(&r);
}

#[test]
fn the_decompression_bound_is_a_harness_error() {
    let mut data = sql();
    data.resize(32 << 20, b'0');
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.zst");
    std::fs::write(&path, compress(Codec::Zstd, &data)).unwrap();
    let mut c = check();
    c.set_decompressed_limit(4 << 20);
    c.scan_path(CH, &path);
    let r = c.report();
    // What was decompressed before the bound is scanned: the leak at the front is reported.
    assert_leak_in(&r, &format!("{}[zstd]", path.display()));
    assert_error_contains(&r, "[zstd]: stopped: decompression limit of 4194304 bytes");
}

/// A database `app` with the leak in table `leaky` (in `tablespace`, when given) and the
/// control in table `control` (default tablespace).
fn leaky_database(pg: &PgServer, tablespace: Option<&Path>) {
    pg.sql("postgres", "CREATE DATABASE app").unwrap();
    let ts = match tablespace {
        Some(dir) => {
            pg.sql(
                "postgres",
                &format!("CREATE TABLESPACE leakyts LOCATION '{}'", dir.display()),
            )
            .unwrap();
            " TABLESPACE leakyts"
        }
        None => "",
    };
    pg.sql(
        "app",
        &format!(
            "CREATE TABLE leaky (id int, address text){ts};
             INSERT INTO leaky VALUES (1, '{LEAK}');
             CREATE TABLE control (id int, address text);
             INSERT INTO control VALUES (1, '{CONTROL}');"
        ),
    )
    .unwrap();
}

#[test]
fn pg_dumps_inside_a_tar_are_restored_and_scanned() {
    let pg = crate::support::pg_server();
    leaky_database(&pg, None);
    let dir = tempfile::tempdir().unwrap();
    let custom = dir.path().join("app.dump");
    pg.dump("app", DumpFormat::Custom, &custom).unwrap();
    let dirdump = dir.path().join("app.dir");
    pg.dump("app", DumpFormat::Directory, &dirdump).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    b.append_path_with_name(&custom, "dumps/app.dump").unwrap();
    b.append_dir_all("dumps/app.dir", &dirdump).unwrap();
    // A custom dump compressed again (as backup tools store it): spooled, then restored.
    let zst = compress(Codec::Zstd, &std::fs::read(&custom).unwrap());
    tar_append(&mut b, "dumps/app.dump.zst", &zst);
    let tar = b.into_inner().unwrap();
    // The same tar, and the same tar gzip'd inside another tar (two levels deeper).
    let path = dir.path().join("backup.tar");
    std::fs::write(&path, &tar).unwrap();
    let outer = dir.path().join("outer.tar");
    std::fs::write(
        &outer,
        tar_of(&[("nightly/backup.tar.gz", &compress(Codec::Gzip, &tar))]),
    )
    .unwrap();
    let restored = [
        "!dumps/app.dump[pg_restore]",
        "!dumps/app.dir[pg_restore]",
        "!dumps/app.dump.zst[zstd][pg_restore]",
    ];
    assert_leaks_in_members(&scan(&path), &path.display().to_string(), &restored);
    assert_leaks_in_members(
        &scan(&outer),
        &format!("{}!nightly/backup.tar.gz[gunzip]", outer.display()),
        &restored[..2],
    );
}

#[test]
fn a_pgdata_with_symlinked_wal_and_tablespace_shows_the_leaks_behind_both_links() {
    let pg = PgServer::start_with(&PgOptions {
        wal_outside_data: true,
        ..PgOptions::statement_logging()
    })
    .unwrap();
    let data = pg.data_dir();
    assert!(
        data.join("pg_wal")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let ts = pg.make_dir("tblspc").unwrap();
    leaky_database(&pg, Some(&ts));
    pg.checkpoint().unwrap();
    let r = scan(&data);
    let c = channel(&r);
    // The control (default tablespace, under base/) is found.
    assert!(c.controls_missed.is_empty(), "{}", r.human());
    assert!(
        c.control_findings.iter().any(|f| f
            .artifact
            .starts_with(&data.join("base").display().to_string())),
        "{}",
        r.human()
    );
    // The leak, in a WAL segment behind pg_wal and in the heap file behind pg_tblspc.
    let wal = data.join("pg_wal").display().to_string();
    let tblspc = data.join("pg_tblspc").display().to_string();
    assert_leak_under(&r, &wal);
    assert_leak_under(&r, &tblspc);
    assert_eq!(r.status(), Status::Leak);
    // Both links are reported.
    for link in [format!("{wal} -> "), format!("{tblspc}/")] {
        assert!(
            c.links_followed.iter().any(|l| l.starts_with(&link)),
            "no link {link:?} in {:?}",
            c.links_followed
        );
    }
}

#[test]
fn the_lz4_frame_decoder_matches_the_reference_encoder() {
    use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
    use std::io::Read as _;
    // Compressible and incompressible stretches (stored blocks), several blocks, both block
    // modes, with and without checksums, two frames back to back.
    let mut data = Vec::new();
    for i in 0..40 {
        data.extend(
            format!("row {i}: {LEAK} / {CONTROL}\n")
                .repeat(50)
                .as_bytes(),
        );
        data.extend(filler(9000));
    }
    for (mode, checksums) in [(BlockMode::Linked, false), (BlockMode::Independent, true)] {
        let info = FrameInfo::new()
            .block_size(BlockSize::Max64KB)
            .block_mode(mode)
            .block_checksums(checksums)
            .content_checksum(checksums);
        let mut one = Vec::new();
        for _ in 0..2 {
            let mut e = FrameEncoder::with_frame_info(info.clone(), Vec::new());
            e.write_all(&data).unwrap();
            one.extend(e.finish().unwrap());
        }
        let mut out = Vec::new();
        Codec::Lz4
            .decoder(Box::new(Cursor::new(one)))
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out.len(), data.len() * 2);
        assert!(out[..data.len()] == data[..] && out[data.len()..] == data[..]);
    }
}

#[test]
fn a_truncated_zip_is_read_from_its_local_headers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.zip");
    let mut tail = sql();
    tail.extend(filler(100_000));
    let zip = zip_of(&[
        ("first.sql", &tail, zip::CompressionMethod::Deflated),
        ("second.sql", &tail, zip::CompressionMethod::Deflated),
    ]);
    // Cut inside the second member: the central directory is gone.
    std::fs::write(&path, &zip[..zip.len() * 3 / 4]).unwrap();
    let r = scan(&path);
    assert_leak_in(&r, &format!("{}!first.sql", path.display()));
    assert_error_contains(&r, "no readable zip central directory");
}

#[test]
fn an_error_message_never_carries_canary_bytes() {
    // A tar whose second header is well formed except for its size field, and whose name is
    // the leaked value: the tar reader's error would quote the name.
    let mut tar = tar_of(&[("control.txt", CONTROL.as_bytes())]);
    tar.truncate(tar.len() - 1024); // drop the end-of-archive blocks
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..LEAK.len()].copy_from_slice(LEAK.as_bytes());
    h.as_old_mut().size.copy_from_slice(b"zzzzzzzzzzz\0");
    h.set_cksum();
    tar.extend_from_slice(h.as_bytes());
    tar.extend_from_slice(&[0u8; 1024]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.tar");
    std::fs::write(&path, &tar).unwrap();
    let r = scan(&path);
    // The leak is reported (the raw header holds it) and the control is found.
    assert_leak_in(&r, &path.display().to_string());
    assert_error_contains(&r, "bad tar member");
    assert_error_contains(&r, "withheld: it held canary bytes");
    assert!(!r.human().contains(LEAK) && !r.to_json().unwrap().contains(LEAK));
    assert!(
        !channel(&r).errors.iter().any(|e| e.contains(LEAK_MARKER)),
        "{:?}",
        channel(&r).errors
    );
}

#[test]
fn scan_reader_keeps_the_findings_read_before_a_failure() {
    /// Delivers the dump, then fails.
    struct Failing(Cursor<Vec<u8>>);
    impl std::io::Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(std::io::Error::other("connection reset")),
                n => Ok(n),
            }
        }
    }
    let mut c = check();
    let result = c.scan_reader(CH, "socket", Failing(Cursor::new(sql())));
    assert!(result.is_err());
    let r = c.report();
    assert_leak_in(&r, "socket");
    assert_error_contains(&r, "socket: read failed: connection reset");
}

#[test]
fn pg_basebackups_compressed_with_lz4_and_zstd_are_seen_through() {
    let pg = crate::support::pg_server();
    leaky_database(&pg, None);
    pg.checkpoint().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (method, ext, view) in [("client-lz4", "lz4", "lz4"), ("server-zstd", "zst", "zstd")] {
        let out = dir.path().join(method);
        let status = std::process::Command::new(leakless_testkit::server::pg_tool("pg_basebackup"))
            .args([
                "-F",
                "t",
                "-X",
                "fetch",
                "--no-sync",
                "--compress",
                method,
                "-D",
            ])
            .arg(&out)
            .arg("-d")
            .arg(pg.url())
            .status()
            .unwrap();
        assert!(status.success(), "pg_basebackup --compress {method}");
        let tar = out.join(format!("base.tar.{ext}"));
        assert!(tar.is_file(), "{} missing", tar.display());
        let r = scan(&out);
        let prefix = format!("{}[{view}]!base/", tar.display());
        let c = channel(&r);
        assert!(
            c.control_findings
                .iter()
                .any(|f| f.artifact.starts_with(&prefix)),
            "control not found inside {prefix}:\n{}",
            r.human()
        );
        assert_leak_under(&r, &prefix);
        assert_clean_of_errors(&r);
    }
}

#[test]
fn a_member_too_large_for_memory_is_spooled_and_still_descended() {
    // An inner tar of more than 64 MiB (kept on disk, not in memory) inside an outer tar.
    let big = vec![b'x'; 70 << 20];
    let inner = tar_of(&[("padding.bin", &big), ("db.sql", &sql())]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outer.tar");
    std::fs::write(&path, tar_of(&[("inner.tar", &inner)])).unwrap();
    let r = scan(&path);
    assert_leak_in(&r, &format!("{}!inner.tar!db.sql", path.display()));
    assert_clean_of_errors(&r);
}
