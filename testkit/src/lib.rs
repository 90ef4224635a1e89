//! Test support shared by the workspace's test suites and benches (a dev-dependency only):
//! database services, and the paired timing of the bench binaries ([`bench`]).
//!
//! [`pg_url`] and [`mysql_url`] give the admin URL of a PostgreSQL or MariaDB server: the one
//! named by `LEAKLESS_PG_URL` / `LEAKLESS_MYSQL_URL` when set, otherwise a throwaway server
//! started once per test process ([`server`]: through `scripts/pg-cluster` /
//! `scripts/mariadb-server`, whose watchdog stops it and removes its folder when the process
//! exits). A test that needs a server of its own (statement logging, a data directory to
//! inspect, a crash and restart) starts a [`PgServer`] or [`MariaServer`]. A test that needs a
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
pub mod server;

use leakless::redact::redact_url;

pub use server::{DumpFormat, MariaServer, PgOptions, PgServer, Running, mysql_url, pg_url};

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
