//! `keys`: the KEK lifecycle. Every change goes through the runtime's [`KeyRing`], which
//! writes one audit record per transition in the same atomic key-store change; `keys audit`
//! and `keys list --audit` show them.
//!
//! Adding a `keys` subcommand takes two lines: a variant in [`KeysCommand`] and its arm in
//! [`run`].

use std::time::Duration;

use leakless::key::{AuditRecord, KekRecord, KekState};
use leakless::keyring::{ShredStatus, shred_status};
use leakless::kms::{Destruction, Kms as _, RootEpochs};
use leakless::manifest::{SealedColumn, SealedTable};
use leakless::{KekVersion, KeyRing, KeyScope};
use serde::Serialize;

use crate::commands::status::{VersionRows, column_status, index_status};
use crate::env::{Env, out, out_json, out_table};
use crate::error::{Failure, Kind, Result};
use crate::kms::Root;

/// The `keys` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// List key scopes and their KEK versions with states (no key material).
    List {
        /// Only this scope.
        #[arg(long)]
        scope: Option<String>,
        /// Also print the audit log.
        #[arg(long)]
        audit: bool,
    },
    /// Print the key audit log (who, when, why, which transition).
    Audit {
        /// Only this scope.
        #[arg(long)]
        scope: Option<String>,
        /// Verify the whole key store against the root of trust instead: the audit chain from
        /// its first entry and every record. Exit 1 names where it breaks.
        #[arg(long)]
        verify: bool,
    },
    /// Authenticate a key store written before key records were authenticated (once, after
    /// upgrading leakless, on a store you trust): every record gets its tag and an
    /// `authenticate` audit entry. Refuses a store that was authenticated before.
    Upgrade,
    /// Generate a new local root key file (64 hex digits, mode 0600, created exclusively: an
    /// existing file is never overwritten), for `--kms local`.
    Init {
        /// Where to write it (default: --root-key-file / LEAKLESS_ROOT_KEY_FILE).
        path: Option<std::path::PathBuf>,
    },
    /// Create a key scope with an active version 1.
    CreateScope {
        /// The scope name (letters, digits, `_ - . : /`).
        scope: String,
    },
    /// Make a new active version; the old one goes to grace until now + --grace.
    Rotate {
        /// The scope.
        scope: String,
        /// How long the old version still opens: 30d, 12h, 15m, 90s, or 0 to retire it now.
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        grace: Duration,
    },
    /// Retire a grace version now: it stops opening anything.
    Retire {
        /// The scope.
        scope: String,
        /// The version (3 or v3).
        #[arg(value_parser = parse_version)]
        version: KekVersion,
        /// Retire inside the cache window: values that running applications still seal under
        /// it until their window ends will not open until it is reinstated.
        #[arg(long)]
        force: bool,
    },
    /// Put a retired version back into grace (undo an early retirement).
    Reinstate {
        /// The scope.
        scope: String,
        /// The version.
        #[arg(value_parser = parse_version)]
        version: KekVersion,
        /// New grace period.
        #[arg(long, default_value = "1d", value_parser = parse_duration)]
        grace: Duration,
    },
    /// Destroy a retired version's material for good. Refuses while rows still use it.
    Destroy {
        /// The scope.
        scope: String,
        /// The version.
        #[arg(value_parser = parse_version)]
        version: KekVersion,
        /// Crypto-shred: destroy even though rows still use it; they become unreadable forever.
        #[arg(long)]
        shred: bool,
        /// Destroy inside the cache window: values that running applications still seal under
        /// it until their window ends are lost.
        #[arg(long)]
        force: bool,
    },
    /// Retire every grace version whose deadline has passed.
    ExpireGrace,
    /// Complete every pending crypto-shred: make a new root epoch in the backend, move every
    /// surviving KEK record onto it, and destroy the old epoch there, so that backups of the
    /// key store taken before the destroys open nothing of the destroyed versions
    /// (docs/shredding.md). Batch several destroys, then run this once.
    CompleteShred,
    /// Split the root key into M-of-N Shamir shares (files or custodian tokens).
    Split(crate::commands::shamir::SplitArgs),
    /// Rebuild the root key in memory from shares and check it against the key store.
    Unseal(crate::commands::shamir::UnsealArgs),
    /// Re-wrap every KEK record under a new root key of the --kms backend (cheap: no row is
    /// touched).
    RotateRoot(crate::commands::rotate_root::RotateRootArgs),
}

/// Parses `30d`, `12h`, `15m`, `90s`, `0`.
///
/// # Errors
/// A message for clap.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit, like 30d, 12h, 15m or 90s"))?;
    let secs = match unit {
        "d" => n.checked_mul(86_400),
        "h" => n.checked_mul(3_600),
        "m" => n.checked_mul(60),
        "s" | "" => Some(n),
        _ => None,
    }
    .ok_or_else(|| format!("{s:?}: unit must be d, h, m or s"))?;
    Ok(Duration::from_secs(secs))
}

/// Parses `3` or `v3`.
///
/// # Errors
/// A message for clap.
pub fn parse_version(s: &str) -> std::result::Result<KekVersion, String> {
    s.trim_start_matches('v')
        .parse::<u32>()
        .ok()
        .and_then(|v| KekVersion::new(v).ok())
        .ok_or_else(|| format!("{s:?}: expected a version number from 1, like 3 or v3"))
}

/// Now, as the key ring's system clock tells it.
fn env_now() -> leakless::key::UnixTime {
    leakless::key::Clock::now(&leakless::key::SystemClock)
}

/// Times in JSON output: ISO 8601 in UTC, as in the tables (`2026-12-05T12:49:31Z`).
fn iso(t: leakless::key::UnixTime) -> String {
    t.to_string()
}

#[derive(Debug, Serialize)]
struct VersionJson {
    scope: String,
    version: u32,
    state: &'static str,
    grace_until: Option<String>,
    root_key_id: Option<String>,
    created_at: String,
    updated_at: String,
    deactivated_at: Option<String>,
    cache_window_secs: u32,
    retire_destroy_allowed_from: Option<String>,
}

#[derive(Debug, Serialize)]
struct VersionListJson {
    #[serde(flatten)]
    version: VersionJson,
    /// For a destroyed version: `pending`, `scheduled` or `complete`.
    shred: Option<&'static str>,
    /// When the shred reached that status.
    shred_at: Option<String>,
}

impl From<&KekRecord> for VersionJson {
    fn from(r: &KekRecord) -> Self {
        Self {
            scope: r.scope.to_string(),
            version: r.version.get(),
            state: r.state.name(),
            grace_until: r.state.grace_until().map(iso),
            root_key_id: r.wrapped.as_ref().map(|w| w.root_key_id.clone()),
            created_at: iso(r.created_at),
            updated_at: iso(r.updated_at),
            deactivated_at: r.deactivated_at.map(iso),
            cache_window_secs: r.recheck_secs,
            retire_destroy_allowed_from: r.change_allowed_at().map(iso),
        }
    }
}

#[derive(Debug, Serialize)]
struct AuditJson {
    at: String,
    actor: String,
    reason: String,
    action: &'static str,
    scope: String,
    version: u32,
    from: Option<String>,
    to: String,
}

impl From<&AuditRecord> for AuditJson {
    fn from(a: &AuditRecord) -> Self {
        Self {
            at: iso(a.at),
            actor: a.actor.clone(),
            reason: a.reason.clone(),
            action: a.action.name(),
            scope: a.scope.to_string(),
            version: a.version.get(),
            from: a.from.map(|s| s.to_string()),
            to: a.to.to_string(),
        }
    }
}

fn scope(name: &str) -> Result<KeyScope> {
    Ok(KeyScope::new(name)?)
}

fn print_audit(
    env: &Env,
    ring_store: &dyn leakless::store::KeyStore,
    s: Option<&KeyScope>,
) -> Result<()> {
    let log = ring_store.audit_log(s)?;
    if env.global.json {
        return out_json(&log.iter().map(AuditJson::from).collect::<Vec<_>>());
    }
    let rows: Vec<Vec<String>> = log
        .iter()
        .map(|a| {
            vec![
                iso(a.at),
                a.action.name().to_owned(),
                a.scope.to_string(),
                a.version.to_string(),
                a.from.map_or_else(|| "-".to_owned(), |s| s.to_string()),
                a.to.to_string(),
                a.actor.clone(),
                a.reason.clone(),
            ]
        })
        .collect();
    out_table(
        &[
            "AT", "ACTION", "SCOPE", "VERSION", "FROM", "TO", "ACTOR", "REASON",
        ],
        &rows,
        &[3],
    );
    Ok(())
}

/// Counts rows of every manifest column sealed under `scope`/`version`.
fn rows_using(env: &mut Env, scope: &KeyScope, version: KekVersion) -> Result<Vec<(String, u64)>> {
    let targets = env.targets(None, None).map_err(|e| {
        Failure::new(
            e.kind,
            format!(
                "destroy must first count the rows still on the version: {}",
                e.what
            ),
            "pass --manifest PATH so every sealed column can be checked",
        )
    })?;
    let store = env.key_store()?;
    let mut db = env.connect()?;
    let mut hits = Vec::new();
    let on = |v: &&VersionRows| v.scope == scope.as_str() && v.version == version.get();
    for (t, c) in &targets {
        let s = column_status(&mut db, &*store, t, c)?;
        let n: u64 = s.versions.iter().filter(on).map(|v| v.rows).sum();
        if n > 0 {
            hits.push((format!("{}.{}", t.table, c.column), n));
        }
        if let Some(ix) = &s.index {
            let n: u64 = ix.versions.iter().filter(on).map(|v| v.rows).sum();
            if n > 0 {
                hits.push((format!("{}.{} (index tokens)", t.table, ix.column), n));
            }
        }
    }
    Ok(hits)
}

/// The blind-index columns of the manifest whose index key scope is `scope`; empty when no
/// manifest was given (the key store alone does not say which scopes are index scopes).
fn index_columns(env: &mut Env, scope: &KeyScope) -> Result<Vec<(SealedTable, SealedColumn)>> {
    if env.global.manifest.is_none() {
        return Ok(Vec::new());
    }
    let mut targets = env.targets(None, None)?;
    targets.retain(|(_, c)| {
        c.blind_index.as_ref().is_some_and(|b| {
            b.scope == scope.as_str() || (b.per_tenant && scope.as_str().starts_with(&b.scope))
        })
    });
    Ok(targets)
}

/// Tokens of the blind indexes under `scope` that use `version`, per token column.
fn tokens_using(
    env: &mut Env,
    scope: &KeyScope,
    version: KekVersion,
) -> Result<Vec<(String, u64)>> {
    let columns = index_columns(env, scope)?;
    if columns.is_empty() {
        return Ok(Vec::new());
    }
    let store = env.key_store()?;
    let mut db = env.connect()?;
    let mut hits = Vec::new();
    for (t, c) in &columns {
        if let Some(b) = &c.blind_index {
            let s = index_status(&mut db, &*store, t, c, b)?;
            let n: u64 = s
                .versions
                .iter()
                .filter(|v| v.scope == scope.as_str() && v.version == version.get())
                .map(|v| v.rows)
                .sum();
            if n > 0 {
                hits.push((format!("{}.{}", t.table, b.column), n));
            }
        }
    }
    Ok(hits)
}

/// Refuses to retire `scope` `version` while blind-index tokens use it: a look-up computes
/// tokens only for versions that still open, so it would silently miss those rows.
fn refuse_if_tokens(env: &mut Env, scope: &KeyScope, version: KekVersion) -> Result<()> {
    let hits = tokens_using(env, scope, version)?;
    let total: u64 = hits.iter().map(|h| h.1).sum();
    if total == 0 {
        return Ok(());
    }
    let list: Vec<String> = hits.iter().map(|(c, n)| format!("{c}: {n}")).collect();
    Err(Failure::new(
        Kind::Refused,
        format!(
            "refusing to retire {scope} {version}: {total} blind-index tokens still use it ({}); \
             look-ups would silently miss those rows",
            list.join(", ")
        ),
        "run `leakless-migrate reindex` (it moves every token onto the active version), then \
         retire",
    ))
}

fn done(env: &Env, what: String) -> Result<()> {
    if env.global.json {
        out_json(&serde_json::json!({ "ok": true, "done": what }))
    } else {
        out(what);
        Ok(())
    }
}

/// Runs a `keys` subcommand.
///
/// # Errors
/// [`Kind::Keys`] from the key ring, [`Kind::Refused`] for a refused destroy,
/// [`Kind::Conflict`] on a lost race.
pub fn run(env: &mut Env, cmd: &KeysCommand) -> Result<()> {
    let who = env.who();
    match cmd {
        KeysCommand::List { scope: only, audit } => {
            let store = env.key_store()?;
            let scopes = match only {
                Some(s) => vec![scope(s)?],
                None => store.scopes()?,
            };
            let mut records = Vec::new();
            for s in &scopes {
                records.extend(store.list(s)?);
            }
            if env.global.json && !audit {
                let log = store.audit_log(None)?;
                let rows: Vec<VersionListJson> = records
                    .iter()
                    .map(|r| {
                        let (shred, shred_at) = match shred_status(r, &log) {
                            Some(ShredStatus::Pending { destroyed_at }) => {
                                (Some("pending"), Some(iso(destroyed_at)))
                            }
                            Some(ShredStatus::Scheduled { at }) => {
                                (Some("scheduled"), Some(iso(at)))
                            }
                            Some(ShredStatus::Complete { at }) => (Some("complete"), Some(iso(at))),
                            _ => (None, None),
                        };
                        VersionListJson {
                            version: VersionJson::from(r),
                            shred,
                            shred_at,
                        }
                    })
                    .collect();
                return out_json(&rows);
            }
            let log = store.audit_log(None)?;
            let rows: Vec<Vec<String>> = records
                .iter()
                .map(|r| {
                    vec![
                        r.scope.to_string(),
                        r.version.to_string(),
                        r.state.name().to_owned(),
                        r.state
                            .grace_until()
                            .map_or_else(|| "-".to_owned(), |t| t.to_string()),
                        r.wrapped
                            .as_ref()
                            .map_or("(erased)", |w| w.root_key_id.as_str())
                            .to_owned(),
                        r.created_at.to_string(),
                        shred_status(r, &log).map_or_else(|| "-".to_owned(), |s| s.to_string()),
                    ]
                })
                .collect();
            out_table(
                &[
                    "SCOPE",
                    "VERSION",
                    "STATE",
                    "GRACE_UNTIL",
                    "ROOT_KEY",
                    "CREATED",
                    "SHRED",
                ],
                &rows,
                &[1],
            );
            if *audit {
                out("");
                let s = only.as_deref().map(scope).transpose()?;
                print_audit(env, &*store, s.as_ref())?;
            }
            Ok(())
        }
        KeysCommand::Audit {
            scope: only,
            verify: false,
        } => {
            let store = env.key_store()?;
            let s = only.as_deref().map(scope).transpose()?;
            print_audit(env, &*store, s.as_ref())
        }
        KeysCommand::Audit { verify: true, .. } => {
            let ring = env.ring()?;
            let report = ring.verify_store()?;
            if env.global.json {
                return out_json(&serde_json::json!({
                    "ok": true,
                    "audit_entries": report.audit_entries,
                    "legacy_audit_entries": report.legacy_audit_entries,
                    "records": report.records,
                }));
            }
            out(format!(
                "key store verified: {} audit entries in one unbroken chain, {} records \
                 authenticated{}",
                report.audit_entries,
                report.records,
                if report.legacy_audit_entries > 0 {
                    format!(
                        "; {} earlier entries predate authentication and are not protected",
                        report.legacy_audit_entries
                    )
                } else {
                    String::new()
                }
            ));
            Ok(())
        }
        KeysCommand::Upgrade => {
            let ring = env.ring()?;
            let n = ring.upgrade_store(&who)?;
            done(
                env,
                if n == 0 {
                    "the key store is already authenticated; nothing to do".to_owned()
                } else {
                    format!(
                        "authenticated {n} key records under a new integrity key; verify any \
                         time with `leakless-migrate keys audit --verify`"
                    )
                },
            )
        }
        KeysCommand::Init { path } => {
            let Some(path) = path.as_ref().or(env.global.kms.root_key_file.as_ref()) else {
                return Err(Failure::new(
                    Kind::Usage,
                    "no path for the new root key file",
                    "pass it (keys init /etc/leakless/root.key) or set --root-key-file / \
                     LEAKLESS_ROOT_KEY_FILE",
                ));
            };
            if path.symlink_metadata().is_ok() {
                return Err(Failure::new(
                    Kind::Usage,
                    format!(
                        "{} exists; keys init never overwrites a key",
                        path.display()
                    ),
                    "pick another path; to change the root key of a key store, use \
                     rotate-root",
                ));
            }
            let kms = leakless::kms::LocalKms::generate_key_file(path)?;
            done(
                env,
                format!(
                    "wrote a new root key to {} (mode 0600, root key id {}); back it up \
                     (keys split makes custodian shares), then point --root-key-file at it",
                    path.display(),
                    kms.root_key_id()
                ),
            )
        }
        KeysCommand::CreateScope { scope: name } => {
            let ring = env.ring()?;
            let v = ring.create_scope(&scope(name)?, &who)?;
            done(env, format!("created scope {name} with active KEK {v}"))
        }
        KeysCommand::Rotate { scope: name, grace } => {
            let ring = env.ring()?;
            let s = scope(name)?;
            let indexes = index_columns(env, &s)?;
            let v = ring.rotate(&s, *grace, &who)?;
            let old = ring
                .versions(&s)?
                .into_iter()
                .filter(|r| {
                    r.version < v && matches!(r.state, KekState::Grace { .. } | KekState::Retired)
                })
                .max_by_key(|r| r.version);
            done(
                env,
                format!(
                    "rotated {name}: {v} is active{}; {}",
                    old.map(|r| format!(", {} is {}", r.version, r.state))
                        .unwrap_or_default(),
                    if indexes.is_empty() {
                        "run `leakless-migrate rewrap` to move rows onto it".to_owned()
                    } else {
                        let list: Vec<String> = indexes
                            .iter()
                            .map(|(t, c)| format!("{}.{}", t.table, c.column))
                            .collect();
                        format!(
                            "it is the index key of {}: run `leakless-migrate reindex` to move \
                             their tokens onto it before the grace ends",
                            list.join(", ")
                        )
                    }
                ),
            )
        }
        KeysCommand::Retire {
            scope: name,
            version,
            force,
        } => {
            refuse_if_tokens(env, &scope(name)?, *version)?;
            let ring = env.ring()?;
            if *force {
                ring.retire_ignoring_cache_window(&scope(name)?, *version, &who)?;
            } else {
                ring.retire(&scope(name)?, *version, &who)?;
            }
            done(
                env,
                format!("retired {name} {version}: it opens nothing now"),
            )
        }
        KeysCommand::Reinstate {
            scope: name,
            version,
            grace,
        } => {
            let ring = env.ring()?;
            ring.reinstate(&scope(name)?, *version, *grace, &who)?;
            done(env, format!("reinstated {name} {version} into grace"))
        }
        KeysCommand::Destroy {
            scope: name,
            version,
            shred,
            force,
        } => destroy(env, name, *version, *shred, *force),
        KeysCommand::CompleteShred => complete_shred(env),
        KeysCommand::ExpireGrace => {
            let now = env_now();
            let mut expired = Vec::new();
            {
                let store = env.key_store()?;
                for sc in store.scopes()? {
                    for r in store.list(&sc)? {
                        if let KekState::Grace { until } = r.state
                            && until <= now
                        {
                            expired.push((sc.clone(), r.version));
                        }
                    }
                }
            }
            for (sc, v) in &expired {
                refuse_if_tokens(env, sc, *v)?;
            }
            let ring = env.ring()?;
            let retired = ring.expire_grace(&who)?;
            let list: Vec<String> = retired.iter().map(|(s, v)| format!("{s} {v}")).collect();
            done(
                env,
                format!(
                    "retired {} expired grace versions: {}",
                    list.len(),
                    list.join(", ")
                ),
            )
        }
        KeysCommand::Split(a) => crate::commands::shamir::split(env, a),
        KeysCommand::Unseal(a) => crate::commands::shamir::unseal(env, a),
        KeysCommand::RotateRoot(a) => {
            let line = crate::commands::rotate_root::run(env, a)?;
            done(env, line)
        }
    }
}

fn destroy(env: &mut Env, name: &str, version: KekVersion, shred: bool, force: bool) -> Result<()> {
    let s = scope(name)?;
    let ring: KeyRing = env.ring()?;
    let record = ring
        .versions(&s)?
        .into_iter()
        .find(|r| r.version == version)
        .ok_or_else(|| {
            Failure::from(leakless::Error::KeyVersionNotFound {
                location: None,
                scope: s.clone(),
                version,
            })
        })?;
    if record.state != KekState::Retired {
        return Err(Failure::new(
            Kind::Keys,
            format!(
                "key {name} {version} is {}, only a retired version can be destroyed",
                record.state
            ),
            "rotate it away (`keys rotate`), rewrap, then `keys retire` it first",
        ));
    }
    if !force
        && let Some(allowed_at) = record.change_allowed_at()
        && env_now() < allowed_at
    {
        return Err(Failure::from(leakless::Error::KeyChangeTooEarly {
            scope: s,
            version,
            operation: "destroy",
            allowed_at,
        }));
    }
    let hits = rows_using(env, &s, version)?;
    let total: u64 = hits.iter().map(|h| h.1).sum();
    if total > 0 && !shred {
        let list: Vec<String> = hits.iter().map(|(c, n)| format!("{c}: {n}")).collect();
        return Err(Failure::new(
            Kind::Refused,
            format!(
                "refusing to destroy {name} {version}: {total} rows still use it ({})",
                list.join(", ")
            ),
            format!(
                "move them first: `keys reinstate {name} {version}`, `rewrap` (data) or \
                 `reindex` (index tokens), `keys retire`, then destroy; or pass --shred to make \
                 those rows unreadable (tokens: unfindable) for good"
            ),
        ));
    }
    let question = if total > 0 {
        format!("Destroy {name} {version} and make {total} rows unreadable forever?")
    } else {
        format!("Destroy {name} {version}? No row uses it; this cannot be undone.")
    };
    env.confirm(&question, name)?;
    if force {
        ring.destroy_ignoring_cache_window(&s, version, &env.who())?;
    } else {
        ring.destroy(&s, version, &env.who())?;
    }
    done(
        env,
        format!(
            "destroyed {name} {version}{}; shred pending: key-store backups taken before now \
             still hold it under the current root epoch until `leakless-migrate keys \
             complete-shred` destroys that epoch (batch other destroys first; a version 1 TPM \
             sealed file cannot, see docs/shredding.md)",
            if total > 0 {
                format!(" ({total} rows crypto-shredded)")
            } else {
                String::new()
            }
        ),
    )
}

/// `keys complete-shred`: one root epoch change for every pending shred.
fn complete_shred(env: &mut Env) -> Result<()> {
    let who = env.who();
    let root = env.root()?;
    let ring = env.ring()?;
    let epochs: &dyn RootEpochs = match &root {
        Root::Local(k) => &**k,
        Root::Vault(k) => &**k,
        Root::Aws(k) => &**k,
        Root::Pkcs11(k) => &**k,
        // Version 2 sealed files (persistent objects) have epochs; a version 1 (blob) file is
        // refused by `begin_next_epoch` with how to migrate (`keys rotate-root`).
        Root::Tpm(k) => &**k,
    };
    let pending = ring
        .shred_states()?
        .into_iter()
        .filter(|s| matches!(s.status, ShredStatus::Pending { .. }))
        .count();
    if pending == 0 {
        return done(env, "no shred is pending; nothing done".to_owned());
    }
    env.confirm(
        &format!(
            "Destroy the current root epoch in the backend after moving every surviving KEK \
             record to a new one? Backups of the key store taken before now will open nothing \
             of the {pending} destroyed versions, and nothing that is not also in a newer \
             backup; this cannot be undone."
        ),
        "complete-shred",
    )?;
    let Some(report) = ring.complete_shred(epochs, &who)? else {
        return done(env, "no shred is pending; nothing done".to_owned());
    };
    let versions: Vec<String> = report
        .shredded
        .iter()
        .map(|(s, v)| format!("{s} {v}"))
        .collect();
    let status = match report.destroyed.status {
        Destruction::Scheduled { at } => format!(
            "shred pending until {at}: the backend refuses the old root epoch {} now and \
             deletes it then (an administrator of the backend can still cancel it until then)",
            report.destroyed.epoch
        ),
        _ => format!(
            "old root epoch {} destroyed in the backend",
            report.destroyed.epoch
        ),
    };
    if env.global.json {
        return out_json(&serde_json::json!({
            "ok": true,
            "shredded": versions,
            "records_moved": report.records_moved,
            "old_epoch": report.destroyed.epoch.to_string(),
            "complete": report.destroyed.status.is_complete(),
            "copies_may_remain": report.destroyed.copies_may_remain,
        }));
    }
    out(format!(
        "completed the shred of {}: moved {} KEK records to a new root epoch; {status}",
        versions.join(", "),
        report.records_moved
    ));
    out(format!(
        "copies may remain: {}",
        report.destroyed.copies_may_remain
    ));
    Ok(())
}
