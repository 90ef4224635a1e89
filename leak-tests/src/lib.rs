//! The leak-test harness of leakless: does any plaintext of a sealed field reach anything a
//! thief could take?
//!
//! 1. **Canaries** ([`canary`]): realistic values with unique markers for every sealed column,
//!    generated from a [`leakless::manifest::SchemaManifest`] (the derive's `manifest()`), or
//!    loaded from a JSON file. The application writes them through its normal code path.
//! 2. **Encodings** ([`encode`]): each canary becomes needles in every encoding a value can take
//!    on its way into a file (UTF-8 raw and case-folded, UTF-16LE/BE, hex and PostgreSQL `\x`,
//!    base64 standard and URL-safe at three alignments, percent, JSON, SQL; GPS as decimal text,
//!    WKT, GeoJSON and f64 bytes; any 47-byte window of a long value).
//! 3. **Scanner** ([`scan`]): all needles in one Aho-Corasick automaton, streamed over readers in
//!    1 MiB chunks: memory does not grow with the artifact.
//! 4. **Channels** ([`harness::LeakCheck`], [`fixture`], [`app`]): files, folders, gzip, tar,
//!    PostgreSQL custom/directory dumps (via `pg_restore`), heap and TOAST pages with pglz/lz4
//!    values decompressed ([`pgpage`]), WAL, server logs, MariaDB dumps/binlogs/general log,
//!    SQLite files, and application output (tracing text and JSON, `Debug`/`Display`, panics,
//!    CLI output).
//! 5. **Positive controls and report** ([`report`]): every channel must show the control
//!    canaries planted into a deliberately leaky control before its clean result counts. Exit
//!    codes: 0 clean, 1 leak, 2 detector broken or harness error.
//!
//! See `docs/leak-tests.md` for a worked example of a user's own `cargo test`.

pub mod app;
pub mod canary;
pub mod encode;
pub mod fixture;
pub mod harness;
pub mod pgpage;
pub mod report;
pub mod scan;

pub use canary::{Canary, CanaryKind, CanarySet, CanaryValue};
pub use encode::Encoding;
pub use harness::LeakCheck;
pub use report::{Report, Status};
pub use scan::{Finding, Scanner};

/// What can go wrong in the harness itself (never a leak: leaks are findings).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A canary (or canary file, or manifest) is unusable.
    #[error("canary {id}: {problem}")]
    Canary {
        /// The canary id (or the file).
        id: String,
        /// What is wrong and what to do.
        problem: String,
    },
    /// The automaton could not be built.
    #[error("scanner: {0}; use fewer or shorter canaries")]
    Scanner(String),
    /// A fixture (database server, dump tool) failed.
    #[error("{what}: {problem}")]
    Fixture {
        /// The tool or step.
        what: String,
        /// What went wrong.
        problem: String,
    },
}
