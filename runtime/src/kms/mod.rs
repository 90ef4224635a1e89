//! The [`Kms`] trait: the one place a root key is used.
//!
//! A KMS backend holds a root key and does exactly two things with it: wrap a freshly made KEK
//! so the key store can keep it, and unwrap a stored KEK so the key ring can cache it. The root
//! key itself never leaves the backend (for the local backend, it never leaves this process and
//! is zeroized on drop).
//!
//! # Who calls what
//!
//! * [`KeyRing`](crate::KeyRing) calls [`Kms::wrap_kek`] when a scope is created or rotated
//!   (one call per new KEK version), and during `rotate_root` on the *new* backend.
//! * [`KeyRing::rewrap_root_in_kms`](crate::KeyRing::rewrap_root_in_kms) calls an
//!   [`InKmsRewrap`] (Vault Transit `rewrap`, AWS `ReEncrypt`) once per stored record that needs
//!   it. Backends never write the key store: the ring is its only writer.
//! * [`KeyRing`](crate::KeyRing) calls [`Kms::unwrap_kek`] on a KEK cache miss: once per KEK
//!   version per cache lifetime, never per row.
//! * Applications never call either; they hand a backend to
//!   [`KeyRing::builder`](crate::KeyRing::builder).
//!
//! * A complete crypto-shred calls [`RootEpochs`] (make the next root epoch, move every
//!   record onto it, destroy the old epoch's material in the backend); see [`epoch`].
//!
//! Both calls take a [`KekBinding`] (scope and version). A backend must bind the wrapped KEK to
//! it (as AEAD associated data, or an encryption context), so that a wrapped KEK copied to
//! another scope or version fails to unwrap.

#[cfg(feature = "aws-kms")]
pub mod aws;
pub mod epoch;
mod local;
#[cfg(feature = "pkcs11")]
pub mod pkcs11;
pub mod retry;
mod secret_file;
#[cfg(feature = "shamir")]
pub mod shamir;
#[cfg(feature = "tpm")]
pub mod tpm;
#[cfg(feature = "vault")]
pub mod vault;

#[cfg(feature = "aws-kms")]
pub use aws::{AwsCredentials, AwsKms, AwsKmsConfig, AwsReEncrypt};
pub use epoch::{Destruction, EpochChange, EpochDestroyed, RootEpoch, RootEpochs};
pub use local::{LocalKms, ROOT_KEY_ENV};
#[cfg(feature = "pkcs11")]
pub use pkcs11::{PinSource, Pkcs11Config, Pkcs11Kms, Pkcs11Token};
pub use retry::{RetryCounts, RetryPolicy};
#[cfg(feature = "tpm")]
pub use tpm::{TpmConfig, TpmKms};
#[cfg(feature = "vault")]
pub use vault::{TransitKeyInfo, VaultConfig, VaultRewrap, VaultToken, VaultTransitKms};

use crate::error::Error;
use crate::key::{KekVersion, KeyScope, WrappedKek};
use crate::secret::Kek;

pub(crate) use crate::debug_fields;

/// What a wrapped KEK is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KekBinding<'a> {
    /// The KEK's scope.
    pub scope: &'a KeyScope,
    /// The KEK's version.
    pub version: KekVersion,
}

impl KekBinding<'_> {
    /// The [`Error::Kms`] of `backend`'s `operation` on the KEK of this binding: `detail`,
    /// after the scope and version.
    pub(crate) fn error(
        &self,
        backend: &'static str,
        operation: &'static str,
        detail: impl std::fmt::Display,
    ) -> Error {
        Error::Kms {
            backend,
            operation,
            detail: format!("{} {}: {detail}", self.scope, self.version),
        }
    }

    /// `e` with this binding's scope and version before its detail when it is an
    /// [`Error::Kms`]; any other error as it is.
    #[cfg(any(feature = "aws-kms", feature = "vault"))]
    pub(crate) fn name_in(&self, e: Error) -> Error {
        match e {
            Error::Kms {
                backend,
                operation,
                detail,
            } => self.error(backend, operation, detail),
            other => other,
        }
    }

    /// The refusal of a KEK of this binding wrapped under the root key `wrapped_under` by a
    /// backend that holds `held`.
    pub(crate) fn foreign_root(
        &self,
        backend: &'static str,
        operation: &'static str,
        wrapped_under: &str,
        held: &str,
    ) -> Error {
        Error::Kms {
            backend,
            operation,
            detail: format!(
                "{} {} is wrapped under root key {wrapped_under}, but this backend holds {held}",
                self.scope, self.version
            ),
        }
    }

    /// The KEK of this binding in the bytes `backend` unwrapped (in an `unwrap KEK`); an error
    /// when they are not a KEK's length.
    pub(crate) fn kek_from(&self, backend: &'static str, unwrapped: &[u8]) -> Result<Kek, Error> {
        Kek::try_from_slice(unwrapped)
            .ok_or_else(|| self.error(backend, "unwrap KEK", "unwrapped KEK has the wrong length"))
    }
}

/// What an unwrap says of a wrapped KEK whose authentication fails.
pub(crate) const NOT_AUTHENTIC: &str =
    "wrapped KEK does not authenticate (altered, or bound to another scope or version)";

/// A holder of a root key that wraps and unwraps KEKs. Object-safe: the key ring holds an
/// `Arc<dyn Kms>`.
///
/// Implementations must be safe to call from many threads at once, must never log or return
/// key bytes or credentials in errors, and must fail (not guess) on a wrapped KEK that was made
/// by another root key or for another binding.
pub trait Kms: Send + Sync {
    /// A short name of the backend kind (`"local"`, `"pkcs11"`, `"aws-kms"`, ...) for errors
    /// and logs.
    fn backend(&self) -> &'static str;

    /// A stable, non-secret identifier of the root key (e.g. `local:3f2a...`, a KMS key ARN).
    /// Stored beside every wrapped KEK, so the ring can say which root key a record needs.
    fn root_key_id(&self) -> &str;

    /// Wraps `kek` under the root key, bound to `binding`.
    ///
    /// Returns the wrapped form that the key store will keep. Called rarely: once per new KEK
    /// version.
    ///
    /// # Errors
    /// [`Error::Kms`] when the backend cannot be reached or refuses.
    fn wrap_kek(&self, kek: &Kek, binding: &KekBinding<'_>) -> Result<WrappedKek, Error>;

    /// Unwraps a KEK made by [`Kms::wrap_kek`] with the same `binding`.
    ///
    /// Returns the KEK, which the ring caches. Returns an error, never a wrong key, when
    /// `wrapped` came from another root key, another binding, or was altered.
    ///
    /// # Errors
    /// [`Error::Kms`] naming the backend and the operation.
    fn unwrap_kek(&self, wrapped: &WrappedKek, binding: &KekBinding<'_>) -> Result<Kek, Error>;
}

impl std::fmt::Debug for dyn Kms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kms({}, {})", self.backend(), self.root_key_id())
    }
}

/// A re-wrap of stored KEKs onto another root key (or root key version) that happens inside
/// the KMS, so the KEK never reaches this process: Vault Transit `rewrap`
/// (`VaultTransitKms::rewrap_to_latest`, feature `vault`) and AWS KMS `ReEncrypt`
/// (`AwsKms::re_encrypt_to`, feature `aws-kms`).
///
/// [`KeyRing::rewrap_root_in_kms`](crate::KeyRing::rewrap_root_in_kms) asks
/// [`Self::needs_rewrap`] of every stored record that still has material and calls
/// [`Self::rewrap`] for those that do; it writes each result as one compare-and-swap change
/// with its audit record.
pub trait InKmsRewrap {
    /// Whether `wrapped` is under the source root key and must move.
    fn needs_rewrap(&self, wrapped: &WrappedKek) -> bool;

    /// The re-wrapped form of `wrapped`, bound to the same `binding`.
    ///
    /// # Errors
    /// [`Error::Kms`] or [`Error::KmsUnavailable`] when the KMS refuses or cannot be reached.
    fn rewrap(&self, wrapped: &WrappedKek, binding: &KekBinding<'_>) -> Result<WrappedKek, Error>;
}
