//! `status`: per table and column, rows per key scope and KEK version with the version's
//! state, plaintext rows (adoption pending), rows on retired or destroyed versions, and the
//! rows a rewrap would move. Reads only the envelope headers (first 80 bytes); needs no root
//! key. For a column the manifest marks as in adoption it also reports the stage, the source
//! plaintext column, and the rows still only in plaintext there (sealed NULL, plaintext not),
//! apart from the rows NULL in both. For a column with a blind index it counts the tokens per
//! index key version, and the sealed rows without a token.

use std::collections::BTreeMap;

use leakless::key::KekState;
use leakless::manifest::AdoptionStage;
use leakless::store::KeyStore;
use leakless::{BlindIndex, KekVersion, KeyScope};
use serde::Serialize;

use crate::commands::jobs::Columns;
use crate::db::{BytesCount, Db};
use crate::env::{Env, out, out_json};
use crate::error::Result;
use crate::scan::{Range, for_each_page, header, prefix_expr};

/// Options of `status`: the columns it reports on.
pub type Args = Columns;

/// Rows under one KEK version.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct VersionRows {
    /// Key scope.
    pub scope: String,
    /// KEK version number.
    pub version: u32,
    /// `active`, `grace`, `retired`, `destroyed`, or `unknown` (not in the key store).
    pub state: String,
    /// Rows.
    pub rows: u64,
}

/// The status of one sealed column.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ColumnStatus {
    /// Table.
    pub table: String,
    /// Column.
    pub column: String,
    /// Rows in the table.
    pub rows: u64,
    /// Rows per KEK version.
    pub versions: Vec<VersionRows>,
    /// NULL values (allowed for nullable columns).
    pub nulls: u64,
    /// Rows still in plaintext: a value that is no envelope, or NULL in a non-nullable
    /// column (adoption pending).
    pub plaintext: u64,
    /// Rows on grace versions: what `rewrap` would move.
    pub rewrap_work: u64,
    /// Rows on retired versions (unreadable until reinstated; rewrap after `keys reinstate`).
    pub on_retired: u64,
    /// Rows on destroyed or unknown versions (unreadable for good).
    pub on_destroyed: u64,
    /// The adoption under way on this column, if the manifest marks one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adoption: Option<AdoptionStatus>,
    /// The blind index beside this column, if the manifest gives it one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<IndexStatus>,
}

/// The tokens of a blind-index column.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct IndexStatus {
    /// The token column.
    pub column: String,
    /// The index key scope (`<prefix><tenant>` for a key per tenant).
    pub scope: String,
    /// Tokens per index key version, with the version's state.
    pub versions: Vec<VersionRows>,
    /// Rows with a sealed value but no token: look-ups do not find them (run `reindex`).
    pub missing: u64,
    /// Tokens that are no token (shorter than a version prefix, or version 0).
    pub invalid: u64,
    /// What `reindex` would compute: missing tokens, and tokens of versions other than the
    /// active one.
    pub reindex_work: u64,
}

/// The adoption of a sealed column from a legacy plaintext column.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AdoptionStatus {
    /// The application's stage.
    pub stage: AdoptionStage,
    /// The legacy plaintext column (a pair adoption's two: `lat+lon`).
    pub from_column: String,
    /// Rows whose sealed column is NULL and whose plaintext column is not: what `adopt` would
    /// seal. They are counted here, not in `nulls` (nor in `plaintext` for a non-nullable
    /// column).
    pub pending: u64,
}

/// Counts one column.
///
/// # Errors
/// [`Kind::Database`](crate::error::Kind::Database), [`Kind::Keys`](crate::error::Kind::Keys);
/// [`Kind::Usage`](crate::error::Kind::Usage) when the database lacks the column.
pub fn column_status(
    db: &mut Db,
    store: &dyn KeyStore,
    t: &leakless::manifest::SealedTable,
    c: &leakless::manifest::SealedColumn,
) -> Result<ColumnStatus> {
    db.require_column(&t.table, &t.row_id_column, &c.column)?;
    let mut by: BTreeMap<(String, u32), u64> = BTreeMap::new();
    let (mut rows, mut nulls, mut plaintext) = (0u64, 0u64, 0u64);
    let expr = prefix_expr(db, c, 80);
    for_each_page(db, t, &expr, &Range::default(), 10_000, |_, page| {
        for r in page {
            rows += 1;
            match r.val.as_deref() {
                None if c.nullable => nulls += 1,
                None => plaintext += 1,
                Some(v) => match header(v) {
                    Some(k) => *by.entry(k).or_default() += 1,
                    None => plaintext += 1,
                },
            }
        }
        Ok(())
    })?;
    let adoption = match &c.adoption {
        None => None,
        Some(a) => {
            let source =
                crate::engine::adoption_source(db, &t.table, &a.from_column, a.pair.as_ref())?;
            let pending = crate::engine::adoption_pending(db, &t.table, &c.column, &source)?;
            // These rows were counted as NULL (or, non-nullable, as plaintext) above.
            if c.nullable {
                nulls = nulls.saturating_sub(pending);
            } else {
                plaintext = plaintext.saturating_sub(pending);
            }
            Some(AdoptionStatus {
                stage: a.stage,
                from_column: a.columns().join("+"),
                pending,
            })
        }
    };
    let index = match &c.blind_index {
        Some(b) => Some(index_status(db, store, t, c, b)?),
        None => None,
    };
    let mut s = ColumnStatus {
        table: t.table.clone(),
        column: c.column.clone(),
        rows,
        versions: Vec::new(),
        nulls,
        plaintext,
        rewrap_work: 0,
        on_retired: 0,
        on_destroyed: 0,
        adoption,
        index,
    };
    for ((scope, version), n) in by {
        let (state, rows) = version_rows(store, scope, version, n)?;
        match state {
            Some(KekState::Grace { .. }) => s.rewrap_work += n,
            Some(KekState::Retired) => s.on_retired += n,
            Some(KekState::Destroyed) | None => s.on_destroyed += n,
            Some(KekState::Active) => {}
        }
        s.versions.push(rows);
    }
    Ok(s)
}

/// The `rows` under `scope` `version`, with the version's state in the key store (`None`,
/// shown as `unknown`, when it is not there).
fn version_rows(
    store: &dyn KeyStore,
    scope: String,
    version: u32,
    rows: u64,
) -> Result<(Option<KekState>, VersionRows)> {
    let state = match (KeyScope::new(&scope), KekVersion::new(version)) {
        (Ok(sc), Ok(v)) => store.get(&sc, v)?.map(|r| r.state),
        _ => None,
    };
    let shown = state.map_or("unknown", |st| st.name()).to_owned();
    Ok((
        state,
        VersionRows {
            scope,
            version,
            state: shown,
            rows,
        },
    ))
}

/// Counts the tokens of the blind index `b` beside `c`, per index key version (read from the
/// first four bytes of each token: no key needed).
///
/// # Errors
/// [`Kind::Database`](crate::error::Kind::Database), [`Kind::Keys`](crate::error::Kind::Keys);
/// [`Kind::Usage`](crate::error::Kind::Usage) when the database lacks the column.
pub fn index_status(
    db: &mut Db,
    store: &dyn KeyStore,
    t: &leakless::manifest::SealedTable,
    c: &leakless::manifest::SealedColumn,
    b: &leakless::manifest::BlindIndexColumn,
) -> Result<IndexStatus> {
    db.require_column(&t.table, &t.row_id_column, &b.column)?;
    let (tq, iq) = (db.q(&t.table), db.q(&b.column));
    let prefix = format!("substr({iq}, 1, 4)");
    // A per-tenant index key: tokens are counted per tenant, whose scope is the prefix
    // followed by the tenant.
    let tenant = if b.per_tenant {
        crate::tenant::TenantScope::probe(db, t)?.map(|ts| ts.expr)
    } else {
        None
    };
    let tenant_expr = tenant
        .clone()
        .unwrap_or_else(|| crate::tenant::TenantScope::null_expr(db.backend()).to_owned());
    let group_tenant = tenant
        .as_ref()
        .map_or_else(String::new, |e| format!("{e}, "));
    let groups: Vec<BytesCount> = db.load(
        &format!(
            "SELECT {tenant_expr} AS tenant, {prefix} AS val, COUNT(*) AS n FROM {tq} \
             WHERE {iq} IS NOT NULL GROUP BY {group_tenant}{prefix}"
        ),
        &[],
    )?;
    let missing = db.count(
        &format!(
            "SELECT COUNT(*) AS n FROM {tq} WHERE {} IS NOT NULL AND {iq} IS NULL",
            db.q(&c.column)
        ),
        &[],
    )?;
    let mut by: BTreeMap<(String, u32), u64> = BTreeMap::new();
    let mut invalid = 0u64;
    for g in groups {
        let n = u64::try_from(g.n).unwrap_or(0);
        let scope = match (b.per_tenant, &g.tenant) {
            (false, _) => b.scope.clone(),
            (true, Some(t)) => format!("{}{t}", b.scope),
            (true, None) => {
                invalid += n;
                continue;
            }
        };
        match g.val.as_deref().and_then(BlindIndex::stored_version) {
            Some(v) => *by.entry((scope, v.get())).or_default() += n,
            None => invalid += n,
        }
    }
    let mut s = IndexStatus {
        column: b.column.clone(),
        scope: if b.per_tenant {
            format!("{}<tenant>", b.scope)
        } else {
            b.scope.clone()
        },
        versions: Vec::new(),
        missing,
        invalid,
        reindex_work: missing + invalid,
    };
    for ((scope, version), n) in by {
        let (state, rows) = version_rows(store, scope, version, n)?;
        if state != Some(KekState::Active) {
            s.reindex_work += n;
        }
        s.versions.push(rows);
    }
    Ok(s)
}

/// One line of the `status` table.
fn table_line(name: &str, scope: &str, version: &str, state: &str, rows: impl std::fmt::Display) {
    out(format!(
        "{name:<28} {scope:<20} {version:>7} {state:<10} {rows:>10}"
    ));
}

/// The lines of one column or index in the `status` table: a line per KEK version, then a
/// line per `(scope, state, rows)` count that is not zero.
fn table_lines(name: &str, versions: &[VersionRows], counts: &[(&str, &str, u64)]) {
    for v in versions {
        table_line(name, &v.scope, &format!("v{}", v.version), &v.state, v.rows);
    }
    for &(scope, state, rows) in counts {
        if rows > 0 {
            table_line(name, scope, "-", state, rows);
        }
    }
}

/// Runs `status`.
///
/// # Errors
/// As [`column_status`]; [`Kind::Usage`](crate::error::Kind::Usage) for an unknown table or
/// column.
pub fn run(env: &mut Env, args: &Args) -> Result<()> {
    let targets = env.targets(args.table(), args.column())?;
    let store = env.key_store()?;
    let mut db = env.connect()?;
    let mut all = Vec::new();
    for (t, c) in &targets {
        all.push(column_status(&mut db, &*store, t, c)?);
    }
    if env.global.json {
        return out_json(&all);
    }
    table_line("TABLE.COLUMN", "SCOPE", "VERSION", "STATE", "ROWS");
    for s in &all {
        let adopting = s.adoption.as_ref();
        table_lines(
            &format!("{}.{}", s.table, s.column),
            &s.versions,
            &[
                ("-", "unsealed", s.plaintext),
                (
                    &adopting.map_or_else(String::new, |a| format!("(in {})", a.from_column)),
                    "to adopt",
                    adopting.map_or(0, |a| a.pending),
                ),
                ("-", "null", s.nulls),
            ],
        );
        if let Some(ix) = &s.index {
            table_lines(
                &format!("{}.{} (index)", s.table, ix.column),
                &ix.versions,
                &[("-", "missing", ix.missing), ("-", "invalid", ix.invalid)],
            );
        }
    }
    out("");
    for s in &all {
        let mut notes = Vec::new();
        if s.rewrap_work > 0 {
            notes.push(format!("{} rows to rewrap", s.rewrap_work));
        }
        if s.plaintext > 0 {
            notes.push(format!(
                "{} rows hold a value that is no envelope (plaintext written past leakless, or \
                 damaged; `verify` names them)",
                s.plaintext
            ));
        }
        if let Some(a) = &s.adoption {
            notes.push(if a.pending > 0 {
                format!(
                    "adoption from {} at stage {}: {} rows only in plaintext (run `adopt`)",
                    a.from_column, a.stage, a.pending
                )
            } else {
                format!(
                    "adoption from {} at stage {}: backfill complete",
                    a.from_column, a.stage
                )
            });
        }
        if s.on_retired > 0 {
            notes.push(format!(
                "{} rows on retired versions (reinstate, then rewrap)",
                s.on_retired
            ));
        }
        if s.on_destroyed > 0 {
            notes.push(format!(
                "{} rows on destroyed or unknown versions (unreadable)",
                s.on_destroyed
            ));
        }
        if let Some(ix) = s.index.as_ref().filter(|ix| ix.reindex_work > 0) {
            notes.push(format!(
                "index {}: {} rows without a token of the active index key ({} missing; look-ups \
                 miss rows without a token, and rows whose token's version is retired: run \
                 `reindex`)",
                ix.column, ix.reindex_work, ix.missing
            ));
        }
        if notes.is_empty() {
            notes.push("all rows on active versions".to_owned());
        }
        out(format!("{}.{}: {}", s.table, s.column, notes.join("; ")));
    }
    shred_summary(&*store)?;
    Ok(())
}

/// One line on the crypto-shreds of the whole key store, when any version was destroyed:
/// how many are pending (old key-store backups still open them) and how many complete.
fn shred_summary(store: &dyn KeyStore) -> Result<()> {
    use leakless::keyring::{ShredStatus, shred_status};
    let log = store.audit_log(None)?;
    let (mut pending, mut scheduled, mut complete) = (Vec::new(), 0usize, 0usize);
    for scope in store.scopes()? {
        for r in store.list(&scope)? {
            match shred_status(&r, &log) {
                Some(ShredStatus::Pending { destroyed_at }) => {
                    pending.push(format!(
                        "{} {} (destroyed {destroyed_at})",
                        r.scope, r.version
                    ));
                }
                Some(ShredStatus::Scheduled { .. }) => scheduled += 1,
                Some(ShredStatus::Complete { .. }) => complete += 1,
                None => {}
            }
        }
    }
    if pending.is_empty() && scheduled == 0 && complete == 0 {
        return Ok(());
    }
    out("");
    out(format!(
        "shreds: {} pending{}, {scheduled} with the old root scheduled for deletion, {complete} \
         complete{}",
        pending.len(),
        if pending.is_empty() {
            String::new()
        } else {
            format!(": {}", pending.join(", "))
        },
        if pending.is_empty() {
            String::new()
        } else {
            "; backups of the key store still open those: run `leakless-migrate keys \
             complete-shred`"
                .to_owned()
        }
    ));
    Ok(())
}
