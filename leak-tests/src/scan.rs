//! The scanner: every needle of every canary compiled into one multi-pattern matcher, run over
//! readers in fixed-size chunks with an overlap, so memory stays bounded by the chunk size (plus
//! the matcher) whatever the size of the artifact.
//!
//! Two engines report the same matches (every needle at every position, overlapping):
//! * [`Engine::AhoCorasick`]: one Aho-Corasick automaton (a DFA up to 4,000 needles). The
//!   default for small canary sets.
//! * [`Engine::GramFilter`]: every needle is at least 8 bytes long, so each text position's
//!   next 8 bytes are hashed into a 1 MiB bit set of the needles' first 8 bytes; a hit is
//!   verified exactly against the needles that start with those 8 bytes. Its speed does not
//!   fall with the number of needles the way an automaton's does (the benchmark measured the
//!   Aho-Corasick NFA at 28 MB/s on 237,000 needles), so it is the default above 4,000 needles.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use serde::Serialize;

use crate::Error;
use crate::canary::CanarySet;
use crate::encode::{Encoding, Form, Needle, needles_for};

/// The chunk size of streaming scans.
pub const CHUNK: usize = 1 << 20;

/// The matching engine (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// One Aho-Corasick automaton.
    AhoCorasick,
    /// An 8-byte-gram hash filter with exact verification.
    GramFilter,
}

const GRAM: usize = 8;
const FILTER_BITS: u32 = 23;

/// A hasher for keys that are already 8 bytes of text: one multiply (the filter verifies
/// every candidate exactly, so hash quality only affects speed).
#[derive(Default)]
struct GramHasher(u64);

impl std::hash::Hasher for GramHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    }
}

type GramMap = std::collections::HashMap<u64, Vec<u32>, std::hash::BuildHasherDefault<GramHasher>>;

struct GramFilter {
    bits: Vec<u64>,
    starts: GramMap,
}

impl GramFilter {
    fn slot(key: u64) -> (usize, u64) {
        let h = key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - FILTER_BITS);
        let h = usize::try_from(h).unwrap_or(0);
        (h >> 6, 1u64 << (h & 63))
    }

    fn new(needles: &[Needle]) -> Self {
        let mut bits = vec![0u64; 1 << (FILTER_BITS - 6)];
        let mut starts = GramMap::default();
        for (i, n) in needles.iter().enumerate() {
            let Some(key) = n
                .bytes
                .get(..GRAM)
                .and_then(|k| <[u8; GRAM]>::try_from(k).ok())
            else {
                continue;
            };
            let key = u64::from_le_bytes(key);
            let (w, b) = Self::slot(key);
            if let Some(word) = bits.get_mut(w) {
                *word |= b;
            }
            starts
                .entry(key)
                .or_default()
                .push(u32::try_from(i).unwrap_or(u32::MAX));
        }
        Self { bits, starts }
    }
}

enum Matcher {
    Ac(AhoCorasick),
    Gram(GramFilter),
}

/// A compiled scanner over a [`CanarySet`]. `Debug` shows counts only.
pub struct Scanner {
    set: CanarySet,
    needles: Vec<Needle>,
    matcher: Matcher,
    overlap: usize,
}

impl fmt::Debug for Scanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scanner")
            .field("canaries", &self.set.len())
            .field("needles", &self.needles.len())
            .finish_non_exhaustive()
    }
}

/// One raw match, before aggregation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    /// Index of the canary.
    pub canary: usize,
    /// The form.
    pub form: Form,
    /// The encoding.
    pub encoding: Encoding,
    /// Absolute byte offset in the stream.
    pub offset: u64,
}

/// One finding: a canary seen in an artifact, in one encoding. Never holds plaintext: only the
/// canary's id and marker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The channel (`postgres/pg_dump-plain`, `sqlite/wal`, `app/tracing-json`, ...).
    pub channel: String,
    /// The artifact (a path, a stream name), with `!inner` for archive members and a
    /// `[view]` suffix for decoded views (`[gunzip]`, `[heap-pglz]`, `[pg_restore]`).
    pub artifact: String,
    /// Byte offset of the first match, within that view.
    pub offset: u64,
    /// The encoding.
    pub encoding: Encoding,
    /// The form (`value`, `pair/6dp`, `f64`, ...).
    pub form: String,
    /// The canary id.
    pub canary_id: String,
    /// The canary marker.
    pub marker: String,
    /// Whether the canary is a positive control.
    pub control: bool,
    /// How many matches of this canary in this encoding the view held.
    pub matches: u64,
}

impl Scanner {
    /// Compiles the needles of every canary of `set`.
    ///
    /// # Errors
    /// [`Error::Canary`] for a canary too short to scan for; [`Error::Scanner`] if the automaton
    /// cannot be built.
    pub fn new(set: CanarySet) -> Result<Self, Error> {
        Self::with_engine(set, None)
    }

    /// As [`Self::new`], with the engine chosen by the caller (`None`: by needle count).
    ///
    /// # Errors
    /// As [`Self::new`].
    pub fn with_engine(set: CanarySet, engine: Option<Engine>) -> Result<Self, Error> {
        let mut needles = Vec::new();
        for (i, c) in set.canaries.iter().enumerate() {
            needles_for(i, c, &mut needles)?;
        }
        // Identical needles from different forms of one canary: keep the first.
        let mut seen = std::collections::HashSet::new();
        needles.retain(|n| seen.insert((n.canary, n.bytes.to_vec())));
        let small = needles.len() <= 4000;
        let engine = engine.unwrap_or(if small {
            Engine::AhoCorasick
        } else {
            Engine::GramFilter
        });
        let matcher = match engine {
            Engine::AhoCorasick => Matcher::Ac(
                AhoCorasick::builder()
                    .match_kind(MatchKind::Standard)
                    .kind(small.then_some(AhoCorasickKind::DFA))
                    .build(needles.iter().map(|n| n.bytes.as_slice()))
                    .map_err(|e| Error::Scanner(e.to_string()))?,
            ),
            Engine::GramFilter => Matcher::Gram(GramFilter::new(&needles)),
        };
        let overlap = needles
            .iter()
            .map(|n| n.bytes.len())
            .max()
            .unwrap_or(1)
            .saturating_sub(1)
            // Room to see a `\x` before a hex match at the start of the new data.
            .saturating_add(2);
        Ok(Self {
            set,
            needles,
            matcher,
            overlap,
        })
    }

    /// The canaries.
    #[must_use]
    pub fn canaries(&self) -> &CanarySet {
        &self.set
    }

    /// How many needles the canaries made.
    #[must_use]
    pub fn needle_count(&self) -> usize {
        self.needles.len()
    }

    /// The matcher's heap use in bytes (approximate for the gram filter).
    #[must_use]
    pub fn memory_usage(&self) -> usize {
        match &self.matcher {
            Matcher::Ac(a) => a.memory_usage(),
            Matcher::Gram(g) => g.bits.len() * 8 + g.starts.len() * 48 + self.needles.len() * 4,
        }
    }

    /// The engine in use.
    #[must_use]
    pub fn engine(&self) -> Engine {
        match self.matcher {
            Matcher::Ac(_) => Engine::AhoCorasick,
            Matcher::Gram(_) => Engine::GramFilter,
        }
    }

    /// Scans a byte slice; calls `hit` for every match.
    pub fn scan_bytes(&self, bytes: &[u8], mut hit: impl FnMut(Hit)) {
        self.scan_buffer(bytes, 0, 0, &mut hit);
    }

    fn scan_buffer(&self, buf: &[u8], skip_end: usize, base: u64, hit: &mut impl FnMut(Hit)) {
        let mut report = |pattern: usize, start: usize, end: usize| {
            if end <= skip_end {
                return; // wholly inside the overlap: reported with the previous chunk
            }
            let Some(n) = self.needles.get(pattern) else {
                return;
            };
            let mut encoding = n.encoding;
            if encoding == Encoding::HexLower
                && start >= 2
                && buf.get(start - 2..start) == Some(b"\\x".as_slice())
            {
                encoding = Encoding::PgBytea;
            }
            hit(Hit {
                canary: n.canary,
                form: n.form,
                encoding,
                offset: base + start as u64,
            });
        };
        match &self.matcher {
            Matcher::Ac(ac) => {
                for m in ac.find_overlapping_iter(buf) {
                    report(m.pattern().as_usize(), m.start(), m.end());
                }
            }
            Matcher::Gram(g) => {
                for (p, w) in buf.windows(GRAM).enumerate() {
                    let key = u64::from_le_bytes(<[u8; GRAM]>::try_from(w).unwrap_or([0; GRAM]));
                    let (word, bit) = GramFilter::slot(key);
                    if g.bits.get(word).is_none_or(|v| v & bit == 0) {
                        continue;
                    }
                    let Some(list) = g.starts.get(&key) else {
                        continue;
                    };
                    let rest = buf.get(p..).unwrap_or_default();
                    for &i in list {
                        let i = usize::try_from(i).unwrap_or(usize::MAX);
                        if let Some(n) = self.needles.get(i)
                            && rest.starts_with(&n.bytes)
                        {
                            report(i, p, p + n.bytes.len());
                        }
                    }
                }
            }
        }
    }

    /// Scans a reader in [`CHUNK`]-sized pieces with an overlap of the longest needle, calling
    /// `hit` for every match; returns the number of bytes read. Memory: one chunk plus the
    /// overlap.
    ///
    /// # Errors
    /// The reader's I/O error.
    pub fn scan_reader(&self, mut reader: impl Read, mut hit: impl FnMut(Hit)) -> io::Result<u64> {
        let mut buf = vec![0u8; CHUNK + self.overlap];
        let mut keep = 0usize; // bytes carried over from the previous chunk
        let mut base = 0u64; // stream offset of buf[0]
        let mut total = 0u64;
        loop {
            let mut filled = keep;
            while filled < buf.len() {
                let Some(space) = buf.get_mut(filled..) else {
                    break;
                };
                match reader.read(space) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let new = filled - keep;
            if new == 0 {
                return Ok(total);
            }
            total += new as u64;
            if let Some(data) = buf.get(..filled) {
                self.scan_buffer(data, keep, base, &mut hit);
            }
            let next_keep = self.overlap.min(filled);
            buf.copy_within(filled - next_keep..filled, 0);
            base += (filled - next_keep) as u64;
            keep = next_keep;
        }
    }
}

/// Aggregates hits into [`Finding`]s: one per canary, encoding and form, with the first offset
/// and a count.
#[derive(Debug, Default)]
pub struct Collector {
    found: BTreeMap<(usize, Encoding, Form), (u64, u64)>,
}

impl Collector {
    /// An empty collector.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one hit.
    pub fn add(&mut self, hit: Hit) {
        let e = self
            .found
            .entry((hit.canary, hit.encoding, hit.form))
            .or_insert((hit.offset, 0));
        e.0 = e.0.min(hit.offset);
        e.1 += 1;
    }

    /// Whether nothing was recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// The findings, labelled with `channel` and `artifact`.
    #[must_use]
    pub fn findings(&self, set: &CanarySet, channel: &str, artifact: &str) -> Vec<Finding> {
        self.found
            .iter()
            .filter_map(|(&(canary, encoding, form), &(offset, matches))| {
                let c = set.canaries.get(canary)?;
                Some(Finding {
                    channel: channel.to_owned(),
                    artifact: artifact.to_owned(),
                    offset,
                    encoding,
                    form: form.to_string(),
                    canary_id: c.id.clone(),
                    marker: c.marker.clone(),
                    control: c.control,
                    matches,
                })
            })
            .collect()
    }
}

/// The scanner's self-test: plants every canary (raw, UTF-16LE, hex, base64 and a JSON
/// string; GPS points as a pair and as f64 bytes) into a synthetic buffer, one encoding at a
/// time, and returns the `canary id / encoding` pairs it failed to find. Empty means the
/// detector works for these canaries.
#[must_use]
pub fn self_test(scanner: &Scanner) -> Vec<String> {
    let mut missed = Vec::new();
    for (i, c) in scanner.canaries().canaries.iter().enumerate() {
        let mut plants: Vec<(Encoding, Vec<u8>)> = Vec::new();
        if let Some((lat, lon)) = c.gps_value() {
            plants.push((Encoding::Raw, format!("({lat}, {lon})").into_bytes()));
            plants.push((Encoding::F64Le, lat.to_le_bytes().to_vec()));
            plants.push((Encoding::F64Be, lon.to_be_bytes().to_vec()));
        } else if let Ok(raw) = c.raw_bytes() {
            plants.push((Encoding::Raw, raw.to_vec()));
            plants.push((Encoding::HexLower, hex::encode(&*raw).into_bytes()));
            plants.push((
                Encoding::Base64,
                crate::encode::base64(&raw, false).into_bytes(),
            ));
            if let Some(t) = c.text_value() {
                plants.push((
                    Encoding::Utf16Le,
                    t.encode_utf16().flat_map(u16::to_le_bytes).collect(),
                ));
                let json = crate::encode::json_escape(t, false);
                let enc = if json == raw.as_slice() {
                    Encoding::Raw
                } else {
                    Encoding::Json
                };
                plants.push((enc, json));
            }
        }
        for (enc, bytes) in plants {
            let mut hay = b"-- self-test prefix 'x' --".to_vec();
            hay.extend_from_slice(&bytes);
            hay.extend_from_slice(b"-- suffix --");
            let mut seen = false;
            scanner.scan_bytes(&hay, |h| seen |= h.canary == i && h.encoding == enc);
            if !seen {
                missed.push(format!("{} / {enc}", c.id));
            }
        }
    }
    missed
}
