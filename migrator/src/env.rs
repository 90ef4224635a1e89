//! What a command runs with, built from the global options: database, key ring, manifest,
//! output mode and the audit identity.

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use leakless::kms::Kms;
use leakless::manifest::{SchemaManifest, SealedColumn, SealedTable};
use leakless::store::sql::SqlKeyStore;
use leakless::store::{FileKeyStore, KeyStore};
use leakless::{AuditInfo, KeyRing};
use serde::Serialize;

use crate::cli::Global;
use crate::db::{Db, DbUrl, ident};
use crate::error::{Failure, Kind, Result};
use crate::kms::Root;

/// The environment a command runs in. Pieces are built on first use, so `keys list` needs no
/// manifest and `status` needs no key file until it asks for key states.
#[derive(Debug)]
pub struct Env {
    /// The global options.
    pub global: Global,
    ring: Option<KeyRing>,
    root: Option<Root>,
    manifest: Option<SchemaManifest>,
}

/// Writes one line to stdout (output of the command, not a diagnostic).
pub fn out(line: impl AsRef<str>) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{}", line.as_ref());
}

/// Writes `value` to stdout as pretty-printed JSON (the output of `--json`).
///
/// # Errors
/// [`Kind::Usage`] when `value` cannot be encoded (a bug).
pub fn out_json(value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| {
        Failure::new(
            Kind::Usage,
            format!("cannot encode JSON: {e}"),
            "report a bug",
        )
    })?;
    out(text);
    Ok(())
}

/// Writes a table to stdout: `header` then `rows`, every column as wide as its widest cell
/// (the last column unpadded), columns whose index is in `right` aligned right.
pub fn out_table(header: &[&str], rows: &[Vec<String>], right: &[usize]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (i, (cell, w)) in cells.into_iter().zip(&widths).enumerate() {
            let pad = w.saturating_sub(cell.chars().count());
            if i > 0 {
                text.push_str("  ");
            }
            if right.contains(&i) {
                text.extend(std::iter::repeat_n(' ', pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                if i < last {
                    text.extend(std::iter::repeat_n(' ', pad));
                }
            }
        }
        out(text);
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Writes one line to stderr (progress and notes).
pub fn note(line: impl AsRef<str>) {
    let mut o = std::io::stderr().lock();
    let _ = writeln!(o, "{}", line.as_ref());
}

impl Env {
    /// Wraps the global options.
    #[must_use]
    pub fn new(global: Global) -> Self {
        Self {
            global,
            ring: None,
            root: None,
            manifest: None,
        }
    }

    /// The database URL.
    ///
    /// # Errors
    /// [`Kind::Usage`] when none was given.
    pub fn db_url(&self) -> Result<DbUrl> {
        let url = self.global.database_url.as_deref().ok_or_else(|| {
            Failure::new(
                Kind::Usage,
                "no database given",
                "pass --database-url postgres://USER@HOST/DB (or mysql://..., or an SQLite \
                 path), or set LEAKLESS_DATABASE_URL",
            )
        })?;
        DbUrl::parse(url)
    }

    /// A new connection to the application database.
    ///
    /// # Errors
    /// As [`Self::db_url`] and [`DbUrl::connect`].
    pub fn connect(&self) -> Result<Db> {
        self.db_url()?.connect()
    }

    /// The audit identity of this run.
    #[must_use]
    pub fn who(&self) -> AuditInfo {
        let actor = self
            .global
            .actor
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "leakless-migrate".to_owned());
        AuditInfo::new(actor, self.global.reason.clone())
    }

    /// The root of trust chosen with `--kms` (default: the local root key from
    /// `--root-key-file` or `LEAKLESS_ROOT_KEY`), opened once.
    ///
    /// # Errors
    /// [`Kind::Keys`] naming the missing flag and variable, or the backend's failure.
    pub fn root(&mut self) -> Result<Root> {
        if let Some(r) = &self.root {
            return Ok(r.clone());
        }
        let root = self.global.kms.open()?;
        self.root = Some(root.clone());
        Ok(root)
    }

    /// The root-key backend as the key ring holds it (see [`Self::root`]).
    ///
    /// # Errors
    /// As [`Self::root`].
    pub fn kms(&mut self) -> Result<Arc<dyn Kms>> {
        Ok(self.root()?.kms())
    }

    /// The key store from `--key-store`, defaulting to the application database.
    ///
    /// # Errors
    /// [`Kind::Keys`] when it cannot be opened; [`Kind::Database`] when it is the application
    /// database and that cannot be reached.
    pub fn key_store(&self) -> Result<Arc<dyn KeyStore>> {
        if let Some(path) = self
            .global
            .key_store
            .as_deref()
            .and_then(|s| s.strip_prefix("file:"))
        {
            return Ok(Arc::new(FileKeyStore::open(path)?));
        }
        let url = match self.global.key_store.as_deref() {
            Some(s) => DbUrl::parse(s)?,
            None => self.db_url().map_err(|_| {
                Failure::new(
                    Kind::Usage,
                    "no key store given",
                    "pass --key-store (a database URL or file:PATH), or --database-url to \
                     keep the keys in the application database",
                )
            })?,
        };
        if self.global.key_store.is_none() {
            // The keys live in the application database: a database that cannot be reached
            // is a database error (exit 4) about --database-url, not a key-store one.
            drop(url.connect()?);
        }
        let store = SqlKeyStore::connect(&url.key_store_url())?;
        store.create_schema()?;
        Ok(Arc::new(store))
    }

    /// The key ring (built once).
    ///
    /// # Errors
    /// As [`Self::kms`] and [`Self::key_store`].
    pub fn ring(&mut self) -> Result<KeyRing> {
        if let Some(r) = &self.ring {
            return Ok(r.clone());
        }
        let ring = KeyRing::builder(self.kms()?, self.key_store()?)
            .cache_window(self.global.cache_window)
            .build();
        self.ring = Some(ring.clone());
        Ok(ring)
    }

    /// The schema manifest (read once).
    ///
    /// # Errors
    /// [`Kind::Usage`] when missing, unreadable or invalid.
    pub fn manifest(&mut self) -> Result<&SchemaManifest> {
        if self.manifest.is_none() {
            let path = self.global.manifest.clone().ok_or_else(|| {
                Failure::new(
                    Kind::Usage,
                    "this command needs the schema manifest",
                    "pass --manifest PATH (or LEAKLESS_MANIFEST): the JSON file listing the \
                     sealed tables and columns",
                )
            })?;
            let text = std::fs::read_to_string(&path).map_err(|e| {
                Failure::new(
                    Kind::Usage,
                    format!("cannot read manifest {}: {e}", path.display()),
                    "check the path given to --manifest",
                )
            })?;
            let m = SchemaManifest::from_json(&text).map_err(|e| match e {
                leakless::Error::Manifest { problem, .. } => Failure::new(
                    Kind::Usage,
                    format!("manifest {}: {problem}", path.display()),
                    "fix the manifest (docs/operations.md shows its shape)",
                ),
                other => Failure::from(other),
            })?;
            for t in &m.tables {
                ident(&t.table)?;
                ident(&t.row_id_column)?;
                for c in &t.columns {
                    ident(&c.column)?;
                }
            }
            self.manifest = Some(m);
        }
        self.manifest
            .as_ref()
            .ok_or_else(|| Failure::new(Kind::Usage, "manifest not loaded", "pass --manifest PATH"))
    }

    /// The manifest's column `--table`/`--column`.
    ///
    /// # Errors
    /// [`Kind::Usage`] when the manifest does not list it.
    pub fn target(
        &mut self,
        which: &crate::commands::jobs::Column,
    ) -> Result<(SealedTable, SealedColumn)> {
        let (table, column) = (which.table.as_str(), which.column.as_str());
        self.targets(Some(table), Some(column))?
            .into_iter()
            .next()
            .ok_or_else(|| {
                Failure::new(
                    Kind::Usage,
                    format!("the manifest has no sealed column {table}.{column}"),
                    "check --table/--column",
                )
            })
    }

    /// The manifest's columns, narrowed to `table` (and `column`) when given.
    ///
    /// # Errors
    /// [`Kind::Usage`] for a table or column the manifest does not list.
    pub fn targets(
        &mut self,
        table: Option<&str>,
        column: Option<&str>,
    ) -> Result<Vec<(SealedTable, SealedColumn)>> {
        let m = self.manifest()?.clone();
        let mut out = Vec::new();
        for t in &m.tables {
            if table.is_some_and(|x| x != t.table) {
                continue;
            }
            for c in &t.columns {
                if column.is_some_and(|x| x != c.column) {
                    continue;
                }
                out.push((t.clone(), c.clone()));
            }
        }
        if out.is_empty() {
            let listed: Vec<String> = m
                .tables
                .iter()
                .flat_map(|t| {
                    t.columns
                        .iter()
                        .map(move |c| format!("{}.{}", t.table, c.column))
                })
                .collect();
            return Err(Failure::new(
                Kind::Usage,
                format!(
                    "the manifest has no sealed column {}{}",
                    table.unwrap_or("*"),
                    column.map(|c| format!(".{c}")).unwrap_or_default()
                ),
                format!("sealed columns in the manifest: {}", listed.join(", ")),
            ));
        }
        Ok(out)
    }

    /// Asks for confirmation: `--yes` passes; on a terminal the user must type `expected`;
    /// otherwise it refuses.
    ///
    /// # Errors
    /// [`Kind::Refused`] when declined or when stdin is no terminal and `--yes` is missing.
    pub fn confirm(&self, question: &str, expected: &str) -> Result<()> {
        if self.global.yes {
            return Ok(());
        }
        if !std::io::stdin().is_terminal() {
            return Err(Failure::new(
                Kind::Refused,
                format!("{question} It needs confirmation, and stdin is not a terminal"),
                "rerun with --yes in automation, or run it in a terminal to confirm",
            ));
        }
        {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "{question}\nType {expected:?} to confirm: ");
            let _ = e.flush();
        }
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        if line.trim() == expected {
            Ok(())
        } else {
            Err(Failure::new(
                Kind::Refused,
                "not confirmed; nothing was changed",
                format!("type exactly {expected:?}, or pass --yes"),
            ))
        }
    }
}
