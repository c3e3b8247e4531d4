//! The bench binary behind `benches/compare_qk.py`: times mode (a) of the Q/K stage
//! (`qk::QkAccumulator`, method §15) and the trace of its `Ā`, and mode (b)
//! (`Tracer::trace_qk`, rows recomputed inside the passes), on Q and K written by the
//! script, and reports the peak heap bytes each allocates (a counting global allocator).
//!
//! ```text
//! bench_qk --q Q.f32 --k K.f32 --layers L --q-heads HQ --kv-heads HKV --n N --d D
//!          --question A..B --answer C..D [--reps R] [--out HF.f64]
//! ```
//!
//! `Q.f32` is `[L][HQ][N][D]`, `K.f32` `[L][HKV][N][D]`, little-endian f32. Prints one JSON
//! line: `{"n", "median_s", "min_s", "qk_median_s", "peak_extra_bytes", "b_median_s",
//! "b_min_s", "b_peak_extra_bytes"}` (`median_s`: mode (a), Q/K to `Ā` plus the trace;
//! `qk_median_s`: Q/K to `Ā` alone; `b_*`: mode (b), validation included, whose trace must
//! equal mode (a)'s bit for bit or the binary panics); with `--out`, writes `h` then `f`
//! (f64, little-endian) for the agreement check. The two modes alternate within each
//! repetition, so machine load hits both alike. Threads: rayon's (`RAYON_NUM_THREADS`) when
//! built with `--features parallel`.

use std::time::Instant;

use flowtracer_core::qk::{QkAccumulator, QkConfig, QkLayer, QkSequence, QkShape};
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
    let layers_b: Vec<QkLayer<'_, f32>> = (0..layers)
        .map(|l| {
            QkLayer::new(
                l,
                &q[l * shape.q_len()..][..shape.q_len()],
                &k[l * shape.k_len()..][..shape.k_len()],
            )
        })
        .collect();
    // Mode (b): validation (the non-finite scan), the producer and both passes.
    let run_b = |out: &mut Trace<f32>, tracer: &mut Tracer| {
        let seq = QkSequence::new(&layers_b, shape, &QkConfig::default(), None, spans.clone())
            .expect("valid input");
        tracer.trace_qk_into(&seq, out).expect("trace_qk");
    };
    let mut tracer = Tracer::default();
    let mut out = Trace::default();
    let mut out_b = Trace::default();
    // First call of each: the peak of everything it allocates (mode (a): Ā, packed K,
    // scratch, trace; mode (b): packed K of every layer, the row block, scratch, trace).
    let (_, a_peak_extra) = peak_extra(|| run(&mut out, &mut tracer));
    let mut tracer_b = Tracer::default();
    let ((), b_peak_extra) = peak_extra(|| run_b(&mut out_b, &mut tracer_b));
    assert!(out == out_b, "mode (b) differs from mode (a)");

    let mut times = Vec::with_capacity(reps);
    let mut qk_times = Vec::with_capacity(reps);
    let mut b_times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        qk_times.push(run(&mut out, &mut tracer));
        times.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        run_b(&mut out_b, &mut tracer_b);
        b_times.push(t.elapsed().as_secs_f64());
    }
    for v in [&mut times, &mut qk_times, &mut b_times] {
        v.sort_by(f64::total_cmp);
    }
    if let Some(path) = get("--out") {
        let mut bytes = Vec::with_capacity(16 * n);
        for x in out.reach().iter().chain(out.flow()) {
            bytes.extend_from_slice(&f64::from(*x).to_le_bytes());
        }
        std::fs::write(path, bytes).expect("write --out");
    }
    println!(
        "{{\"n\": {n}, \"median_s\": {}, \"min_s\": {}, \"qk_median_s\": {}, \"peak_extra_bytes\": {a_peak_extra}, \"b_median_s\": {}, \"b_min_s\": {}, \"b_peak_extra_bytes\": {b_peak_extra}}}",
        times[reps / 2],
        times[0],
        qk_times[reps / 2],
        b_times[reps / 2],
        b_times[0]
    );
}
