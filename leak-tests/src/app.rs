//! Capturing application output as artifacts: `tracing` at TRACE (text and JSON), panic
//! messages, and a child process's stdout and stderr.

use std::io::{self, Write};
use std::panic::{self, AssertUnwindSafe};
use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError};

use tracing_subscriber::fmt::MakeWriter;

/// A shared in-memory writer for a `tracing_subscriber` fmt layer.
#[derive(Clone, Debug, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// An empty capture.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// What was written so far.
    #[must_use]
    pub fn bytes(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Runs `f` with a TRACE-level `tracing` subscriber on this thread, writing text (or JSON when
/// `json`) into the returned bytes.
pub fn capture_tracing<R>(json: bool, f: impl FnOnce() -> R) -> (R, Vec<u8>) {
    let cap = Capture::new();
    let builder = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(cap.clone());
    let r = if json {
        tracing::subscriber::with_default(builder.json().finish(), f)
    } else {
        tracing::subscriber::with_default(builder.finish(), f)
    };
    (r, cap.bytes())
}

/// Runs `f`, catching a panic; returns the panic message (empty when it did not panic). The
/// default panic hook still prints to stderr; this captures what the payload carries.
pub fn capture_panic(f: impl FnOnce()) -> String {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(()) => String::new(),
        Err(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "<non-string panic payload>".to_owned()),
    }
}

/// Runs a command to completion and returns its (stdout, stderr).
///
/// # Errors
/// The spawn error.
pub fn capture_command(cmd: &mut Command) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let out = cmd.output()?;
    Ok((out.stdout, out.stderr))
}
