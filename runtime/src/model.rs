//! Sealed models: what `#[derive(Sealed)]` implements, and the hidden runtime path its
//! generated code calls.
//!
//! A model type holds plaintext fields; its generated `…Row` type holds what the database
//! stores (envelopes for sealed fields, blind-index tokens beside them). [`Sealed::seal_row`]
//! turns a model into its row, [`Sealed::open_row`] turns a loaded row back into the model.
//! There is no other way from a model to a row, so a sealed field cannot be stored unsealed by
//! mistake.

use crate::context::RowId;
use crate::error::Error;
use crate::keyring::KeyRing;
use crate::manifest::SealedTable;

/// A model whose sealed fields are stored as envelopes. Implemented by `#[derive(Sealed)]`.
pub trait Sealed: Sized {
    /// The stored form: the same fields, sealed ones as envelope bytes, plus blind-index
    /// columns. It derives diesel's `Insertable`, `Queryable`, `Selectable` and `AsChangeset`.
    type Row;

    /// Seals every sealed field of `self` into a row for insert or update.
    ///
    /// # Errors
    /// The errors of [`KeyRing::seal`] and of the field's plaintext encoding.
    fn seal_row(&self, ring: &KeyRing) -> Result<Self::Row, Error>;

    /// Opens every sealed field of a loaded row.
    ///
    /// # Errors
    /// The errors of [`KeyRing::open`] (naming table, column and row) and of decoding.
    fn open_row(row: Self::Row, ring: &KeyRing) -> Result<Self, Error>;

    /// Seals many models in one pass (for a bulk `insert_into(...).values(&rows)`); each KEK is
    /// fetched once for the whole batch through the cache.
    ///
    /// # Errors
    /// The first error of [`Sealed::seal_row`]; nothing is returned partially.
    fn seal_rows(items: &[Self], ring: &KeyRing) -> Result<Vec<Self::Row>, Error> {
        items.iter().map(|m| m.seal_row(ring)).collect()
    }

    /// Opens many loaded rows.
    ///
    /// # Errors
    /// The first error of [`Sealed::open_row`].
    fn open_rows(rows: Vec<Self::Row>, ring: &KeyRing) -> Result<Vec<Self>, Error> {
        rows.into_iter().map(|r| Self::open_row(r, ring)).collect()
    }

    /// The model's entry in the schema manifest.
    fn manifest() -> SealedTable;
}

/// A type usable as a model's row identity (bound into every envelope's context).
pub trait AsRowId {
    /// The manifest name of the kind (`uuid`, `int`, `text`, `bytes`).
    const KIND: &'static str;
    /// The identity.
    fn row_id(&self) -> RowId<'_>;
}

impl AsRowId for i64 {
    const KIND: &'static str = "int";
    fn row_id(&self) -> RowId<'_> {
        RowId::Int(*self)
    }
}

impl AsRowId for i32 {
    const KIND: &'static str = "int";
    fn row_id(&self) -> RowId<'_> {
        RowId::Int(i64::from(*self))
    }
}

impl AsRowId for String {
    const KIND: &'static str = "text";
    fn row_id(&self) -> RowId<'_> {
        RowId::Text(self)
    }
}

impl AsRowId for Vec<u8> {
    const KIND: &'static str = "bytes";
    fn row_id(&self) -> RowId<'_> {
        RowId::Bytes(self)
    }
}

impl AsRowId for [u8; 16] {
    const KIND: &'static str = "uuid";
    fn row_id(&self) -> RowId<'_> {
        RowId::Uuid(*self)
    }
}

/// The runtime path of generated code. Not a public API: it may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::aead::Algorithm;
    pub use crate::blind_index::{BlindIndexSpec, Normalizer};
    pub use crate::codec::Sealable;
    pub use crate::context::RowId;
    pub use crate::error::Error;
    pub use crate::keyring::{FieldPolicy, KeyRing, KeyScope};
    pub use crate::manifest::{
        AdoptionColumn, BlindIndexColumn, ScopeSource, SealedColumn, SealedTable,
    };
    pub use crate::model::{AsRowId, Sealed};
    pub use crate::padding::PaddingPolicy;

    use crate::context::FieldContext;
    use crate::secret::Plaintext;

    /// The key scope of a row: static, or a prefix plus the tenant value.
    pub fn scope(name: &str, tenant: Option<&dyn core::fmt::Display>) -> Result<KeyScope, Error> {
        match tenant {
            None => KeyScope::new(name),
            Some(t) => KeyScope::new(&format!("{name}{t}")),
        }
    }

    /// Seals one field value.
    #[allow(clippy::too_many_arguments, reason = "called only by generated code")]
    pub fn seal_field<T: Sealable>(
        ring: &KeyRing,
        scope: &KeyScope,
        table: &str,
        column: &str,
        row: RowId<'_>,
        schema_version: u32,
        value: &T,
        policy: &FieldPolicy,
    ) -> Result<Vec<u8>, Error> {
        let ctx = FieldContext::new(table, column, row, schema_version);
        ring.seal_value(scope, &ctx, value, policy)
    }

    /// Opens one field value.
    pub fn open_field<T: Sealable>(
        ring: &KeyRing,
        table: &str,
        column: &str,
        row: RowId<'_>,
        schema_version: u32,
        envelope: &[u8],
    ) -> Result<T, Error> {
        let ctx = FieldContext::new(table, column, row, schema_version);
        ring.open_value(&ctx, envelope)
    }

    /// The blind-index token of one field value.
    pub fn blind_index<T: Sealable>(
        ring: &KeyRing,
        spec: &BlindIndexSpec,
        value: &T,
    ) -> Result<Vec<u8>, Error> {
        let plaintext = value.to_plaintext()?;
        Ok(ring.blind_index(spec, &plaintext)?.as_bytes().to_vec())
    }

    /// The look-up tokens of one value (every index-key version that still opens).
    pub fn blind_index_candidates<T: Sealable>(
        ring: &KeyRing,
        spec: &BlindIndexSpec,
        value: &T,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let plaintext = value.to_plaintext()?;
        Ok(ring
            .blind_index_candidates(spec, &plaintext)?
            .into_iter()
            .map(|t| t.as_bytes().to_vec())
            .collect())
    }
    /// Opens one field being adopted from a plaintext column. The envelope wins when present;
    /// otherwise, only when `plaintext_reads` (stages `read_plaintext` and `write_sealed_only`),
    /// the legacy plaintext value is decoded through [`Plaintext`] (wiped on drop), as an
    /// opened value would be. `Ok(None)` when neither gives a value.
    #[allow(clippy::too_many_arguments, reason = "called only by generated code")]
    pub fn open_adopting<T: Sealable>(
        ring: &KeyRing,
        table: &str,
        column: &str,
        row: RowId<'_>,
        schema_version: u32,
        envelope: Option<&[u8]>,
        plaintext: Option<Vec<u8>>,
        plaintext_reads: bool,
    ) -> Result<Option<T>, Error> {
        if let Some(e) = envelope {
            return open_field(ring, table, column, row, schema_version, e).map(Some);
        }
        match plaintext {
            Some(p) if plaintext_reads => T::from_plaintext(Plaintext::new(p)).map(Some),
            // Stage `sealed_only`: the legacy column is ignored, and its copy is wiped here.
            Some(p) => {
                drop(Plaintext::new(p));
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// The error for a non-`Option` adopted field whose sealed column is still NULL (and, in
    /// stage `sealed_only`, whose plaintext is no longer read): never a silent default.
    pub fn not_backfilled(table: &str, column: &str, row: RowId<'_>, stage: &str) -> Error {
        Error::InvalidInput {
            what: "adopted column",
            problem: format!(
                "{table}.{column} of row {row} is NULL and stage `{stage}` reads no plaintext for \
                 it: the row was not backfilled; run `leakless-migrate adopt` for this column \
                 (see docs/operations.md), or go back to stage `write_sealed_only`"
            ),
        }
    }

    /// The legacy plaintext copy of a value for a text column (stage `read_plaintext` keeps
    /// writing it so that older application versions still read the row).
    pub fn plaintext_text<T: Sealable>(value: &T) -> Result<String, Error> {
        let bytes = value.to_plaintext()?;
        std::str::from_utf8(&bytes)
            .map(str::to_owned)
            .map_err(|_| Error::InvalidInput {
                what: "adopted column",
                problem: format!(
                    "{} bytes that are not UTF-8 cannot go to a text plaintext column",
                    bytes.len()
                ),
            })
    }

    /// The legacy plaintext copy of a value for a binary column.
    pub fn plaintext_bytes<T: Sealable>(value: &T) -> Result<Vec<u8>, Error> {
        Ok(value.to_plaintext()?.to_vec())
    }
}
