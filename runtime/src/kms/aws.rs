//! The AWS KMS backend: the root key is a symmetric KMS key that never leaves AWS KMS; KEKs
//! are wrapped with `Encrypt` and unwrapped with `Decrypt`.
//!
//! # Binding
//!
//! Every call carries an **encryption context** `{"leakless:scope": SCOPE,
//! "leakless:kek-version": N}`. KMS authenticates it with the ciphertext, so a wrapped KEK
//! presented with another scope or version fails to decrypt inside KMS, and CloudTrail logs the
//! context of every call (which scope, which version) without any key material.
//!
//! # Rotation
//!
//! AWS-side automatic key rotation keeps the key id and needs nothing from leakless. To move to
//! another KMS key (another account, region or key policy),
//! [`KeyRing::rewrap_root_in_kms`](crate::KeyRing::rewrap_root_in_kms) with
//! [`AwsKms::re_encrypt_to`] uses `ReEncrypt`: KMS decrypts and re-encrypts inside its HSMs, the KEK never reaches this
//! process. `KeyRing::rotate_root` works too (unwrap here, wrap under the new key).
//!
//! # Root epochs
//!
//! [`RootEpochs`] for AWS KMS needs the key named by an **alias** (`alias/leakless-root`):
//! an epoch is one KMS key. The next epoch is a new symmetric key (`CreateKey`, tagged
//! `leakless:previous-epoch` = the old key's ARN) and `UpdateAlias` points the alias at it;
//! records move with `ReEncrypt` inside KMS; destroying the old epoch is `ScheduleKeyDeletion`
//! with a pending window of 7 to 30 days ([`AwsKms::with_pending_window_days`], default 7).
//! From the schedule on, KMS refuses every use of the old key (`KMSInvalidStateException`);
//! the material is deleted at the end of the window, and until then whoever holds
//! `kms:CancelKeyDeletion` can restore it: the shred is *pending* until that date.
//!
//! Running applications configured with the alias follow without a restart: wraps re-read the
//! alias (one `DescribeKey` per new KEK version), and a record under a key this process does
//! not know yet is accepted when the alias points at that key now, or when the key the alias
//! points at names it as its `leakless:previous-epoch` (so records not yet moved keep opening
//! during the move). Any other key is refused as before.
//!
//! # Runtime
//!
//! The [`Kms`] trait is synchronous; the AWS SDK is async. Each `AwsKms` owns a small tokio
//! current-thread runtime and blocks on it for each call. Called from inside another tokio
//! runtime (where blocking on a second runtime would panic), the call is run on a short-lived
//! scoped thread instead, so `AwsKms` works from sync code, from `spawn_blocking`, and (less
//! efficiently) from async tasks, and may be dropped anywhere. Prefer calling the key ring from
//! `spawn_blocking` in async services: a cache miss blocks for one KMS round trip.
//!
//! # Credentials, retries
//!
//! Credentials come from the normal AWS chain (environment, profile, web identity, ECS, EC2
//! instance metadata) or from [`AwsCredentials::Static`]. They never appear in `Debug`, logs
//! or errors. The SDK's own retries are switched off; every call goes through the backend's
//! [`RetryPolicy`] instead (connection failures, timeouts, HTTP 429 and 5xx,
//! `ThrottlingException`, `KMSInternalException`, `DependencyTimeoutException` and
//! `KeyUnavailableException` are retried with jittered backoff), so attempts are counted and
//! bounded in one place.

use std::future::Future;

use aws_sdk_kms::Client;
use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::operation::describe_key::DescribeKeyOutput;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::KeyMetadata;
use tracing::debug;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::key::{UnixTime, WrappedKek};
use crate::kms::epoch::{
    Destruction, EpochChange, EpochDestroyed, KeyChain, RootEpoch, RootEpochs,
};
use crate::kms::retry::{
    Attempt, Failure, FailureKind, RetryCounts, RetryPolicy, RetryStats, short_line,
};
use crate::kms::{InKmsRewrap, KekBinding, Kms, debug_fields};
use crate::redact::redact_url;
use crate::secret::Kek;

const BACKEND: &str = "aws-kms";
const CONTEXT_SCOPE: &str = "leakless:scope";
const CONTEXT_VERSION: &str = "leakless:kek-version";
/// The tag on an epoch's KMS key naming the key of the epoch before it.
pub const PREVIOUS_EPOCH_TAG: &str = "leakless:previous-epoch";
const ID_PREFIX: &str = "aws-kms:";

/// Where the backend's AWS credentials come from.
pub enum AwsCredentials {
    /// The normal AWS chain: environment, shared profile, web identity, ECS, instance metadata.
    DefaultChain,
    /// Fixed keys (for tests against a local peer, or when the caller fetched them itself).
    Static {
        /// The access key id.
        access_key_id: String,
        /// The secret access key. Zeroized on drop.
        secret_access_key: Zeroizing<String>,
        /// A session token for temporary credentials. Zeroized on drop.
        session_token: Option<Zeroizing<String>>,
    },
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AwsCredentials::DefaultChain => f.write_str("DefaultChain"),
            AwsCredentials::Static { .. } => f.write_str("Static(<redacted>)"),
        }
    }
}

/// Which KMS key, where, with which credentials, and the retry budget.
#[derive(Debug)]
pub struct AwsKmsConfig {
    /// The KMS key: key id, key ARN, alias name (`alias/...`) or alias ARN. Resolved to the key
    /// ARN on connect.
    pub key_id: String,
    /// The region. `None`: from the environment or profile (`AWS_REGION`, ...).
    pub region: Option<String>,
    /// A custom endpoint (a VPC endpoint, a FIPS endpoint, or a local peer such as
    /// `moto_server`). `None`: the regional AWS endpoint.
    pub endpoint: Option<String>,
    /// Credentials. Default: the normal AWS chain.
    pub credentials: AwsCredentials,
    /// Retries of every call. Default: [`RetryPolicy::default`].
    pub retry: RetryPolicy,
}

impl AwsKmsConfig {
    /// A config for `key_id` with the default region, endpoint, credentials and retries.
    #[must_use]
    pub fn new(key_id: impl Into<String>) -> Self {
        Self {
            key_id: key_id.into(),
            region: None,
            endpoint: None,
            credentials: AwsCredentials::DefaultChain,
            retry: RetryPolicy::default(),
        }
    }
}

/// A root key held in AWS KMS. See the module docs.
pub struct AwsKms {
    runtime: SdkRuntime,
    client: Client,
    /// Root key id (`aws-kms:ARN`) -> key ARN of every key this instance accepts; the
    /// current one is what `Encrypt` uses. `Decrypt` insists on the record's own key.
    keys: KeyChain<String>,
    /// The alias the configuration named, if it named one: epochs need it.
    alias: Option<String>,
    /// Serializes alias look-ups that may append to `keys`.
    follow: std::sync::Mutex<()>,
    pending_window_days: i32,
    retry: RetryPolicy,
    stats: RetryStats,
    shown_endpoint: String,
}

debug_fields!(AwsKms, |kms| {
    "endpoint": kms.shown_endpoint,
    "root_key_id": kms.keys.current().id,
    "retry": kms.retry,
});

impl AwsKms {
    /// Connects to an existing symmetric KMS key and resolves it to its ARN (`DescribeKey`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad config; [`Error::Kms`] when the key does not exist, is
    /// not enabled, or is not a symmetric encryption key; [`Error::KmsUnavailable`] when KMS
    /// cannot be reached.
    pub fn connect(config: AwsKmsConfig) -> Result<Self, Error> {
        let key_id = config.key_id.clone();
        Self::client_only(config)?.resolve(key_id)
    }

    /// Describes `key_id`, checks it is an enabled symmetric encryption key, and takes its ARN.
    fn resolve(mut self, key_id: String) -> Result<Self, Error> {
        let described = self.describe(&key_id)?;
        let meta = described
            .key_metadata()
            .ok_or_else(|| no_metadata("describe key"))?;
        let arn = meta.arn().unwrap_or(meta.key_id()).to_owned();
        let fail = |detail: String| Error::Kms {
            backend: BACKEND,
            operation: "connect",
            detail,
        };
        if !meta.enabled() {
            return Err(fail(format!(
                "KMS key {arn} is not enabled (state {:?}); enable it or pick another key",
                meta.key_state()
            )));
        }
        if meta.key_usage().map(|u| u.as_str()) != Some("ENCRYPT_DECRYPT")
            || meta.key_spec().map(|s| s.as_str()) != Some("SYMMETRIC_DEFAULT")
        {
            return Err(fail(format!(
                "KMS key {arn} is not a symmetric encryption key (SYMMETRIC_DEFAULT, \
                 ENCRYPT_DECRYPT)"
            )));
        }
        self.keys = KeyChain::new(format!("{ID_PREFIX}{arn}"), arn);
        self.alias = alias_name(&key_id);
        Ok(self)
    }

    /// Creates a new symmetric KMS key (`CreateKey`, `SYMMETRIC_DEFAULT`, `ENCRYPT_DECRYPT`) and
    /// connects to it; `config.key_id` is ignored. Needs `kms:CreateKey`; meant for set-up
    /// tools and tests, not for applications.
    ///
    /// # Errors
    /// As [`Self::connect`].
    pub fn create_key(config: AwsKmsConfig, description: &str) -> Result<Self, Error> {
        let kms = Self::client_only(config)?;
        let key_id = kms.create_symmetric_key(description, None)?;
        kms.resolve(key_id)
    }

    fn client_only(config: AwsKmsConfig) -> Result<Self, Error> {
        config.retry.validate()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("leakless-aws-kms")
            .build()
            .map_err(|e| Error::Kms {
                backend: BACKEND,
                operation: "connect",
                detail: format!("cannot start the tokio runtime for the AWS SDK: {e}"),
            })?;
        if let Some(endpoint) = &config.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(Error::InvalidInput {
                what: "AWS KMS endpoint",
                problem: "must start with http:// or https://".into(),
            });
        }
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(config.retry.attempt_timeout)
            .operation_attempt_timeout(config.retry.attempt_timeout)
            .build();
        let region = config.region.clone().map(Region::new);
        let client_config = match config.credentials {
            AwsCredentials::Static {
                access_key_id,
                secret_access_key,
                session_token,
            } => {
                let creds = Credentials::new(
                    access_key_id,
                    secret_access_key.as_str(),
                    session_token.as_ref().map(|t| t.as_str().to_owned()),
                    None,
                    "leakless-static",
                );
                let mut b = aws_sdk_kms::config::Builder::new()
                    .behavior_version(BehaviorVersion::latest())
                    .credentials_provider(creds);
                if let Some(region) = region {
                    b = b.region(region);
                }
                b
            }
            AwsCredentials::DefaultChain => {
                let loader = aws_config::defaults(BehaviorVersion::latest());
                let loader = match region {
                    Some(region) => loader.region(region),
                    None => loader,
                };
                let shared = block_on(&runtime, loader.load());
                aws_sdk_kms::config::Builder::from(&shared)
            }
        };
        let mut builder = client_config
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint.as_str());
        }
        let shown_endpoint = config
            .endpoint
            .as_deref()
            .map_or_else(|| "regional AWS endpoint".to_owned(), redact_url);
        Ok(Self {
            runtime: SdkRuntime(Some(runtime)),
            client: Client::from_conf(builder.build()),
            keys: KeyChain::new(
                format!("{ID_PREFIX}{}", config.key_id),
                config.key_id.clone(),
            ),
            alias: None,
            follow: std::sync::Mutex::new(()),
            pending_window_days: 7,
            retry: config.retry,
            stats: RetryStats::default(),
            shown_endpoint,
        })
    }

    /// How many KMS requests, retries and exhausted operations this backend has seen.
    #[must_use]
    pub fn retry_counts(&self) -> RetryCounts {
        self.stats.snapshot()
    }

    /// The key ARN this backend wraps under.
    #[must_use]
    pub fn key_arn(&self) -> &str {
        &self.keys.current().data
    }

    /// Sets the pending window of [`RootEpochs::destroy_epoch`]'s `ScheduleKeyDeletion`:
    /// 7 to 30 days (AWS's limits). Default 7, the shortest AWS allows.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] outside 7..=30.
    pub fn with_pending_window_days(mut self, days: u8) -> Result<Self, Error> {
        if !(7..=30).contains(&days) {
            return Err(Error::InvalidInput {
                what: "AWS KMS pending deletion window",
                problem: format!("{days} days: AWS allows 7 to 30"),
            });
        }
        self.pending_window_days = i32::from(days);
        Ok(self)
    }

    /// Creates the alias `alias_name` (`alias/...`) pointing at this backend's key
    /// (`CreateAlias`). For set-up tools and tests; applications then connect with the alias.
    ///
    /// # Errors
    /// [`Error::Kms`] (e.g. the alias exists), [`Error::KmsUnavailable`].
    pub fn create_alias(&self, alias_name: &str) -> Result<(), Error> {
        let (alias, target) = (alias_name.to_owned(), self.key_arn().to_owned());
        self.call("create alias", |client| {
            let (alias, target) = (alias.clone(), target.clone());
            async move {
                client
                    .create_alias()
                    .alias_name(alias)
                    .target_key_id(target)
                    .send()
                    .await
            }
        })?;
        Ok(())
    }

    /// Resolves the configured alias now (`DescribeKey`), adds its key to the accepted keys
    /// and makes it the one new wraps use. Returns its ARN. A no-op without an alias.
    fn follow_alias(&self) -> Result<String, Error> {
        let Some(alias) = &self.alias else {
            return Ok(self.key_arn().to_owned());
        };
        let arn = arn_of(self.describe(alias)?.key_metadata(), "describe key")?;
        let _guard = self
            .follow
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = format!("{ID_PREFIX}{arn}");
        self.keys.get_or_append(&id, || arn.clone());
        self.keys.set_current(&id);
        Ok(arn)
    }

    /// The `leakless:previous-epoch` tag of key `arn`, if it has one.
    fn previous_epoch_of(&self, arn: &str) -> Result<Option<String>, Error> {
        let out = self.call("list key tags", |client| {
            let arn = arn.to_owned();
            async move { client.list_resource_tags().key_id(arn).send().await }
        })?;
        Ok(out
            .tags()
            .iter()
            .find(|t| t.tag_key() == PREVIOUS_EPOCH_TAG)
            .map(|t| t.tag_value().to_owned()))
    }

    /// The ARN of the key `wrapped` is under, if this backend accepts that key: one it knows,
    /// or (with an alias) the alias's key now or that key's previous epoch.
    fn accepted_arn(
        &self,
        wrapped: &WrappedKek,
        binding: &KekBinding<'_>,
        operation: &'static str,
    ) -> Result<String, Error> {
        if let Some(node) = self.keys.find(&wrapped.root_key_id) {
            return Ok(node.data.clone());
        }
        if self.alias.is_some() {
            let now = self.follow_alias()?;
            if let Some(node) = self.keys.find(&wrapped.root_key_id) {
                return Ok(node.data.clone());
            }
            if let Some(previous) = self.previous_epoch_of(&now)?
                && format!("{ID_PREFIX}{previous}") == wrapped.root_key_id
            {
                let _guard = self
                    .follow
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let node = self
                    .keys
                    .get_or_append(&wrapped.root_key_id, || previous.clone());
                return Ok(node.data.clone());
            }
        }
        Err(binding.foreign_root(BACKEND, operation, &wrapped.root_key_id, self.root_key_id()))
    }

    /// Re-encrypts one wrapped KEK from this backend's key to `to`'s key inside KMS
    /// (`ReEncrypt`), keeping its binding. The KEK never reaches this process.
    ///
    /// # Errors
    /// [`Error::Kms`] when `wrapped` is not this key's, the binding is wrong, or the caller may
    /// not use either key; [`Error::KmsUnavailable`].
    pub fn re_encrypt(
        &self,
        wrapped: &WrappedKek,
        binding: &KekBinding<'_>,
        to: &AwsKms,
    ) -> Result<WrappedKek, Error> {
        let source = self.check_own(wrapped, binding, "re-encrypt KEK")?;
        self.re_encrypt_arns(wrapped, binding, &source, to.key_arn(), to.root_key_id())
    }

    fn re_encrypt_arns(
        &self,
        wrapped: &WrappedKek,
        binding: &KekBinding<'_>,
        source: &str,
        destination: &str,
        destination_id: &str,
    ) -> Result<WrappedKek, Error> {
        let out = self.call_bound("re-encrypt KEK", binding, |client, scope, version| {
            let (source, destination) = (source.to_owned(), destination.to_owned());
            let blob = Blob::new(wrapped.ciphertext.clone());
            async move {
                client
                    .re_encrypt()
                    .ciphertext_blob(blob)
                    .source_key_id(source)
                    .source_encryption_context(CONTEXT_SCOPE, scope.clone())
                    .source_encryption_context(CONTEXT_VERSION, version.clone())
                    .destination_key_id(destination)
                    .destination_encryption_context(CONTEXT_SCOPE, scope)
                    .destination_encryption_context(CONTEXT_VERSION, version)
                    .send()
                    .await
            }
        })?;
        wrapped_from(
            out.ciphertext_blob(),
            "re-encrypt KEK",
            destination_id.to_owned(),
        )
    }

    /// The in-KMS re-wrap ([`InKmsRewrap`]) of every KEK wrapped under this backend's key onto
    /// `to`'s key with [`Self::re_encrypt`]. Hand it to
    /// [`KeyRing::rewrap_root_in_kms`](crate::KeyRing::rewrap_root_in_kms), then build the key
    /// ring with `to`.
    #[must_use]
    pub fn re_encrypt_to<'a>(&'a self, to: &'a AwsKms) -> AwsReEncrypt<'a> {
        AwsReEncrypt { from: self, to }
    }

    /// The ARN to decrypt `wrapped` with, if it is under a key this backend accepts.
    fn check_own(
        &self,
        wrapped: &WrappedKek,
        binding: &KekBinding<'_>,
        operation: &'static str,
    ) -> Result<String, Error> {
        self.accepted_arn(wrapped, binding, operation)
    }

    /// Describes the key `key_id` (`DescribeKey`).
    fn describe(&self, key_id: &str) -> Result<DescribeKeyOutput, Error> {
        self.call("describe key", |client| {
            let key_id = key_id.to_owned();
            async move { client.describe_key().key_id(key_id).send().await }
        })
    }

    /// Creates a symmetric encryption key (`CreateKey`, `SYMMETRIC_DEFAULT`,
    /// `ENCRYPT_DECRYPT`), tagged with the key of the epoch before it when there is one, and
    /// returns its ARN.
    fn create_symmetric_key(
        &self,
        description: &str,
        previous_epoch: Option<&str>,
    ) -> Result<String, Error> {
        let created = self.call("create key", |client| {
            let (description, previous_epoch) =
                (description.to_owned(), previous_epoch.map(str::to_owned));
            async move {
                let mut request = client
                    .create_key()
                    .description(description)
                    .key_spec(aws_sdk_kms::types::KeySpec::SymmetricDefault)
                    .key_usage(aws_sdk_kms::types::KeyUsageType::EncryptDecrypt);
                if let Some(old) = previous_epoch {
                    request = request.tags(
                        aws_sdk_kms::types::Tag::builder()
                            .tag_key(PREVIOUS_EPOCH_TAG)
                            .tag_value(old)
                            .build()
                            .map_err(|e| SdkError::construction_failure(Box::new(e)))?,
                    );
                }
                request.send().await
            }
        })?;
        arn_of(created.key_metadata(), "create key")
    }

    /// [`Self::call`] on the KEK of `binding`: `make` also gets the values of the binding's
    /// encryption context (scope, version), and an error names the binding.
    fn call_bound<T, E, F, Fut>(
        &self,
        operation: &'static str,
        binding: &KekBinding<'_>,
        make: F,
    ) -> Result<T, Error>
    where
        F: Fn(Client, String, String) -> Fut + Send + Sync,
        Fut: Future<Output = Result<T, SdkError<E>>> + Send,
        T: Send,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let scope = binding.scope.as_str().to_owned();
        let version = binding.version.get().to_string();
        self.call(operation, |client| {
            make(client, scope.clone(), version.clone())
        })
        .map_err(|e| binding.name_in(e))
    }

    /// Runs one SDK call through the retry policy, on this backend's runtime.
    fn call<T, E, F, Fut>(&self, operation: &'static str, make: F) -> Result<T, Error>
    where
        F: Fn(Client) -> Fut + Send + Sync,
        Fut: Future<Output = Result<T, SdkError<E>>> + Send,
        T: Send,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        self.retry
            .run(BACKEND, operation, &self.stats, |attempt: Attempt| {
                let Some(runtime) = self.runtime.0.as_ref() else {
                    return Err(Failure::permanent("the AWS SDK runtime is shut down"));
                };
                let fut = make(self.client.clone());
                let limit = attempt.timeout;
                block_on(runtime, async move {
                    match tokio::time::timeout(limit, fut).await {
                        Ok(Ok(value)) => Ok(value),
                        Ok(Err(e)) => Err(classify(&e)),
                        Err(_) => Err(Failure::transient(format!(
                            "no answer within {} ms",
                            limit.as_millis()
                        ))),
                    }
                })
            })
            .map_err(|e| match e {
                Error::KmsUnavailable {
                    backend,
                    operation,
                    attempts,
                    elapsed_ms,
                    throttled,
                    detail,
                } => Error::KmsUnavailable {
                    backend,
                    operation,
                    attempts,
                    elapsed_ms,
                    throttled,
                    detail: format!("{} ({})", detail, self.shown_endpoint),
                },
                other => other,
            })
    }
}

/// The backend's own tokio runtime. Dropped with `shutdown_background`, which never blocks, so
/// that dropping an `AwsKms` inside an async task (where a blocking runtime drop would panic)
/// is safe.
struct SdkRuntime(Option<tokio::runtime::Runtime>);

impl Drop for SdkRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs `fut` to completion on `runtime`. Inside another tokio runtime, where `block_on` would
/// panic, on a scoped helper thread instead.
fn block_on<F>(runtime: &tokio::runtime::Runtime, fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            let handle = s.spawn(|| runtime.block_on(fut));
            match handle.join() {
                Ok(out) => out,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    } else {
        runtime.block_on(fut)
    }
}

/// The error of an answer to `operation` that lacks the key metadata it must hold.
fn no_metadata(operation: &'static str) -> Error {
    Error::Kms {
        backend: BACKEND,
        operation,
        detail: "KMS answered without key metadata".into(),
    }
}

/// The key ARN in the key metadata of an answer to `operation`.
fn arn_of(meta: Option<&KeyMetadata>, operation: &'static str) -> Result<String, Error> {
    meta.map(|m| m.arn().unwrap_or(m.key_id()).to_owned())
        .ok_or_else(|| no_metadata(operation))
}

/// The wrapped KEK under `root_key_id` whose ciphertext an answer to `operation` holds.
fn wrapped_from(
    ciphertext: Option<&Blob>,
    operation: &'static str,
    root_key_id: String,
) -> Result<WrappedKek, Error> {
    let ciphertext = ciphertext.ok_or_else(|| Error::Kms {
        backend: BACKEND,
        operation,
        detail: "KMS answered without a ciphertext".into(),
    })?;
    Ok(WrappedKek {
        root_key_id,
        ciphertext: ciphertext.as_ref().to_vec(),
    })
}

/// Service error codes that may pass if tried again.
const TRANSIENT_CODES: &[&str] = &[
    "KMSInternalException",
    "DependencyTimeoutException",
    "KeyUnavailableException",
    "InternalFailure",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
];

/// Service error codes that mean "slow down".
const THROTTLING_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "LimitExceededException",
    "RequestLimitExceeded",
];

/// How a KMS service error is treated, from its error code and HTTP status.
fn classify_service(code: &str, status: Option<u16>) -> FailureKind {
    if THROTTLING_CODES.contains(&code) || status == Some(429) {
        FailureKind::Throttled
    } else if TRANSIENT_CODES.contains(&code)
        || status.is_some_and(|s| (500..=599).contains(&s) && s != 501)
    {
        FailureKind::Transient
    } else {
        FailureKind::Permanent
    }
}

fn classify<E>(e: &SdkError<E>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    match e {
        SdkError::ServiceError(service) => {
            let err = service.err();
            let code = err.code().unwrap_or("unknown error");
            let detail = short_line(&format!(
                "KMS answered {code}{}: {}",
                status.map(|s| format!(" (HTTP {s})")).unwrap_or_default(),
                err.message().unwrap_or("no message")
            ));
            match classify_service(code, status) {
                FailureKind::Throttled => Failure::throttled(detail),
                FailureKind::Transient => Failure::transient(detail),
                FailureKind::Permanent => Failure::permanent(detail),
            }
        }
        SdkError::TimeoutError(_) => Failure::transient("KMS did not answer in time"),
        SdkError::DispatchFailure(failure) => {
            let detail = short_line(&format!("cannot reach KMS: {}", DisplayErrorContext(e)));
            match failure.as_connector_error() {
                Some(c) if c.is_user() => Failure::permanent(detail),
                _ => Failure::transient(detail),
            }
        }
        SdkError::ResponseError(_) => {
            let detail = short_line(&format!(
                "unreadable answer from KMS{}",
                status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
            ));
            match status.map(crate::kms::retry::classify_http_status) {
                Some(FailureKind::Permanent) => Failure::permanent(detail),
                Some(FailureKind::Throttled) => Failure::throttled(detail),
                _ => Failure::transient(detail),
            }
        }
        _ => Failure::permanent(short_line(&format!(
            "cannot build the KMS request: {}",
            DisplayErrorContext(e)
        ))),
    }
}

/// The re-encryption of stored KEKs from one AWS KMS key to another, inside KMS. Made by
/// [`AwsKms::re_encrypt_to`].
#[derive(Debug)]
pub struct AwsReEncrypt<'a> {
    from: &'a AwsKms,
    to: &'a AwsKms,
}

impl InKmsRewrap for AwsReEncrypt<'_> {
    fn needs_rewrap(&self, wrapped: &WrappedKek) -> bool {
        wrapped.root_key_id == self.from.root_key_id()
    }

    fn rewrap(&self, wrapped: &WrappedKek, binding: &KekBinding<'_>) -> Result<WrappedKek, Error> {
        self.from.re_encrypt(wrapped, binding, self.to)
    }
}

/// The alias name (`alias/...`) of a configured key id that is an alias or an alias ARN.
fn alias_name(key_id: &str) -> Option<String> {
    if key_id.starts_with("alias/") {
        return Some(key_id.to_owned());
    }
    key_id
        .starts_with("arn:")
        .then(|| key_id.split_once(":alias/"))
        .flatten()
        .map(|(_, name)| format!("alias/{name}"))
}

/// Moves records onto a new epoch's key with `ReEncrypt`.
struct AwsEpochMove<'a> {
    kms: &'a AwsKms,
    to_arn: String,
    to_id: String,
}

impl InKmsRewrap for AwsEpochMove<'_> {
    fn needs_rewrap(&self, wrapped: &WrappedKek) -> bool {
        wrapped.root_key_id != self.to_id
    }

    fn rewrap(&self, wrapped: &WrappedKek, binding: &KekBinding<'_>) -> Result<WrappedKek, Error> {
        let source = self.kms.check_own(wrapped, binding, "re-encrypt KEK")?;
        self.kms
            .re_encrypt_arns(wrapped, binding, &source, &self.to_arn, &self.to_id)
    }
}

impl AwsKms {
    fn epoch_alias(&self, operation: &str) -> Result<&str, Error> {
        self.alias.as_deref().ok_or_else(|| Error::InvalidInput {
            what: "AWS KMS key",
            problem: format!(
                "cannot {operation}: root epochs need the key named by an alias \
                 (alias/leakless-root), which each epoch re-points"
            ),
        })
    }
}

impl RootEpochs for AwsKms {
    fn current_epoch(&self) -> Result<RootEpoch, Error> {
        self.follow_alias()?;
        Ok(RootEpoch::of_key(self.root_key_id().to_owned()))
    }

    fn begin_next_epoch(&self) -> Result<EpochChange<'_>, Error> {
        let alias = self.epoch_alias("begin a root epoch")?.to_owned();
        let old = self.follow_alias()?;
        let new = self.create_symmetric_key("leakless root key (root epoch)", Some(&old))?;
        self.call("update alias", |client| {
            let (alias, new) = (alias.clone(), new.clone());
            async move {
                client
                    .update_alias()
                    .alias_name(alias)
                    .target_key_id(new)
                    .send()
                    .await
            }
        })?;
        let now = self.follow_alias()?;
        if now != new {
            return Err(Error::Kms {
                backend: BACKEND,
                operation: "update alias",
                detail: format!("{alias} points at {now} after UpdateAlias to {new}"),
            });
        }
        tracing::info!(%alias, retiring = %old, next = %new, "made a new AWS KMS key for a new root epoch");
        let to_id = format!("{ID_PREFIX}{new}");
        Ok(EpochChange::new(
            RootEpoch::of_key(format!("{ID_PREFIX}{old}")),
            RootEpoch::of_key(to_id.clone()),
            Box::new(AwsEpochMove {
                kms: self,
                to_arn: new,
                to_id,
            }),
        ))
    }

    fn destroy_epoch(&self, epoch: &RootEpoch) -> Result<EpochDestroyed, Error> {
        let arn = match (epoch.root_key_id.strip_prefix(ID_PREFIX), epoch.key_version) {
            (Some(arn), None) if arn.starts_with("arn:") => arn.to_owned(),
            _ => {
                return Err(Error::InvalidInput {
                    what: "root epoch",
                    problem: format!("{epoch} is not an AWS KMS key ARN"),
                });
            }
        };
        let current = self.follow_alias()?;
        if arn == current {
            return Err(Error::InvalidInput {
                what: "root epoch",
                problem: format!(
                    "{epoch} is the key new wraps use; begin the next epoch and move every \
                     record first"
                ),
            });
        }
        let described = self.describe(&arn)?;
        let meta = described.key_metadata();
        let pending =
            meta.and_then(|m| m.key_state()).map(|s| s.as_str()) == Some("PendingDeletion");
        let date = if pending {
            meta.and_then(|m| m.deletion_date()).map(|d| d.secs())
        } else {
            let days = self.pending_window_days;
            // The bare key id from DescribeKey (AWS takes an ARN too; moto_server only the id).
            let key_id = meta.map_or_else(|| arn.clone(), |m| m.key_id().to_owned());
            let out = self.call("schedule key deletion", |client| {
                let key_id = key_id.clone();
                async move {
                    client
                        .schedule_key_deletion()
                        .key_id(key_id)
                        .pending_window_in_days(days)
                        .send()
                        .await
                }
            })?;
            tracing::info!(key = %arn, days, "scheduled the deletion of an old root epoch's KMS key");
            out.deletion_date().map(|d| d.secs())
        };
        let at = date.map(UnixTime).ok_or_else(|| Error::Kms {
            backend: BACKEND,
            operation: "schedule key deletion",
            detail: format!("KMS did not say when it deletes {arn}"),
        })?;
        Ok(EpochDestroyed {
            epoch: epoch.clone(),
            status: Destruction::Scheduled { at },
            copies_may_remain: format!(
                "none outside AWS KMS for a key it generated; KMS refuses every use of {arn} now \
                 and deletes it at the end of the pending window, until which anyone allowed \
                 kms:CancelKeyDeletion can restore it (restrict that permission); for imported \
                 key material, your own copy of it"
            ),
        })
    }
}

impl Kms for AwsKms {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn root_key_id(&self) -> &str {
        &self.keys.current().id
    }

    fn wrap_kek(&self, kek: &Kek, binding: &KekBinding<'_>) -> Result<WrappedKek, Error> {
        let key = self.follow_alias()?;
        let id = format!("{ID_PREFIX}{key}");
        let out = self.call_bound("wrap KEK", binding, |client, scope, version| {
            let key = key.clone();
            // The SDK takes the plaintext as an owned buffer; it is dropped (not zeroized) by
            // the SDK after the request is signed and sent.
            let plaintext = Blob::new(kek.expose_secret().to_vec());
            async move {
                client
                    .encrypt()
                    .key_id(key)
                    .plaintext(plaintext)
                    .encryption_context(CONTEXT_SCOPE, scope)
                    .encryption_context(CONTEXT_VERSION, version)
                    .send()
                    .await
            }
        })?;
        debug!(scope = %binding.scope, version = %binding.version, key = %id, "wrapped a KEK in AWS KMS");
        wrapped_from(out.ciphertext_blob(), "wrap KEK", id)
    }

    fn unwrap_kek(&self, wrapped: &WrappedKek, binding: &KekBinding<'_>) -> Result<Kek, Error> {
        let key = self.check_own(wrapped, binding, "unwrap KEK")?;
        let out = self.call_bound("unwrap KEK", binding, |client, scope, version| {
            let (key, blob) = (key.clone(), Blob::new(wrapped.ciphertext.clone()));
            async move {
                client
                    .decrypt()
                    .key_id(key)
                    .ciphertext_blob(blob)
                    .encryption_context(CONTEXT_SCOPE, scope)
                    .encryption_context(CONTEXT_VERSION, version)
                    .send()
                    .await
            }
        })?;
        let plaintext = out.plaintext().ok_or_else(|| {
            binding.error(BACKEND, "unwrap KEK", "KMS answered without a plaintext")
        })?;
        binding.kek_from(BACKEND, plaintext.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_errors_are_classified() {
        use FailureKind::{Permanent, Throttled, Transient};
        let cases = [
            // AWS KMS throttles with ThrottlingException (HTTP 400), sometimes plain 429.
            ("ThrottlingException", 400, Throttled),
            ("Whatever", 429, Throttled),
            ("KMSInternalException", 400, Transient),
            ("DependencyTimeoutException", 400, Transient),
            ("KeyUnavailableException", 400, Transient),
            ("InternalError", 503, Transient),
            ("InvalidCiphertextException", 400, Permanent),
            ("IncorrectKeyException", 400, Permanent),
            ("NotFoundException", 400, Permanent),
            ("DisabledException", 400, Permanent),
            ("AccessDeniedException", 400, Permanent),
            ("KMSInvalidStateException", 400, Permanent),
            ("UnrecognizedClientException", 400, Permanent),
        ];
        for (code, status, kind) in cases {
            assert_eq!(
                classify_service(code, Some(status)),
                kind,
                "{code} {status}"
            );
        }
    }

    #[test]
    fn details_are_one_short_line() {
        let long = format!("a\nb{}", "x".repeat(1000));
        let short = short_line(&long);
        assert!(!short.contains('\n'));
        assert!(short.len() <= crate::kms::retry::MAX_DETAIL + 3);
    }

    #[test]
    fn static_credentials_are_redacted() {
        let creds = AwsCredentials::Static {
            access_key_id: "AKIAEXAMPLE".into(),
            secret_access_key: Zeroizing::new("super-secret-value".into()),
            session_token: None,
        };
        let shown = format!("{creds:?}");
        assert!(
            !shown.contains("super-secret") && !shown.contains("AKIAEXAMPLE"),
            "{shown}"
        );
    }
}
