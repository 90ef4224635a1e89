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

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::key::WrappedKek;
use crate::kms::epoch::{
    ChainNode, Destruction, EpochChange, EpochDestroyed, KeyChain, RootEpoch, RootEpochs,
};
use crate::kms::{InKmsRewrap, KekBinding, Kms};
use crate::secret::{KEY_LEN, Kek};

const BACKEND: &str = "pkcs11";
const FORMAT_V1: u8 = 1;
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
const WRAPPED_LEN: usize = 1 + IV_LEN + KEY_LEN + TAG_LEN;
/// Idle sessions kept per token; more are opened under load and closed when returned.
const POOL_IDLE_MAX: usize = 8;

/// The default key label of [`Pkcs11Config::from_env`].
pub const DEFAULT_KEY_LABEL: &str = "leakless-root";

/// Where the token's user PIN comes from. Neither form is ever logged or echoed in errors.
#[derive(Clone, PartialEq, Eq)]
pub enum PinSource {
    /// A file holding the PIN (one trailing newline allowed). Must not be readable, writable
    /// or executable by group or others (mode `0600` or stricter).
    File(PathBuf),
    /// The name of an environment variable holding the PIN.
    Env(String),
}

impl fmt::Debug for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinSource::File(p) => write!(f, "PinSource::File({})", p.display()),
            PinSource::Env(v) => write!(f, "PinSource::Env({v})"),
        }
    }
}

impl PinSource {
    /// Reads the PIN. The returned buffer is zeroized on drop.
    fn read(&self, operation: &'static str) -> Result<Zeroizing<String>, Error> {
        let pin = match self {
            PinSource::File(path) => {
                let raw = super::secret_file::read(path, 4096).map_err(|problem| {
                    kms_err(operation, format!("PIN file {}: {problem}", path.display()))
                })?;
                let text = std::str::from_utf8(&raw).map_err(|_| {
                    kms_err(
                        operation,
                        format!("PIN file {} is not UTF-8 text", path.display()),
                    )
                })?;
                Zeroizing::new(text.to_owned())
            }
            PinSource::Env(var) => Zeroizing::new(std::env::var(var).map_err(|_| {
                kms_err(
                    operation,
                    format!("environment variable {var} (the token PIN) is not set or not UTF-8"),
                )
            })?),
        };
        let trimmed = pin.trim_end_matches(['\n', '\r']);
        if trimmed.is_empty() || trimmed.len() > 255 {
            return Err(kms_err(
                operation,
                format!("{self:?} must hold a PIN of 1 to 255 bytes"),
            ));
        }
        Ok(Zeroizing::new(trimmed.to_owned()))
    }
}

/// How to reach a root key on a PKCS#11 token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkcs11Config {
    /// The vendor's PKCS#11 module (see the table in the [module docs](self)).
    pub module: PathBuf,
    /// The token label (`CKA_LABEL` of the token, as `pkcs11-tool -L` shows it).
    pub token_label: String,
    /// The root key's object label.
    pub key_label: String,
    /// Where the user PIN comes from.
    pub pin: PinSource,
}

impl Pkcs11Config {
    /// Reads `LEAKLESS_PKCS11_MODULE`, `LEAKLESS_PKCS11_TOKEN`, `LEAKLESS_PKCS11_KEY_LABEL`
    /// (default [`DEFAULT_KEY_LABEL`]) and the PIN source: `LEAKLESS_PKCS11_PIN_FILE` if set,
    /// else the variable `LEAKLESS_PKCS11_PIN`.
    ///
    /// # Errors
    /// [`Error::Kms`] naming the first missing variable.
    pub fn from_env() -> Result<Self, Error> {
        let need = |var: &str| {
            std::env::var(var).map_err(|_| {
                kms_err(
                    "read configuration",
                    format!("environment variable {var} is not set"),
                )
            })
        };
        let module = PathBuf::from(need("LEAKLESS_PKCS11_MODULE")?);
        let token_label = need("LEAKLESS_PKCS11_TOKEN")?;
        let key_label = std::env::var("LEAKLESS_PKCS11_KEY_LABEL")
            .unwrap_or_else(|_| DEFAULT_KEY_LABEL.to_owned());
        let pin = match std::env::var_os("LEAKLESS_PKCS11_PIN_FILE") {
            Some(path) => PinSource::File(PathBuf::from(path)),
            None if std::env::var_os("LEAKLESS_PKCS11_PIN").is_some() => {
                PinSource::Env("LEAKLESS_PKCS11_PIN".to_owned())
            }
            None => {
                return Err(kms_err(
                    "read configuration",
                    "set LEAKLESS_PKCS11_PIN_FILE (a 0600 file) or LEAKLESS_PKCS11_PIN".into(),
                ));
            }
        };
        Ok(Self {
            module,
            token_label,
            key_label,
            pin,
        })
    }
}

fn kms_err(operation: &'static str, detail: String) -> Error {
    Error::Kms {
        backend: BACKEND,
        operation,
        detail,
    }
}

/// A PKCS#11 failure as text: the function and the `CKR_` code, never arguments.
fn describe(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => {
            format!("C_{function:?} returned {}", ckr_name(*rv))
        }
        CkError::LibraryLoading(l) => format!("cannot load the PKCS#11 module: {l}"),
        other => format!("{other}"),
    }
}

/// `PinIncorrect` -> `CKR_PIN_INCORRECT` (cryptoki's `Debug` is the CamelCase form of the
/// spec's name; its `Display` is a paragraph).
fn ckr_name(rv: RvError) -> String {
    let camel = format!("{rv:?}");
    let mut out = String::from("CKR");
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

// ----- process-wide module contexts and login records -------------------------------------

struct Registry {
    modules: HashMap<PathBuf, Pkcs11>,
    /// Keyed hash of the PIN each (module, slot) was logged in with by this process.
    logins: HashMap<(PathBuf, u64), [u8; 32]>,
    /// Slot of each (module, token label) found so far.
    slots: HashMap<(PathBuf, String), Slot>,
    /// Random key for those hashes; made once per process, never stored.
    pin_key: Zeroizing<[u8; 32]>,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| {
    let mut pin_key = Zeroizing::new([0u8; 32]);
    rand_core::OsRng.fill_bytes(&mut *pin_key);
    Mutex::new(Registry {
        modules: HashMap::new(),
        logins: HashMap::new(),
        slots: HashMap::new(),
        pin_key,
    })
});

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

fn module_context(module: &Path) -> Result<Pkcs11, Error> {
    let mut reg = registry();
    if let Some(ctx) = reg.modules.get(module) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(module).map_err(|e| {
        kms_err(
            "load module",
            format!(
                "cannot load PKCS#11 module {}: {} (check the path in the backend \
                 configuration; see docs/kms.md for vendor module paths)",
                module.display(),
                describe(&e)
            ),
        )
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(kms_err(
                "initialize module",
                format!("{}: {}", module.display(), describe(&e)),
            ));
        }
    }
    reg.modules.insert(module.to_path_buf(), ctx.clone());
    Ok(ctx)
}

fn pin_tag(key: &[u8; 32], pin: &str) -> Result<[u8; 32], Error> {
    // HMAC accepts keys of any length; the error arm cannot happen.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .map_err(|_| kms_err("log in", "HMAC-SHA256 refused a 32-byte key".into()))?;
    mac.update(pin.as_bytes());
    Ok(mac.finalize().into_bytes().into())
}

/// The slot of the token labelled `token_label`, looked up once per process and module.
///
/// Enumerating slots while another thread or process writes token objects can, on SoftHSM2,
/// briefly show a token as uninitialized (its files are being rewritten), so the look-up is
/// cached, and a miss is retried a few times before it is reported.
fn find_slot(ctx: &Pkcs11, module: &Path, token_label: &str) -> Result<Slot, Error> {
    let key = (module.to_path_buf(), token_label.to_owned());
    if let Some(slot) = registry().slots.get(&key) {
        return Ok(*slot);
    }
    let mut last = None;
    for attempt in 0..5u32 {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(50 * u64::from(attempt)));
        }
        match scan_slots(ctx, module, token_label) {
            Ok(slot) => {
                registry().slots.insert(key, slot);
                return Ok(slot);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| kms_err("find token", "no attempt was made".into())))
}

fn scan_slots(ctx: &Pkcs11, module: &Path, token_label: &str) -> Result<Slot, Error> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| kms_err("find token", describe(&e)))?;
    let mut found = Vec::new();
    let mut seen = Vec::new();
    for slot in slots {
        // A token that cannot be read right now (SoftHSM2 while another process rewrites
        // its files, a card being removed) is not the one we want; note it and go on.
        let info = match ctx.get_token_info(slot) {
            Ok(info) => info,
            Err(e) => {
                seen.push(format!("(slot {}: {})", slot.id(), describe(&e)));
                continue;
            }
        };
        if !info.token_initialized() {
            continue;
        }
        let label = info.label().trim_end().to_owned();
        if label == token_label {
            found.push(slot);
        }
        seen.push(label);
    }
    match found.as_slice() {
        [slot] => Ok(*slot),
        [] => Err(kms_err(
            "find token",
            format!(
                "no token labelled {token_label:?} in {} (tokens present: {seen:?})",
                module.display()
            ),
        )),
        _ => Err(kms_err(
            "find token",
            format!(
                "{} tokens are labelled {token_label:?} in {}; give each a unique label",
                found.len(),
                module.display()
            ),
        )),
    }
}

/// Whether a failure means the session or the login is gone (so logging in again may help),
/// rather than a refusal of the request itself.
fn login_lost(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::UserNotLoggedIn
                | RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceRemoved
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid,
            _
        )
    )
}

// ----- tokens ------------------------------------------------------------------------------

/// A logged-in PKCS#11 token: the session pool that [`Pkcs11Kms`] and the Shamir share store
/// use. Cheap to share behind an `Arc`; every method is safe to call from many threads.
pub struct Pkcs11Token {
    ctx: Pkcs11,
    slot: Slot,
    module: PathBuf,
    label: String,
    /// Where the PIN comes from (not the PIN), to log in again after a lost login.
    pin: PinSource,
    pool: Mutex<Vec<Session>>,
}

impl fmt::Debug for Pkcs11Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Token")
            .field("module", &self.module)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Token {
    /// Loads `module` (once per process), finds the token labelled `token_label`, and logs in
    /// as the user with the PIN from `pin`.
    ///
    /// # Errors
    /// [`Error::Kms`] with operation `"load module"`, `"find token"` (no or several tokens with
    /// that label) or `"log in"` (wrong PIN, locked PIN). The PIN is never in the error.
    pub fn open(module: &Path, token_label: &str, pin: &PinSource) -> Result<Self, Error> {
        let ctx = module_context(module)?;
        let slot = find_slot(&ctx, module, token_label)?;
        let token = Self {
            ctx,
            slot,
            module: module.to_path_buf(),
            label: token_label.to_owned(),
            pin: pin.clone(),
            pool: Mutex::new(Vec::new()),
        };
        token.login(pin)?;
        Ok(token)
    }

    fn login(&self, pin: &PinSource) -> Result<(), Error> {
        let pin_text = pin.read("log in")?;
        let session = self.new_session()?;
        let auth = AuthPin::from(pin_text.as_str());
        let key = (self.module.clone(), self.slot.id());
        // Logins are serialized (under the registry lock): a second login racing the first
        // must find the first one's PIN record, or it could not check its own PIN.
        let mut reg = registry();
        let tag = pin_tag(&reg.pin_key, &pin_text)?;
        let result = session.login(UserType::User, Some(&auth));
        match result {
            Ok(()) => {
                reg.logins.insert(key, tag);
            }
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => match reg.logins.get(&key) {
                // Logged in already by this process: the PIN must be the same one.
                Some(known) if bool::from(known.ct_eq(&tag)) => {}
                Some(_) => return Err(self.wrong_pin(pin)),
                // Logged in by other code in this process, outside leakless: trust the
                // token's state, as PKCS#11 itself does, and remember this PIN.
                None => {
                    reg.logins.insert(key, tag);
                }
            },
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => return Err(self.wrong_pin(pin)),
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                return Err(kms_err(
                    "log in",
                    format!(
                        "the user PIN of token {:?} is locked after too many wrong tries; the \
                         security officer must reset it",
                        self.label
                    ),
                ));
            }
            Err(e) => {
                return Err(kms_err(
                    "log in",
                    format!("token {:?}: {}", self.label, describe(&e)),
                ));
            }
        }
        drop(reg);
        // This session stays in the pool: a token stays logged in while any session is open.
        self.give_back(session);
        Ok(())
    }

    fn wrong_pin(&self, pin: &PinSource) -> Error {
        kms_err(
            "log in",
            format!(
                "token {:?} refused the PIN from {pin:?} (CKR_PIN_INCORRECT); check that it \
                 is the user PIN of this token",
                self.label
            ),
        )
    }

    /// The token's label.
    #[must_use]
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The module this token is reached through.
    #[must_use]
    pub fn module(&self) -> &Path {
        &self.module
    }

    fn new_session(&self) -> Result<Session, Error> {
        self.ctx.open_rw_session(self.slot).map_err(|e| {
            kms_err(
                "open session",
                format!("token {:?}: {}", self.label, describe(&e)),
            )
        })
    }

    fn give_back(&self, session: Session) {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < POOL_IDLE_MAX {
            pool.push(session);
        }
    }

    /// Runs `f` on a session of its own: one from the pool, or a new one. When the call
    /// fails because the token lost the session or the login (an HSM restart, a network
    /// HSM's reconnect, another part of the process calling `C_Logout`), it logs in again
    /// (reading the PIN from its source once more) and retries once on a fresh session.
    fn with_session<T>(
        &self,
        operation: &'static str,
        mut f: impl FnMut(&Session) -> Result<T, CkError>,
    ) -> Result<T, Error> {
        let first = self.attempt(&mut f)?;
        let result = match first {
            Err(e) if login_lost(&e) => {
                tracing::warn!(
                    backend = BACKEND,
                    token = %self.label,
                    operation,
                    error = %describe(&e),
                    "PKCS#11 session or login lost; logging in again and retrying once"
                );
                self.pool
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear();
                self.login(&self.pin)?;
                self.attempt(&mut f)?
            }
            other => other,
        };
        result.map_err(|e| {
            kms_err(
                operation,
                format!("token {:?}: {}", self.label, describe(&e)),
            )
        })
    }

    fn attempt<T>(
        &self,
        f: &mut impl FnMut(&Session) -> Result<T, CkError>,
    ) -> Result<Result<T, CkError>, Error> {
        let pooled = self
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let session = match pooled {
            Some(s) => s,
            None => self.new_session()?,
        };
        let result = f(&session);
        match &result {
            // A session the token closed or lost is not put back.
            Err(e) if login_lost(e) => {}
            _ => self.give_back(session),
        }
        Ok(result)
    }

    fn supports(&self, mechanism: MechanismType) -> Result<bool, Error> {
        let list = self.ctx.get_mechanism_list(self.slot).map_err(|e| {
            kms_err(
                "list mechanisms",
                format!("token {:?}: {}", self.label, describe(&e)),
            )
        })?;
        Ok(list.contains(&mechanism))
    }

    fn find(
        &self,
        operation: &'static str,
        template: &[Attribute],
    ) -> Result<Vec<ObjectHandle>, Error> {
        self.with_session(operation, |s| s.find_objects(template))
    }

    fn data_template(label: &str) -> Vec<Attribute> {
        vec![
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(DATA_APPLICATION.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
        ]
    }

    /// Stores `value` as a private token data object (`CKO_DATA`, `CKA_TOKEN` and
    /// `CKA_PRIVATE` true, application `leakless`) labelled `label`. Refuses to replace an
    /// existing object with that label.
    ///
    /// # Errors
    /// [`Error::Kms`] when an object with that label exists or the token refuses.
    pub fn put_data(&self, label: &str, value: &[u8]) -> Result<(), Error> {
        if !self
            .find("store data object", &Self::data_template(label))?
            .is_empty()
        {
            return Err(kms_err(
                "store data object",
                format!(
                    "token {:?} already holds a leakless data object labelled {label:?}; \
                     delete it first if it is stale",
                    self.label
                ),
            ));
        }
        let mut template = Self::data_template(label);
        template.extend([
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Modifiable(false),
            Attribute::Value(value.to_vec()),
        ]);
        let result = self.with_session("store data object", |s| s.create_object(&template));
        // The template held a copy of the value.
        for attr in &mut template {
            if let Attribute::Value(v) = attr {
                zeroize::Zeroize::zeroize(v);
            }
        }
        result.map(|_| ())
    }

    /// Reads the data object labelled `label` stored by [`Self::put_data`], if there is one.
    ///
    /// # Errors
    /// [`Error::Kms`] when several objects have that label or the token refuses.
    pub fn get_data(&self, label: &str) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
        let found = self.find("read data object", &Self::data_template(label))?;
        let handle = match found.as_slice() {
            [] => return Ok(None),
            [h] => *h,
            _ => {
                return Err(kms_err(
                    "read data object",
                    format!(
                        "token {:?} holds {} data objects labelled {label:?}",
                        self.label,
                        found.len()
                    ),
                ));
            }
        };
        let attrs = self.with_session("read data object", |s| {
            s.get_attributes(handle, &[AttributeType::Value])
        })?;
        for attr in attrs {
            if let Attribute::Value(v) = attr {
                return Ok(Some(Zeroizing::new(v)));
            }
        }
        Err(kms_err(
            "read data object",
            format!("token {:?} returned no value for {label:?}", self.label),
        ))
    }

    /// Deletes the data object labelled `label`. Returns whether there was one.
    ///
    /// # Errors
    /// [`Error::Kms`] when the token refuses.
    pub fn delete_data(&self, label: &str) -> Result<bool, Error> {
        let found = self.find("delete data object", &Self::data_template(label))?;
        for handle in &found {
            let handle = *handle;
            self.with_session("delete data object", |s| s.destroy_object(handle))?;
        }
        Ok(!found.is_empty())
    }

    /// The labels of the leakless data objects on this token whose label starts with `prefix`.
    ///
    /// # Errors
    /// [`Error::Kms`] when the token refuses.
    pub fn data_labels(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let found = self.find(
            "list data objects",
            &[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Application(DATA_APPLICATION.to_vec()),
            ],
        )?;
        let mut labels = Vec::new();
        for handle in found {
            let attrs = self.with_session("list data objects", |s| {
                s.get_attributes(handle, &[AttributeType::Label])
            })?;
            for attr in attrs {
                if let Attribute::Label(l) = attr {
                    let l = String::from_utf8_lossy(&l).into_owned();
                    if l.starts_with(prefix) {
                        labels.push(l);
                    }
                }
            }
        }
        labels.sort();
        Ok(labels)
    }
}

/// `CKA_APPLICATION` of the data objects leakless stores on tokens.
const DATA_APPLICATION: &[u8] = b"leakless";

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

impl fmt::Debug for Pkcs11Kms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Kms")
            .field("root_key_id", &self.epochs.current().id)
            .field("module", &self.token.module)
            .finish_non_exhaustive()
    }
}

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
        let token = Arc::new(Pkcs11Token::open(
            &config.module,
            &config.token_label,
            &config.pin,
        )?);
        Self::open_on(token, &config.key_label)
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
        let token = Arc::new(Pkcs11Token::open(
            &config.module,
            &config.token_label,
            &config.pin,
        )?);
        Self::create_on(token, &config.key_label)
    }

    /// Generates a new root key labelled `key_label` on an open token.
    ///
    /// # Errors
    /// As [`Self::create`].
    pub fn create_on(token: Arc<Pkcs11Token>, key_label: &str) -> Result<Self, Error> {
        check_key_label(key_label)?;
        if !scan_epochs(&token, key_label, &[], "create root key")?.is_empty() {
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
        let fail = |detail: String| kms_err("unwrap KEK", detail);
        let bytes = &wrapped.ciphertext;
        if bytes.len() != WRAPPED_LEN {
            return Err(fail(format!(
                "{} {}: wrapped KEK is {} bytes, expected {WRAPPED_LEN} (truncated or not made \
                 by this backend)",
                binding.scope,
                binding.version,
                bytes.len()
            )));
        }
        let (format, rest) = bytes.split_at(1);
        if format != [FORMAT_V1] {
            return Err(fail(format!(
                "{} {}: unknown wrapped-KEK format {:#04x}",
                binding.scope,
                binding.version,
                format.first().copied().unwrap_or(0)
            )));
        }
        let (iv, ct) = rest.split_at(IV_LEN);
        let mut iv: [u8; IV_LEN] = iv.try_into().map_err(|_| fail("bad IV length".into()))?;
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
        let plain = plain.ok_or_else(|| {
            fail(format!(
                "{} {}: wrapped KEK does not authenticate (altered, or bound to another scope \
                 or version)",
                binding.scope, binding.version
            ))
        })?;
        Kek::try_from_slice(&plain).ok_or_else(|| {
            fail(format!(
                "{} {}: unwrapped KEK has the wrong length",
                binding.scope, binding.version
            ))
        })
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
                // Destroyed by another session since the search: not ours to report.
                Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => continue,
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

/// The GCM associated data of a wrap under the root key `id`.
fn aad(id: &str, binding: &KekBinding<'_>) -> Vec<u8> {
    let scope = binding.scope.as_str().as_bytes();
    let mut aad = Vec::with_capacity(32 + scope.len() + id.len());
    aad.extend_from_slice(b"leakless.pkcs11.kek-wrap.v1");
    // Scope names are at most 64 bytes; token and key labels are short.
    aad.push(u8::try_from(scope.len()).unwrap_or(u8::MAX));
    aad.extend_from_slice(scope);
    aad.extend_from_slice(&binding.version.get().to_be_bytes());
    aad.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
    aad.extend_from_slice(id.as_bytes());
    aad
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
            return Err(kms_err(
                "unwrap KEK",
                format!(
                    "{} {} is wrapped under root key {}, but this backend holds {}",
                    binding.scope,
                    binding.version,
                    wrapped.root_key_id,
                    self.epochs.current().id
                ),
            ));
        };
        self.unwrap_under(node, wrapped, binding)
    }
}

/// Moves records onto the next PKCS#11 epoch: `C_Decrypt` under whichever epoch object they
/// are on, `C_Encrypt` under the new one, both on the token. The KEK is in this process's
/// memory in between (as on every unwrap), zeroized on drop.
struct Pkcs11Move<'a> {
    kms: &'a Pkcs11Kms,
    to: String,
}

impl InKmsRewrap for Pkcs11Move<'_> {
    fn needs_rewrap(&self, wrapped: &WrappedKek) -> bool {
        wrapped.root_key_id != self.to
    }

    fn rewrap(&self, wrapped: &WrappedKek, binding: &KekBinding<'_>) -> Result<WrappedKek, Error> {
        let kek = self.kms.unwrap_kek(wrapped, binding)?;
        let to = self.kms.live(&self.to).ok_or_else(|| {
            kms_err(
                "move to root epoch",
                format!("the next root epoch {} is not on the token", self.to),
            )
        })?;
        self.kms.wrap_under(to, &kek, binding)
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
        Ok(EpochChange::new(
            RootEpoch::of_key(retiring),
            RootEpoch::of_key(next.clone()),
            Box::new(Pkcs11Move {
                kms: self,
                to: next,
            }),
        ))
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
