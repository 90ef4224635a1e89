//! Seeing through MariaDB's compression: InnoDB page compression (`PAGE_COMPRESSED=1`, both the
//! `full_crc32` and the older page layout), `ROW_FORMAT=COMPRESSED` pages, and compressed binary
//! log events (`log_bin_compress=ON`).
//!
//! * **Tablespaces** (`*.ibd`, `ibdata*`, `undo*`): the page size is found from the page
//!   numbers in the page headers; each page whose type says "page compressed" is inflated
//!   (`[innodb-page-zlib@<offset>]`), and each index page of a `ROW_FORMAT=COMPRESSED`
//!   tablespace has its zlib stream inflated as far as it goes (`[innodb-zip-zlib@<offset>]`;
//!   its newest records sit uncompressed in the page's modification log, which the raw scan
//!   sees). Pages compressed with lz4, lzo, lzma, bzip2 or snappy, and encrypted
//!   page-compressed pages, cannot be decoded: they are reported as harness errors, never as
//!   clean.
//! * **Binary logs** (magic `\xfebin`): events are walked by their headers; the body of every
//!   compressed event (`QUERY_COMPRESSED`, `*_ROWS_COMPRESSED` v1 and v2) is inflated
//!   (`[binlog-zlib@<offset>]`). A `START_ENCRYPTION` event makes the rest of the file
//!   undecodable: a harness error.

use std::io::{self, Read};

use zeroize::Zeroizing;

/// The binary log magic.
pub const BINLOG_MAGIC: &[u8; 4] = b"\xfebin";

/// The largest inflated size accepted for one page or event.
pub const MAX_INFLATED: usize = 64 << 20;

/// One decoded view of part of a file.
pub struct Decoded {
    /// The view name (`innodb-page-zlib`, `innodb-zip-zlib`, `binlog-zlib`).
    pub view: &'static str,
    /// Offset of the page or event in the file.
    pub offset: u64,
    /// The inflated bytes.
    pub bytes: Zeroizing<Vec<u8>>,
}

leakless::debug_fields!(Decoded, |d| {
    "view": d.view,
    "offset": d.offset,
    "len": d.bytes.len(),
});

/// A file name InnoDB uses for tablespaces: `*.ibd`, `ibdata*`, `undo*` (`ibtmp*` holds only
/// temporary tables and is a tablespace too).
#[must_use]
pub fn is_innodb_path(path: &std::path::Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
        n.ends_with(".ibd")
            || n.starts_with("ibdata")
            || n.starts_with("ibtmp")
            || (n.starts_with("undo") && n.bytes().skip(4).all(|b| b.is_ascii_digit()))
    })
}

/// Whether `cmf`, `flg` start a zlib stream (deflate, window up to 32 KiB, no preset
/// dictionary, valid check bits).
fn is_zlib_header(cmf: u8, flg: u8) -> bool {
    cmf & 0x0f == 8
        && cmf >> 4 <= 7
        && flg & 0x20 == 0
        && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0
}

/// The page at `offset` seen through its zlib stream `src` (inflated up to `limit` bytes) as
/// the view `view`.
fn inflated_page(view: &'static str, offset: u64, src: &[u8], limit: usize) -> Decoded {
    let (bytes, _) = inflate(src, limit);
    Decoded {
        view,
        offset,
        bytes,
    }
}

/// Inflates a zlib stream from the start of `src` as far as it goes (trailing bytes and a
/// stream cut short are accepted), up to `limit` bytes of output. Returns the output and
/// whether the stream ended cleanly.
fn inflate(src: &[u8], limit: usize) -> (Zeroizing<Vec<u8>>, bool) {
    let mut d = flate2::Decompress::new(true);
    let mut out = Zeroizing::new(Vec::with_capacity(limit.min(1 << 16)));
    loop {
        if out.len() >= limit {
            return (out, false);
        }
        let consumed = usize::try_from(d.total_in()).unwrap_or(usize::MAX);
        let Some(input) = src.get(consumed..) else {
            return (out, false);
        };
        let room = (limit - out.len()).min(1 << 16);
        out.reserve(room);
        let before_out = d.total_out();
        let before_in = d.total_in();
        match d.decompress_vec(input, &mut out, flate2::FlushDecompress::None) {
            Ok(flate2::Status::StreamEnd) => return (out, true),
            Ok(_) if d.total_out() == before_out && d.total_in() == before_in => {
                return (out, false);
            }
            Ok(_) => {}
            Err(_) => return (out, false),
        }
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// InnoDB page types and offsets (`fil0fil.h`).
const FIL_PAGE_OFFSET: usize = 4;
const FIL_PAGE_TYPE: usize = 24;
const FIL_PAGE_FILE_FLUSH_LSN: usize = 26;
const FIL_PAGE_DATA: usize = 38;
const FIL_PAGE_INDEX: u16 = 17855;
const FIL_PAGE_PAGE_COMPRESSED: u16 = 34354;
const FIL_PAGE_PAGE_COMPRESSED_ENCRYPTED: u16 = 37401;
/// Set in the page type of a `full_crc32` page-compressed page.
const FCRC32_COMPRESSED: u16 = 1 << 15;
/// Start of the zlib stream of a `ROW_FORMAT=COMPRESSED` index page (`PAGE_DATA`).
const PAGE_ZIP_DATA: usize = FIL_PAGE_DATA + 56;
const FSP_SPACE_FLAGS: usize = FIL_PAGE_DATA + 16;

fn algorithm_name(id: u64) -> &'static str {
    match id {
        1 => "zlib",
        2 => "lz4",
        3 => "lzo",
        4 => "lzma",
        5 => "bzip2",
        6 => "snappy",
        _ => "an unknown algorithm",
    }
}

/// The page size of a tablespace from its first pages: the smallest size at which the page
/// numbers read 1 (and 2, when the file is long enough).
fn page_size(head: &[u8]) -> Option<usize> {
    [1024usize, 2048, 4096, 8192, 16384, 32768, 65536]
        .into_iter()
        .find(|&ps| {
            be32(head, ps + FIL_PAGE_OFFSET) == Some(1)
                && be32(head, 2 * ps + FIL_PAGE_OFFSET).is_none_or(|n| n == 2)
        })
}

/// Walks an InnoDB tablespace page by page, calling `emit` for every page it could inflate.
/// Returns the pages it could not decode, as one message per kind (with the first offset and
/// a count): these must be reported as harness errors.
///
/// # Errors
/// The reader's I/O error.
pub fn walk_tablespace(
    mut reader: impl Read,
    mut emit: impl FnMut(Decoded),
) -> io::Result<Vec<String>> {
    let mut head = Zeroizing::new(vec![0u8; 3 * 65536]);
    let n = crate::containers::read_up_to(&mut reader, &mut head)?;
    head.truncate(n);
    let ps = page_size(&head).unwrap_or(16384);
    let flags = be32(&head, FSP_SPACE_FLAGS).unwrap_or(0);
    // full_crc32 tablespaces name their page-compression algorithm in the space flags.
    let fcrc32_algo = (flags & 0x10 != 0).then_some(u64::from((flags >> 5) & 7));
    let mut problems: Vec<(String, u64, u64)> = Vec::new();
    let mut problem = |kind: String, offset: u64| {
        if let Some(p) = problems.iter_mut().find(|p| p.0 == kind) {
            p.2 += 1;
        } else {
            problems.push((kind, offset, 1));
        }
    };
    let mut page = Zeroizing::new(vec![0u8; ps]);
    let mut offset = 0u64;
    let mut pages = io::Cursor::new(head.as_slice()).chain(reader);
    loop {
        let filled = crate::containers::read_up_to(&mut pages, &mut page)?;
        if filled == 0 {
            break;
        }
        let p = page.get(..filled).unwrap_or_default();
        let ty = be16(p, FIL_PAGE_TYPE).unwrap_or(0);
        if ty == FIL_PAGE_PAGE_COMPRESSED {
            let algo = u64::from_be_bytes(
                p.get(FIL_PAGE_FILE_FLUSH_LSN..FIL_PAGE_FILE_FLUSH_LSN + 8)
                    .and_then(|b| b.try_into().ok())
                    .unwrap_or([0; 8]),
            );
            let data = p.get(FIL_PAGE_DATA + 2..).unwrap_or_default();
            if algo == 1 && data.len() >= 2 {
                emit(inflated_page("innodb-page-zlib", offset, data, ps));
            } else {
                problem(
                    format!(
                        "page-compressed pages using {} cannot be decoded",
                        algorithm_name(algo)
                    ),
                    offset,
                );
            }
        } else if ty == FIL_PAGE_PAGE_COMPRESSED_ENCRYPTED {
            problem(
                "encrypted page-compressed pages (FIL_PAGE_PAGE_COMPRESSED_ENCRYPTED) cannot be decoded"
                    .into(),
                offset,
            );
        } else if ty & FCRC32_COMPRESSED != 0 && offset > 0 {
            let cmf = p.get(FIL_PAGE_FILE_FLUSH_LSN).copied().unwrap_or(0);
            let flg = p.get(FIL_PAGE_FILE_FLUSH_LSN + 1).copied().unwrap_or(0);
            let data = p.get(FIL_PAGE_FILE_FLUSH_LSN..).unwrap_or_default();
            if fcrc32_algo.is_none_or(|a| a == 1) && is_zlib_header(cmf, flg) {
                emit(inflated_page("innodb-page-zlib", offset, data, ps));
            } else {
                let kind = match fcrc32_algo {
                    Some(a) if a != 1 => format!(
                        "page-compressed pages using {} cannot be decoded",
                        algorithm_name(a)
                    ),
                    // zlib by the space flags, yet no zlib stream: encrypted after compression.
                    _ => {
                        "page-compressed pages without a zlib stream (encrypted?) cannot be decoded"
                            .into()
                    }
                };
                problem(kind, offset);
            }
        } else if ty == FIL_PAGE_INDEX
            && let (Some(&cmf), Some(&flg)) = (p.get(PAGE_ZIP_DATA), p.get(PAGE_ZIP_DATA + 1))
            && is_zlib_header(cmf, flg)
        {
            let zip = p.get(PAGE_ZIP_DATA..).unwrap_or_default();
            let decoded = inflated_page("innodb-zip-zlib", offset, zip, 4 * 65536);
            if !decoded.bytes.is_empty() {
                emit(decoded);
            }
        }
        offset += filled as u64;
        if filled < ps {
            break;
        }
    }
    Ok(problems
        .into_iter()
        .map(|(kind, first, count)| format!("{kind} ({count} pages, first at offset {first})"))
        .collect())
}

/// MariaDB binary log event types (`log_event.h`).
const START_ENCRYPTION_EVENT: u8 = 164;
const QUERY_COMPRESSED_EVENT: u8 = 165;
const ROWS_COMPRESSED_LAST: u8 = 171;
const EVENT_HEADER: usize = 19;

/// Walks a binary log's events and inflates the compressed ones (`QUERY_COMPRESSED_EVENT` and
/// the `*_ROWS_COMPRESSED_EVENT` types, v1 and v2). Returns what it could not decode (an
/// encrypted log, a damaged event chain) as messages for harness errors.
///
/// # Errors
/// The reader's I/O error.
pub fn walk_binlog(
    mut reader: impl Read,
    mut emit: impl FnMut(Decoded),
) -> io::Result<Vec<String>> {
    let mut magic = [0u8; 4];
    if crate::containers::read_up_to(&mut reader, &mut magic)? < 4 || &magic != BINLOG_MAGIC {
        return Ok(vec!["not a binary log (no \\xfebin magic)".into()]);
    }
    let mut offset = 4u64;
    let mut problems = Vec::new();
    let mut header = [0u8; EVENT_HEADER];
    loop {
        let n = crate::containers::read_up_to(&mut reader, &mut header)?;
        if n == 0 {
            break;
        }
        let size = le32(&header, 9).and_then(|s| usize::try_from(s).ok());
        let Some(size) = size.filter(|&s| n == EVENT_HEADER && s >= EVENT_HEADER) else {
            problems.push(format!(
                "event at offset {offset}: truncated or damaged header; the rest is not decoded"
            ));
            break;
        };
        let ty = header.get(4).copied().unwrap_or(0);
        let body_len = size - EVENT_HEADER;
        if body_len > MAX_INFLATED {
            problems.push(format!(
                "event at offset {offset}: {size} bytes, too large to decode"
            ));
            break;
        }
        let mut body = Zeroizing::new(vec![0u8; body_len]);
        if crate::containers::read_up_to(&mut reader, &mut body)? < body_len {
            problems.push(format!(
                "event at offset {offset}: truncated; the rest is not decoded"
            ));
            break;
        }
        if ty == START_ENCRYPTION_EVENT {
            problems.push(format!(
                "encrypted binary log (START_ENCRYPTION event at offset {offset}): the events after it cannot be decoded"
            ));
            break;
        }
        if (QUERY_COMPRESSED_EVENT..=ROWS_COMPRESSED_LAST).contains(&ty) {
            match inflate_event(&body) {
                Some(bytes) => emit(Decoded {
                    view: "binlog-zlib",
                    offset,
                    bytes,
                }),
                None => problems.push(format!(
                    "compressed event (type {ty}) at offset {offset} cannot be decoded"
                )),
            }
        }
        offset += size as u64;
    }
    Ok(problems)
}

/// The compressed part of an event body: a byte `0x80 | n` (n = 1..=4), the inflated length in
/// n big-endian bytes, then a zlib stream (`binlog_buf_compress`). Its place depends on the
/// event's post-header, so the first position where all of this holds and the stream inflates
/// to exactly the stated length is taken.
fn inflate_event(body: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    for (i, &b) in body.iter().enumerate() {
        let lenlen = usize::from(b & 0x07);
        if b & 0xf8 != 0x80 || !(1..=4).contains(&lenlen) {
            continue;
        }
        let Some(len_bytes) = body.get(i + 1..i + 1 + lenlen) else {
            continue;
        };
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
        let start = i + 1 + lenlen;
        let (Some(&cmf), Some(&flg)) = (body.get(start), body.get(start + 1)) else {
            continue;
        };
        if len == 0 || len > MAX_INFLATED || !is_zlib_header(cmf, flg) {
            continue;
        }
        let (out, ended) = inflate(body.get(start..).unwrap_or_default(), len);
        if ended && out.len() == len {
            return Some(out);
        }
    }
    None
}
