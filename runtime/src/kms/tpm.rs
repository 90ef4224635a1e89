//! The TPM 2.0 backend: a root key sealed to this host's TPM, for single-host appliances.
//!
//! # What it does
//!
//! [`TpmKms::create`] makes a fresh random 256-bit root key and *seals* it to the TPM: the TPM
//! encrypts it under a storage key that is derived from the TPM's owner-hierarchy seed and never
//! leaves the chip. The result (a keyed-hash "sealed data" object: its public and private
//! blobs) is written to a file. Those blobs are useless anywhere else: only the TPM that made
//! them can load them, and an altered blob fails the TPM's integrity check.
//!
//! [`TpmKms::open`] loads the blobs into the same TPM, unseals the root key into a zeroizing
//! [`RootKey`] and closes the TPM connection. From then on KEKs are wrapped and unwrapped in
//! this process exactly like [`LocalKms`](super::LocalKms) does (XChaCha20-Poly1305, the KEK
//! bound to its scope, version and root key id as associated data), under the TPM backend's own
//! label, so a KEK wrapped by one backend kind never unwraps under another.
//!
//! Optionally the root key is also bound to a **PCR policy** ([`TpmConfig::with_pcr_policy`]):
//! the TPM then unseals it only while the selected SHA-256 PCRs hold the values they had at
//! sealing time (for example PCR 7, the Secure Boot state), so a host booted into another
//! operating system or with Secure Boot turned off cannot unseal it.
//!
//! The root key id is `tpm:` followed by the first 16 bytes, in hex, of the sealed object's TPM
//! name (the SHA-256 of its public area): public, stable across restarts, and different for every
//! sealed root key.
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
//!   Here the TPM is used only inside [`TpmKms::create`] and [`TpmKms::open`], serialized in the
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
//! # No root epochs
//!
//! `TpmKms` does not implement [`RootEpochs`](crate::kms::RootEpochs): the sealed file holds
//! the sealed object's private blob, which loads and unseals on the same TPM from any old copy
//! of the file (the storage key is re-derived from the owner seed), so destroying an epoch
//! could not defeat backups. `docs/shredding.md` ("TPM 2.0") says what a backup-proof design
//! needs (a persistent sealed object and a file without the blob) and why it is not built.
//!
//! # Connecting
//!
//! The TCTI string names the TPM: `device:/dev/tpmrm0` (the kernel resource manager, the usual
//! choice on Linux; the process needs read/write on it, normally through the `tss` group),
//! `swtpm:host=127.0.0.1,port=2321` for the `swtpm` simulator, `mssim:...` or `tabrmd:...`.
//! The primary storage key is re-derived on every [`TpmKms::open`] from the owner hierarchy
//! (ECC P-256, the TCG storage-key template), so nothing needs to be made persistent in TPM NV.
//! The owner hierarchy must have an empty authorization (the default); clearing the TPM
//! (`tpm2_clear`, a firmware "clear TPM") changes its seed and makes every sealed root key
//! unrecoverable, so keep a backup path (a second root via `rotate_root`, or Shamir shares).

use std::cell::Cell;
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tss_esapi::Context;
use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Digest, EccPoint, KeyedHashScheme, PcrSelectionList, PcrSelectionListBuilder, PcrSlot, Private,
    Public, PublicBuilder, PublicEccParametersBuilder, PublicKeyedHashParameters, SensitiveData,
    SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::key::WrappedKek;
use crate::kms::local::{binding_aad, unwrap_under_root, wrap_under_root};
use crate::kms::{KekBinding, Kms};
use crate::secret::{Kek, RootKey};

const BACKEND: &str = "tpm";
const AAD_LABEL: &[u8] = b"leakless.tpm-kms.kek-wrap.v1";
const FILE_FORMAT: &str = "leakless-tpm-sealed-root-key";
const FILE_VERSION: u32 = 1;
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

/// The sealed root key file: the TPM's public and private blobs of the sealed object (the
/// private one is encrypted by the TPM's storage key) and the PCR selection of its policy.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedFile {
    format: String,
    version: u32,
    /// SHA-256 PCR indexes of the unseal policy; empty for none.
    pcrs: Vec<u8>,
    /// The marshalled TPMT_PUBLIC, hex.
    public: String,
    /// The TPM2B_PRIVATE contents, hex.
    private: String,
}

/// A root key sealed to a TPM 2.0. See the module docs.
pub struct TpmKms {
    root: RootKey,
    id: String,
}

impl fmt::Debug for TpmKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmKms")
            .field("root_key_id", &self.id)
            .finish_non_exhaustive()
    }
}

fn kms_err(operation: &'static str, detail: impl Into<String>) -> Error {
    Error::Kms {
        backend: BACKEND,
        operation,
        detail: detail.into(),
    }
}

impl TpmKms {
    /// Makes a new random root key, seals it to the TPM named by `config` (with its PCR policy,
    /// if any), and writes the sealed blobs to `config`'s file with mode `0600`. Refuses to
    /// overwrite an existing file.
    ///
    /// # Errors
    /// [`Error::KeyFile`] when the file exists or cannot be written; [`Error::Kms`] (operation
    /// `"seal root key"`) when the TPM refuses; [`Error::KmsUnavailable`] when it stays
    /// unreachable or busy through the retries, or does not answer within the timeout.
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
        let (root, public, private, id) = with_tpm(config, OP, move |tpm| {
            let root = RootKey::generate();
            let (public, private) = tpm.seal(&root, &pcrs)?;
            let id = tpm.load_name(&public, &private, OP)?;
            Ok((root, public, private, id))
        })?;
        let file = SealedFile {
            format: FILE_FORMAT.into(),
            version: FILE_VERSION,
            pcrs: config.pcr_policy().to_vec(),
            public: hex::encode(public.marshall().map_err(|e| {
                kms_err(
                    OP,
                    format!("cannot encode the sealed object's public area: {e}"),
                )
            })?),
            private: hex::encode(private.value()),
        };
        write_new_file(path, &file)?;
        Ok(Self { root, id })
    }

    /// Loads the sealed root key from `config`'s file into the TPM and unseals it. The TPM
    /// connection is closed before this returns: wrapping and unwrapping need no TPM.
    ///
    /// # Errors
    /// [`Error::KeyFile`] when the file is missing or malformed; [`Error::Kms`] (operation
    /// `"unseal root key"`) when the TPM rejects the blobs (altered, sealed by another TPM, or
    /// the TPM was cleared) or its PCRs no longer satisfy the policy;
    /// [`Error::KmsUnavailable`] when it stays unreachable or busy through the retries, or does
    /// not answer within the timeout.
    pub fn open(config: &TpmConfig) -> Result<Self, Error> {
        const OP: &str = "unseal root key";
        let path = config.sealed_path();
        let (pcrs_raw, public, private) = read_sealed_file(path)?;
        let pcrs = check_pcrs(&pcrs_raw).map_err(|d| Error::KeyFile {
            path: path.to_path_buf(),
            problem: format!("its PCR selection is invalid: {d}"),
        })?;
        let (root, id) = with_tpm(config, OP, move |tpm| {
            tpm.unseal(public.clone(), private.clone(), &pcrs)
        })?;
        Ok(Self { root, id })
    }

    fn aad(&self, binding: &KekBinding<'_>) -> Vec<u8> {
        binding_aad(AAD_LABEL, &self.id, binding)
    }
}

impl Kms for TpmKms {
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

fn write_new_file(path: &Path, file: &SealedFile) -> Result<(), Error> {
    let key_err = |problem: String| Error::KeyFile {
        path: path.to_path_buf(),
        problem,
    };
    let mut text = serde_json::to_string_pretty(file)
        .map_err(|e| key_err(format!("cannot encode it: {e}")))?;
    text.push('\n');
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut out = opts
        .open(path)
        .map_err(|e| key_err(format!("cannot create it: {e}")))?;
    out.write_all(text.as_bytes())
        .and_then(|()| out.sync_all())
        .map_err(|e| key_err(format!("cannot write it: {e}")))
}

fn read_sealed_file(path: &Path) -> Result<(Vec<u8>, Public, Private), Error> {
    let key_err = |problem: String| Error::KeyFile {
        path: path.to_path_buf(),
        problem,
    };
    let text = fs::read_to_string(path).map_err(|e| {
        key_err(format!(
            "cannot read it: {e} (make a sealed root key with `TpmKms::create`)"
        ))
    })?;
    let file: SealedFile = serde_json::from_str(&text).map_err(|e| {
        key_err(format!(
            "is not a leakless sealed root key file (JSON: {e})"
        ))
    })?;
    if file.format != FILE_FORMAT || file.version != FILE_VERSION {
        return Err(key_err(format!(
            "has format {:?} version {}, expected {FILE_FORMAT:?} version {FILE_VERSION}",
            file.format, file.version
        )));
    }
    let public = hex::decode(&file.public)
        .ok()
        .and_then(|raw| Public::unmarshall(&raw).ok())
        .ok_or_else(|| key_err("its \"public\" field is not a hex TPM public area".into()))?;
    let private = hex::decode(&file.private)
        .ok()
        .and_then(|raw| Private::try_from(raw).ok())
        .ok_or_else(|| key_err("its \"private\" field is not a hex TPM private blob".into()))?;
    Ok((file.pcrs, public, private))
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

    /// Loads the sealed object and returns its root key id (from its TPM name).
    fn load_name(
        &mut self,
        public: &Public,
        private: &Private,
        op: &'static str,
    ) -> Result<String, Error> {
        let handle = self.load(public.clone(), private.clone())?;
        let id = self.name_id(handle);
        let _ = self.ctx.flush_context(ObjectHandle::from(handle));
        id.map_err(|e| kms_err(op, e))
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
        // A name is the 2-byte hash algorithm id followed by the SHA-256 of the public area.
        let digest = name
            .value()
            .get(2..18)
            .ok_or_else(|| "the sealed object's name is too short".to_owned())?;
        Ok(format!("tpm:{}", hex::encode(digest)))
    }

    fn unseal(
        &mut self,
        public: Public,
        private: Private,
        pcrs: &Option<PcrSelectionList>,
    ) -> Result<(RootKey, String), Error> {
        let handle = self.load(public, private)?;
        let id = self.name_id(handle).map_err(|d| kms_err(self.op, d))?;
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
            .execute_with_session(Some(session), |c| c.unseal(ObjectHandle::from(handle)))
            .map_err(|e| {
                let why = if pcrs.is_some() {
                    "the TPM refused to unseal the root key (the PCRs no longer hold the values \
                     it was sealed to: another boot chain, firmware or Secure Boot state)"
                } else {
                    "the TPM refused to unseal the root key"
                };
                self.tpm_err(why, &e)
            })?;
        let _ = self.ctx.flush_context(ObjectHandle::from(handle));
        let bytes = Zeroizing::new(data.value().to_vec());
        drop(data);
        let root = RootKey::try_from_slice(&bytes).ok_or_else(|| {
            kms_err(
                self.op,
                "the sealed object does not hold a 32-byte root key (not made by leakless)",
            )
        })?;
        Ok((root, id))
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
