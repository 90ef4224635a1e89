//! [`LeakCheck`]: scan artifacts channel by channel, see through their encodings (compressed
//! streams and archives nested in any order, see [`crate::containers`]; PostgreSQL custom and
//! directory dumps, heap and TOAST pages, WAL), follow symbolic links, require the positive
//! controls, and produce a [`Report`].

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;

use zeroize::Zeroizing;

use crate::Error;
use crate::canary::CanarySet;
use crate::containers::{
    Budget, Charged, Codec, Counting, DEFAULT_DECOMPRESSED_LIMIT, Faults, Latch, MAX_DEPTH,
    is_dir_dump_member, is_pg_custom_dump, is_tar, is_zip, read_up_to, strip_compression_suffix,
};
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
    decompressed_limit: u64,
    /// With [`LeakCheck::cap_leak_findings`]: the cap, and per channel a bit set of the
    /// canaries found.
    leak_cap: Option<usize>,
    found: BTreeMap<String, Vec<u64>>,
}

impl LeakCheck {
    /// A check over `canaries` (controls are the ones with `control: true`).
    ///
    /// # Errors
    /// As [`Scanner::new`].
    pub fn new(canaries: CanarySet) -> Result<Self, Error> {
        Ok(Self::with_scanner(Scanner::new(canaries)?))
    }

    /// A check over a scanner built by the caller ([`Scanner::with_options`]).
    #[must_use]
    pub fn with_scanner(scanner: Scanner) -> Self {
        Self {
            scanner,
            channels: Vec::new(),
            decompressed_limit: DEFAULT_DECOMPRESSED_LIMIT,
            leak_cap: None,
            found: BTreeMap::new(),
        }
    }

    /// Lists at most `cap` (at least 1) leak findings per channel, for very large canary sets
    /// (a million real values): the rest are counted in
    /// [`ChannelReport::leaks_not_listed`], and every canary found is kept in a bit set
    /// ([`Self::found_in`]).
    pub fn cap_leak_findings(&mut self, cap: usize) {
        self.leak_cap = Some(cap.max(1));
    }

    /// With [`Self::cap_leak_findings`]: whether canary `index` (controls too) was found in
    /// `channel`.
    #[must_use]
    pub fn found_in(&self, channel: &str, index: usize) -> bool {
        self.found
            .get(channel)
            .and_then(|bits| bits.get(index / 64))
            .is_some_and(|w| w & (1u64 << (index % 64)) != 0)
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

    /// Records a harness error for `channel` (an artifact that could not be collected). A
    /// message that holds canary bytes (a corrupt header or a tool's output can echo data) is
    /// cut before them.
    pub fn error(&mut self, channel: &str, message: impl Into<String>) {
        let message = self.withhold_canaries(message.into());
        self.channel_mut(channel).errors.push(message);
    }

    fn withhold_canaries(&self, message: String) -> String {
        let mut first: Option<u64> = None;
        self.scanner.scan_bytes(message.as_bytes(), |h| {
            first = Some(first.map_or(h.offset, |f| f.min(h.offset)));
        });
        let Some(at) = first else {
            return message;
        };
        let mut cut = usize::try_from(at).unwrap_or(0);
        while cut > 0 && !message.is_char_boundary(cut) {
            cut -= 1;
        }
        format!(
            "{}[rest of the message withheld: it held canary bytes]",
            message.get(..cut).unwrap_or_default()
        )
    }

    fn record(&mut self, channel: &str, artifact: &str, bytes: u64, collector: &Collector) {
        let mut not_listed = 0u64;
        let findings = match self.leak_cap {
            None => collector.findings(self.scanner.canaries(), channel, artifact),
            Some(cap) => {
                let words = self.scanner.canaries().len().div_ceil(64);
                let bits = self
                    .found
                    .entry(channel.to_owned())
                    .or_insert_with(|| vec![0; words]);
                for i in collector.canaries() {
                    if let Some(w) = bits.get_mut(i / 64) {
                        *w |= 1u64 << (i % 64);
                    }
                }
                let mut room = cap.saturating_sub(
                    self.channels
                        .iter()
                        .find(|c| c.channel == channel)
                        .map_or(0, |c| c.leaks.len()),
                );
                collector.findings_where(
                    self.scanner.canaries(),
                    channel,
                    artifact,
                    |_, control| {
                        if control {
                            true
                        } else if room > 0 {
                            room -= 1;
                            true
                        } else {
                            not_listed += 1;
                            false
                        }
                    },
                )
            }
        };
        let c = self.channel_mut(channel);
        c.leaks_not_listed += not_listed;
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

    /// Scans a reader as one artifact, streaming. When the reader fails, what it delivered
    /// before the failure is still scanned and its findings recorded; the failure is recorded
    /// as a harness error of the channel too.
    ///
    /// # Errors
    /// The reader's I/O error (also recorded as a harness error of the channel).
    pub fn scan_reader(
        &mut self,
        channel: &str,
        artifact: &str,
        reader: impl Read,
    ) -> io::Result<()> {
        let faults: Faults = Rc::new(RefCell::new(Vec::new()));
        let latch = Latch::new(reader, artifact, &faults);
        let mut col = Collector::new();
        let result = self.scanner.scan_reader(latch, |h| col.add(h));
        let n = result.as_ref().map_or(0, |n| *n);
        self.record(channel, artifact, n, &col);
        let mut first = result.err();
        for f in faults.borrow_mut().drain(..) {
            if first.is_none() {
                first = Some(io::Error::other(f.clone()));
            }
            self.error(channel, f);
        }
        first.map_or(Ok(()), Err)
    }

    /// Scans a file or a folder (recursively) and everything it recognises inside, at any
    /// depth up to [`MAX_DEPTH`]: every artifact (file, archive member, decompressed stream) is
    /// scanned raw, then sniffed and descended: gzip (`[gunzip]`), zstd (`[zstd]`), xz
    /// (`[xz]`), bzip2 (`[bunzip2]`), lz4 frames (`[lz4]`), tar and zip members (`!member`),
    /// PostgreSQL custom-format dumps and directory dumps, also inside archives (through
    /// `pg_restore -f -`, `[pg_restore]`), relation files under `base/`, `global/` or
    /// `pg_tblspc/` (heap and TOAST pages, compressed values decompressed: `[heap-pglz]`,
    /// `[toast-lz4]`, ...) and WAL segments (`[wal-records]`, `[wal-…]`), and MariaDB tablespaces and binary logs
    /// (compressed pages and events inflated: `[innodb-page-zlib@..]`, `[binlog-zlib@..]`, see
    /// [`crate::mariadb`]).
    ///
    /// Symbolic links inside the tree are followed (files and folders) and listed in the
    /// channel's [`ChannelReport::links_followed`]; a folder reached again (a loop) is not
    /// walked twice. A dangling link, a corrupt or truncated stream (whose readable prefix is
    /// still scanned), nesting deeper than [`MAX_DEPTH`], the decompression limit, and a path
    /// with nothing readable in it are harness errors of the channel, not returned.
    pub fn scan_path(&mut self, channel: &str, path: &Path) {
        let before = self.channel_mut(channel).bytes;
        let mut walk = Walk {
            channel: Rc::from(channel),
            dirs: HashSet::new(),
            files: HashSet::new(),
            budget: Budget {
                limit: self.decompressed_limit,
                used: Rc::new(Cell::new(0)),
            },
            faults: Rc::new(RefCell::new(Vec::new())),
            spool: None,
            seq: 0,
        };
        self.walk_path(&mut walk, path);
        if self.channel_mut(channel).bytes == before {
            self.error(
                channel,
                format!(
                    "nothing readable in {} (0 bytes scanned): a clean result would prove nothing",
                    path.display()
                ),
            );
        }
        // `walk.spool` (a private 0700 folder of spooled members and dumps) is removed here.
    }

    /// Sets the bound on decompressed bytes per artifact (default
    /// [`DEFAULT_DECOMPRESSED_LIMIT`]); see [`Self::scan_path`].
    pub fn set_decompressed_limit(&mut self, bytes: u64) {
        self.decompressed_limit = bytes;
    }

    fn walk_path(&mut self, walk: &mut Walk, path: &Path) {
        let channel = Rc::clone(&walk.channel);
        let channel: &str = &channel;
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.error(
                    channel,
                    format!("{}: does not exist (was it collected?)", path.display()),
                );
                return;
            }
            Err(e) => {
                self.error(channel, format!("{}: cannot stat: {e}", path.display()));
                return;
            }
        };
        if meta.is_dir() {
            if !walk.dirs.insert((meta.dev(), meta.ino())) {
                return;
            }
            if path.join("toc.dat").is_file() {
                let name = format!("{}[pg_restore]", path.display());
                self.pg_restore(channel, &name, path);
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
                if is_link {
                    self.follow_link(walk, &p);
                } else {
                    self.walk_path(walk, &p);
                }
            }
            return;
        }
        if !meta.is_file() {
            // Sockets, FIFOs and devices hold no stored bytes.
            return;
        }
        if !walk.files.insert((meta.dev(), meta.ino())) {
            return;
        }
        walk.budget.used.set(0);
        let name = path.display().to_string();
        let src = Rc::new(Source::File(path.to_path_buf()));
        self.scan_node(walk, &name, path, &src, 0);
    }

    fn follow_link(&mut self, walk: &mut Walk, link: &Path) {
        let channel = Rc::clone(&walk.channel);
        let channel: &str = &channel;
        let target = std::fs::read_link(link)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "?".to_owned());
        let meta = match std::fs::metadata(link) {
            Ok(m) => m,
            Err(e) => {
                self.error(
                    channel,
                    format!(
                        "{}: dangling symbolic link to {target} ({e}): what it pointed to was not scanned",
                        link.display()
                    ),
                );
                return;
            }
        };
        let resolved = std::fs::canonicalize(link)
            .map(|p| p.display().to_string())
            .unwrap_or(target);
        let key = (meta.dev(), meta.ino());
        let seen = if meta.is_dir() {
            walk.dirs.contains(&key)
        } else {
            walk.files.contains(&key)
        };
        let line = if seen {
            format!(
                "{} -> {resolved} (already scanned through another path: not walked again)",
                link.display()
            )
        } else {
            format!("{} -> {resolved}", link.display())
        };
        self.channel_mut(channel).links_followed.push(line);
        if !seen {
            self.walk_path(walk, link);
        }
    }

    /// Scans one artifact raw, then descends into what its first bytes (or its path) say it
    /// holds.
    fn scan_node(
        &mut self,
        walk: &mut Walk,
        name: &str,
        logical: &Path,
        src: &Rc<Source>,
        depth: u32,
    ) {
        let channel = Rc::clone(&walk.channel);
        let channel: &str = &channel;
        let Some(mut reader) = self.open_source(walk, name, src) else {
            return;
        };
        let mut head = vec![0u8; 512];
        let n = read_up_to(&mut reader, &mut head).unwrap_or(0);
        head.truncate(n);
        self.scan_stream(walk, name, io::Cursor::new(&head).chain(reader));
        let too_deep = |s: &mut Self| {
            s.error(
                channel,
                format!("{name}: containers nested deeper than {MAX_DEPTH} levels: not descended"),
            );
        };
        if let Some(codec) = Codec::sniff(&head) {
            if depth >= MAX_DEPTH {
                too_deep(self);
            } else {
                let child_name = format!("{name}[{}]", codec.view());
                let child = Rc::new(Source::Decoded {
                    codec,
                    parent: Rc::clone(src),
                    name: child_name.clone(),
                });
                let logical = strip_compression_suffix(logical);
                self.scan_node(walk, &child_name, &logical, &child, depth + 1);
            }
        } else if is_tar(&head) || is_zip(&head) {
            if depth >= MAX_DEPTH {
                too_deep(self);
            } else if is_tar(&head) {
                self.tar_members(walk, name, src, depth);
            } else {
                self.zip_members(walk, name, src, depth);
            }
        } else if is_pg_custom_dump(&head) && logical.file_name().is_none_or(|n| n != "toc.dat") {
            let restore = format!("{name}[pg_restore]");
            if let Some((path, spooled)) = self.materialize(walk, name, src) {
                self.pg_restore(channel, &restore, &path);
                if spooled {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        if is_relation_path(logical)
            && let Some(r) = self.open_source(walk, name, src)
        {
            self.relation(channel, name, r);
            self.drain_faults(walk);
        }
        if is_wal_path(logical) {
            if let Some(r) = self.open_source(walk, name, src) {
                self.scan_stream(walk, &format!("{name}[wal-records]"), WalRecords::new(r));
            }
            if let Some(r) = self.open_source(walk, name, src) {
                self.wal_compressed(channel, name, r);
                self.drain_faults(walk);
            }
        }
        if crate::mariadb::is_innodb_path(logical)
            && let Some(r) = self.open_source(walk, name, src)
        {
            self.mariadb_views(channel, name, |emit| {
                crate::mariadb::walk_tablespace(r, emit)
            });
            self.drain_faults(walk);
        }
        if head.starts_with(crate::mariadb::BINLOG_MAGIC)
            && let Some(r) = self.open_source(walk, name, src)
        {
            self.mariadb_views(channel, name, |emit| crate::mariadb::walk_binlog(r, emit));
            self.drain_faults(walk);
        }
    }

    /// Scans the decoded views of a MariaDB tablespace or binary log; what cannot be decoded
    /// is a harness error.
    fn mariadb_views(
        &mut self,
        channel: &str,
        name: &str,
        walk: impl FnOnce(&mut dyn FnMut(crate::mariadb::Decoded)) -> io::Result<Vec<String>>,
    ) {
        let result = self.decoded_views(channel, name, |emit| {
            walk(&mut |d| emit(d.view, d.offset, &d.bytes))
        });
        match result {
            Ok(problems) => {
                for p in problems {
                    self.error(channel, format!("{name}: cannot decode: {p}"));
                }
            }
            Err(e) => self.error(channel, format!("{name}: cannot decode: read failed: {e}")),
        }
    }

    /// Scans every view `walk` decodes (`emit(view, offset, bytes)`) as the artifact
    /// `name[view@offset]`; returns what `walk` returned.
    fn decoded_views<T>(
        &mut self,
        channel: &str,
        name: &str,
        walk: impl FnOnce(&mut dyn FnMut(&str, u64, &[u8])) -> T,
    ) -> T {
        let mut views = Vec::new();
        let scanner = &self.scanner;
        let result = walk(&mut |view, offset, bytes| {
            let mut col = Collector::new();
            scanner.scan_bytes(bytes, |h| col.add(h));
            views.push((format!("{name}[{view}@{offset}]"), bytes.len(), col));
        });
        for (artifact, len, col) in views {
            self.record(channel, &artifact, len as u64, &col);
        }
        result
    }

    fn open_source(&mut self, walk: &Walk, name: &str, src: &Source) -> Option<Box<dyn Read>> {
        let channel = Rc::clone(&walk.channel);
        let channel: &str = &channel;
        match src.open(walk) {
            Ok(r) => Some(r),
            Err(e) => {
                self.error(channel, format!("{name}: cannot open: {e}"));
                None
            }
        }
    }

    /// Scans a stream as one artifact; a read error ends it (what was read still counts) and
    /// is recorded with the faults met below it.
    fn scan_stream(&mut self, walk: &Walk, artifact: &str, reader: impl Read) {
        let channel = Rc::clone(&walk.channel);
        let channel: &str = &channel;
        let latch = Latch::new(reader, artifact, &walk.faults);
        let mut col = Collector::new();
        let n = self
            .scanner
            .scan_reader(latch, |h| col.add(h))
            .unwrap_or_default();
        self.record(channel, artifact, n, &col);
        self.drain_faults(walk);
    }

    fn drain_faults(&mut self, walk: &Walk) {
        let channel = Rc::clone(&walk.channel);
        let channel: &str = &channel;
        let faults: Vec<String> = walk.faults.borrow_mut().drain(..).collect();
        for f in faults {
            let f = self.withhold_canaries(f);
            let c = self.channel_mut(channel);
            if !c.errors.contains(&f) {
                c.errors.push(f);
            }
        }
    }

    /// A file path holding `src`'s bytes: the file itself, or a copy spooled into the walk's
    /// private folder (`true`: remove it when done).
    fn materialize(
        &mut self,
        walk: &mut Walk,
        name: &str,
        src: &Source,
    ) -> Option<(PathBuf, bool)> {
        let channel = Rc::clone(&walk.channel);
        let channel: &str = &channel;
        if let Source::File(p) = src {
            return Some((p.clone(), false));
        }
        let reader = self.open_source(walk, name, src)?;
        let path = match walk.spool_path("artifact") {
            Ok(p) => p,
            Err(e) => {
                self.error(
                    channel,
                    format!("{name}: cannot make a private spool folder: {e}"),
                );
                return None;
            }
        };
        if let Err(e) = spool_to(&path, reader) {
            self.error(
                channel,
                format!("{name}: cannot spool to {}: {e}", path.display()),
            );
            let _ = std::fs::remove_file(&path);
            return None;
        }
        self.drain_faults(walk);
        Some((path, true))
    }

    fn tar_members(&mut self, walk: &mut Walk, outer: &str, src: &Rc<Source>, depth: u32) {
        let channel = Rc::clone(&walk.channel);
        let channel: &str = &channel;
        let Some(reader) = self.open_source(walk, outer, src) else {
            return;
        };
        let mut archive = tar::Archive::new(reader);
        let entries = match archive.entries() {
            Ok(e) => e,
            Err(e) => {
                self.error(channel, format!("{outer}: not a readable tar: {e}"));
                return;
            }
        };
        let mut dumps = BTreeMap::new();
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    self.error(channel, format!("{outer}: bad tar member: {e}"));
                    break;
                }
            };
            let kind = entry.header().entry_type();
            if !(kind.is_file() || kind.is_gnu_sparse()) {
                continue;
            }
            let member = entry
                .path()
                .map(|p| p.to_path_buf())
                .unwrap_or_else(|_| PathBuf::from("?"));
            let name = format!("{outer}!{}", member.display());
            self.member(walk, &name, &member, entry, depth + 1, &mut dumps);
        }
        self.drain_faults(walk);
        self.restore_dir_dumps(walk, outer, dumps);
    }

    fn zip_members(&mut self, walk: &mut Walk, outer: &str, src: &Rc<Source>, depth: u32) {
        let channel = Rc::clone(&walk.channel);
        let channel: &str = &channel;
        let result = match &**src {
            Source::Memory(bytes) => {
                zip::ZipArchive::new(io::Cursor::new(Shared(Rc::clone(bytes))))
                    .map(|a| self.zip_walk(walk, outer, a, depth))
            }
            _ => {
                let Some((path, spooled)) = self.materialize(walk, outer, src) else {
                    return;
                };
                let r = match File::open(&path) {
                    Ok(f) => zip::ZipArchive::new(BufReader::new(f))
                        .map(|a| self.zip_walk(walk, outer, a, depth)),
                    Err(e) => Err(zip::result::ZipError::Io(e)),
                };
                if spooled {
                    let _ = std::fs::remove_file(&path);
                }
                r
            }
        };
        if let Err(e) = result {
            // A truncated zip has no central directory: read the members from their local
            // headers, as far as they go.
            self.error(
                channel,
                format!(
                    "{outer}: no readable zip central directory ({e}): members read from their \
                     local headers, as far as they go"
                ),
            );
            self.zip_stream(walk, outer, src, depth);
        }
    }

    fn zip_stream(&mut self, walk: &mut Walk, outer: &str, src: &Rc<Source>, depth: u32) {
        let channel = Rc::clone(&walk.channel);
        let channel: &str = &channel;
        let Some(mut reader) = self.open_source(walk, outer, src) else {
            return;
        };
        let mut dumps = BTreeMap::new();
        loop {
            match zip::read::read_zipfile_from_stream(&mut reader) {
                Ok(Some(file)) => {
                    if !file.is_file() {
                        continue;
                    }
                    self.zip_member(walk, outer, file, depth, &mut dumps);
                }
                Ok(None) => break,
                Err(e) => {
                    self.error(
                        channel,
                        format!("{outer}: zip local header unreadable: {e}"),
                    );
                    break;
                }
            }
        }
        self.restore_dir_dumps(walk, outer, dumps);
    }

    fn zip_walk<R: Read + io::Seek>(
        &mut self,
        walk: &mut Walk,
        outer: &str,
        mut archive: zip::ZipArchive<R>,
        depth: u32,
    ) {
        let channel = Rc::clone(&walk.channel);
        let channel: &str = &channel;
        let mut dumps = BTreeMap::new();
        for i in 0..archive.len() {
            let file = match archive.by_index(i) {
                Ok(f) => f,
                Err(e) => {
                    self.error(channel, format!("{outer}: zip member #{i} unreadable: {e}"));
                    continue;
                }
            };
            if !file.is_file() {
                continue;
            }
            self.zip_member(walk, outer, file, depth, &mut dumps);
        }
        self.restore_dir_dumps(walk, outer, dumps);
    }

    /// One zip member (from the central directory or from a local header), charged to the
    /// decompression budget.
    fn zip_member<R: Read>(
        &mut self,
        walk: &mut Walk,
        outer: &str,
        file: zip::read::ZipFile<'_, R>,
        depth: u32,
        dumps: &mut BTreeMap<PathBuf, PathBuf>,
    ) {
        let member = PathBuf::from(file.name().map_or_else(|_| "?".into(), |n| n.into_owned()));
        let name = format!("{outer}!{}", member.display());
        let charged = Charged {
            inner: file,
            budget: walk.budget.clone(),
        };
        self.member(walk, &name, &member, charged, depth + 1, dumps);
    }

    /// One archive member: streamed once when it holds nothing to descend into, otherwise
    /// kept (in memory up to [`MEMORY_SPOOL`], else in the private spool folder) and scanned
    /// as a node. Directory-dump members are gathered per folder for `pg_restore`.
    fn member(
        &mut self,
        walk: &mut Walk,
        name: &str,
        member: &Path,
        reader: impl Read,
        depth: u32,
        dumps: &mut BTreeMap<PathBuf, PathBuf>,
    ) {
        let channel = Rc::clone(&walk.channel);
        let channel: &str = &channel;
        let mut reader = Latch::new(reader, name, &walk.faults);
        if depth > MAX_DEPTH {
            self.error(
                channel,
                format!("{name}: containers nested deeper than {MAX_DEPTH} levels: not descended"),
            );
            return;
        }
        let mut head = vec![0u8; 512];
        let n = read_up_to(&mut reader, &mut head).unwrap_or(0);
        head.truncate(n);
        let rest = io::Cursor::new(head.clone()).chain(reader);
        if is_dir_dump_member(member) {
            let parent = member.parent().map(Path::to_path_buf).unwrap_or_default();
            let dir = match dumps.get(&parent) {
                Some(d) => Ok(PathBuf::clone(d)),
                None => walk.spool_path("dump").and_then(|d| {
                    std::fs::create_dir(&d)?;
                    dumps.insert(parent, d.clone());
                    Ok(d)
                }),
            };
            let file = member.file_name().map(PathBuf::from).unwrap_or_default();
            let path = match dir {
                Ok(d) => d.join(file),
                Err(e) => {
                    self.error(channel, format!("{name}: cannot spool: {e}"));
                    return;
                }
            };
            if let Err(e) = spool_to(&path, rest) {
                self.error(channel, format!("{name}: cannot spool: {e}"));
                return;
            }
            let src = Rc::new(Source::File(path));
            self.scan_node(walk, name, member, &src, depth);
            return;
        }
        let descend = Codec::sniff(&head).is_some()
            || is_tar(&head)
            || is_zip(&head)
            || is_pg_custom_dump(&head)
            || is_relation_path(member)
            || is_wal_path(member)
            || crate::mariadb::is_innodb_path(member)
            || head.starts_with(crate::mariadb::BINLOG_MAGIC);
        if !descend {
            self.scan_stream(walk, name, rest);
            return;
        }
        // Kept in memory when small; the size in the member's header is not trusted.
        let mut bytes = Zeroizing::new(Vec::new());
        let mut rest = rest;
        if let Err(e) = (&mut rest).take(MEMORY_SPOOL + 1).read_to_end(&mut bytes) {
            self.error(channel, format!("{name}: read failed: {e}"));
        }
        if bytes.len() as u64 <= MEMORY_SPOOL {
            let src = Rc::new(Source::Memory(Rc::new(bytes)));
            self.scan_node(walk, name, member, &src, depth);
            return;
        }
        let path = match walk.spool_path("member") {
            Ok(p) => p,
            Err(e) => {
                self.error(channel, format!("{name}: cannot spool: {e}"));
                return;
            }
        };
        if let Err(e) = spool_to(&path, io::Cursor::new(bytes.as_slice()).chain(rest)) {
            self.error(channel, format!("{name}: cannot spool: {e}"));
        } else {
            drop(bytes);
            let src = Rc::new(Source::File(path.clone()));
            self.scan_node(walk, name, member, &src, depth);
        }
        let _ = std::fs::remove_file(&path);
    }

    fn restore_dir_dumps(&mut self, walk: &Walk, outer: &str, dumps: BTreeMap<PathBuf, PathBuf>) {
        let channel = Rc::clone(&walk.channel);
        let channel: &str = &channel;
        for (parent, dir) in dumps {
            if dir.join("toc.dat").is_file() {
                let name = format!("{outer}!{}[pg_restore]", parent.display());
                self.pg_restore(channel, &name, &dir);
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        self.drain_faults(walk);
    }

    fn relation(&mut self, channel: &str, name: &str, reader: impl Read) {
        let result = self.decoded_views(channel, name, |emit| {
            walk_relation(reader, |d| emit(&d.view, d.offset, &d.bytes))
        });
        if let Err(e) = result {
            self.error(channel, format!("{name}: heap pages unreadable: {e}"));
        }
    }

    fn wal_compressed(&mut self, channel: &str, name: &str, reader: impl Read) {
        let result = self.decoded_views(channel, name, |emit| {
            sniff_compressed(WalRecords::new(reader), "wal", |d| {
                emit(&d.view, d.offset, &d.bytes)
            })
        });
        if let Err(e) = result {
            self.error(channel, format!("{name}: WAL unreadable: {e}"));
        }
    }

    fn pg_restore(&mut self, channel: &str, name: &str, dump: &Path) {
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
            let _ = self.scan_reader(channel, name, out);
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

/// Archive members up to this size that must be read more than once are kept in memory
/// (zeroized when dropped); larger ones are spooled to the walk's private folder.
const MEMORY_SPOOL: u64 = 64 << 20;

/// The state of one [`LeakCheck::scan_path`] walk.
struct Walk {
    /// The channel the findings and errors of this walk are recorded under.
    channel: Rc<str>,
    /// Folders walked, by (device, inode): a link back into the tree is not walked again.
    dirs: HashSet<(u64, u64)>,
    /// Files scanned, by (device, inode).
    files: HashSet<(u64, u64)>,
    /// The decompressed bytes allowed for the current artifact.
    budget: Budget,
    /// Read faults not yet recorded.
    faults: Faults,
    /// The private (0700) folder for spooled members and dumps, made on first use and removed
    /// with the walk.
    spool: Option<tempfile::TempDir>,
    seq: u64,
}

impl Walk {
    /// A fresh path inside the private spool folder.
    fn spool_path(&mut self, kind: &str) -> io::Result<PathBuf> {
        let dir = match &self.spool {
            Some(d) => d.path().to_path_buf(),
            None => {
                let d = tempfile::Builder::new()
                    .prefix("leakless-leakcheck-spool-")
                    .tempdir()?;
                std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700))?;
                let p = d.path().to_path_buf();
                self.spool = Some(d);
                p
            }
        };
        self.seq += 1;
        Ok(dir.join(format!("{kind}-{}", self.seq)))
    }
}

/// Where an artifact's bytes come from; it can be opened again for each view.
enum Source {
    /// A file on disk.
    File(PathBuf),
    /// An archive member kept in memory.
    Memory(Rc<Zeroizing<Vec<u8>>>),
    /// The decompression of another source.
    Decoded {
        codec: Codec,
        parent: Rc<Source>,
        name: String,
    },
}

impl Source {
    /// A fresh reader from the start; decoder errors end the stream and land in the walk's
    /// faults.
    fn open(&self, walk: &Walk) -> io::Result<Box<dyn Read>> {
        Ok(match self {
            Source::File(p) => Box::new(BufReader::with_capacity(1 << 16, File::open(p)?)),
            Source::Memory(bytes) => Box::new(io::Cursor::new(Shared(Rc::clone(bytes)))),
            Source::Decoded {
                codec,
                parent,
                name,
            } => {
                let count = Rc::new(Cell::new(0));
                let input = Counting {
                    inner: parent.open(walk)?,
                    count: Rc::clone(&count),
                };
                Box::new(Latch {
                    inner: Charged {
                        inner: codec.decoder(Box::new(input)),
                        budget: walk.budget.clone(),
                    },
                    name: name.clone(),
                    what: format!("corrupt or truncated {} stream", codec.view()),
                    delivered: 0,
                    input: Some(count),
                    faults: Rc::clone(&walk.faults),
                    failed: false,
                })
            }
        })
    }
}

/// Shared in-memory bytes, readable through a cursor.
struct Shared(Rc<Zeroizing<Vec<u8>>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// Copies `reader` into a new private (0600) file at `path`.
fn spool_to(path: &Path, mut reader: impl Read) -> io::Result<u64> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    io::copy(&mut reader, &mut f)
}
