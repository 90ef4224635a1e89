//! The local KMS backend: a 256-bit root key from a key file or an environment variable.
//!
//! **Single-host only.** The root key sits in this process's memory and on this host's disk
//! (or environment). That protects a stolen database, dump or backup (they never contain the
//! root key), but not a compromised application host. Use an HSM or cloud KMS backend when the
//! host itself is in your threat model.
//!
//! # Root epochs
//!
//! A `LocalKms` built with [`LocalKms::from_key_file`] implements
//! [`RootEpochs`](crate::kms::RootEpochs): the next epoch is a new random key staged in
//! `PATH.next` (written atomically, mode `0600`); destroying the old epoch overwrites the key
//! file's old content with zeros, syncs it, and renames `PATH.next` over `PATH`. Every
//! `LocalKms` built from the same path follows: before each call it checks whether the key
//! file (or a staged `PATH.next`) changed and, if so, re-reads it, holds the keys found there
//! and zeroizes every key that is no longer on disk. So running applications keep opening
//! records on either epoch during the move and drop the destroyed key at their next KMS call,
//! without a restart. A `LocalKms` from an environment variable or
//! [`LocalKms::from_root_key`] has no file to follow and no epochs.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock};

use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::aead::{self, Algorithm};
use crate::error::Error;
use crate::key::WrappedKek;
use crate::kms::epoch::{
    Destruction, EpochChange, EpochDestroyed, KeyChain, RootEpoch, RootEpochs, WrapUnderEpoch,
};
use crate::kms::{KekBinding, Kms, NOT_AUTHENTIC, debug_fields};
use crate::secret::{KEY_LEN, Kek, RootKey};

/// The environment variable [`LocalKms::from_env`] reads by default: 64 hex digits.
pub const ROOT_KEY_ENV: &str = "LEAKLESS_ROOT_KEY";

const BACKEND: &str = "local";
const WRAP_NONCE_LEN: usize = 24;

/// A root key held in this process. See the module docs: single-host only.
pub struct LocalKms {
    /// Every root key this instance has held; the secret is `None` once it is no longer on
    /// disk (zeroized). The current entry is the one new wraps use.
    keys: RootSlots,
    /// The key file it follows, when built from one.
    file: Option<KeyFileSource>,
}

/// The key file a `LocalKms` follows, and what it last saw of it.
struct KeyFileSource {
    path: PathBuf,
    seen: Mutex<(Option<FileStamp>, Option<FileStamp>)>,
}

/// Enough of a file's metadata to notice that it was rewritten or replaced. Shared with the TPM
/// backend, which follows its sealed file the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    #[cfg(unix)]
    dev_ino: (u64, u64),
}

impl FileStamp {
    /// The stamp of the file at `path` now; `None` when it cannot be read.
    pub(super) fn of(path: &Path) -> Option<Self> {
        let meta = fs::metadata(path).ok()?;
        Some(Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            dev_ino: {
                use std::os::unix::fs::MetadataExt;
                (meta.dev(), meta.ino())
            },
        })
    }
}

debug_fields!(LocalKms, |kms| {
    "root_key_id": kms.keys.current().id,
});

/// The local backend's public root-key id of `root`: a one-way derivation, stable across
/// restarts.
fn key_id(root: &RootKey) -> String {
    let hk = Hkdf::<Sha256>::new(Some(b"leakless local root key id"), root.expose_secret());
    let mut id = [0u8; 8];
    // 8 bytes is far below HKDF-SHA256's 8160-byte output limit, so expand cannot fail.
    let _ = hk.expand(b"v1", &mut id);
    format!("local:{}", hex::encode(id))
}

/// Where the next epoch's key is staged: the key file's path with `.next` appended.
fn next_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".next");
    PathBuf::from(name)
}

impl LocalKms {
    /// Uses `root` directly (for tests and for callers that fetched it themselves).
    #[must_use]
    pub fn from_root_key(root: RootKey) -> Self {
        Self {
            keys: KeyChain::new(key_id(&root), RwLock::new(Some(root))),
            file: None,
        }
    }

    /// Reads the root key from `path`: exactly 32 raw bytes, or 64 hex digits with an optional
    /// trailing newline. The file is opened once, not through a symbolic link, and checked on
    /// the opened file: a regular file owned by the effective user, not readable, writable or
    /// executable by group or others (mode `0600` or stricter), in a folder others cannot write
    /// (a sticky folder such as `/tmp` is allowed).
    ///
    /// # Errors
    /// [`Error::KeyFile`] when the file is missing, a symbolic link, has loose permissions or
    /// another owner, sits in a folder others may write, holds anything else, or holds an
    /// obviously weak key (one byte value repeated, or 32 printable characters: a passphrase).
    pub fn from_key_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let seen = (FileStamp::of(path), FileStamp::of(&next_path(path)));
        let root = read_key_file(path)?;
        let kms = Self {
            keys: KeyChain::new(key_id(&root), RwLock::new(Some(root))),
            file: Some(KeyFileSource {
                path: path.to_path_buf(),
                seen: Mutex::new((None, None)),
            }),
        };
        // Also picks up a staged next epoch, so a process started during a shred opens
        // records on either epoch.
        kms.reload(seen)?;
        Ok(kms)
    }

    /// Re-reads the key file (and a staged `PATH.next`) if either changed since the last look,
    /// holds the keys found there and zeroizes every other key this instance held. Called
    /// before every wrap and unwrap; a no-op for a backend without a key file.
    ///
    /// # Errors
    /// [`Error::KeyFile`] when the key file changed and neither it nor a staged next key can
    /// be read (the keys held so far are kept).
    pub fn refresh(&self) -> Result<(), Error> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let now = (
            FileStamp::of(&file.path),
            FileStamp::of(&next_path(&file.path)),
        );
        let unchanged = *file.seen.lock().unwrap_or_else(PoisonError::into_inner) == now;
        if unchanged {
            return Ok(());
        }
        self.reload(now)
    }

    fn reload(&self, stamps: (Option<FileStamp>, Option<FileStamp>)) -> Result<(), Error> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let mut seen = file.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let main = read_key_file(&file.path);
        let next_file = next_path(&file.path);
        let next = if stamps.1.is_some() {
            match read_key_file(&next_file) {
                Ok(k) => Some(k),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring a staged next root key file that cannot be read");
                    None
                }
            }
        } else {
            None
        };
        let (current, staged) = match (main, next) {
            (Ok(m), n) => (m, n),
            // The key file is being replaced by a destroy (its old content is zeros now):
            // the staged key is the current one.
            (Err(_), Some(n)) => (n, None),
            (Err(e), None) => return Err(e),
        };
        let current_id = key_id(&current);
        let mut on_disk = vec![current_id.clone()];
        for root in std::iter::once(current).chain(staged) {
            let id = key_id(&root);
            let node = self.keys.get_or_append(&id, || RwLock::new(None));
            let mut slot = node.data.write().unwrap_or_else(PoisonError::into_inner);
            if slot.is_none() {
                *slot = Some(root);
            }
            if !on_disk.contains(&id) {
                on_disk.push(id);
            }
        }
        self.keys.set_current(&current_id);
        for node in self.keys.iter() {
            if !on_disk.contains(&node.id) {
                // Dropping the RootKey zeroizes it.
                node.data
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
            }
        }
        *seen = stamps;
        Ok(())
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
        let root = RootKey::generate();
        write_new_key_file(path, &root)?;
        drop(root);
        Self::from_key_file(path)
    }
}

/// How this backend wraps under the root keys it holds.
const HELD: HeldRoots = HeldRoots {
    backend: BACKEND,
    aad_label: LOCAL_AAD_LABEL,
    kept: "on disk",
};

/// The root keys a backend holds in this process, by root key id: one per epoch, `None` once
/// the epoch's key is gone (zeroized). The current entry is the one new wraps use.
pub(super) type RootSlots = KeyChain<RwLock<Option<RootKey>>>;

/// How a backend that holds its root keys in this process (the local and the TPM backend)
/// wraps KEKs under them: its name, its associated-data label, and where it keeps the keys
/// (for the error about a key that is no longer there).
pub(super) struct HeldRoots {
    /// The backend's name, for errors.
    pub(super) backend: &'static str,
    /// The label of [`binding_aad`] (part of the backend's stored format).
    pub(super) aad_label: &'static [u8],
    /// Where the root keys are kept: "on disk", "in the sealed file".
    pub(super) kept: &'static str,
}

/// Implements [`Kms`] and [`WrapUnderEpoch`] for a backend `$kms` that holds its root keys in
/// this process: in its field `keys` ([`RootSlots`]), re-read by its method
/// `refresh(&self) -> Result<(), Error>` before every wrap and unwrap, and wrapped under with
/// `$held` (its [`HeldRoots`]).
macro_rules! held_roots_kms {
    ($kms:ty, $held:expr) => {
        impl Kms for $kms {
            fn backend(&self) -> &'static str {
                $held.backend
            }

            fn root_key_id(&self) -> &str {
                &self.keys.current().id
            }

            fn wrap_kek(&self, kek: &Kek, binding: &KekBinding<'_>) -> Result<WrappedKek, Error> {
                self.refresh()?;
                $held.wrap(&self.keys, &self.keys.current().id, kek, binding)
            }

            fn unwrap_kek(
                &self,
                wrapped: &WrappedKek,
                binding: &KekBinding<'_>,
            ) -> Result<Kek, Error> {
                self.refresh()?;
                $held.unwrap(&self.keys, wrapped, binding)
            }
        }

        impl WrapUnderEpoch for $kms {
            fn wrap_under_epoch(
                &self,
                id: &str,
                kek: &Kek,
                binding: &KekBinding<'_>,
            ) -> Result<WrappedKek, Error> {
                $held.wrap(&self.keys, id, kek, binding)
            }
        }
    };
}
#[cfg(feature = "tpm")]
pub(super) use held_roots_kms;

impl HeldRoots {
    /// Wraps `kek` under the held root key `id`, bound to `binding`.
    pub(super) fn wrap(
        &self,
        keys: &RootSlots,
        id: &str,
        kek: &Kek,
        binding: &KekBinding<'_>,
    ) -> Result<WrappedKek, Error> {
        let fail = |detail: String| Error::Kms {
            backend: self.backend,
            operation: "wrap KEK",
            detail,
        };
        let node = keys
            .find(id)
            .ok_or_else(|| fail(format!("root key {id} is not held by this backend")))?;
        let guard = node.data.read().unwrap_or_else(PoisonError::into_inner);
        let root = guard.as_ref().ok_or_else(|| {
            fail(format!(
                "root key {id} is no longer {} (its epoch was destroyed or replaced)",
                self.kept
            ))
        })?;
        wrap_under_root(
            self.backend,
            root,
            &node.id,
            &binding_aad(self.aad_label, &node.id, binding),
            kek,
        )
    }

    /// Unwraps `wrapped` under the held root key it names, bound to `binding`.
    pub(super) fn unwrap(
        &self,
        keys: &RootSlots,
        wrapped: &WrappedKek,
        binding: &KekBinding<'_>,
    ) -> Result<Kek, Error> {
        let held = keys
            .find(&wrapped.root_key_id)
            .filter(|n| n.data.read().is_ok_and(|k| k.is_some()));
        // A root key id this instance does not hold (any more) is reported against the
        // current key: "wrapped under X, but this backend holds Y".
        let node = held.unwrap_or_else(|| keys.current());
        let guard = node.data.read().unwrap_or_else(PoisonError::into_inner);
        let root = guard.as_ref().ok_or_else(|| Error::Kms {
            backend: self.backend,
            operation: "unwrap KEK",
            detail: format!(
                "{} {}: root key {} is no longer {}",
                binding.scope, binding.version, node.id, self.kept
            ),
        })?;
        unwrap_under_root(
            self.backend,
            root,
            &node.id,
            &binding_aad(self.aad_label, &node.id, binding),
            wrapped,
            binding,
        )
    }
}

/// Reads a root key file (see [`super::secret_file`]: opened once, no symbolic link, mode
/// `0600`, owned by this user, in a folder others cannot write) and refuses an obviously weak
/// key; the error names the file.
pub(crate) fn read_key_file(path: &Path) -> Result<RootKey, Error> {
    let key_err = |problem: String| Error::KeyFile {
        path: path.to_path_buf(),
        problem,
    };
    let raw = super::secret_file::read(path, 4 * KEY_LEN).map_err(key_err)?;
    let generate = "make one with `leakless-migrate keys init` or `LocalKms::generate_key_file`";
    let key = parse_key_bytes(&raw).ok_or_else(|| {
        key_err(format!(
            "must hold exactly 32 raw bytes or 64 hex digits ({generate})"
        ))
    })?;
    let bytes = key.expose_secret();
    if bytes.iter().all(|&b| Some(&b) == bytes.first()) {
        return Err(key_err(format!(
            "holds one byte value repeated, not a random key ({generate})"
        )));
    }
    if raw.len() == KEY_LEN && raw.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Err(key_err(format!(
            "holds 32 printable characters: a passphrase, not a random key ({generate})"
        )));
    }
    Ok(key)
}

/// The 64 hex digits of `root` and a newline: the text of a root key file.
fn key_file_text(root: &RootKey) -> Zeroizing<String> {
    let mut hexed = Zeroizing::new(hex::encode(root.expose_secret()));
    hexed.push('\n');
    hexed
}

/// Writes `root` as 64 hex digits to a new file at `path` with mode `0600` (the format
/// [`LocalKms::from_key_file`] reads). Refuses to overwrite an existing file.
pub(super) fn write_new_key_file(path: &Path, root: &RootKey) -> Result<(), Error> {
    super::secret_file::write_new(path, key_file_text(root).as_bytes()).map_err(|problem| {
        Error::KeyFile {
            path: path.to_path_buf(),
            problem,
        }
    })
}

/// Writes `root` as 64 hex digits to `target` atomically: a temporary file in the same folder
/// (created exclusively, mode `0600`), synced, renamed over `target`, and the folder synced.
fn write_key_atomically(target: &Path, root: &RootKey) -> Result<(), Error> {
    let key_err = |problem: String| Error::KeyFile {
        path: target.to_path_buf(),
        problem,
    };
    let dir = parent_dir(target);
    let tmp = super::secret_file::temp_beside(target)
        .ok_or_else(|| key_err("has no file name".into()))?;
    if let Err(problem) = super::secret_file::write_new(&tmp, key_file_text(root).as_bytes()) {
        let _ = fs::remove_file(&tmp);
        return Err(key_err(format!(
            "cannot write a temporary key file beside it: {problem}"
        )));
    }
    if let Err(e) = fs::rename(&tmp, target) {
        let _ = shred_file(&tmp);
        return Err(key_err(format!("cannot move the new key into place: {e}")));
    }
    sync_dir(&dir).map_err(|e| key_err(format!("cannot sync its folder: {e}")))
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Overwrites a file's content with zeros in place and syncs it (it keeps its name).
fn zero_in_place(path: &Path) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new().write(true).open(path)?;
    let len = usize::try_from(f.metadata()?.len()).unwrap_or(usize::MAX);
    let zeros = vec![0u8; len.min(1 << 20)];
    f.write_all(&zeros)?;
    f.sync_all()
}

/// Zeroes a file in place, syncs it, then removes it.
fn shred_file(path: &Path) -> std::io::Result<()> {
    zero_in_place(path)?;
    fs::remove_file(path)?;
    sync_dir(&parent_dir(path))
}

fn is_all_zeros(path: &Path) -> bool {
    fs::read(path).is_ok_and(|b| !b.is_empty() && b.iter().all(|x| *x == 0))
}

/// The associated-data label of the local backend's KEK wrap (part of its stored format).
const LOCAL_AAD_LABEL: &[u8] = b"leakless.local-kms.kek-wrap.v1";

/// The associated data that binds a wrapped KEK to `binding` and to the root key `id`, under a
/// backend-specific `label`. Shared with the TPM backend (which wraps KEKs in this process
/// under a root key it unsealed) and the PKCS#11 backend (whose token authenticates it as GCM
/// associated data).
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

held_roots_kms!(LocalKms, HELD);

impl LocalKms {
    fn epoch_file(&self, operation: &'static str) -> Result<&Path, Error> {
        self.file
            .as_ref()
            .map(|f| f.path.as_path())
            .ok_or_else(|| Error::InvalidInput {
                what: "local root key",
                problem: format!(
                    "cannot {operation}: root epochs need a key file (LocalKms::from_key_file); \
                     a key from the environment or from memory is replaced by restarting with \
                     a new one"
                ),
            })
    }
}

impl RootEpochs for LocalKms {
    fn current_epoch(&self) -> Result<RootEpoch, Error> {
        self.refresh()?;
        Ok(RootEpoch::of_key(self.keys.current().id.clone()))
    }

    fn begin_next_epoch(&self) -> Result<EpochChange<'_>, Error> {
        let path = self.epoch_file("begin a root epoch")?;
        let current = read_key_file(path)?;
        let current_id = key_id(&current);
        drop(current);
        let staged_path = next_path(path);
        let staged = if staged_path.exists() {
            match read_key_file(&staged_path) {
                Ok(k) if key_id(&k) != current_id => Some(key_id(&k)),
                _ => {
                    // Unusable or a copy of the current key: not a next epoch.
                    shred_file(&staged_path).map_err(|e| Error::KeyFile {
                        path: staged_path.clone(),
                        problem: format!("cannot remove an unusable staged key file: {e}"),
                    })?;
                    None
                }
            }
        } else {
            None
        };
        let next_id = match staged {
            // Resume an interrupted shred: records may already be on it.
            Some(id) => id,
            None => {
                let root = RootKey::generate();
                let id = key_id(&root);
                write_key_atomically(&staged_path, &root)?;
                id
            }
        };
        self.reload((FileStamp::of(path), FileStamp::of(&staged_path)))?;
        tracing::info!(retiring = %current_id, next = %next_id, "staged the next local root epoch");
        Ok(EpochChange::rewrap_onto(self, current_id, next_id))
    }

    fn destroy_epoch(&self, epoch: &RootEpoch) -> Result<EpochDestroyed, Error> {
        let path = self.epoch_file("destroy a root epoch")?;
        let staged_path = next_path(path);
        let copies = format!(
            "copies of the key file {} made before now: filesystem or volume snapshots, backups \
             that included it, configuration-management or editor copies, and swap or \
             hibernation images of processes that held it; on copy-on-write or journaling \
             filesystems and on SSDs the overwritten blocks can survive until reused",
            path.display()
        );
        let fail = |detail: String| Error::Kms {
            backend: BACKEND,
            operation: "destroy root epoch",
            detail,
        };
        if epoch.key_version.is_some() || !epoch.root_key_id.starts_with("local:") {
            return Err(Error::InvalidInput {
                what: "root epoch",
                problem: format!("{epoch} is not a local root key"),
            });
        }
        let staged = staged_path
            .exists()
            .then(|| read_key_file(&staged_path))
            .transpose()?;
        let staged_id = staged.as_ref().map(key_id);
        drop(staged);
        let destroyed = EpochDestroyed {
            epoch: epoch.clone(),
            status: Destruction::Destroyed,
            copies_may_remain: copies,
        };
        match read_key_file(path) {
            Ok(current) if key_id(&current) == epoch.root_key_id => {
                drop(current);
                let Some(next_id) = staged_id else {
                    return Err(fail(format!(
                        "{epoch} is the only root key in {}: begin the next epoch and move every \
                         record onto it first",
                        path.display()
                    )));
                };
                let key_err = |problem: String| Error::KeyFile {
                    path: path.to_path_buf(),
                    problem,
                };
                zero_in_place(path)
                    .map_err(|e| key_err(format!("cannot overwrite the old key: {e}")))?;
                fs::rename(&staged_path, path)
                    .map_err(|e| key_err(format!("cannot move the next key into place: {e}")))?;
                sync_dir(&parent_dir(path))
                    .map_err(|e| key_err(format!("cannot sync its folder: {e}")))?;
                self.refresh()?;
                tracing::info!(destroyed = %epoch, current = %next_id, "destroyed a local root epoch");
                Ok(destroyed)
            }
            Ok(current) => {
                drop(current);
                if staged_id.as_deref() == Some(epoch.root_key_id.as_str()) {
                    return Err(fail(format!(
                        "{epoch} is the staged next epoch, not a retiring one"
                    )));
                }
                // Neither the key file nor a staged key holds it: gone already.
                self.refresh()?;
                Ok(EpochDestroyed {
                    status: Destruction::AlreadyGone,
                    ..destroyed
                })
            }
            // Interrupted after the old content was zeroed: finish the swap.
            Err(_) if is_all_zeros(path) && staged_id.is_some() => {
                fs::rename(&staged_path, path).map_err(|e| Error::KeyFile {
                    path: path.to_path_buf(),
                    problem: format!("cannot move the next key into place: {e}"),
                })?;
                sync_dir(&parent_dir(path)).map_err(|e| Error::KeyFile {
                    path: path.to_path_buf(),
                    problem: format!("cannot sync its folder: {e}"),
                })?;
                self.refresh()?;
                Ok(destroyed)
            }
            Err(e) => Err(e),
        }
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
    const OP: &str = "unwrap KEK";
    if wrapped.root_key_id != id {
        return Err(binding.foreign_root(backend, OP, &wrapped.root_key_id, id));
    }
    if wrapped.ciphertext.len() < WRAP_NONCE_LEN {
        return Err(binding.error(backend, OP, "wrapped KEK is truncated"));
    }
    let (nonce, ct) = wrapped.ciphertext.split_at(WRAP_NONCE_LEN);
    let kek = aead::decrypt(
        Algorithm::XChaCha20Poly1305,
        root.expose_secret(),
        nonce,
        aad,
        ct,
    )
    .map_err(|_| binding.error(backend, OP, NOT_AUTHENTIC))?;
    binding.kek_from(backend, kek.expose_secret())
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
