//! Process hardening: keep secrets out of core dumps and swap.
//!
//! Call [`harden_process`] once, early in `main`, before any key is loaded:
//!
//! * sets `RLIMIT_CORE` to 0, so a crash writes no core file holding keys or plaintext;
//! * on Linux, marks the process non-dumpable (`PR_SET_DUMPABLE 0`), which also keeps other
//!   processes of the same user from attaching with `ptrace` or reading `/proc/<pid>/mem`;
//! * on Linux, locks all current and future memory (`mlockall(MCL_CURRENT | MCL_FUTURE)`), so
//!   the KEK cache and plaintext buffers are never written to swap, but **only** when the
//!   memory-lock limit allows it (`RLIMIT_MEMLOCK` unlimited, or running as root). With a small
//!   limit, locking future memory would make later allocations fail, so it is skipped and the
//!   report says why. Raise the limit (`ulimit -l unlimited`, systemd `LimitMEMLOCK=infinity`) to
//!   get it.
//!
//! Every step is best effort; the returned [`HardeningReport`] says what took effect. The calls
//! go through `rustix`'s safe wrappers, so this crate needs no `unsafe`.

use std::fmt;

/// What [`harden_process`] managed to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HardeningReport {
    /// `RLIMIT_CORE` is now 0.
    pub core_dumps_disabled: bool,
    /// The process is marked non-dumpable (Linux only).
    pub non_dumpable: bool,
    /// All memory is locked against swapping; `Err` says why not.
    pub memory_locked: Result<(), String>,
}

impl fmt::Display for HardeningReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        write!(
            f,
            "core dumps disabled: {}; non-dumpable: {}; memory locked: {}",
            yes_no(self.core_dumps_disabled),
            yes_no(self.non_dumpable),
            match &self.memory_locked {
                Ok(()) => "yes".to_owned(),
                Err(why) => format!("no ({why})"),
            }
        )
    }
}

/// Hardens the current process (see the module docs). Safe to call more than once.
#[must_use = "the report says which protections are in force"]
pub fn harden_process() -> HardeningReport {
    imp::harden()
}

/// Sets `RLIMIT_CORE` to 0 (soft and hard); whether that took effect.
#[cfg(unix)]
fn disable_core_dumps() -> bool {
    use rustix::process::{Resource, Rlimit, setrlimit};

    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .is_ok()
}

#[cfg(target_os = "linux")]
mod imp {
    use rustix::mm::{MlockAllFlags, mlockall};
    use rustix::process::{DumpableBehavior, Resource, geteuid, getrlimit, set_dumpable_behavior};

    use super::HardeningReport;

    pub(super) fn harden() -> HardeningReport {
        let core_dumps_disabled = super::disable_core_dumps();
        let non_dumpable = set_dumpable_behavior(DumpableBehavior::NotDumpable).is_ok();
        let limit = getrlimit(Resource::Memlock).current;
        let memory_locked = if limit.is_none() || geteuid().is_root() {
            mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE)
                .map_err(|e| format!("mlockall failed: {e}"))
        } else {
            Err(format!(
                "RLIMIT_MEMLOCK is {} bytes, too small to lock all memory safely; raise it to \
                 unlimited to enable",
                limit.unwrap_or(0)
            ))
        };
        HardeningReport {
            core_dumps_disabled,
            non_dumpable,
            memory_locked,
        }
    }
}

#[cfg(all(unix, not(target_os = "linux")))]
mod imp {
    use super::HardeningReport;

    pub(super) fn harden() -> HardeningReport {
        let core_dumps_disabled = super::disable_core_dumps();
        HardeningReport {
            core_dumps_disabled,
            non_dumpable: false,
            memory_locked: Err("memory locking is only implemented on Linux".into()),
        }
    }
}

#[cfg(not(unix))]
mod imp {
    use super::HardeningReport;

    pub(super) fn harden() -> HardeningReport {
        HardeningReport {
            core_dumps_disabled: false,
            non_dumpable: false,
            memory_locked: Err("process hardening is only implemented on Unix".into()),
        }
    }
}
