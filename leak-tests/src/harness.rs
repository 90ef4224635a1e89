//! [`LeakCheck`]: scan artifacts channel by channel, see through their encodings (gzip, tar,
//! PostgreSQL custom and directory dumps, heap and TOAST pages), require the positive controls,
//! and produce a [`Report`].

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::Error;
use crate::canary::CanarySet;
use crate::pgpage::{WalRecords, sniff_compressed, walk_relation};
use crate::report::{ChannelReport, Report};
use crate::scan::{Collector, Scanner};

/// A leak check in progress. Build it from the canaries (real ones and controls), scan each
/// channel's artifacts, declare which controls each channel must show, then take the
/// [`Report`].
#[derive(Debug)]
pub struct LeakCheck {
    scanner: Scanner,
    channels: Vec<ChannelReport>,
}

impl LeakCheck {
    /// A check over `canaries` (controls are the ones with `control: true`).
    ///
    /// # Errors
    /// As [`Scanner::new`].
    pub fn new(canaries: CanarySet) -> Result<Self, Error> {
        Ok(Self {
            scanner: Scanner::new(canaries)?,
            channels: Vec::new(),
        })
    }

    /// The scanner.
    #[must_use]
    pub fn scanner(&self) -> &Scanner {
        &self.scanner
    }

    fn channel_mut(&mut self, channel: &str) -> &mut ChannelReport {
        if !self.channels.iter().any(|c| c.channel == channel) {
            self.channels.push(ChannelReport {
                channel: channel.to_owned(),
                ..ChannelReport::default()
            });
        }
        match self.channels.iter_mut().find(|c| c.channel == channel) {
            Some(c) => c,
            None => unreachable!("the channel was just found or pushed"),
        }
    }

    /// Declares that `channel` must show the control canary `control_id` (planted into a
    /// deliberately leaky control of that channel). A missing control makes the channel
    /// "detector broken".
    pub fn expect_control(&mut self, channel: &str, control_id: &str) {
        let c = self.channel_mut(channel);
        if !c.controls_expected.iter().any(|x| x == control_id) {
            c.controls_expected.push(control_id.to_owned());
        }
    }

    /// Declares every control canary of the set as expected in `channel`.
    pub fn expect_all_controls(&mut self, channel: &str) {
        let ids: Vec<String> = self
            .scanner
            .canaries()
            .canaries
            .iter()
            .filter(|c| c.control)
            .map(|c| c.id.clone())
            .collect();
        for id in ids {
            self.expect_control(channel, &id);
        }
    }

    /// Waives the positive-control requirement for `channel` (its clean result then rests on
    /// the scanner's self-test only). Prefer planting controls.
    pub fn waive_controls(&mut self, channel: &str) {
        self.channel_mut(channel).controls_waived = true;
    }

    /// Records a harness error for `channel` (an artifact that could not be collected).
    pub fn error(&mut self, channel: &str, message: impl Into<String>) {
        self.channel_mut(channel).errors.push(message.into());
    }

    fn record(&mut self, channel: &str, artifact: &str, bytes: u64, collector: &Collector) {
        let findings = collector.findings(self.scanner.canaries(), channel, artifact);
        let c = self.channel_mut(channel);
        c.artifacts += 1;
        c.bytes += bytes;
        for f in findings {
            if f.control {
                c.control_findings.push(f);
            } else {
                c.leaks.push(f);
            }
        }
    }

    /// Scans an in-memory artifact (captured log text, a `Debug` string, CLI output).
    pub fn scan_bytes(&mut self, channel: &str, artifact: &str, bytes: &[u8]) {
        let mut col = Collector::new();
        self.scanner.scan_bytes(bytes, |h| col.add(h));
        self.record(channel, artifact, bytes.len() as u64, &col);
    }

    /// Scans a reader as one artifact, streaming.
    ///
    /// # Errors
    /// The reader's I/O error (also recorded as a harness error of the channel).
    pub fn scan_reader(
        &mut self,
        channel: &str,
        artifact: &str,
        reader: impl Read,
    ) -> io::Result<()> {
        let mut col = Collector::new();
        match self.scanner.scan_reader(reader, |h| col.add(h)) {
            Ok(n) => {
                self.record(channel, artifact, n, &col);
                Ok(())
            }
            Err(e) => {
                self.error(channel, format!("{artifact}: read failed: {e}"));
                Err(e)
            }
        }
    }

    /// Scans a file or a folder (recursively), seeing through what it recognises: gzip
    /// (`[gunzip]`), tar members (`!member`), PostgreSQL custom-format dumps and directory
    /// dumps (through `pg_restore -f -`, `[pg_restore]`), and relation files under `base/` or
    /// `global/` (heap and TOAST pages, compressed values decompressed: `[heap-pglz]`,
    /// `[toast-lz4]`, ...). Errors are recorded in the channel (a harness error), not returned.
    pub fn scan_path(&mut self, channel: &str, path: &Path) {
        if path.is_dir() {
            if path.join("toc.dat").is_file() {
                self.pg_restore(channel, path);
            }
            let mut entries: Vec<PathBuf> = match std::fs::read_dir(path) {
                Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                Err(e) => {
                    self.error(channel, format!("{}: cannot list: {e}", path.display()));
                    return;
                }
            };
            entries.sort();
            for p in entries {
                let is_link = p
                    .symlink_metadata()
                    .is_ok_and(|m| m.file_type().is_symlink());
                if !is_link {
                    self.scan_path(channel, &p);
                }
            }
            return;
        }
        if !path.is_file() {
            if !path.exists() {
                self.error(
                    channel,
                    format!("{}: does not exist (was it collected?)", path.display()),
                );
            }
            return;
        }
        let name = path.display().to_string();
        let open = |p: &Path| File::open(p).map(|f| BufReader::with_capacity(1 << 16, f));
        let head = match sniff(path) {
            Ok(h) => h,
            Err(e) => {
                self.error(channel, format!("{name}: cannot read: {e}"));
                return;
            }
        };
        match open(path) {
            Ok(f) => {
                let _ = self.scan_reader(channel, &name, f);
            }
            Err(e) => {
                self.error(channel, format!("{name}: cannot open: {e}"));
                return;
            }
        }
        if head.starts_with(&[0x1f, 0x8b]) {
            if let Ok(f) = open(path) {
                let gz = flate2::read::MultiGzDecoder::new(f);
                let _ = self.scan_reader(channel, &format!("{name}[gunzip]"), gz);
            }
            if let Ok(f) = open(path) {
                let mut inner = [0u8; 512];
                let mut gz = flate2::read::MultiGzDecoder::new(f);
                if read_up_to(&mut gz, &mut inner).is_ok_and(|n| n >= 262 && is_tar(&inner))
                    && let Ok(f) = open(path)
                {
                    self.tar_members(
                        channel,
                        &format!("{name}[gunzip]"),
                        flate2::read::MultiGzDecoder::new(f),
                    );
                }
            }
        } else if is_tar(&head) {
            if let Ok(f) = open(path) {
                self.tar_members(channel, &name, f);
            }
        } else if head.starts_with(b"PGDMP") && path.file_name().is_none_or(|n| n != "toc.dat") {
            self.pg_restore(channel, path);
        }
        if is_relation_path(path)
            && let Ok(f) = open(path)
        {
            self.relation(channel, &name, f);
        }
        if is_wal_path(path) {
            if let Ok(f) = open(path) {
                let _ =
                    self.scan_reader(channel, &format!("{name}[wal-records]"), WalRecords::new(f));
            }
            if let Ok(f) = open(path) {
                self.wal_compressed(channel, &name, f);
            }
        }
    }

    fn tar_members(&mut self, channel: &str, outer: &str, reader: impl Read) {
        let mut archive = tar::Archive::new(reader);
        let entries = match archive.entries() {
            Ok(e) => e,
            Err(e) => {
                self.error(channel, format!("{outer}: not a readable tar: {e}"));
                return;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    self.error(channel, format!("{outer}: bad tar member: {e}"));
                    return;
                }
            };
            let member = entry
                .path()
                .map(|p| p.to_path_buf())
                .unwrap_or_else(|_| PathBuf::from("?"));
            // Member contents are scanned inside the outer stream already; here only the
            // relation files get their heap/TOAST view.
            if is_relation_path(&member) {
                self.relation(channel, &format!("{outer}!{}", member.display()), entry);
            } else if is_wal_path(&member) {
                // One pass: decompressed values only (the record view needs a second read).
                self.wal_compressed(channel, &format!("{outer}!{}", member.display()), entry);
            }
        }
    }

    fn relation(&mut self, channel: &str, name: &str, reader: impl Read) {
        let mut views = Vec::new();
        let scanner = &self.scanner;
        let result = walk_relation(reader, |d| {
            let mut col = Collector::new();
            scanner.scan_bytes(&d.bytes, |h| col.add(h));
            views.push((
                format!("{name}[{}@{}]", d.view, d.offset),
                d.bytes.len(),
                col,
            ));
        });
        if let Err(e) = result {
            self.error(channel, format!("{name}: heap pages unreadable: {e}"));
        }
        for (artifact, len, col) in views {
            self.record(channel, &artifact, len as u64, &col);
        }
    }

    fn wal_compressed(&mut self, channel: &str, name: &str, reader: impl Read) {
        let mut views = Vec::new();
        let scanner = &self.scanner;
        let result = sniff_compressed(WalRecords::new(reader), "wal", |d| {
            let mut col = Collector::new();
            scanner.scan_bytes(&d.bytes, |h| col.add(h));
            views.push((
                format!("{name}[{}@{}]", d.view, d.offset),
                d.bytes.len(),
                col,
            ));
        });
        if let Err(e) = result {
            self.error(channel, format!("{name}: WAL unreadable: {e}"));
        }
        for (artifact, len, col) in views {
            self.record(channel, &artifact, len as u64, &col);
        }
    }

    fn pg_restore(&mut self, channel: &str, dump: &Path) {
        let name = format!("{}[pg_restore]", dump.display());
        let child = Command::new(crate::fixture::pg_tool("pg_restore"))
            .arg("-f")
            .arg("-")
            .arg(dump)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                self.error(channel, format!("{name}: cannot run pg_restore: {e}"));
                return;
            }
        };
        if let Some(out) = child.stdout.take() {
            let _ = self.scan_reader(channel, &name, out);
        }
        match child.wait_with_output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => self.error(
                channel,
                format!(
                    "{name}: pg_restore failed ({}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
            ),
            Err(e) => self.error(channel, format!("{name}: pg_restore: {e}")),
        }
    }

    /// The report: control findings matched against the expected controls.
    #[must_use]
    pub fn report(&self) -> Report {
        let set = self.scanner.canaries();
        let mut channels = self.channels.clone();
        for c in &mut channels {
            let found: BTreeSet<&str> = c
                .control_findings
                .iter()
                .map(|f| f.canary_id.as_str())
                .collect();
            c.controls_missed = c
                .controls_expected
                .iter()
                .filter(|id| !found.contains(id.as_str()))
                .cloned()
                .collect();
        }
        Report {
            canaries: set.canaries.iter().filter(|c| !c.control).count(),
            controls: set.canaries.iter().filter(|c| c.control).count(),
            needles: self.scanner.needle_count(),
            channels,
        }
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let Some(space) = buf.get_mut(n..) else {
            break;
        };
        match r.read(space)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn sniff(path: &Path) -> io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let mut head = vec![0u8; 512];
    let n = read_up_to(&mut f, &mut head)?;
    head.truncate(n);
    Ok(head)
}

fn is_tar(head: &[u8]) -> bool {
    head.get(257..262) == Some(b"ustar".as_slice())
}

/// A PostgreSQL relation file: `base/<db>/<relfilenode>[.<segment>]` or
/// `global/<relfilenode>` (also `_fsm`/`_vm` forks are skipped: they hold no tuples).
fn is_relation_path(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let digits = name
        .split('.')
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let in_pg = path.components().any(|c| {
        matches!(
            c.as_os_str().to_str(),
            Some("base" | "global" | "pg_tblspc")
        )
    });
    digits && in_pg
}

/// A PostgreSQL WAL segment: 24 hexadecimal digits, in a `pg_wal` folder (or any folder, when
/// the name alone is unambiguous).
fn is_wal_path(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
}
