//! Shared fixtures, generators and the tolerances, stated once.

use proptest::prelude::*;

/// Tolerance of f64 fast paths against the naive oracle: `|x - y| <= ABS + REL * |y|`.
pub(crate) const F64_ABS: f64 = 1e-10;
/// See [`F64_ABS`].
pub(crate) const F64_REL: f64 = 1e-10;
/// Tolerance of f32 results against f64 results: `|x - y| <= ABS + REL * |y|`.
pub(crate) const F32_ABS: f64 = 1e-5;
/// See [`F32_ABS`].
pub(crate) const F32_REL: f64 = 1e-4;

/// `|x - y| <= abs + rel * |y|`.
pub(crate) fn close(x: f64, y: f64, abs: f64, rel: f64) -> bool {
    (x - y).abs() <= abs + rel * y.abs()
}

/// Asserts two slices agree entry by entry within `abs + rel * |expected|`.
#[track_caller]
pub(crate) fn assert_all_close(actual: &[f64], expected: &[f64], abs: f64, rel: f64, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    for (i, (&x, &y)) in actual.iter().zip(expected).enumerate() {
        assert!(
            close(x, y, abs, rel),
            "{what}[{i}]: {x} vs {y} (abs {abs}, rel {rel})"
        );
    }
}

/// The spec §12 worked example: N = 5, Q = 0..2, A = 4..5.
pub(crate) const EXAMPLE: [f64; 25] = [
    1.0, 0.0, 0.0, 0.0, 0.0, //
    0.5, 0.5, 0.0, 0.0, 0.0, //
    0.3, 0.5, 0.2, 0.0, 0.0, //
    0.1, 0.2, 0.3, 0.4, 0.0, //
    0.1, 0.1, 0.6, 0.1, 0.1,
];

/// A causal, row-stochastic `n x n` matrix from raw positive weights (valid by
/// construction); rows may be scaled below 1 by `mass`.
pub(crate) fn stochastic(n: usize, raw: &[f64], mass: &[f64]) -> Vec<f64> {
    let mut a = vec![0.0; n * n];
    for k in 0..n {
        let row = &raw[k * n..k * n + k + 1];
        let s: f64 = row.iter().sum();
        for i in 0..=k {
            a[k * n + i] = row[i] / s * mass[k];
        }
    }
    a
}

/// One valid tracing problem.
#[derive(Debug, Clone)]
pub(crate) struct Case {
    pub(crate) n: usize,
    pub(crate) a: Vec<f64>,
    pub(crate) question: core::ops::Range<usize>,
    pub(crate) answer: core::ops::Range<usize>,
}

/// Valid cases: N in 2..=max_n, sparse-ish positive weights (some exact zeros), a question
/// span at the start and an answer span after it, rows summing to 1 (or a little less).
pub(crate) fn case(max_n: usize) -> impl Strategy<Value = Case> {
    (2..=max_n)
        .prop_flat_map(|n| {
            let raw = prop::collection::vec(prop_oneof![3 => 0.01f64..1.0, 1 => Just(0.0)], n * n);
            let mass = prop::collection::vec(prop_oneof![3 => Just(1.0), 1 => 0.5f64..1.0], n);
            (Just(n), raw, mass, 0..n - 1)
        })
        .prop_flat_map(|(n, raw, mass, q_end_m1)| {
            let q_end = q_end_m1 + 1;
            (
                Just(n),
                Just(raw),
                Just(mass),
                0..q_end,
                Just(q_end),
                q_end..n,
            )
        })
        .prop_flat_map(|(n, raw, mass, q_start, q_end, a_start)| {
            (
                Just(n),
                Just(raw),
                Just(mass),
                Just(q_start..q_end),
                Just(a_start),
                a_start + 1..=n,
            )
        })
        .prop_map(|(n, mut raw, mass, question, a_start, a_end)| {
            // Every diagonal entry positive so no row is all zero.
            for k in 0..n {
                raw[k * n + k] += 0.05;
            }
            Case {
                n,
                a: stochastic(n, &raw, &mass),
                question,
                answer: a_start..a_end,
            }
        })
}

pub(crate) fn to_f32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

pub(crate) fn widen<F: Copy + Into<f64>>(x: &[F]) -> Vec<f64> {
    x.iter().map(|&v| v.into()).collect()
}

/// Mass of row `k` of a dense `n x n` matrix (on and below the diagonal).
pub(crate) fn row_mass(a: &[f64], n: usize, k: usize) -> f64 {
    a[k * n..=k * n + k].iter().sum()
}
