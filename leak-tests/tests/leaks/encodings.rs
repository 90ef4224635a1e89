//! Every encoding: a canary planted in that encoding, inside noise, at odd offsets and across a
//! chunk boundary, is found and reported under that encoding; the sealed form (an envelope)
//! and clean noise have no finding.

use crate::support::{CANARY_BYTES, ring_with_scope};
use leakless::{FieldContext, FieldPolicy, RowId};
use leakless_leaktest::encode::{base64, json_escape, percent, sql_escape};
use leakless_leaktest::scan::{CHUNK, Collector, Engine, Hit};
use leakless_leaktest::{Canary, CanarySet, Encoding, Scanner};

const ADDRESS: &str =
    "17 O'Brien's Lantern Row, Flat LKQ7M2X9PA, Exampleton EX1 4QT, Größere Straße \"B\"";

fn transcript() -> String {
    let mut s = String::from("Consultation LKTR4NSCR1: ");
    let words = [
        "patient",
        "reports",
        "über",
        "intermittent",
        "headaches",
        "résumé",
    ];
    let mut i = 0;
    while s.len() < 3000 {
        s.push_str(words[i % words.len()]);
        s.push_str(if i % 7 == 0 { ", " } else { " " });
        i += 1;
    }
    s
}

fn set() -> CanarySet {
    static SET: std::sync::OnceLock<CanarySet> = std::sync::OnceLock::new();
    SET.get_or_init(make_set).clone()
}

fn make_set() -> CanarySet {
    let mut set = CanarySet::new();
    set.push(Canary::text("addr", "LKQ7M2X9PA", ADDRESS).unwrap())
        .unwrap();
    set.push(Canary::transcript("tr", "LKTR4NSCR1", &transcript()).unwrap())
        .unwrap();
    set.push(Canary::gps("gps", "LKGPS00001", 51.507_412_3, -0.127_691_7))
        .unwrap();
    set.push(Canary::bytes("bin", "LKBYTES001", &CANARY_BYTES))
        .unwrap();
    set
}

fn scanner() -> &'static Scanner {
    static S: std::sync::OnceLock<Scanner> = std::sync::OnceLock::new();
    S.get_or_init(|| Scanner::new(set()).unwrap())
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            u8::try_from(x & 0xff).unwrap()
        })
        .collect()
}

fn gram_scanner() -> &'static Scanner {
    static S: std::sync::OnceLock<Scanner> = std::sync::OnceLock::new();
    S.get_or_init(|| Scanner::with_engine(set(), Some(Engine::GramFilter)).unwrap())
}

fn ac_scanner() -> &'static Scanner {
    static S: std::sync::OnceLock<Scanner> = std::sync::OnceLock::new();
    S.get_or_init(|| Scanner::with_engine(set(), Some(Engine::AhoCorasick)).unwrap())
}

/// The hits of `scanner`; also checks that both engines report exactly the same hits.
fn hits(this: &Scanner, hay: &[u8]) -> Vec<Hit> {
    let run = |s: &Scanner| {
        let mut v = Vec::new();
        s.scan_reader(std::io::Cursor::new(hay), |h| v.push(h))
            .unwrap();
        v.sort_by_key(|h| (h.offset, h.canary, h.encoding, h.form));
        v
    };
    let v = run(this);
    if std::ptr::eq(this, scanner()) {
        assert_eq!(run(ac_scanner()), v, "the Aho-Corasick engine disagrees");
        assert_eq!(run(gram_scanner()), v, "the gram-filter engine disagrees");
    }
    v
}

fn planted(payload: &[u8], prefix: usize) -> Vec<u8> {
    let mut v = noise(prefix, prefix as u64);
    v.extend_from_slice(payload);
    v.extend(noise(777, 3));
    v
}

/// The index of the canary `id` in the scanner's set (what a [`Hit`] names).
fn canary_index(scanner: &Scanner, id: &str) -> usize {
    scanner
        .canaries()
        .canaries
        .iter()
        .position(|c| c.id == id)
        .unwrap()
}

fn assert_found(scanner: &Scanner, canary: &str, encoding: Encoding, payload: &[u8]) {
    let idx = canary_index(scanner, canary);
    for prefix in [0, 1, 2, 3, 1001] {
        let hay = planted(payload, prefix);
        let found = hits(scanner, &hay);
        assert!(
            found
                .iter()
                .any(|h| h.canary == idx && h.encoding == encoding),
            "{canary} as {encoding} at prefix {prefix} not found: {found:?}"
        );
        assert!(
            found
                .iter()
                .all(|h| h.canary == idx && h.offset >= prefix as u64),
            "stray or misplaced hit: {found:?}"
        );
    }
}

fn utf16(s: &str, le: bool) -> Vec<u8> {
    s.encode_utf16()
        .flat_map(|u| if le { u.to_le_bytes() } else { u.to_be_bytes() })
        .collect()
}

#[test]
fn every_text_encoding_is_found() {
    let scanner = scanner();
    let a = ADDRESS;
    let cases: Vec<(Encoding, Vec<u8>)> = vec![
        (Encoding::Raw, a.as_bytes().to_vec()),
        (Encoding::CaseFolded, a.to_lowercase().into_bytes()),
        (Encoding::CaseFolded, a.to_uppercase().into_bytes()),
        (Encoding::Utf16Le, utf16(a, true)),
        (Encoding::Utf16Be, utf16(a, false)),
        (Encoding::HexLower, hex::encode(a).into_bytes()),
        (Encoding::HexUpper, hex::encode_upper(a).into_bytes()),
        (
            Encoding::PgBytea,
            format!("'\\x{}'::bytea", hex::encode(a)).into_bytes(),
        ),
        (Encoding::Percent, percent(a.as_bytes(), false)),
        (Encoding::FormUrlencoded, percent(a.as_bytes(), true)),
        (Encoding::Json, serde_json::to_vec(a).unwrap()),
        (Encoding::JsonAscii, json_escape(a, true)),
        (Encoding::SqlQuoted, sql_escape(a, false)),
        (Encoding::SqlBackslash, sql_escape(a, true)),
    ];
    for (enc, payload) in cases {
        assert_found(scanner, "addr", enc, &payload);
    }
}

#[test]
fn base64_is_found_at_every_alignment_in_both_alphabets() {
    let scanner = scanner();
    for url in [false, true] {
        for lead in ["", "x", "xy"] {
            let blob = [lead.as_bytes(), ADDRESS.as_bytes(), b"tail"].concat();
            let text = base64(&blob, url);
            let enc = if url && text.contains(['-', '_']) {
                Encoding::Base64Url
            } else {
                Encoding::Base64
            };
            assert_found(scanner, "addr", enc, text.as_bytes());
        }
    }
}

#[test]
fn any_window_of_a_transcript_is_found() {
    let scanner = scanner();
    let t = transcript();
    // Every 47-byte window on char boundaries, stepping through the value.
    let bytes = t.as_bytes();
    let mut start = 0;
    while start + 47 <= bytes.len() {
        if t.is_char_boundary(start) && t.is_char_boundary(start + 47) {
            assert_found_once(scanner, "tr", &bytes[start..start + 47]);
        }
        start += 13;
    }
    // Encoded windows too.
    let w = &t[100..180];
    assert_found(scanner, "tr", Encoding::Utf16Le, &utf16(w, true));
    assert_found(
        scanner,
        "tr",
        Encoding::Base64,
        base64(&t.as_bytes()[301..500], false).as_bytes(),
    );
    assert_found(
        scanner,
        "tr",
        Encoding::HexUpper,
        hex::encode_upper(&t.as_bytes()[1000..1100]).as_bytes(),
    );
    // A window shorter than the documented length is not promised; a short common phrase
    // must not be a hit.
    assert!(hits(scanner, b"patient reports").is_empty());
}

fn assert_found_once(scanner: &Scanner, canary: &str, window: &[u8]) {
    let hay = planted(window, 33);
    let idx = canary_index(scanner, canary);
    assert!(hits(scanner, &hay).iter().any(|h| h.canary == idx));
}

#[test]
fn gps_forms_are_found() {
    let scanner = scanner();
    let (lat, lon) = (51.507_412_3f64, -0.127_691_7f64);
    let cases: Vec<(Encoding, Vec<u8>)> = vec![
        (Encoding::Raw, format!("lat={lat}").into_bytes()),
        (
            Encoding::Raw,
            format!("at {lat:.5},{lon:.5} now").into_bytes(),
        ),
        (Encoding::Raw, format!("{lat:.6}, {lon:.6}").into_bytes()),
        (
            Encoding::Raw,
            format!("SRID=4326;POINT({lon:.7} {lat:.7})").into_bytes(),
        ),
        (
            Encoding::Raw,
            format!("{{\"type\":\"Point\",\"coordinates\":[{lon:.4},{lat:.4}]}}").into_bytes(),
        ),
        (
            Encoding::Raw,
            format!("{{\"lat\":{lat},\"lon\":{lon}}}").into_bytes(),
        ),
        (
            Encoding::Utf16Le,
            utf16(&format!("{lat:.6},{lon:.6}"), true),
        ),
        (Encoding::F64Le, lat.to_le_bytes().to_vec()),
        (Encoding::F64Be, lon.to_be_bytes().to_vec()),
        (
            Encoding::F64Be,
            [lat.to_be_bytes(), lon.to_be_bytes()].concat(),
        ),
        (Encoding::Raw, format!("x={lat:.9}").into_bytes()),
        (Encoding::Raw, format!("{lon:.10}").into_bytes()),
        // A `real` column prints the f32's shortest text.
        (
            Encoding::Raw,
            format!("{}", lat.to_string().parse::<f32>().unwrap()).into_bytes(),
        ),
        (
            Encoding::F32Le,
            [
                lon.to_string().parse::<f32>().unwrap().to_le_bytes(),
                lat.to_string().parse::<f32>().unwrap().to_le_bytes(),
            ]
            .concat(),
        ),
        (
            Encoding::Raw,
            "51\u{b0}30'26.7\"N 0\u{b0}07'39.7\"W".as_bytes().to_vec(),
        ),
        (Encoding::Raw, b"(51d30'27\"N)".to_vec()),
        (Encoding::Raw, b"0 07'39.7\"W".to_vec()),
        (Encoding::Raw, "0\u{b0}07'39.69\"W".as_bytes().to_vec()),
        (Encoding::Json, b"\"0d07'39.7\\\"W\"".to_vec()),
        (Encoding::Raw, "51\u{b0}30.4447'".as_bytes().to_vec()),
        (Encoding::Raw, b"W0 07.6615".to_vec()),
    ];
    for (enc, payload) in cases {
        assert_found(scanner, "gps", enc, &payload);
    }
}

#[test]
fn a_value_across_a_chunk_boundary_is_found_once_per_position() {
    let scanner = scanner();
    for prefix in [CHUNK - 40, CHUNK - 5, CHUNK, 2 * CHUNK - 1] {
        let hay = planted(ADDRESS.as_bytes(), prefix);
        let found = hits(scanner, &hay);
        let raw: Vec<_> = found
            .iter()
            .filter(|h| h.encoding == Encoding::Raw)
            .collect();
        assert!(!raw.is_empty(), "prefix {prefix}: {found:?}");
        assert!(raw.iter().any(|h| h.offset == prefix as u64));
        // No match is reported twice (once per chunk) at the same place.
        let mut offsets: Vec<u64> = raw.iter().map(|h| h.offset).collect();
        let n = offsets.len();
        offsets.sort_unstable();
        offsets.dedup();
        assert_eq!(offsets.len(), n, "duplicate hits at prefix {prefix}");
    }
}

#[test]
fn byte_values_are_found() {
    let scanner = scanner();
    let b = CANARY_BYTES;
    assert_found(scanner, "bin", Encoding::Raw, &b);
    assert_found(
        scanner,
        "bin",
        Encoding::HexLower,
        hex::encode(b).as_bytes(),
    );
    assert_found(
        scanner,
        "bin",
        Encoding::PgBytea,
        format!("\\x{}", hex::encode(b)).as_bytes(),
    );
}

#[test]
fn sealed_values_and_noise_are_clean() {
    let set = set();
    let scanner = scanner();
    assert!(hits(scanner, &noise(3 * CHUNK + 17, 99)).is_empty());
    // The same values sealed by leakless, in every binary encoding a dump would use.
    let (ring, scope) = ring_with_scope("patients");
    let mut hay = Vec::new();
    for (i, c) in set.canaries.iter().enumerate() {
        let plain = match c.gps_value() {
            Some((lat, lon)) => format!("{lat},{lon}").into_bytes(),
            None => c.raw_bytes().unwrap().to_vec(),
        };
        let ctx = FieldContext::new("patients", "f", RowId::Int(i64::try_from(i).unwrap()), 1);
        let env = ring
            .seal(&scope, &ctx, &plain, &FieldPolicy::default())
            .unwrap();
        hay.extend_from_slice(&env);
        hay.extend_from_slice(hex::encode(&env).as_bytes());
        hay.extend_from_slice(base64(&env, false).as_bytes());
        hay.extend_from_slice(format!("\\x{}", hex::encode(&env)).as_bytes());
    }
    assert!(!hay.is_empty());
    assert!(hits(scanner, &hay).is_empty());
}

#[test]
fn findings_name_the_canary_never_the_value() {
    let set = set();
    let scanner = scanner();
    let hay = planted(ADDRESS.as_bytes(), 10);
    let mut col = Collector::new();
    scanner.scan_bytes(&hay, |h| col.add(h));
    let f = col.findings(&set, "test", "memory");
    assert!(!f.is_empty());
    assert!(
        f.iter()
            .all(|f| f.canary_id == "addr" && f.marker == "LKQ7M2X9PA"),
        "{f:?}"
    );
    let raw = f.iter().find(|f| f.encoding == Encoding::Raw).unwrap();
    assert_eq!(raw.offset, 10);
    let shown = format!(
        "{f:?} {} {:?} {scanner:?}",
        serde_json::to_string(&f).unwrap(),
        set
    );
    assert!(!shown.contains("Lantern"), "{shown}");
}

#[test]
fn bad_canaries_are_refused() {
    assert!(Canary::text("a", "LKMARKER01", "no marker here").is_err());
    let mut set = CanarySet::new();
    set.push(Canary::text("a", "LKMARKER01", "x LKMARKER01 y, 1 Test Street").unwrap())
        .unwrap();
    assert!(
        set.push(Canary::text("a", "LKMARKER02", "x LKMARKER02 y, 1 Test Street").unwrap())
            .is_err()
    );
    assert!(set.push(Canary::gps("g", "LKG", 95.0, 0.0)).is_err());
    assert!(set.push(Canary::bytes("b", "LKB", &[1, 2, 3])).is_err());
    // A marker that is most of its value would print the value in every report.
    assert!(
        set.push(Canary::text("m", "LKMARKER03", "x LKMARKER03 y").unwrap())
            .is_err()
    );
    let err = CanarySet::from_json("{\"canaries\": [ {\"id\": 1 ").unwrap_err();
    assert!(err.to_string().contains("line 1"), "{err}");
}

#[test]
fn canaries_round_trip_through_json_and_come_from_a_manifest() {
    let text = set().to_json().unwrap();
    let back = CanarySet::from_json(&text).unwrap();
    assert_eq!(back, set());
    let manifest: leakless::manifest::SchemaManifest = serde_json::from_value(serde_json::json!({
        "format": 1,
        "tables": [{
            "table": "patients", "row_id_column": "id", "row_id_kind": "text",
            "schema_version": 1, "scope": {"kind": "static", "scope": "patients"},
            "columns": [
                {"column": "address", "algorithm": "aes256gcm", "encoding": "string", "padding": {"kind": "power_of_two", "min": 32, "cap": 4096}, "nullable": false, "blind_index": null},
                {"column": "gps", "algorithm": "xchacha20poly1305", "encoding": "json", "padding": {"kind": "power_of_two", "min": 32, "cap": 4096}, "nullable": false, "blind_index": null},
                {"column": "transcript", "algorithm": "xchacha20poly1305", "encoding": "string", "padding": {"kind": "power_of_two", "min": 32, "cap": 4096}, "nullable": true, "blind_index": null}
            ]
        }]
    }))
    .unwrap();
    let generated = CanarySet::from_manifest(&manifest, 2).unwrap();
    assert_eq!(generated.len(), 6);
    assert!(
        generated
            .get("patients.gps#1")
            .unwrap()
            .gps_value()
            .is_some()
    );
    assert!(
        generated
            .get("patients.transcript#0")
            .unwrap()
            .text_value()
            .unwrap()
            .len()
            >= 2600
    );
    Scanner::new(generated).unwrap();
}

/// A chunk scanned on several threads reports exactly what one thread reports: each value
/// once, wherever it sits against the pieces' seams (values planted every 7,919 bytes over
/// 3 MiB, raw, escaped with `\u0020` and as UTF-16, so some straddle every seam).
#[test]
fn threads_split_a_chunk_without_losing_or_repeating_a_match() {
    let mut hay = noise(3 * CHUNK + 12_345, 99);
    let escaped = ADDRESS.replace(' ', "\\u0020");
    let forms = [
        ADDRESS.as_bytes().to_vec(),
        escaped.into_bytes(),
        utf16(ADDRESS, true),
    ];
    let mut plants = Vec::new();
    let mut at = 0usize;
    while at + 200 < hay.len() {
        let form = &forms[plants.len() % forms.len()];
        hay[at..at + form.len()].copy_from_slice(form);
        plants.push(at..at + form.len());
        at += 7_919;
    }
    let run = |threads: usize| {
        let mut s = Scanner::new(set()).unwrap();
        s.set_threads(threads);
        assert_eq!(s.threads(), threads);
        let mut v = Vec::new();
        s.scan_reader(std::io::Cursor::new(&hay), |h| v.push(h))
            .unwrap();
        v.sort_by_key(|h| (h.offset, h.canary, h.encoding, h.form, h.layers));
        v
    };
    let one = run(1);
    let address = canary_index(scanner(), "addr");
    for p in &plants {
        assert!(
            one.iter()
                .any(|h| h.canary == address && p.contains(&usize::try_from(h.offset).unwrap())),
            "the value planted at {p:?} was not found"
        );
    }
    let mut places: Vec<_> = one
        .iter()
        .map(|h| (h.offset, h.canary, h.encoding, h.form))
        .collect();
    let n = places.len();
    places.dedup();
    assert_eq!(places.len(), n, "a match reported twice");
    for threads in [2, 3, 4] {
        assert_eq!(run(threads), one, "{threads} threads differ from one");
    }
}
