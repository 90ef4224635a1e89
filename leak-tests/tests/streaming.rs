//! Streaming: a 256 MiB artifact, generated on the fly (never in memory), is scanned with the
//! process's peak resident memory (VmHWM) growing by far less than the artifact, and a canary
//! planted in its last kilobyte is still found at the right offset. One test in its own binary
//! (not in `leaks`), so no other test shares the memory figure.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::print_stderr,
    reason = "tests: a failed step stops the test with its message"
)]

use std::io::Read;

use leakless_leaktest::{Canary, CanarySet, LeakCheck};

const SIZE: u64 = 256 << 20;
const MARKER: &str = "LKSTREAM42";
const VALUE: &str = "Streamed canary LKSTREAM42, 99 Long File Road, Bigtown";

/// Pseudo-random printable bytes, with the canary in the last kilobyte.
struct Generator {
    pos: u64,
    x: u64,
    plant_at: u64,
}

impl Read for Generator {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = SIZE - self.pos;
        let n = buf.len().min(usize::try_from(left).unwrap());
        for b in &mut buf[..n] {
            let p = self.pos;
            *b = if p >= self.plant_at && p < self.plant_at + VALUE.len() as u64 {
                VALUE.as_bytes()[usize::try_from(p - self.plant_at).unwrap()]
            } else {
                self.x ^= self.x << 13;
                self.x ^= self.x >> 7;
                self.x ^= self.x << 17;
                b' ' + u8::try_from(self.x % 90).unwrap()
            };
            self.pos += 1;
        }
        Ok(n)
    }
}

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_large_artifact_is_scanned_in_bounded_memory() {
    let mut set = CanarySet::new();
    set.push(Canary::text("stream", MARKER, VALUE).unwrap())
        .unwrap();
    let mut check = LeakCheck::new(set).unwrap();
    let before = vm_hwm_kib();
    let plant_at = SIZE - 1000;
    check
        .scan_reader(
            "stream",
            "generator",
            Generator {
                pos: 0,
                x: 88_172_645_463_325_252,
                plant_at,
            },
        )
        .unwrap();
    let grown = vm_hwm_kib().saturating_sub(before);
    let report = check.report();
    let c = report.channel("stream").unwrap();
    assert_eq!(c.bytes, SIZE);
    assert_eq!(c.leaks.len(), 1, "{}", report.human());
    assert_eq!(c.leaks[0].offset, plant_at);
    // One 1 MiB chunk plus overlap; allow generous slack for the allocator and test harness.
    assert!(
        grown < 32 * 1024,
        "peak RSS grew by {grown} KiB while scanning 256 MiB"
    );
}
