//! The schema manifest: which tables and columns are sealed, under which key scope, schema
//! version, AEAD and padding, and which blind indexes sit beside them.
//!
//! The migrator (`status`, `rewrap`, `verify`) and the leak-test harness read it to find every
//! sealed column without guessing; the derive macro will produce it from the annotated models.
//! It holds names and settings only, never keys or values, and round-trips through JSON
//! ([`SchemaManifest::to_json`], [`SchemaManifest::from_json`]).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::aead::Algorithm;
use crate::error::Error;
use crate::keyring::KeyScope;

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
