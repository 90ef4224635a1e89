//! Bounded retries for network KMS backends: exponential backoff with full jitter, an overall
//! deadline, and retries only on failures that can pass (connection refused or reset, timeouts,
//! HTTP 429 and 5xx, `ThrottlingException`).
//!
//! A backend wraps each remote call in [`RetryPolicy::run`] and tells it, per failed attempt,
//! whether the failure is [transient](FailureKind::Transient),
//! [throttling](FailureKind::Throttled) or [permanent](FailureKind::Permanent). A permanent
//! failure (wrong binding, unknown key, denied) returns [`Error::Kms`] at once; transient ones
//! are retried until [`RetryPolicy::max_attempts`] or [`RetryPolicy::deadline`] runs out, then
//! [`Error::KmsUnavailable`] names the backend, the operation and the attempts made.
//!
//! The KEK cache keeps these calls rare (one per KEK version per cache lifetime), so a retry
//! budget of seconds delays only the first seal or open after a cache miss.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use tracing::warn;

use crate::error::Error;

/// How a failed attempt is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// May pass if tried again: connection refused or reset, a timeout, HTTP 5xx.
    Transient,
    /// The backend asks us to slow down: HTTP 429, `ThrottlingException`. Retried like a
    /// transient failure, and reported as throttling when the budget runs out.
    Throttled,
    /// Will fail again: a wrong binding, an unknown key, a denied request, bad credentials.
    /// Never retried.
    Permanent,
}

/// One failed attempt, as a backend reports it to [`RetryPolicy::run`]. Not an error a caller
/// of leakless ever sees: the policy retries it or turns it into [`Error::Kms`] (a permanent
/// failure) or [`Error::KmsUnavailable`] (the retries ran out).
///
/// `detail` must never hold key bytes, tokens, credentials or plaintext: it ends up in an
/// error message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Whether to retry.
    pub kind: FailureKind,
    /// What went wrong, for the error message.
    pub detail: String,
}

impl Failure {
    /// A failure worth retrying.
    #[must_use]
    pub fn transient(detail: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Transient,
            detail: detail.into(),
        }
    }

    /// The backend throttled the call.
    #[must_use]
    pub fn throttled(detail: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Throttled,
            detail: detail.into(),
        }
    }

    /// A failure that retrying cannot fix.
    #[must_use]
    pub fn permanent(detail: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Permanent,
            detail: detail.into(),
        }
    }
}

/// How an HTTP status is treated: 429 is throttling; 408, 502, 503, 504 and other 5xx (except
/// 501 Not Implemented) are transient; everything else is permanent.
#[must_use]
pub fn classify_http_status(status: u16) -> FailureKind {
    match status {
        429 => FailureKind::Throttled,
        408 | 500 | 502..=599 => FailureKind::Transient,
        _ => FailureKind::Permanent,
    }
}

/// The most bytes of a failure's detail that quote what a server said.
#[cfg(any(feature = "aws-kms", feature = "vault"))]
pub(crate) const MAX_DETAIL: usize = 300;

/// `text` as one line of at most [`MAX_DETAIL`] bytes (cut at a character boundary and ended
/// with `...` when longer), for a failure's detail.
#[cfg(any(feature = "aws-kms", feature = "vault"))]
pub(crate) fn short_line(text: &str) -> String {
    let mut line = text.replace(['\n', '\r'], " ");
    if line.len() > MAX_DETAIL {
        let mut cut = MAX_DETAIL;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str("...");
    }
    line
}

/// What one attempt may use: its number (1 for the first) and how long it may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// 1 for the first attempt, 2 for the first retry, ...
    pub number: u32,
    /// The time this attempt may take: [`RetryPolicy::attempt_timeout`], shortened so that the
    /// overall [`RetryPolicy::deadline`] holds. Backends set it as their request timeout.
    pub timeout: Duration,
}

/// The retry budget of a network KMS backend.
///
/// The defaults (5 attempts, 100 ms first backoff doubling to at most 2 s, 5 s per attempt,
/// 15 s overall) ride out a restart or a short network blip, and give up before a typical HTTP
/// request timeout of the application above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first call included. At least 1.
    pub max_attempts: u32,
    /// The backoff cap before the first retry; it doubles per retry up to `max_backoff`. The
    /// actual sleep is uniform in `[0, cap]` ("full jitter"), so many clients that failed
    /// together do not retry together.
    pub initial_backoff: Duration,
    /// The largest backoff cap.
    pub max_backoff: Duration,
    /// How long one attempt may take (connect, send, receive).
    pub attempt_timeout: Duration,
    /// How long all attempts and sleeps together may take. No attempt starts, and no sleep is
    /// taken, that would end after it.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(15),
        }
    }
}

/// Counters of a backend's remote calls, for tests and metrics.
#[derive(Debug, Default)]
pub struct RetryStats {
    attempts: AtomicU64,
    retries: AtomicU64,
    exhausted: AtomicU64,
}

/// A copy of [`RetryStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryCounts {
    /// Remote calls made (first attempts and retries).
    pub attempts: u64,
    /// Of those, retries after a transient or throttling failure.
    pub retries: u64,
    /// Operations that gave up with [`Error::KmsUnavailable`].
    pub exhausted: u64,
}

impl RetryStats {
    /// The counters now.
    #[must_use]
    pub fn snapshot(&self) -> RetryCounts {
        RetryCounts {
            attempts: self.attempts.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            exhausted: self.exhausted.load(Ordering::Relaxed),
        }
    }
}

impl RetryPolicy {
    /// Checks the policy's bounds.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `max_attempts` is 0, a duration is zero, or
    /// `initial_backoff` exceeds `max_backoff`.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |problem: &str| {
            Err(Error::InvalidInput {
                what: "KMS retry policy",
                problem: problem.into(),
            })
        };
        if self.max_attempts == 0 {
            return bad("max_attempts must be at least 1");
        }
        if self.attempt_timeout.is_zero() || self.deadline.is_zero() {
            return bad("attempt_timeout and deadline must be more than zero");
        }
        if self.initial_backoff > self.max_backoff {
            return bad("initial_backoff must not exceed max_backoff");
        }
        Ok(())
    }

    /// The backoff cap before retry number `retry` (1 for the first retry):
    /// `min(max_backoff, initial_backoff * 2^(retry-1))`.
    #[must_use]
    pub fn backoff_cap(&self, retry: u32) -> Duration {
        let factor = 1u32 << retry.saturating_sub(1).min(20);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// A full-jitter backoff before retry number `retry`: uniform in `[0, backoff_cap(retry)]`.
    #[must_use]
    pub fn backoff(&self, retry: u32) -> Duration {
        let cap = self.backoff_cap(retry);
        let cap_us = u64::try_from(cap.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rand::thread_rng().gen_range(0..=cap_us))
    }

    /// Runs `call` until it succeeds, fails permanently, or the budget is spent.
    ///
    /// `backend` and `operation` name the call in errors and logs. `stats` counts attempts and
    /// retries. Each retry logs a `warn` event with the backend, operation, attempt and the
    /// failure's detail (which the backend keeps free of secrets).
    ///
    /// # Errors
    /// [`Error::Kms`] for a permanent failure (no retry); [`Error::KmsUnavailable`] when
    /// transient or throttling failures outlast `max_attempts` or `deadline`.
    pub fn run<T>(
        &self,
        backend: &'static str,
        operation: &'static str,
        stats: &RetryStats,
        call: impl FnMut(Attempt) -> Result<T, Failure>,
    ) -> Result<T, Error> {
        self.run_with_sleep(backend, operation, stats, call, std::thread::sleep)
    }

    fn run_with_sleep<T>(
        &self,
        backend: &'static str,
        operation: &'static str,
        stats: &RetryStats,
        mut call: impl FnMut(Attempt) -> Result<T, Failure>,
        mut sleep: impl FnMut(Duration),
    ) -> Result<T, Error> {
        let start = Instant::now();
        let max_attempts = self.max_attempts.max(1);
        let mut number = 1u32;
        loop {
            let remaining = self.deadline.saturating_sub(start.elapsed());
            let attempt = Attempt {
                number,
                timeout: self
                    .attempt_timeout
                    .min(remaining)
                    .max(Duration::from_millis(1)),
            };
            stats.attempts.fetch_add(1, Ordering::Relaxed);
            let failure = match call(attempt) {
                Ok(value) => return Ok(value),
                Err(failure) => failure,
            };
            if failure.kind == FailureKind::Permanent {
                return Err(Error::Kms {
                    backend,
                    operation,
                    detail: failure.detail,
                });
            }
            let give_up = |attempts: u32, failure: Failure| {
                stats.exhausted.fetch_add(1, Ordering::Relaxed);
                Error::KmsUnavailable {
                    backend,
                    operation,
                    attempts,
                    elapsed_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                    throttled: failure.kind == FailureKind::Throttled,
                    detail: failure.detail,
                }
            };
            if number >= max_attempts {
                return Err(give_up(number, failure));
            }
            let pause = self.backoff(number);
            // Do not sleep into the deadline, nor start an attempt with no time left.
            if start.elapsed().saturating_add(pause) >= self.deadline {
                return Err(give_up(number, failure));
            }
            warn!(
                backend,
                operation,
                attempt = number,
                kind = ?failure.kind,
                detail = %failure.detail,
                backoff_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                "KMS call failed; retrying"
            );
            sleep(pause);
            // A sleep can overshoot on a loaded host: never start an attempt past the deadline.
            if start.elapsed() >= self.deadline {
                return Err(give_up(number, failure));
            }
            stats.retries.fetch_add(1, Ordering::Relaxed);
            number = number.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        reason = "tests"
    )]

    use super::*;

    fn quick() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            attempt_timeout: Duration::from_millis(200),
            deadline: Duration::from_secs(5),
        }
    }

    #[test]
    fn succeeds_after_transient_failures_and_counts_them() {
        let stats = RetryStats::default();
        let mut sleeps = Vec::new();
        let mut calls = 0;
        let out = quick().run_with_sleep(
            "test",
            "unwrap KEK",
            &stats,
            |a| {
                calls += 1;
                assert_eq!(a.number, calls);
                if calls < 3 {
                    Err(Failure::transient("connection refused"))
                } else {
                    Ok(7)
                }
            },
            |d| sleeps.push(d),
        );
        assert_eq!(out.unwrap(), 7);
        assert_eq!(sleeps.len(), 2);
        assert!(sleeps[0] <= Duration::from_millis(10));
        assert!(sleeps[1] <= Duration::from_millis(20));
        assert_eq!(
            stats.snapshot(),
            RetryCounts {
                attempts: 3,
                retries: 2,
                exhausted: 0
            }
        );
    }

    /// Runs `operation` of `backend` under [`quick`] on a call that always fails with
    /// `failure`, sleeping with `sleep`; returns how often it was called, the error and the
    /// counts.
    fn always_failing(
        (backend, operation): (&'static str, &'static str),
        failure: &Failure,
        sleep: impl FnMut(Duration),
    ) -> (u32, Error, RetryCounts) {
        let stats = RetryStats::default();
        let mut calls = 0;
        let err = quick()
            .run_with_sleep(
                backend,
                operation,
                &stats,
                |_| -> Result<(), _> {
                    calls += 1;
                    Err(failure.clone())
                },
                sleep,
            )
            .unwrap_err();
        (calls, err, stats.snapshot())
    }

    #[test]
    fn permanent_failure_is_not_retried() {
        let failure = Failure::permanent("HTTP 400: bad context");
        let (calls, err, _) = always_failing(("vault", "unwrap KEK"), &failure, |_| {
            panic!("must not sleep")
        });
        assert_eq!(calls, 1);
        match err {
            Error::Kms {
                backend,
                operation,
                detail,
            } => {
                assert_eq!((backend, operation), ("vault", "unwrap KEK"));
                assert!(detail.contains("bad context"));
            }
            other => panic!("wrong error: {other}"),
        }
    }

    #[test]
    fn gives_up_after_max_attempts_with_a_typed_error() {
        let failure = Failure::throttled("ThrottlingException");
        let (calls, err, counts) = always_failing(("aws-kms", "wrap KEK"), &failure, |_| {});
        assert_eq!(calls, 4);
        let msg = err.to_string();
        match err {
            Error::KmsUnavailable {
                backend,
                operation,
                attempts,
                throttled,
                ..
            } => {
                assert_eq!((backend, operation, attempts), ("aws-kms", "wrap KEK", 4));
                assert!(throttled);
            }
            other => panic!("wrong error: {other}"),
        }
        assert!(msg.contains("aws-kms") && msg.contains("wrap KEK") && msg.contains("4 attempt"));
        assert!(msg.contains("throttled"), "{msg}");
        assert_eq!(counts.exhausted, 1);
        assert_eq!(counts.retries, 3);
    }

    #[test]
    fn deadline_bounds_the_total_time() {
        let policy = RetryPolicy {
            max_attempts: 1000,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(20),
            attempt_timeout: Duration::from_millis(50),
            deadline: Duration::from_millis(300),
        };
        let stats = RetryStats::default();
        let start = Instant::now();
        let mut timeouts = Vec::new();
        let err = policy
            .run("test", "unwrap KEK", &stats, |a| -> Result<(), _> {
                timeouts.push(a.timeout);
                Err(Failure::transient("timed out"))
            })
            .unwrap_err();
        let took = start.elapsed();
        // The deadline, plus at most one sleep's scheduling overshoot on a loaded machine.
        assert!(took < Duration::from_millis(450), "took {took:?}");
        assert!(matches!(
            err,
            Error::KmsUnavailable {
                throttled: false,
                ..
            }
        ));
        // Many attempts, far fewer than max_attempts, each given at most attempt_timeout.
        assert!(
            timeouts.len() >= 5 && timeouts.len() < 1000,
            "{}",
            timeouts.len()
        );
        assert!(timeouts.iter().all(|t| *t <= Duration::from_millis(50)));
    }

    #[test]
    fn attempt_timeout_shrinks_to_the_remaining_deadline() {
        let policy = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
            attempt_timeout: Duration::from_secs(60),
            deadline: Duration::from_millis(500),
        };
        let mut seen = None;
        let _ = policy.run("test", "op", &RetryStats::default(), |a| -> Result<(), _> {
            seen = Some(a.timeout);
            Err(Failure::permanent("x"))
        });
        assert!(seen.unwrap() <= Duration::from_millis(500));
    }

    #[test]
    fn backoff_caps_double_up_to_the_maximum_and_jitter_stays_inside() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        let caps: Vec<_> = (1..=6).map(|r| p.backoff_cap(r).as_millis()).collect();
        assert_eq!(caps, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.backoff_cap(u32::MAX), Duration::from_millis(1000));
        let samples: Vec<_> = (0..200).map(|_| p.backoff(3)).collect();
        assert!(samples.iter().all(|d| *d <= Duration::from_millis(400)));
        // Full jitter: the samples spread over the range rather than sitting at the cap.
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(distinct.len() > 50);
        assert!(samples.iter().any(|d| *d < Duration::from_millis(200)));
    }

    #[test]
    fn http_statuses_are_classified() {
        assert_eq!(classify_http_status(429), FailureKind::Throttled);
        for s in [408, 500, 502, 503, 504] {
            assert_eq!(classify_http_status(s), FailureKind::Transient, "{s}");
        }
        for s in [400, 401, 403, 404, 501] {
            assert_eq!(classify_http_status(s), FailureKind::Permanent, "{s}");
        }
    }

    #[test]
    fn invalid_policies_are_refused() {
        assert!(RetryPolicy::default().validate().is_ok());
        for p in [
            RetryPolicy {
                max_attempts: 0,
                ..RetryPolicy::default()
            },
            RetryPolicy {
                deadline: Duration::ZERO,
                ..RetryPolicy::default()
            },
            RetryPolicy {
                initial_backoff: Duration::from_secs(10),
                ..RetryPolicy::default()
            },
        ] {
            assert!(matches!(p.validate(), Err(Error::InvalidInput { .. })));
        }
    }
}
