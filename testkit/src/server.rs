//! Throwaway database servers, started through `scripts/pg-cluster` and
//! `scripts/mariadb-server` (the one way the repository starts them): [`PgServer`] and
//! [`MariaServer`]. Each lives in a temporary folder the caller can inspect (data directory,
//! WAL, server log, binary logs) and is stopped and removed on drop, and by the scripts'
//! watchdog when the test process exits.
//!
//! [`PgOptions`] sets server settings (the leak tests turn statement logging on:
//! [`PgOptions::statement_logging`]) and the WAL layout; [`PgServer::kill`] and
//! [`PgServer::restart`] stop a cluster as in a crash and start it again.
//!
//! The scripts are found in `$LEAKLESS_SCRIPTS_DIR`, else in this repository's `scripts/`.
//! PostgreSQL client tools are the ones of the server's version (`pg-cluster bin`); MariaDB's
//! (`mariadb`, `mariadb-dump`) come from `PATH`.

use std::fmt;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use leakless::redact::redact_url;

/// A step of a server fixture that failed: the tool or step, and what went wrong.
#[derive(Debug)]
pub struct Error {
    /// The tool or step.
    pub what: String,
    /// What went wrong (a tool's stderr, for example).
    pub problem: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.problem)
    }
}

impl std::error::Error for Error {}

fn err(what: &str, problem: impl fmt::Display) -> Error {
    Error {
        what: what.to_owned(),
        problem: problem.to_string(),
    }
}

/// The folder holding `pg-cluster` and `mariadb-server`.
#[must_use]
pub fn scripts_dir() -> PathBuf {
    std::env::var_os("LEAKLESS_SCRIPTS_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts"),
        PathBuf::from,
    )
}

/// The path of a PostgreSQL tool of the version `scripts/pg-cluster` runs (`pg-cluster bin`);
/// the bare name (found on `PATH`) when that folder is unknown or lacks it.
#[must_use]
pub fn pg_tool(name: &str) -> PathBuf {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    let bin = BIN.get_or_init(|| {
        let out = Command::new(scripts_dir().join("pg-cluster"))
            .arg("bin")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let dir = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !dir.trim().is_empty()).then(|| PathBuf::from(dir.trim()))
    });
    bin.as_ref()
        .map(|d| d.join(name))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The first of `names` that is a file in a folder of `PATH`: a client tool known by more
/// than one name (`mariadb` or `mysql`). `None` when none is there.
#[must_use]
pub fn first_on_path<'a>(names: &[&'a str]) -> Option<&'a str> {
    let path = std::env::var_os("PATH")?;
    names
        .iter()
        .copied()
        .find(|t| std::env::split_paths(&path).any(|d| d.join(t).is_file()))
}

/// Runs a command, returning its stdout; a failure names the tool and shows its stderr.
fn run(what: &str, cmd: &mut Command, stdin: Option<&[u8]>) -> Result<Vec<u8>, Error> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| err(what, format!("cannot run it ({e}); is it installed?")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input)
            .map_err(|e| err(what, format!("writing its input: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| err(what, e))?;
    if !out.status.success() {
        return Err(err(
            what,
            format!(
                "failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(out.stdout)
}

/// The scripts' command for one server kind, and what to say when it is missing.
struct Script {
    name: &'static str,
    service: &'static str,
    env: &'static str,
    scheme: &'static str,
}

static PG_CLUSTER: Script = Script {
    name: "pg-cluster",
    service: "PostgreSQL",
    env: "LEAKLESS_PG_URL",
    scheme: "postgres://",
};

static MARIADB_SERVER: Script = Script {
    name: "mariadb-server",
    service: "MariaDB",
    env: "LEAKLESS_MYSQL_URL",
    scheme: "mysql://",
};

impl Script {
    fn path(&self) -> PathBuf {
        scripts_dir().join(self.name)
    }

    /// `<script> start DIR --owner-pid <this process>` in a new temporary folder, with `env`;
    /// returns the server, with the folder and the URL line the script prints.
    fn start(&'static self, env: &[(&str, PathBuf)]) -> Result<Running, Error> {
        let path = self.path();
        let how = format!(
            "make `{} start DIR` work (its diagnostics are on stderr above), or set \
             LEAKLESS_SCRIPTS_DIR to leakless's scripts/ folder",
            path.display()
        );
        let dir = std::env::temp_dir().join(format!(
            "leakless-{}-{:016x}",
            self.name,
            rand::random::<u64>()
        ));
        let env: Vec<(&str, PathBuf)> = env.iter().map(|(k, v)| (*k, dir.join(v))).collect();
        let mut child = Command::new(&path)
            .envs(env)
            .arg("start")
            .arg(&dir)
            .arg("--owner-pid")
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                err(
                    self.name,
                    format!("cannot run {} ({e}): {how}", path.display()),
                )
            })?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out)
                .read_line(&mut line)
                .map_err(|e| err(self.name, e))?;
        }
        let status = child.wait().map_err(|e| err(self.name, e))?;
        let url = line.trim();
        if !status.success() || !url.starts_with(self.scheme) {
            return Err(err(
                self.name,
                format!(
                    "{} did not start ({status}, printed {:?}): {how}",
                    self.service,
                    redact_url(url)
                ),
            ));
        }
        Ok(Running {
            script: self,
            dir,
            url: url.to_owned(),
        })
    }

    /// `<script> <command> DIR`.
    fn call(&self, command: &str, dir: &Path) -> Result<(), Error> {
        run(
            &format!("{} {command}", self.name),
            Command::new(self.path()).arg(command).arg(dir),
            None,
        )
        .map(|_| ())
    }

    /// The admin URL of the server named by `env`, or of a throwaway one started once per
    /// process; a panic naming the service and how to provide it otherwise.
    fn shared_url(&self, start: impl FnOnce() -> Result<String, Error>) -> String {
        match std::env::var(self.env) {
            Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
            _ => start().unwrap_or_else(|e| {
                panic!(
                    "{} is needed by this test, but none could be started ({e}); or set {} to \
                     the URL of a running server",
                    self.service, self.env
                )
            }),
        }
    }
}

/// A server one of the scripts started: its folder and its URL (which may hold a generated
/// password). Its `Debug` shows the URL redacted; dropping it stops the server and removes the
/// folder (`<script> stop DIR`). [`PgServer`] and [`MariaServer`] dereference to it for what
/// both have: the folder and the data directory.
pub struct Running {
    script: &'static Script,
    dir: PathBuf,
    url: String,
}

impl fmt::Debug for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running")
            .field("dir", &self.dir)
            .field("url", &redact_url(&self.url))
            .finish_non_exhaustive()
    }
}

impl Running {
    /// The server's folder: the data directory and the logs. Removed with the server.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The data directory, `data` in the folder: PostgreSQL's heap, TOAST and WAL, MariaDB's
    /// InnoDB files and binary logs (`binlog.*`).
    #[must_use]
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.script.call("stop", &self.dir);
    }
}

/// The admin URL of a PostgreSQL server: `LEAKLESS_PG_URL`, or a throwaway [`PgServer`]
/// started once per test process.
pub fn pg_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        PG_CLUSTER.shared_url(|| {
            // Kept for the process's lifetime: the script's watchdog removes it at exit.
            let server = Box::leak(Box::new(PgServer::start()?));
            Ok(server.url().to_owned())
        })
    })
    .clone()
}

/// The admin URL of a MariaDB server: `LEAKLESS_MYSQL_URL`, or a throwaway [`MariaServer`]
/// started once per test process.
pub fn mysql_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        MARIADB_SERVER.shared_url(|| {
            let server = Box::leak(Box::new(MariaServer::start_plain()?));
            Ok(server.url_for(""))
        })
    })
    .clone()
}

/// A pg_dump output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DumpFormat {
    /// `-F p`: plain SQL.
    Plain,
    /// `-F c`: custom, zlib-compressed.
    Custom,
    /// `-F d`: a directory of gzip-compressed table files and a `toc.dat`.
    Directory,
}

/// How [`PgServer::start_with`] sets the cluster up.
#[derive(Clone, Debug, Default)]
pub struct PgOptions {
    /// Keep the WAL outside the data directory (`initdb --waldir`): `pg_wal` is then a
    /// symbolic link, as on servers with a separate WAL disk.
    pub wal_outside_data: bool,
    /// Server settings applied with `ALTER SYSTEM SET name = value` and a reload (values are
    /// SQL literals: `'all'`, `0`).
    pub settings: Vec<(&'static str, &'static str)>,
}

impl PgOptions {
    /// Every statement in the server log, with its parameters untruncated and the statement of
    /// each error (`log_statement = all`, `log_min_duration_statement = 0`,
    /// `log_min_error_statement = error`, `log_parameter_max_length = -1`): the server log then
    /// holds every value a client sent, and constraint-violation `DETAIL` lines.
    #[must_use]
    pub fn statement_logging() -> Self {
        Self {
            wal_outside_data: false,
            settings: vec![
                ("log_statement", "'all'"),
                ("log_min_duration_statement", "0"),
                ("log_min_error_statement", "'error'"),
                ("log_parameter_max_length", "-1"),
            ],
        }
    }
}

/// A throwaway PostgreSQL cluster (`scripts/pg-cluster`: trust auth on 127.0.0.1, fsync off).
#[derive(Debug)]
pub struct PgServer {
    server: Running,
}

impl PgServer {
    /// Starts a cluster with the script's settings.
    ///
    /// # Errors
    /// [`Error`] naming the step that failed.
    pub fn start() -> Result<Self, Error> {
        Self::start_with(&PgOptions::default())
    }

    /// Starts a cluster set up by `options`.
    ///
    /// # Errors
    /// [`Error`] naming the step that failed.
    pub fn start_with(options: &PgOptions) -> Result<Self, Error> {
        let env: Vec<(&str, PathBuf)> = if options.wal_outside_data {
            vec![("LEAKLESS_PG_WALDIR", PathBuf::from("wal"))]
        } else {
            Vec::new()
        };
        let server = Self {
            server: PG_CLUSTER.start(&env)?,
        };
        if !options.settings.is_empty() {
            let mut sql: String = options
                .settings
                .iter()
                .map(|(k, v)| format!("ALTER SYSTEM SET {k} = {v};\n"))
                .collect();
            sql.push_str("SELECT pg_reload_conf();");
            server.sql("postgres", &sql)?;
        }
        Ok(server)
    }

    /// The admin URL (database `postgres`).
    #[must_use]
    pub fn url(&self) -> &str {
        &self.server.url
    }

    /// The URL of database `db` on this server.
    #[must_use]
    pub fn url_for(&self, db: &str) -> String {
        match self.server.url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{db}"),
            None => self.server.url.clone(),
        }
    }

    /// The WAL folder.
    #[must_use]
    pub fn wal_dir(&self) -> PathBuf {
        self.data_dir().join("pg_wal")
    }

    /// The server log.
    #[must_use]
    pub fn log_path(&self) -> PathBuf {
        self.server.dir.join("postgres.log")
    }

    /// A new empty folder `name` inside the cluster's folder (outside the data directory),
    /// owned like the data directory: a location for `CREATE TABLESPACE`. Removed with the
    /// cluster.
    ///
    /// # Errors
    /// [`Error`] when it cannot be made or handed to the server's user.
    pub fn make_dir(&self, name: &str) -> Result<PathBuf, Error> {
        let path = self.server.dir.join(name);
        std::fs::create_dir(&path).map_err(|e| err("make_dir", e))?;
        run(
            "chown",
            Command::new("chown")
                .arg("--reference")
                .arg(self.data_dir())
                .arg(&path),
            None,
        )?;
        Ok(path)
    }

    /// Stops the server at once, as in a crash (`pg_ctl stop -m immediate`: no checkpoint);
    /// the folder stays, for [`Self::restart`] or inspection.
    ///
    /// # Errors
    /// [`Error`] with the script's message.
    pub fn kill(&self) -> Result<(), Error> {
        PG_CLUSTER.call("kill", &self.server.dir)
    }

    /// Starts a stopped server again on the same port (after crash recovery); [`Self::url`]
    /// stays valid.
    ///
    /// # Errors
    /// [`Error`] with the script's message.
    pub fn restart(&self) -> Result<(), Error> {
        PG_CLUSTER.call("restart", &self.server.dir)
    }

    /// Runs SQL through `psql` (stop on the first error) in database `db`; returns stdout
    /// (unaligned, tuples only).
    ///
    /// # Errors
    /// [`Error`] with psql's message.
    pub fn sql(&self, db: &str, sql: &str) -> Result<String, Error> {
        let out = run(
            "psql",
            Command::new(pg_tool("psql"))
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
                .arg(self.url_for(db)),
            Some(sql.as_bytes()),
        )?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Runs SQL expected to fail (to put an error case into the server log); returns psql's
    /// stderr.
    ///
    /// # Errors
    /// [`Error`] if the SQL succeeded.
    pub fn sql_expect_error(&self, db: &str, sql: &str) -> Result<String, Error> {
        match self.sql(db, sql) {
            Ok(_) => Err(err("psql", "the statement was expected to fail")),
            Err(e) => Ok(e.problem),
        }
    }

    /// `CHECKPOINT` (flushes heap pages into the data files) and `pg_switch_wal()`.
    ///
    /// # Errors
    /// As [`Self::sql`].
    pub fn checkpoint(&self) -> Result<(), Error> {
        self.sql("postgres", "CHECKPOINT; SELECT pg_switch_wal();")
            .map(|_| ())
    }

    /// `pg_dump` of `db` in `format` to `out` (a file, or a folder for `Directory`).
    ///
    /// # Errors
    /// [`Error`] with pg_dump's message.
    pub fn dump(&self, db: &str, format: DumpFormat, out: &Path) -> Result<(), Error> {
        let f = match format {
            DumpFormat::Plain => "p",
            DumpFormat::Custom => "c",
            DumpFormat::Directory => "d",
        };
        run(
            "pg_dump",
            Command::new(pg_tool("pg_dump"))
                .args(["-F", f, "-f"])
                .arg(out)
                .arg("-d")
                .arg(self.url_for(db)),
            None,
        )
        .map(|_| ())
    }

    /// `pg_basebackup` in tar format into folder `out`, gzip-compressed when `gzip`.
    ///
    /// # Errors
    /// [`Error`] with pg_basebackup's message.
    pub fn basebackup(&self, out: &Path, gzip: bool) -> Result<(), Error> {
        let mut cmd = Command::new(pg_tool("pg_basebackup"));
        cmd.args(["-F", "t", "-X", "fetch", "--no-sync", "-D"])
            .arg(out)
            .arg("-d")
            .arg(&self.server.url);
        if gzip {
            cmd.arg("-z");
        }
        run("pg_basebackup", &mut cmd, None).map(|_| ())
    }
}

impl std::ops::Deref for PgServer {
    type Target = Running;

    fn deref(&self) -> &Running {
        &self.server
    }
}

/// A throwaway MariaDB server (`scripts/mariadb-server`: binary log in ROW format).
pub struct MariaServer {
    server: Running,
    user: String,
    password: String,
    host: String,
    port: String,
}

impl std::ops::Deref for MariaServer {
    type Target = Running;

    fn deref(&self) -> &Running {
        &self.server
    }
}

impl fmt::Debug for MariaServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MariaServer")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl MariaServer {
    /// Starts a server with the general query log on (into [`Self::general_log_path`]).
    ///
    /// # Errors
    /// [`Error`] naming the step that failed.
    pub fn start() -> Result<Self, Error> {
        let server = Self::start_plain()?;
        let log = server.general_log_path();
        server.sql(
            "",
            &format!(
                "SET GLOBAL general_log_file = '{}'; SET GLOBAL general_log = 1;",
                log.display()
            ),
        )?;
        Ok(server)
    }

    /// Starts a server with the script's settings.
    ///
    /// # Errors
    /// [`Error`] naming the step that failed.
    pub fn start_plain() -> Result<Self, Error> {
        let server = MARIADB_SERVER.start(&[])?;
        let parse = || -> Option<(String, String, String, String)> {
            let rest = server.url.strip_prefix("mysql://")?;
            let (cred, host) = rest.split_once('@')?;
            let (user, pw) = cred.split_once(':')?;
            let host = host.trim_end_matches('/');
            let (h, p) = host.split_once(':')?;
            Some((user.into(), pw.into(), h.into(), p.into()))
        };
        let Some((user, password, host, port)) = parse() else {
            // Dropping `server` stops it.
            return Err(err("mariadb-server", "unexpected URL form"));
        };
        Ok(Self {
            server,
            user,
            password,
            host,
            port,
        })
    }

    /// The URL of database `db` (holds the generated password: print it only through
    /// `redact_url`).
    #[must_use]
    pub fn url_for(&self, db: &str) -> String {
        format!("{}/{db}", self.server.url.trim_end_matches('/'))
    }

    /// The binary log files.
    #[must_use]
    pub fn binlogs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.data_dir())
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("binlog.") && !n.ends_with(".index"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The general query log.
    #[must_use]
    pub fn general_log_path(&self) -> PathBuf {
        self.server.dir.join("general.log")
    }

    fn client(&self, tool: &[&str]) -> Command {
        let name =
            first_on_path(tool).unwrap_or_else(|| tool.first().copied().unwrap_or("mariadb"));
        let mut cmd = Command::new(name);
        // The password goes through the environment, never the command line.
        cmd.env("MYSQL_PWD", &self.password).args([
            "--protocol=tcp",
            "-h",
            &self.host,
            "-P",
            &self.port,
            "-u",
            &self.user,
        ]);
        cmd
    }

    /// Runs SQL through the `mariadb` client in database `db` (empty: none).
    ///
    /// # Errors
    /// [`Error`] with the client's message.
    pub fn sql(&self, db: &str, sql: &str) -> Result<String, Error> {
        let mut cmd = self.client(&["mariadb", "mysql"]);
        cmd.args(["-N", "-B"]);
        if !db.is_empty() {
            cmd.arg(db);
        }
        let out = run("mariadb", &mut cmd, Some(sql.as_bytes()))?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// `mariadb-dump` of `db` into file `out` (binary columns as escaped strings, the default).
    ///
    /// # Errors
    /// [`Error`] with the tool's message.
    pub fn dump(&self, db: &str, out: &Path) -> Result<(), Error> {
        let mut cmd = self.client(&["mariadb-dump", "mysqldump"]);
        cmd.args(["--single-transaction", "--result-file"])
            .arg(out)
            .arg(db);
        run("mariadb-dump", &mut cmd, None).map(|_| ())
    }

    /// `FLUSH LOGS`: closes the current binary log and general log files so they are complete
    /// on disk.
    ///
    /// # Errors
    /// As [`Self::sql`].
    pub fn flush_logs(&self) -> Result<(), Error> {
        self.sql("", "FLUSH BINARY LOGS; FLUSH GENERAL LOGS;")
            .map(|_| ())
    }
}
