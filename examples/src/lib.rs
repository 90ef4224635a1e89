//! Shared parts of the leakless example programs.
//!
//! * [`demo_data`]: the fictional patients the `quickstart` binary seals, the byte encoding of
//!   their GPS points, and their values as canaries of the leak-test harness
//!   (`leakless-leaktest`, docs/leak-tests.md), which the examples' leak scans use. Integration
//!   tests import them to check that no plaintext reaches the program's output.
//! * [`patient`]: the sealed `Patient` model of `quickstart` (table, `GeoPoint`, derive), shared
//!   with the leak suites of `leakless-leaktest` and the `clinic` example.
//! * [`lifecycle`]: waiting out the cache window that `retire` and `destroy` wait for, with the
//!   short window the one-process demos record.
//! * [`cli`]: the error exit of the example programs (`error:` and a `hint:` on stderr).
//! * `clinic` (cargo feature `postgres`): the migration set, sealed model and throwaway
//!   database of the `clinic` example on PostgreSQL.
//!
//! Everything here is demo material: the data is made up, and nothing here handles real keys.

pub mod cli;
#[cfg(feature = "postgres")]
pub mod clinic;
pub mod demo_data;
pub mod lifecycle;
pub mod medtech;
pub mod patient;

/// A key-ring builder over a fresh random root key (`LocalKms`) and an in-memory key store:
/// the throwaway keys of the examples' tests and benchmarks and of the leak suites, nothing on
/// disk.
#[must_use]
pub fn throwaway_ring_builder() -> leakless::keyring::KeyRingBuilder {
    leakless::KeyRing::builder(
        std::sync::Arc::new(leakless::kms::LocalKms::from_root_key(
            leakless::secret::RootKey::generate(),
        )),
        std::sync::Arc::new(leakless::store::MemoryKeyStore::new()),
    )
}

/// The README's Rust code blocks, compiled and run as doctests of this crate so that the
/// "library in 20 lines" snippet cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// The line `quickstart` prints when the scanner's positive control passed (it found a planted
/// canary in every encoding). Tests look for it.
pub const POSITIVE_CONTROL_PASSED: &str = "positive control passed";

/// The line `quickstart` prints when the scan of the database, WAL and key-store files found no
/// plaintext. Tests look for it.
pub const NO_PLAINTEXT_FOUND: &str = "no plaintext found";
