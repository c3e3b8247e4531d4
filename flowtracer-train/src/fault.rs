//! Fault injection for the crash-safety test (cargo feature `fault-injection`, enabled only
//! by the `cargo test-all` alias).
//!
//! With the feature on and `FLOWTRACER_FAULT_AT=k` in the environment, the process aborts
//! (SIGABRT, as a kill would stop it: no destructor runs, nothing is flushed) just before the
//! `k`-th write, fsync, rename or removal of a checkpoint save, counted from 1 over the
//! process's lifetime. Without the feature [`point`] is an empty inline function.

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
}

#[cfg(not(feature = "fault-injection"))]
mod imp {
    #[inline(always)]
    pub(crate) fn point(_what: &str) {}

    #[inline(always)]
    pub(crate) fn arm(_on: bool) {}
}

/// A write, fsync, rename or removal about to happen (counted only inside a checkpoint
/// save).
pub(crate) use imp::point;

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
