//! Throwaway database servers the harness owns, so it can turn on statement logging and take
//! physical backups: [`PgServer`] (through `scripts/pg-cluster`) and [`MariaServer`] (through
//! `scripts/mariadb-server`). Each server lives in a temporary folder and is stopped and removed
//! on drop (and by the scripts' watchdog when the test process exits).
//!
//! The scripts are found in `$LEAKLESS_SCRIPTS_DIR`, else in this repository's `scripts/`.
//! Client tools (`psql`, `pg_dump`, `pg_basebackup`, `pg_restore`, `mariadb`, `mariadb-dump`)
//! come from `PATH` or `/usr/lib/postgresql/<newest>/bin`. With the `testcontainers` feature,
//! the `fixture::containers` module (compiled only then) offers the same servers through Docker.

use std::fmt;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use leakless::redact::redact_url;

use crate::Error;

/// The folder holding `pg-cluster` and `mariadb-server`.
#[must_use]
pub fn scripts_dir() -> PathBuf {
    std::env::var_os("LEAKLESS_SCRIPTS_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts"),
        PathBuf::from,
    )
}

/// The path of a PostgreSQL client tool: on `PATH`, else in the newest
/// `/usr/lib/postgresql/*/bin`, else the bare name (the spawn error then names it).
#[must_use]
pub fn pg_tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(d) = dirs.iter().rev().find(|d| d.join(name).is_file()) {
        return d.join(name);
    }
    PathBuf::from(name)
}

fn fixture_err(what: &str, problem: impl fmt::Display) -> Error {
    Error::Fixture {
        what: what.to_owned(),
        problem: problem.to_string(),
    }
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
        .map_err(|e| fixture_err(what, format!("cannot run it ({e}); is it installed?")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input)
            .map_err(|e| fixture_err(what, format!("writing its input: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| fixture_err(what, e))?;
    if !out.status.success() {
        return Err(fixture_err(
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

/// Starts `scripts/<script> start DIR --owner-pid <this process>` and reads the URL line.
fn start_script(script: &str, dir: &Path) -> Result<String, Error> {
    start_script_env(script, dir, &[])
}

/// [`start_script`] with extra environment variables for the script.
fn start_script_env(script: &str, dir: &Path, env: &[(&str, &Path)]) -> Result<String, Error> {
    let path = scripts_dir().join(script);
    let mut child = Command::new(&path)
        .envs(env.iter().copied())
        .arg("start")
        .arg(dir)
        .arg("--owner-pid")
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            fixture_err(
                script,
                format!(
                    "cannot run {} ({e}): set LEAKLESS_SCRIPTS_DIR to leakless's scripts/ folder",
                    path.display()
                ),
            )
        })?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| fixture_err(script, e))?;
    }
    let status = child.wait().map_err(|e| fixture_err(script, e))?;
    if !status.success() || !line.contains("://") {
        return Err(fixture_err(
            script,
            format!(
                "`{} start` failed ({status}); its diagnostics are on stderr",
                path.display()
            ),
        ));
    }
    Ok(line.trim().to_owned())
}

fn temp_dir(prefix: &str) -> Result<PathBuf, Error> {
    let base = std::env::temp_dir();
    let dir = base.join(format!("{prefix}{:016x}", rand::random::<u64>()));
    Ok(dir)
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

/// How [`PgServer::start_with`] lays out the cluster.
#[derive(Clone, Debug, Default)]
pub struct PgOptions {
    /// Keep the WAL outside the data directory (`initdb --waldir`): `pg_wal` is then a
    /// symbolic link, as on servers with a separate WAL disk.
    pub wal_outside_data: bool,
}

/// A throwaway PostgreSQL cluster with statement logging on.
pub struct PgServer {
    dir: PathBuf,
    url: String,
}

impl fmt::Debug for PgServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgServer")
            .field("dir", &self.dir)
            .field("url", &redact_url(&self.url))
            .finish()
    }
}

impl PgServer {
    /// Starts a cluster and sets `log_statement = all`, `log_min_duration_statement = 0`,
    /// `log_min_error_statement = error` (the server log then holds every statement, its
    /// parameters, and constraint-violation `DETAIL` lines).
    ///
    /// # Errors
    /// [`Error::Fixture`] naming the step that failed.
    pub fn start() -> Result<Self, Error> {
        Self::start_with(&PgOptions::default())
    }

    /// [`Self::start`] with `options` (a production-style layout).
    ///
    /// # Errors
    /// [`Error::Fixture`] naming the step that failed.
    pub fn start_with(options: &PgOptions) -> Result<Self, Error> {
        let dir = temp_dir("leakless-leaktest-pg-")?;
        let wal = dir.join("wal");
        let env: Vec<(&str, &Path)> = if options.wal_outside_data {
            vec![("LEAKLESS_PG_WALDIR", wal.as_path())]
        } else {
            Vec::new()
        };
        let url = start_script_env("pg-cluster", &dir, &env)?;
        let server = Self { dir, url };
        server.sql(
            "postgres",
            "ALTER SYSTEM SET log_statement = 'all';
             ALTER SYSTEM SET log_min_duration_statement = 0;
             ALTER SYSTEM SET log_min_error_statement = 'error';
             ALTER SYSTEM SET log_parameter_max_length = -1;
             SELECT pg_reload_conf();",
        )?;
        Ok(server)
    }

    /// The admin URL (database `postgres`).
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of database `db` on this server.
    #[must_use]
    pub fn url_for(&self, db: &str) -> String {
        match self.url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{db}"),
            None => self.url.clone(),
        }
    }

    /// The data directory (heap, TOAST, WAL).
    #[must_use]
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The WAL folder.
    #[must_use]
    pub fn wal_dir(&self) -> PathBuf {
        self.data_dir().join("pg_wal")
    }

    /// A new empty folder `name` inside the cluster's folder (outside the data directory),
    /// owned like the data directory: a location for `CREATE TABLESPACE`. Removed with the
    /// cluster.
    ///
    /// # Errors
    /// [`Error::Fixture`] when it cannot be made or handed to the server's user.
    pub fn make_dir(&self, name: &str) -> Result<PathBuf, Error> {
        let path = self.dir.join(name);
        std::fs::create_dir(&path).map_err(|e| fixture_err("make_dir", e))?;
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

    /// The server log.
    #[must_use]
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// Runs SQL through `psql` (stop on the first error) in database `db`; returns stdout.
    ///
    /// # Errors
    /// [`Error::Fixture`] with psql's message.
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
    /// [`Error::Fixture`] if the SQL succeeded.
    pub fn sql_expect_error(&self, db: &str, sql: &str) -> Result<String, Error> {
        match self.sql(db, sql) {
            Ok(_) => Err(fixture_err("psql", "the statement was expected to fail")),
            Err(Error::Fixture { problem, .. }) => Ok(problem),
            Err(e) => Err(e),
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
    /// [`Error::Fixture`] with pg_dump's message.
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
    /// [`Error::Fixture`] with pg_basebackup's message.
    pub fn basebackup(&self, out: &Path, gzip: bool) -> Result<(), Error> {
        let mut cmd = Command::new(pg_tool("pg_basebackup"));
        cmd.args(["-F", "t", "-X", "fetch", "--no-sync", "-D"])
            .arg(out)
            .arg("-d")
            .arg(&self.url);
        if gzip {
            cmd.arg("-z");
        }
        run("pg_basebackup", &mut cmd, None).map(|_| ())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = Command::new(scripts_dir().join("pg-cluster"))
            .arg("stop")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A throwaway MariaDB server with the binary log (ROW format) and the general query log on.
pub struct MariaServer {
    dir: PathBuf,
    url: String,
    user: String,
    password: String,
    host: String,
    port: String,
}

impl fmt::Debug for MariaServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MariaServer")
            .field("dir", &self.dir)
            .field("url", &redact_url(&self.url))
            .finish_non_exhaustive()
    }
}

impl MariaServer {
    /// Starts a server and turns the general query log on (into `general.log` of its folder).
    ///
    /// # Errors
    /// [`Error::Fixture`] naming the step that failed.
    pub fn start() -> Result<Self, Error> {
        let dir = temp_dir("leakless-leaktest-mariadb-")?;
        let url = start_script("mariadb-server", &dir)?;
        let parse = || -> Option<(String, String, String, String)> {
            let rest = url.strip_prefix("mysql://")?;
            let (cred, host) = rest.split_once('@')?;
            let (user, pw) = cred.split_once(':')?;
            let host = host.trim_end_matches('/');
            let (h, p) = host.split_once(':')?;
            Some((user.into(), pw.into(), h.into(), p.into()))
        };
        let (user, password, host, port) =
            parse().ok_or_else(|| fixture_err("mariadb-server", "unexpected URL form"))?;
        let server = Self {
            dir,
            url,
            user,
            password,
            host,
            port,
        };
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

    /// The URL of database `db` (holds the generated password: print it only through
    /// `redact_url`).
    #[must_use]
    pub fn url_for(&self, db: &str) -> String {
        format!("{}{db}", self.url.trim_end_matches('/').to_owned() + "/")
    }

    /// The data directory (binary logs are `binlog.*` in it).
    #[must_use]
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
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
        self.dir.join("general.log")
    }

    fn client(&self, tool: &[&str]) -> Command {
        let name = tool
            .iter()
            .find(|t| {
                std::env::var_os("PATH")
                    .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
            })
            .copied()
            .unwrap_or_else(|| tool.first().copied().unwrap_or("mariadb"));
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
    /// [`Error::Fixture`] with the client's message.
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
    /// [`Error::Fixture`] with the tool's message.
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

impl Drop for MariaServer {
    fn drop(&mut self) {
        let _ = Command::new(scripts_dir().join("mariadb-server"))
            .arg("stop")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The same fixtures through Docker (`testcontainers`): for users who have Docker. Docker does
/// not run on leakless's CI machines, so this is compiled, not run, there.
#[cfg(feature = "testcontainers")]
pub mod containers {
    use testcontainers::core::{IntoContainerPort as _, WaitFor};
    use testcontainers::runners::SyncRunner as _;
    use testcontainers::{Container, GenericImage, ImageExt as _};

    use crate::Error;

    /// A PostgreSQL container started with statement logging on (`-c log_statement=all
    /// -c log_min_duration_statement=0`), trust auth. Its URL is
    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    ///
    /// # Errors
    /// [`Error::Fixture`] when Docker is unreachable or the container does not start.
    pub fn postgres(tag: &str) -> Result<(Container<GenericImage>, String), Error> {
        let container = GenericImage::new("postgres", tag)
            .with_exposed_port(5432.tcp())
            .with_wait_for(WaitFor::message_on_stderr(
                "database system is ready to accept connections",
            ))
            .with_env_var("POSTGRES_HOST_AUTH_METHOD", "trust")
            .with_cmd([
                "postgres",
                "-c",
                "log_statement=all",
                "-c",
                "log_min_duration_statement=0",
            ])
            .start()
            .map_err(|e| Error::Fixture {
                what: "testcontainers postgres".into(),
                problem: e.to_string(),
            })?;
        let port = container
            .get_host_port_ipv4(5432.tcp())
            .map_err(|e| Error::Fixture {
                what: "testcontainers postgres".into(),
                problem: e.to_string(),
            })?;
        Ok((
            container,
            format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        ))
    }
}
