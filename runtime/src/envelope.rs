//! Envelope format v1: the self-describing binary value stored for every sealed field.
//!
//! The byte layout, the associated data of both AEAD calls and the test vectors are specified in
//! `docs/envelope-format.md`; this module is the reference implementation of that document.
//!
//! ```text
//! off       len   field
//! 0         2     magic "LK" (0x4c 0x4b)
//! 2         1     format version (0x01)
//! 3         1     data AEAD id (0x01 XChaCha20-Poly1305, 0x02 AES-256-GCM)
//! 4         1     padding id (0x01: 0x80 marker then zeros)
//! 5         1     Ls, key scope length (1..=64)
//! 6         Ls    key scope (ASCII)
//! 6+Ls      4     KEK version, u32 big-endian (>= 1)
//! 10+Ls     24    DEK wrap nonce
//! 34+Ls     48    wrapped DEK under the KEK, with its tag: XChaCha20-Poly1305 for data AEAD
//!                 0x01, XAES-256-GCM for 0x02
//! 82+Ls     Nd    data nonce (24 or 12 bytes, by data AEAD)
//! 82+Ls+Nd  rest  data ciphertext of the padded plaintext, then its 16-byte tag
//! ```
//!
//! The DEK wrap's associated data is bytes `0 .. 10+Ls` (header, scope, KEK version) followed
//! by the canonical field context; the data AEAD's associated data is bytes `0 .. 5` followed by
//! the same context. Re-wrapping a DEK under another KEK therefore leaves the data ciphertext
//! untouched.

use rand::RngCore;
use zeroize::{Zeroize, Zeroizing};

use crate::aead::{self, Algorithm, TAG_LEN};
use crate::context::{FieldContext, FieldLocation};
use crate::error::Error;
use crate::key::{KekVersion, KeyScope};
use crate::padding::{self, MAX_PLAINTEXT_LEN, PADDING_ISO7816, PaddingPolicy};
use crate::secret::{Dek, KEY_LEN, Kek, Plaintext};

/// The magic bytes every envelope starts with: ASCII `"LK"`.
pub const MAGIC: [u8; 2] = *b"LK";
/// The format version this module writes.
pub const FORMAT_V1: u8 = 0x01;
/// Length of the fixed header (magic, version, data AEAD id, padding id).
pub const HEADER_LEN: usize = 5;
/// Capacity that holds the associated data of a typical field without growing: the longest key
/// prefix (header, scope length, a 64-byte scope, KEK version) and 64 bytes of context.
pub(crate) const AAD_CAPACITY: usize = HEADER_LEN + 1 + KeyScope::MAX_LEN + 4 + 64;
/// Length of the DEK wrap nonce (XChaCha20-Poly1305).
pub const WRAP_NONCE_LEN: usize = 24;
/// Length of the wrapped DEK: a 32-byte key plus a 16-byte tag.
pub const WRAPPED_DEK_LEN: usize = KEY_LEN + TAG_LEN;
/// The largest padded plaintext (`L`) an envelope may carry: 2^30 bytes, what the largest
/// plaintext (2^30 - 1 bytes) takes with its padding marker. Writers refuse a padding policy
/// that would pad beyond it; readers refuse a longer data ciphertext as malformed before
/// decrypting anything.
pub const MAX_PADDED_LEN: usize = 1 << 30;
/// The longest envelope a reader accepts: a 64-byte key scope, a 24-byte data nonce and a
/// [`MAX_PADDED_LEN`] padded plaintext with its tag (2^30 + 186 bytes).
pub const MAX_ENVELOPE_LEN: usize = HEADER_LEN
    + 1
    + KeyScope::MAX_LEN
    + 4
    + WRAP_NONCE_LEN
    + WRAPPED_DEK_LEN
    + 24
    + MAX_PADDED_LEN
    + TAG_LEN;

/// Why an envelope could not be parsed, before any key is involved. Turned into an [`Error`]
/// that names the field with [`ParseError::at`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// The value does not start with [`MAGIC`].
    NotAnEnvelope,
    /// The format version byte is unknown.
    UnknownFormatVersion(u8),
    /// An algorithm identifier byte is unknown.
    UnknownAlgorithm {
        /// `"data AEAD"` or `"padding"`.
        kind: &'static str,
        /// The byte found.
        id: u8,
    },
    /// The value ends inside `part`.
    Truncated {
        /// The part that did not fit.
        part: &'static str,
        /// Bytes it needs.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// Another structural problem.
    Malformed(&'static str),
}

impl ParseError {
    /// Attaches the field's location, giving the public error.
    #[must_use]
    pub fn at(self, location: FieldLocation) -> Error {
        match self {
            ParseError::NotAnEnvelope => Error::NotAnEnvelope { location },
            ParseError::UnknownFormatVersion(version) => {
                Error::UnknownFormatVersion { location, version }
            }
            ParseError::UnknownAlgorithm { kind, id } => {
                Error::UnknownAlgorithm { location, kind, id }
            }
            ParseError::Truncated {
                part,
                needed,
                available,
            } => Error::Truncated {
                location,
                part,
                needed,
                available,
            },
            ParseError::Malformed(problem) => Error::Malformed { location, problem },
        }
    }
}

/// The public facts of an envelope, readable without any key: which algorithm sealed it and
/// which KEK version wraps its DEK. The migrator's `status` counts rows by these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvelopeInfo {
    /// The data AEAD.
    pub algorithm: Algorithm,
    /// The key scope of the wrapping KEK.
    pub scope: KeyScope,
    /// The version of the wrapping KEK.
    pub kek_version: KekVersion,
    /// Total envelope length in bytes.
    pub len: usize,
    /// Padded plaintext length (the size class; the exact length is hidden inside).
    pub padded_len: usize,
}

/// A parsed envelope borrowing from the input.
pub(crate) struct Parsed<'a> {
    pub(crate) algorithm: Algorithm,
    pub(crate) scope: &'a str,
    pub(crate) kek_version: KekVersion,
    /// Bytes `0 .. 10+Ls`: header, scope and KEK version (the DEK wrap's AAD prefix).
    pub(crate) key_prefix: &'a [u8],
    pub(crate) wrap_nonce: &'a [u8],
    pub(crate) wrapped_dek: &'a [u8],
    pub(crate) data_nonce: &'a [u8],
    pub(crate) ciphertext_and_tag: &'a [u8],
}

impl Parsed<'_> {
    fn header(&self) -> &[u8] {
        self.key_prefix.get(..HEADER_LEN).unwrap_or_default()
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, part: &'static str) -> Result<&'a [u8], ParseError> {
        let available = self.bytes.len().saturating_sub(self.pos);
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end.and_then(|end| self.bytes.get(self.pos..end).map(|s| (s, end))) {
            Some((slice, end)) => {
                self.pos = end;
                Ok(slice)
            }
            None => Err(ParseError::Truncated {
                part,
                needed: n,
                available,
            }),
        }
    }

    fn byte(&mut self, part: &'static str) -> Result<u8, ParseError> {
        let s = self.take(1, part)?;
        s.first()
            .copied()
            .ok_or(ParseError::Malformed("empty read"))
    }
}

/// Parses an envelope's structure. Checks lengths and identifiers only; no key is used.
pub(crate) fn parse(bytes: &[u8]) -> Result<Parsed<'_>, ParseError> {
    let mut r = Reader { bytes, pos: 0 };
    // A value shorter than the magic, or with other first bytes, is not an envelope at all.
    if bytes.get(..2) != Some(&MAGIC[..]) {
        return Err(ParseError::NotAnEnvelope);
    }
    r.take(2, "magic")?;
    let version = r.byte("format version")?;
    if version != FORMAT_V1 {
        return Err(ParseError::UnknownFormatVersion(version));
    }
    let alg_id = r.byte("data AEAD id")?;
    let algorithm = Algorithm::from_id(alg_id).ok_or(ParseError::UnknownAlgorithm {
        kind: "data AEAD",
        id: alg_id,
    })?;
    let pad_id = r.byte("padding id")?;
    if pad_id != PADDING_ISO7816 {
        return Err(ParseError::UnknownAlgorithm {
            kind: "padding",
            id: pad_id,
        });
    }
    let scope_len = usize::from(r.byte("key scope length")?);
    let scope_bytes = r.take(scope_len, "key scope")?;
    let scope = std::str::from_utf8(scope_bytes)
        .ok()
        .filter(|s| KeyScope::is_valid(s))
        .ok_or(ParseError::Malformed("invalid key scope name"))?;
    let version_bytes = r.take(4, "KEK version")?;
    let kek_version = version_bytes
        .try_into()
        .ok()
        .map(u32::from_be_bytes)
        .and_then(|v| KekVersion::new(v).ok())
        .ok_or(ParseError::Malformed("KEK version 0"))?;
    let key_prefix = bytes.get(..r.pos).unwrap_or_default();
    let wrap_nonce = r.take(WRAP_NONCE_LEN, "DEK wrap nonce")?;
    let wrapped_dek = r.take(WRAPPED_DEK_LEN, "wrapped DEK")?;
    let data_nonce = r.take(algorithm.nonce_len(), "data nonce")?;
    let rest = bytes.get(r.pos..).unwrap_or_default();
    // The padded plaintext is at least one byte (the 0x80 marker).
    if rest.len() < TAG_LEN + 1 {
        return Err(ParseError::Truncated {
            part: "data ciphertext and tag",
            needed: TAG_LEN + 1,
            available: rest.len(),
        });
    }
    // ... and at most MAX_PADDED_LEN bytes: nothing longer is decrypted (or allocated for).
    if rest.len() > MAX_PADDED_LEN + TAG_LEN {
        return Err(ParseError::Malformed(
            "data ciphertext longer than the format's 2^30-byte limit",
        ));
    }
    Ok(Parsed {
        algorithm,
        scope,
        kek_version,
        key_prefix,
        wrap_nonce,
        wrapped_dek,
        data_nonce,
        ciphertext_and_tag: rest,
    })
}

/// Reads an envelope's public facts without any key.
///
/// # Errors
/// The [`ParseError`] describing the first structural problem.
pub fn inspect(bytes: &[u8]) -> Result<EnvelopeInfo, ParseError> {
    let p = parse(bytes)?;
    Ok(EnvelopeInfo {
        algorithm: p.algorithm,
        scope: KeyScope::new(p.scope)
            .map_err(|_| ParseError::Malformed("invalid key scope name"))?,
        kek_version: p.kek_version,
        len: bytes.len(),
        padded_len: p.ciphertext_and_tag.len().saturating_sub(TAG_LEN),
    })
}

/// Whether `bytes` starts like a leakless envelope (magic and any version byte). Adoption mode
/// uses it to tell sealed values from legacy plaintext; everything else must [`inspect`].
#[must_use]
pub fn looks_like_envelope(bytes: &[u8]) -> bool {
    bytes.get(..2) == Some(&MAGIC[..])
}

/// The random values one seal consumes. Only [`seal`] makes them, fresh each time, except for
/// the known-answer tests, which fix them to reproduce the published vectors.
pub(crate) struct SealRandomness {
    pub(crate) dek: Dek,
    pub(crate) wrap_nonce: [u8; WRAP_NONCE_LEN],
    pub(crate) data_nonce: [u8; 24],
}

impl SealRandomness {
    /// One fill of the thread's CSPRNG, split into the DEK and both nonces. `None` only if the
    /// split went wrong, which the lengths rule out.
    fn fresh() -> Option<Self> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN + WRAP_NONCE_LEN + 24]);
        rand::thread_rng().fill_bytes(&mut bytes[..]);
        let (dek, rest) = bytes.split_at(KEY_LEN);
        let (wrap_nonce, data_nonce) = rest.split_at(WRAP_NONCE_LEN);
        Some(Self {
            dek: Dek::try_from_slice(dek)?,
            wrap_nonce: wrap_nonce.try_into().ok()?,
            data_nonce: data_nonce.try_into().ok()?,
        })
    }
}

/// A KEK with the cipher state its DEK wraps need, built once per cached KEK version (the
/// [`KekCache`](crate::keyring::KekCache) keeps one in each entry): for XAES-256-GCM, the wrap
/// of AES-256-GCM fields, the KEK's AES-256 key schedule and derived constant
/// ([`aead::Xaes256Gcm`]), so a wrap or unwrap costs two AES block encryptions for its subkey
/// instead of a key schedule and three. XChaCha20-Poly1305 has no key schedule to keep: each
/// wrap's subkey is HChaCha20 of the KEK and that wrap's nonce. Everything here is zeroized on
/// drop ([`Kek`] and [`aead::Xaes256Gcm`] both clear themselves); there is no `Debug`.
pub(crate) struct KekKeys {
    kek: Kek,
    xaes: aead::Xaes256Gcm,
}

impl KekKeys {
    /// Expands `kek` once.
    pub(crate) fn new(kek: Kek) -> Self {
        let xaes = aead::Xaes256Gcm::new(kek.expose_secret());
        Self { kek, xaes }
    }

    /// The KEK itself (for the blind-index key derivation).
    pub(crate) fn kek(&self) -> &Kek {
        &self.kek
    }
}

/// Everything [`seal`] needs besides the plaintext and the randomness.
pub(crate) struct SealParams<'a> {
    pub(crate) kek: &'a KekKeys,
    pub(crate) scope: &'a KeyScope,
    pub(crate) kek_version: KekVersion,
    pub(crate) ctx: &'a FieldContext<'a>,
    pub(crate) algorithm: Algorithm,
    pub(crate) padding: PaddingPolicy,
}

/// Seals `plaintext` with fresh randomness.
pub(crate) fn seal(params: &SealParams<'_>, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
    let rnd = SealRandomness::fresh().ok_or_else(|| Error::SealFailed {
        location: params.ctx.location(),
        problem: "randomness",
    })?;
    seal_with_randomness(params, plaintext, &rnd)
}

/// Seals with the given randomness. Reusing randomness across values destroys the scheme's
/// security; only [`seal`] and the known-answer tests call this.
pub(crate) fn seal_with_randomness(
    params: &SealParams<'_>,
    plaintext: &[u8],
    rnd: &SealRandomness,
) -> Result<Vec<u8>, Error> {
    let location = || params.ctx.location();
    if plaintext.len() > MAX_PLAINTEXT_LEN {
        return Err(Error::InvalidInput {
            what: "plaintext",
            problem: format!(
                "{} bytes is more than the {MAX_PLAINTEXT_LEN}-byte limit",
                plaintext.len()
            ),
        });
    }
    let padded_len =
        params
            .padding
            .padded_len(plaintext.len())
            .ok_or_else(|| Error::InvalidInput {
                what: "padding policy",
                problem: params
                    .padding
                    .validate()
                    .err()
                    .unwrap_or("padded length overflows")
                    .to_owned(),
            })?;
    if padded_len > MAX_PADDED_LEN {
        return Err(Error::InvalidInput {
            what: "padding policy",
            problem: format!(
                "pads a {}-byte plaintext to {padded_len} bytes, more than the format's \
                 {MAX_PADDED_LEN}-byte limit",
                plaintext.len()
            ),
        });
    }
    let alg = params.algorithm;
    let nonce_len = alg.nonce_len();
    let data_nonce = rnd
        .data_nonce
        .get(..nonce_len)
        .ok_or_else(|| Error::SealFailed {
            location: location(),
            problem: "data nonce length",
        })?;

    let header = [MAGIC[0], MAGIC[1], FORMAT_V1, alg.id(), PADDING_ISO7816];
    let mut out = start_envelope(
        &header,
        params.scope,
        params.kek_version,
        nonce_len + padded_len + TAG_LEN,
    )?;
    let key_prefix_len = out.len();

    // Associated data: key prefix (or header) followed by the canonical context.
    let mut aad = Vec::with_capacity(key_prefix_len + 64);
    aad.extend_from_slice(&out);
    params.ctx.encode_into(&mut aad)?;

    let wrapped = wrap_dek(alg, params.kek, &rnd.wrap_nonce, &aad, &rnd.dek).map_err(|_| {
        Error::SealFailed {
            location: location(),
            problem: "DEK wrap failed",
        }
    })?;
    out.extend_from_slice(&rnd.wrap_nonce);
    out.extend_from_slice(&wrapped);
    out.extend_from_slice(data_nonce);

    // Data AAD: drop the scope and version from the prefix, keep the context.
    aad.drain(HEADER_LEN..key_prefix_len);

    let body_start = out.len();
    out.extend_from_slice(plaintext);
    padding::pad(&mut out, body_start + padded_len);
    let body = out.get_mut(body_start..).unwrap_or_default();
    let tag = match aead::encrypt_in_place(alg, rnd.dek.expose_secret(), data_nonce, &aad, body) {
        Ok(tag) => tag,
        Err(_) => {
            // The body may still hold the plaintext: clear it before the buffer is freed.
            out.zeroize();
            return Err(Error::SealFailed {
                location: location(),
                problem: "data encryption failed",
            });
        }
    };
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Starts an envelope: its key prefix (`header || scope_len || scope || kek_version`) in a
/// buffer with room for the wrap nonce, the wrapped DEK and `data_len` bytes of data part
/// (data nonce, ciphertext and tag) after it.
fn start_envelope(
    header: &[u8],
    scope: &KeyScope,
    version: KekVersion,
    data_len: usize,
) -> Result<Vec<u8>, Error> {
    let scope = scope.as_str().as_bytes();
    let scope_len = u8::try_from(scope.len()).map_err(|_| Error::InvalidInput {
        what: "key scope",
        problem: "longer than 255 bytes".into(),
    })?;
    let mut out = Vec::with_capacity(
        header.len() + 1 + scope.len() + 4 + WRAP_NONCE_LEN + WRAPPED_DEK_LEN + data_len,
    );
    out.extend_from_slice(header);
    out.push(scope_len);
    out.extend_from_slice(scope);
    out.extend_from_slice(&version.get().to_be_bytes());
    Ok(out)
}

/// The AEAD that wraps a DEK under the KEK. It follows the data AEAD, so that a field costs one
/// cipher family: XChaCha20-Poly1305 fields wrap with XChaCha20-Poly1305, AES-256-GCM fields
/// with XAES-256-GCM (C2SP). Both take a random 24-byte nonce, which is what keeps a KEK that
/// wraps billions of DEKs inside its bounds (see the spec's "Usage bounds").
#[derive(Clone, Copy)]
enum WrapAlgorithm {
    XChaCha20Poly1305,
    Xaes256Gcm,
}

fn wrap_algorithm(data: Algorithm) -> WrapAlgorithm {
    match data {
        Algorithm::XChaCha20Poly1305 => WrapAlgorithm::XChaCha20Poly1305,
        Algorithm::Aes256Gcm => WrapAlgorithm::Xaes256Gcm,
    }
}

/// Wraps `dek` under `kek`: 32 bytes of ciphertext, then the 16-byte tag.
fn wrap_dek(
    data: Algorithm,
    kek: &KekKeys,
    nonce: &[u8; WRAP_NONCE_LEN],
    aad: &[u8],
    dek: &Dek,
) -> Result<[u8; WRAPPED_DEK_LEN], aead::AeadFailure> {
    let mut out = [0u8; WRAPPED_DEK_LEN];
    let (body, tag_out) = out.split_at_mut(KEY_LEN);
    body.copy_from_slice(dek.expose_secret());
    let tag = match wrap_algorithm(data) {
        WrapAlgorithm::XChaCha20Poly1305 => aead::encrypt_in_place(
            Algorithm::XChaCha20Poly1305,
            kek.kek.expose_secret(),
            nonce,
            aad,
            body,
        ),
        WrapAlgorithm::Xaes256Gcm => kek.xaes.encrypt_in_place(nonce, aad, body),
    };
    match tag {
        Ok(tag) => {
            tag_out.copy_from_slice(&tag);
            Ok(out)
        }
        Err(e) => {
            out.zeroize();
            Err(e)
        }
    }
}

/// Unwraps the DEK of a parsed envelope with `kek`, given the wrap's associated data
/// (`key_prefix || context`).
fn unwrap_dek(
    kek: &KekKeys,
    parsed: &Parsed<'_>,
    aad: &[u8],
    ctx: &FieldContext<'_>,
) -> Result<Dek, Error> {
    let fail = || Error::DecryptionFailed {
        location: ctx.location(),
    };
    let (ct, tag) = parsed.wrapped_dek.split_at(KEY_LEN);
    let mut buf: [u8; KEY_LEN] = ct.try_into().map_err(|_| fail())?;
    let result = match wrap_algorithm(parsed.algorithm) {
        WrapAlgorithm::XChaCha20Poly1305 => aead::decrypt_in_place(
            Algorithm::XChaCha20Poly1305,
            kek.kek.expose_secret(),
            parsed.wrap_nonce,
            aad,
            &mut buf,
            tag,
        ),
        WrapAlgorithm::Xaes256Gcm => {
            kek.xaes
                .decrypt_in_place(parsed.wrap_nonce, aad, &mut buf, tag)
        }
    };
    let dek = Dek::from_bytes(buf);
    buf.zeroize();
    result.map_err(|_| fail())?;
    Ok(dek)
}

/// Opens a parsed envelope with `kek`, given `context`, the canonical encoding of `ctx` (its
/// buffer becomes both associated data strings, so it should have room for the key prefix:
/// [`AAD_CAPACITY`]).
///
/// The data is decrypted into one buffer, the returned [`Plaintext`]'s ([`aead::decrypt`]:
/// straight from the envelope's bytes, or for short values copied there and decrypted in
/// place), and the padding is cut by shortening it (the cut bytes, the marker and zeros, are
/// wiped with the rest when the plaintext is dropped). Finding the marker takes time that
/// depends only on the padded length, for padding of up to 4 KiB ([`padding::unpadded_len`]).
pub(crate) fn open(
    kek: &KekKeys,
    parsed: &Parsed<'_>,
    ctx: &FieldContext<'_>,
    context: Vec<u8>,
) -> Result<Plaintext, Error> {
    // One buffer serves both associated data strings: `key_prefix || context` for the DEK
    // wrap, then, with the scope and version cut out, `header || context` for the data.
    let mut aad = context;
    aad.splice(0..0, parsed.key_prefix.iter().copied());
    let dek = unwrap_dek(kek, parsed, &aad, ctx)?;
    aad.drain(HEADER_LEN..parsed.key_prefix.len());
    open_data(&dek, parsed, &aad, ctx)
}

/// Decrypts the data part of `parsed` with its unwrapped `dek`, given `header || context` as
/// `aad`, and cuts the padding off the plaintext.
fn open_data(
    dek: &Dek,
    parsed: &Parsed<'_>,
    aad: &[u8],
    ctx: &FieldContext<'_>,
) -> Result<Plaintext, Error> {
    let mut pt = aead::decrypt(
        parsed.algorithm,
        dek.expose_secret(),
        parsed.data_nonce,
        aad,
        parsed.ciphertext_and_tag,
    )
    .map_err(|_| Error::DecryptionFailed {
        location: ctx.location(),
    })?;
    let len = padding::unpadded_len(pt.expose_secret()).ok_or_else(|| Error::Malformed {
        location: ctx.location(),
        problem: "padding marker missing",
    })?;
    pt.truncate(len);
    Ok(pt)
}

/// Where [`rewrap`] moves a DEK: a KEK and the scope and version it is stored as.
pub(crate) struct RewrapTarget<'a> {
    /// The KEK that wraps the DEK anew.
    pub(crate) kek: &'a KekKeys,
    /// The scope the new header names.
    pub(crate) scope: &'a KeyScope,
    /// The KEK version the new header names.
    pub(crate) version: KekVersion,
}

/// Re-wraps the DEK of `parsed` (opened with `old_kek`) under `to`, with a fresh wrap nonce.
/// The data nonce and ciphertext are copied unchanged.
///
/// `context` is the canonical encoding of `ctx`, as [`open`] takes it. With `verify_data`,
/// the data is opened with the same unwrapped DEK before it is re-wrapped (into a zeroizing
/// buffer that is dropped at once), so a row whose data part is corrupt fails as [`open`]
/// would fail instead of being re-wrapped.
pub(crate) fn rewrap(
    old_kek: &KekKeys,
    to: &RewrapTarget<'_>,
    parsed: &Parsed<'_>,
    ctx: &FieldContext<'_>,
    context: Vec<u8>,
    verify_data: bool,
) -> Result<Vec<u8>, Error> {
    let context_len = context.len();
    // As in `open`, one buffer serves as `key_prefix || context` for the old wrap and then,
    // with the scope and version cut out, as `header || context` for the data.
    let mut aad = context;
    aad.splice(0..0, parsed.key_prefix.iter().copied());
    let dek = unwrap_dek(old_kek, parsed, &aad, ctx)?;
    if verify_data {
        aad.drain(HEADER_LEN..parsed.key_prefix.len());
        // The plaintext is a zeroizing buffer, wiped as it drops here.
        drop(open_data(&dek, parsed, &aad, ctx)?);
    }
    let mut wrap_nonce = [0u8; WRAP_NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut wrap_nonce);
    let mut out = start_envelope(
        parsed.header(),
        to.scope,
        to.version,
        parsed.data_nonce.len() + parsed.ciphertext_and_tag.len(),
    )?;
    // The new wrap's associated data: the new key prefix, then the same context.
    aad.splice(..aad.len() - context_len, out.iter().copied());
    let wrapped = wrap_dek(parsed.algorithm, to.kek, &wrap_nonce, &aad, &dek).map_err(|_| {
        Error::SealFailed {
            location: ctx.location(),
            problem: "DEK wrap failed",
        }
    })?;
    out.extend_from_slice(&wrap_nonce);
    out.extend_from_slice(&wrapped);
    out.extend_from_slice(parsed.data_nonce);
    out.extend_from_slice(parsed.ciphertext_and_tag);
    Ok(out)
}

#[cfg(test)]
mod kat;
