//! The schema manifest: which tables and columns are sealed, under which key scope, schema
//! version, AEAD and padding, and which blind indexes sit beside them.
//!
//! The migrator (`status`, `rewrap`, `verify`) and the leak-test harness read it to find every
//! sealed column without guessing. `#[derive(Sealed)]` gives each model's entry
//! (`Sealed::manifest()`); an application gathers them into one file at build or deploy time:
//!
//! ```no_run
//! # use leakless::manifest::{SchemaManifest, SealedTable};
//! // In the application: `vec![Patient::manifest(), Visit::manifest(), ...]`.
//! let tables: Vec<SealedTable> = Vec::new();
//! let manifest = SchemaManifest::from_tables(tables);
//! manifest.write_file("leakless-manifest.json")?;
//! // In the migrator or a leak test:
//! let read = SchemaManifest::read_file("leakless-manifest.json")?;
//! # Ok::<(), leakless::Error>(())
//! ```
//!
//! Manifests of several applications sharing a database combine with
//! [`SchemaManifest::merge`], which refuses two different descriptions of one table. A
//! manifest holds names and settings only, never keys or values, and round-trips through JSON
//! ([`SchemaManifest::to_json`], [`SchemaManifest::from_json`]).

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::aead::Algorithm;
use crate::error::Error;
use crate::key::KeyScope;

/// The manifest format this build writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;

/// Every sealed table of an application.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaManifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The sealed tables, in any order.
    pub tables: Vec<SealedTable>,
}

/// One table with sealed columns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedTable {
    /// The table name, as bound into every envelope's context.
    pub table: String,
    /// The column holding the row identity bound into the context.
    pub row_id_column: String,
    /// How the row identity is encoded (`uuid`, `int`, `text`, `bytes`).
    pub row_id_kind: String,
    /// The schema version bound into the context.
    pub schema_version: u32,
    /// Where the key scope comes from.
    pub scope: ScopeSource,
    /// The sealed columns.
    pub columns: Vec<SealedColumn>,
}

/// Where a table's key scope comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScopeSource {
    /// One scope for the whole table.
    Static {
        /// The scope name.
        scope: String,
    },
    /// One scope per tenant: `prefix` followed by the value of `column` (crypto-shredding a
    /// tenant destroys its scope's versions).
    PerTenant {
        /// The column holding the tenant identity.
        column: String,
        /// The scope-name prefix, e.g. `tenant:`.
        prefix: String,
    },
}

/// One sealed column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedColumn {
    /// The column name, as bound into every envelope's context.
    pub column: String,
    /// The data AEAD (`xchacha20poly1305` or `aes256gcm`).
    pub algorithm: String,
    /// The plaintext encoding (`string`, `bytes`, `json`); see `docs/plaintext-encoding.md`.
    pub encoding: String,
    /// Whether the column may be NULL (an `Option` field).
    pub nullable: bool,
    /// The blind index beside it, if any.
    pub blind_index: Option<BlindIndexColumn>,
    /// The plaintext column this one is adopting, while an adoption is under way (`None`, and
    /// absent from the JSON, otherwise; manifests written before this field read as `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adoption: Option<AdoptionColumn>,
}

/// A sealed column being adopted from a legacy plaintext column (`#[leakless(seal(adopt(...)))]`;
/// see `docs/operations.md`, "Adopting a plaintext column").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptionColumn {
    /// The legacy plaintext column the sealed one is backfilled from.
    pub from_column: String,
    /// The stage the application runs in: `read_plaintext`, `write_sealed_only` or
    /// `sealed_only`.
    pub stage: String,
}

/// A blind-index column beside a sealed one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlindIndexColumn {
    /// The column holding the tokens.
    pub column: String,
    /// The dedicated key scope of the index keys.
    pub scope: String,
    /// Truncation length in bytes.
    pub bytes: usize,
    /// The normaliser (`none`, `trim`, `lowercase`, `trim_lowercase`).
    pub normalizer: String,
}

fn invalid(problem: String) -> Error {
    Error::InvalidInput {
        what: "schema manifest",
        problem,
    }
}

impl SchemaManifest {
    /// An empty manifest of the current format.
    #[must_use]
    pub fn new() -> Self {
        Self {
            format: MANIFEST_FORMAT,
            tables: Vec::new(),
        }
    }

    /// A manifest of these tables, typically every model's `Sealed::manifest()`, sorted by
    /// table name so that the file is the same whatever order the models were listed in.
    /// Validate it with [`Self::validate`] (or write it with [`Self::to_json`], which does).
    #[must_use]
    pub fn from_tables(tables: impl IntoIterator<Item = SealedTable>) -> Self {
        let mut tables: Vec<SealedTable> = tables.into_iter().collect();
        tables.sort_by(|a, b| a.table.cmp(&b.table));
        Self {
            format: MANIFEST_FORMAT,
            tables,
        }
    }

    /// Adds the tables of `other` (say, another service's manifest for the same database). A
    /// table described identically in both is kept once; the result is sorted by table name.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the formats differ, or when one table is described
    /// differently in the two manifests (naming the table); `self` is then unchanged.
    pub fn merge(&mut self, other: &SchemaManifest) -> Result<(), Error> {
        if other.format != self.format {
            return Err(invalid(format!(
                "cannot merge format {} into format {}",
                other.format, self.format
            )));
        }
        let mut added = Vec::new();
        for t in &other.tables {
            match self.table(&t.table) {
                Some(mine) if mine == t => {}
                Some(_) => {
                    return Err(invalid(format!(
                        "table {:?} is described differently in the two manifests (scope, \
                         schema version or columns); make the models agree before merging",
                        t.table
                    )));
                }
                None if added.iter().any(|a: &SealedTable| a.table == t.table) => {}
                None => added.push(t.clone()),
            }
        }
        self.tables.extend(added);
        self.tables.sort_by(|a, b| a.table.cmp(&b.table));
        Ok(())
    }

    /// Writes the manifest as pretty JSON to `path` (after validating it), replacing the file.
    ///
    /// # Errors
    /// As [`Self::validate`], or [`Error::InvalidInput`] naming the path when it cannot be
    /// written.
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        let mut json = self.to_json()?;
        json.push('\n');
        std::fs::write(path, json)
            .map_err(|e| invalid(format!("{}: cannot write it: {e}", path.display())))
    }

    /// Reads and validates the manifest file at `path`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the path when it cannot be read, is not JSON (with line
    /// and column), or is not a valid manifest.
    pub fn read_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("{}: cannot read it: {e}", path.display())))?;
        Self::from_json(&text).map_err(|e| match e {
            Error::InvalidInput { what, problem } => Error::InvalidInput {
                what,
                problem: format!("{}: {problem}", path.display()),
            },
            other => other,
        })
    }

    /// Checks that the manifest is usable: known format, unique tables and columns (sealed and
    /// index columns together), valid scope names, known algorithms, encodings, row-id kinds and
    /// normalisers, index lengths of 4 to 32.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the first problem and where it is.
    pub fn validate(&self) -> Result<(), Error> {
        if self.format != MANIFEST_FORMAT {
            return Err(invalid(format!(
                "format {} is not {MANIFEST_FORMAT}",
                self.format
            )));
        }
        let mut tables = BTreeSet::new();
        for t in &self.tables {
            if t.table.is_empty() || !tables.insert(t.table.as_str()) {
                return Err(invalid(format!(
                    "table {:?} is empty or listed twice",
                    t.table
                )));
            }
            if !["uuid", "int", "text", "bytes"].contains(&t.row_id_kind.as_str()) {
                return Err(invalid(format!(
                    "{}: unknown row id kind {:?}",
                    t.table, t.row_id_kind
                )));
            }
            match &t.scope {
                ScopeSource::Static { scope } => {
                    KeyScope::new(scope).map_err(|e| invalid(format!("{}: {e}", t.table)))?;
                }
                ScopeSource::PerTenant { column, prefix } => {
                    if column.is_empty() {
                        return Err(invalid(format!("{}: tenant column is empty", t.table)));
                    }
                    // The prefix plus a one-character tenant must form a valid scope name.
                    KeyScope::new(&format!("{prefix}x"))
                        .map_err(|e| invalid(format!("{}: tenant scope prefix: {e}", t.table)))?;
                }
            }
            let mut columns = BTreeSet::from([t.row_id_column.as_str()]);
            for c in &t.columns {
                if c.column.is_empty() || !columns.insert(c.column.as_str()) {
                    return Err(invalid(format!(
                        "{}.{}: column is empty, the row id, or listed twice",
                        t.table, c.column
                    )));
                }
                if Algorithm::from_name(&c.algorithm).is_none() {
                    return Err(invalid(format!(
                        "{}.{}: unknown algorithm {:?}",
                        t.table, c.column, c.algorithm
                    )));
                }
                if !["string", "bytes", "json"].contains(&c.encoding.as_str()) {
                    return Err(invalid(format!(
                        "{}.{}: unknown encoding {:?}",
                        t.table, c.column, c.encoding
                    )));
                }
                if let Some(b) = &c.blind_index {
                    if !columns.insert(b.column.as_str()) {
                        return Err(invalid(format!(
                            "{}.{}: blind index column {:?} clashes with another column",
                            t.table, c.column, b.column
                        )));
                    }
                    KeyScope::new(&b.scope)
                        .map_err(|e| invalid(format!("{}.{}: {e}", t.table, c.column)))?;
                    if !(4..=32).contains(&b.bytes) {
                        return Err(invalid(format!(
                            "{}.{}: blind index length {} is not 4 to 32",
                            t.table, c.column, b.bytes
                        )));
                    }
                    if !["none", "trim", "lowercase", "trim_lowercase"]
                        .contains(&b.normalizer.as_str())
                    {
                        return Err(invalid(format!(
                            "{}.{}: unknown normaliser {:?}",
                            t.table, c.column, b.normalizer
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// The manifest as pretty JSON, after validating it.
    ///
    /// # Errors
    /// As [`Self::validate`].
    pub fn to_json(&self) -> Result<String, Error> {
        self.validate()?;
        serde_json::to_string_pretty(self).map_err(|e| invalid(e.to_string()))
    }

    /// Reads and validates a manifest.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for malformed JSON (with line and column) or an invalid manifest.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let manifest: Self = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The sealed table named `table`.
    #[must_use]
    pub fn table(&self, table: &str) -> Option<&SealedTable> {
        self.tables.iter().find(|t| t.table == table)
    }
}
