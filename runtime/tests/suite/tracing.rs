//! Tracing without leaks: leakless's spans at TRACE carry table, column and key version but no
//! value, and `RedactFields` (text format) and `RedactJsonWriter` (JSON format) hide the fields
//! an application names. Each check first proves that the capture would show the plaintext if
//! it were logged (positive control).

use std::io::Write;
use std::sync::{Arc, Mutex};

use leakless::tracing_redact::{RedactFields, RedactJsonWriter};
use leakless::{FieldContext, FieldPolicy, KeyScope, RowId};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

use crate::support::local_ring;

const ADDRESS: &str = "221B Baker Street, London NW1 6XE";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

/// A TRACE-level text subscriber writing into `capture`; `redact` names the fields to hide
/// (none for the positive controls).
fn subscriber(capture: &Capture, redact: Option<RedactFields>) -> impl tracing::Subscriber {
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(capture.clone())
        .with_ansi(false)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
        .fmt_fields(redact.unwrap_or_default())
        .with_filter(tracing_subscriber::filter::LevelFilter::TRACE);
    tracing_subscriber::registry().with(layer)
}

#[test]
fn seal_open_and_kek_fetch_spans_carry_where_but_never_what() {
    let capture = Capture::default();
    tracing::subscriber::with_default(subscriber(&capture, None), || {
        // Positive control: a value logged on purpose is visible in this capture.
        tracing::info!(address = ADDRESS, "control");
        let exercise = || {
            let ring = local_ring(&["patients"]);
            let scope = KeyScope::new("patients").unwrap();
            let ctx = FieldContext::new("patients", "address", RowId::Int(7), 1);
            let sealed = ring
                .seal(&scope, &ctx, ADDRESS.as_bytes(), &FieldPolicy::default())
                .unwrap();
            ring.cache().clear();
            let opened = ring.open(&ctx, &sealed).unwrap();
            assert_eq!(opened.expose_secret(), ADDRESS.as_bytes());
            let _ = ring.open(
                &FieldContext::new("patients", "address", RowId::Int(8), 1),
                &sealed,
            );
        };
        // tracing caches each callsite's interest process-wide, and a test thread without a
        // subscriber that registers one of leakless's span callsites first (while this is the
        // only subscriber) caches "nobody listens" for every thread. So: run the operations once
        // to register every callsite, recompute every callsite's interest with this subscriber
        // in place, then run them again; the second run is seen whatever the other tests did.
        exercise();
        tracing::callsite::rebuild_interest_cache();
        exercise();
    });
    let out = capture.text();
    let (control, rest) = out.split_once("control").unwrap();
    assert!(control.contains(ADDRESS) || rest.lines().next().unwrap_or("").contains(ADDRESS));
    let after_control: String = rest.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert!(after_control.contains("leakless.seal"), "{after_control}");
    assert!(after_control.contains("leakless.open"));
    assert!(after_control.contains("leakless.kek_fetch"));
    assert!(
        after_control.contains("table=\"patients\"") || after_control.contains("table=patients")
    );
    assert!(after_control.contains("kek_version=1"));
    for needle in ["Baker", "221B", "NW1"] {
        assert!(
            !after_control.contains(needle),
            "{needle} leaked:\n{after_control}"
        );
    }
}

#[test]
fn redact_fields_hides_named_fields_in_events_and_spans() {
    // Positive control: without redaction the capture shows the value.
    let plain = Capture::default();
    tracing::subscriber::with_default(subscriber(&plain, None), || {
        tracing::info!(address = ADDRESS, city = "London", "visit booked");
    });
    assert!(plain.text().contains(ADDRESS), "{}", plain.text());

    let capture = Capture::default();
    let redact = RedactFields::new(["address", "transcript"]);
    assert!(redact.redacts("patient.address") && !redact.redacts("city"));
    tracing::subscriber::with_default(subscriber(&capture, Some(redact)), || {
        let span = tracing::info_span!("request", transcript = "I have chest pain");
        let _e = span.enter();
        tracing::info!(address = ADDRESS, city = "London", "visit booked");
        tracing::warn!(patient.address = %ADDRESS, "dotted name");
    });
    let out = capture.text();
    assert!(out.contains("address=<redacted>"), "{out}");
    assert!(out.contains("transcript=<redacted>"), "{out}");
    assert!(out.contains("patient.address=<redacted>"), "{out}");
    assert!(out.contains("city=London"), "{out}");
    assert!(out.contains("visit booked"));
    assert!(
        !out.contains("Baker") && !out.contains("chest pain"),
        "{out}"
    );
}

/// A TRACE-level JSON subscriber writing into `capture`, through `RedactJsonWriter` when
/// `redact` names fields (none for the positive control).
fn json_subscriber(
    capture: &Capture,
    redact: Option<RedactFields>,
    flatten: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync> {
    let base = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(flatten)
        .with_current_span(true)
        .with_span_list(true);
    match redact {
        None => Box::new(
            tracing_subscriber::registry().with(
                base.with_writer(capture.clone())
                    .with_filter(tracing_subscriber::filter::LevelFilter::TRACE),
            ),
        ),
        Some(r) => Box::new(
            tracing_subscriber::registry().with(
                base.with_writer(RedactJsonWriter::new(capture.clone(), r))
                    .with_filter(tracing_subscriber::filter::LevelFilter::TRACE),
            ),
        ),
    }
}

fn log_patient_events() {
    let span = tracing::info_span!(
        "request",
        transcript = "I have chest pain",
        clinic = "north"
    );
    let _e = span.enter();
    tracing::info!(address = ADDRESS, city = "London", "visit booked");
    tracing::warn!(patient.address = %ADDRESS, "dotted name");
}

#[test]
fn redact_json_writer_hides_named_fields_in_json_events_and_spans() {
    // Positive control: the JSON format without the wrapper shows the values.
    let plain = Capture::default();
    tracing::subscriber::with_default(json_subscriber(&plain, None, false), log_patient_events);
    let out = plain.text();
    assert!(out.contains(ADDRESS) && out.contains("chest pain"), "{out}");

    for flatten in [false, true] {
        let capture = Capture::default();
        let redact = RedactFields::new(["address", "transcript"]);
        tracing::subscriber::with_default(
            json_subscriber(&capture, Some(redact), flatten),
            log_patient_events,
        );
        let out = capture.text();
        assert!(
            !out.contains("Baker") && !out.contains("chest pain"),
            "flatten={flatten}: {out}"
        );
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{out}");
        let fields = |v: &serde_json::Value| {
            if flatten {
                v.clone()
            } else {
                v["fields"].clone()
            }
        };
        assert_eq!(fields(&lines[0])["address"], "<redacted>", "{out}");
        assert_eq!(fields(&lines[0])["city"], "London", "{out}");
        assert_eq!(fields(&lines[0])["message"], "visit booked", "{out}");
        assert_eq!(fields(&lines[1])["patient.address"], "<redacted>", "{out}");
        assert_eq!(lines[0]["span"]["transcript"], "<redacted>", "{out}");
        assert_eq!(lines[0]["span"]["clinic"], "north", "{out}");
        assert_eq!(lines[0]["spans"][0]["transcript"], "<redacted>", "{out}");
        assert_eq!(lines[0]["level"], "INFO");
    }
}

#[test]
fn redact_json_writer_handles_split_writes_and_fails_closed_on_non_json() {
    let capture = Capture::default();
    let make = RedactJsonWriter::new(capture.clone(), RedactFields::new(["address"]));
    {
        let mut w = make.make_writer();
        // One line in pieces, then two lines in one write, then a last line without newline.
        w.write_all(br#"{"fields":{"address":"221B Ba"#).unwrap();
        w.write_all(br#"ker Street","n":1}}"#).unwrap();
        w.write_all(b"\n{\"address\":\"x\"}\n{\"a\":[{\"address\":\"Baker\"}]}\n")
            .unwrap();
        w.write_all(br#"{"address":"tail Baker"}"#).unwrap();
    }
    let out = capture.text();
    assert!(!out.contains("Baker"), "{out}");
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(
        out.contains(r#"{"fields":{"address":"<redacted>","n":1}}"#),
        "{out}"
    );
    assert!(out.contains(r#"{"a":[{"address":"<redacted>"}]}"#), "{out}");

    // A line that is not JSON is dropped, never passed through.
    let redact = RedactFields::new(["address"]);
    let line = redact.redact_json_line(b"address=221B Baker Street");
    let text = String::from_utf8(line).unwrap();
    assert!(!text.contains("Baker"), "{text}");
    assert!(
        text.contains("leakless_redaction") && text.contains("25 bytes"),
        "{text}"
    );
}
