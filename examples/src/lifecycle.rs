//! Waiting out the cache window before a retire or destroy, for the demos.
//!
//! After a rotation, `KeyRing::retire` and `KeyRing::destroy` refuse with
//! `Error::KeyChangeTooEarly { allowed_at, .. }` until the old version's stored cache window
//! (plus a tenth of it, at least one second) has passed: until then a running application with
//! a warm cache may still seal under the old version. Production rings keep the default window
//! (the KEK cache's maximum age, 5 minutes) and an operator or scheduler retires later; the
//! one-process demos record a [`DEMO_CACHE_WINDOW`] of two seconds and simply wait.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use leakless::key::UnixTime;

/// The cache window the demos record on their KEK versions
/// (`KeyRingBuilder::cache_window`). Short because a demo is one process that rotates and
/// retires within a minute; production keeps minutes.
pub const DEMO_CACHE_WINDOW: Duration = Duration::from_secs(2);

/// The system time now, as the key ring's `SystemClock` reads it, with sub-second precision.
fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// How long until the key ring's clock (whole seconds) reads `allowed_at`: zero when it does
/// already.
#[must_use]
pub fn time_until(allowed_at: UnixTime) -> Duration {
    let target = Duration::from_secs(u64::try_from(allowed_at.0).unwrap_or(0));
    target.saturating_sub(now())
}

/// Sleeps until the key ring's clock reads `allowed_at` (plus a few milliseconds, so the
/// second has turned for certain). Returns how long it slept.
pub fn wait_until(allowed_at: UnixTime) -> Duration {
    let mut slept = Duration::ZERO;
    loop {
        let left = time_until(allowed_at);
        if left.is_zero() {
            return slept;
        }
        let step = left.saturating_add(Duration::from_millis(20));
        std::thread::sleep(step);
        slept = slept.saturating_add(step);
    }
}

/// `1.7 s`: a duration for the demos' output, to a tenth of a second.
#[must_use]
pub fn seconds(d: Duration) -> String {
    let tenths = d.as_millis().div_ceil(100);
    format!("{}.{} s", tenths / 10, tenths % 10)
}
