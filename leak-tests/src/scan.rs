//! The scanner: every needle of every canary compiled into one multi-pattern matcher, run over
//! readers in fixed-size chunks with an overlap, so memory stays bounded by the chunk size (plus
//! the matcher) whatever the size of the artifact.
//!
//! Two engines report the same matches (every needle at every position, overlapping):
//! * [`Engine::AhoCorasick`]: one Aho-Corasick automaton (a DFA up to 4,000 needles). The
//!   default for small canary sets.
//! * [`Engine::GramFilter`]: every needle is at least 8 bytes long, so each text position's
//!   next 8 bytes are hashed into a bit set of the needles' anchor grams (each needle's least
//!   common 8-byte gram among all needles, at a known offset; a two-hash Bloom filter of
//!   1 MiB, or 16 bits per distinct anchor for large sets, at most 128 MiB); a hit is verified
//!   exactly against the needles with that anchor, found through an open-addressing index.
//!   Its speed does not fall with the number of needles the way an automaton's does (the
//!   benchmark measured the Aho-Corasick NFA at 28 MB/s on 237,000 needles), so it is the
//!   default above 4,000 needles.
//!
//! Needle bytes live in a zeroizing arena of 16 MiB blocks (never reallocated, so no copy is
//! left behind and memory does not double while it grows), with 20 bytes of position, length
//! and meaning per needle beside it, not one allocation per needle: a million real values (the
//! residue scan) cost their encoded bytes plus 20 bytes per needle.
//!
//! Every scan also searches, with the same needles, the regions around escape sequences
//! decoded up to three layers deep ([`crate::unescape`]); such hits carry [`Hit::layers`].

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::ops::Range;
use std::sync::atomic::AtomicU64;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use serde::Serialize;

use crate::Error;
use crate::canary::CanaryKind;
use crate::canary::CanarySet;
use crate::encode::{Encoding, Form, Needle, needles_in};
use crate::unescape;
use zeroize::Zeroizing;

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
/// The smallest filter: 2^23 bits (1 MiB, stays in cache).
const MIN_FILTER_BITS: u32 = 23;
/// The largest filter: 2^30 bits (128 MiB).
const MAX_FILTER_BITS: u32 = 30;

/// Which encodings the scanner makes needles in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum EncodingSet {
    /// Every encoding of [`crate::encode`] (the default for canaries).
    #[default]
    All,
    /// The smaller set for real values (the residue scan): text as raw, case-folded and
    /// UTF-16LE; bytes as raw and hex (so also PostgreSQL's `\x` form); GPS points as
    /// decimal text (raw, UTF-16LE) and f64 bytes. Escaped forms (JSON, SQL, COPY) are left to
    /// an unescaping pass over the data. Text up to four [`crate::encode::WINDOW`]s (kind
    /// `text`) is searched for whole; longer text (kind `transcript`) by windows.
    Residue,
    /// Exactly these encodings, for every kind.
    Only(Vec<Encoding>),
}

impl EncodingSet {
    /// Whether a canary of `kind` is searched for whole only: text (not transcripts) in the
    /// residue set, so that a fragment two real values share never counts for either.
    #[must_use]
    pub fn whole(&self, kind: CanaryKind) -> bool {
        *self == EncodingSet::Residue && kind == CanaryKind::Text
    }

    /// The encodings for a canary of `kind` (`None`: all).
    #[must_use]
    pub fn for_kind(&self, kind: CanaryKind) -> Option<&[Encoding]> {
        match self {
            EncodingSet::All => None,
            EncodingSet::Only(list) => Some(list),
            EncodingSet::Residue => Some(match kind {
                CanaryKind::Text | CanaryKind::Transcript => {
                    &[Encoding::Raw, Encoding::CaseFolded, Encoding::Utf16Le]
                }
                CanaryKind::Bytes => &[Encoding::Raw, Encoding::HexLower],
                CanaryKind::Gps => &GPS_RESIDUE,
            }),
        }
    }
}

/// The residue set's encodings of a GPS point: its decimal text (raw, UTF-16LE) and every
/// binary number form.
const GPS_RESIDUE: [Encoding; 8] = {
    let [a, b, c, d, e, f] = Encoding::NUMBER_FORMS;
    [Encoding::Raw, Encoding::Utf16Le, a, b, c, d, e, f]
};

/// What a needle stands for, and where its bytes are in the arena.
#[derive(Clone, Copy)]
struct NeedleMeta {
    block: u32,
    offset: u32,
    len: u32,
    canary: u32,
    form: Form,
    encoding: Encoding,
}

/// The arena's block size.
const ARENA_BLOCK: usize = 1 << 24;

/// Needle bytes in zeroizing blocks that are never reallocated.
#[derive(Default)]
struct Arena {
    blocks: Vec<Zeroizing<Vec<u8>>>,
}

impl Arena {
    /// Appends `bytes`, returning (block, offset).
    fn push(&mut self, bytes: &[u8]) -> (u32, u32) {
        let room = self
            .blocks
            .last()
            .is_some_and(|b| b.capacity() - b.len() >= bytes.len());
        if !room {
            self.blocks.push(Zeroizing::new(Vec::with_capacity(
                ARENA_BLOCK.max(bytes.len()),
            )));
        }
        let block = u32::try_from(self.blocks.len().saturating_sub(1)).unwrap_or(u32::MAX);
        match self.blocks.last_mut() {
            Some(b) => {
                let offset = u32::try_from(b.len()).unwrap_or(u32::MAX);
                b.extend_from_slice(bytes);
                (block, offset)
            }
            None => (u32::MAX, 0),
        }
    }

    fn get(&self, n: &NeedleMeta) -> &[u8] {
        let block = usize::try_from(n.block).unwrap_or(usize::MAX);
        let from = usize::try_from(n.offset).unwrap_or(usize::MAX);
        let len = usize::try_from(n.len).unwrap_or(0);
        self.blocks
            .get(block)
            .and_then(|b| b.get(from..from.saturating_add(len)))
            .unwrap_or_default()
    }

    fn capacity(&self) -> usize {
        self.blocks.iter().map(|b| b.capacity()).sum()
    }
}

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

/// One slot of the gram index: a distinct anchor gram and its run in `GramFilter::ids`
/// (`count == 0`: an empty slot).
#[derive(Clone, Copy, Default)]
struct PrefixSlot {
    key: u64,
    start: u32,
    count: u32,
}

/// The gram filter. Each needle is indexed by its **anchor**: the 8-byte gram inside it that
/// is least common among all needles (so a prefix thousands of real values share, `12 High
/// Street`, is not what they are looked up by), at a known offset in the needle.
struct GramFilter {
    bits: Vec<u64>,
    /// The filter has `2^filter_bits` bits.
    filter_bits: u32,
    /// Open addressing, linear probing, a power of two at most half full.
    slots: Vec<PrefixSlot>,
    /// Needle indices, grouped by anchor gram.
    ids: Vec<u32>,
    /// Per entry of `ids`: the anchor's offset in the needle.
    anchors: Vec<u16>,
}

fn gram_at(bytes: &[u8], at: usize) -> Option<u64> {
    bytes
        .get(at..at.checked_add(GRAM)?)
        .and_then(|k| <[u8; GRAM]>::try_from(k).ok())
        .map(u64::from_le_bytes)
}

impl GramFilter {
    fn slot(&self, key: u64) -> (usize, u64) {
        let h = key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - self.filter_bits);
        let h = usize::try_from(h).unwrap_or(0);
        (h >> 6, 1u64 << (h & 63))
    }

    /// The second bit of `key` (the filter is a two-hash Bloom filter; the second is only
    /// looked at when the first bit is set).
    fn slot2(&self, key: u64) -> (usize, u64) {
        let h = (key ^ (key >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9) >> (64 - self.filter_bits);
        let h = usize::try_from(h).unwrap_or(0);
        (h >> 6, 1u64 << (h & 63))
    }

    fn home(&self, key: u64) -> usize {
        use std::hash::Hasher as _;
        let mut h = GramHasher::default();
        h.write_u64(key);
        usize::try_from(h.finish() >> 16).unwrap_or(0) & (self.slots.len() - 1)
    }

    fn new(arena: &Arena, needles: &[NeedleMeta]) -> Self {
        // Pass 1: how common each gram is among the needles (hashed, saturating counters).
        let grams: usize = needles
            .iter()
            .map(|n| usize::try_from(n.len).unwrap_or(0).saturating_sub(GRAM - 1))
            .sum();
        let count_bits = grams
            .max(1)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(12, 24);
        let bucket = |g: u64| {
            usize::try_from(g.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - count_bits)).unwrap_or(0)
        };
        let mut counts = vec![0u8; 1 << count_bits];
        for n in needles {
            for w in arena.get(n).windows(GRAM) {
                let g = u64::from_le_bytes(<[u8; GRAM]>::try_from(w).unwrap_or([0; GRAM]));
                if let Some(c) = counts.get_mut(bucket(g)) {
                    *c = c.saturating_add(1);
                }
            }
        }
        // Pass 2: each needle's anchor is its least common gram (the first, on a tie).
        let mut keyed: Vec<(u64, u32, u16)> = needles
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let bytes = arena.get(n);
                let last = bytes.len().checked_sub(GRAM)?.min(usize::from(u16::MAX));
                let (at, _) = (0..=last)
                    .filter_map(|at| {
                        let g = gram_at(bytes, at)?;
                        Some((at, counts.get(bucket(g)).copied().unwrap_or(u8::MAX)))
                    })
                    .min_by_key(|&(at, c)| (c, at))?;
                Some((
                    gram_at(bytes, at)?,
                    u32::try_from(i).ok()?,
                    u16::try_from(at).ok()?,
                ))
            })
            .collect();
        drop(counts);
        keyed.sort_unstable();
        let distinct = keyed.chunk_by(|a, b| a.0 == b.0).count();
        let wanted = distinct.saturating_mul(16).max(1).next_power_of_two();
        let filter_bits = wanted
            .trailing_zeros()
            .clamp(MIN_FILTER_BITS, MAX_FILTER_BITS);
        let mut g = Self {
            bits: vec![0u64; 1 << (filter_bits - 6)],
            filter_bits,
            slots: vec![
                PrefixSlot::default();
                distinct.saturating_mul(2).max(2).next_power_of_two()
            ],
            ids: keyed.iter().map(|&(_, i, _)| i).collect(),
            anchors: keyed.iter().map(|&(_, _, a)| a).collect(),
        };
        let mut start = 0usize;
        for run in keyed.chunk_by(|a, b| a.0 == b.0) {
            let Some(&(key, _, _)) = run.first() else {
                continue;
            };
            for (w, b) in [g.slot(key), g.slot2(key)] {
                if let Some(word) = g.bits.get_mut(w) {
                    *word |= b;
                }
            }
            let mask = g.slots.len() - 1;
            let mut at = g.home(key);
            while g.slots.get(at).is_some_and(|s| s.count != 0) {
                at = (at + 1) & mask;
            }
            if let Some(s) = g.slots.get_mut(at) {
                *s = PrefixSlot {
                    key,
                    start: u32::try_from(start).unwrap_or(u32::MAX),
                    count: u32::try_from(run.len()).unwrap_or(u32::MAX),
                };
            }
            start += run.len();
        }
        g
    }

    /// The needles anchored by gram `key`, with their anchor offsets.
    fn candidates(&self, key: u64) -> (&[u32], &[u16]) {
        let mask = self.slots.len() - 1;
        let mut at = self.home(key);
        while let Some(s) = self.slots.get(at) {
            if s.count == 0 {
                break;
            }
            if s.key == key {
                let from = usize::try_from(s.start).unwrap_or(usize::MAX);
                let to = from.saturating_add(usize::try_from(s.count).unwrap_or(0));
                return (
                    self.ids.get(from..to).unwrap_or_default(),
                    self.anchors.get(from..to).unwrap_or_default(),
                );
            }
            at = (at + 1) & mask;
        }
        (&[], &[])
    }

    fn memory_usage(&self) -> usize {
        self.bits.len() * 8 + self.slots.len() * 16 + self.ids.len() * 6
    }
}

enum Matcher {
    Ac(AhoCorasick),
    Gram(GramFilter),
}

/// A compiled scanner over a [`CanarySet`]. `Debug` shows counts only.
pub struct Scanner {
    set: CanarySet,
    /// Every needle's bytes, back to back.
    arena: Arena,
    needles: Vec<NeedleMeta>,
    matcher: Matcher,
    overlap: usize,
    /// Bytes of context around an escape for the unescaping pass.
    context: usize,
    /// Stored bytes the unescaping pass decoded (see [`Scanner::unescaped_bytes`]).
    unescaped: AtomicU64,
    /// Threads per chunk in [`Scanner::scan_reader`].
    threads: usize,
}

leakless::debug_fields!(Scanner, |s| {
    "canaries": s.set.len(),
    "needles": s.needles.len(),
});

/// One raw match, before aggregation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    /// Index of the canary.
    pub canary: usize,
    /// The form.
    pub form: Form,
    /// The encoding.
    pub encoding: Encoding,
    /// Absolute byte offset in the stream. For a match found after unescaping: the offset of
    /// the stored byte or escape sequence that decoded to the match's first byte.
    pub offset: u64,
    /// How many layers of escapes were undone before the needle matched (0: as stored; see
    /// [`crate::unescape`]).
    pub layers: u8,
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
    /// How many layers of escapes (`\u0020`, `=C3=A9`, `&amp;`, ...) the scanner undid before
    /// the needle matched: 0 as stored. `offset` is then the stored offset of the byte or
    /// escape sequence that decoded to the match's first byte.
    pub layers: u8,
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
        Self::with_options(set, engine, &EncodingSet::All)
    }

    /// As [`Self::with_engine`], making needles only in the encodings of `encodings`.
    ///
    /// # Errors
    /// As [`Self::new`]; [`Error::Scanner`] above 2^32 canaries.
    pub fn with_options(
        set: CanarySet,
        engine: Option<Engine>,
        encodings: &EncodingSet,
    ) -> Result<Self, Error> {
        let mut arena = Arena::default();
        let mut needles: Vec<NeedleMeta> = Vec::new();
        let mut one: Vec<Needle> = Vec::new();
        for (i, c) in set.canaries.iter().enumerate() {
            one.clear();
            needles_in(
                i,
                c,
                encodings.for_kind(c.kind),
                encodings.whole(c.kind),
                &mut one,
            )?;
            let canary =
                u32::try_from(i).map_err(|_| Error::Scanner("over 2^32 canaries".into()))?;
            // Identical needles from different forms of one canary: keep the first.
            let mut seen = std::collections::HashSet::new();
            for n in &one {
                if !seen.insert(n.bytes.as_slice()) {
                    continue;
                }
                let (block, offset) = arena.push(&n.bytes);
                needles.push(NeedleMeta {
                    block,
                    offset,
                    len: u32::try_from(n.bytes.len()).unwrap_or(u32::MAX),
                    canary,
                    form: n.form,
                    encoding: n.encoding,
                });
            }
        }
        drop(one);
        needles.shrink_to_fit();
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
                    .build(needles.iter().map(|n| arena.get(n)))
                    .map_err(|e| Error::Scanner(e.to_string()))?,
            ),
            Engine::GramFilter => Matcher::Gram(GramFilter::new(&arena, &needles)),
        };
        let overlap = needles
            .iter()
            .map(|n| usize::try_from(n.len).unwrap_or(usize::MAX))
            .max()
            .unwrap_or(1)
            .saturating_sub(1)
            // Room to see a `\x` before a hex match at the start of the new data.
            .saturating_add(2);
        // The unescaping pass: context around an escape, and room in the overlap for a needle
        // written with escapes (up to 12 stored bytes per decoded byte, `\\u00e9`-style).
        let longest = needles
            .iter()
            .map(|n| usize::try_from(n.len).unwrap_or(usize::MAX))
            .max()
            .unwrap_or(1);
        let context = longest.saturating_mul(2).saturating_add(16);
        let overlap = overlap.max(longest.saturating_mul(12).saturating_add(context));
        Ok(Self {
            set,
            arena,
            needles,
            matcher,
            overlap,
            context,
            unescaped: AtomicU64::new(0),
            threads: std::thread::available_parallelism()
                .map_or(1, std::num::NonZero::get)
                .min(4),
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

    /// The needle storage's heap use in bytes (the arena and 20 bytes per needle).
    #[must_use]
    pub fn needle_memory(&self) -> usize {
        self.arena.capacity() + self.needles.capacity() * size_of::<NeedleMeta>()
    }

    /// The matcher's heap use in bytes (approximate for the gram filter).
    #[must_use]
    pub fn memory_usage(&self) -> usize {
        match &self.matcher {
            Matcher::Ac(a) => a.memory_usage(),
            Matcher::Gram(g) => g.memory_usage(),
        }
    }

    /// How many stored bytes the unescaping pass has decoded (regions around escapes, each
    /// counted once however many layers it took, again if it lies in the overlap of two chunks)
    /// since this scanner was built: a measure of how much of the data was scanned twice.
    #[must_use]
    pub fn unescaped_bytes(&self) -> u64 {
        self.unescaped.load(std::sync::atomic::Ordering::Relaxed)
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
        let regions = unescape::regions(buf, self.context);
        // Matches as stored inside a region: a decoded match over the same bytes repeats one.
        let mut stored: Vec<(usize, usize, usize)> = Vec::new();
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
            // The regions are sorted and disjoint: the first one ending after `start`.
            let i = regions.partition_point(|r| r.end <= start);
            if regions.get(i).is_some_and(|r| r.start < end) {
                stored.push((usize::try_from(n.canary).unwrap_or(usize::MAX), start, end));
            }
            hit(Hit {
                canary: usize::try_from(n.canary).unwrap_or(usize::MAX),
                form: n.form,
                encoding,
                offset: base + start as u64,
                layers: 0,
            });
        };
        self.each_match(buf, &mut report);
        if !regions.is_empty() {
            self.scan_unescaped(buf, &regions, &stored, skip_end, base, hit);
        }
    }

    /// Decodes each region layer by layer and reports the matches that cover a decoded byte
    /// (see [`crate::unescape`]).
    fn scan_unescaped(
        &self,
        buf: &[u8],
        regions: &[Range<usize>],
        stored: &[(usize, usize, usize)],
        skip_end: usize,
        base: u64,
        hit: &mut impl FnMut(Hit),
    ) {
        for r in regions {
            let Some(src) = buf.get(r.clone()) else {
                continue;
            };
            self.unescaped
                .fetch_add(src.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let mut cur = Zeroizing::new(src.to_vec());
            // Per byte of `cur`, its offset in `buf`.
            let mut map: Vec<usize> = r.clone().collect();
            for layers in 1..=unescape::MAX_LAYERS {
                let Some(layer) = unescape::decode_layer(&cur) else {
                    break;
                };
                let next_map: Vec<usize> = layer
                    .origin
                    .iter()
                    .map(|&o| map.get(o).copied().unwrap_or(r.start))
                    .collect();
                let mut report = |pattern: usize, start: usize, end: usize| {
                    if !layer
                        .decoded
                        .get(start..end)
                        .is_some_and(|d| d.contains(&true))
                    {
                        return; // no byte of this layer's decoding: matched before
                    }
                    let (Some(&from), Some(&last)) =
                        (next_map.get(start), next_map.get(end.saturating_sub(1)))
                    else {
                        return;
                    };
                    if last < skip_end {
                        return; // wholly inside the overlap: reported with the previous chunk
                    }
                    let Some(n) = self.needles.get(pattern) else {
                        return;
                    };
                    let canary = usize::try_from(n.canary).unwrap_or(usize::MAX);
                    if stored
                        .iter()
                        .any(|&(c, s, e)| c == canary && s <= last && from < e)
                    {
                        return; // the same canary matched as stored over these bytes
                    }
                    let mut encoding = n.encoding;
                    if encoding == Encoding::HexLower
                        && start >= 2
                        && layer.bytes.get(start - 2..start) == Some(b"\\x".as_slice())
                    {
                        encoding = Encoding::PgBytea;
                    }
                    hit(Hit {
                        canary,
                        form: n.form,
                        encoding,
                        offset: base + from as u64,
                        layers,
                    });
                };
                self.each_match(&layer.bytes, &mut report);
                cur = layer.bytes;
                map = next_map;
            }
        }
    }

    /// Runs the matcher over `buf`, calling `report(pattern, start, end)` for every match.
    fn each_match(&self, buf: &[u8], report: &mut impl FnMut(usize, usize, usize)) {
        match &self.matcher {
            Matcher::Ac(ac) => {
                for m in ac.find_overlapping_iter(buf) {
                    report(m.pattern().as_usize(), m.start(), m.end());
                }
            }
            Matcher::Gram(g) => self.each_gram_match(g, buf, report),
        }
    }

    /// The matches of the gram filter's needles: probes every position.
    fn each_gram_match(
        &self,
        g: &GramFilter,
        buf: &[u8],
        report: &mut impl FnMut(usize, usize, usize),
    ) {
        let bits = g.bits.as_slice();
        for (p, w) in buf.windows(GRAM).enumerate() {
            let key = u64::from_le_bytes(<[u8; GRAM]>::try_from(w).unwrap_or([0; GRAM]));
            let (word, bit) = g.slot(key);
            if bits.get(word).is_none_or(|v| v & bit == 0) {
                continue;
            }
            let (word, bit) = g.slot2(key);
            if bits.get(word).is_none_or(|v| v & bit == 0) {
                continue;
            }
            let (ids, anchors) = g.candidates(key);
            for (&i, &anchor) in ids.iter().zip(anchors) {
                // A needle that would start before the buffer ended in an earlier one.
                let Some(start) = p.checked_sub(usize::from(anchor)) else {
                    continue;
                };
                let i = usize::try_from(i).unwrap_or(usize::MAX);
                if let Some(n) = self.needles.get(i) {
                    let bytes = self.arena.get(n);
                    if buf.get(start..).is_some_and(|r| r.starts_with(bytes)) {
                        report(i, start, start + bytes.len());
                    }
                }
            }
        }
    }

    /// Scans `data`, whose first `skip_end` bytes were scanned with the previous chunk, as
    /// [`Self::threads`] pieces side by side: each piece is scanned with the same overlap
    /// before it as consecutive chunks have, so every match is reported once, by the piece
    /// its end lies in. Hits are delivered in piece order.
    fn scan_split(&self, data: &[u8], skip_end: usize, base: u64, hit: &mut impl FnMut(Hit)) {
        let fresh = data.len().saturating_sub(skip_end);
        let parts = self.threads.max(1);
        // Small pieces are not worth a thread.
        if parts == 1 || fresh < parts * (self.overlap + (64 << 10)) {
            self.scan_buffer(data, skip_end, base, hit);
            return;
        }
        let step = fresh.div_ceil(parts);
        let pieces: Vec<Vec<Hit>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..parts)
                .map(|k| {
                    let new_from = skip_end + k * step;
                    let new_to = new_from.saturating_add(step).min(data.len());
                    let from = if k == 0 {
                        0
                    } else {
                        new_from.saturating_sub(self.overlap)
                    };
                    let skip = if k == 0 { skip_end } else { new_from - from };
                    let piece = data.get(from..new_to).unwrap_or_default();
                    scope.spawn(move || {
                        let mut hits = Vec::new();
                        self.scan_buffer(piece, skip, base + from as u64, &mut |h| hits.push(h));
                        hits
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        for h in pieces.into_iter().flatten() {
            hit(h);
        }
    }

    /// How many threads [`Self::scan_reader`] scans each chunk with (default: the available
    /// parallelism, at most 4).
    #[must_use]
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Sets how many threads [`Self::scan_reader`] scans each chunk with (1: the calling
    /// thread only). Findings do not depend on it.
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// Scans a reader in [`CHUNK`]-sized pieces with an overlap (12 times the longest needle,
    /// room for a needle written with escapes), calling
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
            let filled = keep
                + crate::containers::read_up_to(
                    &mut reader,
                    buf.get_mut(keep..).unwrap_or_default(),
                )?;
            let new = filled - keep;
            if new == 0 {
                return Ok(total);
            }
            total += new as u64;
            if let Some(data) = buf.get(..filled) {
                self.scan_split(data, keep, base, &mut hit);
            }
            let next_keep = self.overlap.min(filled);
            buf.copy_within(filled - next_keep..filled, 0);
            base += (filled - next_keep) as u64;
            keep = next_keep;
        }
    }
}

/// Aggregates hits into [`Finding`]s: one per canary, encoding, form and number of unescaping
/// layers, with the first offset and a count.
#[derive(Debug, Default)]
pub struct Collector {
    found: BTreeMap<(usize, Encoding, Form, u8), (u64, u64)>,
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
            .entry((hit.canary, hit.encoding, hit.form, hit.layers))
            .or_insert((hit.offset, 0));
        e.0 = e.0.min(hit.offset);
        e.1 += 1;
    }

    /// Whether nothing was recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// The indices of the canaries recorded (each once per encoding and form).
    pub fn canaries(&self) -> impl Iterator<Item = usize> + '_ {
        self.found.keys().map(|&(canary, _, _, _)| canary)
    }

    /// The findings, labelled with `channel` and `artifact`.
    #[must_use]
    pub fn findings(&self, set: &CanarySet, channel: &str, artifact: &str) -> Vec<Finding> {
        self.findings_where(set, channel, artifact, |_, _| true)
    }

    /// As [`Self::findings`], only those for which `keep(canary index, is control)` holds
    /// (called once per canary, encoding and form, in canary order).
    pub fn findings_where(
        &self,
        set: &CanarySet,
        channel: &str,
        artifact: &str,
        mut keep: impl FnMut(usize, bool) -> bool,
    ) -> Vec<Finding> {
        self.found
            .iter()
            .filter_map(|(&(canary, encoding, form, layers), &(offset, matches))| {
                let c = set.canaries.get(canary)?;
                if !keep(canary, c.control) {
                    return None;
                }
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
                    layers,
                })
            })
            .collect()
    }
}

/// The scanner's self-test: plants every canary (raw, UTF-16LE, hex, base64 and a JSON
/// string; GPS points as a pair, as f64 bytes, as an f32 pair and as PostgreSQL `numeric` and
/// MariaDB `DECIMAL` pairs) into a synthetic buffer, one encoding at a time, and returns the
/// `canary id / encoding` pairs it failed to find. Each canary is also planted escaped (text
/// and GPS pairs as COPY-doubled JSON with mixed `\u0020` escapes, bytes percent-encoded),
/// which must be found after unescaping (`canary id / escaped` if not). Empty means the
/// detector works for these canaries.
#[must_use]
pub fn self_test(scanner: &Scanner) -> Vec<String> {
    let mut missed = Vec::new();
    for (i, c) in scanner.canaries().canaries.iter().enumerate() {
        let mut plants: Vec<(Encoding, Vec<u8>)> = Vec::new();
        let mut escaped: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        if let Some((lat, lon)) = c.gps_value() {
            let pair = Zeroizing::new(format!("{lat}, {lon}"));
            escaped.push(Zeroizing::new(
                unescape::escape_mixed(&pair, true).into_bytes(),
            ));
            plants.push((Encoding::Raw, format!("({lat}, {lon})").into_bytes()));
            plants.push((Encoding::F64Le, lat.to_le_bytes().to_vec()));
            plants.push((Encoding::F64Be, lon.to_be_bytes().to_vec()));
            plants.extend(crate::encode::numeric_plants(lat, lon));
        } else if let Ok(raw) = c.raw_bytes() {
            plants.push((Encoding::Raw, raw.to_vec()));
            plants.push((Encoding::HexLower, hex::encode(&*raw).into_bytes()));
            escaped.push(Zeroizing::new(match c.text_value() {
                Some(t) => unescape::escape_mixed(t, true).into_bytes(),
                None => crate::encode::percent(&raw, false),
            }));
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
        for bytes in escaped {
            let mut hay = Zeroizing::new(b"{\"self-test\": \"".to_vec());
            hay.extend_from_slice(&bytes);
            hay.extend_from_slice(b"\"}");
            let mut seen = false;
            scanner.scan_bytes(&hay, |h| seen |= h.canary == i && h.layers > 0);
            if !seen {
                missed.push(format!("{} / escaped", c.id));
            }
        }
    }
    missed
}
