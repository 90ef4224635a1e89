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
//! dotted segment (`patient.address` matches `address`). It redacts the text (`fmt`) format;
//! `fmt`'s JSON format formats event fields itself, so use the text format, or leave sensitive
//! values out of events.

use std::collections::BTreeSet;
use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

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
