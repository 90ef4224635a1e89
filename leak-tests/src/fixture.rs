//! The PostgreSQL tools the harness runs, and (with the `testcontainers` feature) throwaway
//! database servers through Docker for users who have it.
//!
//! [`pg_tool`] finds `pg_restore` (custom and directory dumps are read through `pg_restore -f
//! -`) in `/usr/lib/postgresql/<newest>/bin` or on `PATH`. Leakless's own suites start their
//! servers with the workspace's test kit (`leakless-testkit`: `PgServer`, `MariaServer`).

use std::path::PathBuf;

/// The path of a PostgreSQL client tool: in the newest `/usr/lib/postgresql/*/bin` that has
/// it, else the bare name (found on `PATH`; the spawn error names it when it is not there).
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

/// Throwaway servers through Docker (`testcontainers`): for users who have Docker. Docker does
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
