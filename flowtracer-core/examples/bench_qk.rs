//! The bench binary behind `benches/compare_qk.py`: times mode (a) of the Q/K stage
//! (`qk::QkAccumulator`, method §15) and the trace of its `Ā`, on Q and K written by the
//! script, and reports the peak heap bytes allocated (a counting global allocator).
//!
//! ```text
//! bench_qk --q Q.f32 --k K.f32 --layers L --q-heads HQ --kv-heads HKV --n N --d D
//!          --question A..B --answer C..D [--reps R] [--out HF.f64]
//! ```
//!
//! `Q.f32` is `[L][HQ][N][D]`, `K.f32` `[L][HKV][N][D]`, little-endian f32. Prints one JSON
//! line: `{"n", "median_s", "min_s", "qk_median_s", "peak_extra_bytes"}` (`median_s`: Q/K
//! to `Ā` plus the trace; `qk_median_s`: Q/K to `Ā` alone); with `--out`, writes `h` then
//! `f` (f64, little-endian) for the agreement check. Threads: rayon's (`RAYON_NUM_THREADS`)
//! when built with `--features parallel`.

use std::time::Instant;

use flowtracer_core::qk::{QkAccumulator, QkConfig, QkLayer, QkShape};
use flowtracer_core::{Spans, Trace, Tracer};

#[path = "support/mod.rs"]
mod support;

use support::{peak_extra, range};

#[global_allocator]
static GLOBAL: support::Counting = support::Counting;

fn read_f32(path: &str, len: usize) -> Vec<f32> {
    let bytes = std::fs::read(path).expect("read input");
    assert_eq!(bytes.len(), len * 4, "{path}: wrong length");
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn main() {
    let get = support::flags();
    let num = |flag: &str| -> usize { get(flag).expect(flag).parse().expect(flag) };
    let (layers, hq, hkv, n, d) = (
        num("--layers"),
        num("--q-heads"),
        num("--kv-heads"),
        num("--n"),
        num("--d"),
    );
    let reps: usize = get("--reps").map_or(5, |r| r.parse().expect("--reps R"));
    let spans = Spans::new(
        range(&get("--question").expect("--question")),
        range(&get("--answer").expect("--answer")),
    );
    let shape = QkShape::new(hq, hkv, n, d);
    let q = read_f32(&get("--q").expect("--q"), layers * shape.q_len());
    let k = read_f32(&get("--k").expect("--k"), layers * shape.k_len());

    let run = |out: &mut Trace<f32>, tracer: &mut Tracer| -> f64 {
        let t = Instant::now();
        let mut acc = QkAccumulator::<f32>::new(shape, QkConfig::default(), None).expect("shape");
        for l in 0..layers {
            let layer = QkLayer::new(
                l,
                &q[l * shape.q_len()..][..shape.q_len()],
                &k[l * shape.k_len()..][..shape.k_len()],
            );
            acc.add_layer(&layer).expect("layer");
        }
        let seq = acc.finish(spans.clone()).expect("Ā");
        let qk = t.elapsed().as_secs_f64();
        tracer.trace_into(&seq, out).expect("trace");
        qk
    };
    let mut tracer = Tracer::default();
    let mut out = Trace::default();
    // First call: the peak of everything it allocates (Ā, packed K, scratch, trace).
    let (_, peak_extra) = peak_extra(|| run(&mut out, &mut tracer));

    let mut times = Vec::with_capacity(reps);
    let mut qk_times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        qk_times.push(run(&mut out, &mut tracer));
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    qk_times.sort_by(f64::total_cmp);
    if let Some(path) = get("--out") {
        let mut bytes = Vec::with_capacity(16 * n);
        for x in out.reach().iter().chain(out.flow()) {
            bytes.extend_from_slice(&f64::from(*x).to_le_bytes());
        }
        std::fs::write(path, bytes).expect("write --out");
    }
    println!(
        "{{\"n\": {n}, \"median_s\": {}, \"min_s\": {}, \"qk_median_s\": {}, \"peak_extra_bytes\": {peak_extra}}}",
        times[reps / 2],
        times[0],
        qk_times[reps / 2]
    );
}
