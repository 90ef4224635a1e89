//! Turning canaries into needles: every encoding a value could take on its way into a file.
//!
//! For a text value the encodings are: raw UTF-8, lower- and upper-cased (Unicode case folding,
//! [`Encoding::CaseFolded`]), UTF-16LE and UTF-16BE, hex in both cases (PostgreSQL's `\x` bytea
//! form is hex after `\x` and is reported as [`Encoding::PgBytea`]), base64 standard and
//! URL-safe at all three byte alignments, percent-encoding (`%20` and form `+`), JSON string
//! escaping (as written by serde_json, and the ASCII-only `\u00fc` form), and SQL string
//! literal escaping (standard `''` and MySQL's backslash form).
//!
//! A GPS point becomes several [`Form`]s: each coordinate as decimal text at 4 to 10 decimals
//! and at full precision, the pair as `lat,lon` / `lat, lon`, a WKT `POINT(lon lat)`, a GeoJSON
//! `[lon,lat]`, a JSON object `"lat":..,"lon":..`, the IEEE-754 f64 bytes of each
//! coordinate in both byte orders, the f32 bytes of the pair (adjacent `real`/`FLOAT` columns)
//! and the f32's shortest text, PostgreSQL's on-disk `numeric` ([`pg_numeric`]) and MariaDB's
//! binary `DECIMAL` ([`mariadb_decimal`]) of the pair, and degrees/minutes(/seconds) text.
//! Text forms then go through the text encodings.
//!
//! Long values are cut: every encoded form longer than [`WINDOW`] bytes times the encoding's
//! expansion is split into consecutive fragments of that length, and each fragment is a needle
//! of its own. So **any contiguous run of `2 * WINDOW - 1` = 47 source bytes of a value (a
//! window of a transcript, half an address) is found in every encoding**, not only the whole
//! value. Needles shorter than [`MIN_NEEDLE_LEN`] bytes are dropped (a canary whose every needle
//! is shorter is refused when it is added).

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::Error;
use crate::canary::{Canary, CanaryKind};

/// The fragment length, in source bytes, for long values. Any leaked run of `2 * WINDOW - 1`
/// source bytes contains one whole fragment.
pub const WINDOW: usize = 24;

/// The shortest needle searched for, in encoded bytes.
pub const MIN_NEEDLE_LEN: usize = 8;

/// How a value was encoded where it was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    /// The UTF-8 bytes (or a byte value's raw bytes) as they are.
    Raw,
    /// Lower- or upper-cased text (Unicode case mapping), as UTF-8.
    CaseFolded,
    /// UTF-16, little-endian.
    Utf16Le,
    /// UTF-16, big-endian.
    Utf16Be,
    /// Lowercase hexadecimal.
    HexLower,
    /// Uppercase hexadecimal.
    HexUpper,
    /// PostgreSQL's bytea hex form: `\x` followed by lowercase hex.
    PgBytea,
    /// Standard base64 (RFC 4648 section 4), any alignment.
    Base64,
    /// URL-safe base64 (RFC 4648 section 5), any alignment.
    Base64Url,
    /// Percent-encoding (`%20` for a space, uppercase hex).
    Percent,
    /// Form encoding (`application/x-www-form-urlencoded`: `+` for a space).
    FormUrlencoded,
    /// A JSON string body as serde_json writes it (non-ASCII as UTF-8).
    Json,
    /// A JSON string body with non-ASCII as `\uXXXX` escapes.
    JsonAscii,
    /// An SQL string literal body, quotes doubled (`''`).
    SqlQuoted,
    /// A MySQL string literal body, backslash escapes (`\'`, `\\`, `\n`).
    SqlBackslash,
    /// The IEEE-754 binary64 bytes of a coordinate, little-endian.
    F64Le,
    /// The IEEE-754 binary64 bytes of a coordinate, big-endian.
    F64Be,
    /// The IEEE-754 binary32 bytes of a coordinate pair, little-endian.
    F32Le,
    /// The IEEE-754 binary32 bytes of a coordinate pair, big-endian.
    F32Be,
    /// PostgreSQL's on-disk `numeric`: a short varlena header, the short numeric header
    /// (sign, display scale, weight) and base-10000 digits as little-endian int16.
    PgNumeric,
    /// MariaDB/MySQL's binary `DECIMAL(p,s)` (`decimal2bin`): 9-digit groups big-endian, top
    /// bit flipped, all bits inverted for a negative number.
    MariadbDecimal,
}

impl Encoding {
    /// Every encoding, in report order.
    pub const ALL: [Encoding; 21] = {
        let [f64_le, f64_be, f32_le, f32_be, pg_numeric, mariadb_decimal] = Self::NUMBER_FORMS;
        [
            Encoding::Raw,
            Encoding::CaseFolded,
            Encoding::Utf16Le,
            Encoding::Utf16Be,
            Encoding::HexLower,
            Encoding::HexUpper,
            Encoding::PgBytea,
            Encoding::Base64,
            Encoding::Base64Url,
            Encoding::Percent,
            Encoding::FormUrlencoded,
            Encoding::Json,
            Encoding::JsonAscii,
            Encoding::SqlQuoted,
            Encoding::SqlBackslash,
            f64_le,
            f64_be,
            f32_le,
            f32_be,
            pg_numeric,
            mariadb_decimal,
        ]
    };

    /// The binary forms of a number (a GPS coordinate pair): IEEE-754 both ways and both
    /// widths, and the two databases' on-disk decimals. The last entries of [`Self::ALL`].
    pub const NUMBER_FORMS: [Encoding; 6] = [
        Encoding::F64Le,
        Encoding::F64Be,
        Encoding::F32Le,
        Encoding::F32Be,
        Encoding::PgNumeric,
        Encoding::MariadbDecimal,
    ];

    /// The name used in reports and JSON (`utf-16le`, `base64-url`, ...).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Raw => "raw",
            Encoding::CaseFolded => "case-folded",
            Encoding::Utf16Le => "utf-16le",
            Encoding::Utf16Be => "utf-16be",
            Encoding::HexLower => "hex-lower",
            Encoding::HexUpper => "hex-upper",
            Encoding::PgBytea => "pg-bytea",
            Encoding::Base64 => "base64",
            Encoding::Base64Url => "base64-url",
            Encoding::Percent => "percent",
            Encoding::FormUrlencoded => "form-urlencoded",
            Encoding::Json => "json",
            Encoding::JsonAscii => "json-ascii",
            Encoding::SqlQuoted => "sql-quoted",
            Encoding::SqlBackslash => "sql-backslash",
            Encoding::F64Le => "f64-le",
            Encoding::F64Be => "f64-be",
            Encoding::F32Le => "f32-le",
            Encoding::F32Be => "f32-be",
            Encoding::PgNumeric => "pg-numeric",
            Encoding::MariadbDecimal => "mariadb-decimal",
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which form of a value a needle came from: the value itself, or a GPS rendering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "form", content = "decimals")]
pub enum Form {
    /// The value (text or bytes), whole or a fragment.
    Value,
    /// One coordinate as decimal text (`None`: shortest round-trip form).
    Decimal(Option<u8>),
    /// `lat,lon` or `lat, lon`.
    Pair(Option<u8>),
    /// WKT `POINT(lon lat)`.
    Wkt(Option<u8>),
    /// GeoJSON `[lon,lat]`.
    GeoJson(Option<u8>),
    /// A JSON object `"lat":..,"lon":..`.
    JsonObject(Option<u8>),
    /// One coordinate's f64 bytes.
    F64,
    /// The pair's f32 bytes, as two adjacent `real`/`FLOAT` columns (lat then lon, or lon then
    /// lat). A lone f32 is 4 bytes, too short to search for.
    F32Pair,
    /// One coordinate as the shortest decimal text of its f32 value (what a `real` column
    /// prints).
    DecimalF32,
    /// `lat,lon` or `lat, lon` of the f32 values' shortest decimal text.
    PairF32,
    /// Degrees, minutes and seconds with a hemisphere letter (`51°30'26.7"N`, `51d30'26.7"N`,
    /// `51 30'26.7"N`); the number is the seconds' decimals.
    Dms(Option<u8>),
    /// Degrees and decimal minutes (`51°30.4452'`, `N51 30.4452`); the number is the minutes'
    /// decimals.
    DegMin(Option<u8>),
}

impl fmt::Display for Form {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, d) = match self {
            Form::Value => return f.write_str("value"),
            Form::F64 => return f.write_str("f64"),
            Form::F32Pair => return f.write_str("f32-pair"),
            Form::DecimalF32 => return f.write_str("decimal/f32"),
            Form::PairF32 => return f.write_str("pair/f32"),
            Form::Dms(d) => ("dms", d),
            Form::DegMin(d) => ("deg-min", d),
            Form::Decimal(d) => ("decimal", d),
            Form::Pair(d) => ("pair", d),
            Form::Wkt(d) => ("wkt", d),
            Form::GeoJson(d) => ("geojson", d),
            Form::JsonObject(d) => ("json-object", d),
        };
        match d {
            Some(d) => write!(f, "{name}/{d}dp"),
            None => write!(f, "{name}/full"),
        }
    }
}

/// One needle: the bytes to look for and what they stand for.
pub struct Needle {
    /// Index of the canary in its set.
    pub canary: usize,
    /// The form of the value.
    pub form: Form,
    /// The encoding.
    pub encoding: Encoding,
    /// The bytes (zeroized on drop).
    pub bytes: Zeroizing<Vec<u8>>,
}

leakless::debug_fields!(Needle, |n| {
    "canary": n.canary,
    "form": n.form,
    "encoding": n.encoding,
    "len": n.bytes.len(),
});

const B64_STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64_URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 of whole 3-byte groups only (a trailing partial group is dropped, no padding).
fn base64_groups(bytes: &[u8], alphabet: &[u8; 64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() / 3 * 4);
    for g in bytes.chunks_exact(3) {
        let v = u32::from(g.first().copied().unwrap_or(0)) << 16
            | u32::from(g.get(1).copied().unwrap_or(0)) << 8
            | u32::from(g.get(2).copied().unwrap_or(0));
        for shift in [18u32, 12, 6, 0] {
            let i = usize::try_from((v >> shift) & 0x3f).unwrap_or(0);
            out.push(alphabet.get(i).copied().unwrap_or(b'='));
        }
    }
    out
}

/// Standard base64 with padding (RFC 4648 section 4), for tests and controls.
#[must_use]
pub fn base64(bytes: &[u8], url_safe: bool) -> String {
    let alphabet = if url_safe { B64_URL } else { B64_STD };
    let whole = bytes.len() / 3 * 3;
    let (head, tail) = bytes.split_at(whole);
    let mut out = base64_groups(head, alphabet);
    if !tail.is_empty() {
        let mut g = [0u8; 3];
        for (d, s) in g.iter_mut().zip(tail) {
            *d = *s;
        }
        let enc = base64_groups(&g, alphabet);
        let keep = tail.len() + 1;
        out.extend(enc.iter().take(keep));
        if !url_safe {
            out.extend(std::iter::repeat_n(b'=', 4 - keep));
        }
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Percent-encoding of everything but RFC 3986 unreserved characters; `form` writes a space as
/// `+`.
#[must_use]
pub fn percent(bytes: &[u8], form: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else if form && b == b' ' {
            out.push(b'+');
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// The body of a JSON string literal; `ascii` escapes non-ASCII as `\uXXXX` (UTF-16 units).
#[must_use]
pub fn json_escape(text: &str, ascii: bool) -> Vec<u8> {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c if ascii && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.into_bytes()
}

/// The body of an SQL string literal: standard (`'` doubled) or MySQL backslash escapes.
#[must_use]
pub fn sql_escape(text: &str, backslash: bool) -> Vec<u8> {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match (c, backslash) {
            ('\'', false) => out.push_str("''"),
            ('\'', true) => out.push_str("\\'"),
            ('\\', true) => out.push_str("\\\\"),
            ('\n', true) => out.push_str("\\n"),
            ('\r', true) => out.push_str("\\r"),
            ('\0', true) => out.push_str("\\0"),
            ('"', true) => out.push_str("\\\""),
            (c, _) => out.push(c),
        }
    }
    out.into_bytes()
}

/// Expansion of an encoding, as (numerator, denominator) of encoded bytes per source byte, for
/// sizing fragments.
fn expansion(e: Encoding) -> (usize, usize) {
    match e {
        Encoding::Utf16Le | Encoding::Utf16Be | Encoding::HexLower | Encoding::HexUpper => (2, 1),
        Encoding::Base64 | Encoding::Base64Url => (4, 3),
        _ => (1, 1),
    }
}

/// `text` as UTF-16, little-endian when `le`, else big-endian.
fn utf16_bytes(text: &str, le: bool) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(
        text.encode_utf16()
            .flat_map(|u| if le { u.to_le_bytes() } else { u.to_be_bytes() })
            .collect(),
    )
}

/// Collects needles for one canary.
struct Sink<'a> {
    canary: usize,
    out: &'a mut Vec<Needle>,
    added: usize,
    /// Only these encodings (`None`: all).
    only: Option<&'a [Encoding]>,
    /// Whole needles only, never fragments.
    whole: bool,
}

impl Sink<'_> {
    /// Adds `encoded` whole if short, else as consecutive fragments sized for `encoding`.
    fn add(&mut self, form: Form, encoding: Encoding, encoded: &[u8]) {
        let (num, den) = expansion(encoding);
        let size = (WINDOW * num).div_ceil(den);
        if encoded.len() < MIN_NEEDLE_LEN || self.only.is_some_and(|o| !o.contains(&encoding)) {
            return;
        }
        if encoded.len() <= size || self.whole {
            self.push(form, encoding, encoded);
            return;
        }
        let mut start = 0;
        while start + size <= encoded.len() {
            if let Some(part) = encoded.get(start..start + size) {
                self.push(form, encoding, part);
            }
            start += size;
        }
        if start < encoded.len() {
            let tail = encoded.len() - size;
            if let Some(part) = encoded.get(tail..) {
                self.push(form, encoding, part);
            }
        }
    }

    fn push(&mut self, form: Form, encoding: Encoding, bytes: &[u8]) {
        self.added += 1;
        self.out.push(Needle {
            canary: self.canary,
            form,
            encoding,
            bytes: Zeroizing::new(bytes.to_vec()),
        });
    }

    /// Whether `e` is among the encodings wanted (computing one that is not is wasted work).
    fn wants(&self, e: Encoding) -> bool {
        self.only.is_none_or(|o| o.contains(&e))
    }

    /// Every text encoding of `text`, computing only the wanted ones.
    fn text(&mut self, form: Form, text: &str) {
        let raw = text.as_bytes();
        self.add(form, Encoding::Raw, raw);
        if self.wants(Encoding::CaseFolded) {
            for folded in [text.to_lowercase(), text.to_uppercase()] {
                let folded = Zeroizing::new(folded);
                if folded.as_str() != text {
                    self.add(form, Encoding::CaseFolded, folded.as_bytes());
                }
            }
        }
        for (encoding, le) in [(Encoding::Utf16Le, true), (Encoding::Utf16Be, false)] {
            if self.wants(encoding) {
                self.add(form, encoding, &utf16_bytes(text, le));
            }
        }
        if [
            Encoding::HexLower,
            Encoding::HexUpper,
            Encoding::Base64,
            Encoding::Base64Url,
        ]
        .iter()
        .any(|&e| self.wants(e))
        {
            self.binary(form, raw);
        }
        self.escaped(form, text, &Encoding::ALL);
    }

    /// `text` in each wanted escaping among `encodings` (percent, form, JSON, SQL; the others
    /// are passed over) that changes it; otherwise the raw needle covers it.
    fn escaped(&mut self, form: Form, text: &str, encodings: &[Encoding]) {
        let raw = text.as_bytes();
        for &enc in encodings {
            if !self.wants(enc) {
                continue;
            }
            let bytes = Zeroizing::new(match enc {
                Encoding::Percent => percent(raw, false),
                Encoding::FormUrlencoded => percent(raw, true),
                Encoding::Json => json_escape(text, false),
                Encoding::JsonAscii => json_escape(text, true),
                Encoding::SqlQuoted => sql_escape(text, false),
                Encoding::SqlBackslash => sql_escape(text, true),
                _ => continue,
            });
            if bytes.as_slice() != raw {
                self.add(form, enc, &bytes);
            }
        }
    }

    /// Fewer encodings, for the rarer renderings (long decimals, degrees/minutes), to keep the
    /// needle count of a GPS canary down: raw, UTF-16LE when `utf16`, and where they change
    /// something percent-encoding, JSON (both) and SQL `''` escaping.
    fn text_light(&mut self, form: Form, text: &str, utf16: bool) {
        let raw = text.as_bytes();
        self.add(form, Encoding::Raw, raw);
        if utf16 {
            self.add(form, Encoding::Utf16Le, &utf16_bytes(text, true));
        }
        self.escaped(
            form,
            text,
            &[
                Encoding::Percent,
                Encoding::Json,
                Encoding::JsonAscii,
                Encoding::SqlQuoted,
            ],
        );
    }

    /// The numeric forms of a GPS point beyond the f64 bytes and the 4..7-decimal text: decimal
    /// text at 8..10 decimals, the f32 value (bytes of the pair, shortest text), PostgreSQL
    /// `numeric` and MariaDB `DECIMAL` on-disk forms, and degrees/minutes text.
    fn numeric_forms(&mut self, lat: f64, lon: f64) {
        // Longer decimal text: a single coordinate is long enough, and any pair or shape of
        // these holds it. Raw and UTF-16LE only.
        for d in [8u8, 9, 10] {
            for v in [lat, lon] {
                let t = Zeroizing::new(decimal(v, Some(d)));
                self.text_light(Form::Decimal(Some(d)), &t, true);
            }
        }
        // f32: the binary pair (two adjacent real/FLOAT columns), and its shortest text.
        if let (Some(a), Some(o)) = (f32_of(lat), f32_of(lon)) {
            for (x, y) in [(a, o), (o, a)] {
                let le = Zeroizing::new([x.to_le_bytes(), y.to_le_bytes()].concat());
                self.add(Form::F32Pair, Encoding::F32Le, &le);
                let be = Zeroizing::new([x.to_be_bytes(), y.to_be_bytes()].concat());
                self.add(Form::F32Pair, Encoding::F32Be, &be);
            }
            let (ta, to) = (Zeroizing::new(a.to_string()), Zeroizing::new(o.to_string()));
            for v in [&ta, &to] {
                self.text(Form::DecimalF32, v);
            }
            self.text(Form::PairF32, &format!("{},{}", *ta, *to));
            self.text(Form::PairF32, &format!("{}, {}", *ta, *to));
        }
        // PostgreSQL numeric at display scales 4..=8 and at the scale of the shortest text
        // (an unconstrained column keeps the scale the application wrote).
        let full_scale = |v: f64| v.to_string().split_once('.').map_or(0, |(_, f)| f.len());
        let mut scales: Vec<(Option<u8>, usize, usize)> = (4u8..=8)
            .map(|d| (Some(d), usize::from(d), usize::from(d)))
            .collect();
        scales.push((None, full_scale(lat), full_scale(lon)));
        // A float8 bound to a numeric column goes through `%.15g` (15 significant digits,
        // trailing zeros dropped): "12.345678300000001" is stored at scale 7.
        let g15 = |v: f64| format!("{v:.14e}").parse::<f64>().map_or(0, &full_scale);
        scales.push((None, g15(lat), g15(lon)));
        for (form_d, da, dlon) in scales {
            let (na, ia, fa) = round_decimal(lat, da);
            let (no, io, fo) = round_decimal(lon, dlon);
            let (Some(pa), Some(po)) = (pg_numeric(na, &ia, &fa), pg_numeric(no, &io, &fo)) else {
                continue;
            };
            for datum in [&pa, &po] {
                self.add(Form::Decimal(form_d), Encoding::PgNumeric, datum);
            }
            for (x, y) in [(&pa, &po), (&po, &pa)] {
                let pair = Zeroizing::new([x.as_slice(), y.as_slice()].concat());
                self.add(Form::Pair(form_d), Encoding::PgNumeric, &pair);
            }
        }
        // MariaDB DECIMAL pairs: fraction digits 4..=8, latitude DECIMAL(2|3 + f, f),
        // longitude DECIMAL(3 + f, f), in either column order.
        for f in 4u8..=8 {
            let fd = usize::from(f);
            let (na, ia, fa) = round_decimal(lat, fd);
            let (no, io, fo) = round_decimal(lon, fd);
            let Some(mo) = mariadb_decimal(no, &io, &fo, 3, fd) else {
                continue;
            };
            for intg in [2usize, 3] {
                let Some(ma) = mariadb_decimal(na, &ia, &fa, intg, fd) else {
                    continue;
                };
                for (x, y) in [(&ma, &mo), (&mo, &ma)] {
                    let pair = Zeroizing::new([x.as_slice(), y.as_slice()].concat());
                    self.add(Form::Pair(Some(f)), Encoding::MariadbDecimal, &pair);
                }
            }
        }
        // Degrees, minutes, seconds and degrees with decimal minutes.
        for (v, pos, neg) in [(lat, 'N', 'S'), (lon, 'E', 'W')] {
            let h = if v.is_sign_negative() { neg } else { pos };
            for places in [0u8, 1, 2] {
                let Some((d, m, s)) = dms(v, places) else {
                    continue;
                };
                // The ASCII variants at 0 and 1 decimals only (hand-typed forms).
                let seps: &[&str] = if places < 2 {
                    &["\u{b0}", "d", " "]
                } else {
                    &["\u{b0}"]
                };
                for sep in seps {
                    let t = Zeroizing::new(format!("{d}{sep}{m:02}'{s}\"{h}"));
                    self.text_light(Form::Dms(Some(places)), &t, false);
                }
            }
            for places in [3u8, 4] {
                let Some((d, m)) = deg_min(v, places) else {
                    continue;
                };
                let t = Zeroizing::new(format!("{d}\u{b0}{m}'"));
                self.text_light(Form::DegMin(Some(places)), &t, false);
                let t = Zeroizing::new(format!("{h}{d} {m}"));
                self.text_light(Form::DegMin(Some(places)), &t, false);
            }
        }
    }

    /// Hex (both cases) and base64 (standard and URL-safe, three alignments) of `raw`.
    fn binary(&mut self, form: Form, raw: &[u8]) {
        let lower = Zeroizing::new(hex::encode(raw).into_bytes());
        self.add(form, Encoding::HexLower, &lower);
        let upper = Zeroizing::new(hex::encode_upper(raw).into_bytes());
        if upper != lower {
            self.add(form, Encoding::HexUpper, &upper);
        }
        for skip in 0..3 {
            let Some(rest) = raw.get(skip..) else {
                continue;
            };
            let std = Zeroizing::new(base64_groups(rest, B64_STD));
            self.add(form, Encoding::Base64, &std);
            let url = Zeroizing::new(base64_groups(rest, B64_URL));
            if url != std {
                self.add(form, Encoding::Base64Url, &url);
            }
        }
    }
}

/// A coordinate rounded to `places` decimals the way a database rounds the decimal text an
/// application wrote (half away from zero on the shortest round-trip text): `(negative,
/// integer digits, fraction digits)`, the fraction exactly `places` long.
#[must_use]
pub fn round_decimal(v: f64, places: usize) -> (bool, String, String) {
    let text = v.abs().to_string();
    let (int, frac) = text.split_once('.').unwrap_or((text.as_str(), ""));
    let mut digits: Vec<u8> = int.bytes().collect();
    let mut frac_digits: Vec<u8> = frac.bytes().collect();
    let round_up = frac_digits.get(places).is_some_and(|&d| d >= b'5');
    frac_digits.resize(places, b'0');
    digits.extend_from_slice(&frac_digits);
    if round_up {
        let mut carry = true;
        for d in digits.iter_mut().rev() {
            if *d == b'9' {
                *d = b'0';
            } else {
                *d += 1;
                carry = false;
                break;
            }
        }
        if carry {
            digits.insert(0, b'1');
        }
    }
    let split = digits.len() - places;
    let frac = String::from_utf8_lossy(digits.get(split..).unwrap_or_default()).into_owned();
    let mut int = String::from_utf8_lossy(digits.get(..split).unwrap_or_default()).into_owned();
    if int.is_empty() {
        int = "0".into();
    }
    (v.is_sign_negative() && v != 0.0, int, frac)
}

/// PostgreSQL's on-disk form of a `numeric` datum holding `int.frac` (display scale =
/// `frac.len()`): the 1-byte varlena header, the short-format header and the base-10000
/// digits, little-endian. `None` for zero or a value the short format cannot hold.
#[must_use]
pub fn pg_numeric(negative: bool, int: &str, frac: &str) -> Option<Vec<u8>> {
    let parse = |s: &str| s.parse::<u16>().ok();
    let int = int.trim_start_matches('0');
    // Integer digits in groups of 4 from the right; fraction in groups of 4 from the left.
    let lead = int.len() % 4;
    let mut groups: Vec<u16> = Vec::new();
    if lead > 0 {
        groups.push(parse(int.get(..lead)?)?);
    }
    let mut i = lead;
    while i < int.len() {
        groups.push(parse(int.get(i..i + 4)?)?);
        i += 4;
    }
    let int_groups = groups.len();
    let mut padded = frac.to_owned();
    while !padded.len().is_multiple_of(4) {
        padded.push('0');
    }
    let mut i = 0;
    while i < padded.len() {
        groups.push(parse(padded.get(i..i + 4)?)?);
        i += 4;
    }
    let mut weight = i32::try_from(int_groups).ok()? - 1;
    let first = groups.iter().position(|&g| g != 0)?;
    weight -= i32::try_from(first).ok()?;
    let last = groups.iter().rposition(|&g| g != 0)?;
    let digits = groups.get(first..=last)?;
    let dscale = u16::try_from(frac.len()).ok()?;
    if dscale > 0x3f || !(-64..=63).contains(&weight) {
        return None;
    }
    let w = u16::try_from(weight & 0x3f).ok()?;
    let header: u16 = 0x8000
        | if negative { 0x2000 } else { 0 }
        | (dscale << 7)
        | if weight < 0 { 0x0040 } else { 0 }
        | w;
    let len = 1 + 2 + 2 * digits.len();
    if len > 127 {
        return None;
    }
    let mut out = Vec::with_capacity(len);
    out.push((u8::try_from(len).ok()? << 1) | 1);
    out.extend_from_slice(&header.to_le_bytes());
    for d in digits {
        out.extend_from_slice(&d.to_le_bytes());
    }
    Some(out)
}

/// MariaDB/MySQL's binary `DECIMAL(intg + frac, frac)` (`decimal2bin`) of `int.frac`, where
/// `frac` has exactly `frac_digits` digits. `None` when the integer part does not fit.
#[must_use]
pub fn mariadb_decimal(
    negative: bool,
    int: &str,
    frac: &str,
    intg: usize,
    frac_digits: usize,
) -> Option<Vec<u8>> {
    const DIG2BYTES: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];
    let int = int.trim_start_matches('0');
    if int.len() > intg || frac.len() != frac_digits {
        return None;
    }
    let all = format!("{}{int}{frac}", "0".repeat(intg - int.len()));
    let mask: u32 = if negative { u32::MAX } else { 0 };
    let mut out = Vec::new();
    let mut put = |digits: &str, bytes: usize| -> Option<()> {
        let v = if digits.is_empty() {
            0
        } else {
            digits.parse::<u32>().ok()?
        } ^ mask;
        out.extend_from_slice(v.to_be_bytes().get(4 - bytes..)?);
        Some(())
    };
    let (ipart, fpart) = all.split_at(intg);
    let lead = intg % 9;
    put(ipart.get(..lead)?, *DIG2BYTES.get(lead)?)?;
    let mut i = lead;
    while i < intg {
        put(ipart.get(i..i + 9)?, 4)?;
        i += 9;
    }
    let mut i = 0;
    while i + 9 <= frac_digits {
        put(fpart.get(i..i + 9)?, 4)?;
        i += 9;
    }
    let rest = frac_digits - i;
    put(fpart.get(i..)?, *DIG2BYTES.get(rest)?)?;
    if let Some(b) = out.first_mut() {
        *b ^= 0x80;
    }
    Some(out)
}

/// The f32 a `real`/`FLOAT` column stores for `v`: the nearest f32 to the decimal text.
#[must_use]
pub fn f32_of(v: f64) -> Option<f32> {
    v.to_string().parse::<f32>().ok()
}

/// `|v|` degrees counted in `1 / per_degree` degree at `places` decimals, rounded:
/// `(count times 10^places, 10^places)`.
fn scaled_count(v: f64, per_degree: u32, places: u8) -> Option<(u64, u64)> {
    let scale = 10u64.checked_pow(u32::from(places))?;
    let units: u64 = format!(
        "{:.0}",
        v.abs() * f64::from(per_degree) * 10f64.powi(i32::from(places))
    )
    .parse()
    .ok()?;
    Some((units, scale))
}

/// Degrees, minutes and seconds of `|v|` with seconds at `places` decimals, as
/// `(degrees, minutes, seconds text)` (seconds zero-padded to 2 integer digits).
fn dms(v: f64, places: u8) -> Option<(u64, u64, String)> {
    let (units, scale) = scaled_count(v, 3600, places)?;
    let deg = units / (3600 * scale);
    let rem = units % (3600 * scale);
    let min = rem / (60 * scale);
    let sec = rem % (60 * scale);
    let text = if places == 0 {
        format!("{sec:02}")
    } else {
        format!(
            "{:02}.{:0w$}",
            sec / scale,
            sec % scale,
            w = usize::from(places)
        )
    };
    Some((deg, min, text))
}

/// Degrees and decimal minutes of `|v|` at `places` decimals: `(degrees, minutes text)`
/// (minutes zero-padded to 2 integer digits).
fn deg_min(v: f64, places: u8) -> Option<(u64, String)> {
    let (units, scale) = scaled_count(v, 60, places)?;
    let deg = units / (60 * scale);
    let min = units % (60 * scale);
    Some((
        deg,
        format!(
            "{:02}.{:0w$}",
            min / scale,
            min % scale,
            w = usize::from(places)
        ),
    ))
}

/// The binary numeric forms of a GPS point planted by [`crate::scan::self_test`]: the f32 pair in both
/// byte orders, PostgreSQL `numeric(9,6)` and MariaDB `DECIMAL(9,6)` pairs.
pub(crate) fn numeric_plants(lat: f64, lon: f64) -> Vec<(Encoding, Vec<u8>)> {
    let mut plants = Vec::new();
    if let (Some(a), Some(o)) = (f32_of(lat), f32_of(lon)) {
        plants.push((Encoding::F32Le, [a.to_le_bytes(), o.to_le_bytes()].concat()));
        plants.push((Encoding::F32Be, [o.to_be_bytes(), a.to_be_bytes()].concat()));
    }
    let (na, ia, fa) = round_decimal(lat, 6);
    let (no, io, fo) = round_decimal(lon, 6);
    if let (Some(x), Some(y)) = (pg_numeric(na, &ia, &fa), pg_numeric(no, &io, &fo)) {
        plants.push((Encoding::PgNumeric, [x, y].concat()));
    }
    if let (Some(x), Some(y)) = (
        mariadb_decimal(na, &ia, &fa, 3, 6),
        mariadb_decimal(no, &io, &fo, 3, 6),
    ) {
        plants.push((Encoding::MariadbDecimal, [x, y].concat()));
    }
    plants
}

fn decimal(v: f64, d: Option<u8>) -> String {
    match d {
        Some(d) => format!("{v:.prec$}", prec = usize::from(d)),
        None => v.to_string(),
    }
}

/// The needles of one canary, appended to `out`.
///
/// # Errors
/// [`Error::Canary`] when the canary yields no needle of at least [`MIN_NEEDLE_LEN`] bytes.
pub fn needles_for(index: usize, canary: &Canary, out: &mut Vec<Needle>) -> Result<(), Error> {
    needles_in(index, canary, None, false, out)
}

/// As [`needles_for`], in the encodings of `only` (`None`: every encoding); with `whole`, a
/// long encoded form is one needle, not [`WINDOW`]-sized fragments (so it matches only whole,
/// and a fragment two values share cannot count for both).
///
/// # Errors
/// As [`needles_for`] (a canary whose every needle in these encodings is too short).
pub fn needles_in(
    index: usize,
    canary: &Canary,
    only: Option<&[Encoding]>,
    whole: bool,
    out: &mut Vec<Needle>,
) -> Result<(), Error> {
    let mut sink = Sink {
        canary: index,
        out,
        added: 0,
        only,
        whole,
    };
    match canary.kind {
        CanaryKind::Text | CanaryKind::Transcript => {
            let text = canary.text_value().ok_or_else(|| Error::Canary {
                id: canary.id.clone(),
                problem: "a text canary without a text value".into(),
            })?;
            sink.text(Form::Value, text);
        }
        CanaryKind::Bytes => {
            let raw = canary.raw_bytes()?;
            sink.add(Form::Value, Encoding::Raw, &raw);
            sink.binary(Form::Value, &raw);
        }
        CanaryKind::Gps => {
            let (lat, lon) = canary.gps_value().ok_or_else(|| Error::Canary {
                id: canary.id.clone(),
                problem: "a GPS canary without a point".into(),
            })?;
            for v in [lat, lon] {
                sink.add(Form::F64, Encoding::F64Le, &v.to_le_bytes());
                sink.add(Form::F64, Encoding::F64Be, &v.to_be_bytes());
            }
            for d in [Some(4u8), Some(5), Some(6), Some(7), None] {
                let (a, o) = (decimal(lat, d), decimal(lon, d));
                // A single coordinate at 4 decimals ("51.5074") is too common to count alone;
                // it counts inside the pair and shapes below.
                if d.is_none_or(|d| d >= 5) {
                    for v in [&a, &o] {
                        sink.text(Form::Decimal(d), v);
                    }
                }
                sink.text(Form::Pair(d), &format!("{a},{o}"));
                sink.text(Form::Pair(d), &format!("{a}, {o}"));
                sink.text(Form::Wkt(d), &format!("{o} {a})"));
                sink.text(Form::GeoJson(d), &format!("[{o},{a}]"));
                sink.text(Form::GeoJson(d), &format!("[{o}, {a}]"));
                sink.text(Form::JsonObject(d), &format!("\"lat\":{a},\"lon\":{o}"));
            }
            sink.numeric_forms(lat, lon);
        }
    }
    if sink.added == 0 {
        return Err(Error::Canary {
            id: canary.id.clone(),
            problem: format!("no needle of at least {MIN_NEEDLE_LEN} bytes: too short to scan for"),
        });
    }
    Ok(())
}
