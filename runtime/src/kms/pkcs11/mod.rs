//! The PKCS#11 KMS backend: the root key is a non-extractable AES-256 key on an HSM or token,
//! and every KEK wrap and unwrap runs *on the token* with `CKM_AES_GCM`.
//!
//! The root key never leaves the token: it is generated there (`CKA_SENSITIVE` true,
//! `CKA_EXTRACTABLE` false), found again by its label, and [`Pkcs11Kms::open`] refuses a key
//! whose attributes would let it out. Only the 32-byte KEKs cross the PKCS#11 boundary, as
//! GCM plaintext on wrap and as GCM output on unwrap; the host caches them like every backend.
//!
//! # Wrapped form
//!
//! ```text
//! 0x01 | IV (12 bytes) | AES-256-GCM ciphertext of the KEK (32 bytes) | tag (16 bytes)
//! ```
//!
//! The GCM associated data binds the wrap to the KEK's scope and version and to the root key
//! id, exactly as the local backend does:
//! `"leakless.pkcs11.kek-wrap.v1" | len(scope) | scope | version (u32 BE) | len(id) | id`.
//! The IV is 12 random bytes from the OS. After the call, the backend stores whatever IV the
//! token left in the parameter buffer, so HSMs that insist on generating the GCM IV
//! themselves (AWS CloudHSM, Thales Luna in FIPS mode) work the same way. A root key wraps one
//! KEK per new version, so random 96-bit IVs stay many orders of magnitude below the 2^32
//! limit per key.
//!
//! # Configuration
//!
//! [`Pkcs11Config`] names the module (the vendor's PKCS#11 shared library), the token label,
//! the key label and where the user PIN comes from ([`PinSource`]: a `0600` file, or an
//! environment variable). The PIN is read once to log in, zeroized right after, and never
//! logged or put in an error. [`Pkcs11Config::from_env`] reads `LEAKLESS_PKCS11_MODULE`,
//! `LEAKLESS_PKCS11_TOKEN`, `LEAKLESS_PKCS11_KEY_LABEL` (default `leakless-root`) and
//! `LEAKLESS_PKCS11_PIN_FILE` or `LEAKLESS_PKCS11_PIN`.
//!
//! | HSM | module path (Linux x86-64) |
//! |---|---|
//! | SoftHSM2 (Debian `softhsm2`) | `/usr/lib/softhsm/libsofthsm2.so` |
//! | Nitrokey HSM / SmartCard-HSM (OpenSC) | `/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so` |
//! | AWS CloudHSM (client SDK 5) | `/opt/cloudhsm/lib/libcloudhsm_pkcs11.so` |
//! | Thales Luna | `/usr/safenet/lunaclient/lib/libCryptoki2_64.so` |
//!
//! Only SoftHSM2 is exercised by this crate's tests; the others use the same calls
//! (`C_GenerateKey`, `C_FindObjects`, `C_Encrypt`/`C_Decrypt` with `CKM_AES_GCM`) and
//! [`Pkcs11Kms::open`] checks up front that the token lists `CKM_AES_GCM`.
//!
//! # Root epochs
//!
//! [`Pkcs11Kms`] implements [`RootEpochs`], so a crypto-shred can destroy the root material
//! behind old key-store backups. Epoch 0 is the object labelled exactly as configured
//! (`leakless-root`); epoch N is a separate AES-256 key object on the same token labelled
//! `<key label>@e<N>` (`leakless-root@e1`, `leakless-root@e2`, ...), generated on the token
//! with the same attributes as the first. The root key id names the object:
//! `pkcs11:<token label>/<object label>`, and it is part of every wrap's associated data.
//!
//! * [`Pkcs11Kms::open`] looks at every AES key on the token whose label is the configured
//!   one or `<key label>@e<N>`; the highest N is current (new wraps use it) and every older
//!   epoch still on the token keeps unwrapping the records that have not moved yet.
//! * **Next epoch:** `C_GenerateKey` of `<key label>@e<N+1>`. An interrupted shred that finds
//!   two epochs on the token resumes onto the newer one instead of making a third.
//! * **Move:** `C_Decrypt` under the old object, `C_Encrypt` under the new one, on the token.
//! * **Destroy epoch N:** `C_DestroyObject` of the object of epoch N and of every older epoch
//!   object still there; refused for the current epoch; a repeat answers `AlreadyGone`.
//! * **Running applications** follow without a restart: every wrap looks for a newer epoch
//!   first, and an unwrap that meets a root key id of this key it does not hold looks again
//!   ([`Pkcs11Kms::refresh`]). An unwrap under a destroyed epoch fails with [`Error::Kms`].
//!
//! A configured key label must not itself end in `@e<digits>`.
//!
//! # Threads and sessions
//!
//! PKCS#11 allows one `C_Initialize` per module per process, so modules are loaded once and
//! shared by every [`Pkcs11Token`], initialized under a process-wide lock. Other code in the
//! same process that uses the same module must not call `C_Initialize` at the same moment
//! (SoftHSM2 corrupts its slot table when two initializations race); leakless accepts
//! `CKR_CRYPTOKI_ALREADY_INITIALIZED`, so initializing first elsewhere is fine. A login is per token per process (PKCS#11 logs the whole
//! application in); a second [`Pkcs11Token`] on an already logged-in token must present the same
//! PIN, checked against a keyed hash of the first one, so a wrong PIN is refused even then.
//! Each token keeps a small pool of sessions: a call takes one (or opens one), uses it alone,
//! and puts it back, so many threads can wrap and unwrap at once.
//!
//! # Lost sessions and logins
//!
//! When a call fails because the token dropped the session or the login (an HSM restart, a
//! network HSM reconnecting, other code calling `C_Logout`), the backend logs in again,
//! reading the PIN from its [`PinSource`] once more, finds the root key by label again (tokens
//! may hand out new handles for private objects), and retries the call once.
//! [`Pkcs11Kms::token_calls`] counts the wraps and unwraps that reached the token.
//!
//! The token and session layer ([`Pkcs11Token`]: the module's initialization, slots, logins,
//! the session pool, data objects) is the submodule `token`; this module is the KMS backend
//! over it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use rand::RngCore;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::key::WrappedKek;
use crate::kms::epoch::{
    ChainNode, Destruction, EpochChange, EpochDestroyed, KeyChain, RootEpoch, RootEpochs,
    WrapUnderEpoch,
};
use crate::kms::{KekBinding, Kms, NOT_AUTHENTIC, debug_fields};
use crate::secret::{KEY_LEN, Kek};

const BACKEND: &str = "pkcs11";
const FORMAT_V1: u8 = 1;
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
const WRAPPED_LEN: usize = 1 + IV_LEN + KEY_LEN + TAG_LEN;

/// A token or backend failure of `operation`, as the crate's error.
fn kms_err(operation: &'static str, detail: String) -> Error {
    Error::Kms {
        backend: BACKEND,
        operation,
        detail,
    }
}

mod token;
pub use token::{DEFAULT_KEY_LABEL, PinSource, Pkcs11Config, Pkcs11Token};

// ----- the KMS backend ---------------------------------------------------------------------

/// How the root key object is protected, as the token reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyProtection {
    /// `CKA_SENSITIVE`: the value cannot be read in plaintext.
    pub sensitive: bool,
    /// `CKA_EXTRACTABLE`: the key could be wrapped out of the token.
    pub extractable: bool,
    /// `CKA_ALWAYS_SENSITIVE`: it has been sensitive since it was made.
    pub always_sensitive: bool,
    /// `CKA_NEVER_EXTRACTABLE`: it has never been extractable.
    pub never_extractable: bool,
    /// Whether reading `CKA_VALUE` returned bytes (it must not).
    pub value_readable: bool,
}

impl KeyProtection {
    /// Whether the key is fit to be a root key: sensitive, not extractable, value unreadable.
    #[must_use]
    pub fn is_protected(&self) -> bool {
        self.sensitive && !self.extractable && !self.value_readable
    }
}

/// A root key on a PKCS#11 token, with its root epochs. See the [module docs](self).
pub struct Pkcs11Kms {
    token: Arc<Pkcs11Token>,
    /// The configured (base) label: epoch 0 is the object with exactly this label, epoch N
    /// the object labelled `<key_label>@e<N>`.
    key_label: String,
    /// Every epoch object this instance has seen, oldest first; the current entry (the highest
    /// epoch on the token) is the one new wraps use. Entries are never removed: their handle
    /// becomes `None` once the object is gone from the token.
    epochs: KeyChain<EpochObject>,
    /// Serializes look-ups of the epoch objects on the token.
    refresh_lock: Mutex<()>,
    /// `C_Encrypt` / `C_Decrypt` calls that reached the token (wraps, unwraps).
    wraps: AtomicU64,
    unwraps: AtomicU64,
}

/// One root epoch's key object on the token.
struct EpochObject {
    label: String,
    number: u64,
    /// Found again by label after a lost login (tokens may hand out new handles for private
    /// objects after logging in again); `None` once the object is gone from the token.
    handle: Mutex<Option<ObjectHandle>>,
}

/// How many wrap and unwrap operations a [`Pkcs11Kms`] has run on its token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenCalls {
    /// `C_Encrypt` calls (KEK wraps), retries included.
    pub wraps: u64,
    /// `C_Decrypt` calls (KEK unwraps), retries included.
    pub unwraps: u64,
}

debug_fields!(Pkcs11Kms, |kms| {
    "root_key_id": kms.epochs.current().id,
    "module": kms.token.module,
});

/// The object label of epoch `number` of the root key configured as `base`.
fn epoch_label(base: &str, number: u64) -> String {
    if number == 0 {
        base.to_owned()
    } else {
        format!("{base}{EPOCH_SEPARATOR}{number}")
    }
}

/// The epoch number of the object labelled `label`, if it is an epoch of `base`.
fn epoch_number(base: &str, label: &str) -> Option<u64> {
    if label == base {
        return Some(0);
    }
    let digits = label.strip_prefix(base)?.strip_prefix(EPOCH_SEPARATOR)?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|n| *n > 0)
}

/// What separates the base label from the epoch number: `leakless-root@e3`.
const EPOCH_SEPARATOR: &str = "@e";

/// Whether `label` itself looks like an epoch label (`...@e<digits>`): refused as a
/// configured label, since it would be read as an epoch of another root key.
fn looks_like_epoch_label(label: &str) -> bool {
    label.rsplit_once(EPOCH_SEPARATOR).is_some_and(|(base, n)| {
        !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
    })
}

/// An epoch object found on the token.
struct Found {
    number: u64,
    label: String,
    handle: ObjectHandle,
}

impl Pkcs11Kms {
    /// Logs in to the configured token and finds the root key by its label: the highest root
    /// epoch (`<key label>@e<N>`, or the object labelled exactly `<key label>` when no epoch
    /// was ever begun) is the one new wraps use; older epochs still on the token keep
    /// unwrapping the records that have not moved off them yet.
    ///
    /// # Errors
    /// [`Error::Kms`] when the token cannot be reached or logged in to, the key is missing or
    /// ambiguous, the token lacks `CKM_AES_GCM`, or the key is not protected (sensitive and
    /// not extractable).
    pub fn open(config: &Pkcs11Config) -> Result<Self, Error> {
        Self::open_on(config.open_token()?, &config.key_label)
    }

    /// Finds the root key labelled `key_label` (and its root epochs) on an open token.
    ///
    /// # Errors
    /// As [`Self::open`]; also when `key_label` itself ends in `@e<digits>` (configure the
    /// base label: the epochs are found from it).
    pub fn open_on(token: Arc<Pkcs11Token>, key_label: &str) -> Result<Self, Error> {
        check_key_label(key_label)?;
        if !token.supports(MechanismType::AES_GCM)? {
            return Err(kms_err(
                "open root key",
                format!(
                    "token {:?} does not offer CKM_AES_GCM, which this backend wraps KEKs with",
                    token.label
                ),
            ));
        }
        let found = scan_epochs(&token, key_label, &[], "open root key")?;
        let Some(first) = found.first() else {
            return Err(kms_err(
                "open root key",
                format!(
                    "token {:?} has no AES key labelled {key_label:?} (nor any root epoch \
                     {key_label:?}@e<N>); create one with Pkcs11Kms::create (or \
                     `leakless-migrate` key set-up)",
                    token.label
                ),
            ));
        };
        let epochs = KeyChain::new(
            object_id(&token.label, &first.label),
            EpochObject {
                label: first.label.clone(),
                number: first.number,
                handle: Mutex::new(Some(first.handle)),
            },
        );
        for f in found.iter().skip(1) {
            epochs.get_or_append(&object_id(&token.label, &f.label), || EpochObject {
                label: f.label.clone(),
                number: f.number,
                handle: Mutex::new(Some(f.handle)),
            });
        }
        if let Some(last) = found.last() {
            epochs.set_current(&object_id(&token.label, &last.label));
        }
        let kms = Self {
            key_label: key_label.to_owned(),
            token,
            epochs,
            refresh_lock: Mutex::new(()),
            wraps: AtomicU64::new(0),
            unwraps: AtomicU64::new(0),
        };
        for node in kms.epochs.iter() {
            kms.check_protected(node, "open root key")?;
        }
        Ok(kms)
    }

    /// Logs in and generates a new AES-256 root key on the token: `CKA_TOKEN`, `CKA_PRIVATE`,
    /// `CKA_SENSITIVE` true, `CKA_EXTRACTABLE` false, usable only to encrypt and decrypt.
    ///
    /// # Errors
    /// [`Error::Kms`] when a key with this label (or a root epoch of it) exists already, or
    /// as [`Self::open`].
    pub fn create(config: &Pkcs11Config) -> Result<Self, Error> {
        Self::create_on(config.open_token()?, &config.key_label)
    }

    /// Generates a new root key labelled `key_label` on an open token.
    ///
    /// # Errors
    /// As [`Self::create`].
    pub fn create_on(token: Arc<Pkcs11Token>, key_label: &str) -> Result<Self, Error> {
        check_key_label(key_label)?;
        // The scan skips objects that change under it; the exact label is looked up too.
        if !scan_epochs(&token, key_label, &[], "create root key")?.is_empty()
            || !token
                .find("create root key", &key_template(key_label))?
                .is_empty()
        {
            return Err(kms_err(
                "create root key",
                format!(
                    "token {:?} already has a key labelled {key_label:?} (or a root epoch of \
                     it); open it instead, or pick a new label",
                    token.label
                ),
            ));
        }
        generate_root_object(&token, key_label, "create root key")?;
        Self::open_on(token, key_label)
    }

    /// The token holding the root key.
    #[must_use]
    pub fn token(&self) -> &Arc<Pkcs11Token> {
        &self.token
    }

    /// The root key's configured (base) label. The current epoch's object is labelled
    /// [`Self::current_object_label`].
    #[must_use]
    pub fn key_label(&self) -> &str {
        &self.key_label
    }

    /// The label of the object new wraps use: the key label for epoch 0, `<key label>@e<N>`
    /// for epoch N.
    #[must_use]
    pub fn current_object_label(&self) -> &str {
        &self.epochs.current().data.label
    }

    /// The labels of this root key's epoch objects on the token now, oldest first (after a
    /// fresh look, see [`Self::refresh`]): one label normally, two during a shred's move.
    ///
    /// # Errors
    /// As [`Self::refresh`].
    pub fn epoch_object_labels(&self) -> Result<Vec<String>, Error> {
        Ok(self
            .live_epochs()?
            .into_iter()
            .map(|n| n.data.label.clone())
            .collect())
    }

    /// How many wraps and unwraps this backend has run on the token so far: the number the
    /// HSM sees, whatever the key ring counts.
    #[must_use]
    pub fn token_calls(&self) -> TokenCalls {
        TokenCalls {
            wraps: self.wraps.load(Ordering::Relaxed),
            unwraps: self.unwraps.load(Ordering::Relaxed),
        }
    }

    /// Asks the token how the current root key object is protected, including whether
    /// `CKA_VALUE` can be read (it must not). [`Self::open`] refuses keys that fail
    /// [`KeyProtection::is_protected`].
    ///
    /// # Errors
    /// [`Error::Kms`] when the token cannot be asked.
    pub fn key_protection(&self) -> Result<KeyProtection, Error> {
        self.protection_of(self.epochs.current())
    }

    fn protection_of(&self, node: &ChainNode<EpochObject>) -> Result<KeyProtection, Error> {
        let attrs = self.with_key(node, "inspect root key", |s, key| {
            s.get_attributes(
                key,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::AlwaysSensitive,
                    AttributeType::NeverExtractable,
                ],
            )
        })?;
        let mut p = KeyProtection {
            sensitive: false,
            extractable: true,
            always_sensitive: false,
            never_extractable: false,
            value_readable: false,
        };
        for attr in attrs {
            match attr {
                Attribute::Sensitive(b) => p.sensitive = b,
                Attribute::Extractable(b) => p.extractable = b,
                Attribute::AlwaysSensitive(b) => p.always_sensitive = b,
                Attribute::NeverExtractable(b) => p.never_extractable = b,
                _ => {}
            }
        }
        // The token must refuse the value (CKR_ATTRIBUTE_SENSITIVE); cryptoki then leaves it
        // out of the result. Any bytes that do come back are zeroized at once.
        let value = self.with_key(node, "inspect root key", |s, key| {
            s.get_attributes(key, &[AttributeType::Value])
        });
        match value {
            Ok(attrs) => {
                for attr in attrs {
                    if let Attribute::Value(v) = attr {
                        p.value_readable = true;
                        drop(Zeroizing::new(v));
                    }
                }
            }
            Err(Error::Kms { .. }) => {}
            Err(other) => return Err(other),
        }
        Ok(p)
    }

    fn check_protected(
        &self,
        node: &ChainNode<EpochObject>,
        operation: &'static str,
    ) -> Result<(), Error> {
        let protection = self.protection_of(node)?;
        if protection.is_protected() {
            return Ok(());
        }
        Err(kms_err(
            operation,
            format!(
                "{} is not protected by the token ({protection:?}); a root key must be \
                 sensitive and non-extractable: make a new one with Pkcs11Kms::create and \
                 rotate the root onto it",
                node.id
            ),
        ))
    }

    /// Looks for this root key's epoch objects on the token again: adopts epochs made by
    /// another process (after checking that they are protected), makes the highest one
    /// current, and forgets the handles of objects that are gone. Called before every wrap,
    /// when an unwrap meets a root key id of this key that this instance does not hold, and
    /// by the [`RootEpochs`] methods; call it yourself to follow an epoch change at once.
    ///
    /// # Errors
    /// [`Error::Kms`] when the token cannot be searched, no epoch of the key is left, two
    /// objects carry the same epoch label, or a new epoch object is not protected (the
    /// state held so far is kept).
    pub fn refresh(&self) -> Result<(), Error> {
        const OP: &str = "find root epochs";
        let _serial = self
            .refresh_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let expected: Vec<String> = self
            .epochs
            .iter()
            .filter(|n| self.live(&n.id).is_some())
            .map(|n| n.data.label.clone())
            .collect();
        let found = scan_epochs(&self.token, &self.key_label, &expected, OP)?;
        let Some(highest) = found.last() else {
            return Err(kms_err(
                OP,
                format!(
                    "token {:?} holds no root epoch of {:?} any more (every object was \
                     destroyed); this backend keeps what it held",
                    self.token.label, self.key_label
                ),
            ));
        };
        let mut adopted = Vec::new();
        for f in &found {
            let id = object_id(&self.token.label, &f.label);
            let node = self.epochs.get_or_append(&id, || EpochObject {
                label: f.label.clone(),
                number: f.number,
                handle: Mutex::new(None),
            });
            let mut handle = node
                .data
                .handle
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if handle.is_none() {
                adopted.push(node);
            }
            *handle = Some(f.handle);
        }
        for node in adopted {
            if let Err(e) = self.check_protected(node, OP) {
                *node
                    .data
                    .handle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
                return Err(e);
            }
        }
        for node in self.epochs.iter() {
            if !found.iter().any(|f| f.label == node.data.label) {
                *node
                    .data
                    .handle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
            }
        }
        let current = object_id(&self.token.label, &highest.label);
        if self.epochs.current().id != current {
            tracing::info!(
                backend = BACKEND,
                root_key_id = %current,
                "following a new PKCS#11 root epoch"
            );
        }
        self.epochs.set_current(&current);
        Ok(())
    }

    /// The epoch entry with root key id `id` whose object is on the token (as last seen).
    fn live(&self, id: &str) -> Option<&ChainNode<EpochObject>> {
        self.epochs.find(id).filter(|n| {
            n.data
                .handle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some()
        })
    }

    /// Whether `id` names an epoch of this backend's key on this token.
    fn is_own_id(&self, id: &str) -> bool {
        id.strip_prefix("pkcs11:")
            .and_then(|rest| rest.strip_prefix(self.token.label.as_str()))
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|label| epoch_number(&self.key_label, label).is_some())
    }

    /// Runs `f` with the handle of epoch `node` on a session of its own. If the token lost the
    /// login, [`Pkcs11Token`] logs in again and this retry finds the object by label again.
    fn with_key<T>(
        &self,
        node: &ChainNode<EpochObject>,
        operation: &'static str,
        mut f: impl FnMut(&Session, ObjectHandle) -> Result<T, CkError>,
    ) -> Result<T, Error> {
        if node
            .data
            .handle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
        {
            return Err(kms_err(
                operation,
                format!(
                    "root key {} is no longer on token {:?} (its root epoch was destroyed)",
                    node.id, self.token.label
                ),
            ));
        }
        let mut retry = false;
        self.token.with_session(operation, |s| {
            let mut slot = node
                .data
                .handle
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if retry {
                match s.find_objects(&key_template(&node.data.label))?.as_slice() {
                    [k] => *slot = Some(*k),
                    _ => {
                        return Err(CkError::Pkcs11(
                            RvError::KeyHandleInvalid,
                            Function::FindObjects,
                        ));
                    }
                }
            }
            retry = true;
            let key = (*slot).ok_or(CkError::Pkcs11(
                RvError::KeyHandleInvalid,
                Function::FindObjects,
            ))?;
            drop(slot);
            f(s, key)
        })
    }

    fn wrap_under(
        &self,
        node: &ChainNode<EpochObject>,
        kek: &Kek,
        binding: &KekBinding<'_>,
    ) -> Result<WrappedKek, Error> {
        let aad = aad(&node.id, binding);
        let mut iv = [0u8; IV_LEN];
        rand_core::OsRng.fill_bytes(&mut iv);
        // Some HSMs write their own IV into the parameter buffer: `iv` holds, after the
        // call, the IV that was used.
        let ct = self.with_key(node, "wrap KEK", |s, key| {
            let params = GcmParams::new(&mut iv, &aad, 128.into())?; // 128-bit tag
            self.wraps.fetch_add(1, Ordering::Relaxed);
            s.encrypt(&Mechanism::AesGcm(params), key, kek.expose_secret())
        })?;
        if ct.len() != KEY_LEN + TAG_LEN {
            return Err(kms_err(
                "wrap KEK",
                format!(
                    "{} {}: the token returned {} bytes of GCM output, expected {}",
                    binding.scope,
                    binding.version,
                    ct.len(),
                    KEY_LEN + TAG_LEN
                ),
            ));
        }
        let mut ciphertext = Vec::with_capacity(WRAPPED_LEN);
        ciphertext.push(FORMAT_V1);
        ciphertext.extend_from_slice(&iv);
        ciphertext.extend_from_slice(&ct);
        Ok(WrappedKek {
            root_key_id: node.id.clone(),
            ciphertext,
        })
    }

    fn unwrap_under(
        &self,
        node: &ChainNode<EpochObject>,
        wrapped: &WrappedKek,
        binding: &KekBinding<'_>,
    ) -> Result<Kek, Error> {
        let fail = |detail: String| binding.error(BACKEND, "unwrap KEK", detail);
        let bytes = &wrapped.ciphertext;
        if bytes.len() != WRAPPED_LEN {
            return Err(fail(format!(
                "wrapped KEK is {} bytes, expected {WRAPPED_LEN} (truncated or not made by this \
                 backend)",
                bytes.len()
            )));
        }
        let (format, rest) = bytes.split_at(1);
        if format != [FORMAT_V1] {
            return Err(fail(format!(
                "unknown wrapped-KEK format {:#04x}",
                format.first().copied().unwrap_or(0)
            )));
        }
        let (iv, ct) = rest.split_at(IV_LEN);
        let mut iv: [u8; IV_LEN] = iv
            .try_into()
            .map_err(|_| kms_err("unwrap KEK", "bad IV length".into()))?;
        let aad = aad(&node.id, binding);
        let plain = self.with_key(node, "unwrap KEK", |s, key| {
            let params = GcmParams::new(&mut iv, &aad, 128.into())?; // 128-bit tag
            self.unwraps.fetch_add(1, Ordering::Relaxed);
            match s.decrypt(&Mechanism::AesGcm(params), key, ct) {
                Ok(p) => Ok(Some(Zeroizing::new(p))),
                // The tag does not verify: another binding, another key, or altered bytes.
                Err(CkError::Pkcs11(
                    RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange,
                    _,
                )) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        let plain = plain.ok_or_else(|| binding.error(BACKEND, "unwrap KEK", NOT_AUTHENTIC))?;
        binding.kek_from(BACKEND, &plain)
    }
}

/// Refuses a configured key label that would be read as an epoch of another label.
fn check_key_label(label: &str) -> Result<(), Error> {
    if label.is_empty() {
        return Err(kms_err("open root key", "the key label is empty".into()));
    }
    if looks_like_epoch_label(label) {
        return Err(kms_err(
            "open root key",
            format!(
                "key label {label:?} ends in {EPOCH_SEPARATOR}<digits>, which names a root epoch \
                 of another label; configure the base label (the epochs are found from it)"
            ),
        ));
    }
    Ok(())
}

/// The root key id of the epoch object labelled `label` on the token labelled `token`.
fn object_id(token: &str, label: &str) -> String {
    format!("pkcs11:{token}/{label}")
}

/// Every epoch object of the root key configured as `base` on the token, oldest first.
///
/// `expected` are the labels the caller saw on the token last time. SoftHSM2 can briefly
/// leave objects out of a search while it re-reads its token files (another process or thread
/// just changed the token), so a search that misses one of them is repeated a few times, and
/// an object still missing is looked up by its exact label before it is reported gone.
fn scan_epochs(
    token: &Pkcs11Token,
    base: &str,
    expected: &[String],
    operation: &'static str,
) -> Result<Vec<Found>, Error> {
    let mut attempt = 0u64;
    let mut found = loop {
        let found = scan_once(token, base, operation)?;
        let complete = !found.is_empty()
            && expected
                .iter()
                .all(|label| found.iter().any(|f| &f.label == label));
        attempt += 1;
        if complete || attempt >= 4 {
            break found;
        }
        std::thread::sleep(std::time::Duration::from_millis(25 * attempt));
    };
    for label in expected {
        if found.iter().any(|f| &f.label == label) {
            continue;
        }
        let Some(number) = epoch_number(base, label) else {
            continue;
        };
        if let [handle] = token.find(operation, &key_template(label))?.as_slice() {
            found.push(Found {
                number,
                label: label.clone(),
                handle: *handle,
            });
        }
    }
    found.sort_by_key(|f| f.number);
    let twice = found
        .iter()
        .zip(found.iter().skip(1))
        .find(|(a, b)| a.number == b.number);
    if let Some((dup, _)) = twice {
        return Err(kms_err(
            operation,
            format!(
                "token {:?} has several AES keys labelled {:?}; labels must be unique",
                token.label, dup.label
            ),
        ));
    }
    Ok(found)
}

/// One search for the epoch objects of `base` (unsorted).
fn scan_once(
    token: &Pkcs11Token,
    base: &str,
    operation: &'static str,
) -> Result<Vec<Found>, Error> {
    token.with_session(operation, |s| {
        let handles = s.find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
        ])?;
        let mut found = Vec::new();
        for handle in handles {
            let attrs = match s.get_attributes(handle, &[AttributeType::Label]) {
                Ok(a) => a,
                // Destroyed by another session since the search, or changing under it (SoftHSM2
                // re-reading its token files answers the two-call attribute read with lengths
                // that no longer match, which cryptoki reports as `InvalidValue`): skipped
                // here; an expected epoch missed this way is searched again by `scan_epochs`.
                Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _) | CkError::InvalidValue) => {
                    continue;
                }
                Err(e) => return Err(e),
            };
            for attr in attrs {
                if let Attribute::Label(raw) = attr {
                    let Ok(label) = String::from_utf8(raw) else {
                        continue;
                    };
                    if let Some(number) = epoch_number(base, &label) {
                        found.push(Found {
                            number,
                            label,
                            handle,
                        });
                    }
                }
            }
        }
        Ok(found)
    })
}

/// Generates a root key object labelled `label`: `CKA_TOKEN`, `CKA_PRIVATE`, `CKA_SENSITIVE`
/// true, `CKA_EXTRACTABLE` false, usable only to encrypt and decrypt.
fn generate_root_object(
    token: &Pkcs11Token,
    label: &str,
    operation: &'static str,
) -> Result<(), Error> {
    let mut id = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut id);
    let mut template = key_template(label);
    template.extend([
        Attribute::ValueLen(32.into()),
        Attribute::Id(id.to_vec()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
    ]);
    // SoftHSM2 can fail a C_GenerateKey with CKR_GENERAL_ERROR while another thread or
    // process rewrites the token's files. A failed attempt may still have made the object:
    // look for it by label before trying again, so the label never ends up twice.
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        let failed = match token.with_session(operation, |s| {
            s.generate_key(&Mechanism::AesKeyGen, &template)
        }) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        std::thread::sleep(std::time::Duration::from_millis(50 * attempt));
        if !token.find(operation, &key_template(label))?.is_empty() {
            return Ok(());
        }
        if attempt >= 3 {
            return Err(failed);
        }
        tracing::warn!(
            backend = BACKEND,
            token = %token.label,
            error = %failed,
            "generating a root key object failed; trying again"
        );
    }
}

/// The GCM associated data of a wrap under the root key `id`: the binding and the id, under
/// this backend's label (the same layout as the in-process backends').
fn aad(id: &str, binding: &KekBinding<'_>) -> Vec<u8> {
    crate::kms::local::binding_aad(b"leakless.pkcs11.kek-wrap.v1", id, binding)
}

fn key_template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

impl Kms for Pkcs11Kms {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn root_key_id(&self) -> &str {
        &self.epochs.current().id
    }

    fn wrap_kek(&self, kek: &Kek, binding: &KekBinding<'_>) -> Result<WrappedKek, Error> {
        // New KEK versions are rare: look for a newer epoch every time, so a process that
        // opened the token before an epoch change never wraps under a retiring one.
        self.refresh()?;
        self.wrap_under(self.epochs.current(), kek, binding)
    }

    fn unwrap_kek(&self, wrapped: &WrappedKek, binding: &KekBinding<'_>) -> Result<Kek, Error> {
        let mut node = self.live(&wrapped.root_key_id);
        if node.is_none() && self.is_own_id(&wrapped.root_key_id) {
            // An epoch of this key made (or destroyed) since this instance last looked.
            self.refresh()?;
            node = self.live(&wrapped.root_key_id);
        }
        let Some(node) = node else {
            return Err(binding.foreign_root(
                BACKEND,
                "unwrap KEK",
                &wrapped.root_key_id,
                &self.epochs.current().id,
            ));
        };
        self.unwrap_under(node, wrapped, binding)
    }
}

/// Records move onto the next PKCS#11 epoch by `C_Decrypt` under whichever epoch object they
/// are on and `C_Encrypt` under the new one, both on the token.
impl WrapUnderEpoch for Pkcs11Kms {
    fn wrap_under_epoch(
        &self,
        id: &str,
        kek: &Kek,
        binding: &KekBinding<'_>,
    ) -> Result<WrappedKek, Error> {
        let to = self.live(id).ok_or_else(|| {
            kms_err(
                "move to root epoch",
                format!("the next root epoch {id} is not on the token"),
            )
        })?;
        self.wrap_under(to, kek, binding)
    }
}

impl Pkcs11Kms {
    /// The live epochs, oldest first, after a fresh look at the token.
    fn live_epochs(&self) -> Result<Vec<&ChainNode<EpochObject>>, Error> {
        self.refresh()?;
        let mut live: Vec<_> = self
            .epochs
            .iter()
            .filter(|n| self.live(&n.id).is_some())
            .collect();
        live.sort_by_key(|n| n.data.number);
        Ok(live)
    }

    fn copies_may_remain(&self) -> String {
        let mut text = format!(
            "backups of the HSM or token {:?} made before now (HSM backup appliances or backup \
             tokens, cluster backups such as AWS CloudHSM's, key-wrapped exports, replicas or \
             cloned tokens restored from them)",
            self.token.label
        );
        let softhsm = self
            .token
            .module
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("softhsm"));
        if softhsm {
            text.push_str(
                "; SoftHSM2 keeps every object as a file in its token folder \
                 (`directories.tokendir` of the softhsm2.conf named by SOFTHSM2_CONF), encrypted \
                 under a key that the user PIN unlocks: a copy of that folder from a \
                 filesystem snapshot or backup, plus the PIN, still holds the destroyed epoch, \
                 and the deleted object file is unlinked, not overwritten, so its blocks can \
                 survive on disk until reused",
            );
        }
        text
    }
}

impl RootEpochs for Pkcs11Kms {
    fn current_epoch(&self) -> Result<RootEpoch, Error> {
        self.refresh()?;
        Ok(RootEpoch::of_key(self.epochs.current().id.clone()))
    }

    fn begin_next_epoch(&self) -> Result<EpochChange<'_>, Error> {
        const OP: &str = "begin root epoch";
        let live = self.live_epochs()?;
        let (retiring, next) = match live.as_slice() {
            [] => {
                return Err(kms_err(
                    OP,
                    format!("no root epoch of {:?} is on the token", self.key_label),
                ));
            }
            // One epoch: make the next one.
            [only] => {
                let number = only.data.number.checked_add(1).ok_or_else(|| {
                    kms_err(OP, "the epoch number cannot grow any more".to_owned())
                })?;
                let label = epoch_label(&self.key_label, number);
                generate_root_object(&self.token, &label, OP)?;
                self.refresh()?;
                let next = self
                    .live(&object_id(&self.token.label, &label))
                    .ok_or_else(|| {
                        kms_err(
                            OP,
                            format!("the new epoch object {label:?} is not found on the token"),
                        )
                    })?;
                tracing::info!(
                    backend = BACKEND,
                    retiring = %only.id,
                    next = %next.id,
                    "made the next PKCS#11 root epoch"
                );
                (only.id.clone(), next.id.clone())
            }
            // An interrupted shred left the next epoch made already: resume onto it (records
            // may have moved there). Destroying the retiring epoch destroys every older one.
            [.., retiring, next] => (retiring.id.clone(), next.id.clone()),
        };
        Ok(EpochChange::rewrap_onto(self, retiring, next))
    }

    fn destroy_epoch(&self, epoch: &RootEpoch) -> Result<EpochDestroyed, Error> {
        const OP: &str = "destroy root epoch";
        let label = epoch
            .root_key_id
            .strip_prefix("pkcs11:")
            .and_then(|rest| rest.strip_prefix(self.token.label.as_str()))
            .and_then(|rest| rest.strip_prefix('/'));
        let number = label.and_then(|l| epoch_number(&self.key_label, l));
        let (Some(number), None) = (number, epoch.key_version) else {
            return Err(Error::InvalidInput {
                what: "root epoch",
                problem: format!(
                    "{epoch} is not a root epoch of {:?} on token {:?}",
                    self.key_label, self.token.label
                ),
            });
        };
        let live = self.live_epochs()?;
        let current = live.last().map_or(0, |n| n.data.number);
        if number >= current {
            return Err(Error::InvalidInput {
                what: "root epoch",
                problem: format!(
                    "{epoch} is the current root epoch (or newer): begin the next epoch and \
                     move every record onto it first"
                ),
            });
        }
        let outcome = |status| EpochDestroyed {
            epoch: epoch.clone(),
            status,
            copies_may_remain: self.copies_may_remain(),
        };
        let doomed: Vec<String> = live
            .iter()
            .filter(|n| n.data.number <= number)
            .map(|n| n.data.label.clone())
            .collect();
        if doomed.is_empty() {
            return Ok(outcome(Destruction::AlreadyGone));
        }
        for label in &doomed {
            // Found again by label on the same session, so a stale handle never destroys
            // another object.
            self.token.with_session(OP, |s| {
                for handle in s.find_objects(&key_template(label))? {
                    s.destroy_object(handle)?;
                }
                Ok(())
            })?;
        }
        let left = self.live_epochs()?;
        if let Some(still) = left.iter().find(|n| doomed.contains(&n.data.label)) {
            return Err(kms_err(
                OP,
                format!("the token still holds {} after C_DestroyObject", still.id),
            ));
        }
        tracing::info!(
            backend = BACKEND,
            destroyed = %epoch,
            objects = doomed.len(),
            current = %self.epochs.current().id,
            "destroyed a PKCS#11 root epoch"
        );
        Ok(outcome(Destruction::Destroyed))
    }
}
