//! The process hardening helper, in a test binary of its own: `harden_process` changes the
//! whole process (core dumps off, not dumpable, every page locked in memory with `mlockall`),
//! and in the shared suite binary that would hold for every other test running beside it.
#![allow(clippy::unwrap_used, reason = "test")]

use std::fs;

use leakless::harden_process;

#[test]
fn harden_process_disables_core_dumps() {
    let report = harden_process();
    assert!(report.core_dumps_disabled, "{report}");
    assert!(report.non_dumpable, "{report}");
    let limits = fs::read_to_string("/proc/self/limits").unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(core.split_whitespace().nth(4) == Some("0"), "{core}");
    let status = fs::read_to_string("/proc/self/status").unwrap();
    // Either memory got locked (VmLck > 0) or the report says why not.
    let locked_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmLck:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap();
    match &report.memory_locked {
        Ok(()) => assert!(locked_kb > 0, "mlockall reported success but VmLck is 0"),
        Err(why) => assert!(!why.is_empty()),
    }
}
