//! The residue scan: canaries built from the **real values** of columns, to prove that the
//! old plaintext of an adopted column no longer survives in a data directory, WAL, binlog,
//! SQLite file or backup.
//!
//! 1. [`ResidueValues`] collects real values, each under its column (`table.column`) and row
//!    id: read through a database URL ([`ResidueValues::read`], PostgreSQL, MariaDB/MySQL or
//!    SQLite, see [`ColumnSpec`] for text, bytes, JSON and GPS columns), added one by one
//!    ([`ResidueValues::add`]), or opened from an already-sealed column with the
//!    application's [`KeyRing`] ([`ResidueValues::add_sealed`]). Values live only in memory,
//!    in zeroizing buffers. A value shorter than 8 bytes is too short to scan for: it is
//!    counted as skipped, with a sample of its row ids. Equal values of one column become one
//!    canary that maps to all of their rows.
//! 2. [`ResidueValues::check`] compiles them (with the smaller [`EncodingSet::Residue`] by
//!    default: a million values cost a few hundred MB) into a [`ResidueCheck`], together with
//!    the positive control the harness planted itself ([`DbControl`]: a random value inserted
//!    through the same URL into a scratch table `leakless_residue_control` and forced to disk).
//! 3. [`ResidueCheck::scan_path`] scans each channel; [`ResidueCheck::report`] gives a
//!    [`ResidueReport`]: per channel and column, the rows whose old value was found. Findings
//!    name the canary id `table.column#row=<id>` only, **never a value** (a real value holds
//!    no marker: the id is the handle).

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::hash::{BuildHasher as _, Hasher as _};
use std::path::Path;
use std::str::FromStr;

use diesel::connection::SimpleConnection as _;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Binary, Double, Nullable, Text};
use leakless::redact::{redact_url, scrub};
use leakless::{FieldContext, KeyRing, KeyScope, RowId};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::Error;
use crate::canary::{Canary, CanarySet, fresh_marker};
use crate::encode::MIN_NEEDLE_LEN;
use crate::harness::LeakCheck;
use crate::report::{Report, Status};
use crate::scan::{EncodingSet, Scanner};

/// The scratch table the positive control is planted into.
pub const CONTROL_TABLE: &str = "leakless_residue_control";

/// How many row ids a report lists per column and channel (the rest are counted).
pub const ROW_SAMPLE: usize = 20;

/// How many row ids a duplicated value keeps (the rest are counted).
pub const DUPLICATE_ROWS: usize = 20;

/// How many leak findings the underlying [`Report`] lists per channel.
pub const FINDINGS_LISTED: usize = 20;

fn err(id: &str, problem: impl Into<String>) -> Error {
    Error::Canary {
        id: id.to_owned(),
        problem: problem.into(),
    }
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !s.as_bytes().first().is_some_and(u8::is_ascii_digit)
}

/// What a column spec reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColumnSource {
    /// One column: text, bytes (`bytea`, `BLOB`) or JSON (`json`, `jsonb`: the document's
    /// text, and each string in it of at least 8 bytes as a value of its own).
    Value(String),
    /// A GPS point from two numeric columns (`lat_column+lon_column`).
    Gps {
        /// The latitude column.
        lat: String,
        /// The longitude column.
        lon: String,
    },
}

/// A column to read: `table.column`, `schema.table.column`, or `table.lat+lon` for a GPS
/// point kept in two numeric columns. Names are plain identifiers (letters, digits, `_`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnSpec {
    /// The table (optionally `schema.table`).
    pub table: String,
    /// The column or columns.
    pub source: ColumnSource,
}

impl ColumnSpec {
    /// The label used in canary ids and reports: `table.column` or `table.lat+lon`.
    #[must_use]
    pub fn label(&self) -> String {
        match &self.source {
            ColumnSource::Value(c) => format!("{}.{c}", self.table),
            ColumnSource::Gps { lat, lon } => format!("{}.{lat}+{lon}", self.table),
        }
    }
}

impl FromStr for ColumnSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || {
            err(
                s,
                "expected TABLE.COLUMN, SCHEMA.TABLE.COLUMN or TABLE.LAT_COLUMN+LON_COLUMN \
                 (letters, digits and _ only)",
            )
        };
        let (table, column) = s.rsplit_once('.').ok_or_else(bad)?;
        if !table.split('.').all(is_ident) || table.split('.').count() > 2 {
            return Err(bad());
        }
        let source = match column.split_once('+') {
            Some((lat, lon)) if is_ident(lat) && is_ident(lon) => ColumnSource::Gps {
                lat: lat.to_owned(),
                lon: lon.to_owned(),
            },
            None if is_ident(column) => ColumnSource::Value(column.to_owned()),
            _ => return Err(bad()),
        };
        Ok(Self {
            table: table.to_owned(),
            source,
        })
    }
}

/// One real value. `Debug` never shows it.
pub enum RealValue {
    /// Text.
    Text(Zeroizing<String>),
    /// Bytes.
    Bytes(Zeroizing<Vec<u8>>),
    /// A GPS point.
    Gps {
        /// Latitude in degrees.
        lat: f64,
        /// Longitude in degrees.
        lon: f64,
    },
}

impl fmt::Debug for RealValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RealValue::Text(_) => "Text(<redacted>)",
            RealValue::Bytes(_) => "Bytes(<redacted>)",
            RealValue::Gps { .. } => "Gps(<redacted>)",
        })
    }
}

impl RealValue {
    /// Bytes as text when they are UTF-8, else as bytes.
    #[must_use]
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        match String::from_utf8(bytes) {
            Ok(s) => RealValue::Text(Zeroizing::new(s)),
            Err(e) => RealValue::Bytes(Zeroizing::new(e.into_bytes())),
        }
    }

    fn scan_len(&self) -> usize {
        match self {
            RealValue::Text(s) => s.len(),
            RealValue::Bytes(b) => b.len(),
            RealValue::Gps { .. } => MIN_NEEDLE_LEN,
        }
    }

    fn hash_key(&self, column: usize) -> u64 {
        let mut h = HASH_KEYS.with(|k| k.build_hasher());
        h.write_usize(column);
        match self {
            RealValue::Text(s) => {
                h.write_u8(0);
                h.write(s.as_bytes());
            }
            RealValue::Bytes(b) => {
                h.write_u8(1);
                h.write(b);
            }
            RealValue::Gps { lat, lon } => {
                h.write_u8(2);
                h.write_u64(lat.to_bits());
                h.write_u64(lon.to_bits());
            }
        }
        h.finish()
    }

    fn same_as(&self, c: &Canary) -> bool {
        match self {
            RealValue::Text(s) => c.text_value() == Some(s.as_str()),
            RealValue::Bytes(b) => {
                c.text_value().is_none() && c.raw_bytes().is_ok_and(|r| *r == **b)
            }
            RealValue::Gps { lat, lon } => c
                .gps_value()
                .is_some_and(|(a, o)| a.to_bits() == lat.to_bits() && o.to_bits() == lon.to_bits()),
        }
    }
}

thread_local! {
    /// Random hash keys, so equal-value grouping reveals nothing predictable.
    static HASH_KEYS: std::collections::hash_map::RandomState =
        std::collections::hash_map::RandomState::new();
}

/// Per column: what was read.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ColumnSummary {
    /// `table.column` (or `table.lat+lon`).
    pub column: String,
    /// Rows read (values, NULLs and short values).
    pub rows: u64,
    /// Distinct values scanned for (canaries).
    pub values: u64,
    /// NULLs (nothing to scan for).
    pub nulls: u64,
    /// Values shorter than 8 bytes: too short to scan for, so not scanned.
    pub skipped_short: u64,
    /// Row ids of some skipped values (at most [`ROW_SAMPLE`]).
    pub skipped_rows: Vec<String>,
}

/// The rows a canary stands for.
#[derive(Clone, Debug, Default)]
struct Rows {
    column: usize,
    /// The rows after the first (whose id ends the canary id, `...#row=<id>`); no allocation
    /// for a value that occurs once.
    more: Vec<String>,
    count: u64,
}

/// Real values, by column and row (see the [module documentation](self)).
#[derive(Debug, Default)]
pub struct ResidueValues {
    set: CanarySet,
    /// Per canary of `set`: its column and rows.
    rows: Vec<Rows>,
    columns: Vec<ColumnSummary>,
    /// Value hash to canary index (a collision of two different values goes to `overflow`).
    index: HashMap<u64, u32>,
    overflow: Vec<(u64, u32)>,
}

impl ResidueValues {
    /// No values yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn column_index(&mut self, column: &str) -> usize {
        match self.columns.iter().position(|c| c.column == column) {
            Some(i) => i,
            None => {
                self.columns.push(ColumnSummary {
                    column: column.to_owned(),
                    ..ColumnSummary::default()
                });
                self.columns.len() - 1
            }
        }
    }

    fn column_mut(&mut self, column: &str) -> (usize, &mut ColumnSummary) {
        let i = self.column_index(column);
        match self.columns.get_mut(i) {
            Some(c) => (i, c),
            None => unreachable!("the column was just found or pushed"),
        }
    }

    /// Counts a NULL of `column` at `row`.
    pub fn add_null(&mut self, column: &str, _row: &str) {
        let (_, c) = self.column_mut(column);
        c.rows += 1;
        c.nulls += 1;
    }

    /// Adds the value of `column` (`table.column`) at `row`. A value shorter than 8 bytes is
    /// counted as skipped; a value equal to one already added for the column adds its row to
    /// that canary.
    ///
    /// # Errors
    /// [`Error::Canary`] naming the column and row (never the value) for a GPS point that is
    /// not a valid latitude/longitude.
    pub fn add(&mut self, column: &str, row: &str, value: RealValue) -> Result<(), Error> {
        let (ci, summary) = self.column_mut(column);
        summary.rows += 1;
        if value.scan_len() < MIN_NEEDLE_LEN {
            summary.skipped_short += 1;
            if summary.skipped_rows.len() < ROW_SAMPLE {
                summary.skipped_rows.push(row.to_owned());
            }
            return Ok(());
        }
        let key = value.hash_key(ci);
        let existing = self
            .index
            .get(&key)
            .copied()
            .into_iter()
            .chain(
                self.overflow
                    .iter()
                    .filter(|(k, _)| *k == key)
                    .map(|&(_, i)| i),
            )
            .find(|&i| {
                let i = usize::try_from(i).unwrap_or(usize::MAX);
                self.rows.get(i).is_some_and(|r| r.column == ci)
                    && self.set.canaries.get(i).is_some_and(|c| value.same_as(c))
            });
        if let Some(i) = existing {
            if let Some(r) = self.rows.get_mut(usize::try_from(i).unwrap_or(usize::MAX)) {
                r.count += 1;
                if r.more.len() + 1 < DUPLICATE_ROWS {
                    r.more.push(row.to_owned());
                }
            }
            return Ok(());
        }
        let id = format!("{column}#row={row}");
        let canary = match &value {
            RealValue::Text(s) => Canary::real_text(&id, s),
            RealValue::Bytes(b) => Canary::real_bytes(&id, b),
            RealValue::Gps { lat, lon } => Canary::gps(&id, &id, *lat, *lon),
        };
        self.set.push(canary)?;
        let index =
            u32::try_from(self.set.len() - 1).map_err(|_| err(&id, "more than 2^32 values"))?;
        match self.index.entry(key) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(index);
            }
            // Two different values with one hash: the second goes to the overflow list.
            std::collections::hash_map::Entry::Occupied(_) => self.overflow.push((key, index)),
        }
        self.rows.push(Rows {
            column: ci,
            more: Vec::new(),
            count: 1,
        });
        if let Some(c) = self.columns.get_mut(ci) {
            c.values += 1;
        }
        Ok(())
    }

    /// Adds a text value, and when it is a JSON object or array, each string in it of at least
    /// 8 bytes as a value of its own (under `column[json]`).
    ///
    /// # Errors
    /// As [`Self::add`].
    pub fn add_text_or_json(
        &mut self,
        column: &str,
        row: &str,
        text: Zeroizing<String>,
    ) -> Result<(), Error> {
        let json = if text.starts_with('{') || text.starts_with('[') {
            serde_json::from_str::<serde_json::Value>(&text).ok()
        } else {
            None
        };
        self.add(column, row, RealValue::Text(text))?;
        if let Some(doc) = json {
            let mut strings = Vec::new();
            json_strings(&doc, &mut strings);
            let label = format!("{column}[json]");
            for s in strings {
                if s.len() >= MIN_NEEDLE_LEN {
                    self.add(&label, row, RealValue::Text(Zeroizing::new(s.to_owned())))?;
                }
            }
            zeroize_json(doc);
        }
        Ok(())
    }

    /// Opens every sealed value of a column with the application's key ring and adds its
    /// plaintext under `table.column`. `rows` yields each row's id (as the application binds
    /// it: [`RowId`]) and envelope; `schema_version` is the field's schema version.
    ///
    /// # Errors
    /// The runtime's error for an envelope that does not open (it names table, column and row,
    /// never a value), as [`Error::Canary`].
    pub fn add_sealed<'r>(
        &mut self,
        ring: &KeyRing,
        scope: &KeyScope,
        table: &str,
        column: &str,
        schema_version: u32,
        rows: impl IntoIterator<Item = (RowId<'r>, &'r [u8])>,
    ) -> Result<(), Error> {
        let label = format!("{table}.{column}");
        for (row, envelope) in rows {
            let row_text = match row {
                RowId::Int(i) => i.to_string(),
                RowId::Text(t) => t.to_owned(),
                other => other.to_string(),
            };
            let ctx = FieldContext::new(table, column, row, schema_version);
            let plain = ring
                .open_in_scope(scope, &ctx, envelope)
                .map_err(|e| err(&format!("{label}#row={row_text}"), e.to_string()))?;
            let value = match plain.into_string() {
                Ok(s) => RealValue::Text(s),
                Err(p) => RealValue::Bytes(Zeroizing::new(p.expose_secret().to_vec())),
            };
            self.add(&label, &row_text, value)?;
        }
        Ok(())
    }

    /// Reads every value of `columns` through `url` (`postgres://`, `mysql://`/`mariadb://`,
    /// `sqlite://PATH`, `sqlite:PATH` or a path to an SQLite file), with `row_id` as the row id
    /// column of every table.
    ///
    /// # Errors
    /// [`Error::Fixture`] when the database cannot be reached or a query fails (the URL shown
    /// without its password); [`Error::Canary`] for a bad column name.
    pub fn read(url: &str, columns: &[ColumnSpec], row_id: &str) -> Result<Self, Error> {
        let mut values = Self::new();
        let mut db = Db::connect(url)?;
        for spec in columns {
            values.read_column(&mut db, spec, row_id)?;
        }
        Ok(values)
    }

    fn read_column(&mut self, db: &mut Db, spec: &ColumnSpec, row_id: &str) -> Result<(), Error> {
        if !is_ident(row_id) {
            return Err(err(row_id, "the row id column must be a plain identifier"));
        }
        let label = spec.label();
        db.known.extend(spec.table.split('.').map(str::to_owned));
        db.known.push(row_id.to_owned());
        match &spec.source {
            ColumnSource::Value(c) => db.known.push(c.clone()),
            ColumnSource::Gps { lat, lon } => db.known.extend([lat.clone(), lon.clone()]),
        }
        let table = db.qualified(&spec.table);
        let rid = db.row_id_expr(row_id);
        match &spec.source {
            ColumnSource::Gps { lat, lon } => {
                let sql = format!(
                    "SELECT {rid} AS rid, {} AS lat, {} AS lon FROM {table}",
                    db.double_expr(lat),
                    db.double_expr(lon)
                );
                let rows: Vec<GpsRow> = db.load(&sql)?;
                for r in rows {
                    match (r.lat, r.lon) {
                        (Some(lat), Some(lon)) => {
                            self.add(&label, &r.rid, RealValue::Gps { lat, lon })?;
                        }
                        _ => self.add_null(&label, &r.rid),
                    }
                }
            }
            ColumnSource::Value(col) => {
                let (expr, binary) = db.value_expr(&spec.table, col)?;
                let sql = format!("SELECT {rid} AS rid, {expr} AS v, {binary} AS bin FROM {table}");
                let rows: Vec<ValueRow> = db.load(&sql)?;
                for mut r in rows {
                    let Some(v) = r.v.take() else {
                        self.add_null(&label, &r.rid);
                        continue;
                    };
                    if r.bin != 0 {
                        self.add(&label, &r.rid, RealValue::Bytes(Zeroizing::new(v)))?;
                    } else {
                        match RealValue::from_bytes(v) {
                            RealValue::Text(t) => self.add_text_or_json(&label, &r.rid, t)?,
                            other => self.add(&label, &r.rid, other)?,
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// How many canaries (distinct values) were made.
    #[must_use]
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// What was read, per column.
    #[must_use]
    pub fn columns(&self) -> &[ColumnSummary] {
        &self.columns
    }

    /// Compiles the values and the positive controls (`controls`: canaries with
    /// `control: true`, e.g. [`DbControl::canary`]) into a check, with needles in `encodings`
    /// ([`EncodingSet::Residue`] unless you need more).
    ///
    /// # Errors
    /// [`Error::Canary`] for a control that clashes with a value's id; as
    /// [`Scanner::with_options`].
    pub fn check(
        self,
        controls: CanarySet,
        encodings: &EncodingSet,
    ) -> Result<ResidueCheck, Error> {
        let Self {
            mut set,
            rows,
            columns,
            ..
        } = self;
        let values = set.len();
        let control_ids: Vec<String> = controls.canaries.iter().map(|c| c.id.clone()).collect();
        for c in controls.canaries {
            set.push(c.as_control())?;
        }
        let mut check = LeakCheck::with_scanner(Scanner::with_options(set, None, encodings)?);
        check.cap_leak_findings(FINDINGS_LISTED);
        Ok(ResidueCheck {
            check,
            values,
            rows,
            columns,
            control_ids,
            channels: Vec::new(),
            waived: Vec::new(),
        })
    }
}

fn json_strings<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
    match v {
        serde_json::Value::String(s) => out.push(s),
        serde_json::Value::Array(a) => a.iter().for_each(|x| json_strings(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| json_strings(x, out)),
        _ => {}
    }
}

fn zeroize_json(v: serde_json::Value) {
    use zeroize::Zeroize as _;
    match v {
        serde_json::Value::String(mut s) => s.zeroize(),
        serde_json::Value::Array(a) => a.into_iter().for_each(zeroize_json),
        serde_json::Value::Object(o) => o.into_iter().for_each(|(_, x)| zeroize_json(x)),
        _ => {}
    }
}

/// A check over real values (see the [module documentation](self)).
#[derive(Debug)]
pub struct ResidueCheck {
    check: LeakCheck,
    values: usize,
    rows: Vec<Rows>,
    columns: Vec<ColumnSummary>,
    control_ids: Vec<String>,
    channels: Vec<String>,
    waived: Vec<String>,
}

impl ResidueCheck {
    /// Scans a file or folder as `channel` (see [`LeakCheck::scan_path`]), expecting every
    /// control in it.
    pub fn scan_path(&mut self, channel: &str, path: &Path) {
        self.expect_controls(channel);
        self.check.scan_path(channel, path);
    }

    /// Scans bytes as one artifact of `channel`, expecting every control in it.
    pub fn scan_bytes(&mut self, channel: &str, artifact: &str, bytes: &[u8]) {
        self.expect_controls(channel);
        self.check.scan_bytes(channel, artifact, bytes);
    }

    /// Waives the positive control of `channel` (a channel the harness cannot plant into,
    /// such as an old backup): its clean result then rests on the same scanner finding the
    /// control in the other channels. Call before scanning it.
    pub fn waive_control(&mut self, channel: &str) {
        if !self.waived.iter().any(|c| c == channel) {
            self.waived.push(channel.to_owned());
        }
        self.note_channel(channel);
        self.check.waive_controls(channel);
    }

    fn note_channel(&mut self, channel: &str) {
        if !self.channels.iter().any(|c| c == channel) {
            self.channels.push(channel.to_owned());
        }
    }

    fn expect_controls(&mut self, channel: &str) {
        let waived = self.waived.iter().any(|c| c == channel);
        self.note_channel(channel);
        if !waived {
            for id in &self.control_ids {
                self.check.expect_control(channel, id);
            }
        }
    }

    /// The underlying check (its scanner, for [`crate::scan::self_test`]).
    #[must_use]
    pub fn leak_check(&self) -> &LeakCheck {
        &self.check
    }

    /// Whether the value of `column` at `row` (one of the rows its canary stands for) was
    /// found in `channel`.
    #[must_use]
    pub fn found(&self, channel: &str, column: &str, row: &str) -> bool {
        let Some(ci) = self.columns.iter().position(|c| c.column == column) else {
            return false;
        };
        self.rows.iter().enumerate().any(|(i, r)| {
            r.column == ci
                && self.row_ids(i, r).any(|x| x == row)
                && self.check.found_in(channel, i)
        })
    }

    /// The row ids canary `i` stands for (the first from its id, then the others kept).
    fn row_ids<'a>(&'a self, i: usize, r: &'a Rows) -> impl Iterator<Item = &'a str> + 'a {
        self.check
            .scanner()
            .canaries()
            .canaries
            .get(i)
            .and_then(|c| c.id.split_once("#row=").map(|(_, row)| row))
            .into_iter()
            .chain(r.more.iter().map(String::as_str))
    }

    /// The report.
    #[must_use]
    pub fn report(&self) -> ResidueReport {
        let report = self.check.report();
        let mut channels = Vec::new();
        for name in &self.channels {
            let mut columns: Vec<ColumnFound> = self
                .columns
                .iter()
                .map(|c| ColumnFound {
                    column: c.column.clone(),
                    ..ColumnFound::default()
                })
                .collect();
            for (i, r) in self.rows.iter().enumerate() {
                if !self.check.found_in(name, i) {
                    continue;
                }
                if let Some(col) = columns.get_mut(r.column) {
                    col.values += 1;
                    col.rows += r.count;
                    for id in self.row_ids(i, r) {
                        if col.row_ids.len() < ROW_SAMPLE {
                            col.row_ids.push(id.to_owned());
                        }
                    }
                }
            }
            columns.retain(|c| c.values > 0);
            let status = report
                .channel(name)
                .map_or(Status::HarnessError, crate::report::ChannelReport::status);
            channels.push(ChannelResidue {
                channel: name.clone(),
                status,
                columns,
            });
        }
        ResidueReport {
            source: String::new(),
            values: self.values,
            columns: self.columns.clone(),
            channels,
            notes: Vec::new(),
            report,
        }
    }
}

/// Per channel and column: the rows whose value was found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ColumnFound {
    /// `table.column`.
    pub column: String,
    /// Distinct values found.
    pub values: u64,
    /// Rows those values stand for.
    pub rows: u64,
    /// Their row ids (at most [`ROW_SAMPLE`]).
    pub row_ids: Vec<String>,
}

/// One channel of a residue report.
#[derive(Clone, Debug, Serialize)]
pub struct ChannelResidue {
    /// The channel.
    pub channel: String,
    /// Its status (as in [`Report`]).
    pub status: Status,
    /// The columns with values found, by row id.
    pub columns: Vec<ColumnFound>,
}

/// The residue scan's verdict: by column and row id, never by value.
#[derive(Clone, Debug, Serialize)]
pub struct ResidueReport {
    /// Where the values came from (a URL without its password), if set.
    pub source: String,
    /// Distinct values scanned for.
    pub values: usize,
    /// What was read, per column (with the short values skipped).
    pub columns: Vec<ColumnSummary>,
    /// Per channel, the rows found.
    pub channels: Vec<ChannelResidue>,
    /// Notes (how the control was forced to disk, requirements not met).
    pub notes: Vec<String>,
    /// The underlying report (leak findings capped at [`FINDINGS_LISTED`] per channel).
    pub report: Report,
}

impl ResidueReport {
    /// The status (as [`Report::status`]).
    #[must_use]
    pub fn status(&self) -> Status {
        self.report.status()
    }

    /// 0 clean, 1 leak, 2 detector broken or harness error.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        self.report.exit_code()
    }

    /// The channel named `name`.
    #[must_use]
    pub fn channel(&self, name: &str) -> Option<&ChannelResidue> {
        self.channels.iter().find(|c| c.channel == name)
    }

    /// The report as JSON.
    ///
    /// # Errors
    /// A serialisation error (not expected).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        #[derive(Serialize)]
        struct J<'a> {
            status: Status,
            exit_code: u8,
            #[serde(flatten)]
            r: &'a ResidueReport,
        }
        serde_json::to_string_pretty(&J {
            status: self.status(),
            exit_code: self.exit_code(),
            r: self,
        })
    }

    /// A human summary: the columns read, per channel the rows found, then the leak report.
    #[must_use]
    pub fn human(&self) -> String {
        let mut s = String::new();
        if !self.source.is_empty() {
            let _ = writeln!(s, "residue scan of {}", self.source);
        }
        for c in &self.columns {
            let _ = writeln!(
                s,
                "  column {}: {} rows, {} distinct values scanned, {} NULL, {} too short to scan{}",
                c.column,
                c.rows,
                c.values,
                c.nulls,
                c.skipped_short,
                if c.skipped_rows.is_empty() {
                    String::new()
                } else {
                    format!(" (rows {})", c.skipped_rows.join(", "))
                }
            );
        }
        for n in &self.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        for ch in &self.channels {
            for c in &ch.columns {
                let more = c.rows.saturating_sub(c.row_ids.len() as u64);
                let _ = writeln!(
                    s,
                    "  RESIDUE {}: {} old values of {} in {} rows: {}{}",
                    ch.channel,
                    c.values,
                    c.column,
                    c.rows,
                    c.row_ids
                        .iter()
                        .map(|r| format!("{}#row={r}", c.column))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                );
            }
        }
        s.push_str(&self.report.human());
        s
    }
}

/// A positive control the harness plants itself through a database URL: a random text value in
/// the scratch table [`CONTROL_TABLE`], forced to disk. Drop the table with
/// [`DbControl::drop_table`] once the channels are scanned.
#[derive(Debug)]
pub struct DbControl {
    canary: Canary,
    url: Zeroizing<String>,
    notes: Vec<String>,
}

impl DbControl {
    /// Creates [`CONTROL_TABLE`] (dropping a leftover one), inserts a random value, and forces
    /// it to disk: PostgreSQL `CHECKPOINT` (else `pg_switch_wal()`; without either privilege
    /// the data directory may not show the control yet: a note says so), MariaDB
    /// `FLUSH TABLES ... FOR EXPORT` and `FLUSH BINARY LOGS`, SQLite a passive WAL checkpoint.
    ///
    /// # Errors
    /// [`Error::Fixture`] when the table cannot be created or written.
    pub fn plant(url: &str) -> Result<Self, Error> {
        let mut db = Db::connect(url)?;
        let marker = fresh_marker();
        let canary = Canary::text(
            &format!("{CONTROL_TABLE}#control"),
            &marker,
            &format!("Residue control {marker}, 7 Control Street, Controlton"),
        )?
        .as_control();
        let value = canary.text_value().unwrap_or_default().to_owned();
        let value = Zeroizing::new(value);
        let t = db.quote(CONTROL_TABLE);
        db.batch(&format!("DROP TABLE IF EXISTS {t}"))?;
        db.batch(&format!(
            "CREATE TABLE {t} (id INTEGER PRIMARY KEY, v TEXT)"
        ))?;
        // The value is random and meaningless: a literal is fine.
        db.batch(&format!(
            "INSERT INTO {t} (id, v) VALUES (1, '{}')",
            value.as_str()
        ))?;
        let mut notes = Vec::new();
        match db.backend {
            Backend::Postgres => {
                if db.batch("CHECKPOINT").is_err() {
                    if db.batch("SELECT pg_switch_wal()").is_err() {
                        notes.push(
                            "CHECKPOINT and pg_switch_wal() were refused (they need superuser or \
                             pg_checkpoint): the control may not be in the data directory yet"
                                .into(),
                        );
                    } else {
                        notes.push("CHECKPOINT refused; forced with pg_switch_wal()".into());
                    }
                }
            }
            Backend::Mysql => {
                if db
                    .batch(&format!("FLUSH TABLES {t} FOR EXPORT; UNLOCK TABLES"))
                    .is_err()
                {
                    notes.push(
                        "FLUSH TABLES ... FOR EXPORT refused (needs RELOAD and LOCK TABLES)".into(),
                    );
                }
                if db.batch("FLUSH BINARY LOGS").is_err() {
                    notes.push(
                        "FLUSH BINARY LOGS refused (needs RELOAD); binlog not rotated".into(),
                    );
                }
            }
            Backend::Sqlite => {
                let _ = db.batch("PRAGMA wal_checkpoint(PASSIVE)");
            }
        }
        Ok(Self {
            canary,
            url: Zeroizing::new(url.to_owned()),
            notes,
        })
    }

    /// The control canary (to pass to [`ResidueValues::check`]).
    #[must_use]
    pub fn canary(&self) -> CanarySet {
        let mut set = CanarySet::new();
        let _ = set.push(self.canary.clone());
        set
    }

    /// What forcing the control to disk did or could not do.
    #[must_use]
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Drops the scratch table.
    ///
    /// # Errors
    /// [`Error::Fixture`] when it cannot be dropped.
    pub fn drop_table(self) -> Result<(), Error> {
        let mut db = Db::connect(&self.url)?;
        db.batch(&format!("DROP TABLE IF EXISTS {}", db.quote(CONTROL_TABLE)))
    }
}

/// Runs the residue scan the CLI runs: reads `columns` through `url`, plants the control,
/// scans `channels` (`(name, path)`, each expecting the control unless it is in `waived`),
/// drops the control table, and reports.
///
/// # Errors
/// As [`ResidueValues::read`], [`DbControl::plant`] and [`ResidueValues::check`];
/// [`Error::Canary`] when no channel is given or every channel is waived (nothing would prove
/// the detector works).
pub fn run(
    url: &str,
    columns: &[ColumnSpec],
    row_id: &str,
    channels: &[(String, std::path::PathBuf)],
    waived: &[String],
    encodings: &EncodingSet,
) -> Result<ResidueReport, Error> {
    if channels.iter().all(|(name, _)| waived.contains(name)) {
        return Err(err(
            "residue scan",
            "no channel expects the control: give at least one channel the harness's control \
             can reach (the data directory, WAL or binlog of the database the URL names)",
        ));
    }
    let values = ResidueValues::read(url, columns, row_id)?;
    let control = DbControl::plant(url)?;
    let mut check = match values.check(control.canary(), encodings) {
        Ok(c) => c,
        Err(e) => {
            let _ = control.drop_table();
            return Err(e);
        }
    };
    for w in waived {
        check.waive_control(w);
    }
    for (name, path) in channels {
        check.scan_path(name, path);
    }
    let mut report = check.report();
    report.notes.extend(control.notes().iter().cloned());
    report.source = redact_url(url);
    control.drop_table()?;
    Ok(report)
}

/// `text` with every `"..."` or `'...'` part whose content is not in `known` (nor a dotted
/// path of known names) replaced by `"***"`.
fn mask_quoted(text: &str, known: &[String]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find(['"', '\'', '`']) {
        let (before, from) = rest.split_at(open);
        out.push_str(before);
        let quote = from.chars().next().unwrap_or('"');
        let body = from.get(1..).unwrap_or_default();
        match body.find(quote) {
            Some(close) => {
                let inner = body.get(..close).unwrap_or_default();
                let ok =
                    !inner.is_empty() && inner.split('.').all(|p| known.iter().any(|k| k == p));
                out.push(quote);
                out.push_str(if ok { inner } else { "***" });
                out.push(quote);
                rest = body.get(close + 1..).unwrap_or_default();
            }
            None => {
                out.push(quote);
                out.push_str("***");
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

// ---- database access ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    not(all(feature = "postgres", feature = "mysql")),
    allow(
        dead_code,
        reason = "a backend left out of the build is never connected"
    )
)]
enum Backend {
    Postgres,
    Mysql,
    Sqlite,
}

enum Conn {
    #[cfg(feature = "postgres")]
    Pg(PgConnection),
    #[cfg(feature = "mysql")]
    My(MysqlConnection),
    Lite(SqliteConnection),
}

/// A row type every backend of this build can load (PostgreSQL and MariaDB are the cargo
/// features `postgres` and `mysql`).
trait Row: QueryableByName<diesel::sqlite::Sqlite> + PgRow + MyRow + 'static {}
impl<T: QueryableByName<diesel::sqlite::Sqlite> + PgRow + MyRow + 'static> Row for T {}

/// The trait `$name`: a row type `$backend` can load when the cargo feature `$feature` is on,
/// and any type when it is off.
macro_rules! row_on_backend {
    ($name:ident, $feature:literal, $backend:ty) => {
        #[cfg(feature = $feature)]
        trait $name: QueryableByName<$backend> {}
        #[cfg(feature = $feature)]
        impl<T: QueryableByName<$backend>> $name for T {}
        #[cfg(not(feature = $feature))]
        trait $name {}
        #[cfg(not(feature = $feature))]
        impl<T> $name for T {}
    };
}

row_on_backend!(PgRow, "postgres", diesel::pg::Pg);
row_on_backend!(MyRow, "mysql", diesel::mysql::Mysql);

struct Db {
    backend: Backend,
    conn: Conn,
    /// The identifiers put into SQL (the only quoted text an error message may keep).
    known: Vec<String>,
    /// The URL, for scrubbing driver messages.
    url: Zeroizing<String>,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Db({})", redact_url(&self.url))
    }
}

#[derive(QueryableByName)]
struct ValueRow {
    #[diesel(sql_type = Text)]
    rid: String,
    #[diesel(sql_type = Nullable<Binary>)]
    v: Option<Vec<u8>>,
    #[diesel(sql_type = BigInt)]
    bin: i64,
}

impl Drop for ValueRow {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        if let Some(v) = &mut self.v {
            v.zeroize();
        }
    }
}

#[derive(QueryableByName)]
struct GpsRow {
    #[diesel(sql_type = Text)]
    rid: String,
    #[diesel(sql_type = Nullable<Double>)]
    lat: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    lon: Option<f64>,
}

#[derive(QueryableByName)]
struct TypeRow {
    #[diesel(sql_type = Text)]
    t: String,
}

/// The refusal of a URL whose backend this build leaves out.
#[cfg(not(all(feature = "postgres", feature = "mysql")))]
const NO_BACKEND: &str = "this build of leakless-leaktest leaves that database out (cargo \
                          features `postgres` and `mysql`)";

impl Db {
    fn connect(url: &str) -> Result<Self, Error> {
        let lower = url.to_ascii_lowercase();
        let shown = redact_url(url);
        let fail = |e: &dyn fmt::Display| Error::Fixture {
            what: format!("database {shown}"),
            problem: scrub(&e.to_string(), url),
        };
        let (backend, conn) = if lower.starts_with("postgres://")
            || lower.starts_with("postgresql://")
        {
            #[cfg(feature = "postgres")]
            {
                (
                    Backend::Postgres,
                    Conn::Pg(PgConnection::establish(url).map_err(|e| fail(&e))?),
                )
            }
            #[cfg(not(feature = "postgres"))]
            return Err(fail(&NO_BACKEND));
        } else if lower.starts_with("mysql://") || lower.starts_with("mariadb://") {
            #[cfg(feature = "mysql")]
            {
                let target = match lower.strip_prefix("mariadb://") {
                    Some(_) => format!(
                        "mysql://{}",
                        url.get("mariadb://".len()..).unwrap_or_default()
                    ),
                    None => url.to_owned(),
                };
                let target = Zeroizing::new(target);
                (
                    Backend::Mysql,
                    Conn::My(MysqlConnection::establish(&target).map_err(|e| fail(&e))?),
                )
            }
            #[cfg(not(feature = "mysql"))]
            return Err(fail(&NO_BACKEND));
        } else {
            let path = url.strip_prefix("sqlite:").unwrap_or(url);
            let path = path.strip_prefix("//").unwrap_or(path);
            if !Path::new(path).is_file() {
                return Err(fail(
                    &"not a postgres://, mysql:// or mariadb:// URL, nor an existing SQLite file",
                ));
            }
            let mut c = SqliteConnection::establish(path).map_err(|e| fail(&e))?;
            c.batch_execute("PRAGMA busy_timeout = 30000")
                .map_err(|e| fail(&e))?;
            (Backend::Sqlite, Conn::Lite(c))
        };
        Ok(Self {
            backend,
            conn,
            known: vec![CONTROL_TABLE.to_owned()],
            url: Zeroizing::new(url.to_owned()),
        })
    }

    /// A query's error. The driver's message can quote a value (`invalid input syntax for
    /// type double precision: "..."`): only its first line is kept, and every quoted part that
    /// is not one of the identifiers this harness put into the SQL is masked.
    fn fail(&self, what: &str, e: &diesel::result::Error) -> Error {
        let message = scrub(&e.to_string(), &self.url);
        let first = message.lines().next().unwrap_or_default();
        Error::Fixture {
            what: format!("database {}: {what}", redact_url(&self.url)),
            problem: mask_quoted(first, &self.known),
        }
    }

    fn quote(&self, name: &str) -> String {
        match self.backend {
            Backend::Mysql => format!("`{name}`"),
            _ => format!("\"{name}\""),
        }
    }

    fn qualified(&self, table: &str) -> String {
        table
            .split('.')
            .map(|p| self.quote(p))
            .collect::<Vec<_>>()
            .join(".")
    }

    fn row_id_expr(&self, col: &str) -> String {
        let c = self.quote(col);
        match self.backend {
            Backend::Mysql => format!("CAST({c} AS CHAR)"),
            _ => format!("CAST({c} AS TEXT)"),
        }
    }

    fn double_expr(&self, col: &str) -> String {
        let c = self.quote(col);
        match self.backend {
            Backend::Postgres => format!("CAST({c} AS DOUBLE PRECISION)"),
            Backend::Mysql => format!("({c} + 0e0)"),
            Backend::Sqlite => format!("CAST({c} AS REAL)"),
        }
    }

    /// The expression reading `col` as bytes, and one telling whether it is binary.
    fn value_expr(&mut self, table: &str, col: &str) -> Result<(String, String), Error> {
        let c = self.quote(col);
        Ok(match self.backend {
            Backend::Postgres => {
                let sql = format!(
                    "SELECT pg_typeof({c})::text AS t FROM {} LIMIT 1",
                    self.qualified(table)
                );
                let t: Vec<TypeRow> = self.load(&sql)?;
                if t.first().is_some_and(|t| t.t == "bytea") {
                    (c, "CAST(1 AS BIGINT)".into())
                } else {
                    (
                        format!("convert_to(CAST({c} AS TEXT), 'UTF8')"),
                        "CAST(0 AS BIGINT)".into(),
                    )
                }
            }
            Backend::Mysql => {
                let sql = format!(
                    "SELECT CAST(DATA_TYPE AS CHAR) AS t FROM information_schema.COLUMNS \
                     WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '{}' AND COLUMN_NAME = '{col}'",
                    table.rsplit('.').next().unwrap_or(table)
                );
                let t: Vec<TypeRow> = self.load(&sql)?;
                let binary = t.first().is_some_and(|t| {
                    t.t.to_ascii_lowercase().contains("blob")
                        || t.t.to_ascii_lowercase().contains("binary")
                });
                (
                    format!("CAST({c} AS BINARY)"),
                    if binary {
                        "CAST(1 AS SIGNED)"
                    } else {
                        "CAST(0 AS SIGNED)"
                    }
                    .into(),
                )
            }
            Backend::Sqlite => (
                format!("CAST({c} AS BLOB)"),
                format!("CAST(typeof({c}) = 'blob' AS INTEGER)"),
            ),
        })
    }

    fn load<T: Row>(&mut self, sql: &str) -> Result<Vec<T>, Error> {
        let q = diesel::sql_query(sql);
        let r = match &mut self.conn {
            #[cfg(feature = "postgres")]
            Conn::Pg(c) => q.load(c),
            #[cfg(feature = "mysql")]
            Conn::My(c) => q.load(c),
            Conn::Lite(c) => q.load(c),
        };
        r.map_err(|e| self.fail("query", &e))
    }

    fn batch(&mut self, sql: &str) -> Result<(), Error> {
        let r = match &mut self.conn {
            #[cfg(feature = "postgres")]
            Conn::Pg(c) => c.batch_execute(sql),
            #[cfg(feature = "mysql")]
            Conn::My(c) => c.batch_execute(sql),
            Conn::Lite(c) => c.batch_execute(sql),
        };
        r.map_err(|e| self.fail("statement", &e))
    }
}

#[cfg(test)]
mod tests {
    use super::mask_quoted;

    #[test]
    fn error_messages_keep_known_names_and_mask_any_other_quoted_text() {
        let known = vec!["customers".to_owned(), "lat".to_owned()];
        assert_eq!(
            mask_quoted(
                r#"invalid input syntax for type double precision: "51 Secret Road""#,
                &known
            ),
            r#"invalid input syntax for type double precision: "***""#
        );
        assert_eq!(
            mask_quoted(r#"relation "customers" does not exist"#, &known),
            r#"relation "customers" does not exist"#
        );
        assert_eq!(
            mask_quoted(
                "Unknown column 'x' in 'field list' and an open 'quote",
                &known
            ),
            "Unknown column '***' in '***' and an open '***"
        );
    }
}
