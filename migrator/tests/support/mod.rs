//! Test fixtures: a database on one of the three backends with a sealed table, a root key
//! file, a key store in the same database, a manifest, and a runner for the real
//! `leakless-migrate` binary.

#![allow(dead_code, unreachable_pub, reason = "each test file uses a part")]

#[allow(
    unused_imports,
    reason = "each test binary uses a different part of the support code"
)]
pub use leakless_testkit as services;
#[allow(
    unused_imports,
    reason = "each test binary uses a different part of the support code"
)]
pub use leakless_testkit::{random_hex, service_var};

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use leakless::kms::LocalKms;
use leakless::store::sql::SqlKeyStore;
use leakless::{AuditInfo, FieldContext, FieldPolicy, KeyRing, KeyScope, RowId};
use leakless_migrator::db::{Bind, Db, DbUrl, IdBytes, OneInt};

pub use services::TestDb;

/// Defines, for each `check => [backends]`, a module `check` with one test per backend
/// (`sqlite`, `postgres`, `mariadb`) calling `check(Backend::...)`: `adopt::postgres` runs
/// `adopt(Backend::Postgres)`. For the test files that run one check on several databases
/// (`#[macro_use]`).
#[allow(
    unused_macros,
    reason = "used by the test files that run a check per backend"
)]
macro_rules! backend_tests {
    ($($check:ident => [$($backend:ident),+ $(,)?]),+ $(,)?) => {
        $(
            mod $check {
                $(
                    #[test]
                    fn $backend() {
                        super::$check(backend_tests!(@backend $backend));
                    }
                )+
            }
        )+
    };
    (@backend sqlite) => { $crate::support::Backend::Sqlite };
    (@backend postgres) => { $crate::support::Backend::Postgres };
    (@backend mariadb) => { $crate::support::Backend::Mysql };
}

/// Runs `$body` with `$c` bound to a `&mut` diesel connection to the fixture's database: one
/// instantiation per connection type, so generic diesel code (a derive model's row) runs on
/// each backend. For the test files that drive `#[derive(Sealed)]` models (`#[macro_use]`).
#[allow(
    unused_macros,
    reason = "used by the test files that drive derive models"
)]
macro_rules! on_conn {
    (@on $conn:ty, $f:expr, |$c:ident| $body:expr) => {{
        let mut conn = <$conn as ::diesel::Connection>::establish(&$f.url).unwrap();
        let $c = &mut conn;
        $body
    }};
    ($f:expr, |$c:ident| $body:expr) => {{
        let f: &$crate::support::Fixture = $f;
        match f.backend {
            $crate::support::Backend::Sqlite => {
                on_conn!(@on ::diesel::sqlite::SqliteConnection, f, |$c| $body)
            }
            $crate::support::Backend::Postgres => {
                on_conn!(@on ::diesel::pg::PgConnection, f, |$c| $body)
            }
            $crate::support::Backend::Mysql => {
                on_conn!(@on ::diesel::mysql::MysqlConnection, f, |$c| $body)
            }
        }
    }};
}

/// Every variable the migrator reads for its database and root of trust: a test removes them
/// from each child it starts, so the developer's or CI's own settings never leak into a case.
pub const CLI_VARS: &[&str] = &[
    "LEAKLESS_DATABASE_URL",
    "LEAKLESS_KEY_STORE",
    "LEAKLESS_MANIFEST",
    "LEAKLESS_KMS",
    "LEAKLESS_ROOT_KEY",
    "LEAKLESS_ROOT_KEY_FILE",
    "LEAKLESS_PKCS11_MODULE",
    "LEAKLESS_PKCS11_TOKEN",
    "LEAKLESS_PKCS11_KEY_LABEL",
    "LEAKLESS_PKCS11_PIN_FILE",
    "LEAKLESS_PKCS11_PIN",
    "LEAKLESS_AWS_KMS_KEY_ID",
    "LEAKLESS_AWS_REGION",
    "LEAKLESS_AWS_KMS_ENDPOINT",
    "LEAKLESS_VAULT_ADDR",
    "LEAKLESS_VAULT_KEY",
    "LEAKLESS_VAULT_MOUNT",
    "LEAKLESS_VAULT_NAMESPACE",
    "LEAKLESS_VAULT_CACERT",
    "LEAKLESS_VAULT_TOKEN_FILE",
    "LEAKLESS_VAULT_TOKEN",
    "LEAKLESS_TPM_TCTI",
    "LEAKLESS_TPM_SEALED_FILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
];

/// The migrator binary with none of the developer's or CI's settings (not even the actor:
/// the snapshots show the default one), 100 columns wide, stdin closed.
pub fn bare() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_leakless-migrate"));
    for v in CLI_VARS.iter().chain(&["LEAKLESS_ACTOR"]) {
        c.env_remove(v);
    }
    c.env("COLUMNS", "100").stdin(Stdio::null());
    c
}

/// The scope of the test table.
pub const SCOPE: &str = "patients";

/// The plaintext of row `i` (fake, generated).
pub fn plain(i: i64) -> String {
    format!("patient-{i}@example.test, 221B Baker Street")
}

/// One backend under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file.
    Sqlite,
    /// PostgreSQL (`LEAKLESS_PG_URL` or a throwaway cluster).
    Postgres,
    /// MariaDB (`LEAKLESS_MYSQL_URL` or a throwaway server).
    Mysql,
}

impl Backend {
    /// A new database: a SQLite file at `sqlite_file` (not created), or a database of its own
    /// on the PostgreSQL or MariaDB server. Returns its URL and, for a server, the database
    /// (dropped with it).
    pub fn new_database(self, sqlite_file: &std::path::Path) -> (String, Option<TestDb>) {
        let db = match self {
            Self::Sqlite => return (sqlite_file.display().to_string(), None),
            Self::Postgres => TestDb::postgres(),
            Self::Mysql => TestDb::mysql(),
        };
        (db.url().to_owned(), Some(db))
    }

    /// The column type the tests store envelopes in.
    pub fn binary_type(self) -> &'static str {
        match self {
            Self::Postgres => "bytea",
            Self::Mysql => "VARBINARY(1024)",
            Self::Sqlite => "BLOB",
        }
    }
}

/// The manifest JSON of a column's default padding.
pub const DEFAULT_PADDING: &str = r#"{"kind": "power_of_two", "min": 32, "cap": 4096}"#;

/// The manifest JSON of a nullable column sealed with XChaCha20-Poly1305: `encoding`,
/// `padding` and `blind_index` (JSON texts, `null` for none).
pub fn column_json(column: &str, encoding: &str, padding: &str, blind_index: &str) -> String {
    format!(
        r#"{{"column": "{column}", "algorithm": "xchacha20poly1305", "encoding": "{encoding}",
            "padding": {padding}, "nullable": true, "blind_index": {blind_index}}}"#
    )
}

/// `column` (from [`column_json`]) adopted from the plaintext column `from` at `stage`.
pub fn adopting(column: &str, from: &str, stage: &str) -> String {
    let open = column.strip_suffix('}').unwrap();
    format!(r#"{open}, "adoption": {{"from_column": "{from}", "stage": "{stage}"}}}}"#)
}

/// A manifest of one table with integer row ids in `id`, schema version 1, key scope `scope`
/// (JSON) and `columns` (from [`column_json`]).
pub fn table_manifest(table: &str, scope: &str, columns: &[String]) -> String {
    format!(
        r#"{{"format": 1, "tables": [{{"table": "{table}", "row_id_column": "id",
            "row_id_kind": "int", "schema_version": 1, "scope": {scope},
            "columns": [{}]}}]}}"#,
        columns.join(", ")
    )
}

/// The manifest JSON of the fixture's static key scope `patients`.
pub const PATIENTS_SCOPE: &str = r#"{"kind": "static", "scope": "patients"}"#;

/// The manifest of the fixture's `patients` table: `email` sealed under static scope
/// `patients`.
pub fn patients_manifest() -> String {
    table_manifest(
        "patients",
        PATIENTS_SCOPE,
        &[column_json("email", "string", DEFAULT_PADDING, "null")],
    )
}

/// A database with the `patients` table, keys and manifest.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub backend: Backend,
    _db: Option<TestDb>,
    pub key_file: PathBuf,
    pub manifest: PathBuf,
    pub ring: KeyRing,
    /// The cache window recorded on the versions the fixture and the CLI create.
    pub cache_window: Duration,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fixture({:?})", self.backend)
    }
}

impl Fixture {
    /// A fresh database with an empty `patients` table and scope `patients` at v1.
    pub fn new(backend: Backend) -> Self {
        Self::with_cache_window(backend, Duration::from_secs(1))
    }

    /// The same, with `window` (whole seconds) as the cache window recorded on v1 by the
    /// fixture's ring and on the versions the CLI creates (`LEAKLESS_CACHE_WINDOW`).
    pub fn with_cache_window(backend: Backend, window: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (url, db) = backend.new_database(&dir.path().join("app.db"));
        Self::on_url_with_window(backend, url, db, dir, window)
    }

    /// The same, on a given URL (e.g. a throwaway cluster).
    pub fn on_url(
        backend: Backend,
        url: String,
        db: Option<TestDb>,
        dir: tempfile::TempDir,
    ) -> Self {
        Self::on_url_with_window(backend, url, db, dir, Duration::from_secs(1))
    }

    fn on_url_with_window(
        backend: Backend,
        url: String,
        db: Option<TestDb>,
        dir: tempfile::TempDir,
        cache_window: Duration,
    ) -> Self {
        let key_file = dir.path().join("root.key");
        let kms = LocalKms::generate_key_file(&key_file).unwrap();
        let store = SqlKeyStore::connect(&store_url(backend, &url)).unwrap();
        store.create_schema().unwrap();
        let ring = KeyRing::builder(Arc::new(kms), Arc::new(store))
            .cache_window(cache_window)
            .build();
        ring.create_scope(
            &KeyScope::new(SCOPE).unwrap(),
            &AuditInfo::new("test", "fixture"),
        )
        .unwrap();
        let manifest = dir.path().join("manifest.json");
        std::fs::write(&manifest, patients_manifest()).unwrap();
        let f = Self {
            dir,
            url,
            backend,
            _db: db,
            key_file,
            manifest,
            ring,
            cache_window,
        };
        let bin = backend.binary_type();
        f.batch(&format!(
            "CREATE TABLE patients (id BIGINT NOT NULL PRIMARY KEY, email {bin} NULL, \
                 email_plain TEXT NULL)"
        ));
        f
    }

    /// A connection through the migrator's own layer.
    pub fn db(&self) -> Db {
        DbUrl::parse(&self.url).unwrap().connect().unwrap()
    }

    /// Runs `sql` (one or more statements) on a fresh connection.
    pub fn batch(&self, sql: &str) {
        self.db().batch(sql).unwrap();
    }

    /// Inserts rows `from..to`, sealed under the active version (or as plaintext in
    /// `email_plain` with a NULL sealed column when `plaintext`).
    pub fn seed(&self, from: i64, to: i64, plaintext: bool) {
        let mut db = self.db();
        let scope = KeyScope::new(SCOPE).unwrap();
        let mut i = from;
        while i < to {
            let end = (i + 1000).min(to);
            let mut values = Vec::new();
            let mut binds = Vec::new();
            for id in i..end {
                let n = values.len() * 3;
                values.push(format!(
                    "({}, {}, {})",
                    db.ph(n + 1),
                    db.ph(n + 2),
                    db.ph(n + 3)
                ));
                binds.push(Bind::Int(id));
                if plaintext {
                    binds.push(Bind::Bytes(None));
                    binds.push(Bind::Text(Some(plain(id))));
                } else {
                    binds.push(Bind::Bytes(Some(seal_row(&self.ring, &scope, id).unwrap())));
                    binds.push(Bind::Text(None));
                }
            }
            db.exec(
                &format!(
                    "INSERT INTO patients (id, email, email_plain) VALUES {}",
                    values.join(", ")
                ),
                &binds,
            )
            .unwrap();
            i = end;
        }
    }

    /// Every (id, email) in id order.
    pub fn rows(&self) -> Vec<(i64, Option<Vec<u8>>)> {
        let mut db = self.db();
        let sql = format!(
            "SELECT {} AS id, email AS val FROM patients ORDER BY id",
            db.id_text(leakless::manifest::RowIdKind::Int, "id")
        );
        let rows: Vec<IdBytes> = db.load(&sql, &[]).unwrap();
        rows.into_iter()
            .map(|r| (r.id.parse().unwrap(), r.val))
            .collect()
    }

    /// How many rows sit on each KEK version (by envelope header).
    pub fn versions(&self) -> std::collections::BTreeMap<u32, u64> {
        let mut m = std::collections::BTreeMap::new();
        for (_, v) in self.rows() {
            if let Some(v) = v {
                let (_, ver) = leakless_migrator::scan::header(&v).expect("an envelope");
                *m.entry(ver).or_default() += 1;
            }
        }
        m
    }

    /// Asserts every row opens to its original plaintext (through a fresh ring).
    pub fn assert_all_open(&self, expected: impl Fn(i64) -> String) {
        let ring = self.fresh_ring();
        let rows = self.rows();
        assert!(!rows.is_empty());
        for (id, v) in rows {
            let v = v.unwrap_or_else(|| panic!("row {id} has no envelope"));
            let ctx = FieldContext::new("patients", "email", RowId::Int(id), 1);
            let p = ring
                .open(&ctx, &v)
                .unwrap_or_else(|e| panic!("row {id}: {e}"));
            assert!(
                p.expose_secret() == expected(id).as_bytes(),
                "row {id} opens to another value"
            );
        }
    }

    /// A new key ring on the same store (no cache).
    pub fn fresh_ring(&self) -> KeyRing {
        app_ring(self.backend, &self.url, &self.key_file)
    }

    /// Sum of `rows_changed` over the done chunks of `job`; 0 before the migrator has created
    /// its checkpoint table (a run killed during start-up has moved nothing).
    pub fn checkpoint_changed(&self, job: &str) -> i64 {
        let mut db = self.db();
        if !db.table_exists("leakless_migrate_chunk").unwrap() {
            return 0;
        }
        let sql = format!(
            "SELECT CAST(COALESCE(SUM(rows_changed), 0) AS {}) AS n FROM leakless_migrate_chunk \
             WHERE job = {} AND done = 1",
            if self.backend == Backend::Mysql {
                "SIGNED"
            } else {
                "BIGINT"
            },
            db.ph(1)
        );
        let r: Vec<OneInt> = db.load(&sql, &[Bind::Text(Some(job.to_owned()))]).unwrap();
        r[0].n
    }

    /// The migrator binary with this fixture's database, key and manifest; stdin closed.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_leakless-migrate"));
        c.env_remove("LEAKLESS_ROOT_KEY")
            .env_remove("LEAKLESS_KEY_STORE")
            .env("LEAKLESS_DATABASE_URL", &self.url)
            .env("LEAKLESS_ROOT_KEY_FILE", &self.key_file)
            .env("LEAKLESS_MANIFEST", &self.manifest)
            .env("LEAKLESS_ACTOR", "test")
            .env(
                "LEAKLESS_CACHE_WINDOW",
                format!("{}s", self.cache_window.as_secs()),
            )
            .stdin(Stdio::null());
        c
    }

    /// Runs the migrator with `args` and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs the migrator with `args` and the variable `var` set to `value` in place of the
    /// fixture's own setting.
    pub fn run_with(&self, var: &str, value: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Output {
        self.cmd().env(var, value).args(args).output().unwrap()
    }

    /// Runs the migrator with `args` and asserts that it exits with `code` and says `message`
    /// on stderr; returns its output.
    pub fn assert_fails(&self, args: &[&str], code: i32, message: &str) -> Output {
        let o = self.run(args);
        assert_eq!(o.status.code(), Some(code), "{}", stderr(&o));
        assert!(stderr(&o).contains(message), "{}", stderr(&o));
        o
    }

    /// Runs `adopt` of `patients.email` from its plaintext column `email_plain` (see
    /// [`Fixture::seed`]), with `extra` arguments after them.
    pub fn adopt_email(&self, extra: &[&str]) -> Output {
        let adopt = [
            "adopt",
            "--table",
            "patients",
            "--column",
            "email",
            "--from",
            "email_plain",
        ];
        self.run(&[&adopt[..], extra].concat())
    }

    /// Flips a byte inside the wrapped DEK of row `id`: its unwrap fails authentication.
    pub fn corrupt_row(&self, id: i64) {
        let (_, env) = self.rows().into_iter().find(|(i, _)| *i == id).unwrap();
        let mut env = env.unwrap();
        // The envelope ends with the wrapped DEK, the data nonce and the ciphertext with its
        // tag.
        let info = leakless::envelope::inspect(&env).unwrap();
        let at = env.len() - (info.padded_len + 16 + info.algorithm.nonce_len()) - 5;
        env[at] ^= 0x01;
        let mut db = self.db();
        let sql = format!("UPDATE patients SET email = {} WHERE id = {id}", db.ph(1));
        db.exec(&sql, &[Bind::Bytes(Some(env))]).unwrap();
    }

    /// Rotates the scope (old version to grace for a day).
    pub fn rotate(&self) {
        self.ring
            .rotate(
                &KeyScope::new(SCOPE).unwrap(),
                Duration::from_secs(86_400),
                &AuditInfo::new("test", "rotate"),
            )
            .unwrap();
    }
}

/// The key-store URL of the database at `url` (the key store lives in the same database).
pub fn store_url(backend: Backend, url: &str) -> String {
    match backend {
        Backend::Sqlite => format!("sqlite://{url}"),
        _ => url.to_owned(),
    }
}

/// A key ring as an application builds it: over the key store in the database at `url` and
/// the root key file, with the default KEK cache (no cache window of its own is recorded: it
/// creates no versions).
pub fn app_ring(backend: Backend, url: &str, key_file: &std::path::Path) -> KeyRing {
    KeyRing::builder(
        Arc::new(LocalKms::from_key_file(key_file).unwrap()),
        Arc::new(SqlKeyStore::connect(&store_url(backend, url)).unwrap()),
    )
    .build()
}

/// Seals `plain(id)` for `patients.email` of row `id` under the active version of `scope`.
pub fn seal_row(ring: &KeyRing, scope: &KeyScope, id: i64) -> Result<Vec<u8>, leakless::Error> {
    let ctx = FieldContext::new("patients", "email", RowId::Int(id), 1);
    ring.seal(scope, &ctx, plain(id).as_bytes(), &FieldPolicy::default())
}

/// Seals `text` for `table.column` of row `id` under the active version of `scope` and inserts
/// the row (`id`, envelope) into `table`.
pub fn insert_sealed(
    db: &mut Db,
    ring: &KeyRing,
    scope: &KeyScope,
    (table, column): (&str, &str),
    id: i64,
    text: &str,
) {
    let ctx = FieldContext::new(table, column, RowId::Int(id), 1);
    let env = ring
        .seal(scope, &ctx, text.as_bytes(), &FieldPolicy::default())
        .unwrap();
    let sql = format!(
        "INSERT INTO {table} (id, {column}) VALUES ({}, {})",
        db.ph(1),
        db.ph(2)
    );
    db.exec(&sql, &[Bind::Int(id), Bind::Bytes(Some(env))])
        .unwrap();
}

/// The root-of-trust settings a test gives the migrator: variables, and flags that go before
/// the subcommand.
#[derive(Default)]
pub struct RootArgs {
    /// Variables and their values.
    pub env: Vec<(String, std::ffi::OsString)>,
    /// Flags, each followed by its value.
    pub flags: Vec<String>,
}

impl RootArgs {
    /// Sets the variable `var` to `value`.
    pub fn env(&mut self, var: &str, value: impl Into<std::ffi::OsString>) -> &mut Self {
        self.env.push((var.to_owned(), value.into()));
        self
    }

    /// Passes `flag` with `value`.
    pub fn flag(&mut self, flag: &str, value: impl Into<String>) -> &mut Self {
        self.flags.push(flag.to_owned());
        self.flags.push(value.into());
        self
    }
}

/// The migrator on the database `url` with the manifest `manifest`, as `actor`, a one-second
/// cache window and no AWS instance metadata, with none of the developer's settings but the
/// variables of `root` (its flags are the caller's to place).
pub fn root_cmd(url: &str, manifest: &std::path::Path, actor: &str, root: &RootArgs) -> Command {
    let mut c = bare();
    c.env("LEAKLESS_DATABASE_URL", url)
        .env("LEAKLESS_MANIFEST", manifest)
        .env("LEAKLESS_ACTOR", actor)
        .env("LEAKLESS_CACHE_WINDOW", "1s")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(root.env.iter().map(|(k, v)| (k, v)));
    c
}

/// Runs `c` with `args`, echoing the command line and its output on stderr (shown when the
/// test fails).
pub fn run_logged(c: &mut Command, args: &[&str]) -> Output {
    let o = c.args(args).output().unwrap();
    eprintln!(
        "$ leakless-migrate {}\n{}{}",
        args.join(" "),
        stdout(&o),
        stderr(&o)
    );
    o
}

/// Asserts that the migrator exited with `code` and that its stdout says `said`.
pub fn assert_says(o: &Output, code: i32, said: &str) {
    assert_eq!(o.status.code(), Some(code), "{}{}", stdout(o), stderr(o));
    assert!(stdout(o).contains(said), "{}", stdout(o));
}

/// Asserts that `o`, the output of the migrator run with `args`, exited 0; returns its stdout.
pub fn assert_ok(args: &[&str], o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(0),
        "{args:?}: {}{}",
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// Sleeps past the tests' one-second cache window (recorded by the fixture's ring and by the
/// CLI through `LEAKLESS_CACHE_WINDOW`) and its margin, after a rotation.
pub fn wait_for_cache_window() {
    std::thread::sleep(Duration::from_millis(2_100));
}

/// The exit code of a migrator that exited (a test fails if a signal killed it).
pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The unix seconds of a JSON time the migrator prints (`"2026-12-05T12:49:31Z"`), or `None`
/// when the value is not such a string.
#[allow(
    dead_code,
    reason = "used by some of the test binaries that include this module"
)]
pub fn unix_secs(v: &serde_json::Value) -> Option<i64> {
    let s = v.as_str()?;
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    if s.len() != 20 || !s.ends_with('Z') {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil, after Howard Hinnant's public-domain algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[test]
fn unix_secs_reads_what_unix_time_prints() {
    for t in [0i64, 951_782_400, 1_796_474_971, 4_102_444_800] {
        let iso = leakless::key::UnixTime(t).to_string();
        assert_eq!(
            unix_secs(&serde_json::Value::String(iso.clone())),
            Some(t),
            "{iso}"
        );
    }
    assert_eq!(unix_secs(&serde_json::json!(5)), None);
}
