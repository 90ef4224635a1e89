//! The unescaping pass: a value with escapes spread over it (JSON `\u0020`, C octal and `\x`,
//! quoted-printable, HTML entities, partial percent-encoding, and layers of them such as COPY's
//! doubling of JSON) is found by the plain needles after unescaping, reported with its number
//! of layers; invalid escapes neither panic nor hide a value; ordinary data (bytea hex COPY
//! lines) makes no region to rescan. Then on real servers, with positive controls: PostgreSQL
//! (data directory, WAL, plain `pg_dump`), MariaDB (data directory, binary log, `mysqldump`)
//! and SQLite.

use std::fmt::Write as _;

use leakless_leaktest::scan::{CHUNK, Hit};
use leakless_leaktest::unescape::{decode_layer, escape_mixed, regions, unescape};
use leakless_leaktest::{Canary, CanarySet, Encoding, LeakCheck, Report, Scanner};
use leakless_testkit::{DumpFormat, MariaServer};

use crate::support::CANARY_BYTES;

/// Short enough (22 bytes) to be one needle, so offsets are exact.
const SHORT: &str = "Flat 9, LKOFFSET01 Rd.";
/// Every 24-byte window (needle) holds a non-ASCII letter, a space and one of `&<>'`, so each
/// family below changes every needle.
const ADDRESS: &str = "Größe'n & <Straße> 5 LKUNESC001 Zü'r & <ich> ö'x & <y> é";

fn set() -> CanarySet {
    let mut set = CanarySet::new();
    set.push(Canary::text("addr", "LKUNESC001", ADDRESS).unwrap())
        .unwrap();
    set.push(Canary::text("short", "LKOFFSET01", SHORT).unwrap())
        .unwrap();
    set.push(Canary::text("emoji", "LKEMOJI001", "Ward 🏥 LKEMOJI001 🚑 bed 4").unwrap())
        .unwrap();
    set
}

fn scanner() -> &'static Scanner {
    static S: std::sync::OnceLock<Scanner> = std::sync::OnceLock::new();
    S.get_or_init(|| Scanner::new(set()).unwrap())
}

fn noise(len: usize) -> Vec<u8> {
    // Printable filler with no escape characters, so it makes no region of its own.
    (0..len)
        .map(|i| b"abcdefghij klmnop,qrstuv.wxyz\n"[i % 30])
        .collect()
}

fn hits(hay: &[u8]) -> Vec<Hit> {
    let mut v = Vec::new();
    scanner().scan_bytes(hay, |h| v.push(h));
    v
}

fn streamed(hay: &[u8]) -> Vec<Hit> {
    let mut v = Vec::new();
    scanner()
        .scan_reader(std::io::Cursor::new(hay), |h| v.push(h))
        .unwrap();
    v
}

fn planted(payload: &[u8]) -> Vec<u8> {
    let mut v = noise(333);
    v.extend_from_slice(b"{\"v\": \"");
    v.extend_from_slice(payload);
    v.extend_from_slice(b"\"}");
    v.extend(noise(111));
    v
}

/// The canary index `canary` is found after exactly `layers` layers, and not as stored.
fn assert_found_after(payload: &[u8], canary: usize, layers: u8, what: &str) {
    let h = hits(&planted(payload));
    assert!(
        h.iter()
            .any(|h| h.canary == canary && h.layers == layers && h.encoding == Encoding::Raw),
        "{what}: not found as raw after {layers} layers: {h:?}"
    );
    assert!(
        !h.iter().any(|h| h.canary == canary && h.layers == 0),
        "{what}: a needle matched as stored, so this test proves nothing: {h:?}"
    );
}

// Encoders for the test, each escaping only some characters (the rest stays plain).

fn c_octal(t: &str) -> Vec<u8> {
    let mut s = String::new();
    for &b in t.as_bytes() {
        if b.is_ascii() {
            s.push(char::from(b));
        } else {
            write!(s, "\\{b:03o}").unwrap();
        }
    }
    s.into_bytes()
}

fn python_repr(t: &str) -> Vec<u8> {
    let mut s = String::new();
    for &b in t.as_bytes() {
        match b {
            b'\'' => s.push_str("\\'"),
            b if b.is_ascii() => s.push(char::from(b)),
            b => write!(s, "\\x{b:02x}").unwrap(),
        }
    }
    s.into_bytes()
}

fn quoted_printable(t: &str) -> Vec<u8> {
    let mut s = String::new();
    for (i, &b) in t.as_bytes().iter().enumerate() {
        if i > 0 && i % 19 == 0 {
            s.push_str("=\r\n");
        }
        if b.is_ascii() && b != b'=' && b != b' ' {
            s.push(char::from(b));
        } else {
            write!(s, "={b:02X}").unwrap();
        }
    }
    s.into_bytes()
}

fn html_named(t: &str) -> Vec<u8> {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;")
        .replace('ö', "&ouml;")
        .replace('ß', "&szlig;")
        .replace('ü', "&uuml;")
        .replace(' ', "&#x20;")
        .into_bytes()
}

fn html_safe_json(t: &str) -> Vec<u8> {
    t.replace('&', "\\u0026")
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('\'', "\\u0027")
        .into_bytes()
}

/// Each character that is not an ASCII letter or digit escaped by the next family in turn.
fn mixed_families(t: &str) -> Vec<u8> {
    let mut s = String::new();
    let mut k = 0;
    for c in t.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c);
            continue;
        }
        let mut utf8 = [0u8; 4];
        let bytes = c.encode_utf8(&mut utf8).as_bytes().to_vec();
        match k % 5 {
            0 => write!(s, "\\u{:04x}", u32::from(c)).unwrap(),
            1 => write!(s, "&#{};", u32::from(c)).unwrap(),
            2 => bytes.iter().for_each(|b| write!(s, "={b:02X}").unwrap()),
            3 => bytes.iter().for_each(|b| write!(s, "%{b:02x}").unwrap()),
            _ if !c.is_ascii() => bytes.iter().for_each(|b| write!(s, "\\{b:03o}").unwrap()),
            _ => write!(s, "&#x{:x};", u32::from(c)).unwrap(),
        }
        k += 1;
    }
    s.into_bytes()
}

fn percent_some(t: &str) -> Vec<u8> {
    let mut s = Vec::new();
    for &b in t.as_bytes() {
        if b == b' ' || b == b'&' {
            s.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            s.push(b);
        }
    }
    s
}

#[test]
fn each_escape_family_alone_is_decoded_by_unescape() {
    let cases: [(&[u8], &str); 12] = [
        (br"Stra\u00dfe\u00205", "Straße 5"),
        (br#"a\"b\\c\/d\te\nf"#, "a\"b\\c/d\te\nf"),
        (br"Stra\303\237e", "Straße"),
        (br"Stra\xc3\x9fe 5", "Straße 5"),
        (br"\U0001F600!", "😀!"),
        (b"Stra=C3=9Fe=\r\n 5=20x", "Straße 5 x"),
        (
            b"&lt;a&gt; &amp; &quot;b&quot; &#39;c&#x27; &eacute;",
            "<a> & \"b\" 'c' é",
        ),
        (b"Stra%C3%9Fe%205, plain", "Straße 5, plain"),
        (br"\ud83c\udfe5", "🏥"),
        (br"\\u0020x", " x"),
        (b"%5C%5Cu0041", "A"),
        (b"plain text", "plain text"),
    ];
    for (input, want) in cases {
        let (out, _) = unescape(input);
        assert_eq!(
            String::from_utf8_lossy(&out),
            want,
            "{}",
            String::from_utf8_lossy(input)
        );
    }
    assert!(decode_layer(b"plain text, no escape").is_none());
    assert_eq!(unescape(br"\\u0020x").1, 2);
    assert_eq!(unescape(b"%5C%5Cu0041").1, 3);
}

#[test]
fn each_family_mixed_with_plain_characters_is_found_after_one_layer() {
    let libedit = ADDRESS
        .replace(' ', "\\040")
        .replace('\'', "\\047")
        .replace('&', "\\046");
    let families: [(&str, Vec<u8>); 8] = [
        ("libedit history, octal spaces", libedit.into_bytes()),
        (
            "json \\u0020 on spaces and punctuation",
            escape_mixed(ADDRESS, false).into_bytes(),
        ),
        ("c octal", c_octal(ADDRESS)),
        ("python bytes repr", python_repr(ADDRESS)),
        (
            "quoted-printable with soft breaks",
            quoted_printable(ADDRESS),
        ),
        ("html entities, named and numeric", html_named(ADDRESS)),
        ("html-safe json", html_safe_json(ADDRESS)),
        ("percent on some characters", percent_some(ADDRESS)),
    ];
    for (what, payload) in families {
        assert_found_after(&payload, 0, 1, what);
    }
    // Several families in one value.
    assert_found_after(&mixed_families(ADDRESS), 0, 1, "mixed families");
}

#[test]
fn escapes_of_different_families_far_apart_are_all_found() {
    // A quoted-printable value first, a JSON-escaped one far after it: the `=` escapes are
    // found in a pass of their own, and their regions must not be lost in the later ones.
    let mut hay = noise(5000);
    hay.extend(quoted_printable(ADDRESS));
    hay.extend(noise(20_000));
    hay.extend_from_slice(escape_mixed(SHORT, false).as_bytes());
    hay.extend(noise(5000));
    let h = hits(&hay);
    assert!(h.iter().any(|h| h.canary == 0 && h.layers == 1), "{h:?}");
    assert!(h.iter().any(|h| h.canary == 1 && h.layers == 1), "{h:?}");
    assert_eq!(regions(&hay, 100).len(), 2);
}

#[test]
fn copy_doubled_json_is_found_after_two_layers_and_three_layers_decode() {
    assert_found_after(escape_mixed(ADDRESS, true).as_bytes(), 0, 2, "COPY of JSON");
    // Percent-encoded COPY of JSON: three layers.
    let three = escape_mixed(SHORT, true).replace('\\', "%5C");
    assert_found_after(three.as_bytes(), 1, 3, "percent of COPY of JSON");
}

#[test]
fn surrogate_pairs_decode_and_a_lone_surrogate_stays() {
    let value = "Ward 🏥 LKEMOJI001 🚑 bed 4";
    assert_found_after(escape_mixed(value, false).as_bytes(), 2, 1, "surrogates");
    // `\U` form.
    let u = value
        .replace('🏥', "\\U0001F3E5")
        .replace('🚑', "\\U0001f691");
    assert_found_after(u.as_bytes(), 2, 1, "\\U escapes");
    let (out, _) = unescape(br"\ud83c x \udfe5 y \ud83c\u0041");
    assert_eq!(&out[..], br"\ud83c x \udfe5 y \ud83cA");
}

#[test]
fn offset_points_at_the_escape_that_decoded_to_the_first_byte() {
    let hay = planted(escape_mixed(SHORT, true).as_bytes());
    let at = 333 + b"{\"v\": \"".len();
    let h = hits(&hay);
    let found: Vec<&Hit> = h.iter().filter(|h| h.canary == 1).collect();
    assert_eq!(found.len(), 1, "{h:?}");
    assert_eq!(found[0].layers, 2);
    assert_eq!(found[0].offset, at as u64, "the first character is escaped");
    // The human report says how many layers.
    let mut check = LeakCheck::new(set()).unwrap();
    check.scan_bytes("logs", "app.log", &hay);
    let human = check.report().human();
    assert!(
        human.contains(&format!(
            "at offset {at}: canary short (marker LKOFFSET01) as raw after 2 unescaping layers"
        )),
        "{human}"
    );
    assert!(
        !human.contains(SHORT),
        "the report shows the value: {human}"
    );
    let json = check.report().to_json().unwrap();
    assert!(json.contains("\"layers\": 2"), "{json}");
    // The same value also stored plain elsewhere: two findings, told apart by their layers.
    let mut both = hay.clone();
    both.extend_from_slice(SHORT.as_bytes());
    let mut check = LeakCheck::new(set()).unwrap();
    check.scan_bytes("logs", "app.log", &both);
    let report = check.report();
    let layers: Vec<u8> = report
        .leaks()
        .filter(|f| f.canary_id == "short")
        .map(|f| f.layers)
        .collect();
    assert_eq!(layers, [0, 2], "{}", report.human());
}

#[test]
fn invalid_escapes_do_not_panic_nor_hide_a_value() {
    let junk: &[&[u8]] = &[
        b"\\",
        b"\\u12",
        b"\\u12G4",
        b"\\x",
        b"\\x4",
        b"\\xZZ",
        b"\\999",
        b"\\U0011FFFF",
        b"\\ud800\\u0041",
        b"\\udc00",
        b"&#xZZ;",
        b"&#;",
        b"&;",
        b"&#99999999;",
        b"&nosuch;",
        b"=G1",
        b"=",
        b"%",
        b"%4",
        b"&",
        b"=\r",
    ];
    for j in junk {
        for tail in [
            &b""[..],
            ADDRESS.as_bytes(),
            escape_mixed(ADDRESS, false).as_bytes(),
        ] {
            let mut hay = j.to_vec();
            hay.extend_from_slice(tail);
            let h = hits(&hay);
            if !tail.is_empty() {
                assert!(
                    h.iter().any(|h| h.canary == 0),
                    "{:?} hid the value",
                    String::from_utf8_lossy(j)
                );
            }
            let _ = unescape(&hay);
        }
    }
    // Random soup of escape characters: no panic, and decoding never grows the data.
    let alphabet = b"\\u0123dDxX%=&#;abcfF\r\n78UEuU";
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..3000 {
        let len = usize::try_from(x % 40).unwrap();
        let s: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                alphabet[usize::try_from(x % alphabet.len() as u64).unwrap()]
            })
            .collect();
        let (out, _) = unescape(&s);
        assert!(out.len() <= s.len());
        let _ = hits(&s);
    }
}

#[test]
fn an_escaped_value_split_across_a_chunk_boundary_is_found_once() {
    let payload = escape_mixed(ADDRESS, true);
    for back in [1usize, 7, 50, 120, payload.len() / 2, payload.len() - 3] {
        let mut hay = noise(CHUNK - back);
        hay.extend_from_slice(payload.as_bytes());
        hay.extend(noise(1000));
        let whole = hits(&hay);
        let mut chunked = streamed(&hay);
        let mut whole = whole;
        let key = |h: &Hit| (h.offset, h.canary, h.encoding, h.form, h.layers);
        whole.sort_by_key(key);
        chunked.sort_by_key(key);
        assert!(
            whole.iter().any(|h| h.canary == 0 && h.layers == 2),
            "not found at all (back {back})"
        );
        assert_eq!(whole, chunked, "chunked scan differs (back {back})");
    }
}

fn bytea_copy_lines(size: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(size + 2000);
    let mut row = 0u64;
    while out.len() < size {
        write!(
            Wrapper(&mut out),
            "{row:08x}-0000-4000-8000-{row:012x}\tPatient {row}\t"
        )
        .unwrap();
        for len in [120usize, 100, 32, 90, 250] {
            out.extend_from_slice(b"\\\\x");
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                out.extend_from_slice(hex::encode([u8::try_from(x & 0xff).unwrap()]).as_bytes());
            }
            out.push(b'\t');
        }
        // Short bytea values (printable first byte), NULLs, a JSON log line with plain escapes.
        out.extend_from_slice(
            b"\\\\x4c4b\t\\N\t{\"msg\": \"said \\\"hi\\\"\\n\", \"p\": \"a\\\\b\"}\n",
        );
        // A base64 line with padding at its end (`=\n` is not a soft line break to look at).
        out.extend_from_slice(b"QmFzZTY0IHBhZGRpbmc=\nQmFzZTY0IHBhZGRpbmcgdHdv==\n");
        row += 1;
    }
    out
}

struct Wrapper<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Wrapper<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[test]
fn bytea_hex_copy_lines_make_no_region_to_rescan() {
    let data = bytea_copy_lines(4 << 20);
    assert!(
        regions(&data, 100).is_empty(),
        "bytea COPY data made regions"
    );
    let fresh = Scanner::new(set()).unwrap();
    let mut n = 0;
    fresh
        .scan_reader(std::io::Cursor::new(&data), |_| n += 1)
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(fresh.unescaped_bytes(), 0, "bytea COPY data was rescanned");
    // Positive control: one escaped value in the same data makes one small region, found.
    let mut with = data.clone();
    let at = with.len() / 2;
    let payload = escape_mixed(ADDRESS, true);
    with.splice(at..at, payload.bytes());
    let mut found = false;
    fresh
        .scan_reader(std::io::Cursor::new(&with), |h| found |= h.canary == 0)
        .unwrap();
    assert!(found);
    let rescanned = fresh.unescaped_bytes();
    assert!(
        rescanned > 0 && rescanned < 4 * payload.len() as u64 + 1000,
        "rescanned {rescanned} bytes for one value of {}",
        payload.len()
    );
}

#[test]
fn self_test_plants_escaped_forms_and_finds_them() {
    let mut s = set();
    s.push(Canary::gps("gps", "LKGPS00009", 48.858_37, 2.294_481))
        .unwrap();
    s.push(Canary::bytes("bin", "LKBYTES009", &CANARY_BYTES))
        .unwrap();
    let scanner = Scanner::new(s).unwrap();
    let missed = leakless_leaktest::scan::self_test(&scanner);
    assert!(missed.is_empty(), "{missed:?}");
    assert!(
        scanner.unescaped_bytes() > 0,
        "the escaped plants were not unescaped"
    );
}

// Real servers. Each proves first that its channels show a plain positive control, then that
// a value stored with escapes is found only after unescaping.

fn db_set(marker_suffix: &str) -> (CanarySet, Canary, Canary) {
    let control = Canary::text(
        "control",
        &format!("LKCTRL{marker_suffix}"),
        &format!("Control LKCTRL{marker_suffix}, 1 Leaky Lane"),
    )
    .unwrap()
    .as_control();
    let escaped = Canary::text(
        "escaped",
        &format!("LKESCD{marker_suffix}"),
        &format!("Größere Straße 5, Flat LKESCD{marker_suffix} & Annex"),
    )
    .unwrap();
    let mut set = CanarySet::new();
    set.push(control.clone()).unwrap();
    set.push(escaped.clone()).unwrap();
    (set, control, escaped)
}

/// Scans each channel's paths (the control "control" expected in each), then
/// [`assert_escaped_found`] with the channel's layer count.
fn assert_escaped_found_in(set: CanarySet, channels: &[(&str, Vec<std::path::PathBuf>, u8)]) {
    let mut check = LeakCheck::new(set).unwrap();
    for (channel, paths, _) in channels {
        check.expect_control(channel, "control");
        for p in paths {
            check.scan_path(channel, p);
        }
    }
    let report = check.report();
    eprintln!("{}", report.human());
    for (channel, _, layers) in channels {
        assert_escaped_found(&report, channel, *layers);
    }
}

/// The channel showed its control, and the escaped canary only after unescaping, with at
/// least `min_layers` layers.
fn assert_escaped_found(report: &Report, channel: &str, min_layers: u8) {
    let human = report.human();
    let c = report.assert_controls_found(channel);
    assert!(
        c.leaks
            .iter()
            .any(|f| f.canary_id == "escaped" && f.layers >= min_layers),
        "{channel}: escaped value not found after {min_layers}+ layers: {human}"
    );
    assert!(
        !c.leaks
            .iter()
            .any(|f| f.canary_id == "escaped" && f.layers == 0),
        "{channel}: the escaped value matched as stored, the test proves nothing: {human}"
    );
}

#[test]
fn postgres_json_with_escaped_value_is_found_in_data_dir_wal_and_plain_dump() {
    let (set, control, escaped) = db_set("PG01");
    let pg = crate::support::pg_server();
    pg.sql("postgres", "CREATE DATABASE app").unwrap();
    pg.sql("app", "CREATE TABLE docs (id int, doc json, note text)")
        .unwrap();
    let json = format!(
        "{{\"address\": \"{}\"}}",
        escape_mixed(escaped.text_value().unwrap(), false)
    );
    pg.sql(
        "app",
        &format!(
            "INSERT INTO docs VALUES (1, '{}', '{}')",
            json.replace('\'', "''"),
            control.text_value().unwrap()
        ),
    )
    .unwrap();
    pg.checkpoint().unwrap();
    pg.sql("app", "SELECT pg_switch_wal()").unwrap();
    let out = tempfile::tempdir().unwrap();
    let dump = out.path().join("app.sql");
    pg.dump("app", DumpFormat::Plain, &dump).unwrap();
    let dumped = std::fs::read(&dump).unwrap();
    assert!(
        dumped.windows(7).any(|w| w == br"\\u0020"),
        "COPY did not double the backslashes"
    );

    assert_escaped_found_in(
        set,
        &[
            ("pg/data-dir", vec![pg.data_dir().join("base")], 1),
            ("pg/wal", vec![pg.wal_dir()], 1),
            ("pg/pg_dump-plain", vec![dump], 2),
        ],
    );
}

#[test]
fn mariadb_escaped_value_is_found_in_data_dir_binlog_and_dump() {
    let (set, control, escaped) = db_set("MY01");
    let my = MariaServer::start().unwrap();
    // In a MariaDB literal a backslash escapes: doubled, the stored text holds `\u0020`.
    let stored = escape_mixed(escaped.text_value().unwrap(), true);
    my.sql(
        "",
        &format!(
            "CREATE DATABASE app; USE app;
             CREATE TABLE docs (id INT PRIMARY KEY, doc TEXT, note TEXT) ENGINE=InnoDB;
             INSERT INTO docs VALUES (1, '{{\"address\": \"{stored}\"}}', '{}');",
            control.text_value().unwrap()
        ),
    )
    .unwrap();
    my.flush_logs().unwrap();
    let out = tempfile::tempdir().unwrap();
    let dump = out.path().join("app.sql");
    my.dump("app", &dump).unwrap();

    let binlogs = my.binlogs();
    assert!(!binlogs.is_empty());
    assert_escaped_found_in(
        set,
        &[
            ("my/mysqldump", vec![dump], 2),
            ("my/binlog", binlogs, 1),
            ("my/data-dir", vec![my.data_dir()], 1),
        ],
    );
}

#[test]
fn sqlite_escaped_value_is_found_in_the_database_file() {
    use diesel::prelude::*;

    let (set, control, escaped) = db_set("SQ01");
    let (_dir, db, mut conn) = crate::support::sqlite_in_tempdir("app.db");
    diesel::sql_query("CREATE TABLE docs (id INTEGER PRIMARY KEY, doc TEXT, note TEXT)")
        .execute(&mut conn)
        .unwrap();
    diesel::sql_query(format!(
        "INSERT INTO docs VALUES (1, '{{\"address\": \"{}\"}}', '{}')",
        escape_mixed(escaped.text_value().unwrap(), false),
        control.text_value().unwrap()
    ))
    .execute(&mut conn)
    .unwrap();
    drop(conn);
    assert_escaped_found_in(set, &[("sqlite/file", vec![db], 1)]);
}

#[test]
fn data_dense_with_escapes_is_decoded_whole_and_its_value_found() {
    // 2 MiB of JSON text with every non-ASCII letter escaped: one region per chunk, decoded
    // whole; the value in the middle of it is found, across the streaming chunks.
    let mut data = Vec::with_capacity(2 << 20);
    while data.len() < 2 << 20 {
        data.extend_from_slice(br#"{"city": "M\u00fcnchen", "street": "Stra\u00dfe"}, "#);
    }
    let at = data.len() / 2;
    data.splice(at..at, escape_mixed(ADDRESS, false).bytes());
    let fresh = Scanner::new(set()).unwrap();
    let mut found = Vec::new();
    let t = std::time::Instant::now();
    fresh
        .scan_reader(std::io::Cursor::new(&data), |h| found.push(h))
        .unwrap();
    eprintln!("dense: {} bytes in {:.2?}", data.len(), t.elapsed());
    assert!(
        found.iter().any(|h| h.canary == 0 && h.layers == 1),
        "{found:?}"
    );
    assert!(
        fresh.unescaped_bytes() >= data.len() as u64,
        "dense data was not decoded whole: {}",
        fresh.unescaped_bytes()
    );
}
