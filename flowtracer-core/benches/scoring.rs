//! Scoring benchmarks (`cargo bench -p flowtracer-core --features parallel`).
//!
//! - `trace_f32/N`: reach + flow + throughput from a dense f32 `Ā` (two streaming passes);
//! - `floor_two_passes_dense/N`, `floor_two_passes_packed/N`: two vectorised f32 sums
//!   over the same dense rows, and over the packed triangle (compare.py's floor);
//! - `aggregate/N`: `[layers][heads][N][N]` f32 into `Ā`;
//! - `batch16_sequential/N` / `batch16_parallel/N`: 16 responses of length N.
//!
//! The inputs are random causal row-stochastic matrices (SplitMix64, fixed seed).

use core::hint::black_box;

use divan::Bencher;
use flowtracer_core::aggregate::{LayerSelection, Layout, aggregate};
use flowtracer_core::baselines::SplitMix64;
use flowtracer_core::{
    Trace, TraceConfig, TraceInput, Workspace, trace_batch, trace_batch_parallel,
    trace_with_workspace,
};

fn main() {
    divan::main();
}

/// A random causal row-stochastic `n x n` matrix.
fn attention(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    let mut a = vec![0.0f32; n * n];
    for k in 0..n {
        let row = &mut a[k * n..=k * n + k];
        let mut s = 0.0f64;
        for x in row.iter_mut() {
            let v = rng.next_unit();
            *x = v as f32;
            s += v;
        }
        for x in row.iter_mut() {
            *x = (*x as f64 / s) as f32;
        }
    }
    a
}

const SIZES: [usize; 3] = [1024, 4096, 8192];

#[divan::bench(args = SIZES, sample_count = 20)]
fn trace_f32(bencher: Bencher<'_, '_>, n: usize) {
    let a = attention(n, 1);
    let cfg = TraceConfig::default();
    let mut ws = Workspace::new();
    let mut out = Trace::new();
    bencher.bench_local(|| {
        trace_with_workspace(
            black_box(&a),
            n,
            0..n / 8,
            n - 8..n,
            &cfg,
            &mut ws,
            &mut out,
        )
        .unwrap();
    });
}

/// Sum of a slice in sixteen f32 lanes (vectorised, not latency-bound).
fn lanes(x: &[f32]) -> f32 {
    let mut s = [0.0f32; 16];
    let (chunks, rest) = x.as_chunks::<16>();
    for c in chunks {
        for j in 0..16 {
            s[j] += c[j];
        }
    }
    s.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// The floor on the same dense rows the passes read: two vectorised f32 sums of each row.
#[divan::bench(args = SIZES, sample_count = 20)]
fn floor_two_passes_dense(bencher: Bencher<'_, '_>, n: usize) {
    let a = attention(n, 1);
    bencher.bench_local(|| {
        let mut total = 0.0f32;
        for _ in 0..2 {
            for k in 0..n {
                total += lanes(black_box(&a[k * n..=k * n + k]));
            }
        }
        total
    });
}

/// The floor of compare.py: two vectorised sums over the packed triangle.
#[divan::bench(args = SIZES, sample_count = 20)]
fn floor_two_passes_packed(bencher: Bencher<'_, '_>, n: usize) {
    let a = attention(n, 1);
    let mut packed = Vec::with_capacity(n * (n + 1) / 2);
    for k in 0..n {
        packed.extend_from_slice(&a[k * n..=k * n + k]);
    }
    bencher.bench_local(|| {
        let mut total = 0.0f32;
        for _ in 0..2 {
            total += lanes(black_box(&packed));
        }
        total
    });
}

#[divan::bench(args = SIZES, sample_count = 10)]
fn aggregate_2x4(bencher: Bencher<'_, '_>, n: usize) {
    let (layers, heads) = (2, 4);
    let mut data = Vec::with_capacity(layers * heads * n * n);
    for s in 0..(layers * heads) as u64 {
        data.extend(attention(n, s));
    }
    bencher.bench_local(|| {
        aggregate(
            black_box(&data),
            layers,
            heads,
            n,
            Layout::Dense,
            &LayerSelection::All,
        )
        .unwrap()
    });
}

fn batch(n: usize) -> Vec<Vec<f32>> {
    (0..16).map(|s| attention(n, s)).collect()
}

fn inputs(b: &[Vec<f32>], n: usize) -> Vec<TraceInput<'_, f32>> {
    b.iter()
        .map(|a| TraceInput {
            attention: a,
            n,
            question: 0..n / 8,
            answer: n - 8..n,
        })
        .collect()
}

#[divan::bench(args = SIZES, sample_count = 10)]
fn batch16_sequential(bencher: Bencher<'_, '_>, n: usize) {
    let b = batch(n);
    let x = inputs(&b, n);
    bencher.bench_local(|| trace_batch(black_box(&x), &TraceConfig::default()));
}

#[divan::bench(args = SIZES, sample_count = 10)]
fn batch16_parallel(bencher: Bencher<'_, '_>, n: usize) {
    let b = batch(n);
    let x = inputs(&b, n);
    bencher.bench_local(|| trace_batch_parallel(black_box(&x), &TraceConfig::default()));
}
