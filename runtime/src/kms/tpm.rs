//! The TPM 2.0 backend: a root key sealed to this host's TPM, for single-host appliances.
//!
//! # What it does
//!
//! [`TpmKms::create`] makes a fresh random 256-bit root key and *seals* it to the TPM: the TPM
//! encrypts it under a storage key that is derived from the TPM's owner-hierarchy seed and never
//! leaves the chip. The sealed object (a keyed-hash "sealed data" object) is then made
//! **persistent** in the TPM's NV memory at a free owner persistent handle (`0x81004c00` and
//! up, found with `TPM2_GetCapability`), and the sealed file (version 2) records only that
//! handle and the object's public area. The object's private part is never written to disk:
//! a copy of the file opens nothing once the object is evicted from the TPM.
//!
//! [`TpmKms::open`] reads the object at the persistent handle, checks that its TPM name (the
//! SHA-256 of its public area) is the one the file records (anything else at that handle is
//! refused), unseals the root key into a zeroizing [`RootKey`] and closes the TPM connection.
//! From then on KEKs are wrapped and unwrapped in this process exactly like
//! [`LocalKms`](super::LocalKms) does (XChaCha20-Poly1305, the KEK bound to its scope, version
//! and root key id as associated data), under the TPM backend's own label, so a KEK wrapped by
//! one backend kind never unwraps under another.
//!
//! Sealed files of version 1 (written by earlier releases: the object's public and private
//! blobs) are still read: the blobs are loaded and unsealed. They have no root epochs, since
//! every copy of such a file unseals on the same TPM; migrate with `keys rotate-root` to a root
//! made by [`TpmKms::create`], then delete every copy of the old file.
//!
//! Optionally the root key is also bound to a **PCR policy** ([`TpmConfig::with_pcr_policy`]):
//! the TPM then unseals it only while the selected SHA-256 PCRs hold the values they had at
//! sealing time (for example PCR 7, the Secure Boot state), so a host booted into another
//! operating system or with Secure Boot turned off cannot unseal it.
//!
//! The root key id is `tpm:` followed by the first 16 bytes, in hex, of the sealed object's TPM
//! name: public, stable across restarts, and different for every sealed root key.
//!
//! # Why the root key is unsealed instead of used on the TPM
//!
//! The alternative, a TPM-resident symmetric key that wraps each KEK on the chip, was rejected:
//!
//! * The TPM has no AEAD: `TPM2_EncryptDecrypt` offers only unauthenticated modes (CFB, CBC,
//!   CTR), is optional in the TPM profile and disabled on many firmware TPMs, so wrapped KEKs
//!   would need a second, host-side integrity layer anyway, and bind to scope and version only
//!   through it.
//! * A TPM runs one command at a time and a discrete TPM takes milliseconds to tens of
//!   milliseconds per command, so every cache miss would queue on the chip. Without a resource
//!   manager in front (`swtpm`, `/dev/tpm0`) a TPM also holds only about three transient objects
//!   for all its clients together: keeping the key loaded for the process lifetime would starve
//!   other processes and a second backend on the same TPM, which
//!   [`KeyRing::rotate_root`](crate::KeyRing::rotate_root) needs (old and new root at once).
//!   Here the TPM is used only inside [`TpmKms::create`], [`TpmKms::open`], epoch changes and
//!   the first call after the sealed file changed, serialized in the
//!   process by a mutex per TCTI, retried (bounded, with backoff and jitter) when the TPM is
//!   unreachable or reports that it is out of object or session memory because another process
//!   holds it, and bounded in time ([`TpmConfig::with_timeout`]), since the TPM stack itself
//!   waits forever on a TPM that never answers.
//! * The gain would be small: whoever controls the running host can ask its TPM to unwrap, so a
//!   TPM-resident key protects against the same attacker as a sealed one (a stolen disk, backup
//!   or database; a host booted into something else, with a PCR policy), not against a
//!   compromised host.
//!
//! What the sealing guarantees: the key file alone, a disk image, a backup or the database hold
//! nothing that opens a KEK without this TPM (and, with a PCR policy, without this boot state).
//! What it does not: while the application runs, the root key is in its memory, as with the
//! local backend. The key is carried to and from the TPM inside a parameter-encrypted session
//! salted with the storage key, so it never crosses the TPM bus or the simulator socket in
//! clear.
//!
//! # Root epochs
//!
//! A `TpmKms` opened from a version 2 file implements [`RootEpochs`]:
//! the next epoch is a new persistent sealed object; the file then names it as current and the
//! old one as previous (written atomically); records move by unwrapping under the old root key
//! and wrapping under the new one in this process; destroying the old epoch evicts its
//! persistent object (`TPM2_EvictControl`) and drops it from the file. Every `TpmKms` opened
//! from the same file follows: before each call it checks whether the file was replaced and,
//! if so, unseals the epochs it now names and zeroizes every key it no longer names, so running
//! applications keep opening records on either epoch during the move without a restart. What
//! survives a destroy: a copy of the TPM's own NV state (an `swtpm` state directory, a snapshot
//! of a VM with a virtual TPM) still holds the evicted object. `docs/shredding.md` ("TPM 2.0").
//!
//! Persistent handles are scarce (a TPM holds a handful to a few dozen persistent objects):
//! [`TpmKms::evict_persistent`] frees a retired root's handles.
//!
//! # Connecting
//!
//! The TCTI string names the TPM: `device:/dev/tpmrm0` (the kernel resource manager, the usual
//! choice on Linux; the process needs read/write on it, normally through the `tss` group),
//! `swtpm:host=127.0.0.1,port=2321` for the `swtpm` simulator, `mssim:...` or `tabrmd:...`.
//! The primary storage key is re-derived from the owner hierarchy (ECC P-256, the TCG
//! storage-key template) when sealing, and salts the TPM sessions; only the sealed objects are
//! persistent. The owner hierarchy must have an empty authorization (the default; making an
//! object persistent and evicting it are owner-authorized); clearing the TPM
//! (`tpm2_clear`, a firmware "clear TPM") changes its seed and makes every sealed root key
//! unrecoverable, so keep a backup path (a second root via `rotate_root`, or Shamir shares).

use std::cell::Cell;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tss_esapi::Context;
use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::{CapabilityType, SessionType};
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, SessionHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    CapabilityData, Digest, EccPoint, KeyedHashScheme, PcrSelectionList, PcrSelectionListBuilder,
    PcrSlot, Private, Public, PublicBuilder, PublicEccParametersBuilder, PublicKeyedHashParameters,
    SensitiveData, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::key::WrappedKek;
use crate::kms::epoch::{
    Destruction, EpochChange, EpochDestroyed, KeyChain, RootEpoch, RootEpochs, WrapUnderEpoch,
};
use crate::kms::local::{FileStamp, HeldRoots, RootSlots, held_roots_kms};
use crate::kms::{KekBinding, Kms, debug_fields};
use crate::secret::{Kek, RootKey};

const BACKEND: &str = "tpm";
const AAD_LABEL: &[u8] = b"leakless.tpm-kms.kek-wrap.v1";
/// How this backend wraps under the root keys it unsealed.
const HELD: HeldRoots = HeldRoots {
    backend: BACKEND,
    aad_label: AAD_LABEL,
    kept: "in the sealed file",
};
const FILE_FORMAT: &str = "leakless-tpm-sealed-root-key";
/// The version of files written now: persistent sealed objects, no private blob.
const FILE_VERSION: u32 = 2;
/// The first version: the sealed object's blobs (still read).
const FILE_VERSION_BLOBS: u32 = 1;
/// The owner range of persistent handles.
const PERSISTENT_OWNER_FIRST: u32 = 0x8100_0000;
const PERSISTENT_OWNER_LAST: u32 = 0x817F_FFFF;
/// Where leakless starts looking for a free persistent handle: above the TCG-registered
/// storage and endorsement key handles (`0x81000001`, `0x81010001`, ...) that other tools
/// expect.
const LEAKLESS_HANDLE_FIRST: u32 = 0x8100_4C00;
/// The default of [`TpmConfig::with_timeout`].
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The highest PCR index of a PC-client TPM (PCRs 0 to 23).
const MAX_PCR: u8 = 23;

/// Where the TPM is and where the sealed root key lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmConfig {
    tcti: String,
    sealed_path: PathBuf,
    pcrs: Vec<u8>,
    timeout: Duration,
}

impl TpmConfig {
    /// A TPM reached through `tcti` (`device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`,
    /// ...) and the sealed root key in the file `sealed_path`. No PCR policy.
    #[must_use]
    pub fn new(tcti: impl Into<String>, sealed_path: impl Into<PathBuf>) -> Self {
        Self {
            tcti: tcti.into(),
            sealed_path: sealed_path.into(),
            pcrs: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// How long [`TpmKms::create`] and [`TpmKms::open`] wait for the TPM, retries included,
    /// before giving up with [`Error::KmsUnavailable`] (default 30 s). A hung TPM or simulator
    /// otherwise blocks forever: the TPM stack has no timeout of its own.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The time limit of [`TpmKms::create`] and [`TpmKms::open`].
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Binds a root key made by [`TpmKms::create`] to the current values of these SHA-256 PCRs
    /// (0 to 23): the TPM unseals it only while they hold the same values. Typical: `[7]`
    /// (Secure Boot policy), or `[0, 2, 4, 7]` to pin firmware and boot loader too (and reseal
    /// after every firmware or boot-loader update). [`TpmKms::open`] reads the selection from
    /// the sealed file, so only `create` uses this setting.
    #[must_use]
    pub fn with_pcr_policy(mut self, pcrs: &[u8]) -> Self {
        let mut pcrs = pcrs.to_vec();
        pcrs.sort_unstable();
        pcrs.dedup();
        self.pcrs = pcrs;
        self
    }

    /// The TCTI string.
    #[must_use]
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    /// The sealed root key file.
    #[must_use]
    pub fn sealed_path(&self) -> &Path {
        &self.sealed_path
    }

    /// The PCRs a new root key is bound to (empty: no PCR policy).
    #[must_use]
    pub fn pcr_policy(&self) -> &[u8] {
        &self.pcrs
    }
}

/// The sealed root key file, format version 1 (still read, no longer written): the TPM's
/// public and private blobs of the sealed object (the private one is encrypted by the TPM's
/// storage key) and the PCR selection of its policy. Any copy of it unseals on the same TPM.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlobFile {
    format: String,
    version: u32,
    /// SHA-256 PCR indexes of the unseal policy; empty for none.
    pcrs: Vec<u8>,
    /// The marshalled TPMT_PUBLIC, hex.
    public: String,
    /// The TPM2B_PRIVATE contents, hex.
    private: String,
}

/// The sealed root key file, format version 2: no private blob. Each epoch's sealed object is
/// persistent in the TPM; the file names its persistent handle and its public area (so the
/// object found there can be checked against the name), the current epoch and, during a move
/// to a new epoch, the previous one.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PersistentFile {
    format: String,
    version: u32,
    /// SHA-256 PCR indexes of the unseal policy of every epoch; empty for none.
    pcrs: Vec<u8>,
    /// The epoch new wraps use.
    current: EpochEntry,
    /// The epoch being retired, between `begin_next_epoch` and `destroy_epoch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous: Option<EpochEntry>,
}

/// One epoch in a version 2 file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EpochEntry {
    /// The persistent handle, `0x81......`.
    handle: String,
    /// The marshalled TPMT_PUBLIC, hex.
    public: String,
}

/// A parsed version 2 epoch: where it is and what the object there must be.
#[derive(Clone, Debug)]
struct Epoch {
    handle: u32,
    /// The TPM name the object at `handle` must have: name algorithm id and SHA-256 of the
    /// public area.
    name: Vec<u8>,
    id: String,
}

/// A parsed sealed file.
enum Sealed {
    /// Version 1: the blobs.
    Blobs {
        pcrs: Vec<u8>,
        public: Public,
        private: Private,
    },
    /// Version 2: persistent objects.
    Persistent {
        pcrs: Vec<u8>,
        current: Epoch,
        previous: Option<Epoch>,
    },
}

/// A root key sealed to a TPM 2.0. See the module docs.
pub struct TpmKms {
    /// Every root key this instance has held; the secret is `None` once its epoch is no longer
    /// in the sealed file (zeroized). The current entry is the one new wraps use.
    keys: RootSlots,
    /// The version 2 sealed file it follows; `None` for a version 1 (blob) file.
    follow: Option<Follow>,
}

/// The version 2 sealed file a `TpmKms` follows, and what it last saw of it.
struct Follow {
    config: TpmConfig,
    seen: Mutex<Option<FileStamp>>,
    /// Serializes epoch changes made by this instance.
    changing: Mutex<()>,
}

debug_fields!(TpmKms, |kms| {
    "root_key_id": kms.keys.current().id,
});

fn kms_err(operation: &'static str, detail: impl Into<String>) -> Error {
    Error::Kms {
        backend: BACKEND,
        operation,
        detail: detail.into(),
    }
}

/// How to leave a version 1 (blob) sealed file behind.
const MIGRATE: &str = "a version 1 sealed file holds the sealed object's private blob, and \
                       every copy of it unseals on this TPM, so its root key cannot be shredded: \
                       create a new root with `TpmKms::create` (version 2, persistent), move \
                       every record to it with `keys rotate-root`, then delete every copy of the \
                       old sealed file";

impl TpmKms {
    /// Makes a new random root key, seals it to the TPM named by `config` (with its PCR policy,
    /// if any), makes the sealed object persistent at a free owner persistent handle
    /// (`0x81000000` range), and writes a version 2 sealed file with mode `0600` that names
    /// the handle and the object's public area. The private part of the sealed object is never
    /// written anywhere. Refuses to overwrite an existing file.
    ///
    /// # Errors
    /// [`Error::KeyFile`] when the file exists or cannot be written; [`Error::Kms`] (operation
    /// `"seal root key"`) when the TPM refuses (for example: no free persistent handle, or no
    /// NV space left for one); [`Error::KmsUnavailable`] when it stays unreachable or busy
    /// through the retries, or does not answer within the timeout.
    pub fn create(config: &TpmConfig) -> Result<Self, Error> {
        const OP: &str = "seal root key";
        let path = config.sealed_path();
        if path.exists() {
            return Err(Error::KeyFile {
                path: path.to_path_buf(),
                problem: "already exists; refusing to overwrite a sealed root key (open it with \
                          `TpmKms::open`, or pick another path)"
                    .into(),
            });
        }
        let pcrs = check_pcrs(config.pcr_policy()).map_err(|d| kms_err(OP, d))?;
        let (root, entry, epoch) = with_tpm(config, OP, move |tpm| tpm.seal_persistent(&pcrs))?;
        let file = PersistentFile {
            format: FILE_FORMAT.into(),
            version: FILE_VERSION,
            pcrs: config.pcr_policy().to_vec(),
            current: entry,
            previous: None,
        };
        if let Err(e) = write_file(path, &file, false) {
            // Leave no orphan persistent object behind.
            let _ = with_tpm(config, OP, move |tpm| tpm.evict(&epoch).map(|_| ()));
            return Err(e);
        }
        Ok(Self {
            keys: KeyChain::new(epoch.id, RwLock::new(Some(root))),
            follow: Some(Follow {
                config: config.clone(),
                seen: Mutex::new(FileStamp::of(path)),
                changing: Mutex::new(()),
            }),
        })
    }

    /// Unseals the root key named by `config`'s file. For a version 2 file: from the persistent
    /// handles it names (the current epoch and, during a move, the previous one), after
    /// checking that the object at each handle has the name the file records; the instance
    /// then follows the file (a new epoch, a destroyed one) without a restart. For a version 1
    /// file: loads the blobs and unseals them (no epochs). The TPM connection is closed before
    /// this returns: wrapping and unwrapping need no TPM, except once after the file changed.
    ///
    /// # Errors
    /// [`Error::KeyFile`] when the file is missing or malformed; [`Error::Kms`] (operation
    /// `"unseal root key"`) when the TPM rejects the blobs (altered, sealed by another TPM, or
    /// the TPM was cleared), the persistent handle is empty or holds another object, or its
    /// PCRs no longer satisfy the policy; [`Error::KmsUnavailable`] when it stays unreachable
    /// or busy through the retries, or does not answer within the timeout.
    pub fn open(config: &TpmConfig) -> Result<Self, Error> {
        const OP: &str = "unseal root key";
        let path = config.sealed_path();
        let stamp = FileStamp::of(path);
        match read_sealed_file(path)? {
            Sealed::Blobs {
                pcrs,
                public,
                private,
            } => {
                let pcrs = checked_pcrs(path, &pcrs)?;
                let (root, id) = with_tpm(config, OP, move |tpm| {
                    tpm.unseal(public.clone(), private.clone(), &pcrs)
                })?;
                Ok(Self {
                    keys: KeyChain::new(id, RwLock::new(Some(root))),
                    follow: None,
                })
            }
            Sealed::Persistent {
                pcrs,
                current,
                previous,
            } => {
                let pcrs = checked_pcrs(path, &pcrs)?;
                let epochs: Vec<Epoch> = std::iter::once(current.clone()).chain(previous).collect();
                let required = current.id.clone();
                let mut roots = with_tpm(config, OP, move |tpm| {
                    tpm.unseal_epochs(&epochs, &required, &pcrs)
                })?
                .into_iter();
                let Some((id, root)) = roots.next() else {
                    return Err(kms_err(OP, "no epoch unsealed"));
                };
                let kms = Self {
                    keys: KeyChain::new(id, RwLock::new(Some(root))),
                    follow: Some(Follow {
                        config: config.clone(),
                        seen: Mutex::new(stamp),
                        changing: Mutex::new(()),
                    }),
                };
                for (id, root) in roots {
                    kms.keys.get_or_append(&id, || RwLock::new(Some(root)));
                }
                kms.keys.set_current(&current.id);
                Ok(kms)
            }
        }
    }

    /// Evicts every persistent sealed object that `config`'s version 2 file names (the current
    /// epoch and a previous one) from the TPM, and returns how many were there. For
    /// decommissioning a root after every record was moved to another one (`keys
    /// rotate-root`): afterwards nothing unseals it, and the file can be deleted. An object at
    /// a named handle whose name differs from the file's record is left alone. A version 1
    /// file has nothing persistent: `Ok(0)`.
    ///
    /// # Errors
    /// [`Error::KeyFile`] when the file is missing or malformed; [`Error::Kms`] or
    /// [`Error::KmsUnavailable`] when the TPM refuses or cannot be reached.
    pub fn evict_persistent(config: &TpmConfig) -> Result<usize, Error> {
        const OP: &str = "evict root key";
        let Sealed::Persistent {
            current, previous, ..
        } = read_sealed_file(config.sealed_path())?
        else {
            return Ok(0);
        };
        let epochs: Vec<Epoch> = std::iter::once(current).chain(previous).collect();
        with_tpm(config, OP, move |tpm| {
            let mut evicted = 0;
            for e in &epochs {
                if tpm.evict(e)? {
                    evicted += 1;
                }
            }
            Ok(evicted)
        })
    }

    /// Re-reads a version 2 sealed file if it was replaced since the last look, unseals any
    /// epoch it names that this instance does not hold yet, and zeroizes every key whose epoch
    /// it no longer names. Called before every wrap and unwrap; a no-op for a version 1 file.
    ///
    /// # Errors
    /// [`Error::KeyFile`] when the file changed and cannot be read; [`Error::Kms`] or
    /// [`Error::KmsUnavailable`] when a new epoch cannot be unsealed (the keys held so far are
    /// kept).
    pub fn refresh(&self) -> Result<(), Error> {
        let Some(follow) = &self.follow else {
            return Ok(());
        };
        let path = follow.config.sealed_path();
        let mut seen = follow.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let now = FileStamp::of(path);
        if *seen == now {
            return Ok(());
        }
        let Sealed::Persistent {
            pcrs,
            current,
            previous,
        } = read_sealed_file(path)?
        else {
            return Err(Error::KeyFile {
                path: path.to_path_buf(),
                problem: "was replaced by a version 1 (blob) sealed file; a root with epochs is \
                          never downgraded"
                    .into(),
            });
        };
        let named: Vec<Epoch> = std::iter::once(current.clone()).chain(previous).collect();
        let missing: Vec<Epoch> = named
            .iter()
            .filter(|e| {
                self.keys
                    .find(&e.id)
                    .is_none_or(|n| n.data.read().map_or(true, |k| k.is_none()))
            })
            .cloned()
            .collect();
        if !missing.is_empty() {
            let pcrs = checked_pcrs(path, &pcrs)?;
            let required = current.id.clone();
            let roots = with_tpm(&follow.config, "unseal root key", move |tpm| {
                tpm.unseal_epochs(&missing, &required, &pcrs)
            })?;
            for (id, root) in roots {
                let node = self.keys.get_or_append(&id, || RwLock::new(None));
                *node.data.write().unwrap_or_else(PoisonError::into_inner) = Some(root);
            }
        }
        self.keys.set_current(&current.id);
        for node in self.keys.iter() {
            if !named.iter().any(|e| e.id == node.id) {
                // Dropping the RootKey zeroizes it.
                node.data
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
            }
        }
        *seen = now;
        Ok(())
    }

    fn epoch_follow(&self, operation: &'static str) -> Result<&Follow, Error> {
        self.follow.as_ref().ok_or_else(|| Error::InvalidInput {
            what: "TPM root key",
            problem: format!("cannot {operation}: {MIGRATE}"),
        })
    }

    /// Takes this instance's epoch change lock and reads the version 2 sealed file, to
    /// `operation` (as the invalid-input error says it) under the error name `op`.
    fn lock_epoch_file(
        &self,
        operation: &'static str,
        op: &'static str,
    ) -> Result<EpochFile<'_>, Error> {
        let follow = self.epoch_follow(operation)?;
        let changing = follow
            .changing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let path = follow.config.sealed_path();
        let file = read_persistent_file(path)?;
        let Sealed::Persistent {
            pcrs,
            current,
            previous,
        } = parse_persistent(path, &file)?
        else {
            return Err(kms_err(op, "not a version 2 sealed file"));
        };
        Ok(EpochFile {
            follow,
            _changing: changing,
            file,
            pcrs,
            current,
            previous,
        })
    }
}

/// The sealed file an epoch change works on, read while the change lock is held (as long as
/// this lives).
struct EpochFile<'a> {
    follow: &'a Follow,
    _changing: MutexGuard<'a, ()>,
    file: PersistentFile,
    pcrs: Vec<u8>,
    current: Epoch,
    previous: Option<Epoch>,
}

fn checked_pcrs(path: &Path, pcrs: &[u8]) -> Result<Option<PcrSelectionList>, Error> {
    check_pcrs(pcrs).map_err(|d| Error::KeyFile {
        path: path.to_path_buf(),
        problem: format!("its PCR selection is invalid: {d}"),
    })
}

held_roots_kms!(TpmKms, HELD);

impl RootEpochs for TpmKms {
    fn current_epoch(&self) -> Result<RootEpoch, Error> {
        self.refresh()?;
        Ok(RootEpoch::of_key(self.keys.current().id.clone()))
    }

    fn begin_next_epoch(&self) -> Result<EpochChange<'_>, Error> {
        const OP: &str = "begin root epoch";
        let EpochFile {
            follow,
            _changing,
            file,
            pcrs,
            current,
            previous,
        } = self.lock_epoch_file("begin a root epoch", OP)?;
        let path = follow.config.sealed_path();
        if let Some(previous) = previous {
            // Resume an interrupted shred: records may already be on the current epoch.
            self.refresh()?;
            return Ok(EpochChange::rewrap_onto(self, previous.id, current.id));
        }
        let pcrs = checked_pcrs(path, &pcrs)?;
        let (root, entry, next) =
            with_tpm(&follow.config, OP, move |tpm| tpm.seal_persistent(&pcrs))?;
        let staged = PersistentFile {
            current: entry,
            previous: Some(file.current.clone()),
            ..file
        };
        if let Err(e) = write_file(path, &staged, true) {
            let orphan = next.clone();
            let _ = with_tpm(&follow.config, OP, move |tpm| {
                tpm.evict(&orphan).map(|_| ())
            });
            return Err(e);
        }
        self.keys
            .get_or_append(&next.id, || RwLock::new(None))
            .data
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(root);
        self.refresh()?;
        tracing::info!(retiring = %current.id, next = %next.id, "made the next TPM root epoch");
        Ok(EpochChange::rewrap_onto(self, current.id, next.id))
    }

    fn destroy_epoch(&self, epoch: &RootEpoch) -> Result<EpochDestroyed, Error> {
        const OP: &str = "destroy root epoch";
        if epoch.key_version.is_some() || !epoch.root_key_id.starts_with("tpm:") {
            return Err(Error::InvalidInput {
                what: "root epoch",
                problem: format!("{epoch} is not a TPM root key"),
            });
        }
        let locked = self.lock_epoch_file("destroy a root epoch", OP)?;
        let (follow, current) = (locked.follow, &locked.current);
        let path = follow.config.sealed_path();
        let copies = format!(
            "no copy on disk: the sealed file {} never held the sealed object's private part, so \
             old copies of it and of the key store open nothing; but a TPM whose NV state is \
             itself copied keeps the evicted object in that copy: an swtpm state directory, a \
             snapshot of a VM with a virtual TPM, a backup of a firmware TPM's NV; restoring \
             one brings the old epoch back on that TPM",
            path.display()
        );
        if current.id == epoch.root_key_id {
            return Err(Error::InvalidInput {
                what: "root epoch",
                problem: format!(
                    "{epoch} is the current epoch of {}: begin the next epoch and move every \
                     record onto it first",
                    path.display()
                ),
            });
        }
        let status = match &locked.previous {
            Some(previous) if previous.id == epoch.root_key_id => {
                let gone = previous.clone();
                let was_there = with_tpm(&follow.config, OP, move |tpm| tpm.evict(&gone))?;
                let done = PersistentFile {
                    previous: None,
                    ..locked.file
                };
                write_file(path, &done, true)?;
                if was_there {
                    Destruction::Destroyed
                } else {
                    Destruction::AlreadyGone
                }
            }
            _ if self.keys.find(&epoch.root_key_id).is_some() => Destruction::AlreadyGone,
            _ => {
                return Err(Error::InvalidInput {
                    what: "root epoch",
                    problem: format!(
                        "{epoch} is not an epoch of the sealed file {}",
                        path.display()
                    ),
                });
            }
        };
        self.refresh()?;
        tracing::info!(destroyed = %epoch, current = %current.id, "destroyed a TPM root epoch");
        Ok(EpochDestroyed {
            epoch: epoch.clone(),
            status,
            copies_may_remain: copies,
        })
    }
}

fn check_pcrs(pcrs: &[u8]) -> Result<Option<PcrSelectionList>, String> {
    if pcrs.is_empty() {
        return Ok(None);
    }
    let mut slots = Vec::with_capacity(pcrs.len());
    for &pcr in pcrs {
        if pcr > MAX_PCR {
            return Err(format!(
                "PCR {pcr} does not exist (PCRs are 0 to {MAX_PCR})"
            ));
        }
        let slot = PcrSlot::try_from(1u32 << pcr)
            .map_err(|e| format!("PCR {pcr} cannot be selected: {e}"))?;
        slots.push(slot);
    }
    PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map(Some)
        .map_err(|e| format!("PCR selection {pcrs:?} is invalid: {e}"))
}

/// Writes `file` to `path` with mode `0600`: a new file (`replace == false`, refusing an
/// existing one), or atomically over the existing one (a temporary file in the same folder,
/// synced, renamed over it, the folder synced).
fn write_file(path: &Path, file: &PersistentFile, replace: bool) -> Result<(), Error> {
    let key_err = |problem: String| Error::KeyFile {
        path: path.to_path_buf(),
        problem,
    };
    let mut text = serde_json::to_string_pretty(file)
        .map_err(|e| key_err(format!("cannot encode it: {e}")))?;
    text.push('\n');
    let target = if replace {
        crate::kms::secret_file::temp_beside(path)
            .ok_or_else(|| key_err("has no file name".into()))?
    } else {
        path.to_path_buf()
    };
    crate::kms::secret_file::write_new(&target, text.as_bytes()).map_err(key_err)?;
    if replace {
        fs::rename(&target, path).map_err(|e| {
            let _ = fs::remove_file(&target);
            key_err(format!("cannot replace it: {e}"))
        })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| key_err(format!("cannot sync its folder: {e}")))?;
    }
    Ok(())
}

fn read_text(path: &Path) -> Result<(String, serde_json::Value), Error> {
    let key_err = |problem: String| Error::KeyFile {
        path: path.to_path_buf(),
        problem,
    };
    let text = fs::read_to_string(path).map_err(|e| {
        key_err(format!(
            "cannot read it: {e} (make a sealed root key with `TpmKms::create`)"
        ))
    })?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        key_err(format!(
            "is not a leakless sealed root key file (JSON: {e})"
        ))
    })?;
    Ok((text, value))
}

fn read_persistent_file(path: &Path) -> Result<PersistentFile, Error> {
    let (text, _) = read_text(path)?;
    serde_json::from_str(&text).map_err(|e| Error::KeyFile {
        path: path.to_path_buf(),
        problem: format!(
            "is not a version {FILE_VERSION} sealed root key file (epochs need one; {MIGRATE}): {e}"
        ),
    })
}

fn read_sealed_file(path: &Path) -> Result<Sealed, Error> {
    let key_err = |problem: String| Error::KeyFile {
        path: path.to_path_buf(),
        problem,
    };
    let (text, value) = read_text(path)?;
    let format = value.get("format").and_then(|v| v.as_str());
    let version = value.get("version").and_then(serde_json::Value::as_u64);
    if format != Some(FILE_FORMAT) {
        return Err(key_err(format!(
            "has format {format:?}, expected {FILE_FORMAT:?}"
        )));
    }
    match version {
        Some(v) if v == u64::from(FILE_VERSION_BLOBS) => {
            let file: BlobFile = serde_json::from_str(&text)
                .map_err(|e| key_err(format!("is not a valid version 1 sealed file: {e}")))?;
            let public = parse_public(&file.public).ok_or_else(|| {
                key_err("its \"public\" field is not a hex TPM public area".into())
            })?;
            let private = hex::decode(&file.private)
                .ok()
                .and_then(|raw| Private::try_from(raw).ok())
                .ok_or_else(|| {
                    key_err("its \"private\" field is not a hex TPM private blob".into())
                })?;
            Ok(Sealed::Blobs {
                pcrs: file.pcrs,
                public,
                private,
            })
        }
        Some(v) if v == u64::from(FILE_VERSION) => {
            let file: PersistentFile = serde_json::from_str(&text)
                .map_err(|e| key_err(format!("is not a valid version 2 sealed file: {e}")))?;
            parse_persistent(path, &file)
        }
        other => Err(key_err(format!(
            "has version {other:?}; this build reads versions {FILE_VERSION_BLOBS} and \
             {FILE_VERSION}"
        ))),
    }
}

fn parse_public(hexed: &str) -> Option<Public> {
    hex::decode(hexed)
        .ok()
        .and_then(|raw| Public::unmarshall(&raw).ok())
}

fn parse_persistent(path: &Path, file: &PersistentFile) -> Result<Sealed, Error> {
    let entry = |e: &EpochEntry, which: &str| -> Result<Epoch, Error> {
        let key_err = |problem: String| Error::KeyFile {
            path: path.to_path_buf(),
            problem: format!("its {which} epoch: {problem}"),
        };
        let handle = e
            .handle
            .strip_prefix("0x")
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .filter(|h| (PERSISTENT_OWNER_FIRST..=PERSISTENT_OWNER_LAST).contains(h))
            .ok_or_else(|| {
                key_err(format!(
                    "handle {:?} is not an owner persistent handle (0x81000000 to 0x817fffff)",
                    e.handle
                ))
            })?;
        let public = parse_public(&e.public)
            .ok_or_else(|| key_err("\"public\" is not a hex TPM public area".into()))?;
        let name = name_of(&public).map_err(key_err)?;
        let id = id_of_name(&name).map_err(key_err)?;
        Ok(Epoch { handle, name, id })
    };
    let current = entry(&file.current, "current")?;
    let previous = file
        .previous
        .as_ref()
        .map(|p| entry(p, "previous"))
        .transpose()?;
    Ok(Sealed::Persistent {
        pcrs: file.pcrs.clone(),
        current,
        previous,
    })
}

/// The TPM name of a SHA-256 object: the algorithm id and the SHA-256 of its public area.
fn name_of(public: &Public) -> Result<Vec<u8>, String> {
    use sha2::{Digest as _, Sha256};
    let raw = public
        .marshall()
        .map_err(|e| format!("cannot encode the public area: {e}"))?;
    let mut name = vec![0x00, 0x0b];
    name.extend_from_slice(&Sha256::digest(&raw));
    Ok(name)
}

/// The root key id of a sealed object's name: `tpm:` and the first 16 bytes of its digest.
fn id_of_name(name: &[u8]) -> Result<String, String> {
    // A name is the 2-byte hash algorithm id followed by the SHA-256 of the public area.
    let digest = name
        .get(2..18)
        .ok_or_else(|| "the sealed object's name is too short".to_owned())?;
    Ok(format!("tpm:{}", hex::encode(digest)))
}

/// The sealed object's template: a keyed-hash object holding caller-supplied data, bound to
/// this TPM and this parent, authorized by an empty password or, with `policy`, only by it.
fn sealed_template(policy: Option<Digest>) -> Result<Public, tss_esapi::Error> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_no_da(true)
        .with_admin_with_policy(true)
        .with_user_with_auth(policy.is_none())
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(policy.unwrap_or_default())
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
}

/// The TCG storage root key template (ECC P-256, AES-128-CFB): the same key every time from
/// the same owner seed, so it needs no persistent handle.
fn storage_key_template() -> Result<Public, tss_esapi::Error> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// Serializes this process's TPM sessions, one lock per TCTI. A TPM without a resource manager
/// in front (`swtpm`, `/dev/tpm0`) holds only a few transient objects and sessions for all its
/// clients together, and each open or create needs two objects and two sessions at once.
static TPM_LOCKS: Mutex<Vec<(String, Arc<Mutex<()>>)>> = Mutex::new(Vec::new());
/// Attempts when the TPM is unreachable or reports a transient condition (out of object or
/// session memory because another process holds them, retry, self-test in progress).
const TPM_ATTEMPTS: u32 = 6;

fn tpm_lock(tcti: &str) -> Arc<Mutex<()>> {
    let mut locks = TPM_LOCKS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, lock)) = locks.iter().find(|(t, _)| t == tcti) {
        return Arc::clone(lock);
    }
    let lock = Arc::new(Mutex::new(()));
    locks.push((tcti.to_owned(), Arc::clone(&lock)));
    lock
}

/// Runs `f` on a fresh TPM connection, holding the TCTI's lock, and retries it on a new
/// connection (bounded, with backoff and jitter) when the TPM was unreachable or failed on a
/// transient condition. The work runs on its own thread so that a TPM that never answers costs
/// `config.timeout()`, not a hung caller.
///
/// # Errors
/// What `f` returned for a permanent failure; [`Error::KmsUnavailable`] when the attempts ran
/// out or the time limit passed.
fn with_tpm<T: Send + 'static>(
    config: &TpmConfig,
    op: &'static str,
    mut f: impl FnMut(&mut Tpm) -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let tcti = config.tcti().to_owned();
    let timeout = config.timeout();
    let start = Instant::now();
    let unavailable = move |attempts: u32, detail: String| Error::KmsUnavailable {
        backend: BACKEND,
        operation: op,
        attempts,
        elapsed_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
        throttled: false,
        detail,
    };
    let (tx, rx) = mpsc::sync_channel(1);
    let worker = move || {
        let lock = tpm_lock(&tcti);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            let (err, transient) = match Tpm::connect(&tcti, op) {
                Ok(mut tpm) => match f(&mut tpm) {
                    Ok(value) => break Ok(value),
                    Err(e) => (e, tpm.transient.get()),
                },
                Err(failed) => failed,
            };
            if !transient {
                break Err(err);
            }
            if attempt >= TPM_ATTEMPTS {
                let detail = match err {
                    Error::Kms { detail, .. } => detail,
                    other => other.to_string(),
                };
                break Err(unavailable(attempt, detail));
            }
            // 20 ms, 40 ms, ... 320 ms, plus up to 50 % jitter.
            let base = 20u64 << (attempt - 1).min(4);
            let jitter = rand::random::<u64>() % (base / 2 + 1);
            thread::sleep(Duration::from_millis(base + jitter));
        };
        // The caller may have given up (timeout): then nobody listens, which is fine.
        let _ = tx.send(result);
    };
    thread::Builder::new()
        .name("leakless-tpm".into())
        .spawn(worker)
        .map_err(|e| kms_err(op, format!("cannot start a thread for the TPM call: {e}")))?;
    rx.recv_timeout(timeout).unwrap_or_else(|_| {
        Err(unavailable(
            1,
            format!(
                "the TPM did not answer within {} ms (a hung TPM or simulator, or another \
                 call on it still running); raise TpmConfig::with_timeout if it is just slow",
                timeout.as_millis()
            ),
        ))
    })
}

/// Whether a TPM error is worth a retry on a new connection.
fn is_transient(e: &tss_esapi::Error) -> bool {
    use tss_esapi::constants::response_code::Tss2ResponseCodeKind as K;
    matches!(
        e,
        tss_esapi::Error::Tss2Error(rc) if matches!(
            rc.kind(),
            Some(
                K::ObjectMemory
                    | K::SessionMemory
                    | K::Memory
                    | K::ContextGap
                    | K::Retry
                    | K::Yielded
                    | K::Testing
            )
        )
    )
}

/// The response code kind of a TPM error.
fn rc_kind(
    e: &tss_esapi::Error,
) -> Option<tss_esapi::constants::response_code::Tss2ResponseCodeKind> {
    match e {
        tss_esapi::Error::Tss2Error(rc) => rc.kind(),
        tss_esapi::Error::WrapperError(_) => None,
    }
}

fn persistent_handle(handle: u32) -> Result<PersistentTpmHandle, String> {
    PersistentTpmHandle::new(handle)
        .map_err(|e| format!("{handle:#010x} is not a persistent handle: {e}"))
}

/// One short-lived TPM connection with the storage key loaded and a salted, parameter-encrypted
/// HMAC session. Handles are flushed when it is dropped (by `tss-esapi`'s handle manager).
struct Tpm {
    ctx: Context,
    parent: KeyHandle,
    session: AuthSession,
    op: &'static str,
    /// Set when an error came from a transient TPM condition (see [`is_transient`]).
    transient: Cell<bool>,
}

impl Tpm {
    fn connect(tcti: &str, op: &'static str) -> Result<Self, (Error, bool)> {
        let fatal = |e: Error| (e, false);
        let conf = TctiNameConf::from_str(tcti).map_err(|e| {
            fatal(kms_err(
                op,
                format!(
                    "TCTI {tcti:?} is not valid ({e}); use e.g. device:/dev/tpmrm0 or \
                     swtpm:host=127.0.0.1,port=2321"
                ),
            ))
        })?;
        // Unreachable counts as transient: a TPM daemon or simulator may be restarting.
        let mut ctx = Context::new(conf).map_err(|e| {
            let error = kms_err(
                op,
                format!(
                    "cannot connect to the TPM at {tcti:?}: {e} (is it running, and may this \
                     process open it?)"
                ),
            );
            (error, true)
        })?;
        let template = storage_key_template()
            .map_err(|e| fatal(kms_err(op, format!("storage key template: {e}"))))?;
        let parent = ctx
            .execute_with_nullauth_session(|c| {
                c.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })
            .map_err(|e: tss_esapi::Error| {
                let error = kms_err(
                    op,
                    format!(
                        "the TPM refused to derive the owner storage key: {e} (the owner \
                         hierarchy must have an empty authorization)"
                    ),
                );
                (error, is_transient(&e))
            })?
            .key_handle;
        let session = start_session(&mut ctx, parent, SessionType::Hmac, op)?;
        Ok(Self {
            ctx,
            parent,
            session,
            op,
            transient: Cell::new(false),
        })
    }

    fn tpm_err(&self, what: &str, e: &tss_esapi::Error) -> Error {
        if is_transient(e) {
            self.transient.set(true);
        }
        kms_err(self.op, format!("{what}: {e}"))
    }

    /// Seals `root`; returns the public and private blobs.
    fn seal(
        &mut self,
        root: &RootKey,
        pcrs: &Option<PcrSelectionList>,
    ) -> Result<(Public, Private), Error> {
        let policy = match pcrs {
            Some(selection) => Some(self.trial_pcr_policy(selection.clone())?),
            None => None,
        };
        let template =
            sealed_template(policy).map_err(|e| self.tpm_err("sealed object template", &e))?;
        let data = SensitiveData::try_from(root.expose_secret().to_vec())
            .map_err(|e| self.tpm_err("sealed data", &e))?;
        let parent = self.parent;
        let created = self
            .ctx
            .execute_with_session(Some(self.session), |c| {
                c.create(parent, template, None, Some(data), None, None)
            })
            .map_err(|e| self.tpm_err("the TPM refused to seal the root key", &e))?;
        Ok((created.out_public, created.out_private))
    }

    fn load(&mut self, public: Public, private: Private) -> Result<KeyHandle, Error> {
        let parent = self.parent;
        self.ctx
            .execute_with_session(Some(self.session), |c| c.load(parent, private, public))
            .map_err(|e| {
                self.tpm_err(
                    "the TPM refused the sealed root key (the file was altered, was sealed by \
                     another TPM, or this TPM was cleared since)",
                    &e,
                )
            })
    }

    fn name_id(&mut self, handle: KeyHandle) -> Result<String, String> {
        let name = self
            .ctx
            .tr_get_name(ObjectHandle::from(handle))
            .map_err(|e| format!("cannot read the sealed object's name: {e}"))?;
        id_of_name(name.value())
    }

    fn unseal(
        &mut self,
        public: Public,
        private: Private,
        pcrs: &Option<PcrSelectionList>,
    ) -> Result<(RootKey, String), Error> {
        let handle = self.load(public, private)?;
        let id = self.name_id(handle).map_err(|d| kms_err(self.op, d))?;
        let root = self.unseal_object(ObjectHandle::from(handle), pcrs);
        let _ = self.ctx.flush_context(ObjectHandle::from(handle));
        Ok((root?, id))
    }

    /// Unseals the loaded sealed object `handle` (with a PCR policy session when `pcrs`).
    fn unseal_object(
        &mut self,
        handle: ObjectHandle,
        pcrs: &Option<PcrSelectionList>,
    ) -> Result<RootKey, Error> {
        let session = match pcrs {
            None => self.session,
            Some(selection) => {
                let policy =
                    start_session(&mut self.ctx, self.parent, SessionType::Policy, self.op)
                        .map_err(|(e, transient)| {
                            self.transient.set(self.transient.get() || transient);
                            e
                        })?;
                let policy_session = PolicySession::try_from(policy)
                    .map_err(|e| self.tpm_err("policy session", &e))?;
                self.ctx
                    .policy_pcr(policy_session, Digest::default(), selection.clone())
                    .map_err(|e| self.tpm_err("PCR policy", &e))?;
                policy
            }
        };
        let data = self
            .ctx
            .execute_with_session(Some(session), |c| c.unseal(handle))
            .map_err(|e| {
                let why = if pcrs.is_some() {
                    "the TPM refused to unseal the root key (the PCRs no longer hold the values \
                     it was sealed to: another boot chain, firmware or Secure Boot state)"
                } else {
                    "the TPM refused to unseal the root key"
                };
                self.tpm_err(why, &e)
            })?;
        let bytes = Zeroizing::new(data.value().to_vec());
        drop(data);
        RootKey::try_from_slice(&bytes).ok_or_else(|| {
            kms_err(
                self.op,
                "the sealed object does not hold a 32-byte root key (not made by leakless)",
            )
        })
    }

    /// Seals a new random root key and makes the sealed object persistent at a free owner
    /// persistent handle; returns the key, its file entry and its parsed epoch.
    fn seal_persistent(
        &mut self,
        pcrs: &Option<PcrSelectionList>,
    ) -> Result<(RootKey, EpochEntry, Epoch), Error> {
        let root = RootKey::generate();
        let (public, private) = self.seal(&root, pcrs)?;
        let name = name_of(&public).map_err(|d| kms_err(self.op, d))?;
        let id = id_of_name(&name).map_err(|d| kms_err(self.op, d))?;
        let raw_public = public.marshall().map_err(|e| {
            kms_err(
                self.op,
                format!("cannot encode the sealed object's public area: {e}"),
            )
        })?;
        let transient = self.load(public, private)?;
        let persisted = self.make_persistent(transient);
        let _ = self.ctx.flush_context(ObjectHandle::from(transient));
        let epoch = Epoch {
            handle: persisted?,
            name,
            id,
        };
        // The object now at the handle is the one the file will name.
        match self.open_persistent(&epoch) {
            Ok(Some(mut object)) => {
                let _ = self.ctx.tr_close(&mut object);
            }
            Ok(None) => {
                return Err(kms_err(
                    self.op,
                    "the persistent sealed object vanished right after it was made",
                ));
            }
            Err(e) => {
                let _ = self.evict(&epoch);
                return Err(e);
            }
        }
        let entry = EpochEntry {
            handle: format!("{:#010x}", epoch.handle),
            public: hex::encode(raw_public),
        };
        Ok((root, entry, epoch))
    }

    /// Copies the loaded `transient` object to a free owner persistent handle; retries on
    /// another handle when a concurrent process took the one picked.
    fn make_persistent(&mut self, transient: KeyHandle) -> Result<u32, Error> {
        use tss_esapi::constants::response_code::Tss2ResponseCodeKind as K;
        let mut last = None;
        for _ in 0..8 {
            let handle = self.free_persistent_handle()?;
            let persistent = persistent_handle(handle).map_err(|d| kms_err(self.op, d))?;
            let made = self
                .ctx
                .execute_with_session(Some(AuthSession::Password), |c| {
                    c.evict_control(
                        Provision::Owner,
                        ObjectHandle::from(transient),
                        Persistent::Persistent(persistent),
                    )
                });
            match made {
                Ok(mut object) => {
                    let _ = self.ctx.tr_close(&mut object);
                    return Ok(handle);
                }
                Err(e) if rc_kind(&e) == Some(K::NvDefined) => last = Some(e),
                Err(e) => {
                    return Err(self.tpm_err(
                        "the TPM refused to make the sealed root key persistent (its NV may \
                         have no room for another persistent object; evict unused ones)",
                        &e,
                    ));
                }
            }
        }
        Err(match last {
            Some(e) => self.tpm_err("no free persistent handle could be taken", &e),
            None => kms_err(self.op, "no free persistent handle could be taken"),
        })
    }

    /// The lowest owner persistent handle from [`LEAKLESS_HANDLE_FIRST`] that is not in use.
    fn free_persistent_handle(&mut self) -> Result<u32, Error> {
        let mut taken = Vec::new();
        let mut from = PERSISTENT_OWNER_FIRST;
        loop {
            let (data, more) = self
                .ctx
                .execute_without_session(|c| c.get_capability(CapabilityType::Handles, from, 64))
                .map_err(|e| self.tpm_err("cannot list the TPM's persistent handles", &e))?;
            let CapabilityData::Handles(list) = data else {
                break;
            };
            let mut highest = None;
            for handle in list.iter() {
                let value = u32::from(*handle);
                taken.push(value);
                highest = Some(value);
            }
            match (more, highest) {
                (true, Some(h)) if h < PERSISTENT_OWNER_LAST => from = h + 1,
                _ => break,
            }
        }
        (LEAKLESS_HANDLE_FIRST..=PERSISTENT_OWNER_LAST)
            .find(|h| !taken.contains(h))
            .ok_or_else(|| kms_err(self.op, "every owner persistent handle is in use"))
    }

    /// What is at `epoch`'s persistent handle: `None` when it is empty, `Some(Err(()))` when
    /// it holds an object with another name (closed again), `Some(Ok(object))` when it holds
    /// the recorded one.
    #[allow(clippy::type_complexity, reason = "private, three plain outcomes")]
    fn lookup(&mut self, epoch: &Epoch) -> Result<Option<Result<ObjectHandle, ()>>, Error> {
        use tss_esapi::constants::response_code::Tss2ResponseCodeKind as K;
        let handle = persistent_handle(epoch.handle).map_err(|d| kms_err(self.op, d))?;
        let mut object = match self
            .ctx
            .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::Persistent(handle)))
        {
            Ok(object) => object,
            Err(e) if rc_kind(&e) == Some(K::Handle) => return Ok(None),
            Err(e) => return Err(self.tpm_err("cannot read the persistent sealed object", &e)),
        };
        let name = self.ctx.tr_get_name(object);
        if name.is_ok_and(|n| n.value() == epoch.name.as_slice()) {
            Ok(Some(Ok(object)))
        } else {
            let _ = self.ctx.tr_close(&mut object);
            Ok(Some(Err(())))
        }
    }

    /// The object at `epoch`'s persistent handle, checked to have the recorded name; `None`
    /// when the handle is empty.
    fn open_persistent(&mut self, epoch: &Epoch) -> Result<Option<ObjectHandle>, Error> {
        let Some(object) = self.lookup(epoch)? else {
            return Ok(None);
        };
        let Ok(object) = object else {
            return Err(kms_err(
                self.op,
                format!(
                    "persistent handle {:#010x} holds another object than the sealed file names \
                     (root key {}: this is another TPM, or the object was evicted and the handle \
                     reused); refusing it",
                    epoch.handle, epoch.id
                ),
            ));
        };
        Ok(Some(object))
    }

    /// Unseals the root keys of `epochs`, the one with id `required` first if present. A
    /// retiring epoch whose object is gone (a destroy interrupted before the file was
    /// rewritten) is skipped; the required one must be there.
    fn unseal_epochs(
        &mut self,
        epochs: &[Epoch],
        required: &str,
        pcrs: &Option<PcrSelectionList>,
    ) -> Result<Vec<(String, RootKey)>, Error> {
        let mut roots = Vec::with_capacity(epochs.len());
        for epoch in epochs {
            if epoch.id != required {
                match self.lookup(epoch)? {
                    Some(Ok(mut object)) => {
                        let _ = self.ctx.tr_close(&mut object);
                    }
                    _ => continue,
                }
            }
            roots.push((epoch.id.clone(), self.unseal_persistent(epoch, pcrs)?));
        }
        Ok(roots)
    }

    /// Unseals the root key of a version 2 epoch from its persistent handle.
    fn unseal_persistent(
        &mut self,
        epoch: &Epoch,
        pcrs: &Option<PcrSelectionList>,
    ) -> Result<RootKey, Error> {
        let mut object = self.open_persistent(epoch)?.ok_or_else(|| {
            kms_err(
                self.op,
                format!(
                    "persistent handle {:#010x} is empty: root key {} was destroyed (evicted), \
                     or this is another TPM, or this TPM was cleared",
                    epoch.handle, epoch.id
                ),
            )
        })?;
        let root = self.unseal_object(object, pcrs);
        let _ = self.ctx.tr_close(&mut object);
        root
    }

    /// Evicts `epoch`'s persistent object; `false` when it is not there any more (the handle
    /// is empty, or holds another object, which is left alone).
    fn evict(&mut self, epoch: &Epoch) -> Result<bool, Error> {
        let Some(Ok(object)) = self.lookup(epoch)? else {
            return Ok(false);
        };
        let handle = persistent_handle(epoch.handle).map_err(|d| kms_err(self.op, d))?;
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.evict_control(Provision::Owner, object, Persistent::Persistent(handle))
            })
            .map_err(|e| self.tpm_err("the TPM refused to evict the sealed root key", &e))?;
        Ok(true)
    }
    /// The policy digest of "PolicyPCR over `selection` at their current values", computed by
    /// the TPM in a trial session.
    fn trial_pcr_policy(&mut self, selection: PcrSelectionList) -> Result<Digest, Error> {
        let trial = self
            .ctx
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Trial,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(|e| self.tpm_err("trial policy session", &e))?
            .ok_or_else(|| kms_err(self.op, "the TPM returned no trial session"))?;
        let trial =
            PolicySession::try_from(trial).map_err(|e| self.tpm_err("trial policy session", &e))?;
        // An empty digest makes the TPM use the PCRs' current values.
        self.ctx
            .policy_pcr(trial, Digest::default(), selection)
            .map_err(|e| self.tpm_err("PCR policy (trial)", &e))?;
        let digest = self
            .ctx
            .policy_get_digest(trial)
            .map_err(|e| self.tpm_err("PCR policy digest", &e))?;
        let _ = self
            .ctx
            .flush_context(ObjectHandle::from(SessionHandle::from(trial)));
        Ok(digest)
    }
}

/// Starts a session salted with the storage key (so its key is unknown to anyone watching the
/// TPM connection) that encrypts the first parameter of commands and responses (the root key
/// going in at seal time and out at unseal time).
fn start_session(
    ctx: &mut Context,
    parent: KeyHandle,
    kind: SessionType,
    op: &'static str,
) -> Result<AuthSession, (Error, bool)> {
    let fail =
        |what: &str, e: &tss_esapi::Error| (kms_err(op, format!("{what}: {e}")), is_transient(e));
    let session = ctx
        .start_auth_session(
            Some(parent),
            None,
            None,
            kind,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
        .map_err(|e| fail("cannot start a TPM session", &e))?
        .ok_or_else(|| (kms_err(op, "the TPM returned no session"), false))?;
    let (attributes, mask) = SessionAttributesBuilder::new()
        .with_continue_session(true)
        .with_decrypt(true)
        .with_encrypt(true)
        .build();
    ctx.tr_sess_set_attributes(session, attributes, mask)
        .map_err(|e| fail("cannot set the TPM session's attributes", &e))?;
    Ok(session)
}
