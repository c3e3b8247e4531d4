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

use std::time::Instant;

use flowtracer_core::{Config, Sequence, Spans, Trace, Tracer};

#[path = "support/mod.rs"]
mod support;

use support::{peak_extra, range};

#[global_allocator]
static GLOBAL: support::Counting = support::Counting;

fn main() {
    let get = support::flags();
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
    let ((mut tracer, seq, mut out), peak_extra) = peak_extra(|| {
        let mut tracer = Tracer::new(Config::default()).expect("config");
        let seq = Sequence::dense(&a, Spans::new(question, answer)).expect("sequence");
        let mut out = Trace::default();
        tracer.trace_into(&seq, &mut out).expect("trace");
        (tracer, seq, out)
    });
    assert_eq!(seq.n(), n, "input must be N x N f32");

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
