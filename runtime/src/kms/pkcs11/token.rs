//! The token and session layer of the PKCS#11 backend: the module's one `C_Initialize` per
//! process, finding a token's slot by label, logging in with a PIN from a file or the
//! environment, a pool of logged-in sessions that survives a token losing its login, and the
//! token's data objects. [`super::Pkcs11Kms`] runs the root key's GCM wraps over it.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::Error;

use super::{BACKEND, kms_err};
use crate::kms::debug_fields;

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
                let raw = crate::kms::secret_file::read(path, 4096).map_err(|problem| {
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
    /// The vendor's PKCS#11 module (see the table in the [module docs](super)).
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

    /// Loads the module and logs in to the configured token ([`Pkcs11Token::open`]).
    pub(crate) fn open_token(&self) -> Result<std::sync::Arc<Pkcs11Token>, Error> {
        Pkcs11Token::open(&self.module, &self.token_label, &self.pin).map(std::sync::Arc::new)
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

/// A logged-in PKCS#11 token: the session pool that [`Pkcs11Kms`](super::Pkcs11Kms) and the Shamir share store
/// use. Cheap to share behind an `Arc`; every method is safe to call from many threads.
pub struct Pkcs11Token {
    ctx: Pkcs11,
    slot: Slot,
    pub(super) module: PathBuf,
    pub(super) label: String,
    /// Where the PIN comes from (not the PIN), to log in again after a lost login.
    pin: PinSource,
    pool: Mutex<Vec<Session>>,
}

debug_fields!(Pkcs11Token, |token| {
    "module": token.module,
    "label": token.label,
});

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
    pub(super) fn with_session<T>(
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

    pub(super) fn supports(&self, mechanism: MechanismType) -> Result<bool, Error> {
        let list = self.ctx.get_mechanism_list(self.slot).map_err(|e| {
            kms_err(
                "list mechanisms",
                format!("token {:?}: {}", self.label, describe(&e)),
            )
        })?;
        Ok(list.contains(&mechanism))
    }

    pub(super) fn find(
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
