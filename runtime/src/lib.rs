//! leakless: envelope encryption for sensitive database fields.
//!
//! leakless seals each sensitive field value (a postal address, a GPS point, a transcript) into
//! a self-describing binary envelope before it reaches the database:
//!
//! * a fresh random DEK per value encrypts the (length-padded) plaintext with
//!   XChaCha20-Poly1305 or AES-256-GCM;
//! * a versioned KEK wraps the DEK; KEKs rest in a [key store](store) only wrapped by a root
//!   key that a [`Kms`](kms::Kms) backend holds;
//! * both AEAD calls bind the value to its table, column, row identity and schema version
//!   ([`FieldContext`]), so a ciphertext copied elsewhere fails to open.
//!
//! The format is specified byte by byte in `docs/envelope-format.md`.
//!
//! # What it does not do
//!
//! * It does not protect a compromised application host: a process that can call
//!   [`KeyRing::open`] can read everything its keys open.
//! * It hides plaintext length only up to the padding bucket ([`PaddingPolicy`]).
//! * The [`LocalKms`](kms::LocalKms) backend is for single-host use; its root key sits on the
//!   same host as the application.
//!
//! # What its logs contain
//!
//! `tracing` events and spans from this crate carry key scopes, KEK versions, table and column
//! names, row identities and counts. Never plaintext, key bytes or connection passwords.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use leakless::{AuditInfo, FieldContext, FieldPolicy, KeyRing, KeyScope, RowId};
//! use leakless::kms::LocalKms;
//! use leakless::secret::RootKey;
//! use leakless::store::MemoryKeyStore;
//!
//! # fn main() -> Result<(), leakless::Error> {
//! let ring = KeyRing::builder(
//!     Arc::new(LocalKms::from_root_key(RootKey::generate())),
//!     Arc::new(MemoryKeyStore::new()),
//! )
//! .build();
//! let scope = KeyScope::new("patients")?;
//! ring.create_scope(&scope, &AuditInfo::new("doc-test", "example"))?;
//!
//! let ctx = FieldContext::new("patients", "address", RowId::Int(42), 1);
//! let sealed = ring.seal(&scope, &ctx, b"221B Baker Street", &FieldPolicy::default())?;
//! assert_eq!(ring.open(&ctx, &sealed)?.expose_secret(), b"221B Baker Street");
//!
//! // The same bytes under another row do not open.
//! let other = FieldContext::new("patients", "address", RowId::Int(43), 1);
//! assert!(ring.open(&other, &sealed).is_err());
//! # Ok(())
//! # }
//! ```

pub mod aead;
pub mod blind_index;
pub mod codec;
pub mod context;
pub mod envelope;
pub mod error;
pub mod harden;
pub mod key;
pub mod keyring;
pub mod kms;
pub mod manifest;
pub mod model;
pub mod padding;
pub mod redact;
pub mod secret;
pub mod store;
pub mod tracing_redact;

pub use aead::Algorithm;
pub use blind_index::{BlindIndex, BlindIndexSpec, Normalizer};
pub use codec::{Json, Sealable};
pub use context::{FieldContext, FieldLocation, RowId};
pub use error::{Error, Result};
pub use harden::{HardeningReport, harden_process};
pub use key::{AuditInfo, AuditRecord, KekState, KekVersion, KeyScope};
pub use keyring::{CacheConfig, FieldPolicy, KeyRing};
pub use leakless_derive::Sealed;
#[doc(hidden)]
pub use model::__private;
pub use model::{AsRowId, Sealed};
pub use padding::PaddingPolicy;
pub use secret::Plaintext;
