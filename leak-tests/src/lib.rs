//! The leak-test harness of leakless: does any plaintext of a sealed field reach anything a
//! thief could take?
//!
//! 1. **Canaries** ([`canary`]): realistic values with unique markers for every sealed column,
//!    generated from a [`leakless::manifest::SchemaManifest`] (the derive's `manifest()`), or
//!    loaded from a JSON file. The application writes them through its normal code path.
//! 2. **Encodings** ([`encode`]): each canary becomes needles in every encoding a value can take
//!    on its way into a file (UTF-8 raw and case-folded, UTF-16LE/BE, hex and PostgreSQL `\x`,
//!    base64 standard and URL-safe at three alignments, percent, JSON, SQL; GPS as decimal text,
//!    WKT, GeoJSON, f64 bytes, f32 pairs, PostgreSQL `numeric` and MariaDB `DECIMAL` pairs and
//!    degrees/minutes; any 47-byte window of a long value).
//! 3. **Scanner** ([`scan`]): all needles in one Aho-Corasick automaton, streamed over readers in
//!    1 MiB chunks: memory does not grow with the artifact. Regions around escapes (`\u0020`,
//!    `\\u0020` in COPY text, octal, `\xNN`, quoted-printable, HTML entities, `%XX`) are
//!    decoded up to three layers deep and searched again ([`unescape`]).
//! 4. **Channels** ([`harness::LeakCheck`], [`containers`], [`fixture`], [`app`]): files,
//!    folders (symbolic links followed), gzip, zstd, xz, bzip2, lz4 frames, zip and tar nested
//!    in any order, PostgreSQL custom/directory dumps (via `pg_restore`, also inside archives),
//!    heap and TOAST pages with pglz/lz4
//!    values decompressed ([`pgpage`]), WAL, server logs, MariaDB dumps/binlogs/general log
//!    (compressed InnoDB pages and binlog events inflated: [`mariadb`]),
//!    SQLite files, and application output (tracing text and JSON, `Debug`/`Display`, panics,
//!    CLI output).
//! 5. **Positive controls and report** ([`report`]): every channel must show the control
//!    canaries planted into a deliberately leaky control before its clean result counts. Exit
//!    codes: 0 clean, 1 leak, 2 detector broken or harness error.
//! 6. **Residue scan** ([`residue`]): canaries from the real values of columns (read through a
//!    database URL, or opened from sealed columns with the application's key ring), kept only
//!    in memory and reported by `table.column` and row id, never by value; scales to a million
//!    values.
//!
//! See `docs/leak-tests.md` for a worked example of a user's own `cargo test`.

pub mod app;
pub mod canary;
pub mod containers;
pub mod encode;
pub mod fixture;
pub mod harness;
pub mod mariadb;
pub mod pgpage;
pub mod report;
pub mod residue;
pub mod scan;
pub mod unescape;

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
