//! What the bench binaries share: a counting global allocator (live heap bytes and their
//! high-water mark), their flag lookup and the parsing of their `A..B` ranges. Included by
//! each example with `#[path = "support/mod.rs"] mod support;` (a folder without `main.rs`
//! is no example).

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering};
use std::alloc::System;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// Forwards every call to the system allocator and counts the live bytes.
pub(crate) struct Counting;

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Runs `f` and returns its result with the peak heap bytes it allocated beyond what was
/// live when it started.
pub(crate) fn peak_extra<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed) - before)
}

/// The command line as a lookup: `get("--n")` is the value after `--n`, if given.
pub(crate) fn flags() -> impl Fn(&str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    move |flag| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    }
}

/// Parses `A..B`.
pub(crate) fn range(s: &str) -> core::ops::Range<usize> {
    let (a, b) = s.split_once("..").expect("range A..B");
    a.parse().expect("range start")..b.parse().expect("range end")
}
