//! The field context a ciphertext is bound to, and its canonical byte encoding.
//!
//! A sealed value is bound (as AEAD associated data) to the table, column, row identity and
//! schema version it was written for. Opening it under any other context fails. The encoding is
//! specified in `docs/envelope-format.md` § "Canonical field context".

use std::fmt;

use crate::error::Error;

/// Identity of a row, as bound into the associated data.
///
/// The kind is part of the encoding, so the integer `1` and the text `"1"` are different
/// identities. An application-generated UUID is the normal choice: it is known before the
/// insert, unlike a database-assigned serial.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowId<'a> {
    /// A UUID, as its 16 bytes in RFC 9562 order.
    Uuid([u8; 16]),
    /// A signed 64-bit integer key.
    Int(i64),
    /// A text key, as UTF-8.
    Text(&'a str),
    /// An opaque binary key.
    Bytes(&'a [u8]),
}

impl RowId<'_> {
    /// The kind byte of the canonical encoding.
    #[must_use]
    pub fn kind_byte(&self) -> u8 {
        match self {
            RowId::Uuid(_) => 0x01,
            RowId::Int(_) => 0x02,
            RowId::Text(_) => 0x03,
            RowId::Bytes(_) => 0x04,
        }
    }

    fn write_value(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        match self {
            RowId::Uuid(b) => push_len_prefixed(out, b, "row id"),
            RowId::Int(i) => push_len_prefixed(out, &i.to_be_bytes(), "row id"),
            RowId::Text(s) => push_len_prefixed(out, s.as_bytes(), "row id"),
            RowId::Bytes(b) => push_len_prefixed(out, b, "row id"),
        }
    }
}

/// Row identities are identifiers, not sensitive values, so they may appear in errors. They
/// are printed as `uuid:<hex>`, `int:<n>`, `text:<s>` or `bytes:<hex>`.
impl fmt::Display for RowId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RowId::Uuid(b) => write!(f, "uuid:{}", hex::encode(b)),
            RowId::Int(i) => write!(f, "int:{i}"),
            RowId::Text(s) => write!(f, "text:{}", s.escape_debug()),
            RowId::Bytes(b) => write!(f, "bytes:{}", hex::encode(b)),
        }
    }
}

impl fmt::Debug for RowId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Where a sealed value lives: table, column, row and schema version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FieldContext<'a> {
    /// The table (or collection) name, as the application's schema names it.
    pub table: &'a str,
    /// The column name.
    pub column: &'a str,
    /// The row's identity.
    pub row: RowId<'a>,
    /// The application's schema version for this field's encoding.
    pub schema_version: u32,
}

impl<'a> FieldContext<'a> {
    /// A context for `table.column` of `row` under `schema_version`.
    #[must_use]
    pub fn new(table: &'a str, column: &'a str, row: RowId<'a>, schema_version: u32) -> Self {
        Self {
            table,
            column,
            row,
            schema_version,
        }
    }

    /// Appends the canonical encoding to `out`:
    ///
    /// ```text
    /// u16be len(table)  || table  (UTF-8)
    /// u16be len(column) || column (UTF-8)
    /// u8 row kind || u16be len(row) || row bytes
    /// u32be schema_version
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the table or column is empty, or any part exceeds 65,535
    /// bytes.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        if self.table.is_empty() || self.column.is_empty() {
            return Err(Error::InvalidInput {
                what: "field context",
                problem: "table and column names must not be empty".into(),
            });
        }
        push_len_prefixed(out, self.table.as_bytes(), "table name")?;
        push_len_prefixed(out, self.column.as_bytes(), "column name")?;
        out.push(self.row.kind_byte());
        self.row.write_value(out)?;
        out.extend_from_slice(&self.schema_version.to_be_bytes());
        Ok(())
    }

    /// The canonical encoding as a new vector (see [`Self::encode_into`]).
    ///
    /// # Errors
    /// As [`Self::encode_into`].
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(16 + self.table.len() + self.column.len());
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Names the field for error messages, without any value: `table.column row <row>`.
    #[must_use]
    pub fn location(&self) -> FieldLocation {
        FieldLocation {
            table: self.table.to_owned(),
            column: self.column.to_owned(),
            row: self.row.to_string(),
        }
    }
}

/// An owned `table.column` plus row identity, carried by errors so they say where a failure
/// happened. It never holds a field value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldLocation {
    /// Table name.
    pub table: String,
    /// Column name.
    pub column: String,
    /// Row identity as [`RowId`]'s `Display` prints it.
    pub row: String,
}

impl fmt::Display for FieldLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{} row {}", self.table, self.column, self.row)
    }
}

fn push_len_prefixed(out: &mut Vec<u8>, bytes: &[u8], what: &'static str) -> Result<(), Error> {
    let len = u16::try_from(bytes.len()).map_err(|_| Error::InvalidInput {
        what,
        problem: format!("{} bytes is longer than the 65535-byte limit", bytes.len()),
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_length_prefixed_and_kind_tagged() {
        let ctx = FieldContext::new("t", "c", RowId::Int(1), 7);
        assert_eq!(
            ctx.encode().ok(),
            Some(vec![
                0, 1, b't', 0, 1, b'c', 2, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 7
            ])
        );
        let text = FieldContext::new("t", "c", RowId::Text("1"), 7);
        assert_ne!(ctx.encode().ok(), text.encode().ok());
    }

    #[test]
    fn empty_names_are_refused() {
        let ctx = FieldContext::new("", "c", RowId::Int(1), 1);
        assert!(matches!(ctx.encode(), Err(Error::InvalidInput { .. })));
    }
}
