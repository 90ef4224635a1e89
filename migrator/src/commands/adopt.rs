//! `adopt`: bring an existing plaintext column under leakless.
//!
//! The application moves through three stages (docs/adoption.md): (1) it writes
//! the sealed column on every write and reads it, falling back to the plaintext column where
//! the sealed one is still NULL; (2) it stops writing the plaintext column; (3) it stops
//! reading it. `adopt` does the database side between stage 1 and 2:
//!
//! 1. a resumable backfill, like `rewrap`: every row whose sealed column is NULL and whose
//!    plaintext column is not gets the plaintext sealed into it (compare-and-swap on
//!    `sealed IS NULL`, so a value the application wrote meanwhile wins; the plaintext is
//!    never bound into a statement);
//!    a column with a blind index then gets its tokens (the `reindex` job);
//! 2. a verification pass: every sealed value opens to exactly the plaintext beside it;
//! 3. it prints the `ALTER TABLE ... DROP COLUMN` statement for the DBA. It never drops
//!    anything itself.

use leakless::FieldContext;
use leakless::manifest::PlaintextEncoding;

use crate::commands::jobs::{Column, Columns, JobArgs, dry_run_line, run_jobs};
use crate::db::{Bind, IdTwo, ident};
use crate::engine::{FailureCause, Mode, RowFailure, is_key_wide};
use crate::env::{Env, out, out_json};
use crate::error::{Failure, Kind, Result};
use crate::scan::{OwnedRowId, Range, page_sql};
use zeroize::Zeroize;

/// Options of `adopt`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which column.
    #[command(flatten)]
    pub target: Column,
    /// The plaintext column to adopt from (default: the manifest's `adoption.from_column`).
    #[arg(long)]
    pub from: Option<String>,
    /// Skip the backfill; only run the verification pass.
    #[arg(long)]
    pub verify_only: bool,
    /// In the verification pass, re-seal every row whose sealed value differs from its
    /// plaintext column from that plaintext (compare-and-swap on the sealed value read). Use
    /// once no application version without leakless runs: the stage-1 dual write goes stale
    /// only when such a version changes the plaintext column.
    #[arg(long)]
    pub repair_stale: bool,
    /// Batch, worker, throttle and job options.
    #[command(flatten)]
    pub job: JobArgs,
}

/// The plaintext column to adopt from: `--from` if given, else the manifest's
/// `adoption.from_column`; both given and different is a usage error, neither too.
fn source_column(
    table: &str,
    c: &leakless::manifest::SealedColumn,
    flag: Option<&str>,
) -> Result<String> {
    let manifest = c.adoption.as_ref().map(|a| a.from_column.as_str());
    match (flag, manifest) {
        (Some(f), Some(m)) if f != m => Err(Failure::new(
            Kind::Usage,
            format!(
                "--from {f} conflicts with the manifest, which adopts {table}.{} from {m}",
                c.column
            ),
            format!(
                "drop --from to use {m}, or fix the field's `adopt(from = ...)` and regenerate \
                 the manifest"
            ),
        )),
        (Some(f), _) => Ok(f.to_owned()),
        (None, Some(m)) => Ok(m.to_owned()),
        (None, None) => Err(Failure::new(
            Kind::Usage,
            format!(
                "no plaintext column to adopt {table}.{} from: no --from, and the manifest \
                 marks no adoption on this column",
                c.column
            ),
            "pass --from <plaintext column>, or mark the field \
             `#[leakless(seal(adopt(from = ..., stage = ...)))]` and regenerate the manifest",
        )),
    }
}

/// Whether an opened value equals the legacy plaintext read beside it: byte for byte, or for
/// the JSON encoding as JSON (the database writes its own spacing and number forms, e.g. `51`
/// where the application's serializer wrote `51.0`; numbers compare by value).
fn same_plaintext(encoding: PlaintextEncoding, opened: &[u8], legacy: &[u8]) -> bool {
    if opened == legacy {
        return true;
    }
    if encoding != PlaintextEncoding::Json {
        return false;
    }
    match (
        serde_json::from_slice::<serde_json::Value>(opened),
        serde_json::from_slice::<serde_json::Value>(legacy),
    ) {
        (Ok(mut a), Ok(mut b)) => {
            let same = json_equal(&a, &b);
            wipe_json(&mut a);
            wipe_json(&mut b);
            same
        }
        (a, b) => {
            a.into_iter().chain(b).for_each(|mut v| wipe_json(&mut v));
            false
        }
    }
}

/// Wipes the strings of a parsed value (they are plaintext) before it is dropped. Object keys
/// are field names, not values.
fn wipe_json(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::String(s) => s.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(wipe_json),
        Value::Object(map) => map.values_mut().for_each(wipe_json),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn json_equal(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_equal(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

/// Writes the re-sealed value (and its token) of row `id` if its sealed column still holds
/// `old`; `false` when the row changed meanwhile.
fn repair(
    db: &mut crate::db::Db,
    t: &leakless::manifest::SealedTable,
    column: &str,
    id: &str,
    old: &[u8],
    sealed: Vec<u8>,
    token: Option<(&str, Vec<u8>)>,
) -> Result<bool> {
    let mut binds = vec![Bind::Bytes(Some(sealed))];
    let mut sets = vec![format!("{} = {}", db.q(column), db.ph(1))];
    if let Some((col, token)) = token {
        binds.push(Bind::Bytes(Some(token)));
        sets.push(format!("{} = {}", db.q(col), db.ph(2)));
    }
    let n = binds.len();
    binds.push(Bind::Text(Some(id.to_owned())));
    binds.push(Bind::Bytes(Some(old.to_vec())));
    let sql = format!(
        "UPDATE {} SET {} WHERE {} = {} AND {} = {}",
        db.q(&t.table),
        sets.join(", "),
        db.q(&t.row_id_column),
        db.id_from_text(t.row_id_kind, &db.ph(n + 1)),
        db.q(column),
        db.ph(n + 2),
    );
    Ok(db.exec(&sql, &binds)? == 1)
}

/// Runs `adopt`.
///
/// # Errors
/// [`Kind::Refused`] when the verification pass finds a mismatch or rows failed;
/// [`Kind::Usage`], [`Kind::Database`], [`Kind::Keys`].
pub fn run(env: &mut Env, args: &Args) -> Result<()> {
    let (t, c) = env.target(&args.target)?;
    let from = source_column(&t.table, &c, args.from.as_deref())?;
    ident(&from)?;
    if from == c.column || from == t.row_id_column {
        return Err(Failure::new(
            Kind::Usage,
            format!(
                "--from {} must be the plaintext column, not the sealed or id column",
                from
            ),
            "name the existing plaintext column, e.g. --from email_plain",
        ));
    }
    let mut db = env.connect()?;
    // The same read as the backfill and the verification: a dry run fails where they would.
    let pair = c.adoption.as_ref().and_then(|a| a.pair.as_ref());
    let source = crate::engine::adoption_source(&mut db, &t.table, &from, pair)?;
    if args.job.dry_run {
        let rows = crate::engine::adoption_pending(&mut db, &t.table, &c.column, &source)?;
        dry_run_line(env, "seal", &t.table, &c.column, rows);
        return Ok(());
    }
    if !args.verify_only {
        let only = Columns::one(&t.table, &c.column);
        run_jobs(env, &Mode::Adopt { from: from.clone() }, &only, &args.job)?;
        if c.blind_index.is_some() {
            // The sealed values get their tokens, so look-ups find the adopted rows.
            let mut job = args.job.clone();
            job.job = None;
            run_jobs(env, &Mode::Reindex, &only, &job)?;
        }
    }
    // Verification pass.
    let ring = env.ring()?;
    let select = format!(
        "{} AS a, {} AS b, NULL AS tid, NULL AS tenant",
        db.q(&c.column),
        source
    );
    // Adoption is for static-scope tables; every envelope must name that scope.
    let expected = crate::engine::static_scope(&t);
    let mut after: Option<String> = None;
    let (mut checked, mut failed) = (0u64, Vec::<RowFailure>::new());
    let mut failed_n = 0u64;
    let mut repaired = 0u64;
    let index = match &c.blind_index {
        Some(b) => Some((b.column.clone(), b.spec(&t.table, c.bound_name(), None)?)),
        None => None,
    };
    let policy = leakless::FieldPolicy {
        algorithm: c.algorithm,
        padding: c.padding,
    };
    loop {
        let (sql, binds) = page_sql(&db, &t, &select, &Range::default(), after.as_deref(), 2000);
        let rows: Vec<IdTwo> = db.load(&sql, &binds)?;
        let full = rows.len() == 2000;
        after = rows.last().map(|r| r.id.clone());
        for r in rows {
            checked += 1;
            let problem = match (&r.a, &r.b) {
                (None, None) => None,
                (Some(_), None) => None, // written sealed-only by the application (stage 2)
                (None, Some(_)) => Some((
                    "sealed column still NULL (backfill incomplete)".to_owned(),
                    FailureCause::Data,
                )),
                (Some(env_bytes), Some(plain)) => match OwnedRowId::parse(t.row_id_kind, &r.id) {
                    Err(e) => Some((e.what, FailureCause::Data)),
                    Ok(rid) => {
                        let ctx = FieldContext::new(
                            &t.table,
                            c.bound_name(),
                            rid.as_row_id(),
                            t.schema_version,
                        );
                        let opened = match &expected {
                            Some(scope) => ring.open_in_scope(scope, &ctx, env_bytes),
                            None => ring.open(&ctx, env_bytes),
                        };
                        match opened {
                            Ok(p) if same_plaintext(c.encoding, p.expose_secret(), plain) => None,
                            Ok(_) if args.repair_stale => {
                                let Some(scope) = &expected else {
                                    return Err(Failure::new(
                                        Kind::Usage,
                                        "adopt supports tables with one static key scope",
                                        "adopt a per-tenant table by sealing in the application",
                                    ));
                                };
                                let sealed = ring.seal(scope, &ctx, plain, &policy)?;
                                let token = match &index {
                                    Some((col, spec)) => Some((
                                        col.as_str(),
                                        ring.blind_index(spec, plain)?.as_bytes().to_vec(),
                                    )),
                                    None => None,
                                };
                                if repair(&mut db, &t, &c.column, &r.id, env_bytes, sealed, token)?
                                {
                                    repaired += 1;
                                    None
                                } else {
                                    Some((
                                        "sealed value changed during the repair; rerun".to_owned(),
                                        FailureCause::Busy,
                                    ))
                                }
                            }
                            Ok(_) => Some((
                                "sealed value differs from the plaintext column (changed since \
                                 the backfill?)"
                                    .to_owned(),
                                FailureCause::Data,
                            )),
                            Err(e) if is_key_wide(&e) => return Err(Failure::from(e)),
                            Err(e) => Some((e.to_string(), FailureCause::of(&e))),
                        }
                    }
                },
            };
            if let Some((error, cause)) = problem {
                failed_n += 1;
                if failed.len() < 100 {
                    failed.push(RowFailure {
                        table: t.table.clone(),
                        column: c.column.clone(),
                        row: r.id.clone(),
                        error,
                        cause,
                    });
                }
            }
        }
        if !full {
            break;
        }
    }
    let drop_sql = std::iter::once(from.as_str())
        .chain(pair.map(|p| p.second_column.as_str()))
        .map(|col| format!("ALTER TABLE {} DROP COLUMN {};", db.q(&t.table), db.q(col)))
        .collect::<Vec<_>>()
        .join("\n  ");
    // The legacy column, or a pair's two (`lat+lon`, as `status` names them).
    let from = match pair {
        Some(p) => format!("{from}+{}", p.second_column),
        None => from,
    };
    if env.global.json {
        out_json(&serde_json::json!({
            "table": t.table, "column": c.column, "from": from,
            "rows_checked": checked, "mismatches": failed_n, "repaired": repaired,
            "failures": failed,
            "drop_statement": if failed_n == 0 { Some(&drop_sql) } else { None },
        }))?;
    } else {
        out(format!(
            "verify {}.{} against {}: {checked} rows checked, {failed_n} mismatches{}",
            t.table,
            c.column,
            from,
            if args.repair_stale {
                format!(", {repaired} stale rows re-sealed from the plaintext column")
            } else {
                String::new()
            }
        ));
        for f in &failed {
            out(format!(
                "  mismatch: {}.{} row {}: {}",
                f.table, f.column, f.row, f.error
            ));
        }
    }
    if failed_n > 0 {
        let stale = failed
            .iter()
            .any(|f| f.error.starts_with("sealed value differs"));
        let help = if stale {
            format!(
                "a sealed value that differs was sealed before an application version without \
                 leakless changed {from} (the stage-1 dual write goes stale that way; a plain \
                 rerun never overwrites a sealed value). Once no such version runs, rerun with \
                 `leakless-migrate adopt --table {} --column {} --repair-stale`, which re-seals \
                 those rows from {from}; rows still NULL are filled by a rerun too",
                t.table, c.column,
            )
        } else {
            "rerun `adopt` (the backfill resumes and fills what is missing), then verify again"
                .to_owned()
        };
        return Err(Failure::new(
            Kind::Refused,
            format!("adopt: {failed_n} rows do not match their plaintext column"),
            help,
        ));
    }
    if !env.global.json {
        out(format!(
            "adoption verified. Move the application to stage 3, then deploy a build without \
             `adopt(...)` on this field (stage 3 still selects and writes {}); once no instance \
             runs an older build, drop it yourself:\n  {drop_sql}",
            from
        ));
    }
    Ok(())
}
