//! Progress of a batch job: an indicatif bar with rate and ETA on a terminal, a plain line
//! every few seconds otherwise (on stderr, so `--json` stdout stays clean).

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::Counters;
use crate::env::note;

/// A progress reporter.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    last_line: Instant,
    started: Instant,
}

impl Progress {
    /// A reporter for `label` over `rows` rows (an estimate).
    #[must_use]
    pub fn new(label: &str, rows: u64, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::with_draw_target(Some(rows), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} rows {per_sec} ETA {eta}",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_message(label.to_owned());
            b
        });
        Self {
            bar,
            label: label.to_owned(),
            last_line: Instant::now(),
            started: Instant::now(),
        }
    }

    /// Shows the counters.
    pub fn tick(&mut self, c: &Counters, chunks_total: u64, chunks_before: u64) {
        let seen = c.seen.load(Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.set_position(seen);
            return;
        }
        if self.last_line.elapsed() >= Duration::from_secs(5) {
            self.last_line = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(0.001);
            #[allow(clippy::cast_precision_loss, reason = "a rate")]
            let rate = seen as f64 / secs;
            note(format!(
                "{}: {} rows read, {} written, chunks {}/{}, {:.0} rows/s",
                self.label,
                seen,
                c.changed.load(Ordering::Relaxed),
                chunks_before + c.chunks.load(Ordering::Relaxed),
                chunks_total,
                rate
            ));
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
