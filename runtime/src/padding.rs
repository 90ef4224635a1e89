//! Length-bucket padding, applied to a plaintext before encryption.
//!
//! Without padding a ciphertext's length gives away its plaintext's length exactly, and for a
//! postal address or a transcript that is a real leak (a short street name, a long confession).
//! leakless appends the byte `0x80` and then zero bytes up to a bucket size (ISO/IEC 7816-4
//! padding), so an envelope's length reveals only the bucket. The bucket rule is the writer's
//! choice and is not stored: the reader strips the padding by finding the last `0x80`, so a
//! changed policy never breaks old values. See `docs/envelope-format.md` § "Padding".

/// Identifier byte of the only padding scheme of format v1 (`0x80` marker then zeros).
pub const PADDING_ISO7816: u8 = 0x01;

/// The largest plaintext leakless seals: 1 GiB minus one byte, PostgreSQL's `bytea` limit.
pub const MAX_PLAINTEXT_LEN: usize = (1 << 30) - 1;

/// How far a plaintext is padded before encryption.
///
/// The schema manifest records each column's policy as `{"kind": "power_of_two", "min": 32,
/// "cap": 4096}`, `{"kind": "marker_only"}` or `{"kind": "multiple", "block": 16}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PaddingPolicy {
    /// Only the one-byte `0x80` marker: the ciphertext length reveals the exact plaintext length.
    /// Use only for values whose length is public anyway (fixed-size values).
    MarkerOnly,
    /// Pad `len + 1` up to the next power of two, but at least `min`; above `cap`, pad up to the
    /// next multiple of `cap` instead (so a 64 KiB transcript costs at most `cap - 1` extra
    /// bytes, not 64 KiB). Both must be powers of two with `min <= cap`.
    PowerOfTwo {
        /// The smallest bucket, in bytes.
        min: u32,
        /// The largest power-of-two bucket, in bytes; beyond it buckets are multiples of `cap`.
        cap: u32,
    },
    /// Pad `len + 1` up to the next multiple of `block` bytes (`block >= 1`).
    Multiple {
        /// The bucket granularity, in bytes.
        block: u32,
    },
}

impl Default for PaddingPolicy {
    /// `PowerOfTwo { min: 32, cap: 4096 }`: buckets 32, 64, 128, ..., 4096, then multiples of
    /// 4096.
    fn default() -> Self {
        PaddingPolicy::PowerOfTwo { min: 32, cap: 4096 }
    }
}

impl PaddingPolicy {
    /// Checks the policy's parameters.
    ///
    /// # Errors
    /// A message saying which parameter is out of range.
    pub fn validate(&self) -> Result<(), &'static str> {
        match *self {
            PaddingPolicy::MarkerOnly => Ok(()),
            PaddingPolicy::PowerOfTwo { min, cap } => {
                if !min.is_power_of_two() || !cap.is_power_of_two() {
                    Err("PowerOfTwo padding needs min and cap to be powers of two")
                } else if min > cap {
                    Err("PowerOfTwo padding needs min <= cap")
                } else {
                    Ok(())
                }
            }
            PaddingPolicy::Multiple { block: 0 } => Err("Multiple padding needs block >= 1"),
            PaddingPolicy::Multiple { .. } => Ok(()),
        }
    }

    /// The padded length for a plaintext of `len` bytes (always at least `len + 1`), or `None`
    /// when the policy is invalid or the result would overflow.
    #[must_use]
    pub fn padded_len(&self, len: usize) -> Option<usize> {
        self.validate().ok()?;
        let need = len.checked_add(1)?;
        match *self {
            PaddingPolicy::MarkerOnly => Some(need),
            PaddingPolicy::PowerOfTwo { min, cap } => {
                let (min, cap) = (min as usize, cap as usize);
                if need <= cap {
                    Some(need.checked_next_power_of_two()?.max(min))
                } else {
                    need.checked_next_multiple_of(cap)
                }
            }
            PaddingPolicy::Multiple { block } => need.checked_next_multiple_of(block as usize),
        }
    }
}

/// Appends the marker and zeros to `buf` (which holds the plaintext) up to `padded_len`.
pub(crate) fn pad(buf: &mut Vec<u8>, padded_len: usize) {
    buf.push(0x80);
    buf.resize(padded_len.max(buf.len()), 0);
}

/// All ones when `x != 0`, else zero; without a data-dependent branch.
fn nonzero_mask(x: u64) -> u64 {
    // For x != 0, either x or -x has its top bit set.
    0u64.wrapping_sub((x | x.wrapping_neg()) >> 63)
}

/// Bytes the constant-time scan of [`unpadded_len`] reads per step.
const SCAN_BLOCK: usize = 64;
/// 64-bit words per scan block.
const SCAN_WORDS: usize = SCAN_BLOCK / 8;
/// How many bytes at the end of a padded buffer [`unpadded_len`] searches first: the default
/// policy's `cap`, the most padding that policy, `MarkerOnly`, and any policy whose buckets are
/// at most 4 KiB apart ever add, so their marker is always in this window.
pub(crate) const SCAN_WINDOW: usize = 4096;

/// Finds the plaintext length inside a padded buffer: the index of the last non-zero byte,
/// which must be the `0x80` marker. Returns `None` otherwise.
///
/// It searches the last [`SCAN_WINDOW`] bytes first; only when they are all zero (padding
/// longer than the window, which only a custom policy with larger buckets writes) does it
/// search the bytes before them. Each search runs in time that depends only on the length it
/// searches, with no load at a data-dependent address (see [`last_nonzero`]). So the time
/// depends only on the buffer's length, except that for a value padded by more than the
/// window it also tells that the padding is that long.
pub(crate) fn unpadded_len(buf: &[u8]) -> Option<usize> {
    let start = buf.len().saturating_sub(SCAN_WINDOW);
    let (head, window) = buf.split_at(start);
    let (index, byte) = match last_nonzero(window) {
        Some((i, b)) => (start + i, b),
        None => last_nonzero(head)?,
    };
    (byte == 0x80).then_some(index)
}

/// The index and value of the last non-zero byte of `buf`, or `None` when every byte is zero.
///
/// Runs in time that depends only on the buffer's length, with no load at a data-dependent
/// address: it reads the buffer in whole 64-byte blocks (the last, partial one copied into a
/// zeroed block first) and keeps a masked copy of the last block that holds a non-zero byte,
/// with its index (one optimisation barrier per block keeps the compiler from turning the masks
/// into an early exit); then it finds the last non-zero word of that block and the last
/// non-zero byte of that word the same way. The block loop is written as operations on whole
/// arrays, which the compiler turns into SSE2 vector code on baseline x86-64.
fn last_nonzero(buf: &[u8]) -> Option<(usize, u8)> {
    let (blocks, rest) = buf.as_chunks::<SCAN_BLOCK>();
    let mut tail = [0u8; SCAN_BLOCK];
    tail.get_mut(..rest.len())
        .unwrap_or_default()
        .copy_from_slice(rest);
    let mut last_block_index: u64 = 0;
    let mut last_block = [0u64; SCAN_WORDS];
    // The zeroed tail block never counts as non-zero unless the partial block does.
    for (k, block) in (0u64..).zip(blocks.iter().chain([&tail])) {
        let (chunks, _) = block.as_chunks::<8>();
        let mut words = [0u64; SCAN_WORDS];
        for (w, chunk) in words.iter_mut().zip(chunks) {
            *w = u64::from_le_bytes(*chunk);
        }
        // Two running ORs (one vector register's worth) instead of one chain of seven.
        let mut any = [0u64; 2];
        for pair in words.as_chunks::<2>().0 {
            any[0] |= pair[0];
            any[1] |= pair[1];
        }
        let nz = std::hint::black_box(nonzero_mask(any[0] | any[1]));
        last_block_index ^= (last_block_index ^ k) & nz;
        for (kept, w) in last_block.iter_mut().zip(words) {
            *kept = (*kept & !nz) | (w & nz);
        }
    }
    let mut word_index: u64 = 0;
    let mut last_word: u64 = 0;
    for (j, w) in (0u64..).zip(last_block) {
        let nz = nonzero_mask(w);
        word_index ^= (word_index ^ j) & nz;
        last_word ^= (last_word ^ w) & nz;
    }
    let mut offset: u64 = 0;
    let mut last_byte: u64 = 0;
    for j in 0..8u64 {
        let b = (last_word >> (8 * j)) & 0xff;
        let nz = nonzero_mask(b);
        offset ^= (offset ^ j) & nz;
        last_byte ^= (last_byte ^ b) & nz;
    }
    if last_byte == 0 {
        return None;
    }
    let index = last_block_index
        .checked_mul(SCAN_WORDS as u64)?
        .checked_add(word_index)?
        .checked_mul(8)?
        .checked_add(offset)?;
    Some((usize::try_from(index).ok()?, u8::try_from(last_byte).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_buckets() {
        let p = PaddingPolicy::default();
        assert_eq!(p.padded_len(0), Some(32));
        assert_eq!(p.padded_len(31), Some(32));
        assert_eq!(p.padded_len(32), Some(64));
        assert_eq!(p.padded_len(100), Some(128));
        assert_eq!(p.padded_len(4095), Some(4096));
        assert_eq!(p.padded_len(4096), Some(8192));
        assert_eq!(p.padded_len(65536), Some(69632));
    }

    #[test]
    fn other_policies() {
        assert_eq!(PaddingPolicy::MarkerOnly.padded_len(5), Some(6));
        assert_eq!(
            PaddingPolicy::Multiple { block: 16 }.padded_len(15),
            Some(16)
        );
        assert_eq!(
            PaddingPolicy::Multiple { block: 16 }.padded_len(16),
            Some(32)
        );
        assert_eq!(PaddingPolicy::Multiple { block: 0 }.padded_len(1), None);
        assert_eq!(
            PaddingPolicy::PowerOfTwo { min: 3, cap: 8 }.padded_len(1),
            None
        );
        assert_eq!(
            PaddingPolicy::PowerOfTwo { min: 64, cap: 32 }.padded_len(1),
            None
        );
    }

    #[test]
    fn pad_then_unpad() {
        for len in [0usize, 1, 5, 31, 32, 100] {
            let mut buf = vec![0x80; len];
            let target = PaddingPolicy::default().padded_len(len).unwrap_or(0);
            pad(&mut buf, target);
            assert_eq!(buf.len(), target);
            assert_eq!(unpadded_len(&buf), Some(len));
        }
        assert_eq!(unpadded_len(&[]), None);
        assert_eq!(unpadded_len(&[0, 0]), None);
        assert_eq!(unpadded_len(&[0x80, 1]), None);
        assert_eq!(unpadded_len(&[1, 0x80, 0]), Some(1));
        assert_eq!(unpadded_len(&[0x80]), Some(0));
        assert_eq!(unpadded_len(&[0x80, 0x80, 0]), Some(1));
        assert_eq!(unpadded_len(&[0x80, 0x81, 0]), None);
        let mut big = vec![7u8; 70_000];
        big[60_000] = 0x80;
        big[60_001..].fill(0);
        assert_eq!(unpadded_len(&big), Some(60_000));
    }

    /// The constant-time scan agrees with the obvious one for every marker position and
    /// buffer length around the block and word boundaries and around the start of the search
    /// window (so markers inside it and, for longer padding, before it), at sampled positions
    /// of large buffers, including the default policy's 8 KiB and 68 KiB buckets, and for
    /// buffers without a marker or with another last non-zero byte.
    #[test]
    fn unpadded_len_matches_a_plain_scan() {
        let plain = |buf: &[u8]| match buf.iter().rposition(|&b| b != 0) {
            Some(i) if buf[i] == 0x80 => Some(i),
            _ => None,
        };
        for len in (0usize..200).chain([
            511, 512, 513, 4095, 4096, 4097, 4160, 4161, 8192, 8193, 69_631, 69_632,
        ]) {
            let step = if len > 10_000 {
                997
            } else if len > 300 {
                37
            } else {
                1
            };
            // Every step-th position, every position in the last two blocks, and every
            // position around where the search window begins.
            let window_start = len.saturating_sub(SCAN_WINDOW);
            let around_window = window_start.saturating_sub(130)..(window_start + 130).min(len);
            for marker in (0..len)
                .step_by(step)
                .chain(len.saturating_sub(130)..len)
                .chain(around_window)
            {
                for tail in [0x80u8, 0x01, 0x00] {
                    let mut buf: Vec<u8> = (0..len)
                        .map(|i: usize| (i.to_le_bytes()[0] % 251) | 1)
                        .collect();
                    buf[marker] = tail;
                    buf[marker + 1..].fill(0);
                    assert_eq!(unpadded_len(&buf), plain(&buf), "len {len} marker {marker}");
                }
            }
        }
    }
}
