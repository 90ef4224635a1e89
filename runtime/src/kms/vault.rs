//! The Vault Transit backend (HashiCorp Vault or OpenBao): the root key is a Transit key that
//! never leaves Vault; KEKs are wrapped by `transit/encrypt` and unwrapped by `transit/decrypt`.
//!
//! # Binding
//!
//! The Transit key must be a **derived** key (`derived=true`): every call passes a `context`
//! made of the KEK's scope and version, and Vault derives the actual encryption key from it.
//! A wrapped KEK presented with another scope or version therefore fails to decrypt inside
//! Vault. [`VaultTransitKms::connect`] refuses a key that is not derived, since the binding
//! would silently not be enforced.
//!
//! # Versions
//!
//! Transit keys have versions. `encrypt` always uses the newest; a wrapped KEK records its
//! version in its `vault:vN:` prefix. After [`VaultTransitKms::rotate_key`],
//! [`KeyRing::rewrap_root_in_kms`](crate::KeyRing::rewrap_root_in_kms) with
//! [`VaultTransitKms::rewrap_to_latest`] moves every stored KEK onto the newest version inside
//! Vault (`transit/rewrap`, the KEK never leaves Vault), after which
//! [`VaultTransitKms::set_min_decryption_version`] can make the old versions unusable.
//!
//! # Root epochs
//!
//! [`RootEpochs`] for Transit: an epoch is a key version. The next epoch is
//! `MOUNT/keys/NAME/rotate`; records move with `rewrap` inside Vault; destroying the old epoch
//! raises `min_decryption_version` and `min_encryption_version` to the first version that
//! survives and then calls `MOUNT/keys/NAME/trim` with `min_available_version` set to it, which
//! deletes every older version's key material from Vault's storage (it needs neither
//! `deletion_allowed` nor an exportable key). Applications keep the same configuration (the
//! key name): `encrypt` uses the newest version and `decrypt` reads the version from the
//! ciphertext, so nothing restarts. The token of the process that shreds needs `update` on
//! `MOUNT/keys/NAME/rotate`, `MOUNT/keys/NAME/config`, `MOUNT/keys/NAME/trim` and
//! `MOUNT/rewrap/NAME`; the applications' tokens need none of these.
//!
//! # Transport and credentials
//!
//! Blocking HTTP(S) through `ureq` (rustls). Token auth: the token is read from a file or an
//! environment variable, held in zeroizing memory, sent as a sensitive header, and never
//! appears in `Debug`, logs or errors. Every call goes through the backend's
//! [`RetryPolicy`]: connection failures, timeouts, HTTP 429 and 5xx (Vault answers 503 while
//! sealed or in standby) are retried with jittered backoff; 4xx answers are not.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use tracing::debug;
use ureq::http::HeaderValue;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::key::WrappedKek;
use crate::kms::epoch::{Destruction, EpochChange, EpochDestroyed, RootEpoch, RootEpochs};
use crate::kms::retry::{Attempt, Failure, RetryCounts, RetryPolicy, RetryStats, short_line};
use crate::kms::{InKmsRewrap, KekBinding, Kms, debug_fields};
use crate::redact::redact_url;
use crate::secret::Kek;

/// The environment variable [`VaultConfig::from_env`] reads the server address from
/// (`http://127.0.0.1:8200`, `https://vault.example:8200`).
pub const VAULT_ADDR_ENV: &str = "LEAKLESS_VAULT_ADDR";
/// The environment variable [`VaultConfig::from_env`] reads a CA certificate file (PEM) from.
pub const VAULT_CACERT_ENV: &str = "LEAKLESS_VAULT_CACERT";
/// The environment variable [`VaultToken::from_env`] reads a token file path from (preferred).
pub const VAULT_TOKEN_FILE_ENV: &str = "LEAKLESS_VAULT_TOKEN_FILE";
/// The environment variable [`VaultToken::from_env`] reads the token itself from, when no
/// token file is named.
pub const VAULT_TOKEN_ENV: &str = "LEAKLESS_VAULT_TOKEN";

const BACKEND: &str = "vault";
const CONTEXT_LABEL: &[u8] = b"leakless.vault-transit.kek.v1";

/// A Vault token. Zeroized on drop; `Debug` prints no part of it.
pub struct VaultToken(Zeroizing<String>);

impl std::fmt::Debug for VaultToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VaultToken(<redacted>)")
    }
}

impl VaultToken {
    /// Takes a token as a string.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when it is empty or holds whitespace or control characters
    /// (which no Vault token does, and which could not be sent as a header). The token is not
    /// part of the error.
    pub fn new(token: impl Into<String>) -> Result<Self, Error> {
        let token = Zeroizing::new(token.into());
        let trimmed = token.trim();
        if trimmed.is_empty() || trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::InvalidInput {
                what: "Vault token",
                problem: "must be one non-empty word without whitespace or control characters"
                    .into(),
            });
        }
        Ok(Self(Zeroizing::new(trimmed.to_owned())))
    }

    /// Reads a token from a file (surrounding whitespace is ignored). The file must not be
    /// readable, writable or executable by group or others.
    ///
    /// # Errors
    /// [`Error::KeyFile`] when the file is missing, has loose permissions, or holds no valid
    /// token.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let key_err = |problem: String| Error::KeyFile {
            path: path.to_path_buf(),
            problem,
        };
        let meta = std::fs::metadata(path).map_err(|e| key_err(format!("cannot read it: {e}")))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(key_err(format!(
                    "mode {:04o} lets group or others access this Vault token; run `chmod 600` \
                     on it and revoke the token if someone else may have read it",
                    mode & 0o7777
                )));
            }
        }
        if !meta.is_file() {
            return Err(key_err("is not a regular file".into()));
        }
        let raw = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| key_err(format!("cannot read it: {e}")))?,
        );
        Self::new(raw.as_str()).map_err(|_| {
            key_err("does not hold a Vault token (one word, no whitespace inside)".into())
        })
    }

    /// Reads the token from the file named by `LEAKLESS_VAULT_TOKEN_FILE`, or else from
    /// `LEAKLESS_VAULT_TOKEN`.
    ///
    /// # Errors
    /// [`Error::Kms`] when neither variable is set; the errors of [`Self::from_file`] and
    /// [`Self::new`] otherwise.
    pub fn from_env() -> Result<Self, Error> {
        if let Some(path) = std::env::var_os(VAULT_TOKEN_FILE_ENV) {
            return Self::from_file(path);
        }
        match std::env::var(VAULT_TOKEN_ENV) {
            Ok(token) => Self::new(token),
            Err(_) => Err(Error::Kms {
                backend: BACKEND,
                operation: "load token",
                detail: format!(
                    "neither {VAULT_TOKEN_FILE_ENV} (a token file, preferred) nor \
                     {VAULT_TOKEN_ENV} is set"
                ),
            }),
        }
    }

    fn header(&self) -> Result<HeaderValue, Error> {
        let mut value = HeaderValue::from_str(&self.0).map_err(|_| Error::InvalidInput {
            what: "Vault token",
            problem: "cannot be sent as an HTTP header".into(),
        })?;
        value.set_sensitive(true);
        Ok(value)
    }
}

/// Where the Transit key lives, and the retry budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultConfig {
    /// The server, e.g. `https://vault.example:8200` (no path).
    pub addr: String,
    /// The Transit mount path. Default: `transit`.
    pub mount: String,
    /// The Transit key's name.
    pub key: String,
    /// A Vault Enterprise / OpenBao namespace, sent as `X-Vault-Namespace`. Default: none.
    pub namespace: Option<String>,
    /// A PEM file of CA certificates to trust for an `https://` address, instead of the
    /// built-in web PKI roots (for a Vault with an internal CA). Default: none.
    pub ca_cert: Option<PathBuf>,
    /// Retries of every call. Default: [`RetryPolicy::default`].
    pub retry: RetryPolicy,
}

impl VaultConfig {
    /// A config for `key` on the Transit mount `transit` of the server at `addr`.
    #[must_use]
    pub fn new(addr: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            mount: "transit".into(),
            key: key.into(),
            namespace: None,
            ca_cert: None,
            retry: RetryPolicy::default(),
        }
    }

    /// A config for `key` on the server named by `LEAKLESS_VAULT_ADDR`, trusting the CA file
    /// named by `LEAKLESS_VAULT_CACERT` if that is set.
    ///
    /// # Errors
    /// [`Error::Kms`] when `LEAKLESS_VAULT_ADDR` is unset.
    pub fn from_env(key: impl Into<String>) -> Result<Self, Error> {
        let addr = std::env::var(VAULT_ADDR_ENV).map_err(|_| Error::Kms {
            backend: BACKEND,
            operation: "load config",
            detail: format!("environment variable {VAULT_ADDR_ENV} is not set"),
        })?;
        Ok(Self {
            ca_cert: std::env::var_os(VAULT_CACERT_ENV).map(PathBuf::from),
            ..Self::new(addr, key)
        })
    }

    fn validate(&self) -> Result<(), Error> {
        let bad = |what: &'static str, problem: &str| {
            Err(Error::InvalidInput {
                what,
                problem: problem.into(),
            })
        };
        if !(self.addr.starts_with("http://") || self.addr.starts_with("https://")) {
            return bad("Vault address", "must start with http:// or https://");
        }
        let segment_ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
                && !s.contains("..")
                && !s.starts_with('/')
                && !s.ends_with('/')
        };
        if !segment_ok(&self.mount) {
            return bad(
                "Vault Transit mount",
                "must be a path of letters, digits, '-', '_', '.' and '/'",
            );
        }
        if !segment_ok(&self.key) || self.key.contains('/') {
            return bad(
                "Vault Transit key name",
                "must be letters, digits, '-', '_' and '.'",
            );
        }
        self.retry.validate()
    }
}

/// A Transit key's version settings, as Vault reports them.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct TransitKeyInfo {
    /// The newest version (what `encrypt` uses).
    pub latest_version: u32,
    /// The oldest version `decrypt` still accepts.
    pub min_decryption_version: u32,
    /// The oldest version `encrypt` may use (0: the newest).
    #[serde(default)]
    pub min_encryption_version: u32,
    /// Whether the key is derived (required: that is how the binding is enforced).
    #[serde(default)]
    pub derived: bool,
    /// The key type, e.g. `aes256-gcm96`.
    #[serde(rename = "type")]
    pub key_type: String,
}

/// A root key held in Vault Transit (or OpenBao). See the module docs.
pub struct VaultTransitKms {
    agent: ureq::Agent,
    /// `{addr}/v1/{mount}`, without a trailing slash.
    base: String,
    key: String,
    namespace: Option<String>,
    token: VaultToken,
    retry: RetryPolicy,
    stats: RetryStats,
    id: String,
    shown_addr: String,
}

debug_fields!(VaultTransitKms, |kms| {
    "addr": kms.shown_addr,
    "root_key_id": kms.id,
    "retry": kms.retry,
});

#[derive(Deserialize)]
struct DataOf<T> {
    data: T,
}

#[derive(Deserialize)]
struct CiphertextData {
    ciphertext: String,
}

#[derive(Deserialize)]
struct PlaintextData {
    plaintext: String,
}

#[derive(Deserialize)]
struct VaultErrors {
    #[serde(default)]
    errors: Vec<String>,
}

enum Method {
    Get,
    Post,
}

impl VaultTransitKms {
    /// Connects to an existing derived Transit key and checks it.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad config; [`Error::Kms`] when the key does not exist or
    /// is not derived (create it with `bao write -f transit/keys/NAME derived=true`, or
    /// [`Self::create_key`]); [`Error::KmsUnavailable`] when Vault cannot be reached.
    pub fn connect(config: VaultConfig, token: VaultToken) -> Result<Self, Error> {
        Self::new_unchecked(config, token)?.derived_only(
            "connect",
            "is not derived, so Vault would not bind wrapped KEKs to their scope and version; \
             use a key created with derived=true",
        )
    }

    /// Creates the Transit key (type `aes256-gcm96`, `derived=true`) if it does not exist, then
    /// connects as [`Self::connect`]. Needs a token allowed to write `MOUNT/keys/NAME`.
    ///
    /// # Errors
    /// As [`Self::connect`].
    pub fn create_key(config: VaultConfig, token: VaultToken) -> Result<Self, Error> {
        let kms = Self::new_unchecked(config, token)?;
        kms.post(
            "create key",
            &format!("keys/{}", kms.key),
            r#"{"type":"aes256-gcm96","derived":true}"#.to_owned(),
        )?;
        kms.derived_only(
            "create key",
            "already exists and is not derived; pick another name",
        )
    }

    /// `self` when its Transit key is derived; otherwise the error of `operation` saying the
    /// key `problem`.
    fn derived_only(self, operation: &'static str, problem: &str) -> Result<Self, Error> {
        if self.key_info()?.derived {
            return Ok(self);
        }
        Err(Error::Kms {
            backend: BACKEND,
            operation,
            detail: format!("Transit key {} {problem}", self.id),
        })
    }

    fn new_unchecked(config: VaultConfig, token: VaultToken) -> Result<Self, Error> {
        config.validate()?;
        // Validate the header form once, up front.
        token.header()?;
        let mut agent_config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(config.retry.attempt_timeout));
        if let Some(path) = &config.ca_cert {
            agent_config = agent_config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::Specific(Arc::new(read_ca(path)?)))
                    .build(),
            );
        }
        let agent: ureq::Agent = agent_config.build().into();
        let addr = config.addr.trim_end_matches('/');
        Ok(Self {
            agent,
            base: format!("{addr}/v1/{}", config.mount),
            id: format!("vault-transit:{}/keys/{}", config.mount, config.key),
            shown_addr: redact_url(addr),
            key: config.key,
            namespace: config.namespace,
            token,
            retry: config.retry,
            stats: RetryStats::default(),
        })
    }

    /// How many HTTP calls, retries and exhausted operations this backend has seen.
    #[must_use]
    pub fn retry_counts(&self) -> RetryCounts {
        self.stats.snapshot()
    }

    /// The Transit key's versions and settings.
    ///
    /// # Errors
    /// [`Error::Kms`] (e.g. the key does not exist: HTTP 404), [`Error::KmsUnavailable`].
    pub fn key_info(&self) -> Result<TransitKeyInfo, Error> {
        self.read_key()
    }

    /// Reads the Transit key (`MOUNT/keys/NAME`) as `T`.
    fn read_key<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        let body = self.request("read key", Method::Get, &format!("keys/{}", self.key), None)?;
        parse::<DataOf<T>>(&body, "read key").map(|d| d.data)
    }

    /// POSTs the JSON `body` to `MOUNT/{path}` (through [`Self::request`]) and returns the
    /// answer. For bodies that hold no secret (a KEK's plaintext is written into a buffer
    /// reserved up front, so no copy of it is left behind by a growing `String`).
    fn post(
        &self,
        operation: &'static str,
        path: &str,
        body: String,
    ) -> Result<Zeroizing<String>, Error> {
        self.request(operation, Method::Post, path, Some(&Zeroizing::new(body)))
    }

    /// Sends one stored wrapped KEK of `binding` to `MOUNT/{verb}/NAME` (`decrypt`, `rewrap`)
    /// and returns the answer. The body holds the ciphertext and the binding's context.
    fn post_ciphertext(
        &self,
        operation: &'static str,
        verb: &str,
        wrapped: &WrappedKek,
        binding: &KekBinding<'_>,
    ) -> Result<Zeroizing<String>, Error> {
        let ciphertext = self.own_ciphertext(wrapped, binding, operation)?;
        let body = format!(
            r#"{{"ciphertext":"{ciphertext}","context":"{}"}}"#,
            B64.encode(context(binding))
        );
        self.post(operation, &format!("{verb}/{}", self.key), body)
            .map_err(|e| binding.name_in(e))
    }

    /// Adds a new version to the Transit key (`MOUNT/keys/NAME/rotate`); new wraps use it.
    /// Returns the new latest version. Stored KEKs stay on their old version until
    /// [`Self::rewrap_to_latest`].
    ///
    /// # Errors
    /// [`Error::Kms`], [`Error::KmsUnavailable`].
    pub fn rotate_key(&self) -> Result<u32, Error> {
        self.post(
            "rotate key",
            &format!("keys/{}/rotate", self.key),
            "{}".to_owned(),
        )?;
        Ok(self.key_info()?.latest_version)
    }

    /// Sets the oldest key version Vault will decrypt with. KEKs still wrapped under an older
    /// version stop unwrapping: re-wrap them first ([`Self::rewrap_to_latest`]).
    ///
    /// # Errors
    /// [`Error::Kms`] (e.g. a version above the latest), [`Error::KmsUnavailable`].
    pub fn set_min_decryption_version(&self, version: u32) -> Result<(), Error> {
        self.post(
            "configure key",
            &format!("keys/{}/config", self.key),
            format!(r#"{{"min_decryption_version":{version}}}"#),
        )?;
        Ok(())
    }

    /// Re-wraps one wrapped KEK onto the newest key version inside Vault (`transit/rewrap`);
    /// the KEK is never returned to this process.
    ///
    /// # Errors
    /// [`Error::Kms`] when `wrapped` is not this key's, or Vault refuses it (wrong binding,
    /// version below `min_decryption_version`); [`Error::KmsUnavailable`].
    pub fn rewrap(
        &self,
        wrapped: &WrappedKek,
        binding: &KekBinding<'_>,
    ) -> Result<WrappedKek, Error> {
        let resp = self.post_ciphertext("rewrap KEK", "rewrap", wrapped, binding)?;
        let data = parse::<DataOf<CiphertextData>>(&resp, "rewrap KEK")?.data;
        Ok(WrappedKek {
            root_key_id: self.id.clone(),
            ciphertext: data.ciphertext.into_bytes(),
        })
    }

    /// The in-Vault re-wrap ([`InKmsRewrap`]) of every KEK wrapped under an older version of
    /// this Transit key onto the newest one (read now), with [`Self::rewrap`]. Hand it to
    /// [`KeyRing::rewrap_root_in_kms`](crate::KeyRing::rewrap_root_in_kms).
    ///
    /// # Errors
    /// [`Error::Kms`], [`Error::KmsUnavailable`] when the key's versions cannot be read.
    pub fn rewrap_to_latest(&self) -> Result<VaultRewrap<'_>, Error> {
        let latest = self.key_info()?.latest_version;
        Ok(VaultRewrap { kms: self, latest })
    }

    fn own_ciphertext<'w>(
        &self,
        wrapped: &'w WrappedKek,
        binding: &KekBinding<'_>,
        operation: &'static str,
    ) -> Result<&'w str, Error> {
        if wrapped.root_key_id != self.id {
            return Err(binding.foreign_root(BACKEND, operation, &wrapped.root_key_id, &self.id));
        }
        std::str::from_utf8(&wrapped.ciphertext)
            .ok()
            .filter(|c| {
                ciphertext_version(c.as_bytes()).is_some()
                    && c.bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
            })
            .ok_or_else(|| {
                binding.error(
                    BACKEND,
                    operation,
                    "stored wrapped KEK is not a Vault Transit ciphertext",
                )
            })
    }

    /// `req` with the timeout of `attempt`, the token and the namespace.
    fn authed<B>(
        &self,
        req: ureq::RequestBuilder<B>,
        attempt: Attempt,
        token: &HeaderValue,
    ) -> ureq::RequestBuilder<B> {
        let req = req
            .config()
            .timeout_global(Some(attempt.timeout))
            .build()
            .header("X-Vault-Token", token.clone());
        match &self.namespace {
            Some(ns) => req.header("X-Vault-Namespace", ns.as_str()),
            None => req,
        }
    }

    /// One HTTP call through the retry policy. Returns the body of a 2xx answer.
    fn request(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        body: Option<&Zeroizing<String>>,
    ) -> Result<Zeroizing<String>, Error> {
        let url = format!("{}/{path}", self.base);
        let token = self.token.header()?;
        self.retry
            .run(BACKEND, operation, &self.stats, |attempt: Attempt| {
                let result = match method {
                    Method::Get => self.authed(self.agent.get(&url), attempt, &token).call(),
                    Method::Post => self
                        .authed(self.agent.post(&url), attempt, &token)
                        .content_type("application/json")
                        .send(body.map_or("", |b| b.as_str())),
                };
                let mut resp = result.map_err(|e| classify_transport(&e))?;
                let status = resp.status().as_u16();
                let text = Zeroizing::new(
                    resp.body_mut()
                        .read_to_string()
                        .map_err(|e| classify_transport(&e))?,
                );
                if (200..300).contains(&status) {
                    return Ok(text);
                }
                let kind = crate::kms::retry::classify_http_status(status);
                Err(Failure {
                    kind,
                    detail: format!(
                        "{} answered HTTP {status}: {}",
                        self.shown_addr,
                        vault_errors(&text)
                    ),
                })
            })
    }
}

/// The certificates of a PEM file.
fn read_ca(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, Error> {
    let bad = |problem: String| Error::InvalidInput {
        what: "Vault CA certificate file",
        problem: format!("{}: {problem}", path.display()),
    };
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        // A private key has no business in a CA file; it is skipped, never echoed.
        if let ureq::tls::PemItem::Certificate(c) =
            item.map_err(|e| bad(format!("not valid PEM: {e}")))?
        {
            certs.push(c);
        }
    }
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// The binding as Transit `context`: a label, the scope (length-prefixed) and the version.
fn context(binding: &KekBinding<'_>) -> Vec<u8> {
    let scope = binding.scope.as_str().as_bytes();
    let mut ctx = Vec::with_capacity(CONTEXT_LABEL.len() + 6 + scope.len());
    ctx.extend_from_slice(CONTEXT_LABEL);
    // Scope names are at most 64 bytes, so the u8 length cannot overflow.
    ctx.push(u8::try_from(scope.len()).unwrap_or(u8::MAX));
    ctx.extend_from_slice(scope);
    ctx.extend_from_slice(&binding.version.get().to_be_bytes());
    ctx
}

/// The key version of a `vault:vN:...` ciphertext.
fn ciphertext_version(ciphertext: &[u8]) -> Option<u32> {
    let rest = ciphertext.strip_prefix(b"vault:v")?;
    let end = rest.iter().position(|b| *b == b':')?;
    let digits = std::str::from_utf8(rest.get(..end)?).ok()?;
    digits.parse().ok()
}

fn classify_transport(e: &ureq::Error) -> Failure {
    use ureq::Error as E;
    let detail = format!("cannot reach Vault: {e}");
    match e {
        // TLS failures (an unknown CA, a wrong host name) surface as InvalidData: permanent.
        E::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => Failure::permanent(detail),
        E::Io(_) | E::Timeout(_) | E::ConnectionFailed | E::HostNotFound | E::Protocol(_) => {
            Failure::transient(detail)
        }
        _ => Failure::permanent(detail),
    }
}

/// Vault's `{"errors": [...]}` as one short line (Vault's messages name no tokens).
fn vault_errors(body: &str) -> String {
    let joined = serde_json::from_str::<VaultErrors>(body)
        .map(|e| e.errors.join("; "))
        .unwrap_or_default();
    if joined.is_empty() {
        "(no error message)".to_owned()
    } else {
        short_line(&joined)
    }
}

fn parse<'a, T: Deserialize<'a>>(body: &'a str, operation: &'static str) -> Result<T, Error> {
    serde_json::from_str(body).map_err(|e| Error::Kms {
        backend: BACKEND,
        operation,
        detail: format!("unexpected answer from Vault (not the documented JSON): {e}"),
    })
}

/// The re-wrap of stored KEKs onto the newest version of a Transit key, inside Vault. Made by
/// [`VaultTransitKms::rewrap_to_latest`].
#[derive(Debug)]
pub struct VaultRewrap<'a> {
    kms: &'a VaultTransitKms,
    latest: u32,
}

impl InKmsRewrap for VaultRewrap<'_> {
    fn needs_rewrap(&self, wrapped: &WrappedKek) -> bool {
        wrapped.root_key_id == self.kms.id
            && ciphertext_version(&wrapped.ciphertext).is_some_and(|v| v < self.latest)
    }

    fn rewrap(&self, wrapped: &WrappedKek, binding: &KekBinding<'_>) -> Result<WrappedKek, Error> {
        self.kms.rewrap(wrapped, binding)
    }
}

/// The version fields of a Transit key that trimming reads (`keys` lists the versions still
/// stored).
#[derive(Deserialize)]
struct KeyVersions {
    latest_version: u32,
    min_decryption_version: u32,
    #[serde(default)]
    min_encryption_version: u32,
    #[serde(default)]
    min_available_version: u32,
    #[serde(default)]
    keys: serde_json::Map<String, serde_json::Value>,
}

impl VaultTransitKms {
    fn key_versions(&self) -> Result<KeyVersions, Error> {
        self.read_key()
    }

    /// Deletes every version of the Transit key below `first_kept` from Vault: raises
    /// `min_decryption_version` and `min_encryption_version` to it, then `trim`s. Records still
    /// wrapped under an older version become unreadable for good.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `first_kept` is above the latest version; [`Error::Kms`]
    /// when Vault refuses (e.g. the token may not configure or trim the key), or when versions
    /// below `first_kept` are still listed afterwards; [`Error::KmsUnavailable`].
    pub fn trim_below(&self, first_kept: u32) -> Result<(), Error> {
        let v = self.key_versions()?;
        if first_kept > v.latest_version || first_kept == 0 {
            return Err(Error::InvalidInput {
                what: "Transit key version",
                problem: format!(
                    "cannot keep versions from v{first_kept} of {}: the latest is v{}",
                    self.id, v.latest_version
                ),
            });
        }
        self.post(
            "configure key",
            &format!("keys/{}/config", self.key),
            format!(
                r#"{{"min_decryption_version":{},"min_encryption_version":{}}}"#,
                v.min_decryption_version.max(first_kept),
                v.min_encryption_version.max(first_kept)
            ),
        )?;
        self.post(
            "trim key",
            &format!("keys/{}/trim", self.key),
            format!(r#"{{"min_available_version":{first_kept}}}"#),
        )?;
        let after = self.key_versions()?;
        let left: Vec<u32> = after
            .keys
            .keys()
            .filter_map(|k| k.parse::<u32>().ok())
            .filter(|n| *n < first_kept)
            .collect();
        if !left.is_empty() || after.min_available_version < first_kept {
            return Err(Error::Kms {
                backend: BACKEND,
                operation: "trim key",
                detail: format!(
                    "{} still lists versions {left:?} below v{first_kept} after trim",
                    self.id
                ),
            });
        }
        Ok(())
    }
}

impl RootEpochs for VaultTransitKms {
    fn current_epoch(&self) -> Result<RootEpoch, Error> {
        Ok(RootEpoch {
            root_key_id: self.id.clone(),
            key_version: Some(self.key_versions()?.latest_version),
        })
    }

    fn begin_next_epoch(&self) -> Result<EpochChange<'_>, Error> {
        let old = self.key_versions()?.latest_version;
        let new = self.rotate_key()?;
        tracing::info!(key = %self.id, retiring = old, next = new, "rotated the Transit key for a new root epoch");
        Ok(EpochChange::new(
            RootEpoch {
                root_key_id: self.id.clone(),
                key_version: Some(old),
            },
            RootEpoch {
                root_key_id: self.id.clone(),
                key_version: Some(new),
            },
            Box::new(VaultRewrap {
                kms: self,
                latest: new,
            }),
        ))
    }

    fn destroy_epoch(&self, epoch: &RootEpoch) -> Result<EpochDestroyed, Error> {
        let (true, Some(version)) = (epoch.root_key_id == self.id, epoch.key_version) else {
            return Err(Error::InvalidInput {
                what: "root epoch",
                problem: format!("{epoch} is not a version of {}", self.id),
            });
        };
        let v = self.key_versions()?;
        if version >= v.latest_version {
            return Err(Error::InvalidInput {
                what: "root epoch",
                problem: format!(
                    "{epoch} includes the latest version v{} of the key, which new wraps use; \
                     begin the next epoch first",
                    v.latest_version
                ),
            });
        }
        let first_kept = version.saturating_add(1);
        let copies = format!(
            "Vault/OpenBao storage snapshots and backups taken before now (raft snapshots, \
             storage-backend or disk backups, replicas restored from them) still hold versions \
             below v{first_kept} of {}, as does any transit/backup export of the key",
            self.id
        );
        let already = v.min_available_version >= first_kept
            && !v
                .keys
                .keys()
                .filter_map(|k| k.parse::<u32>().ok())
                .any(|n| n < first_kept);
        let status = if already {
            Destruction::AlreadyGone
        } else {
            self.trim_below(first_kept)?;
            tracing::info!(key = %self.id, first_kept, "trimmed old Transit key versions");
            Destruction::Destroyed
        };
        Ok(EpochDestroyed {
            epoch: epoch.clone(),
            status,
            copies_may_remain: copies,
        })
    }
}

impl Kms for VaultTransitKms {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn root_key_id(&self) -> &str {
        &self.id
    }

    fn wrap_kek(&self, kek: &Kek, binding: &KekBinding<'_>) -> Result<WrappedKek, Error> {
        let plaintext = Zeroizing::new(B64.encode(kek.expose_secret()));
        let mut body = Zeroizing::new(String::with_capacity(256));
        let _ = write!(
            body,
            r#"{{"plaintext":"{}","context":"{}"}}"#,
            plaintext.as_str(),
            B64.encode(context(binding))
        );
        let resp = self.request(
            "wrap KEK",
            Method::Post,
            &format!("encrypt/{}", self.key),
            Some(&body),
        )?;
        let data = parse::<DataOf<CiphertextData>>(&resp, "wrap KEK")?.data;
        debug!(scope = %binding.scope, version = %binding.version, key = %self.id, "wrapped a KEK in Vault Transit");
        Ok(WrappedKek {
            root_key_id: self.id.clone(),
            ciphertext: data.ciphertext.into_bytes(),
        })
    }

    fn unwrap_kek(&self, wrapped: &WrappedKek, binding: &KekBinding<'_>) -> Result<Kek, Error> {
        let resp = self.post_ciphertext("unwrap KEK", "decrypt", wrapped, binding)?;
        let data = parse::<DataOf<PlaintextData>>(&resp, "unwrap KEK")?.data;
        let plaintext = Zeroizing::new(data.plaintext);
        let raw = Zeroizing::new(B64.decode(plaintext.as_bytes()).map_err(|_| {
            binding.error(
                BACKEND,
                "unwrap KEK",
                "Vault returned a plaintext that is not base64",
            )
        })?);
        binding.kek_from(BACKEND, &raw)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use crate::key::{KekVersion, KeyScope};

    #[test]
    fn ciphertext_versions_parse() {
        assert_eq!(ciphertext_version(b"vault:v1:abc"), Some(1));
        assert_eq!(ciphertext_version(b"vault:v42:abc"), Some(42));
        assert_eq!(ciphertext_version(b"vault:vx:abc"), None);
        assert_eq!(ciphertext_version(b"vault:v1"), None);
        assert_eq!(ciphertext_version(b"local:v1:abc"), None);
    }

    #[test]
    fn contexts_differ_per_scope_and_version() {
        let a = KeyScope::new("patients").unwrap();
        let b = KeyScope::new("patients2").unwrap();
        let v1 = KekVersion::new(1).unwrap();
        let v2 = KekVersion::new(2).unwrap();
        let c = |s, v| {
            context(&KekBinding {
                scope: s,
                version: v,
            })
        };
        assert_ne!(c(&a, v1), c(&a, v2));
        assert_ne!(c(&a, v1), c(&b, v1));
    }

    #[test]
    fn tokens_are_checked_and_never_printed() {
        let t = VaultToken::new("  s.secret-token-value\n").unwrap();
        assert_eq!(format!("{t:?}"), "VaultToken(<redacted>)");
        assert!(VaultToken::new("two words").is_err());
        assert!(VaultToken::new("").is_err());
        let err = VaultToken::new("bad\u{7}token").unwrap_err().to_string();
        assert!(!err.contains("bad"), "{err}");
    }

    #[test]
    fn configs_are_validated() {
        assert!(
            VaultConfig::new("http://127.0.0.1:8200", "k")
                .validate()
                .is_ok()
        );
        assert!(VaultConfig::new("127.0.0.1:8200", "k").validate().is_err());
        assert!(VaultConfig::new("http://x", "a/b").validate().is_err());
        assert!(VaultConfig::new("http://x", "../k").validate().is_err());
        let mut c = VaultConfig::new("http://x", "k");
        c.mount = "/transit".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn vault_error_bodies_are_shortened() {
        assert_eq!(vault_errors(r#"{"errors":["a","b"]}"#), "a; b");
        assert_eq!(vault_errors("not json"), "(no error message)");
        let long = format!(r#"{{"errors":["{}"]}}"#, "x".repeat(1000));
        assert!(vault_errors(&long).len() <= crate::kms::retry::MAX_DETAIL + 3);
    }
}
