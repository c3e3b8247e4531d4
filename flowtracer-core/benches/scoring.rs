//! Scoring benchmarks (`cargo bench -p flowtracer-core --features parallel`).
//!
//! - `trace_f32/N`: reach + flow + throughput from a dense f32 `Ā` (two streaming passes),
//!   through `Tracer::trace_into` (no allocation once warm);
//! - `trace_f32_packed/N`: the same from the packed lower triangle;
//! - `floor_two_passes_dense/N`, `floor_two_passes_packed/N`: two vectorised f32 sums
//!   over the same dense rows, and over the packed triangle (compare.py's floor);
//! - `aggregate/N`: `[layers][heads][N][N]` f32 into `Ā`;
//! - `batch16_sequential/N` / `batch16_parallel/N`: 16 responses of length N, one
//!   `trace_into` after another / `Tracer::trace_batch` (on every core).
//!
//! The inputs are random causal row-stochastic matrices (SplitMix64, fixed seed).

use core::hint::black_box;

use divan::Bencher;
use flowtracer_core::aggregate::{LayerSelection, Layout, aggregate};
use flowtracer_core::baselines::SplitMix64;
use flowtracer_core::{Config, Sequence, Spans, Trace, Tracer};

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

/// Question: the first eighth; answer: the last 8 tokens.
fn spans(n: usize) -> Spans {
    Spans::new(0..n / 8, n - 8..n)
}

#[divan::bench(args = SIZES, sample_count = 20)]
fn trace_f32(bencher: Bencher<'_, '_>, n: usize) {
    let a = attention(n, 1);
    let mut tracer = Tracer::new(Config::default()).unwrap();
    let mut out = Trace::default();
    bencher.bench_local(|| {
        let seq = Sequence::dense(black_box(&a), spans(n)).unwrap();
        tracer.trace_into(&seq, &mut out).unwrap();
    });
}

#[divan::bench(args = SIZES, sample_count = 20)]
fn trace_f32_packed(bencher: Bencher<'_, '_>, n: usize) {
    let a = attention(n, 1);
    let packed = pack(&a, n);
    let mut tracer = Tracer::new(Config::default()).unwrap();
    let mut out = Trace::default();
    bencher.bench_local(|| {
        let seq = Sequence::packed(black_box(&packed), spans(n)).unwrap();
        tracer.trace_into(&seq, &mut out).unwrap();
    });
}

/// The lower triangle of a dense `n x n` matrix, row after row.
fn pack(a: &[f32], n: usize) -> Vec<f32> {
    let mut packed = Vec::with_capacity(n * (n + 1) / 2);
    for k in 0..n {
        packed.extend_from_slice(&a[k * n..=k * n + k]);
    }
    packed
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
    let packed = pack(&attention(n, 1), n);
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

fn sequences(b: &[Vec<f32>], n: usize) -> Vec<Sequence<'_, f32>> {
    b.iter()
        .map(|a| Sequence::dense(a, spans(n)).unwrap())
        .collect()
}

#[divan::bench(args = SIZES, sample_count = 10)]
fn batch16_sequential(bencher: Bencher<'_, '_>, n: usize) {
    let b = batch(n);
    let x = sequences(&b, n);
    let mut tracer = Tracer::new(Config::default()).unwrap();
    bencher.bench_local(|| {
        black_box(&x)
            .iter()
            .map(|seq| tracer.trace(seq))
            .collect::<Vec<_>>()
    });
}

#[divan::bench(args = SIZES, sample_count = 10)]
fn batch16_parallel(bencher: Bencher<'_, '_>, n: usize) {
    let b = batch(n);
    let x = sequences(&b, n);
    let tracer = Tracer::new(Config::default()).unwrap();
    bencher.bench_local(|| tracer.trace_batch(black_box(&x)));
}
