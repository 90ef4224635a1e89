//! `leakless-leakcheck`: the leak-test harness for CI. Scans files, folders and dumps for the
//! canaries of a canary file (or canaries generated from a schema manifest), in every encoding,
//! and exits 0 when clean, 1 when a canary leaked, 2 when the detector is broken (a positive
//! control was not found, the self-test failed) or the harness failed.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use leakless::manifest::SchemaManifest;
use leakless_leaktest::residue::ColumnSpec;
use leakless_leaktest::scan::{EncodingSet, self_test};
use leakless_leaktest::{CanarySet, LeakCheck};

/// Scan artifacts for plaintext canaries in every encoding (exit 0 clean, 1 leak, 2 detector
/// broken or harness error).
#[derive(Debug, Parser)]
#[command(name = "leakless-leakcheck", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Scan files and folders (dumps, backups, logs, data directories) for the canaries.
    Scan {
        /// The canary file (JSON; see docs/leak-tests.md). Canaries with `"control": true`
        /// are positive controls and must be found in every channel.
        #[arg(long, short = 'c', value_name = "FILE")]
        canaries: PathBuf,
        /// Each artifact is a channel: `PATH` or `NAME=PATH`.
        #[arg(required = true, value_name = "[NAME=]PATH")]
        paths: Vec<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Accept channels without a positive control (the built-in self-test still runs).
        #[arg(long)]
        no_controls: bool,
    },
    /// Scan for the residue of real values: canaries from the values of columns read through a
    /// database URL, reported by table.column and row id, never by value.
    Residue {
        /// The database the values are read from and the positive control is planted into
        /// (`postgres://`, `mysql://`, `mariadb://`, `sqlite://PATH`). Printed only without its
        /// password; prefer the environment variable to the command line.
        #[arg(
            long,
            value_name = "URL",
            env = "LEAKLESS_DATABASE_URL",
            hide_env_values = true
        )]
        database_url: String,
        /// A column whose values to search for: `TABLE.COLUMN` (text, bytes or JSON), or
        /// `TABLE.LAT_COLUMN+LON_COLUMN` for a GPS point in two numeric columns. Repeat it.
        #[arg(long = "column", required = true, value_name = "TABLE.COLUMN")]
        columns: Vec<String>,
        /// The row id column of every table.
        #[arg(long, default_value = "id", value_name = "COL")]
        row_id: String,
        /// Each artifact is a channel: `PATH` or `NAME=PATH`. Each must show the control the
        /// harness plants through the URL.
        #[arg(required = true, value_name = "[NAME=]PATH")]
        paths: Vec<String>,
        /// A channel the control cannot reach (an old backup): its clean result then rests on
        /// the control being found in the other channels. Repeat it.
        #[arg(long = "waive-control", value_name = "NAME")]
        waive_control: Vec<String>,
        /// Search every encoding, not the residue set (raw, case-folded and UTF-16LE text; raw
        /// and hex bytes; GPS as text and f64).
        #[arg(long)]
        all_encodings: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Generate a canary file from a schema manifest.
    Canaries {
        /// The schema manifest (JSON, as written by `SchemaManifest::to_json`).
        #[arg(long, short = 'm', value_name = "FILE")]
        manifest: PathBuf,
        /// Canaries per sealed column.
        #[arg(long, default_value_t = 3)]
        rows: usize,
        /// Extra positive-control canaries to plant into leaky controls.
        #[arg(long, default_value_t = 1)]
        controls: usize,
        /// Where to write the canary file (it holds the values: keep it with the test data).
        #[arg(long, short = 'o', value_name = "FILE")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(msg) => {
            let _ = writeln!(std::io::stderr(), "leakless-leakcheck: error: {msg}");
            ExitCode::from(2)
        }
    }
}

/// `NAME=PATH` or `PATH` (the path is then also the channel name).
fn channel_of(p: &str) -> (String, &str) {
    match p.split_once('=') {
        Some((n, path)) if !n.is_empty() && !n.contains('/') => (n.to_owned(), path),
        _ => (p.to_owned(), p),
    }
}

/// The text of the file `path`, or an error naming it.
fn read_text(path: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Prints a report on stdout, as JSON (`to_json`) when `json`, else in its human form
/// (`human`); returns `exit_code`, the report's.
fn print_report(
    json: bool,
    to_json: impl FnOnce() -> Result<String, serde_json::Error>,
    human: impl FnOnce() -> String,
    exit_code: u8,
) -> Result<u8, String> {
    let out = if json {
        to_json().map_err(|e| e.to_string())? + "\n"
    } else {
        human()
    };
    let _ = std::io::stdout().write_all(out.as_bytes());
    Ok(exit_code)
}

fn run(cli: Cli) -> Result<u8, String> {
    match cli.command {
        Cmd::Residue {
            database_url,
            columns,
            row_id,
            paths,
            waive_control,
            all_encodings,
            json,
        } => {
            let database_url = zeroize::Zeroizing::new(database_url);
            let specs = columns
                .iter()
                .map(|c| c.parse::<ColumnSpec>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let channels: Vec<(String, PathBuf)> = paths
                .iter()
                .map(|p| {
                    let (name, path) = channel_of(p);
                    (name, PathBuf::from(path))
                })
                .collect();
            let encodings = if all_encodings {
                EncodingSet::All
            } else {
                EncodingSet::Residue
            };
            let report = leakless_leaktest::residue::run(
                &database_url,
                &specs,
                &row_id,
                &channels,
                &waive_control,
                &encodings,
            )
            .map_err(|e| e.to_string())?;
            print_report(
                json,
                || report.to_json(),
                || report.human(),
                report.exit_code(),
            )
        }
        Cmd::Canaries {
            manifest,
            rows,
            controls,
            out,
        } => {
            let text = read_text(&manifest)?;
            let m = SchemaManifest::from_json(&text)
                .map_err(|e| format!("{}: {e}", manifest.display()))?;
            let mut set = CanarySet::from_manifest(&m, rows).map_err(|e| e.to_string())?;
            for i in 0..controls {
                let marker = leakless_leaktest::canary::fresh_marker();
                let c = leakless_leaktest::Canary::text(
                    &format!("control#{i}"),
                    &marker,
                    &format!("Control value {marker}, 1 Leaky Lane, Controlton"),
                )
                .map_err(|e| e.to_string())?;
                set.push(c.as_control()).map_err(|e| e.to_string())?;
            }
            let json = set.to_json().map_err(|e| e.to_string())?;
            std::fs::write(&out, json.as_bytes()).map_err(|e| format!("{}: {e}", out.display()))?;
            let _ = writeln!(
                std::io::stdout(),
                "wrote {} canaries ({controls} controls) to {}",
                set.len(),
                out.display()
            );
            Ok(0)
        }
        Cmd::Scan {
            canaries,
            paths,
            json,
            no_controls,
        } => {
            let text = read_text(&canaries)?;
            let set = CanarySet::from_json(&text).map_err(|e| e.to_string())?;
            if set.canaries.iter().all(|c| c.control) {
                return Err(format!(
                    "{} holds no canary to search for (only controls, or none): a scan \
                     without canaries would prove nothing",
                    canaries.display()
                ));
            }
            let has_controls = set.canaries.iter().any(|c| c.control);
            if !has_controls && !no_controls {
                return Err(format!(
                    "{} has no positive-control canary (\"control\": true): plant one into a \
                     deliberately leaky control of every channel, or pass --no-controls",
                    canaries.display()
                ));
            }
            let mut check = LeakCheck::new(set).map_err(|e| e.to_string())?;
            let missed = self_test(check.scanner());
            if !missed.is_empty() {
                let _ = writeln!(
                    std::io::stderr(),
                    "leakless-leakcheck: DETECTOR BROKEN: the self-test missed {}",
                    missed.join(", ")
                );
                return Ok(2);
            }
            for p in &paths {
                let (name, path) = channel_of(p);
                if has_controls {
                    check.expect_all_controls(&name);
                }
                if no_controls {
                    check.waive_controls(&name);
                }
                check.scan_path(&name, std::path::Path::new(path));
            }
            let report = check.report();
            print_report(
                json,
                || report.to_json(),
                || report.human(),
                report.exit_code(),
            )
        }
    }
}
