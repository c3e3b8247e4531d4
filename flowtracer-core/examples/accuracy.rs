//! Measures the accuracy quoted in the docs: the f64 fast path against the naive oracle, and
//! f32 input (f64 accumulation, f32 output) against f64, on random causal row-stochastic
//! attention. Prints a Markdown table.
//!
//! ```text
//! cargo run --release -p flowtracer-core --example accuracy
//! ```

use flowtracer_core::baselines::SplitMix64;
use flowtracer_core::{AnswerMode, Sequence, Spans, reference, trace};

fn attention(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = SplitMix64::new(seed);
    let mut a = vec![0.0; n * n];
    for k in 0..n {
        let row: Vec<f64> = (0..=k).map(|_| rng.next_unit()).collect();
        let s: f64 = row.iter().sum();
        for (i, x) in row.iter().enumerate() {
            a[k * n + i] = x / s;
        }
    }
    a
}

/// Max over live tokens of `|x - y| / |y|`.
fn max_rel(x: impl Iterator<Item = f64>, y: &[f64]) -> f64 {
    x.zip(y)
        .filter(|&(_, &y)| y > 0.0)
        .map(|(x, &y)| (x - y).abs() / y)
        .fold(0.0, f64::max)
}

fn main() {
    println!(
        "| N | f64 fast vs reference: h | f | f32 vs f64: h | f | answer mass - 1 (f64) | (f32) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for n in [256, 1024, 4096] {
        let a = attention(n, n as u64);
        let (q, ans) = (0..n / 8, n - 8..n);
        let spans = Spans::new(q.clone(), ans.clone());
        let t64 = trace(&Sequence::dense(&a, spans.clone()).expect("valid")).expect("valid");
        let a32: Vec<f32> = a.iter().map(|&x| x as f32).collect();
        let t32 = trace(&Sequence::dense(&a32, spans).expect("valid")).expect("valid");
        let (q, ans): (Vec<usize>, Vec<usize>) = (q.collect(), ans.collect());
        let naive = reference::trace(&a, n, &q, &ans, AnswerMode::Absorbing, 0.0);
        println!(
            "| {n} | {:.1e} | {:.1e} | {:.1e} | {:.1e} | {:.1e} | {:.1e} |",
            max_rel(t64.reach().iter().copied(), &naive.h),
            max_rel(t64.flow().iter().copied(), &naive.f),
            max_rel(t32.reach().iter().map(|&x| f64::from(x)), t64.reach()),
            max_rel(t32.flow().iter().map(|&x| f64::from(x)), t64.flow()),
            (t64.answer_mass() - 1.0).abs(),
            (t32.answer_mass() - 1.0).abs(),
        );
    }
}
