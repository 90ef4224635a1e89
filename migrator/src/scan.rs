//! Reading sealed columns page by page (keyset pagination on the row-id column), row
//! identities, and the public header of an envelope.

use leakless::RowId;
use leakless::envelope::{FORMAT_V1, MAGIC};
use leakless::manifest::{RowIdKind, SealedColumn, SealedTable};

use crate::db::{Bind, Db, IdBytes};
use crate::error::{Failure, Kind, Result};

/// A row identity owned, rebuilt from its text form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedRowId {
    /// UUID bytes.
    Uuid([u8; 16]),
    /// Integer.
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
}

impl OwnedRowId {
    /// Parses the text form [`Db::id_text`] produced for a row-id kind.
    ///
    /// # Errors
    /// [`Kind::Usage`] when the id does not fit the manifest's kind.
    pub fn parse(kind: RowIdKind, text: &str) -> Result<Self> {
        let bad = || {
            Failure::new(
                Kind::Usage,
                format!("row id {text:?} is not a valid {kind} id"),
                "check row_id_kind and row_id_column in the manifest",
            )
        };
        Ok(match kind {
            RowIdKind::Int => OwnedRowId::Int(text.parse().map_err(|_| bad())?),
            RowIdKind::Text => OwnedRowId::Text(text.to_owned()),
            RowIdKind::Bytes => OwnedRowId::Bytes(hex::decode(text).map_err(|_| bad())?),
            RowIdKind::Uuid => {
                let hexed: String = text.chars().filter(|c| *c != '-').collect();
                let v = hex::decode(hexed).map_err(|_| bad())?;
                OwnedRowId::Uuid(v.try_into().map_err(|_| bad())?)
            }
        })
    }

    /// The borrowed form the runtime binds into contexts.
    #[must_use]
    pub fn as_row_id(&self) -> RowId<'_> {
        match self {
            OwnedRowId::Uuid(b) => RowId::Uuid(*b),
            OwnedRowId::Int(i) => RowId::Int(*i),
            OwnedRowId::Text(s) => RowId::Text(s),
            OwnedRowId::Bytes(b) => RowId::Bytes(b),
        }
    }
}

/// The key scope and KEK version an envelope names, read from its header without any key.
/// `None` when the bytes are no (version 1) envelope.
#[must_use]
pub fn header(bytes: &[u8]) -> Option<(String, u32)> {
    if bytes.get(..2)? != MAGIC || *bytes.get(2)? != FORMAT_V1 {
        return None;
    }
    let len = usize::from(*bytes.get(5)?);
    let scope = std::str::from_utf8(bytes.get(6..6 + len)?).ok()?;
    let v = bytes.get(6 + len..10 + len)?;
    let version = u32::from_be_bytes(v.try_into().ok()?);
    Some((scope.to_owned(), version))
}

/// A key range of a table: `lo <= id < hi`, each bound optional, in id text form.
#[derive(Clone, Debug, Default)]
pub struct Range {
    /// Inclusive lower bound.
    pub lo: Option<String>,
    /// Exclusive upper bound.
    pub hi: Option<String>,
}

/// Builds `SELECT id, <expr> ... WHERE <range> AND id > after ORDER BY id LIMIT n`.
#[must_use]
pub fn page_sql(
    db: &Db,
    t: &SealedTable,
    select: &str,
    range: &Range,
    after: Option<&str>,
    limit: usize,
) -> (String, Vec<Bind>) {
    let id = db.q(&t.row_id_column);
    let tq = db.q(&t.table);
    let mut conds = Vec::new();
    let mut binds = Vec::new();
    let mut n = 0usize;
    let mut push = |op: &str, v: &str, conds: &mut Vec<String>, binds: &mut Vec<Bind>| {
        n += 1;
        conds.push(format!(
            "{tq}.{id} {op} {}",
            db.id_from_text(t.row_id_kind, &db.ph(n))
        ));
        binds.push(Bind::Text(Some(v.to_owned())));
    };
    if let Some(lo) = &range.lo {
        push(">=", lo, &mut conds, &mut binds);
    }
    if let Some(hi) = &range.hi {
        push("<", hi, &mut conds, &mut binds);
    }
    if let Some(a) = after {
        push(">", a, &mut conds, &mut binds);
    }
    let filter = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    (
        format!(
            // Order by the table-qualified column: a bare name would pick the text alias
            // `id` and sort "10" before "9".
            "SELECT {} AS id, {select} FROM {tq}{filter} ORDER BY {tq}.{id} LIMIT {limit}",
            db.id_text(t.row_id_kind, &t.row_id_column),
        ),
        binds,
    )
}

/// Calls `f` for every page of `(id, value)` of a column in `range`; `value_expr` chooses what
/// is read (the whole value, or a prefix).
///
/// # Errors
/// [`Kind::Database`], or what `f` returns.
pub fn for_each_page(
    db: &mut Db,
    t: &SealedTable,
    value_expr: &str,
    range: &Range,
    page: usize,
    mut f: impl FnMut(&mut Db, Vec<IdBytes>) -> Result<()>,
) -> Result<()> {
    let mut after: Option<String> = None;
    loop {
        let (sql, binds) = page_sql(
            db,
            t,
            &format!("{value_expr} AS val"),
            range,
            after.as_deref(),
            page,
        );
        let rows: Vec<IdBytes> = db.load(&sql, &binds)?;
        let full = rows.len() == page;
        after = rows.last().map(|r| r.id.clone());
        f(db, rows)?;
        if !full {
            return Ok(());
        }
    }
}

/// SQL for the first `n` bytes of `col`.
#[must_use]
pub fn prefix_expr(db: &Db, col: &SealedColumn, n: usize) -> String {
    format!("substr({}, 1, {n})", db.q(&col.column))
}
