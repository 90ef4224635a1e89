//! Turning canaries into needles: every encoding a value could take on its way into a file.
//!
//! For a text value the encodings are: raw UTF-8, lower- and upper-cased (Unicode case folding,
//! [`Encoding::CaseFolded`]), UTF-16LE and UTF-16BE, hex in both cases (PostgreSQL's `\x` bytea
//! form is hex after `\x` and is reported as [`Encoding::PgBytea`]), base64 standard and
//! URL-safe at all three byte alignments, percent-encoding (`%20` and form `+`), JSON string
//! escaping (as written by serde_json, and the ASCII-only `\u00fc` form), and SQL string
//! literal escaping (standard `''` and MySQL's backslash form).
//!
//! A GPS point becomes several [`Form`]s: each coordinate as decimal text at 4 to 7 decimals
//! and at full precision, the pair as `lat,lon` / `lat, lon`, a WKT `POINT(lon lat)`, a GeoJSON
//! `[lon,lat]`, a JSON object `"lat":..,"lon":..`, and the IEEE-754 f64 bytes of each
//! coordinate in both byte orders. Text forms then go through the text encodings.
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
}

impl Encoding {
    /// Every encoding, in report order.
    pub const ALL: [Encoding; 17] = [
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
        Encoding::F64Le,
        Encoding::F64Be,
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
}

impl fmt::Display for Form {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, d) = match self {
            Form::Value => return f.write_str("value"),
            Form::F64 => return f.write_str("f64"),
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

impl fmt::Debug for Needle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Needle")
            .field("canary", &self.canary)
            .field("form", &self.form)
            .field("encoding", &self.encoding)
            .field("len", &self.bytes.len())
            .finish()
    }
}

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

/// Collects needles for one canary.
struct Sink<'a> {
    canary: usize,
    out: &'a mut Vec<Needle>,
    added: usize,
}

impl Sink<'_> {
    /// Adds `encoded` whole if short, else as consecutive fragments sized for `encoding`.
    fn add(&mut self, form: Form, encoding: Encoding, encoded: &[u8]) {
        let (num, den) = expansion(encoding);
        let size = (WINDOW * num).div_ceil(den);
        if encoded.len() < MIN_NEEDLE_LEN {
            return;
        }
        if encoded.len() <= size {
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

    /// Every text encoding of `text`.
    fn text(&mut self, form: Form, text: &str) {
        let raw = text.as_bytes();
        self.add(form, Encoding::Raw, raw);
        for folded in [text.to_lowercase(), text.to_uppercase()] {
            let folded = Zeroizing::new(folded);
            if folded.as_str() != text {
                self.add(form, Encoding::CaseFolded, folded.as_bytes());
            }
        }
        let le: Zeroizing<Vec<u8>> =
            Zeroizing::new(text.encode_utf16().flat_map(u16::to_le_bytes).collect());
        self.add(form, Encoding::Utf16Le, &le);
        let be: Zeroizing<Vec<u8>> =
            Zeroizing::new(text.encode_utf16().flat_map(u16::to_be_bytes).collect());
        self.add(form, Encoding::Utf16Be, &be);
        self.binary(form, raw);
        for (enc, bytes) in [
            (Encoding::Percent, percent(raw, false)),
            (Encoding::FormUrlencoded, percent(raw, true)),
            (Encoding::Json, json_escape(text, false)),
            (Encoding::JsonAscii, json_escape(text, true)),
            (Encoding::SqlQuoted, sql_escape(text, false)),
            (Encoding::SqlBackslash, sql_escape(text, true)),
        ] {
            let bytes = Zeroizing::new(bytes);
            // Only when the escaping changed something; otherwise the raw needle covers it.
            if bytes.as_slice() != raw {
                self.add(form, enc, &bytes);
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
    let mut sink = Sink {
        canary: index,
        out,
        added: 0,
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
