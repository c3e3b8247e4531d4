//! Shared fixtures, generators and the tolerances, stated once.

use core::ops::Range;

use flowtracer_core::{
    Config, Error, FlowFloat, Sequence, Spans, Tokens, Trace, TraceConfig, Tracer,
};
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

/// The [method §12](docs/method.md#s12) worked example: N = 5, Q = 0..2, A = 4..5.
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
    pub(crate) question: Range<usize>,
    pub(crate) answer: Range<usize>,
}

impl Case {
    /// The question and answer spans (the response: every token after the question).
    pub(crate) fn spans(&self) -> Spans {
        Spans::new(self.question.clone(), self.answer.clone())
    }

    /// The validated sequence (valid by construction, so building it cannot fail).
    pub(crate) fn seq(&self) -> Sequence<'_, f64> {
        let seq = Sequence::dense(&self.a, self.spans()).expect("a case is valid");
        assert_eq!(seq.n(), self.n);
        seq
    }

    /// The question's positions, as the oracles take them.
    pub(crate) fn question_positions(&self) -> Vec<usize> {
        self.question.clone().collect()
    }

    /// The answer's positions, as the oracles take them.
    pub(crate) fn answer_positions(&self) -> Vec<usize> {
        self.answer.clone().collect()
    }
}

/// A tracer with `config` as its trace configuration.
pub(crate) fn tracer(config: TraceConfig) -> Result<Tracer, Error> {
    Tracer::new(Config::default().with_trace(config))
}

/// Builds a dense sequence from `a` and the spans, then traces it with `config`: every
/// error of the three steps (configuration, shape and spans, data) comes out.
pub(crate) fn trace_dense<F: FlowFloat>(
    a: &[F],
    question: impl Into<Tokens>,
    answer: impl Into<Tokens>,
    config: TraceConfig,
) -> Result<Trace<F>, Error> {
    let mut tracer = tracer(config)?;
    tracer.trace(&Sequence::dense(a, Spans::new(question, answer))?)
}

/// A dense row-major `n x n` matrix as packed lower-triangular rows.
pub(crate) fn pack<F: Copy>(a: &[F], n: usize) -> Vec<F> {
    let mut packed = Vec::with_capacity(n * (n + 1) / 2);
    for k in 0..n {
        packed.extend_from_slice(&a[k * n..=k * n + k]);
    }
    packed
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

/// One tracing problem with spans as sorted position lists.
#[derive(Debug, Clone)]
pub(crate) struct ListCase {
    pub(crate) n: usize,
    pub(crate) a: Vec<f64>,
    /// A non-empty subset of an early block `0..b` (`1 <= b < N`).
    pub(crate) question: Vec<usize>,
    /// A non-empty subset of the tokens after the last question token.
    pub(crate) answer: Vec<usize>,
    /// Every answer token plus a random subset of all tokens.
    pub(crate) response: Vec<usize>,
}

/// Cases for spans given as lists: N in 1..=max_n, matrices as in [`case`]. For N >= 2 the
/// spans are valid by construction; N = 1 cannot hold an answer after the question, so its
/// spans are `[0]` for all three (rejected: the answer does not come after the question).
pub(crate) fn list_case(max_n: usize) -> impl Strategy<Value = ListCase> {
    use prop::sample::Index;
    (1..=max_n)
        .prop_flat_map(|n| {
            let raw = prop::collection::vec(prop_oneof![3 => 0.01f64..1.0, 1 => Just(0.0)], n * n);
            let mass = prop::collection::vec(prop_oneof![3 => Just(1.0), 1 => 0.5f64..1.0], n);
            let masks = prop::collection::vec(any::<bool>(), 3 * n);
            let picks = (any::<Index>(), any::<Index>(), any::<Index>());
            (Just(n), raw, mass, masks, picks)
        })
        .prop_map(|(n, mut raw, mass, masks, (block, q_pick, a_pick))| {
            for k in 0..n {
                raw[k * n + k] += 0.05;
            }
            let a = stochastic(n, &raw, &mass);
            if n == 1 {
                return ListCase {
                    n,
                    a,
                    question: vec![0],
                    answer: vec![0],
                    response: vec![0],
                };
            }
            let block = 1 + block.index(n - 1);
            let forced_q = q_pick.index(block);
            let question: Vec<usize> = (0..block).filter(|&i| masks[i] || i == forced_q).collect();
            let q_end = question[question.len() - 1] + 1;
            let forced_a = q_end + a_pick.index(n - q_end);
            let answer: Vec<usize> = (q_end..n)
                .filter(|&i| masks[n + i] || i == forced_a)
                .collect();
            let response: Vec<usize> = (0..n)
                .filter(|&i| masks[2 * n + i] || answer.contains(&i))
                .collect();
            ListCase {
                n,
                a,
                question,
                answer,
                response,
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
