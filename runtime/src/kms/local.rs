//! The local KMS backend: a 256-bit root key from a key file or an environment variable.
//!
//! **Single-host only.** The root key sits in this process's memory and on this host's disk
//! (or environment). That protects a stolen database, dump or backup (they never contain the
//! root key), but not a compromised application host. Use an HSM or cloud KMS backend when the
//! host itself is in your threat model.

use std::fs;
use std::io::Write;
use std::path::Path;

use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::aead::{self, Algorithm};
use crate::error::Error;
use crate::key::WrappedKek;
use crate::kms::{KekBinding, Kms};
use crate::secret::{KEY_LEN, Kek, RootKey};

/// The environment variable [`LocalKms::from_env`] reads by default: 64 hex digits.
pub const ROOT_KEY_ENV: &str = "LEAKLESS_ROOT_KEY";

const BACKEND: &str = "local";
const WRAP_NONCE_LEN: usize = 24;

/// A root key held in this process. See the module docs: single-host only.
pub struct LocalKms {
    root: RootKey,
    id: String,
}

impl std::fmt::Debug for LocalKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKms")
            .field("root_key_id", &self.id)
            .finish_non_exhaustive()
    }
}

impl LocalKms {
    /// Uses `root` directly (for tests and for callers that fetched it themselves).
    #[must_use]
    pub fn from_root_key(root: RootKey) -> Self {
        // The id is a one-way derivation of the key: public, and stable across restarts.
        let hk = Hkdf::<Sha256>::new(Some(b"leakless local root key id"), root.expose_secret());
        let mut id = [0u8; 8];
        // 8 bytes is far below HKDF-SHA256's 8160-byte output limit, so expand cannot fail.
        let _ = hk.expand(b"v1", &mut id);
        Self {
            root,
            id: format!("local:{}", hex::encode(id)),
        }
    }

    /// Reads the root key from `path`: exactly 32 raw bytes, or 64 hex digits with an optional
    /// trailing newline. The file must not be readable, writable or executable by group or
    /// others (mode `0600` or stricter).
    ///
    /// # Errors
    /// [`Error::KeyFile`] when the file is missing, has loose permissions, or holds anything
    /// else.
    pub fn from_key_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let key_err = |problem: String| Error::KeyFile {
            path: path.to_path_buf(),
            problem,
        };
        let meta = fs::metadata(path).map_err(|e| key_err(format!("cannot read it: {e}")))?;
        check_permissions(&meta).map_err(key_err)?;
        let raw =
            Zeroizing::new(fs::read(path).map_err(|e| key_err(format!("cannot read it: {e}")))?);
        let root = parse_key_bytes(&raw).ok_or_else(|| {
            key_err(
                "must hold exactly 32 raw bytes or 64 hex digits (make one with \
                 `LocalKms::generate_key_file`)"
                    .into(),
            )
        })?;
        Ok(Self::from_root_key(root))
    }

    /// Reads the root key from the environment variable `var` (64 hex digits).
    ///
    /// # Errors
    /// [`Error::Kms`] when the variable is unset or not 64 hex digits. The value is never
    /// included in the error.
    pub fn from_env(var: &str) -> Result<Self, Error> {
        let value = Zeroizing::new(std::env::var(var).map_err(|_| Error::Kms {
            backend: BACKEND,
            operation: "load root key",
            detail: format!("environment variable {var} is not set (or not UTF-8)"),
        })?);
        let root = parse_hex_key(value.trim().as_bytes()).ok_or_else(|| Error::Kms {
            backend: BACKEND,
            operation: "load root key",
            detail: format!("environment variable {var} must hold 64 hex digits"),
        })?;
        Ok(Self::from_root_key(root))
    }

    /// Makes a new random root key and writes it to `path` as 64 hex digits, with mode `0600`.
    /// Refuses to overwrite an existing file.
    ///
    /// # Errors
    /// [`Error::KeyFile`] when the file exists or cannot be written.
    pub fn generate_key_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let key_err = |problem: String| Error::KeyFile {
            path: path.to_path_buf(),
            problem,
        };
        let root = RootKey::generate();
        let mut hexed = Zeroizing::new(hex::encode(root.expose_secret()));
        hexed.push('\n');
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts
            .open(path)
            .map_err(|e| key_err(format!("cannot create it: {e}")))?;
        file.write_all(hexed.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| key_err(format!("cannot write it: {e}")))?;
        Ok(Self::from_root_key(root))
    }

    fn aad(&self, binding: &KekBinding<'_>) -> Vec<u8> {
        binding_aad(LOCAL_AAD_LABEL, &self.id, binding)
    }
}

/// The associated-data label of the local backend's KEK wrap (part of its stored format).
const LOCAL_AAD_LABEL: &[u8] = b"leakless.local-kms.kek-wrap.v1";

/// The associated data that binds a wrapped KEK to `binding` and to the root key `id`, under a
/// backend-specific `label`. Shared with the other backends that wrap KEKs in this process
/// under a root key they fetched (the TPM backend).
pub(super) fn binding_aad(label: &[u8], id: &str, binding: &KekBinding<'_>) -> Vec<u8> {
    let scope = binding.scope.as_str().as_bytes();
    let mut aad = Vec::with_capacity(label.len() + 2 + scope.len() + 4 + id.len());
    aad.extend_from_slice(label);
    // Scope names are at most 64 bytes and ids are short, so the u8 lengths cannot overflow.
    aad.push(u8::try_from(scope.len()).unwrap_or(u8::MAX));
    aad.extend_from_slice(scope);
    aad.extend_from_slice(&binding.version.get().to_be_bytes());
    aad.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
    aad.extend_from_slice(id.as_bytes());
    aad
}

#[cfg(unix)]
fn check_permissions(meta: &fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "mode {:04o} lets group or others access it; run `chmod 600` on it and make sure \
             nobody else copied it",
            mode & 0o7777
        ));
    }
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(meta: &fs::Metadata) -> Result<(), String> {
    if meta.is_file() {
        Ok(())
    } else {
        Err("is not a regular file".into())
    }
}

fn parse_key_bytes(raw: &[u8]) -> Option<RootKey> {
    if raw.len() == KEY_LEN {
        return RootKey::try_from_slice(raw);
    }
    let trimmed = raw.strip_suffix(b"\n").unwrap_or(raw);
    let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
    parse_hex_key(trimmed)
}

fn parse_hex_key(hexed: &[u8]) -> Option<RootKey> {
    if hexed.len() != 2 * KEY_LEN {
        return None;
    }
    let mut bytes = [0u8; KEY_LEN];
    let ok = hex::decode_to_slice(hexed, &mut bytes).is_ok();
    let key = RootKey::from_bytes(bytes);
    bytes.zeroize();
    ok.then_some(key)
}

impl Kms for LocalKms {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn root_key_id(&self) -> &str {
        &self.id
    }

    fn wrap_kek(&self, kek: &Kek, binding: &KekBinding<'_>) -> Result<WrappedKek, Error> {
        wrap_under_root(BACKEND, &self.root, &self.id, &self.aad(binding), kek)
    }

    fn unwrap_kek(&self, wrapped: &WrappedKek, binding: &KekBinding<'_>) -> Result<Kek, Error> {
        unwrap_under_root(
            BACKEND,
            &self.root,
            &self.id,
            &self.aad(binding),
            wrapped,
            binding,
        )
    }
}

/// Wraps `kek` under `root` with XChaCha20-Poly1305 and a random 24-byte nonce: the stored
/// form is `nonce || ciphertext || tag`, with `aad` (from [`binding_aad`]) authenticated.
pub(super) fn wrap_under_root(
    backend: &'static str,
    root: &RootKey,
    id: &str,
    aad: &[u8],
    kek: &Kek,
) -> Result<WrappedKek, Error> {
    let mut nonce = [0u8; WRAP_NONCE_LEN];
    rand_core::OsRng.fill_bytes(&mut nonce);
    wrap_under_root_with_nonce(backend, root, id, aad, kek, &nonce)
}

/// [`wrap_under_root`] with the nonce given: only for fresh random nonces and known-answer
/// tests.
fn wrap_under_root_with_nonce(
    backend: &'static str,
    root: &RootKey,
    id: &str,
    aad: &[u8],
    kek: &Kek,
    nonce: &[u8; WRAP_NONCE_LEN],
) -> Result<WrappedKek, Error> {
    let ct = aead::encrypt(
        Algorithm::XChaCha20Poly1305,
        root.expose_secret(),
        nonce,
        aad,
        kek.expose_secret(),
    )
    .map_err(|_| Error::Kms {
        backend,
        operation: "wrap KEK",
        detail: "encryption failed".into(),
    })?;
    let mut ciphertext = nonce.to_vec();
    ciphertext.extend_from_slice(&ct);
    Ok(WrappedKek {
        root_key_id: id.to_owned(),
        ciphertext,
    })
}

/// Reverses [`wrap_under_root`]: fails (never guesses) on another root key id, a truncated or
/// altered wrap, or another binding.
pub(super) fn unwrap_under_root(
    backend: &'static str,
    root: &RootKey,
    id: &str,
    aad: &[u8],
    wrapped: &WrappedKek,
    binding: &KekBinding<'_>,
) -> Result<Kek, Error> {
    let fail = |detail: String| Error::Kms {
        backend,
        operation: "unwrap KEK",
        detail,
    };
    if wrapped.root_key_id != id {
        return Err(fail(format!(
            "{} {} is wrapped under root key {}, but this backend holds {}",
            binding.scope, binding.version, wrapped.root_key_id, id
        )));
    }
    if wrapped.ciphertext.len() < WRAP_NONCE_LEN {
        return Err(fail(format!(
            "{} {}: wrapped KEK is truncated",
            binding.scope, binding.version
        )));
    }
    let (nonce, ct) = wrapped.ciphertext.split_at(WRAP_NONCE_LEN);
    let kek = aead::decrypt(
        Algorithm::XChaCha20Poly1305,
        root.expose_secret(),
        nonce,
        aad,
        ct,
    )
    .map_err(|_| {
        fail(format!(
            "{} {}: wrapped KEK does not authenticate (altered, or bound to another scope \
                 or version)",
            binding.scope, binding.version
        ))
    })?;
    Kek::try_from_slice(kek.expose_secret()).ok_or_else(|| {
        fail(format!(
            "{} {}: unwrapped KEK has the wrong length",
            binding.scope, binding.version
        ))
    })
}

impl LocalKms {
    /// The local backend's KEK wrap with a caller-chosen nonce: what [`Kms::wrap_kek`] of a
    /// `LocalKms` holding `root` returns when its random nonce is `nonce`. For the known-answer
    /// vectors of `docs/key-store-format.md` only: a real wrap must use a fresh random nonce,
    /// which is why this is hidden from the documentation.
    ///
    /// # Errors
    /// [`Error::Kms`] when the encryption fails (it does not for 32-byte keys).
    #[doc(hidden)]
    pub fn wrap_kek_with_nonce_for_kat(
        root: &RootKey,
        kek: &Kek,
        binding: &KekBinding<'_>,
        nonce: &[u8; WRAP_NONCE_LEN],
    ) -> Result<WrappedKek, Error> {
        let copy = RootKey::try_from_slice(root.expose_secret()).ok_or_else(|| Error::Kms {
            backend: BACKEND,
            operation: "wrap KEK",
            detail: "root key has the wrong length".into(),
        })?;
        let id = Self::from_root_key(copy).root_key_id().to_owned();
        let aad = binding_aad(LOCAL_AAD_LABEL, &id, binding);
        wrap_under_root_with_nonce(BACKEND, root, &id, &aad, kek, nonce)
    }
}
