//! A small plaintext scanner for the demo: does a raw file contain any of these values?
//!
//! Each value is searched for in several encodings: raw UTF-8, lowercase, UTF-16LE, hex (lower
//! and upper case) and base64 (all three byte alignments), and binary values as raw bytes, hex
//! and base64. Long values are cut into 24-byte fragments (48 for UTF-16LE) and every fragment
//! is a needle of its own, so a value that a database splits across pages (SQLite overflow
//! pages, a WAL frame boundary) is still found: any leaked run of about 47 contiguous bytes of a
//! value, or any whole short value, is a hit.
//!
//! Results name a value by its label (`"patient 3 address"`) and an encoding, never by its
//! content. Needles hold plaintext, so they are zeroized on drop and their `Debug` shows only
//! lengths.
//!
//! This is deliberately small; the leak-test harness (`leakless-leaktest`, docs/leak-tests.md)
//! is the one that scans dumps, backups, WAL and server logs.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::Path;

use zeroize::Zeroizing;

/// The shortest needle searched for. Six bytes keep random matches inside ciphertext far
/// below one in a billion for files of a few megabytes.
pub const MIN_NEEDLE_LEN: usize = 6;

/// The fragment length for long values, in source bytes. A multiple of 3, so base64 fragments
/// encode without padding.
pub const FRAGMENT_LEN: usize = 24;

/// How a value was encoded when it was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Encoding {
    /// The UTF-8 bytes as they are.
    Utf8,
    /// The lowercased text, as UTF-8.
    Lowercase,
    /// The text as UTF-16, little-endian (Windows and some drivers' wire format).
    Utf16Le,
    /// Lowercase hexadecimal of the bytes.
    HexLower,
    /// Uppercase hexadecimal of the bytes.
    HexUpper,
    /// Standard base64 (RFC 4648, section 4) of the bytes, at any 3-byte alignment.
    Base64,
    /// The raw bytes of a binary value.
    Binary,
}

impl Encoding {
    /// Every encoding, in report order.
    pub const ALL: [Encoding; 7] = [
        Encoding::Utf8,
        Encoding::Lowercase,
        Encoding::Utf16Le,
        Encoding::HexLower,
        Encoding::HexUpper,
        Encoding::Base64,
        Encoding::Binary,
    ];

    /// A short name for reports: `utf-8`, `lowercase`, `utf-16le`, `hex`, `HEX`, `base64`,
    /// `binary`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Utf8 => "utf-8",
            Encoding::Lowercase => "lowercase",
            Encoding::Utf16Le => "utf-16le",
            Encoding::HexLower => "hex",
            Encoding::HexUpper => "HEX",
            Encoding::Base64 => "base64",
            Encoding::Binary => "binary",
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A value too short to scan for without false alarms (under [`MIN_NEEDLE_LEN`] bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TooShort {
    /// The value's label.
    pub label: String,
}

impl fmt::Display for TooShort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is shorter than {MIN_NEEDLE_LEN} bytes, too short to scan for",
            self.label
        )
    }
}

impl std::error::Error for TooShort {}

struct Needle {
    label: usize,
    encoding: Encoding,
    bytes: Zeroizing<Vec<u8>>,
}

/// One value found in a file: which value, in which encoding, how often, and where first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The value's label (never its content).
    pub label: String,
    /// The encoding it was found in.
    pub encoding: Encoding,
    /// How many needles (fragments) of it matched, counting every position.
    pub matches: usize,
    /// Byte offset of the first match.
    pub first_offset: usize,
}

/// A set of values to look for, turned into needles.
#[derive(Default)]
pub struct Needles {
    labels: Vec<String>,
    list: Vec<Needle>,
    index: HashMap<[u8; MIN_NEEDLE_LEN], Vec<usize>>,
}

impl fmt::Debug for Needles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Needles")
            .field("values", &self.labels.len())
            .field("needles", &self.list.len())
            .finish_non_exhaustive()
    }
}

impl Needles {
    /// An empty set.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How many values were added.
    #[must_use]
    pub fn values(&self) -> usize {
        self.labels.len()
    }

    /// How many needles (fragments times encodings, duplicates removed) the values made.
    #[must_use]
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether no needle was added.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Adds a text value, searched for as UTF-8, lowercase, UTF-16LE, hex, HEX and base64.
    ///
    /// # Errors
    /// [`TooShort`] when the value has fewer than [`MIN_NEEDLE_LEN`] bytes.
    pub fn add_text(&mut self, label: &str, value: &str) -> Result<(), TooShort> {
        let raw = value.as_bytes();
        let id = self.new_label(label, raw.len())?;
        self.add_fragments(id, Encoding::Utf8, raw, FRAGMENT_LEN, 1, |b| b.to_vec());
        let lower = Zeroizing::new(value.to_lowercase());
        if *lower != value {
            let lower = lower.as_bytes();
            self.add_fragments(id, Encoding::Lowercase, lower, FRAGMENT_LEN, 1, |b| {
                b.to_vec()
            });
        }
        let utf16: Zeroizing<Vec<u8>> =
            Zeroizing::new(value.encode_utf16().flat_map(u16::to_le_bytes).collect());
        self.add_fragments(id, Encoding::Utf16Le, &utf16, 2 * FRAGMENT_LEN, 2, |b| {
            b.to_vec()
        });
        self.add_binary_encodings(id, raw);
        Ok(())
    }

    /// Adds a binary value, searched for as raw bytes, hex, HEX and base64.
    ///
    /// # Errors
    /// [`TooShort`] when the value has fewer than [`MIN_NEEDLE_LEN`] bytes.
    pub fn add_binary(&mut self, label: &str, value: &[u8]) -> Result<(), TooShort> {
        let id = self.new_label(label, value.len())?;
        self.add_fragments(id, Encoding::Binary, value, FRAGMENT_LEN, 1, |b| b.to_vec());
        self.add_binary_encodings(id, value);
        Ok(())
    }

    fn new_label(&mut self, label: &str, len: usize) -> Result<usize, TooShort> {
        if len < MIN_NEEDLE_LEN {
            return Err(TooShort {
                label: label.to_owned(),
            });
        }
        self.labels.push(label.to_owned());
        Ok(self.labels.len().saturating_sub(1))
    }

    fn add_binary_encodings(&mut self, id: usize, raw: &[u8]) {
        self.add_fragments(id, Encoding::HexLower, raw, FRAGMENT_LEN, 1, |b| {
            hex::encode(b).into_bytes()
        });
        self.add_fragments(id, Encoding::HexUpper, raw, FRAGMENT_LEN, 1, |b| {
            hex::encode_upper(b).into_bytes()
        });
        // Base64 output depends on where the value sits relative to the encoder's 3-byte
        // groups, so search all three alignments: skip 0, 1 or 2 leading bytes, keep whole
        // groups only, and encode fragments that start on a group boundary.
        for skip in 0..3 {
            let Some(rest) = raw.get(skip..) else {
                continue;
            };
            let whole = rest.len() / 3 * 3;
            let Some(aligned) = rest.get(..whole) else {
                continue;
            };
            self.add_fragments(id, Encoding::Base64, aligned, FRAGMENT_LEN, 3, |b| {
                base64(b).into_bytes()
            });
        }
    }

    fn add_fragments(
        &mut self,
        label: usize,
        encoding: Encoding,
        source: &[u8],
        size: usize,
        align: usize,
        encode: impl Fn(&[u8]) -> Vec<u8>,
    ) {
        for range in fragments(source.len(), size, align) {
            let Some(part) = source.get(range) else {
                continue;
            };
            let bytes = Zeroizing::new(encode(part));
            let Some(key) = bytes
                .get(..MIN_NEEDLE_LEN)
                .and_then(|k| <[u8; MIN_NEEDLE_LEN]>::try_from(k).ok())
            else {
                continue; // a tiny base64 tail; the other alignments cover it
            };
            let bucket = self.index.entry(key).or_default();
            let list = &self.list;
            let duplicate = bucket
                .iter()
                .filter_map(|&i| list.get(i))
                .any(|n| *n.bytes == *bytes);
            if duplicate {
                continue;
            }
            bucket.push(self.list.len());
            self.list.push(Needle {
                label,
                encoding,
                bytes,
            });
        }
    }

    /// Scans `haystack` for every needle. Returns one [`Finding`] per value and encoding that
    /// matched, sorted by label then encoding; empty when nothing matched.
    #[must_use]
    pub fn scan(&self, haystack: &[u8]) -> Vec<Finding> {
        let mut found: BTreeMap<(usize, Encoding), (usize, usize)> = BTreeMap::new();
        for (offset, window) in haystack.windows(MIN_NEEDLE_LEN).enumerate() {
            let Ok(key) = <[u8; MIN_NEEDLE_LEN]>::try_from(window) else {
                continue;
            };
            let Some(ids) = self.index.get(&key) else {
                continue;
            };
            let rest = haystack.get(offset..).unwrap_or_default();
            for needle in ids.iter().filter_map(|&i| self.list.get(i)) {
                if rest.starts_with(&needle.bytes) {
                    let entry = found
                        .entry((needle.label, needle.encoding))
                        .or_insert((0, offset));
                    entry.0 = entry.0.saturating_add(1);
                }
            }
        }
        found
            .into_iter()
            .map(|((label, encoding), (matches, first_offset))| Finding {
                label: self.labels.get(label).cloned().unwrap_or_default(),
                encoding,
                matches,
                first_offset,
            })
            .collect()
    }

    /// Reads the file at `path` and [scans](Self::scan) its raw bytes.
    ///
    /// # Errors
    /// The I/O error from reading the file.
    pub fn scan_file(&self, path: &Path) -> std::io::Result<Vec<Finding>> {
        let bytes = Zeroizing::new(std::fs::read(path)?);
        Ok(self.scan(&bytes))
    }
}

/// The byte ranges cut from a source of `len` bytes: the whole source when it is at most `size`
/// bytes, else consecutive `size`-byte fragments plus one last fragment that ends as close to
/// the end as `align` allows. `size` must be a multiple of `align`.
fn fragments(len: usize, size: usize, align: usize) -> Vec<Range<usize>> {
    if len <= size {
        let whole: Range<usize> = 0..len;
        return vec![whole];
    }
    let mut out: Vec<Range<usize>> = (0..len.saturating_sub(size).saturating_add(1))
        .step_by(size)
        .map(|start| start..start.saturating_add(size))
        .collect();
    let tail = len.saturating_sub(size) / align * align;
    if out.last().is_some_and(|r| r.start != tail) {
        out.push(tail..tail.saturating_add(size));
    }
    out
}

/// Standard base64 with padding (RFC 4648, section 4).
#[must_use]
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sextet = |v: u32, shift: u32| -> char {
        let i = usize::try_from((v >> shift) & 0x3f).unwrap_or(0);
        ALPHABET.get(i).map_or('=', |&c| char::from(c))
    };
    let mut out = String::with_capacity(bytes.len().div_ceil(3).saturating_mul(4));
    for chunk in bytes.chunks(3) {
        let mut group = [0u8; 3];
        for (dst, src) in group.iter_mut().zip(chunk) {
            *dst = *src;
        }
        let v = u32::from(group[0]) << 16 | u32::from(group[1]) << 8 | u32::from(group[2]);
        out.push(sextet(v, 18));
        out.push(sextet(v, 12));
        out.push(if chunk.len() > 1 { sextet(v, 6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(v, 0) } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "Ünïcode and ASCII mixed: 221B Baker Street, London NW1 6XE, \
        a value long enough to be cut into several fragments by the scanner.";

    fn noise(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| u8::try_from((i * 131 + 7) % 251).unwrap())
            .collect()
    }

    fn planted(prefix: usize, payload: &[u8]) -> Vec<u8> {
        let mut v = noise(prefix);
        v.extend_from_slice(payload);
        v.extend(noise(333));
        v
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }

    #[test]
    fn fragments_cover_the_value_and_respect_alignment() {
        assert_eq!(fragments(10, 24, 1), vec![0..10]);
        assert_eq!(fragments(50, 24, 1), vec![0..24, 24..48, 26..50]);
        assert_eq!(fragments(48, 24, 1), vec![0..24, 24..48]);
        assert_eq!(fragments(51, 24, 3), vec![0..24, 24..48, 27..51]);
        for r in fragments(100, 48, 2) {
            assert_eq!(r.start % 2, 0);
        }
    }

    #[test]
    fn finds_text_in_every_encoding_at_odd_offsets() {
        let mut needles = Needles::new();
        needles.add_text("sample", TEXT).unwrap();
        let utf16: Vec<u8> = TEXT.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let cases: Vec<(Encoding, Vec<u8>)> = vec![
            (Encoding::Utf8, TEXT.as_bytes().to_vec()),
            (Encoding::Lowercase, TEXT.to_lowercase().into_bytes()),
            (Encoding::Utf16Le, utf16),
            (Encoding::HexLower, hex::encode(TEXT).into_bytes()),
            (Encoding::HexUpper, hex::encode_upper(TEXT).into_bytes()),
            (Encoding::Base64, base64(TEXT.as_bytes()).into_bytes()),
            // The value inside a larger base64 blob, one and two bytes off the group boundary.
            (
                Encoding::Base64,
                base64(&[b"x".as_slice(), TEXT.as_bytes()].concat()).into_bytes(),
            ),
            (
                Encoding::Base64,
                base64(&[b"xy".as_slice(), TEXT.as_bytes()].concat()).into_bytes(),
            ),
        ];
        for (i, (encoding, payload)) in cases.into_iter().enumerate() {
            let hay = planted(1001 + i, &payload);
            let found = needles.scan(&hay);
            assert!(
                found
                    .iter()
                    .any(|f| f.encoding == encoding && f.label == "sample"),
                "{encoding} not found: {found:?}"
            );
        }
    }

    #[test]
    fn finds_a_fragment_of_a_long_value() {
        let mut needles = Needles::new();
        needles.add_text("sample", TEXT).unwrap();
        // 60 bytes from the middle, as when a page boundary splits a value.
        let hay = planted(77, &TEXT.as_bytes()[40..100]);
        assert_eq!(needles.scan(&hay).len(), 1);
    }

    #[test]
    fn finds_binary_values() {
        let mut needles = Needles::new();
        let gps = [
            0x40, 0x48, 0x6d, 0xf3, 0xb6, 0x45, 0xa1, 0xcb, 0x40, 0x02, 0x5b, 0x3d,
        ];
        needles.add_binary("gps", &gps).unwrap();
        let found = needles.scan(&planted(5, &gps));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].encoding, Encoding::Binary);
        assert_eq!(found[0].first_offset, 5);
        let found = needles.scan(&planted(5, hex::encode(gps).as_bytes()));
        assert_eq!(found[0].encoding, Encoding::HexLower);
    }

    #[test]
    fn clean_noise_has_no_findings() {
        let mut needles = Needles::new();
        needles.add_text("sample", TEXT).unwrap();
        needles.add_binary("bin", &[1, 2, 3, 4, 5, 6, 7]).unwrap();
        assert!(needles.scan(&noise(100_000)).is_empty());
        assert!(needles.scan(b"").is_empty());
    }

    #[test]
    fn short_values_are_refused_not_ignored() {
        let mut needles = Needles::new();
        assert_eq!(
            needles.add_text("tiny", "abc"),
            Err(TooShort {
                label: "tiny".into()
            })
        );
        assert!(needles.is_empty());
    }

    #[test]
    fn debug_shows_no_content() {
        let mut needles = Needles::new();
        needles.add_text("sample", TEXT).unwrap();
        let shown = format!("{needles:?}");
        assert!(!shown.contains("Baker"));
        assert!(shown.contains("needles"));
    }
}
