//! The verdict: per channel, the leaks found, the positive controls expected and missed, and
//! harness errors; a human summary ([`Report::human`]), JSON ([`Report::to_json`]) and an exit
//! code ([`Report::exit_code`]: 0 clean, 1 leak, 2 detector broken or harness error).
//!
//! In a test, [`Report::assert_clean`] is the one leak assertion: it first checks that every
//! channel found the positive controls planted into it (the detector works there), then that
//! no canary leaked, and fails with the human report, which names canaries by id, marker,
//! encoding and offset, never by value. [`Report::assert_controls_found`] is its first half
//! for one channel, for tests that expect a leak or an error after the controls.

use std::fmt::Write as _;

use serde::Serialize;

use crate::scan::Finding;

/// The outcome of one channel, or of the whole run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Every positive control was found and no canary leaked.
    Clean,
    /// A positive control was not found (or no control was planted): a clean result cannot be
    /// trusted, but nothing is known to have leaked.
    DetectorBroken,
    /// The harness could not collect or read an artifact.
    HarnessError,
    /// A canary (not a control) was found.
    Leak,
}

impl Status {
    /// The process exit code: 0 clean, 1 leak, 2 detector broken or harness error.
    #[must_use]
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Clean => 0,
            Status::Leak => 1,
            Status::DetectorBroken | Status::HarnessError => 2,
        }
    }

    /// A short name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Status::Clean => "clean",
            Status::DetectorBroken => "DETECTOR BROKEN",
            Status::HarnessError => "HARNESS ERROR",
            Status::Leak => "LEAK",
        }
    }
}

/// One channel's results.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChannelReport {
    /// The channel name.
    pub channel: String,
    /// Artifacts (files, archive members, decoded views, streams) scanned.
    pub artifacts: u64,
    /// Bytes scanned, over all views.
    pub bytes: u64,
    /// Control canary ids that must be found in this channel.
    pub controls_expected: Vec<String>,
    /// Control canary ids that were expected and not found.
    pub controls_missed: Vec<String>,
    /// Findings of control canaries (the proof the detector works here).
    pub control_findings: Vec<Finding>,
    /// Findings of real canaries: leaks.
    pub leaks: Vec<Finding>,
    /// Leak findings counted but not listed in `leaks` (a check with a cap on listed
    /// findings, `LeakCheck::cap_leak_findings`).
    pub leaks_not_listed: u64,
    /// Harness errors (an artifact that could not be collected or read).
    pub errors: Vec<String>,
    /// Symbolic links followed while walking a folder, as `link -> target` (information, not a
    /// finding).
    pub links_followed: Vec<String>,
    /// Whether the caller waived positive controls for this channel (the CLI's
    /// `--no-controls`, relying on its built-in self-test instead).
    pub controls_waived: bool,
}

impl ChannelReport {
    /// The channel's status. A channel with no expected control is `DetectorBroken`: its clean
    /// result would prove nothing; one where nothing was scanned (0 bytes) is a
    /// `HarnessError`.
    #[must_use]
    pub fn status(&self) -> Status {
        if !self.leaks.is_empty() || self.leaks_not_listed > 0 {
            Status::Leak
        } else if !self.errors.is_empty() || self.bytes == 0 {
            Status::HarnessError
        } else if (self.controls_expected.is_empty() && !self.controls_waived)
            || !self.controls_missed.is_empty()
        {
            Status::DetectorBroken
        } else {
            Status::Clean
        }
    }
}

/// The whole run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Canaries searched for (real ones, controls excluded).
    pub canaries: usize,
    /// Control canaries.
    pub controls: usize,
    /// Needles (fragments times encodings).
    pub needles: usize,
    /// The channels, in the order they were scanned.
    pub channels: Vec<ChannelReport>,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    status: Status,
    exit_code: u8,
    #[serde(flatten)]
    report: &'a Report,
    channel_status: Vec<(&'a str, Status)>,
}

impl Report {
    /// The worst status of any channel (`Leak` over harness errors over `DetectorBroken`);
    /// `HarnessError` when no channel was scanned at all, or when there was no canary to
    /// search for (only controls): such a run proves nothing.
    #[must_use]
    pub fn status(&self) -> Status {
        let worst = self
            .channels
            .iter()
            .map(ChannelReport::status)
            .max()
            .unwrap_or(Status::HarnessError);
        if self.canaries == 0 {
            worst.max(Status::HarnessError)
        } else {
            worst
        }
    }

    /// The exit code of [`Self::status`].
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        self.status().exit_code()
    }

    /// Every leak finding of every channel.
    pub fn leaks(&self) -> impl Iterator<Item = &Finding> {
        self.channels.iter().flat_map(|c| c.leaks.iter())
    }

    /// The channel named `name`.
    #[must_use]
    pub fn channel(&self, name: &str) -> Option<&ChannelReport> {
        self.channels.iter().find(|c| c.channel == name)
    }

    /// The channels where the detector is not proven: a planted control was missed, or none
    /// was planted (a waived channel counts as not proven: a test plants its controls).
    fn unproven(&self) -> Vec<&str> {
        self.channels
            .iter()
            .filter(|c| c.controls_expected.is_empty() || !c.controls_missed.is_empty())
            .map(|c| c.channel.as_str())
            .collect()
    }

    /// Asserts, in channel `name`, that every positive control planted into it was found (at
    /// least one was planted): the proof the detector works on that channel. Returns the
    /// channel's report for further checks (leaks, harness errors).
    ///
    /// # Panics
    /// When the channel was not scanned, or a control was missed or none was planted; the
    /// message holds [`Self::human`].
    #[track_caller]
    #[allow(clippy::panic, reason = "a test assertion")]
    pub fn assert_controls_found(&self, name: &str) -> &ChannelReport {
        let Some(c) = self.channel(name) else {
            panic!("channel {name} was not scanned:\n{}", self.human());
        };
        if c.controls_expected.is_empty()
            || !c.controls_missed.is_empty()
            || c.control_findings.is_empty()
        {
            panic!(
                "{name}: positive control not found, the detector is broken there:\n{}",
                self.human()
            );
        }
        c
    }

    /// Asserts that the run is clean: first that every channel found every positive control
    /// planted into it (the detector finds a planted plaintext there), then that no canary was
    /// found anywhere and every artifact was read.
    ///
    /// # Panics
    /// With a message saying which of the two failed, then [`Self::human`] (canary ids,
    /// markers, encodings, artifacts and offsets; never a value).
    #[track_caller]
    #[allow(clippy::panic, reason = "a test assertion")]
    pub fn assert_clean(&self) {
        let unproven = self.unproven();
        if self.channels.is_empty() || !unproven.is_empty() {
            panic!(
                "positive control not found in {unproven:?}: the detector is not proven there, \
                 so a clean result would prove nothing\n{}",
                self.human()
            );
        }
        let status = self.status();
        if status != Status::Clean {
            panic!(
                "leak check is not clean ({}):\n{}",
                status.name(),
                self.human()
            );
        }
    }

    /// Asserts that control `id` was found in `channel` through a view whose artifact name
    /// contains `view` (e.g. `[heap-pglz`): the detector sees through that decoding.
    ///
    /// # Panics
    /// When it was not; the message lists the control findings of the channel (ids and
    /// artifacts).
    #[track_caller]
    #[allow(clippy::panic, reason = "a test assertion")]
    pub fn assert_control_seen_through(&self, channel: &str, id: &str, view: &str) {
        let Some(c) = self.channel(channel) else {
            panic!("channel {channel} was not scanned:\n{}", self.human());
        };
        if !c
            .control_findings
            .iter()
            .any(|f| f.canary_id == id && f.artifact.contains(view))
        {
            panic!(
                "{channel}: control {id} not found through {view}: {:?}",
                c.control_findings
                    .iter()
                    .map(|f| (&f.canary_id, &f.artifact))
                    .collect::<Vec<_>>()
            );
        }
    }

    /// The report as JSON: status, exit code, counts, and per channel the findings (canary id,
    /// marker, encoding, artifact, offset; never a value).
    ///
    /// # Errors
    /// A serialisation error (not expected).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(&JsonReport {
            status: self.status(),
            exit_code: self.exit_code(),
            report: self,
            channel_status: self
                .channels
                .iter()
                .map(|c| (c.channel.as_str(), c.status()))
                .collect(),
        })
    }

    /// A human summary: one line per channel, then every leak and every missed control.
    #[must_use]
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "leak check: {} canaries, {} positive controls, {} needles",
            self.canaries, self.controls, self.needles
        );
        for c in &self.channels {
            let _ = writeln!(
                s,
                "  {:<16} {:<28} {:>4} artifacts {:>12} bytes  controls {}/{}  leaks {}",
                c.status().name(),
                c.channel,
                c.artifacts,
                c.bytes,
                c.controls_expected.len() - c.controls_missed.len(),
                c.controls_expected.len(),
                c.leaks.len()
            );
        }
        for c in &self.channels {
            for f in &c.leaks {
                let layers = match f.layers {
                    0 => String::new(),
                    1 => " after 1 unescaping layer".to_owned(),
                    n => format!(" after {n} unescaping layers"),
                };
                let _ = writeln!(
                    s,
                    "  LEAK {} in {} at offset {}: canary {} (marker {}) as {}{layers} ({})",
                    f.channel, f.artifact, f.offset, f.canary_id, f.marker, f.encoding, f.form
                );
            }
            if c.leaks_not_listed > 0 {
                let _ = writeln!(
                    s,
                    "  LEAK {}: {} more findings not listed",
                    c.channel, c.leaks_not_listed
                );
            }
            for m in &c.controls_missed {
                let _ = writeln!(
                    s,
                    "  DETECTOR BROKEN {}: positive control {m} was planted but not found",
                    c.channel
                );
            }
            if c.controls_expected.is_empty() && !c.controls_waived {
                let _ = writeln!(
                    s,
                    "  DETECTOR BROKEN {}: no positive control was planted, a clean result proves nothing",
                    c.channel
                );
            }
            for e in &c.errors {
                let _ = writeln!(s, "  HARNESS ERROR {}: {e}", c.channel);
            }
            if c.bytes == 0 && c.errors.is_empty() && c.leaks.is_empty() {
                let _ = writeln!(
                    s,
                    "  HARNESS ERROR {}: nothing was scanned (0 bytes), a clean result proves nothing",
                    c.channel
                );
            }
            for l in &c.links_followed {
                let _ = writeln!(s, "  info {}: followed symbolic link {l}", c.channel);
            }
        }
        if self.channels.is_empty() {
            let _ = writeln!(s, "  HARNESS ERROR: no channel was scanned");
        }
        if self.canaries == 0 {
            let _ = writeln!(
                s,
                "  HARNESS ERROR: no canary to search for (only controls), a clean result proves nothing"
            );
        }
        let _ = writeln!(
            s,
            "result: {} (exit {})",
            self.status().name(),
            self.exit_code()
        );
        s
    }
}
