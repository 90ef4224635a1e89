//! Tracing without leaks: leakless's spans at TRACE carry table, column and key version but no
//! value, and `RedactFields` hides the fields an application names. Each check first proves
//! that the capture would show the plaintext if it were logged (positive control).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers")]

use std::io::Write;
use std::sync::{Arc, Mutex};

use leakless::kms::LocalKms;
use leakless::secret::RootKey;
use leakless::store::MemoryKeyStore;
use leakless::tracing_redact::RedactFields;
use leakless::{AuditInfo, FieldContext, FieldPolicy, KeyRing, KeyScope, RowId};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

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
        let ring = KeyRing::builder(
            Arc::new(LocalKms::from_root_key(RootKey::generate())),
            Arc::new(MemoryKeyStore::new()),
        )
        .build();
        let scope = KeyScope::new("patients").unwrap();
        ring.create_scope(&scope, &AuditInfo::new("test", "setup"))
            .unwrap();
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
