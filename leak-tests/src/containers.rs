//! Stream formats [`crate::LeakCheck::scan_path`] sees through: sniffing (gzip, zstd, xz,
//! bzip2, lz4 frame, zip, tar, PostgreSQL custom dumps), the decoders, and the readers that
//! keep a scan going past a corrupt stream (the readable prefix is still scanned) and bound the
//! decompressed bytes (zip bombs).

use std::cell::{Cell, RefCell};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use zeroize::Zeroizing;

/// How deep containers may nest (a gzip in a tar in a zstd counts three levels). Deeper
/// nesting is a harness error of the channel.
pub const MAX_DEPTH: u32 = 8;

/// The default bound on decompressed bytes per artifact (a file found in a scanned tree), over
/// every stream decoded inside it and every pass over them: 64 GiB. Reaching it is a harness
/// error of the channel naming the artifact. [`crate::LeakCheck::set_decompressed_limit`]
/// changes it.
pub const DEFAULT_DECOMPRESSED_LIMIT: u64 = 64 << 30;

/// A compressed stream format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// gzip (`1F 8B`), concatenated members too.
    Gzip,
    /// zstd (`28 B5 2F FD`), concatenated and skippable frames too.
    Zstd,
    /// xz (`FD 37 7A 58 5A 00`), concatenated streams too.
    Xz,
    /// bzip2 (`BZh`), concatenated streams too.
    Bzip2,
    /// lz4 frame (`04 22 4D 18`).
    Lz4,
}

impl Codec {
    /// The codec whose magic `head` starts with.
    #[must_use]
    pub fn sniff(head: &[u8]) -> Option<Self> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(Self::Gzip)
        } else if head.starts_with(&ZSTD_MAGIC) || is_zstd_skippable(head) {
            Some(Self::Zstd)
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Some(Self::Xz)
        } else if head.len() >= 4
            && head.starts_with(b"BZh")
            && head.get(3).is_some_and(|b| (b'1'..=b'9').contains(b))
        {
            Some(Self::Bzip2)
        } else if head.starts_with(&[0x04, 0x22, 0x4d, 0x18]) {
            Some(Self::Lz4)
        } else {
            None
        }
    }

    /// The view name in artifact paths (`file.sql.gz[gunzip]`).
    #[must_use]
    pub fn view(self) -> &'static str {
        match self {
            Self::Gzip => "gunzip",
            Self::Zstd => "zstd",
            Self::Xz => "xz",
            Self::Bzip2 => "bunzip2",
            Self::Lz4 => "lz4",
        }
    }

    /// A decoder over `input`. Concatenated streams are read one after another; a read error
    /// comes after every byte that decoded before the corruption (lz4: per sequence, the
    /// others: per their decoder's block).
    pub fn decoder<'a>(self, input: Box<dyn Read + 'a>) -> Box<dyn Read + 'a> {
        match self {
            Self::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
            Self::Zstd => Box::new(ZstdFrames::new(input)),
            Self::Xz => Box::new(lzma_rust2::XzReader::new(input, true)),
            Self::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(input)),
            Self::Lz4 => Box::new(Lz4Frames::new(input)),
        }
    }
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

fn is_zstd_skippable(head: &[u8]) -> bool {
    matches!(head, [b0, 0x2a, 0x4d, 0x18, ..] if b0 & 0xf0 == 0x50)
}

/// Whether `head` is a tar header (`ustar` magic).
#[must_use]
pub fn is_tar(head: &[u8]) -> bool {
    head.get(257..262) == Some(b"ustar".as_slice())
}

/// Whether `head` starts a zip archive (a local file header, or an empty archive's end record).
#[must_use]
pub fn is_zip(head: &[u8]) -> bool {
    head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06")
}

/// Whether `head` starts a PostgreSQL custom-format dump (or a directory dump's `toc.dat`).
#[must_use]
pub fn is_pg_custom_dump(head: &[u8]) -> bool {
    head.starts_with(b"PGDMP")
}

/// A member of a PostgreSQL directory dump: `toc.dat`, or `NNNN.dat` with an optional `.gz`,
/// `.lz4` or `.zst` (also `blob_NNNN.dat` and `blobs_NNNN.toc`).
#[must_use]
pub fn is_dir_dump_member(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if name == "toc.dat" {
        return true;
    }
    let base = [".gz", ".lz4", ".zst"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name);
    let stem = base
        .strip_suffix(".dat")
        .or_else(|| base.strip_suffix(".toc"))
        .unwrap_or("");
    let digits = stem
        .strip_prefix("blobs_")
        .or_else(|| stem.strip_prefix("blob_"))
        .unwrap_or(stem);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The logical path of a decompressed stream: `x.gz` becomes `x` (so a compressed WAL segment
/// still gets its WAL views).
#[must_use]
pub fn strip_compression_suffix(path: &Path) -> PathBuf {
    match path.extension().and_then(|e| e.to_str()) {
        Some("gz" | "zst" | "zstd" | "xz" | "bz2" | "lz4") => path.with_extension(""),
        _ => path.to_path_buf(),
    }
}

/// zstd frames one after another, skippable frames skipped.
struct ZstdFrames<R: Read> {
    state: ZstdState<R>,
}

enum ZstdState<R: Read> {
    Between(Prefixed<R>),
    In(Box<ruzstd::decoding::StreamingDecoder<Prefixed<R>, ruzstd::decoding::FrameDecoder>>),
    Done,
}

impl<R: Read> ZstdFrames<R> {
    fn new(inner: R) -> Self {
        Self {
            state: ZstdState::Between(Prefixed {
                head: [0; 4],
                pos: 0,
                len: 0,
                inner,
            }),
        }
    }
}

/// A reader with up to four bytes pushed back in front.
struct Prefixed<R> {
    head: [u8; 4],
    pos: usize,
    len: usize,
    inner: R,
}

impl<R: Read> Read for Prefixed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.len {
            let pending = self.head.get(self.pos..self.len).unwrap_or_default();
            let n = pending.len().min(buf.len());
            if let (Some(dst), Some(src)) = (buf.get_mut(..n), pending.get(..n)) {
                dst.copy_from_slice(src);
            }
            self.pos += n;
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

impl<R: Read> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match std::mem::replace(&mut self.state, ZstdState::Done) {
                ZstdState::Done => return Ok(0),
                ZstdState::In(mut dec) => match dec.read(buf) {
                    Ok(0) if !buf.is_empty() => {
                        let (from_data, calculated) = (
                            dec.decoder.get_checksum_from_data(),
                            dec.decoder.get_calculated_checksum(),
                        );
                        if let (Some(a), Some(b)) = (from_data, calculated)
                            && a != b
                        {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "zstd frame checksum mismatch",
                            ));
                        }
                        self.state = ZstdState::Between(dec.into_inner());
                    }
                    Ok(n) => {
                        self.state = ZstdState::In(dec);
                        return Ok(n);
                    }
                    Err(e) => return Err(e),
                },
                ZstdState::Between(mut src) => {
                    let mut magic = [0u8; 4];
                    let n = read_up_to(&mut src, &mut magic)?;
                    if n == 0 {
                        return Ok(0);
                    }
                    if n < 4 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "truncated zstd frame header",
                        ));
                    }
                    if is_zstd_skippable(&magic) {
                        let mut len = [0u8; 4];
                        if read_up_to(&mut src, &mut len)? < 4 {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "truncated zstd skippable frame",
                            ));
                        }
                        let len = u64::from(u32::from_le_bytes(len));
                        let skipped = io::copy(&mut (&mut src).take(len), &mut io::sink())?;
                        if skipped < len {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "truncated zstd skippable frame",
                            ));
                        }
                        self.state = ZstdState::Between(src);
                    } else if magic == ZSTD_MAGIC {
                        src.head = magic;
                        src.pos = 0;
                        src.len = 4;
                        let dec = ruzstd::decoding::StreamingDecoder::new(src)
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                        self.state = ZstdState::In(Box::new(dec));
                    } else {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "bytes after the last zstd frame are not a zstd frame",
                        ));
                    }
                }
            }
        }
    }
}

/// Reads until `buf` is full or the reader ends.
pub(crate) fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let Some(space) = buf.get_mut(n..) else {
            break;
        };
        match r.read(space) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Counts the bytes read through it (the compressed offset of a decoder's input).
pub(crate) struct Counting<R> {
    pub(crate) inner: R,
    pub(crate) count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get().saturating_add(n as u64));
        Ok(n)
    }
}

/// The decompressed-bytes allowance of one artifact, shared by every decoder inside it.
#[derive(Clone, Debug)]
pub(crate) struct Budget {
    pub(crate) limit: u64,
    pub(crate) used: Rc<Cell<u64>>,
}

/// The decompression limit was reached.
#[derive(Debug)]
struct LimitReached(u64);

impl std::fmt::Display for LimitReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "decompression limit of {} bytes per artifact reached (a zip bomb, or raise the limit)",
            self.0
        )
    }
}

impl std::error::Error for LimitReached {}

/// Charges every byte read through it to a [`Budget`]; past the limit, reads fail.
pub(crate) struct Charged<R> {
    pub(crate) inner: R,
    pub(crate) budget: Budget,
}

impl<R: Read> Read for Charged<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let used = self.budget.used.get();
        if used >= self.budget.limit {
            return Err(io::Error::other(LimitReached(self.budget.limit)));
        }
        let room = usize::try_from(self.budget.limit - used).unwrap_or(usize::MAX);
        let len = buf.len().min(room);
        let n = self.inner.read(buf.get_mut(..len).unwrap_or_default())?;
        self.budget.used.set(used.saturating_add(n as u64));
        Ok(n)
    }
}

/// Faults met while reading: each one a message naming the stream and where it failed.
pub(crate) type Faults = Rc<RefCell<Vec<String>>>;

/// Turns a read error into the end of the stream, recording the error (with what was
/// delivered before it) in `faults`: the scan of the readable prefix then completes and its
/// findings count.
pub(crate) struct Latch<R> {
    pub(crate) inner: R,
    /// The artifact read.
    pub(crate) name: String,
    /// What a read error means here ("read failed", "corrupt or truncated gzip stream").
    pub(crate) what: String,
    pub(crate) delivered: u64,
    pub(crate) input: Option<Rc<Cell<u64>>>,
    pub(crate) faults: Faults,
    pub(crate) failed: bool,
}

impl<R> Latch<R> {
    /// A latch over `inner`, the artifact `name`, whose read errors are plain read failures
    /// recorded in `faults`.
    pub(crate) fn new(inner: R, name: &str, faults: &Faults) -> Self {
        Self {
            inner,
            name: name.to_owned(),
            what: "read failed".to_owned(),
            delivered: 0,
            input: None,
            faults: Rc::clone(faults),
            failed: false,
        }
    }
}

impl<R: Read> Read for Latch<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Ok(0);
        }
        loop {
            match self.inner.read(buf) {
                Ok(n) => {
                    self.delivered += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.failed = true;
                    let at = match &self.input {
                        Some(c) => format!(
                            "after {} decompressed bytes, near compressed offset {}",
                            self.delivered,
                            c.get()
                        ),
                        None => format!("at offset {}", self.delivered),
                    };
                    let what = if e.get_ref().is_some_and(|i| i.is::<LimitReached>()) {
                        "stopped"
                    } else {
                        self.what.as_str()
                    };
                    self.faults.borrow_mut().push(format!(
                        "{}: {what}: {e} ({at}); findings before it are kept",
                        self.name
                    ));
                    return Ok(0);
                }
            }
        }
    }
}

/// The lz4 frame format, decoded leniently: every sequence that decodes is delivered, so a
/// truncated or corrupt block (up to 4 MiB in one block) still yields its readable prefix
/// before the error. Concatenated and skippable frames are read; block and content checksums
/// (xxHash32) are checked.
struct Lz4Frames<R> {
    inner: R,
    /// Decoded bytes: up to 64 KiB of history (linked blocks refer back to it), then the
    /// bytes not yet delivered from `ready`.
    out: Vec<u8>,
    ready: usize,
    /// An error to return once everything decoded before it was delivered.
    pending: Option<io::Error>,
    frame: Option<Lz4Frame>,
    done: bool,
}

struct Lz4Frame {
    block_checksum: bool,
    content_checksum: Option<twox_hash::XxHash32>,
    max_block: usize,
}

const LZ4_HISTORY: usize = 64 << 10;

fn lz4_error(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("lz4: {what}"))
}

impl<R: Read> Lz4Frames<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            out: Vec::new(),
            ready: 0,
            pending: None,
            frame: None,
            done: false,
        }
    }

    fn read_exact_or(&mut self, buf: &mut [u8], what: &str) -> io::Result<()> {
        if read_up_to(&mut self.inner, buf)? < buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("lz4: truncated {what}"),
            ));
        }
        Ok(())
    }

    /// Reads the next frame header; `false` at the end of the input.
    fn next_frame(&mut self) -> io::Result<bool> {
        loop {
            let mut magic = [0u8; 4];
            match read_up_to(&mut self.inner, &mut magic)? {
                0 => return Ok(false),
                4 => {}
                _ => return Err(lz4_error("truncated frame magic")),
            }
            if is_zstd_skippable(&magic) {
                let mut len = [0u8; 4];
                self.read_exact_or(&mut len, "skippable frame")?;
                let len = u64::from(u32::from_le_bytes(len));
                if io::copy(&mut (&mut self.inner).take(len), &mut io::sink())? < len {
                    return Err(lz4_error("truncated skippable frame"));
                }
                continue;
            }
            if magic != [0x04, 0x22, 0x4d, 0x18] {
                return Err(lz4_error("bytes after the last frame are not an lz4 frame"));
            }
            let mut fd = [0u8; 2];
            self.read_exact_or(&mut fd, "frame descriptor")?;
            let [flg, bd] = fd;
            if flg >> 6 != 1 {
                return Err(lz4_error("unknown frame version"));
            }
            let max_block = match (bd >> 4) & 7 {
                4 => 64 << 10,
                5 => 256 << 10,
                6 => 1 << 20,
                7 => 4 << 20,
                _ => return Err(lz4_error("bad block size in the frame descriptor")),
            };
            let mut extra = 1usize; // header checksum
            if flg & 0x08 != 0 {
                extra += 8; // content size
            }
            if flg & 0x01 != 0 {
                extra += 4; // dictionary id
            }
            let mut rest = vec![0u8; extra];
            self.read_exact_or(&mut rest, "frame descriptor")?;
            self.frame = Some(Lz4Frame {
                block_checksum: flg & 0x10 != 0,
                content_checksum: (flg & 0x04 != 0).then(|| twox_hash::XxHash32::with_seed(0)),
                max_block,
            });
            return Ok(true);
        }
    }

    /// Decodes the next block into `out` (or ends the frame). A failure is kept in `pending`
    /// after whatever decoded before it.
    fn next_block(&mut self) -> io::Result<()> {
        let Some(frame) = self.frame.as_ref() else {
            return Ok(());
        };
        let (block_checksum, max_block) = (frame.block_checksum, frame.max_block);
        let mut size = [0u8; 4];
        self.read_exact_or(&mut size, "block size")?;
        let size = u32::from_le_bytes(size);
        if size == 0 {
            let frame = self.frame.take();
            if let Some(h) = frame.and_then(|f| f.content_checksum) {
                let mut sum = [0u8; 4];
                self.read_exact_or(&mut sum, "content checksum")?;
                if u32::from_le_bytes(sum) != h.finish_32() {
                    return Err(lz4_error("content checksum mismatch"));
                }
            }
            return Ok(());
        }
        let stored = size & 0x8000_0000 != 0;
        let len = usize::try_from(size & 0x7fff_ffff).unwrap_or(usize::MAX);
        if len > max_block {
            return Err(lz4_error("block larger than the frame's block size"));
        }
        let mut block = Zeroizing::new(vec![0u8; len]);
        let got = read_up_to(&mut self.inner, &mut block)?;
        block.truncate(got);
        let start = self.out.len();
        let mut failure = if got < len {
            Some(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "lz4: truncated block",
            ))
        } else {
            None
        };
        if stored {
            self.out.extend_from_slice(&block);
        } else if let Err(e) = lz4_block(&block, &mut self.out, start + max_block) {
            failure.get_or_insert(e);
        }
        if failure.is_none() && block_checksum {
            let mut sum = [0u8; 4];
            if let Err(e) = self.read_exact_or(&mut sum, "block checksum") {
                failure = Some(e);
            } else if u32::from_le_bytes(sum) != twox_hash::XxHash32::oneshot(0, &block) {
                failure = Some(lz4_error("block checksum mismatch"));
            }
        }
        if let (Some(f), Some(new)) = (self.frame.as_mut(), self.out.get(start..))
            && let Some(h) = f.content_checksum.as_mut()
        {
            std::hash::Hasher::write(h, new);
        }
        self.ready = start;
        self.pending = failure;
        Ok(())
    }
}

/// Decodes one lz4 block onto `out` (whose bytes are the history matches may refer to), never
/// past `limit` bytes of `out`; what decoded before an error stays in `out`.
fn lz4_block(src: &[u8], out: &mut Vec<u8>, limit: usize) -> io::Result<()> {
    let mut i = 0usize;
    let byte = |i: usize| {
        src.get(i)
            .copied()
            .ok_or_else(|| lz4_error("truncated sequence"))
    };
    let length = |i: &mut usize, mut n: usize| -> io::Result<usize> {
        if n == 15 {
            loop {
                let b = byte(*i)?;
                *i += 1;
                n += usize::from(b);
                if b != 255 {
                    break;
                }
            }
        }
        Ok(n)
    };
    while i < src.len() {
        let token = byte(i)?;
        i += 1;
        let lit = length(&mut i, usize::from(token >> 4))?;
        let end = i.saturating_add(lit);
        let literals = src.get(i..end.min(src.len())).unwrap_or_default();
        if out.len() + literals.len() > limit {
            return Err(lz4_error("block decodes past the frame's block size"));
        }
        out.extend_from_slice(literals);
        if end > src.len() {
            return Err(lz4_error("truncated literals"));
        }
        i = end;
        if i == src.len() {
            break;
        }
        let offset = usize::from(u16::from_le_bytes([byte(i)?, byte(i + 1)?]));
        i += 2;
        let mlen = length(&mut i, usize::from(token & 15))? + 4;
        if offset == 0 || offset > out.len() {
            return Err(lz4_error("match offset outside the decoded data"));
        }
        if out.len() + mlen > limit {
            return Err(lz4_error("block decodes past the frame's block size"));
        }
        let from = out.len() - offset;
        for k in 0..mlen {
            let b = out.get(from + k).copied().unwrap_or_default();
            out.push(b);
        }
    }
    Ok(())
}

impl<R: Read> Read for Lz4Frames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.ready < self.out.len() {
                let avail = self.out.get(self.ready..).unwrap_or_default();
                let n = avail.len().min(buf.len());
                if let (Some(dst), Some(src)) = (buf.get_mut(..n), avail.get(..n)) {
                    dst.copy_from_slice(src);
                }
                self.ready += n;
                return Ok(n);
            }
            if let Some(e) = self.pending.take() {
                self.done = true;
                return Err(e);
            }
            if self.done || buf.is_empty() {
                return Ok(0);
            }
            // Keep only the history linked blocks may refer to.
            if self.out.len() > LZ4_HISTORY {
                let cut = self.out.len() - LZ4_HISTORY;
                self.out.zeroize_prefix(cut);
                self.ready = self.out.len();
            }
            if self.frame.is_none() && !self.next_frame()? {
                self.done = true;
                return Ok(0);
            }
            self.next_block()?;
        }
    }
}

/// Dropping a prefix of a buffer of decoded values, wiping it first.
trait ZeroizePrefix {
    fn zeroize_prefix(&mut self, n: usize);
}

impl ZeroizePrefix for Vec<u8> {
    fn zeroize_prefix(&mut self, n: usize) {
        if let Some(head) = self.get_mut(..n) {
            zeroize::Zeroize::zeroize(head);
        }
        self.drain(..n.min(self.len()));
    }
}

impl<R> Drop for Lz4Frames<R> {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.out);
    }
}
