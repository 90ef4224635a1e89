//! Test support shared by the workspace's test suites and benches (a dev-dependency only):
//! database services, and the paired timing of the bench binaries ([`bench`]).
//!
//! [`pg_url`] and [`mysql_url`] give the admin URL of a PostgreSQL or MariaDB server: the one
//! named by `LEAKLESS_PG_URL` / `LEAKLESS_MYSQL_URL` when set, otherwise a throwaway server
//! that `scripts/pg-cluster` / `scripts/mariadb-server` start once per test process (its
//! watchdog stops it and removes its folder when the process exits). A test that needs a
//! service it cannot get panics naming the service and how to provide it; it never skips.
//!
//! [`TestDb`] gives each test its own database `leakless_t_<random>`, dropped again on drop,
//! so tests can run in parallel against one server. [`TestDb::postgres`] needs the cargo
//! feature `postgres`, [`TestDb::mysql`] the feature `mysql`.

#![allow(
    clippy::panic,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::print_stderr,
    reason = "test support: a failed set-up must stop the test loudly"
)]
#![cfg_attr(
    not(all(feature = "postgres", feature = "mysql")),
    allow(
        dead_code,
        reason = "a backend's parts are unused with its feature off"
    )
)]

pub mod bench;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use leakless::redact::redact_url;

/// A service the tests can start.
struct Service {
    name: &'static str,
    env: &'static str,
    script: &'static str,
    scheme: &'static str,
    example: &'static str,
}

const POSTGRES: Service = Service {
    name: "PostgreSQL",
    env: "LEAKLESS_PG_URL",
    script: "pg-cluster",
    scheme: "postgres://",
    example: "postgres://postgres@127.0.0.1:5432/postgres",
};

const MARIADB: Service = Service {
    name: "MariaDB",
    env: "LEAKLESS_MYSQL_URL",
    script: "mariadb-server",
    scheme: "mysql://",
    example: "mysql://root:PASSWORD@127.0.0.1:3306/",
};

/// The value of `var`, which a service script prints (`scripts/services/<script> start DIR
/// --owner-pid PID` prints `VAR=value` lines), or a panic naming `service` and how to start it:
/// a test that needs a service never skips.
pub fn service_var(var: &str, service: &str, script: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: this test needs {service}. Start it with `scripts/services/{script} \
             start DIR --owner-pid $$` and export the VAR=value lines it prints (scripts/test \
             does this for you)"
        )
    })
}

/// `n` random bytes as lowercase hex: unique names for keys, labels and tokens.
#[must_use]
pub fn random_hex(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The admin URL of a PostgreSQL server (`LEAKLESS_PG_URL`, or a throwaway cluster).
pub fn pg_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| service_url(&POSTGRES)).clone()
}

/// The admin URL of a MariaDB server (`LEAKLESS_MYSQL_URL`, or a throwaway server).
pub fn mysql_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| service_url(&MARIADB)).clone()
}

fn scripts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts")
}

fn service_url(s: &Service) -> String {
    match std::env::var(s.env) {
        Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
        _ => start(s),
    }
}

/// Runs `scripts/<script> start <tempdir> --owner-pid <pid>` and reads the URL it prints.
fn start(s: &Service) -> String {
    let script = scripts_dir().join(s.script);
    let how = format!(
        "set {} to the URL of a running {} server (e.g. {}), or make `{} start DIR` work",
        s.env,
        s.name,
        s.example,
        script.display()
    );
    assert!(
        script.is_file(),
        "{} is needed by this test, but {} is missing: {how}",
        s.name,
        script.display()
    );
    // The script's watchdog removes the folder when this process exits.
    let dir = tempfile::Builder::new()
        .prefix(&format!("leakless-{}-", s.script))
        .tempdir()
        .unwrap_or_else(|e| panic!("{}: cannot make a temporary folder: {e}", s.name))
        .keep();
    let mut child = Command::new(&script)
        .arg("start")
        .arg(&dir)
        .arg("--owner-pid")
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{} is needed by this test, but {} could not run ({e}): {how}",
                s.name,
                script.display()
            )
        });
    let mut line = String::new();
    let read = BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut line);
    let status = child.wait();
    let url = line.trim();
    let ok =
        read.is_ok() && status.as_ref().is_ok_and(|st| st.success()) && url.starts_with(s.scheme);
    assert!(
        ok,
        "{} is needed by this test, but `{} start` failed (exit: {status:?}, stdout: {:?}; its \
         diagnostics are on stderr above): {how}",
        s.name,
        script.display(),
        redact_url(url),
    );
    url.to_owned()
}

/// `url` with its database (path) replaced by `name`, keeping user, host and query.
pub fn with_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let (before_query, query) = match rest.find('?') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host_start = before_query.rfind('@').map_or(0, |i| i + 1);
    let authority_end = before_query[host_start..]
        .find('/')
        .map_or(before_query.len(), |i| host_start + i);
    format!(
        "{scheme}://{}/{name}{query}",
        &before_query[..authority_end]
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Postgres,
    Mysql,
}

/// A database of its own for one test, dropped on drop.
pub struct TestDb {
    kind: Kind,
    admin_url: String,
    name: String,
    url: String,
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb")
            .field("kind", &self.kind)
            .field("url", &redact_url(&self.url))
            .finish()
    }
}

fn fresh_name() -> String {
    format!("leakless_t_{:016x}", rand::random::<u64>())
}

impl TestDb {
    /// A new PostgreSQL database on [`pg_url`]'s server.
    #[cfg(feature = "postgres")]
    pub fn postgres() -> Self {
        let admin_url = pg_url();
        let name = fresh_name();
        pg_admin(&admin_url, &format!("CREATE DATABASE {name}")).unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {}: CREATE DATABASE {name}: {e}",
                redact_url(&admin_url)
            )
        });
        let url = with_database(&admin_url, &name);
        Self {
            kind: Kind::Postgres,
            admin_url,
            name,
            url,
        }
    }

    /// A new MariaDB database on [`mysql_url`]'s server.
    #[cfg(feature = "mysql")]
    pub fn mysql() -> Self {
        let admin_url = mysql_url();
        let name = fresh_name();
        mysql_admin(
            &admin_url,
            &format!("CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"),
        )
        .unwrap_or_else(|e| {
            panic!(
                "MariaDB at {}: CREATE DATABASE {name}: {e}",
                redact_url(&admin_url)
            )
        });
        let url = with_database(&admin_url, &name);
        Self {
            kind: Kind::Mysql,
            admin_url,
            name,
            url,
        }
    }

    /// The URL of this database (it holds the server's password, if any: never print it).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let result: Result<(), String> = match self.kind {
            #[cfg(feature = "postgres")]
            Kind::Postgres => pg_admin(
                &self.admin_url,
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ),
            #[cfg(feature = "mysql")]
            Kind::Mysql => mysql_admin(
                &self.admin_url,
                &format!("DROP DATABASE IF EXISTS {}", self.name),
            ),
            #[allow(unreachable_patterns, reason = "reachable with a backend feature off")]
            _ => Ok(()),
        };
        if let Err(e) = result {
            eprintln!("warning: could not drop test database {}: {e}", self.name);
        }
    }
}

#[cfg(feature = "postgres")]
fn pg_admin(url: &str, sql: &str) -> Result<(), String> {
    use diesel::Connection;
    use diesel::connection::SimpleConnection;
    let mut c = diesel::PgConnection::establish(url).map_err(|e| e.to_string())?;
    c.batch_execute(sql).map_err(|e| e.to_string())
}

#[cfg(feature = "mysql")]
fn mysql_admin(url: &str, sql: &str) -> Result<(), String> {
    use diesel::Connection;
    use diesel::connection::SimpleConnection;
    let mut c = diesel::MysqlConnection::establish(url).map_err(|e| e.to_string())?;
    c.batch_execute(sql).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn with_database_replaces_only_the_path() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5/t1"
        );
        assert_eq!(
            with_database("mysql://u:p/w@127.0.0.1:6/", "t2"),
            "mysql://u:p/w@127.0.0.1:6/t2"
        );
        assert_eq!(
            with_database("postgres://h:5/db?sslmode=disable", "t3"),
            "postgres://h:5/t3?sslmode=disable"
        );
    }
}
