//! The bench binary behind `benches/compare.py`: times flowtracer on an `Ā` written by the
//! script and reports peak heap bytes allocated while scoring (a counting global allocator).
//!
//! ```text
//! bench_trace --input A.f32 --n N --question A..B --answer C..D [--reps R] [--out HF.f64]
//! ```
//!
//! `A.f32` is `N x N` little-endian f32, row-major. Prints one JSON line:
//! `{"n", "median_s", "min_s", "peak_extra_bytes", "bytes_per_token"}`; with `--out`, writes
//! `h` then `f` (f64, little-endian) for the agreement check.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering};
use std::alloc::System;
use std::time::Instant;

use flowtracer_core::{Config, Sequence, Spans, Trace, Tracer};

/// Counts live heap bytes and their high-water mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

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

#[global_allocator]
static GLOBAL: Counting = Counting;

fn range(s: &str) -> core::ops::Range<usize> {
    let (a, b) = s.split_once("..").expect("range A..B");
    a.parse().expect("range start")..b.parse().expect("range end")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .map(|i| args[i + 1].clone())
    };
    let n: usize = get("--n").expect("--n").parse().expect("--n N");
    let question = range(&get("--question").expect("--question"));
    let answer = range(&get("--answer").expect("--answer"));
    let reps: usize = get("--reps").map_or(7, |r| r.parse().expect("--reps R"));
    let bytes = std::fs::read(get("--input").expect("--input")).expect("read --input");
    assert_eq!(bytes.len(), n * n * 4, "input must be N x N f32");
    let a: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    drop(bytes);

    // First call: measures the allocation of a cold tracer, sequence and output.
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let mut tracer = Tracer::new(Config::default()).expect("config");
    let seq = Sequence::dense(&a, Spans::new(question, answer)).expect("sequence");
    assert_eq!(seq.n(), n, "input must be N x N f32");
    let mut out = Trace::default();
    tracer.trace_into(&seq, &mut out).expect("trace");
    let peak_extra = PEAK.load(Ordering::Relaxed) - before;

    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        tracer.trace_into(&seq, &mut out).expect("trace");
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{{\"n\": {n}, \"median_s\": {:.6}, \"min_s\": {:.6}, \"peak_extra_bytes\": {peak_extra}, \"bytes_per_token\": {:.1}}}",
        times[times.len() / 2],
        times[0],
        peak_extra as f64 / n as f64
    );
    if let Some(path) = get("--out") {
        let mut buf = Vec::with_capacity(16 * n);
        for &x in tracer.last_reach().iter().chain(
            out.flow()
                .iter()
                .map(|&f| f as f64)
                .collect::<Vec<_>>()
                .iter(),
        ) {
            buf.extend_from_slice(&x.to_le_bytes());
        }
        std::fs::write(path, buf).expect("write --out");
    }
}
