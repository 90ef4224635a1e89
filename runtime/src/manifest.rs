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
use crate::blind_index::Normalizer;
use crate::error::Error;
use crate::key::KeyScope;
use crate::padding::PaddingPolicy;

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
    /// How the row identity is encoded.
    pub row_id_kind: RowIdKind,
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
    /// The table column holding the envelopes.
    pub column: String,
    /// The column name bound into every envelope's context (and into the blind-index key),
    /// when it is not `column`: a model field stored in another column (`stored_in`), or
    /// renamed with `column = "..."`. `None`, and absent from the JSON, when the two agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_as: Option<String>,
    /// Set on a column the envelopes are moving out of (`moving(from = ...)`): the column they
    /// move to.
    /// It holds copies of that column's envelopes (same bound name) until it is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving_to: Option<String>,
    /// The data AEAD (`xchacha20poly1305` or `aes256gcm` in the JSON).
    pub algorithm: Algorithm,
    /// The plaintext encoding; see `docs/plaintext-encoding.md`.
    pub encoding: PlaintextEncoding,
    /// The length-bucket padding every value of the column is sealed with, so that the migrator
    /// reseals (`reencrypt`, `adopt`) under the policy the application uses.
    pub padding: PaddingPolicy,
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
/// see `docs/adoption.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptionColumn {
    /// The legacy plaintext column the sealed one is backfilled from (of a pair, the first).
    pub from_column: String,
    /// The stage the application runs in.
    pub stage: AdoptionStage,
    /// Set when the value is adopted from two numeric columns (a GPS point kept as latitude
    /// and longitude, `adopt(pair(lat = gps_lat, lon = gps_lon), ...)`): the plaintext is the
    /// JSON object `{"<first_key>": from_column, "<second_key>": second_column}`. `None`, and
    /// absent from the JSON, for one column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<AdoptionPair>,
}

/// The two numeric columns of a pair adoption: `from_column` under `first_key`, and
/// `second_column` under `second_key`, make the JSON object the sealed value holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptionPair {
    /// The JSON key of [`AdoptionColumn::from_column`].
    pub first_key: String,
    /// The second legacy column.
    pub second_column: String,
    /// Its JSON key.
    pub second_key: String,
}

impl AdoptionColumn {
    /// Every legacy column the value is adopted from: `from_column`, and the pair's second.
    #[must_use]
    pub fn columns(&self) -> Vec<&str> {
        std::iter::once(self.from_column.as_str())
            .chain(self.pair.as_ref().map(|p| p.second_column.as_str()))
            .collect()
    }
}

/// Defines a field-less enum whose every variant has one spelling, used by the manifest's JSON
/// (serde), by `name()` and by `Display`.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $spelling:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $spelling)] $variant,)+
        }

        impl $name {
            /// The spelling in the manifest (and in the derive's attributes).
            #[must_use]
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $spelling,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

named_enum! {
    /// How a table's row identity is encoded in the envelope context (and read by the
    /// migrator).
    pub enum RowIdKind {
        /// A 16-byte UUID (`[u8; 16]`), stored as `uuid` or 16 bytes.
        Uuid = "uuid",
        /// An integer (`i32`, `i64`).
        Int = "int",
        /// Text (`String`).
        Text = "text",
        /// Bytes (`Vec<u8>`).
        Bytes = "bytes",
    }
}

named_enum! {
    /// How a sealed column's plaintext is encoded before sealing
    /// (`docs/plaintext-encoding.md`).
    pub enum PlaintextEncoding {
        /// UTF-8 text (`String`).
        String = "string",
        /// Raw bytes (`Vec<u8>`).
        Bytes = "bytes",
        /// Compact JSON (`Json<T>`).
        Json = "json",
    }
}

named_enum! {
    /// The stage of an adoption (`docs/adoption.md`).
    pub enum AdoptionStage {
        /// Stage 1: reads the sealed column, falls back to the plaintext one, writes both.
        ReadPlaintext = "read_plaintext",
        /// Stage 2: reads both like stage 1, writes only the sealed column (NULL into the
        /// legacy one).
        WriteSealedOnly = "write_sealed_only",
        /// Stage 3: reads and writes only the sealed column.
        SealedOnly = "sealed_only",
    }
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
    /// The normaliser (`none`, `trim`, `lowercase`, `trim_lowercase`, `nfc`, `nfkc_casefold`
    /// in the JSON).
    pub normalizer: Normalizer,
    /// Whether the index key is per tenant: `scope` is then a prefix, and a row's index scope
    /// is the prefix followed by the row's tenant (the table's per-tenant scope column), so a
    /// tenant's tokens die with its shred. Absent from the JSON when `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_tenant: bool,
}

impl BlindIndexColumn {
    /// The runtime's [`BlindIndexSpec`](crate::BlindIndexSpec) of this index on
    /// `table.sealed_column` for a row of `tenant` (the tenant column's text; `None` for an
    /// index with one key): the spec the application's model computes tokens with, so the
    /// migrator's tokens (`reindex`) equal the application's.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an invalid scope name, or a per-tenant index without a
    /// tenant.
    pub fn spec(
        &self,
        table: &str,
        sealed_column: &str,
        tenant: Option<&str>,
    ) -> Result<crate::BlindIndexSpec, Error> {
        let scope = match (self.per_tenant, tenant) {
            (false, _) => KeyScope::new(&self.scope)?,
            (true, Some(t)) => KeyScope::new(&format!("{}{t}", self.scope))?,
            (true, None) => {
                return Err(Error::InvalidInput {
                    what: "blind index",
                    problem: format!(
                        "{table}.{sealed_column}: the index key is per tenant and the row has no \
                         tenant"
                    ),
                });
            }
        };
        let mut spec = crate::BlindIndexSpec::new(table, sealed_column, scope);
        spec.bytes = self.bytes;
        spec.normalizer = self.normalizer;
        Ok(spec)
    }
}

impl SealedColumn {
    /// The column name bound into the envelopes: [`Self::bound_as`], else [`Self::column`].
    #[must_use]
    pub fn bound_name(&self) -> &str {
        self.bound_as.as_deref().unwrap_or(&self.column)
    }
}

fn invalid(problem: String) -> Error {
    Error::Manifest {
        path: None,
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
    /// [`Error::Manifest`] when the formats differ, or when one table is described
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
    /// As [`Self::validate`], or [`Error::Manifest`] naming the path when it cannot be
    /// written.
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        let mut json = self.to_json()?;
        json.push('\n');
        std::fs::write(path, json).map_err(|e| Error::Manifest {
            path: Some(path.to_path_buf()),
            problem: format!("cannot write it: {e}"),
        })
    }

    /// Reads and validates the manifest file at `path`.
    ///
    /// # Errors
    /// [`Error::Manifest`] naming the path when it cannot be read, is not JSON (with line
    /// and column), or is not a valid manifest.
    pub fn read_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let in_file = |problem: String| Error::Manifest {
            path: Some(path.to_path_buf()),
            problem,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| in_file(format!("cannot read it: {e}")))?;
        Self::from_json(&text).map_err(|e| match e {
            Error::Manifest { problem, .. } => in_file(problem),
            other => other,
        })
    }

    /// Checks that the manifest is usable: known format, unique tables and columns (sealed and
    /// index columns together), valid scope names, valid padding parameters, index lengths of 4
    /// to 32. (Unknown algorithms, encodings, row-id kinds, normalisers and stages are refused
    /// when the JSON is read.)
    ///
    /// # Errors
    /// [`Error::Manifest`] naming the first problem and where it is.
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
                c.padding
                    .validate()
                    .map_err(|e| invalid(format!("{}.{}: {e}", t.table, c.column)))?;
                if c.bound_as.as_deref().is_some_and(str::is_empty) {
                    return Err(invalid(format!(
                        "{}.{}: bound column name is empty",
                        t.table, c.column
                    )));
                }
                // Two columns binding one name could swap values and still open: only a
                // column being moved out of shares the name, with the column it moves to.
                let sharing = t
                    .columns
                    .iter()
                    .filter(|o| o.column != c.column && o.bound_name() == c.bound_name())
                    .collect::<Vec<_>>();
                match (&c.moving_to, sharing.as_slice()) {
                    (None, []) => {}
                    (Some(to), [o]) if o.column == *to && o.moving_to.is_none() => {}
                    (None, [o]) if o.moving_to.as_deref() == Some(c.column.as_str()) => {}
                    (Some(to), _) => {
                        return Err(invalid(format!(
                            "{}.{}: moving to {to:?}, which is not a sealed column of the table \
                             binding the same name {:?}",
                            t.table,
                            c.column,
                            c.bound_name()
                        )));
                    }
                    (None, _) => {
                        return Err(invalid(format!(
                            "{}.{}: another column binds the same name {:?} into its envelopes",
                            t.table,
                            c.column,
                            c.bound_name()
                        )));
                    }
                }
                if let Some(p) = c.adoption.as_ref().and_then(|a| a.pair.as_ref()) {
                    // The keys go into SQL string literals and JSON: plain names only.
                    let plain = |k: &str| {
                        !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    };
                    let first = c.adoption.as_ref().map_or("", |a| a.from_column.as_str());
                    let problem = if c.encoding != PlaintextEncoding::Json {
                        Some("a pair adoption needs the json encoding (a `Json<T>` field)")
                    } else if !plain(&p.first_key) || !plain(&p.second_key) {
                        Some("pair keys must be non-empty ASCII letters, digits or `_`")
                    } else if p.first_key == p.second_key || p.second_column == first {
                        Some("a pair needs two different keys and two different columns")
                    } else {
                        None
                    };
                    if let Some(problem) = problem {
                        return Err(invalid(format!("{}.{}: {problem}", t.table, c.column)));
                    }
                }
                if let Some(b) = &c.blind_index {
                    if !columns.insert(b.column.as_str()) {
                        return Err(invalid(format!(
                            "{}.{}: blind index column {:?} clashes with another column",
                            t.table, c.column, b.column
                        )));
                    }
                    // A per-tenant index key's scope is the prefix and a tenant: check the
                    // prefix with a sample tenant.
                    let name = if b.per_tenant {
                        format!("{}0", b.scope)
                    } else {
                        b.scope.clone()
                    };
                    KeyScope::new(&name)
                        .map_err(|e| invalid(format!("{}.{}: {e}", t.table, c.column)))?;
                    if b.per_tenant && !matches!(t.scope, ScopeSource::PerTenant { .. }) {
                        return Err(invalid(format!(
                            "{}.{}: a per-tenant blind index needs a per-tenant table",
                            t.table, c.column
                        )));
                    }
                    if !(4..=32).contains(&b.bytes) {
                        return Err(invalid(format!(
                            "{}.{}: blind index length {} is not 4 to 32",
                            t.table, c.column, b.bytes
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
    /// [`Error::Manifest`] for malformed JSON or an unknown name (with the field's path,
    /// line and column, e.g. `tables[0].columns[1].algorithm: unknown variant ...`) or an
    /// invalid manifest.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let manifest: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                invalid(inner.to_string())
            } else {
                invalid(format!("{path}: {inner}"))
            }
        })?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The sealed table named `table`.
    #[must_use]
    pub fn table(&self, table: &str) -> Option<&SealedTable> {
        self.tables.iter().find(|t| t.table == table)
    }
}
