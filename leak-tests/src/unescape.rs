//! The unescaping pass: values whose escaping is spread over them (every space written as
//! `\u0020`, `Stra\xc3\x9fe` from a Python bytes repr, `Stra=C3=9Fe` quoted-printable, the same
//! again with PostgreSQL COPY's doubled backslashes) are found without a needle per mix of
//! escapes.
//!
//! The [`Scanner`](crate::scan::Scanner) calls this module on every buffer it scans:
//! 1. [`regions`] finds escape sequences fast (`memchr` for `\`, `%`, `&` and `=`) and keeps
//!    only those a text encoder writes for a character of a value (see [`regions`]), each
//!    widened by a context of about twice the longest needle on both sides; overlapping
//!    regions are merged. Ordinary data does not make regions: PostgreSQL's bytea hex
//!    (`\x4c4b...`, `\\x4c4b...` in COPY text), `\N`, and the short escapes `\"` `\n` `\\` ...
//!    (alone, the JSON and SQL needles cover them; JSON in COPY text is full of `\\"`) are not
//!    triggers, nor are quoted-printable soft line breaks (base64 padding ends lines with `=`);
//!    they are decoded inside a region made by another escape.
//! 2. Each region is decoded one layer at a time with [`decode_layer`], up to [`MAX_LAYERS`]
//!    layers (`\\u0020` is COPY's doubling of JSON's `\u0020`: two layers), and every layer is
//!    scanned with every needle. A match counts only if it covers a byte this layer decoded (so
//!    a plain match is not reported again), and the scanner drops it if the same canary already
//!    matched as stored over the same bytes.
//!
//! Escapes decoded (left to right, mixed with plain text; an invalid or partial escape stays as
//! it is):
//!
//! | family | forms |
//! |---|---|
//! | JSON | `\uXXXX` (any code point, surrogate pairs), `\"` `\\` `\/` `\b` `\f` `\n` `\r` `\t` |
//! | C, shell, COPY text | `\xNN` of a control or non-ASCII byte, octal `\NNN` of any byte (libedit histories write a space as `\040`), `\'`, `\UXXXXXXXX` |
//! | quoted-printable | `=XX` (uppercase hex), soft line breaks `=\r\n` and `=\n` |
//! | HTML | numeric `&#NNN;` `&#xHH;`, named entities (`&amp;` `&lt;` `&gt;` `&quot;` `&apos;` `&nbsp;`, Latin-1 letters such as `&eacute;` `&szlig;`, common punctuation) |
//! | URL | `%XX` (either case) |
//!
//! Not decoded, because no text encoder writes them for a value and ordinary data is full of
//! them: `\xNN` of a printable ASCII byte, and `\x` followed by more than 7 hex digits
//! (bytea hex). Form encoding's `+` is not turned into a space (the form-urlencoded needle
//! covers a wholly form-encoded value).

use std::ops::Range;

use zeroize::Zeroizing;

/// How many layers of escaping are undone at most (COPY of a JSON string in a quoted-printable
/// mail is three).
pub const MAX_LAYERS: u8 = 3;

/// The longest hex run after `\x` still read as a C escape; longer runs are bytea hex.
const MAX_C_HEX_RUN: usize = 7;

/// Named HTML entities decoded (case-sensitive).
const ENTITIES: &[(&str, &str)] = &[
    ("amp", "&"),
    ("lt", "<"),
    ("gt", ">"),
    ("quot", "\""),
    ("apos", "'"),
    ("nbsp", "\u{a0}"),
    ("shy", "\u{ad}"),
    ("copy", "\u{a9}"),
    ("reg", "\u{ae}"),
    ("deg", "\u{b0}"),
    ("middot", "\u{b7}"),
    ("ndash", "\u{2013}"),
    ("mdash", "\u{2014}"),
    ("lsquo", "\u{2018}"),
    ("rsquo", "\u{2019}"),
    ("ldquo", "\u{201c}"),
    ("rdquo", "\u{201d}"),
    ("hellip", "\u{2026}"),
    ("euro", "\u{20ac}"),
    ("szlig", "\u{df}"),
    ("agrave", "\u{e0}"),
    ("aacute", "\u{e1}"),
    ("acirc", "\u{e2}"),
    ("atilde", "\u{e3}"),
    ("auml", "\u{e4}"),
    ("aring", "\u{e5}"),
    ("aelig", "\u{e6}"),
    ("ccedil", "\u{e7}"),
    ("egrave", "\u{e8}"),
    ("eacute", "\u{e9}"),
    ("ecirc", "\u{ea}"),
    ("euml", "\u{eb}"),
    ("igrave", "\u{ec}"),
    ("iacute", "\u{ed}"),
    ("icirc", "\u{ee}"),
    ("iuml", "\u{ef}"),
    ("ntilde", "\u{f1}"),
    ("ograve", "\u{f2}"),
    ("oacute", "\u{f3}"),
    ("ocirc", "\u{f4}"),
    ("otilde", "\u{f5}"),
    ("ouml", "\u{f6}"),
    ("oslash", "\u{f8}"),
    ("ugrave", "\u{f9}"),
    ("uacute", "\u{fa}"),
    ("ucirc", "\u{fb}"),
    ("uuml", "\u{fc}"),
    ("yacute", "\u{fd}"),
    ("yuml", "\u{ff}"),
    ("Agrave", "\u{c0}"),
    ("Aacute", "\u{c1}"),
    ("Acirc", "\u{c2}"),
    ("Atilde", "\u{c3}"),
    ("Auml", "\u{c4}"),
    ("Aring", "\u{c5}"),
    ("AElig", "\u{c6}"),
    ("Ccedil", "\u{c7}"),
    ("Egrave", "\u{c8}"),
    ("Eacute", "\u{c9}"),
    ("Ecirc", "\u{ca}"),
    ("Euml", "\u{cb}"),
    ("Iacute", "\u{cd}"),
    ("Ntilde", "\u{d1}"),
    ("Oacute", "\u{d3}"),
    ("Ocirc", "\u{d4}"),
    ("Ouml", "\u{d6}"),
    ("Oslash", "\u{d8}"),
    ("Uacute", "\u{da}"),
    ("Uuml", "\u{dc}"),
];

fn hex_val(b: u8) -> Option<u32> {
    match b {
        b'0'..=b'9' => Some(u32::from(b - b'0')),
        b'a'..=b'f' => Some(u32::from(b - b'a') + 10),
        b'A'..=b'F' => Some(u32::from(b - b'A') + 10),
        _ => None,
    }
}

/// `n` hex digits at `at`, as a number.
fn hex_n(s: &[u8], at: usize, n: usize) -> Option<u32> {
    let digits = s.get(at..at.checked_add(n)?)?;
    digits
        .iter()
        .try_fold(0u32, |v, &b| Some(v << 4 | hex_val(b)?))
}

/// How many hex digits follow at `at`, counting up to `limit`.
fn hex_run(s: &[u8], at: usize, limit: usize) -> usize {
    s.get(at..)
        .unwrap_or_default()
        .iter()
        .take(limit)
        .take_while(|b| b.is_ascii_hexdigit())
        .count()
}

/// A byte an encoder writes as an escape rather than as itself: a control or non-ASCII byte.
fn non_printable(b: u8) -> bool {
    !(0x20..0x7f).contains(&b)
}

/// One decoded escape: its length in the input and its output (0 to 4 bytes).
#[derive(Clone, Copy)]
struct Token {
    len: usize,
    out: [u8; 4],
    out_len: usize,
    /// `\n`-style escapes: decoded, but never a trigger (JSON and COPY text are full of them,
    /// and the JSON and SQL needles cover a value whose only escapes they are).
    simple: bool,
}

impl Token {
    fn byte(len: usize, b: u8) -> Self {
        Self {
            len,
            out: [b, 0, 0, 0],
            out_len: 1,
            simple: false,
        }
    }

    fn simple(b: u8) -> Self {
        Self {
            simple: true,
            ..Self::byte(2, b)
        }
    }

    fn char(len: usize, c: char) -> Self {
        let mut out = [0u8; 4];
        let out_len = c.encode_utf8(&mut out).len();
        Self {
            len,
            out,
            out_len,
            simple: false,
        }
    }

    /// A quoted-printable soft line break: decoded to nothing, and never a trigger (base64
    /// padding ends lines with `=` too; the lines between breaks are long enough for needles).
    fn nothing(len: usize) -> Self {
        Self {
            len,
            out: [0; 4],
            out_len: 0,
            simple: true,
        }
    }

    fn output(&self) -> &[u8] {
        self.out.get(..self.out_len).unwrap_or_default()
    }
}

/// The escape starting with the backslash at `i`.
fn backslash(s: &[u8], i: usize) -> Option<Token> {
    let next = *s.get(i + 1)?;
    match next {
        b'u' => {
            let u = hex_n(s, i + 2, 4)?;
            if (0xD800..0xDC00).contains(&u) {
                if s.get(i + 6..i + 8) != Some(b"\\u".as_slice()) {
                    return None;
                }
                let lo = hex_n(s, i + 8, 4)?;
                if !(0xDC00..0xE000).contains(&lo) {
                    return None;
                }
                let c = char::from_u32(0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00))?;
                return Some(Token::char(12, c));
            }
            Some(Token::char(6, char::from_u32(u)?))
        }
        b'U' => Some(Token::char(10, char::from_u32(hex_n(s, i + 2, 8)?)?)),
        b'x' => {
            let run = hex_run(s, i + 2, MAX_C_HEX_RUN + 1);
            if !(2..=MAX_C_HEX_RUN).contains(&run) {
                return None;
            }
            let b = u8::try_from(hex_n(s, i + 2, 2)?).ok()?;
            non_printable(b).then_some(Token::byte(4, b))
        }
        b'0'..=b'3' => {
            let digits = s.get(i + 1..i + 4)?;
            let mut v = 0u32;
            for &d in digits {
                if !(b'0'..=b'7').contains(&d) {
                    return None;
                }
                v = v << 3 | u32::from(d - b'0');
            }
            // Any byte: libedit histories (`.mysql_history`) write a space as `\040`.
            Some(Token::byte(4, u8::try_from(v).ok()?))
        }
        b'n' => Some(Token::simple(b'\n')),
        b'r' => Some(Token::simple(b'\r')),
        b't' => Some(Token::simple(b'\t')),
        b'b' => Some(Token::simple(0x08)),
        b'f' => Some(Token::simple(0x0c)),
        b'"' | b'\\' | b'/' | b'\'' => Some(Token::simple(next)),
        _ => None,
    }
}

/// The quoted-printable escape at `i` (an `=`).
fn quoted_printable(s: &[u8], i: usize) -> Option<Token> {
    let rest = s.get(i + 1..)?;
    if rest.starts_with(b"\r\n") {
        return Some(Token::nothing(3));
    }
    if rest.starts_with(b"\n") {
        return Some(Token::nothing(2));
    }
    let upper = |b: &u8| b.is_ascii_digit() || (b'A'..=b'F').contains(b);
    let pair = rest.get(..2)?;
    if !pair.iter().all(upper) {
        return None;
    }
    Some(Token::byte(3, u8::try_from(hex_n(s, i + 1, 2)?).ok()?))
}

/// The percent escape at `i`.
fn percent(s: &[u8], i: usize) -> Option<Token> {
    Some(Token::byte(3, u8::try_from(hex_n(s, i + 1, 2)?).ok()?))
}

/// The HTML entity at `i` (an `&`).
fn entity(s: &[u8], i: usize) -> Option<Token> {
    let rest = s.get(i + 1..)?;
    let end = rest.iter().take(10).position(|&b| b == b';')?;
    let body = rest.get(..end)?;
    let len = end + 2;
    if let Some(num) = body.strip_prefix(b"#") {
        let (digits, radix) = match num.first() {
            Some(b'x' | b'X') => (num.get(1..)?, 16),
            _ => (num, 10),
        };
        if digits.is_empty() || digits.len() > 7 {
            return None;
        }
        let text = std::str::from_utf8(digits).ok()?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let v = u32::from_str_radix(text, radix).ok()?;
        return Some(Token::char(len, char::from_u32(v)?));
    }
    let name = std::str::from_utf8(body).ok()?;
    let (_, text) = ENTITIES.iter().find(|(n, _)| *n == name)?;
    let c = text.chars().next()?;
    Some(Token::char(len, c))
}

/// The escape starting at `i`, if `s[i]` starts a valid one.
fn token(s: &[u8], i: usize) -> Option<Token> {
    match *s.get(i)? {
        b'\\' => backslash(s, i),
        b'=' => quoted_printable(s, i),
        b'%' => percent(s, i),
        b'&' => entity(s, i),
        _ => None,
    }
}

/// The end of the escape at `i` if it is a trigger (an escape a text encoder writes for a
/// character of a value, and that no needle covers on its own: not `\n`, `\"`, `\\`), and
/// where to search next.
fn trigger(s: &[u8], i: usize) -> (Option<usize>, usize) {
    if s.get(i) != Some(&b'\\') {
        let end = token(s, i).filter(|t| !t.simple).map(|t| i + t.len);
        return (end, i + 1);
    }
    // A run of backslashes: look at the escape its last one starts (`\\u0020` is COPY's
    // doubling of `\u0020`).
    let run = s
        .get(i..)
        .unwrap_or_default()
        .iter()
        .take_while(|&&b| b == b'\\')
        .count();
    let last = i + run - 1;
    match backslash(s, last) {
        Some(t) if !t.simple => (Some(last + t.len), last + 1),
        _ => (None, last + 1),
    }
}

/// The regions of `buf` that hold a trigger escape, each widened by `context` bytes on both
/// sides (clamped to `buf`), sorted and merged. Empty for data without value escapes, such as
/// COPY lines of bytea hex.
#[must_use]
pub fn regions(buf: &[u8], context: usize) -> Vec<Range<usize>> {
    let mut found: Vec<Range<usize>> = Vec::new();
    let mut add = |start: usize, end: usize| {
        let r = start.saturating_sub(context)..end.saturating_add(context).min(buf.len());
        match found.last_mut() {
            // In order (the `\` `%` `&` pass, then the `=` pass): merge with the last one.
            Some(last) if last.start <= r.start && r.start <= last.end => {
                last.end = last.end.max(r.end);
            }
            _ => found.push(r),
        }
    };
    let mut pos = 0;
    while let Some(rest) = buf.get(pos..) {
        let Some(at) = memchr::memchr3(b'\\', b'%', b'&', rest) else {
            break;
        };
        let i = pos + at;
        let (end, next) = trigger(buf, i);
        if let Some(end) = end {
            add(i, end);
        }
        pos = next;
    }
    for i in memchr::memchr_iter(b'=', buf) {
        if let (Some(end), _) = trigger(buf, i) {
            add(i, end);
        }
    }
    found.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(found.len());
    for r in found {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// One layer of decoding: the output and, per output byte, where it came from.
pub struct Layer {
    /// The decoded bytes (zeroized on drop).
    pub bytes: Zeroizing<Vec<u8>>,
    /// Per output byte, the offset in the input of the byte or escape that produced it.
    pub origin: Vec<usize>,
    /// Per output byte, whether an escape produced it (or it follows a removed soft line
    /// break).
    pub decoded: Vec<bool>,
}

leakless::debug_fields!(Layer, |l| { "len": l.bytes.len() });

/// Decodes one layer of escapes of `input`, left to right; `None` when nothing in it decodes.
#[must_use]
pub fn decode_layer(input: &[u8]) -> Option<Layer> {
    let mut bytes = Zeroizing::new(Vec::with_capacity(input.len()));
    let mut origin = Vec::with_capacity(input.len());
    let mut decoded = Vec::with_capacity(input.len());
    let mut any = false;
    let mut mark_next = false;
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        let t = if matches!(b, b'\\' | b'=' | b'%' | b'&') {
            token(input, i)
        } else {
            None
        };
        match t {
            Some(t) => {
                any = true;
                for &o in t.output() {
                    bytes.push(o);
                    origin.push(i);
                    decoded.push(true);
                }
                mark_next = t.out_len == 0;
                i += t.len;
            }
            None => {
                bytes.push(b);
                origin.push(i);
                decoded.push(std::mem::take(&mut mark_next));
                i += 1;
            }
        }
    }
    any.then_some(Layer {
        bytes,
        origin,
        decoded,
    })
}

/// `input` with up to [`MAX_LAYERS`] layers of escapes undone, and how many layers decoded
/// something. For tests and tools; the scanner decodes regions only.
#[must_use]
pub fn unescape(input: &[u8]) -> (Zeroizing<Vec<u8>>, u8) {
    let mut cur = Zeroizing::new(input.to_vec());
    let mut layers = 0;
    while layers < MAX_LAYERS {
        let Some(layer) = decode_layer(&cur) else {
            break;
        };
        cur = layer.bytes;
        layers += 1;
    }
    (cur, layers)
}

/// `text` with JSON `\uXXXX` escapes on every character that is not an ASCII letter or digit
/// and on every fourth character, the rest as is; `doubled` doubles each backslash as
/// PostgreSQL's COPY text format does. A mixed escaping no needle matches, for self-tests and
/// benchmarks.
#[must_use]
pub fn escape_mixed(text: &str, doubled: bool) -> String {
    let slash = if doubled { "\\\\" } else { "\\" };
    let mut out = String::with_capacity(text.len() * 4);
    for (i, c) in text.chars().enumerate() {
        if c.is_ascii_alphanumeric() && i % 4 != 0 {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("{slash}u{u:04x}"));
            }
        }
    }
    out
}
