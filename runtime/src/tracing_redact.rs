//! Redacting named fields in `tracing` output.
//!
//! leakless's own spans and events never carry values (see the crate docs). Your application's
//! may: a `tracing::info!(address = %patient.address, ...)` written in a hurry is a log leak.
//! [`RedactFields`] is a field formatter for `tracing-subscriber`'s `fmt` layer that prints
//! every field whose name you list as `name=<redacted>`, in events and in span fields alike:
//!
//! ```
//! use leakless::tracing_redact::RedactFields;
//! use tracing_subscriber::layer::SubscriberExt;
//!
//! let subscriber = tracing_subscriber::registry().with(
//!     tracing_subscriber::fmt::layer()
//!         .fmt_fields(RedactFields::new(["address", "transcript", "gps"])),
//! );
//! tracing::subscriber::with_default(subscriber, || {
//!     tracing::info!(address = "221B Baker Street", city = "London", "visit booked");
//!     // prints: ... visit booked address=<redacted> city=London
//! });
//! ```
//!
//! Names match exactly (case-sensitive) against the field name, and also against its last
//! dotted segment (`patient.address` matches `address`).
//!
//! # JSON output
//!
//! `fmt`'s JSON format (`.json()`, tracing-subscriber's `json` feature) formats event fields
//! itself and ignores `fmt_fields`. For it, wrap the layer's writer in [`RedactJsonWriter`]: it
//! reads each JSON line the formatter writes, replaces the value of every key you name, at any
//! depth (event `fields`, the current `span`, every entry of `spans`, or top-level keys with
//! `flatten_event`), with `"<redacted>"`, and only then writes the line to the real writer:
//!
//! ```
//! use leakless::tracing_redact::{RedactFields, RedactJsonWriter};
//! use tracing_subscriber::layer::SubscriberExt;
//!
//! let redact = RedactFields::new(["address", "transcript"]);
//! let subscriber = tracing_subscriber::registry().with(
//!     tracing_subscriber::fmt::layer()
//!         .json()
//!         .with_writer(RedactJsonWriter::new(std::io::stdout, redact)),
//! );
//! tracing::subscriber::with_default(subscriber, || {
//!     tracing::info!(address = "221B Baker Street", city = "London", "visit booked");
//!     // prints: {"fields":{"address":"<redacted>","city":"London","message":"visit booked"},...}
//! });
//! ```
//!
//! Keys come out in sorted order. It fails closed: a line that is not valid JSON is not
//! written; a `{"leakless_redaction":"..."}` line saying how many bytes were dropped takes its
//! place.
//!
//! Neither form can redact a value that the code formats into the message itself
//! (`info!("moved to {}", address)`): name values as fields, never interpolate them.

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, Write};
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FormatFields, MakeWriter};

/// A `FormatFields` that prints the listed fields as `<redacted>` (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct RedactFields {
    names: BTreeSet<String>,
}

impl RedactFields {
    /// Redacts fields with these names.
    #[must_use]
    pub fn new<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            names: names.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether a field named `name` is redacted.
    #[must_use]
    pub fn redacts(&self, name: &str) -> bool {
        self.names.contains(name)
            || name
                .rsplit_once('.')
                .is_some_and(|(_, last)| self.names.contains(last))
    }

    /// Redacts one JSON line (without its newline) and returns it with a newline; a line that
    /// is not JSON becomes a `leakless_redaction` notice.
    #[must_use]
    pub fn redact_json_line(&self, line: &[u8]) -> Vec<u8> {
        let mut out = match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(mut value) => {
                redact_value(self, &mut value);
                serde_json::to_vec(&value).unwrap_or_else(|_| dropped(line.len()))
            }
            Err(_) => dropped(line.len()),
        };
        out.push(b'\n');
        out
    }
}

struct Visitor<'a, 'w> {
    redact: &'a RedactFields,
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visitor<'_, '_> {
    fn write(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        let name = field.name();
        self.result = if self.redact.redacts(name) {
            write!(self.writer, "{sep}{name}=<redacted>")
        } else if name == "message" {
            write!(self.writer, "{sep}{value:?}")
        } else {
            write!(self.writer, "{sep}{name}={value:?}")
        };
    }
}

impl Visit for Visitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        // Like tracing-subscriber's default: strings without quotes.
        self.write(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, value);
    }
}

impl<'writer> FormatFields<'writer> for RedactFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = Visitor {
            redact: self,
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

/// The value that replaces a redacted one in JSON output.
pub const REDACTED: &str = "<redacted>";

/// A `MakeWriter` for JSON-lines log output that redacts the named keys of every line before
/// it reaches the inner writer (see the [module docs](self)).
#[derive(Clone)]
pub struct RedactJsonWriter<M> {
    inner: M,
    redact: Arc<RedactFields>,
}

impl<M> fmt::Debug for RedactJsonWriter<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedactJsonWriter")
            .field("redact", &self.redact)
            .finish_non_exhaustive()
    }
}

impl<M> RedactJsonWriter<M> {
    /// Wraps `inner` (any `MakeWriter`: `std::io::stdout`, a file appender, ...).
    #[must_use]
    pub fn new(inner: M, redact: RedactFields) -> Self {
        Self {
            inner,
            redact: Arc::new(redact),
        }
    }
}

fn dropped(len: usize) -> Vec<u8> {
    format!("{{\"leakless_redaction\":\"a log line of {len} bytes that is not JSON was dropped\"}}")
        .into_bytes()
}

fn redact_value(redact: &RedactFields, value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if redact.redacts(key) {
                    *v = serde_json::Value::String(REDACTED.to_owned());
                } else {
                    redact_value(redact, v);
                }
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                redact_value(redact, v);
            }
        }
        _ => {}
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for RedactJsonWriter<M> {
    type Writer = RedactingLines<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingLines::new(self.inner.make_writer(), Arc::clone(&self.redact))
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        RedactingLines::new(self.inner.make_writer_for(meta), Arc::clone(&self.redact))
    }
}

/// The writer of one [`RedactJsonWriter`] use: buffers bytes up to each newline, redacts the
/// line and writes it to the inner writer. A last line without a newline is redacted and
/// written on drop.
pub struct RedactingLines<W: Write> {
    inner: W,
    redact: Arc<RedactFields>,
    pending: zeroize::Zeroizing<Vec<u8>>,
}

impl<W: Write> fmt::Debug for RedactingLines<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedactingLines")
            .field("pending_bytes", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl<W: Write> RedactingLines<W> {
    fn new(inner: W, redact: Arc<RedactFields>) -> Self {
        Self {
            inner,
            redact,
            pending: zeroize::Zeroizing::new(Vec::new()),
        }
    }

    fn emit(&mut self, line: &[u8]) -> io::Result<()> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let out = zeroize::Zeroizing::new(self.redact.redact_json_line(line));
        self.inner.write_all(&out)
    }
}

impl<W: Write> Write for RedactingLines<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line = zeroize::Zeroizing::new(self.pending.drain(..=end).collect::<Vec<u8>>());
            let body = line.get(..end).unwrap_or_default();
            self.emit(body)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> Drop for RedactingLines<W> {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let rest = zeroize::Zeroizing::new(std::mem::take(&mut *self.pending));
            // A logger has nowhere to report its own write error.
            let _ = self.emit(&rest);
            let _ = self.inner.flush();
        }
    }
}
