//! Seeing through PostgreSQL's storage: pglz and lz4 decompression of compressed varlena
//! values, and a heap-page walker that finds every compressed value in heap and TOAST files.
//!
//! A compressed value is found without the catalog: in every tuple of every 8 KiB page, each
//! 4-byte-aligned offset whose varlena header says "4-byte, compressed inline" and whose sizes
//! are consistent is decompressed (pglz or lz4, by the method bits); a value that decompresses
//! to exactly its recorded raw size is scanned. TOAST chunks (tuples of three attributes:
//! chunk id, sequence number, chunk data) are reassembled per chunk id, and a reassembled
//! value that carries a compression header is decompressed the same way.

use std::collections::BTreeMap;
use std::io::{self, Read};

/// PostgreSQL's block size.
pub const BLCKSZ: usize = 8192;

/// The largest raw size accepted for a compressed value (PostgreSQL's limit is 1 GB; anything
/// bigger than this is not decompressed in memory).
pub const MAX_RAW: usize = 64 << 20;

/// Decompresses a pglz stream (PostgreSQL's `pglz_decompress`) to exactly `rawsize` bytes.
/// `None` when the input is not a valid pglz stream of that size.
#[must_use]
pub fn pglz_decompress(src: &[u8], rawsize: usize) -> Option<Vec<u8>> {
    if rawsize > MAX_RAW {
        return None;
    }
    let mut out: Vec<u8> = Vec::with_capacity(rawsize);
    let mut sp = 0usize;
    while sp < src.len() && out.len() < rawsize {
        let mut ctrl = *src.get(sp)?;
        sp += 1;
        for _ in 0..8 {
            if sp >= src.len() || out.len() >= rawsize {
                break;
            }
            if ctrl & 1 == 1 {
                let b0 = *src.get(sp)?;
                let b1 = *src.get(sp + 1)?;
                let mut len = usize::from(b0 & 0x0f) + 3;
                let off = (usize::from(b0 & 0xf0) << 4) | usize::from(b1);
                sp += 2;
                if len == 18 {
                    len += usize::from(*src.get(sp)?);
                    sp += 1;
                }
                if off == 0 || off > out.len() {
                    return None;
                }
                len = len.min(rawsize - out.len());
                let start = out.len() - off;
                for i in 0..len {
                    let b = *out.get(start + i)?;
                    out.push(b);
                }
            } else {
                out.push(*src.get(sp)?);
                sp += 1;
            }
            ctrl >>= 1;
        }
    }
    (out.len() == rawsize && sp == src.len()).then_some(out)
}

/// Decompresses an lz4 block (PostgreSQL's `lz4_decompress_datum`) to exactly `rawsize` bytes.
#[must_use]
pub fn lz4_decompress(src: &[u8], rawsize: usize) -> Option<Vec<u8>> {
    if rawsize > MAX_RAW {
        return None;
    }
    let out = lz4_flex::block::decompress(src, rawsize).ok()?;
    (out.len() == rawsize).then_some(out)
}

/// Decompresses a compressed datum body: `tcinfo` (raw size in the low 30 bits, method in the
/// top 2: 0 pglz, 1 lz4) followed by the compressed bytes. Returns the method name and bytes.
#[must_use]
pub fn decompress_datum(tcinfo: u32, body: &[u8]) -> Option<(&'static str, Vec<u8>)> {
    let rawsize = usize::try_from(tcinfo & 0x3fff_ffff).ok()?;
    if rawsize == 0 || rawsize < body.len() / 2 {
        return None;
    }
    match tcinfo >> 30 {
        0 => pglz_decompress(body, rawsize).map(|v| ("pglz", v)),
        1 => lz4_decompress(body, rawsize).map(|v| ("lz4", v)),
        _ => None,
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The items (tuples) of one heap page, as byte slices.
fn page_items(page: &[u8]) -> Vec<&[u8]> {
    let mut items = Vec::new();
    let Some(lower) = u16_at(page, 12) else {
        return items;
    };
    let lower = usize::from(lower);
    if !(24..=BLCKSZ).contains(&lower) {
        return items;
    }
    let mut at = 24;
    while at + 4 <= lower {
        if let Some(lp) = u32_at(page, at) {
            let off = usize::try_from(lp & 0x7fff).unwrap_or(0);
            let flags = (lp >> 15) & 3;
            let len = usize::try_from(lp >> 17).unwrap_or(0);
            if flags == 1
                && len > 0
                && off + len <= BLCKSZ
                && let Some(item) = page.get(off..off + len)
            {
                items.push(item);
            }
        }
        at += 4;
    }
    items
}

/// A decompressed value found in a relation file.
#[derive(Debug)]
pub struct Decompressed {
    /// `heap-pglz`, `heap-lz4`, `toast-pglz`, `toast-lz4` or `toast-raw` (a reassembled,
    /// uncompressed TOAST value).
    pub view: String,
    /// Offset of the page (or of the first TOAST chunk's page) in the file.
    pub offset: u64,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// Walks the pages of a relation file read from `reader`, calling `found` for every compressed
/// inline value and every reassembled TOAST value. Memory: one page, plus the TOAST chunks of
/// the file (at most [`MAX_RAW`] bytes in total; beyond that, chunks are dropped and counted).
///
/// # Errors
/// The reader's I/O error.
pub fn walk_relation(
    mut reader: impl Read,
    mut found: impl FnMut(Decompressed),
) -> io::Result<u64> {
    let mut page = vec![0u8; BLCKSZ];
    let mut page_no = 0u64;
    // chunk id -> (first page offset, seq -> data)
    let mut toast: BTreeMap<u32, (u64, BTreeMap<u32, Vec<u8>>)> = BTreeMap::new();
    let mut toast_bytes = 0usize;
    loop {
        let filled = crate::containers::read_up_to(&mut reader, &mut page)?;
        if filled < BLCKSZ {
            break;
        }
        let offset = page_no * BLCKSZ as u64;
        for item in page_items(&page) {
            let Some(&hoff) = item.get(22) else {
                continue;
            };
            let Some(data) = item.get(usize::from(hoff)..) else {
                continue;
            };
            // TOAST chunk: natts 3, no nulls, then oid, int4, varlena.
            let natts = u16_at(item, 18).map(|v| v & 0x07ff);
            let infomask = u16_at(item, 20).unwrap_or(0);
            if natts == Some(3)
                && infomask & 1 == 0
                && data.len() > 9
                && let Some(chunk) = toast_chunk(data)
                && toast_bytes + chunk.2.len() <= MAX_RAW
            {
                toast_bytes += chunk.2.len();
                toast
                    .entry(chunk.0)
                    .or_insert_with(|| (offset, BTreeMap::new()))
                    .1
                    .insert(chunk.1, chunk.2.to_vec());
            }
            inline_compressed(data, |view, bytes| {
                found(Decompressed {
                    view: format!("heap-{view}"),
                    offset,
                    bytes,
                });
            });
        }
        page_no += 1;
    }
    for (offset, chunks) in toast.into_values() {
        // Only complete runs 0..n.
        if !chunks
            .keys()
            .copied()
            .eq(0..u32::try_from(chunks.len()).unwrap_or(0))
        {
            continue;
        }
        let whole: Vec<u8> = chunks.into_values().flatten().collect();
        let decoded = whole
            .get(..4)
            .and_then(|h| h.try_into().ok())
            .map(u32::from_le_bytes)
            .and_then(|tcinfo| decompress_datum(tcinfo, whole.get(4..).unwrap_or_default()));
        match decoded {
            Some((method, bytes)) => found(Decompressed {
                view: format!("toast-{method}"),
                offset,
                bytes,
            }),
            None => found(Decompressed {
                view: "toast-raw".into(),
                offset,
                bytes: whole,
            }),
        }
    }
    Ok(page_no * BLCKSZ as u64)
}

/// Parses a TOAST chunk tuple body: (chunk id, sequence, data).
fn toast_chunk(data: &[u8]) -> Option<(u32, u32, &[u8])> {
    let id = u32_at(data, 0)?;
    let seq = u32_at(data, 4)?;
    let h = *data.get(8)?;
    if h & 1 == 1 {
        // 1-byte header: length in the top 7 bits, including the header.
        if h == 1 {
            return None; // external pointer, not a chunk
        }
        let len = usize::from(h >> 1);
        let body = data.get(9..8 + len)?;
        return Some((id, seq, body));
    }
    // 4-byte header, int aligned (offset 8 already is).
    let hdr = u32_at(data, 8)?;
    if hdr & 3 != 0 {
        return None; // compressed chunk data does not occur
    }
    let len = usize::try_from(hdr >> 2).ok()?;
    let body = data.get(12..8 + len)?;
    Some((id, seq, body))
}

/// Finds inline compressed varlenas in a tuple body (4-byte aligned candidates).
fn inline_compressed(data: &[u8], mut found: impl FnMut(&'static str, Vec<u8>)) {
    let mut at = 0;
    while at + 8 <= data.len() {
        if let (Some(hdr), Some(tcinfo)) = (u32_at(data, at), u32_at(data, at + 4))
            && hdr & 3 == 2
            && let size = usize::try_from(hdr >> 2).unwrap_or(0)
            && size > 8
            && at + size <= data.len()
            && let Some(body) = data.get(at + 8..at + size)
            && let Some((method, bytes)) = decompress_datum(tcinfo, body)
        {
            found(method, bytes);
            at += size.div_ceil(4) * 4;
            continue;
        }
        at += 4;
    }
}

/// PostgreSQL's WAL page size.
pub const XLOG_BLCKSZ: usize = 8192;

/// A reader over the record bytes of a WAL segment: every 8 KiB WAL page with its page header
/// (24 bytes, 40 for a long header) removed, so a record that continues on the next page reads
/// as one contiguous run.
#[derive(Debug)]
pub struct WalRecords<R> {
    inner: R,
    page: Vec<u8>,
    pos: usize,
    len: usize,
}

impl<R: Read> WalRecords<R> {
    /// Wraps a reader positioned at the start of a WAL segment.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            page: vec![0u8; XLOG_BLCKSZ],
            pos: 0,
            len: 0,
        }
    }
}

impl<R: Read> Read for WalRecords<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.len {
            let mut filled = 0;
            while filled < XLOG_BLCKSZ {
                let Some(space) = self.page.get_mut(filled..) else {
                    break;
                };
                match self.inner.read(space) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if filled < XLOG_BLCKSZ {
                return Ok(0);
            }
            let info = u16_at(&self.page, 2).unwrap_or(0);
            self.pos = if info & 0x0002 != 0 { 40 } else { 24 };
            self.len = XLOG_BLCKSZ;
        }
        let src = self.page.get(self.pos..self.len).unwrap_or_default();
        let n = src.len().min(out.len());
        if let (Some(dst), Some(src)) = (out.get_mut(..n), src.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.pos += n;
        Ok(n)
    }
}

/// The longest compressed datum looked for by [`sniff_compressed`] (an inline value lives in
/// one 8 KiB heap page).
const MAX_INLINE: usize = BLCKSZ;

/// Finds compressed varlena values (4-byte header marked "compressed inline", pglz or lz4) at
/// any byte offset of a stream, such as WAL record bytes, and calls `found` with each value
/// that decompresses to exactly its recorded size. Streams in 1 MiB chunks.
///
/// # Errors
/// The reader's I/O error.
pub fn sniff_compressed(
    mut reader: impl Read,
    view: &str,
    mut found: impl FnMut(Decompressed),
) -> io::Result<u64> {
    let chunk = 1 << 20;
    let mut buf = vec![0u8; chunk + MAX_INLINE];
    let mut keep = 0usize;
    let mut base = 0u64;
    loop {
        let filled = keep
            + crate::containers::read_up_to(&mut reader, buf.get_mut(keep..).unwrap_or_default())?;
        let eof = filled < buf.len();
        // Try every start that has a whole MAX_INLINE of look-ahead (all of them at the end).
        let starts = if eof { filled } else { filled - MAX_INLINE };
        let data = buf.get(..filled).unwrap_or_default();
        let mut at = 0;
        while at < starts {
            if let (Some(hdr), Some(tcinfo)) = (u32_at(data, at), u32_at(data, at + 4))
                && hdr & 3 == 2
                && let size = usize::try_from(hdr >> 2).unwrap_or(0)
                && size > 8
                && size <= MAX_INLINE
                && let Some(body) = data.get(at + 8..at + size)
                && let Some((method, bytes)) = decompress_datum(tcinfo, body)
            {
                found(Decompressed {
                    view: format!("{view}-{method}"),
                    offset: base + at as u64,
                    bytes,
                });
                at += size;
                continue;
            }
            at += 1;
        }
        if eof {
            return Ok(base + filled as u64);
        }
        buf.copy_within(starts..filled, 0);
        keep = filled - starts;
        base += starts as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pglz_literal_and_back_reference() {
        // ctrl 0b0000_0010: literal 'a', then a match of len 3+2=5 at offset 1.
        let src = [0b0000_0010, b'a', 0x02, 0x01];
        assert_eq!(pglz_decompress(&src, 6).unwrap(), b"aaaaaa");
        assert!(pglz_decompress(&src, 7).is_none());
        assert!(pglz_decompress(&[0b1, 0x00, 0x00], 3).is_none());
    }

    #[test]
    fn lz4_round_trip() {
        let data = b"hello hello hello hello hello hello".repeat(10);
        let c = lz4_flex::block::compress(&data);
        assert_eq!(lz4_decompress(&c, data.len()).unwrap(), data);
        assert!(lz4_decompress(&c, data.len() + 1).is_none());
    }

    /// pglz with literals only: a zero control byte before every 8 literal bytes.
    fn pglz_literals(raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in raw.chunks(8) {
            out.push(0);
            out.extend_from_slice(chunk);
        }
        out
    }

    fn tuple(natts: u16, data: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; 24];
        t[18..20].copy_from_slice(&natts.to_le_bytes());
        t[22] = 24;
        t.extend_from_slice(data);
        t
    }

    fn page(tuples: &[Vec<u8>]) -> Vec<u8> {
        let mut p = vec![0u8; BLCKSZ];
        let mut upper = BLCKSZ;
        for (i, t) in tuples.iter().enumerate() {
            upper = (upper - t.len()) / 8 * 8;
            p[upper..upper + t.len()].copy_from_slice(t);
            let lp =
                u32::try_from(upper).unwrap() | (1 << 15) | (u32::try_from(t.len()).unwrap() << 17);
            p[24 + 4 * i..28 + 4 * i].copy_from_slice(&lp.to_le_bytes());
        }
        let lower = u16::try_from(24 + 4 * tuples.len()).unwrap();
        p[12..14].copy_from_slice(&lower.to_le_bytes());
        p[14..16].copy_from_slice(&u16::try_from(upper).unwrap().to_le_bytes());
        p
    }

    fn compressed_varlena(raw: &[u8], lz4: bool) -> Vec<u8> {
        let body = if lz4 {
            lz4_flex::block::compress(raw)
        } else {
            pglz_literals(raw)
        };
        let size = u32::try_from(body.len() + 8).unwrap();
        let tcinfo = u32::try_from(raw.len()).unwrap() | (u32::from(lz4) << 30);
        let mut v = ((size << 2) | 2).to_le_bytes().to_vec();
        v.extend_from_slice(&tcinfo.to_le_bytes());
        v.extend_from_slice(&body);
        v
    }

    #[test]
    fn walker_finds_inline_compressed_values_and_reassembles_toast() {
        let inline = b"an inline value that PostgreSQL compressed with pglz, long enough".to_vec();
        let toasted: Vec<u8> = b"a toasted lz4 value ".repeat(40);
        // Inline: an int4 column, then the compressed varlena.
        let mut data = 7u32.to_le_bytes().to_vec();
        data.extend(compressed_varlena(&inline, false));
        let heap = tuple(2, &data);
        // TOAST: the compressed datum body (tcinfo + lz4 block) cut into two chunks.
        let body = lz4_flex::block::compress(&toasted);
        let mut datum = (u32::try_from(toasted.len()).unwrap() | (1 << 30))
            .to_le_bytes()
            .to_vec();
        datum.extend_from_slice(&body);
        let (a, b) = datum.split_at(datum.len() / 2);
        let chunk = |seq: u32, part: &[u8]| {
            let mut d = 16_500u32.to_le_bytes().to_vec();
            d.extend_from_slice(&seq.to_le_bytes());
            d.extend_from_slice(&((u32::try_from(part.len() + 4).unwrap()) << 2).to_le_bytes());
            d.extend_from_slice(part);
            tuple(3, &d)
        };
        // Chunks on two pages, in reverse order.
        let file = [page(&[heap, chunk(1, b)]), page(&[chunk(0, a)])].concat();
        let mut found = Vec::new();
        let n = walk_relation(file.as_slice(), |d| found.push(d)).unwrap();
        assert_eq!(n, 2 * BLCKSZ as u64);
        assert!(
            found
                .iter()
                .any(|d| d.view == "heap-pglz" && d.bytes == inline && d.offset == 0)
        );
        assert!(
            found
                .iter()
                .any(|d| d.view == "toast-lz4" && d.bytes == toasted)
        );
        // A torn file (a partial last page) is read up to its last whole page.
        let mut torn = file.clone();
        torn.truncate(BLCKSZ + 100);
        let n = walk_relation(torn.as_slice(), |_| {}).unwrap();
        assert_eq!(n, BLCKSZ as u64);
        // Garbage is not mistaken for values.
        let noise: Vec<u8> = (0..4 * BLCKSZ)
            .map(|i| u8::try_from(i * 7 % 251).unwrap())
            .collect();
        let mut any = false;
        walk_relation(noise.as_slice(), |_| any = true).unwrap();
        assert!(!any);
    }
}
