//! Shamir M-of-N custody of a local root key: split it into `N` shares of which any `M`
//! rebuild it, so no single custodian holds the key.
//!
//! [`split`] cuts a [`RootKey`] into shares over GF(256) (one degree `M-1` polynomial per key
//! byte, fresh random coefficients, shares at x = 1..N); [`combine`] checks a set of shares and
//! rebuilds the key in memory. Each [`Share`] is self-describing text (see [`Share::to_text`])
//! that can live in a `0600` file ([`Share::write_file`]) or, with the `pkcs11` feature, as a
//! private data object on a custodian's PKCS#11 token ([`Share::store_on_token`]).
//!
//! # Which crate does the arithmetic, and why
//!
//! The field arithmetic and polynomial evaluation come from [`blahaj`] 0.7, the maintained fork
//! of `sharks`. Compared on 2026-12-01:
//!
//! * `sharks` 0.5: GF(256), small and readable, but unmaintained since 2021 and affected by
//!   RUSTSEC-2024-0398 (biased polynomial coefficients: they were drawn from 1..=255, never 0,
//!   which leaks information about the secret across shares). Rejected.
//! * `blahaj` 0.7: the same small GF(256) code with that advisory fixed (coefficients uniform
//!   over 0..=255 from a CSPRNG), zeroizes its shares on drop, no `unsafe`. **Chosen.**
//! * `vsss-rs` 6: verifiable secret sharing over elliptic-curve scalar fields and big integers;
//!   a heavy dependency tree (crypto-bigint, elliptic-curve, serde) for a job that needs only
//!   GF(256) bytes, and a share is a field element, not bytes.
//! * `shamirsecretsharing` 0.1 (dsprenkels/sss): sound design (it authenticates the secret
//!   itself), but binds a C library and fixes the secret at 64 bytes.
//!
//! # What is detected, and how
//!
//! Every share carries the format version, the **key id** of the root key (the same public,
//! one-way id [`LocalKms`] shows, e.g. `local:3f2a...`), a random **set id** naming this one
//! split, the threshold `M`, the count `N`, its index, its value, and the **commitments** of
//! all `N` shares of the set: `SHA-256` over a domain tag and each share's fields and value.
//! [`combine`] checks, in this order, and stops at the first failure with a typed
//! [`ShamirError`]:
//!
//! 1. each share parses, and its own value matches its own commitment entry: a corrupted
//!    share (bit rot, a typo, a truncated file) is named ([`ShamirError::Corrupted`]);
//! 2. all shares name the same key id ([`ShamirError::ForeignShare`]: a share of another root
//!    key) and the same set, threshold and count ([`ShamirError::MixedSets`]: a share of
//!    another split of the same key, which would otherwise interpolate to garbage);
//! 3. no index appears twice ([`ShamirError::DuplicateIndex`]);
//! 4. all shares carry the same commitment list; shares that disagree with the majority are
//!    named ([`ShamirError::CommitmentMismatch`]). A custodian who edits their value *and*
//!    their own commitment entry is caught here, by the other custodians' lists;
//! 5. at least `M` shares are present ([`ShamirError::BelowThreshold`]);
//! 6. after interpolation, the rebuilt key's id equals the key id in the shares
//!    ([`ShamirError::WrongKey`]). This last check catches any set that slipped past the
//!    others (for example a forger who rewrote *every* presented share consistently), but
//!    it cannot say which share was bad, which is why the per-share checks come first.
//!
//! Not detected: a custodian handing over a *valid* share of theirs is indistinguishable from
//! anyone else doing so; the commitments are integrity checks, not authentication of who
//! holds a share. The commitments reveal nothing useful: with fewer than `M` shares every
//! other share value is uniformly random given what is known, and a 256-bit value cannot be
//! guessed against its hash.
//!
//! Rebuilt keys and every intermediate buffer (parsed values, the interpolation output) are
//! zeroized when dropped.

use std::fs;
use std::path::{Path, PathBuf};

use blahaj::Sharks;
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::kms::{Kms, LocalKms, debug_fields};
use crate::secret::{KEY_LEN, RootKey};

/// The first line of every share.
pub const SHARE_HEADER: &str = "leakless-root-key-share v1";
const HEADER_PREFIX: &str = "leakless-root-key-share ";
const COMMIT_DOMAIN: &[u8] = b"leakless.shamir.share-commitment.v1";
const SET_ID_LEN: usize = 16;
/// The label prefix of share data objects on PKCS#11 tokens.
pub const TOKEN_LABEL_PREFIX: &str = "leakless-share:";

/// What went wrong with a split or a set of shares: this module's own error, returned by the
/// ceremony functions (split, combine, share files) and by no key-ring operation, so it has no
/// conversion into the crate's [`Error`](crate::Error).
/// No variant carries share values or key bytes; shares are named by their origin (a file
/// path, a token label, or `share #i`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShamirError {
    /// The threshold or count cannot be used.
    #[error("cannot split {threshold}-of-{shares}: {problem}")]
    InvalidParameters {
        /// Requested threshold `M`.
        threshold: u8,
        /// Requested share count `N`.
        shares: u8,
        /// Why not.
        problem: &'static str,
    },
    /// A share's text is not a well-formed share.
    #[error("{origin}: not a usable leakless root-key share: {problem}")]
    Malformed {
        /// Where the share came from.
        origin: String,
        /// What is wrong (never the share's content).
        problem: String,
    },
    /// A share's value or fields do not match its own commitment: it was altered or damaged.
    #[error(
        "{origin}: share {index} is corrupted (its content does not match its commitment); \
         ask its custodian for an intact copy"
    )]
    Corrupted {
        /// Where the share came from.
        origin: String,
        /// Its index.
        index: u8,
    },
    /// A share belongs to another root key.
    #[error(
        "{origin}: share of root key {found}, but the other shares are of {expected}; \
         remove it"
    )]
    ForeignShare {
        /// Where the foreign share came from.
        origin: String,
        /// The key id the first share names.
        expected: String,
        /// The key id this share names.
        found: String,
    },
    /// A share belongs to another split (set, threshold or count) of the same root key.
    #[error(
        "{origin}: share of another split of the same root key ({what} differs from {first}); \
         use shares of one split only"
    )]
    MixedSets {
        /// Where the odd share came from.
        origin: String,
        /// The share it was compared with.
        first: String,
        /// Which field differs.
        what: &'static str,
    },
    /// Two shares have the same index.
    #[error("{first} and {second} are both share {index}; give each share once")]
    DuplicateIndex {
        /// The index.
        index: u8,
        /// One origin.
        first: String,
        /// The other.
        second: String,
    },
    /// Shares disagree on the set's commitments: the named ones were altered.
    #[error(
        "the shares disagree on the commitments of their set; these do not match the others \
         and were altered: {}",
        origins.join(", ")
    )]
    CommitmentMismatch {
        /// The shares in the minority (all of them if there is no majority).
        origins: Vec<String>,
    },
    /// Fewer shares than the threshold.
    #[error("{have} share(s) given, but this key needs {need} of its {of} shares to rebuild")]
    BelowThreshold {
        /// Distinct valid shares given.
        have: usize,
        /// The threshold `M`.
        need: u8,
        /// The share count `N`.
        of: u8,
    },
    /// Interpolation gave a key whose id is not the one the shares name.
    #[error(
        "the shares rebuilt a key with id {rebuilt}, not {expected}: at least one share is \
         forged or from another key; nothing was unsealed"
    )]
    WrongKey {
        /// The key id named by the shares.
        expected: String,
        /// The id of what came out.
        rebuilt: String,
    },
    /// A share file could not be read or written.
    #[error("share file {}: {problem}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong, and what to do.
        problem: String,
    },
    /// A PKCS#11 token refused to store or return a share.
    #[error("share token {token}: {detail}")]
    Token {
        /// The token label.
        token: String,
        /// The backend's error.
        detail: String,
    },
}

/// One share of a split root key. Zeroized on drop; `Debug` shows only public fields.
pub struct Share {
    key_id: String,
    set_id: [u8; SET_ID_LEN],
    threshold: u8,
    count: u8,
    index: u8,
    value: Zeroizing<[u8; KEY_LEN]>,
    commitments: Vec<[u8; 32]>,
    origin: String,
}

debug_fields!(Share, |share| {
    "key_id": share.key_id,
    "set": hex::encode(share.set_id),
    "index": share.index,
    "threshold": share.threshold,
    "count": share.count,
    "origin": share.origin,
});

impl Share {
    /// The id of the root key this share belongs to (`local:...`).
    #[must_use]
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The split's random id, in hex.
    #[must_use]
    pub fn set_id(&self) -> String {
        hex::encode(self.set_id)
    }

    /// This share's index (its x coordinate), 1 to [`Self::count`].
    #[must_use]
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The threshold `M`.
    #[must_use]
    pub fn threshold(&self) -> u8 {
        self.threshold
    }

    /// The share count `N`.
    #[must_use]
    pub fn count(&self) -> u8 {
        self.count
    }

    /// Where the share came from (a path, a token label, or `share #i`), for messages.
    #[must_use]
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// A file name for this share: `share-<set prefix>-<index>-of-<count>.txt`.
    #[must_use]
    pub fn file_name(&self) -> String {
        format!(
            "share-{}-{}-of-{}.txt",
            &self.set_id()[..8],
            self.index,
            self.count
        )
    }

    fn commitment(&self) -> [u8; 32] {
        commit(
            &self.key_id,
            &self.set_id,
            self.threshold,
            self.count,
            self.index,
            &self.value,
        )
    }

    /// The share as text. It holds the secret share value: give it only to its custodian.
    ///
    /// ```text
    /// leakless-root-key-share v1
    /// key-id: local:3f2a9c0e1b7d4a65
    /// set: 6c1f...(32 hex digits)
    /// threshold: 3
    /// shares: 5
    /// index: 2
    /// value: 9e0b...(64 hex digits)
    /// commitment-1: 51d2...(64 hex digits)
    /// ...
    /// commitment-5: 0a7c...
    /// ```
    #[must_use]
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::with_capacity(300 + 80 * self.commitments.len()));
        out.push_str(SHARE_HEADER);
        out.push('\n');
        out.push_str(&format!(
            "key-id: {}\nset: {}\nthreshold: {}\nshares: {}\nindex: {}\n",
            self.key_id,
            hex::encode(self.set_id),
            self.threshold,
            self.count,
            self.index
        ));
        let value = Zeroizing::new(hex::encode(*self.value));
        out.push_str("value: ");
        out.push_str(&value);
        out.push('\n');
        for (i, c) in (1u16..).zip(&self.commitments) {
            out.push_str(&format!("commitment-{i}: {}\n", hex::encode(c)));
        }
        out
    }

    /// Parses a share from its text. `origin` names it in errors (a path, a token label).
    /// Checks the format and the share's own commitment, not the set (see [`combine`]).
    ///
    /// # Errors
    /// [`ShamirError::Malformed`] or [`ShamirError::Corrupted`].
    pub fn parse(text: &str, origin: &str) -> Result<Share, ShamirError> {
        let bad = |problem: String| ShamirError::Malformed {
            origin: origin.to_owned(),
            problem,
        };
        let mut lines = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .enumerate()
            .filter(|(_, l)| !l.is_empty());
        let Some((_, header)) = lines.next() else {
            return Err(bad("it is empty".into()));
        };
        if header != SHARE_HEADER {
            return Err(bad(match header.strip_prefix(HEADER_PREFIX) {
                Some(version) if version.len() <= 8 => {
                    format!("format version {version:?} is not one this build reads (it reads v1)")
                }
                _ => format!("the first line is not {SHARE_HEADER:?}"),
            }));
        }
        let mut field = |name: &str| -> Result<(usize, String), ShamirError> {
            let (n, line) = lines
                .next()
                .ok_or_else(|| bad(format!("the {name:?} line is missing")))?;
            let value = line
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(": "))
                .ok_or_else(|| bad(format!("line {} should be the {name:?} line", n + 1)))?;
            Ok((n + 1, value.to_owned()))
        };
        let (_, key_id) = field("key-id")?;
        if key_id.is_empty() || key_id.len() > 128 || !key_id.is_ascii() {
            return Err(bad("the key id is empty, too long or not ASCII".into()));
        }
        let (n, set) = field("set")?;
        let mut set_id = [0u8; SET_ID_LEN];
        hex::decode_to_slice(&set, &mut set_id)
            .map_err(|_| bad(format!("line {n}: the set id must be 32 hex digits")))?;
        let number = |(n, text): (usize, String), what: &str| -> Result<u8, ShamirError> {
            text.parse::<u8>().map_err(|_| {
                bad(format!(
                    "line {n}: the {what} must be a number from 1 to 255"
                ))
            })
        };
        let threshold = number(field("threshold")?, "threshold")?;
        let count = number(field("shares")?, "share count")?;
        let index = number(field("index")?, "index")?;
        if threshold < 2 || threshold > count || index == 0 || index > count {
            return Err(bad(format!(
                "threshold {threshold}, count {count} and index {index} are inconsistent"
            )));
        }
        let (n, value_hex) = field("value")?;
        let value_hex = Zeroizing::new(value_hex);
        let mut value = Zeroizing::new([0u8; KEY_LEN]);
        hex::decode_to_slice(value_hex.as_bytes(), &mut *value)
            .map_err(|_| bad(format!("line {n}: the value must be 64 hex digits")))?;
        let mut commitments = Vec::with_capacity(usize::from(count));
        for i in 1..=count {
            let (n, c) = field(&format!("commitment-{i}"))?;
            let mut out = [0u8; 32];
            hex::decode_to_slice(&c, &mut out)
                .map_err(|_| bad(format!("line {n}: a commitment must be 64 hex digits")))?;
            commitments.push(out);
        }
        if let Some((n, _)) = lines.next() {
            return Err(bad(format!("unexpected text on line {}", n + 1)));
        }
        let share = Share {
            key_id,
            set_id,
            threshold,
            count,
            index,
            value,
            commitments,
            origin: origin.to_owned(),
        };
        let own = share
            .commitments
            .get(usize::from(index) - 1)
            .copied()
            .unwrap_or([0; 32]);
        if share.commitment() != own {
            return Err(ShamirError::Corrupted {
                origin: origin.to_owned(),
                index,
            });
        }
        Ok(share)
    }

    /// Writes the share to a new file at `path` with mode `0600`. Refuses to overwrite.
    ///
    /// # Errors
    /// [`ShamirError::Io`].
    pub fn write_file(&self, path: &Path) -> Result<(), ShamirError> {
        super::secret_file::write_new(path, self.to_text().as_bytes()).map_err(|problem| {
            ShamirError::Io {
                path: path.to_path_buf(),
                problem,
            }
        })
    }

    /// Reads a share file written by [`Self::write_file`]. The file must not be accessible
    /// to group or others.
    ///
    /// # Errors
    /// [`ShamirError::Io`] for a missing or loosely permitted file, or as [`Self::parse`].
    pub fn read_file(path: &Path) -> Result<Share, ShamirError> {
        let io = |problem: String| ShamirError::Io {
            path: path.to_path_buf(),
            problem,
        };
        let meta = fs::metadata(path).map_err(|e| io(format!("cannot read it: {e}")))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(io(format!(
                    "mode {:04o} lets group or others read a key share; run `chmod 600` on it",
                    mode & 0o7777
                )));
            }
        }
        if !meta.is_file() || meta.len() > 64 * 1024 {
            return Err(io(
                "is not a share file (not a regular file, or too large)".into()
            ));
        }
        let raw = Zeroizing::new(fs::read(path).map_err(|e| io(format!("cannot read it: {e}")))?);
        let text = std::str::from_utf8(&raw).map_err(|_| io("is not UTF-8 text".into()))?;
        Share::parse(text, &path.display().to_string())
    }
}

fn commit(
    key_id: &str,
    set_id: &[u8; SET_ID_LEN],
    threshold: u8,
    count: u8,
    index: u8,
    value: &[u8; KEY_LEN],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(COMMIT_DOMAIN);
    // Key ids are at most 128 bytes (checked on parse; made by LocalKms on split).
    h.update([u8::try_from(key_id.len()).unwrap_or(u8::MAX)]);
    h.update(key_id.as_bytes());
    h.update(set_id);
    h.update([threshold, count, index]);
    h.update(value);
    h.finalize().into()
}

/// The public id of `root`: the one [`LocalKms`] reports and every share carries.
#[must_use]
pub fn key_id_of(root: &RootKey) -> String {
    LocalKms::from_root_key(root.clone())
        .root_key_id()
        .to_owned()
}

/// Splits `root` into `shares` shares, any `threshold` of which rebuild it.
///
/// # Errors
/// [`ShamirError::InvalidParameters`] unless `2 <= threshold <= shares` (`shares` is at most
/// 255 by its type).
pub fn split(root: &RootKey, threshold: u8, shares: u8) -> Result<Vec<Share>, ShamirError> {
    let invalid = |problem| ShamirError::InvalidParameters {
        threshold,
        shares,
        problem,
    };
    if threshold < 2 {
        return Err(invalid(
            "a threshold below 2 would make every share a full copy of the key",
        ));
    }
    if threshold > shares {
        return Err(invalid("the threshold cannot exceed the number of shares"));
    }
    let key_id = key_id_of(root);
    let mut set_id = [0u8; SET_ID_LEN];
    rand_core::OsRng.fill_bytes(&mut set_id);
    let dealt: Vec<blahaj::Share> = Sharks(threshold)
        .dealer(root.expose_secret())
        .take(usize::from(shares))
        .collect();
    let mut out = Vec::with_capacity(dealt.len());
    for d in &dealt {
        let mut value = Zeroizing::new([0u8; KEY_LEN]);
        for (dst, src) in value.iter_mut().zip(&d.y) {
            *dst = src.0;
        }
        out.push(Share {
            key_id: key_id.clone(),
            set_id,
            threshold,
            count: shares,
            index: d.x.0,
            value,
            commitments: Vec::new(),
            origin: format!("share #{}", d.x.0),
        });
    }
    // `dealt` zeroizes itself on drop (blahaj's zeroize_memory feature).
    drop(dealt);
    let commitments: Vec<[u8; 32]> = out.iter().map(Share::commitment).collect();
    for share in &mut out {
        share.commitments.clone_from(&commitments);
    }
    Ok(out)
}

/// Checks `shares` (see the [module docs](self) for every check, in order) and rebuilds the
/// root key from them. The key lives only in the returned [`RootKey`], which zeroizes itself
/// on drop; every intermediate buffer is zeroized before this returns.
///
/// # Errors
/// The first failing check's [`ShamirError`].
pub fn combine(shares: &[Share]) -> Result<RootKey, ShamirError> {
    let Some(first) = shares.first() else {
        return Err(ShamirError::BelowThreshold {
            have: 0,
            need: 2,
            of: 2,
        });
    };
    // 1. Each share against its own commitment (parse checked it, but shares can also be
    //    built by `split` and changed in memory by nobody; check again, it is cheap).
    for s in shares {
        let own = s.commitments.get(usize::from(s.index).wrapping_sub(1));
        if s.index == 0
            || own != Some(&s.commitment())
            || s.commitments.len() != usize::from(s.count)
        {
            return Err(ShamirError::Corrupted {
                origin: s.origin.clone(),
                index: s.index,
            });
        }
    }
    // 2. One key, one split.
    for s in shares.iter().skip(1) {
        if s.key_id != first.key_id {
            return Err(ShamirError::ForeignShare {
                origin: s.origin.clone(),
                expected: first.key_id.clone(),
                found: s.key_id.clone(),
            });
        }
        let what = if s.set_id != first.set_id {
            Some("set id")
        } else if s.threshold != first.threshold {
            Some("threshold")
        } else if s.count != first.count {
            Some("share count")
        } else {
            None
        };
        if let Some(what) = what {
            return Err(ShamirError::MixedSets {
                origin: s.origin.clone(),
                first: first.origin.clone(),
                what,
            });
        }
    }
    // 3. No index twice.
    for (i, a) in shares.iter().enumerate() {
        if let Some(b) = shares.iter().skip(i + 1).find(|b| b.index == a.index) {
            return Err(ShamirError::DuplicateIndex {
                index: a.index,
                first: a.origin.clone(),
                second: b.origin.clone(),
            });
        }
    }
    // 4. One commitment list; name the minority.
    let mut groups: Vec<(&[[u8; 32]], Vec<&str>)> = Vec::new();
    for s in shares {
        match groups
            .iter_mut()
            .find(|(c, _)| *c == s.commitments.as_slice())
        {
            Some((_, members)) => members.push(&s.origin),
            None => groups.push((&s.commitments, vec![&s.origin])),
        }
    }
    if groups.len() > 1 {
        groups.sort_by_key(|(_, m)| std::cmp::Reverse(m.len()));
        let sizes: Vec<usize> = groups.iter().map(|(_, m)| m.len()).collect();
        let clear_majority = matches!(sizes.as_slice(), [a, b, ..] if a > b);
        let skip = usize::from(clear_majority);
        let origins = groups
            .iter()
            .skip(skip)
            .flat_map(|(_, m)| m.iter().map(|o| (*o).to_owned()))
            .collect();
        return Err(ShamirError::CommitmentMismatch { origins });
    }
    // 5. Enough shares.
    if shares.len() < usize::from(first.threshold) {
        return Err(ShamirError::BelowThreshold {
            have: shares.len(),
            need: first.threshold,
            of: first.count,
        });
    }
    // 6. Interpolate, then check the result's id.
    let mut points: Vec<blahaj::Share> = Vec::with_capacity(shares.len());
    for s in shares {
        // blahaj's byte form of a share: x, then y.
        let mut raw = Zeroizing::new(Vec::with_capacity(1 + KEY_LEN));
        raw.push(s.index);
        raw.extend_from_slice(&*s.value);
        let point =
            blahaj::Share::try_from(raw.as_slice()).map_err(|_| ShamirError::Corrupted {
                origin: s.origin.clone(),
                index: s.index,
            })?;
        points.push(point);
    }
    let recovered = Zeroizing::new(Sharks(first.threshold).recover(&points).map_err(|_| {
        ShamirError::BelowThreshold {
            have: shares.len(),
            need: first.threshold,
            of: first.count,
        }
    })?);
    drop(points);
    let mut bytes: [u8; KEY_LEN] =
        recovered
            .as_slice()
            .try_into()
            .map_err(|_| ShamirError::Malformed {
                origin: first.origin.clone(),
                problem: "the shares do not hold a 32-byte key".into(),
            })?;
    drop(recovered);
    let root = RootKey::from_bytes(bytes);
    bytes.zeroize();
    let rebuilt = key_id_of(&root);
    if rebuilt != first.key_id {
        return Err(ShamirError::WrongKey {
            expected: first.key_id.clone(),
            rebuilt,
        });
    }
    Ok(root)
}

/// Writes each share to `dir/<Share::file_name>` with mode `0600` and returns the paths.
/// `dir` is created (mode `0700`) if missing. Stops at the first failure.
///
/// # Errors
/// [`ShamirError::Io`].
pub fn write_shares(dir: &Path, shares: &[Share]) -> Result<Vec<PathBuf>, ShamirError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| ShamirError::Io {
        path: dir.to_path_buf(),
        problem: format!("cannot create the directory: {e}"),
    })?;
    let mut paths = Vec::with_capacity(shares.len());
    for share in shares {
        let path = dir.join(share.file_name());
        share.write_file(&path)?;
        paths.push(path);
    }
    Ok(paths)
}

/// Reads a local root key file for splitting, with exactly the rules of
/// [`LocalKms::from_key_file`] (32 raw bytes or 64 hex digits, mode `0600` or stricter).
///
/// # Errors
/// [`crate::Error::KeyFile`] as [`LocalKms::from_key_file`].
pub fn read_root_key_file(path: &Path) -> Result<RootKey, crate::Error> {
    super::local::read_key_file(path)
}

/// Reads a local root key from the environment variable `var` (64 hex digits), as
/// [`LocalKms::from_env`] does.
///
/// # Errors
/// [`crate::Error::Kms`] as [`LocalKms::from_env`].
pub fn read_root_key_env(var: &str) -> Result<RootKey, crate::Error> {
    let kms = LocalKms::from_env(var)?;
    let value = Zeroizing::new(std::env::var(var).unwrap_or_default());
    let root = parse_root_key(value.trim().as_bytes())
        .filter(|r| key_id_of(r) == kms.root_key_id())
        .ok_or_else(|| crate::Error::Kms {
            backend: "local",
            operation: "load root key",
            detail: format!("environment variable {var} changed while it was being read"),
        })?;
    Ok(root)
}

/// Writes `root` to a new file at `path` as 64 hex digits with mode `0600` (the format
/// [`LocalKms::from_key_file`] reads). Refuses to overwrite. For recovery after
/// [`combine`]: the file is a full copy of the key, so keep it only as long as needed.
///
/// # Errors
/// [`crate::Error::KeyFile`] when the file exists or cannot be written.
pub fn write_root_key_file(path: &Path, root: &RootKey) -> Result<(), crate::Error> {
    super::local::write_new_key_file(path, root)
}

fn parse_root_key(raw: &[u8]) -> Option<RootKey> {
    if raw.len() == KEY_LEN {
        return RootKey::try_from_slice(raw);
    }
    let trimmed = raw.strip_suffix(b"\n").unwrap_or(raw);
    let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    hex::decode_to_slice(trimmed, &mut *bytes).ok()?;
    Some(RootKey::from_bytes(*bytes))
}

#[cfg(feature = "pkcs11")]
mod token {
    use super::{ShamirError, Share, TOKEN_LABEL_PREFIX};
    use crate::kms::Pkcs11Token;

    fn token_err(token: &Pkcs11Token, e: &crate::Error) -> ShamirError {
        ShamirError::Token {
            token: token.label().to_owned(),
            detail: e.to_string(),
        }
    }

    impl Share {
        /// The data-object label this share gets on a token:
        /// `leakless-share:<set id>:<index>`.
        #[must_use]
        pub fn token_label(&self) -> String {
            format!("{TOKEN_LABEL_PREFIX}{}:{}", self.set_id(), self.index)
        }

        /// Stores the share on a custodian's token as a private `CKO_DATA` object (readable
        /// only after logging in with that token's PIN). Returns the object's label.
        ///
        /// # Errors
        /// [`ShamirError::Token`] when the token refuses or already holds this share.
        pub fn store_on_token(&self, token: &Pkcs11Token) -> Result<String, ShamirError> {
            let label = self.token_label();
            token
                .put_data(&label, self.to_text().as_bytes())
                .map_err(|e| token_err(token, &e))?;
            Ok(label)
        }

        /// Every leakless share stored on `token`, each checked as [`Share::parse`] does.
        /// A custodian's token normally holds one.
        ///
        /// # Errors
        /// [`ShamirError::Token`], or a parse error naming `token/label`.
        pub fn load_from_token(token: &Pkcs11Token) -> Result<Vec<Share>, ShamirError> {
            let mut out = Vec::new();
            for label in token
                .data_labels(TOKEN_LABEL_PREFIX)
                .map_err(|e| token_err(token, &e))?
            {
                let origin = format!("token {}/{label}", token.label());
                let value = token
                    .get_data(&label)
                    .map_err(|e| token_err(token, &e))?
                    .ok_or_else(|| ShamirError::Token {
                        token: token.label().to_owned(),
                        detail: format!("data object {label:?} disappeared while reading"),
                    })?;
                let text = std::str::from_utf8(&value).map_err(|_| ShamirError::Malformed {
                    origin: origin.clone(),
                    problem: "is not UTF-8 text".into(),
                })?;
                out.push(Share::parse(text, &origin)?);
            }
            Ok(out)
        }
    }
}
