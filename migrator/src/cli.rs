//! The command line: global options and the subcommand list.
//!
//! Each subcommand lives in its own module under [`crate::commands`]. Registering one takes
//! two lines: a variant in [`Command`] (or in `commands::keys::KeysCommand` for a `keys ...`
//! subcommand) and its arm in [`crate::commands::run`] (or `commands::keys::run`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands;
use crate::kms::KmsArgs;

/// leakless-migrate: key lifecycle, status, online re-wrap, adoption and verification of
/// leakless-sealed columns, for DBAs.
///
/// Exit codes: 0 ok; 1 a check failed or the migrator refused; 2 usage; 3 keys (root key, KMS,
/// key store, key state); 4 database; 5 a concurrent change won (nothing written, rerun).
#[derive(Debug, Parser)]
#[command(name = "leakless-migrate", version, max_term_width = 100)]
pub struct Cli {
    /// Global options.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes. `Debug` shows the database and key-store URLs only with
/// their passwords masked.
#[derive(clap::Args)]
pub struct Global {
    /// The application database: postgres://..., mysql://... (mariadb://...), or SQLite
    /// (sqlite://PATH, or the path of an existing file). Percent-encode `@ ? # /` and spaces in
    /// the password. Printed only with its password masked.
    #[arg(
        long,
        global = true,
        env = "LEAKLESS_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,

    /// Where the wrapped KEK records and the audit log live: a database URL (as above) or a
    /// JSON key file (file:PATH). Default: the application database (tables leakless_kek and
    /// leakless_key_audit).
    #[arg(
        long,
        global = true,
        env = "LEAKLESS_KEY_STORE",
        hide_env_values = true
    )]
    pub key_store: Option<String>,

    /// The schema manifest (JSON): which tables and columns are sealed.
    #[arg(long, global = true, env = "LEAKLESS_MANIFEST")]
    pub manifest: Option<PathBuf>,

    /// Print machine-readable JSON on stdout instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    /// Answer yes to confirmations (needed when stdin is not a terminal).
    #[arg(long, short = 'y', global = true)]
    pub yes: bool,

    /// Who acts, for the audit log. Default: $USER.
    #[arg(long, global = true, env = "LEAKLESS_ACTOR")]
    pub actor: Option<String>,

    /// Why, for the audit log (a ticket, "scheduled rotation").
    #[arg(long, global = true, default_value = "")]
    pub reason: String,

    /// The cache window recorded on key versions this run creates (`keys create-scope`,
    /// `keys rotate`): applications re-read which version is active at least this often, and
    /// `keys retire` / `keys destroy` wait this long (plus a tenth) after a rotation. Keep it
    /// at least as long as the applications' own KEK cache age.
    #[arg(
        long,
        global = true,
        env = "LEAKLESS_CACHE_WINDOW",
        default_value = "5m",
        value_parser = crate::commands::keys::parse_duration
    )]
    pub cache_window: std::time::Duration,

    /// Where the root key is (`--kms` and each backend's settings): last, under its own
    /// heading in `--help`.
    #[command(flatten)]
    pub kms: KmsArgs,
}

impl std::fmt::Debug for Global {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = |u: &Option<String>| u.as_deref().map(leakless::redact::redact_url);
        f.debug_struct("Global")
            .field("database_url", &url(&self.database_url))
            .field("key_store", &url(&self.key_store))
            .field("manifest", &self.manifest)
            .field("json", &self.json)
            .field("yes", &self.yes)
            .field("actor", &self.actor)
            .field("reason", &self.reason)
            .field("cache_window", &self.cache_window)
            .field("kms", &self.kms)
            .finish()
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Key scopes and KEK versions: list, create, rotate, retire, destroy, rotate the root key,
    /// read the audit log.
    #[command(subcommand)]
    Keys(commands::keys::KeysCommand),
    /// Per table and column: rows per KEK version, plaintext rows, rows on retired or destroyed
    /// versions, blind-index tokens per index key version, and the work a rewrap or reindex
    /// would do.
    Status(commands::status::Args),
    /// Move every DEK onto the active KEK version (data ciphertext untouched), online,
    /// batched and resumable.
    Rewrap(commands::rewrap::Args),
    /// Open every envelope (or a sample) and report those that fail, by table, column and row.
    Verify(commands::verify::Args),
    /// Bring a plaintext column under leakless: backfill the sealed column, verify, print the
    /// DROP statement.
    Adopt(commands::adopt::Args),
    /// Move a sealed column (`moving(...)`): copy the old column's envelope into the new one
    /// in every row, each checked to open there first; online, batched, resumable.
    Copy(commands::copy::Args),
    /// Emergency: new DEKs and freshly encrypted data for every row, online and resumable.
    Reencrypt(commands::reencrypt::Args),
    /// Compute blind-index tokens: backfill rows without one, and move every token onto the
    /// index scope's active key version (after `keys rotate` of the index scope), online,
    /// batched and resumable.
    Reindex(commands::reindex::Args),
    /// The finishing step of an adoption, after DROP COLUMN: rewrite the table and purge the
    /// write-ahead log the server lets SQL reach; list what it cannot reach (archives,
    /// replicas, server log files, backups).
    PurgeResidue(commands::purge_residue::Args),
}
