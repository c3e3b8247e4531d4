//! Fault injection for the crash-safety test (cargo feature `fault-injection`, enabled only
//! by the `cargo test-all` alias).
//!
//! With the feature on and `FLOWTRACER_FAULT_AT=k` in the environment, the process aborts
//! (SIGABRT, as a kill would stop it: no destructor runs, nothing is flushed) just before the
//! `k`-th write, fsync, rename or removal of a checkpoint save, counted from 1 over the
//! process's lifetime; with `FLOWTRACER_FAULT_AFTER_STEPS=k` it aborts after the `k`-th GRPO
//! step ([`step_done`]). Without the feature both are empty inline functions.

#[cfg(feature = "fault-injection")]
mod imp {
    use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    static COUNT: AtomicU64 = AtomicU64::new(0);
    static ARMED: AtomicBool = AtomicBool::new(false);

    pub(crate) fn point(what: &str) {
        if !ARMED.load(Ordering::Relaxed) {
            return;
        }
        let k = COUNT.fetch_add(1, Ordering::Relaxed) + 1;
        let at = std::env::var("FLOWTRACER_FAULT_AT")
            .ok()
            .and_then(|v| v.parse::<u64>().ok());
        if at == Some(k) {
            eprintln!("fault injection: abort before {what} #{k}");
            std::process::abort();
        }
    }

    pub(crate) fn arm(on: bool) {
        ARMED.store(on, Ordering::Relaxed);
    }

    static STEPS: AtomicU64 = AtomicU64::new(0);

    pub(crate) fn step_done() {
        let k = STEPS.fetch_add(1, Ordering::Relaxed) + 1;
        let at = std::env::var("FLOWTRACER_FAULT_AFTER_STEPS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok());
        if at == Some(k) {
            eprintln!("fault injection: abort after GRPO step #{k} of this process");
            std::process::abort();
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
mod imp {
    #[inline(always)]
    pub(crate) fn point(_what: &str) {}

    #[inline(always)]
    pub(crate) fn arm(_on: bool) {}

    #[inline(always)]
    pub(crate) fn step_done() {}
}

/// A write, fsync, rename or removal about to happen (counted only inside a checkpoint
/// save).
pub(crate) use imp::point;

/// A GRPO step of [`crate::run::grpo_loop`] is done (its metrics written and its checkpoint,
/// if due, saved). With the feature on and `FLOWTRACER_FAULT_AFTER_STEPS=k`, the process
/// aborts after the `k`-th such step, counted over the process's lifetime (across the runs
/// of one `compare`): the interrupted-study test.
pub(crate) use imp::step_done;

/// Counts the points of a checkpoint save: on while [`Armed`] lives.
pub(crate) struct Armed(());

impl Armed {
    /// Starts counting.
    pub(crate) fn new() -> Self {
        imp::arm(true);
        Armed(())
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        imp::arm(false);
    }
}
