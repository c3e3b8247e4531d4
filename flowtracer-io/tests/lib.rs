//! The one integration-test binary of flowtracer-io (one binary links once; mod files keep it
//! organised).

mod bounds;
mod readers;

/// A global allocator that counts the live bytes of each thread, so that tests running in
/// parallel measure only their own allocations.
pub(crate) mod alloc_count {
    use core::alloc::{GlobalAlloc, Layout};
    use core::cell::Cell;
    use std::alloc::System;

    std::thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    fn add(bytes: isize) {
        // `try_with`: never panics inside the allocator (the cells have no destructor).
        let _ = LIVE.try_with(|live| {
            let now = live.get() + bytes;
            live.set(now);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
        });
    }

    /// Forwards to the system allocator and counts requested sizes.
    pub(crate) struct Counting;

    // SAFETY: every call is forwarded to `System` unchanged; only sizes are counted, in
    // thread-local cells that never allocate.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            add(layout.size() as isize);
            // SAFETY: the caller's contract is System's.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            add(-(layout.size() as isize));
            // SAFETY: the caller's contract is System's.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            add(new_size as isize - layout.size() as isize);
            // SAFETY: the caller's contract is System's.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    /// Runs `f` and returns its result with the peak bytes this thread had allocated
    /// during it beyond what was live before.
    pub(crate) fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let before = LIVE.with(Cell::get);
        PEAK.with(|peak| peak.set(before));
        let out = f();
        let peak = PEAK.with(Cell::get);
        (out, usize::try_from(peak - before).unwrap_or(0))
    }
}

#[global_allocator]
static GLOBAL: alloc_count::Counting = alloc_count::Counting;
