//! `verify`: open every envelope (or a random sample) and report the ones that fail, by table,
//! column and row, with the reason. Never prints a value. Exit 1 on any failure.

use leakless::FieldContext;
use leakless::manifest::{SealedColumn, SealedTable};
use serde::Serialize;

use crate::commands::jobs::Columns;
use crate::db::{Db, IdBytesTenant};
use crate::engine::{FailureCause, RowFailure, is_key_wide};
use crate::env::{Env, out, out_json};
use crate::error::{Failure, Kind, Result};
use crate::scan::{OwnedRowId, Range, page_sql};
use crate::tenant::TenantScope;

/// Options of `verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which columns.
    #[command(flatten)]
    pub columns: Columns,
    /// Open a random sample of N rows per column instead of every row.
    #[arg(long)]
    pub sample: Option<u64>,
}

/// The result for one column.
#[derive(Debug, Serialize)]
pub struct Verified {
    /// Table.
    pub table: String,
    /// Column.
    pub column: String,
    /// Envelopes opened.
    pub opened: u64,
    /// NULL values (nullable columns).
    pub nulls: u64,
    /// Failures (at most 1000 listed; `failed` counts all).
    pub failures: Vec<RowFailure>,
    /// Failure count.
    pub failed: u64,
}

fn check_rows(
    ring: &leakless::KeyRing,
    t: &SealedTable,
    c: &SealedColumn,
    tenant: Option<&TenantScope>,
    rows: Vec<IdBytesTenant>,
    v: &mut Verified,
) -> Result<()> {
    // A static-scope table's envelopes must all name its scope (see `engine::static_scope`);
    // a per-tenant row's, the prefix plus its tenant (see `TenantScope`).
    let table_scope = crate::engine::static_scope(t);
    for r in rows {
        let expected = match tenant {
            Some(ts) => ts.expected(r.tenant.as_deref()).map(Some),
            None => Ok(table_scope.clone()),
        };
        let (err, cause) = match (&r.val, OwnedRowId::parse(t.row_id_kind, &r.id)) {
            (None, _) if c.nullable => {
                v.nulls += 1;
                continue;
            }
            (None, _) => (
                "NULL in a non-nullable sealed column (not adopted yet?)".to_owned(),
                FailureCause::Data,
            ),
            (_, Err(e)) => (e.what, FailureCause::Data),
            (Some(env), Ok(rid)) => match expected {
                Err(e) => (e, FailureCause::Data),
                Ok(expected) => {
                    let ctx = FieldContext::new(
                        &t.table,
                        c.bound_name(),
                        rid.as_row_id(),
                        t.schema_version,
                    );
                    let opened = match expected {
                        Some(scope) => ring.open_in_scope(&scope, &ctx, env),
                        None => ring.open(&ctx, env),
                    };
                    match opened {
                        Ok(_plaintext) => {
                            v.opened += 1;
                            continue;
                        }
                        Err(e) if is_key_wide(&e) => return Err(Failure::from(e)),
                        Err(e) => (e.to_string(), FailureCause::of(&e)),
                    }
                }
            },
        };
        v.failed += 1;
        if v.failures.len() < 1000 {
            v.failures.push(RowFailure {
                table: t.table.clone(),
                column: c.column.clone(),
                row: r.id,
                error: err,
                cause,
            });
        }
    }
    Ok(())
}

/// Verifies one column.
///
/// # Errors
/// [`Kind::Database`]; [`Kind::Usage`] for a per-tenant table whose tenant column is not an
/// integer or text column (see [`TenantScope::probe`]).
pub fn verify_column(
    db: &mut Db,
    ring: &leakless::KeyRing,
    t: &SealedTable,
    c: &SealedColumn,
    sample: Option<u64>,
) -> Result<Verified> {
    let mut v = Verified {
        table: t.table.clone(),
        column: c.column.clone(),
        opened: 0,
        nulls: 0,
        failures: Vec::new(),
        failed: 0,
    };
    let tenant = TenantScope::probe(db, t)?;
    let select = format!(
        "{}.{} AS val, {} AS tenant",
        db.q(&t.table),
        db.q(&c.column),
        tenant
            .as_ref()
            .map_or(TenantScope::null_expr(db.backend()), |ts| ts.expr.as_str())
    );
    if let Some(n) = sample {
        let sql = format!(
            "SELECT {} AS id, {select} FROM {} ORDER BY {} LIMIT {n}",
            db.id_text(t.row_id_kind, &t.row_id_column),
            db.q(&t.table),
            db.random()
        );
        let rows: Vec<IdBytesTenant> = db.load(&sql, &[])?;
        check_rows(ring, t, c, tenant.as_ref(), rows, &mut v)?;
    } else {
        const PAGE: usize = 2000;
        let mut after: Option<String> = None;
        loop {
            let (sql, binds) = page_sql(db, t, &select, &Range::default(), after.as_deref(), PAGE);
            let rows: Vec<IdBytesTenant> = db.load(&sql, &binds)?;
            let full = rows.len() == PAGE;
            after = rows.last().map(|r| r.id.clone());
            check_rows(ring, t, c, tenant.as_ref(), rows, &mut v)?;
            if !full {
                break;
            }
        }
    }
    Ok(v)
}

/// Runs `verify`.
///
/// # Errors
/// [`Kind::Refused`] when any envelope failed; [`Kind::Database`], [`Kind::Keys`].
pub fn run(env: &mut Env, args: &Args) -> Result<()> {
    let targets = env.targets(args.columns.table(), args.columns.column())?;
    let ring = env.ring()?;
    let mut db = env.connect()?;
    // Refuse a per-tenant table whose tenant cannot give the scope before reading any row.
    for (t, c) in &targets {
        db.require_column(&t.table, &t.row_id_column, &c.column)?;
        TenantScope::probe(&mut db, t)?;
    }
    let mut all = Vec::new();
    for (t, c) in &targets {
        all.push(verify_column(&mut db, &ring, t, c, args.sample)?);
    }
    let failed: u64 = all.iter().map(|v| v.failed).sum();
    if env.global.json {
        out_json(&all)?;
    } else {
        for v in &all {
            out(format!(
                "{}.{}: {} opened, {} null, {} failed",
                v.table, v.column, v.opened, v.nulls, v.failed
            ));
            for f in &v.failures {
                out(format!(
                    "  failed: {}.{} row {}: {}",
                    f.table, f.column, f.row, f.error
                ));
            }
        }
    }
    if failed > 0 {
        return Err(Failure::new(
            Kind::Refused,
            format!("verify: {failed} values do not open"),
            crate::engine::failure_help(all.iter().flat_map(|v| &v.failures)),
        ));
    }
    Ok(())
}
