//! The Q/K stage (method §15) against the naive f64 oracle `reference::attention_from_qk`:
//! a hand-computed N = 3 case, the exponential's error bound, properties (GQA, MQA, window,
//! LSE given vs computed, padding, N = 1, d = 1, odd block boundaries), layer-at-a-time
//! accumulation, padding and batches (bad input is `qk_errors.rs`).
//!
//! Tolerances are `common`'s, stated once: f64 at `F64_ABS + F64_REL |y|` (1e-10), f32
//! arithmetic (f32, f16 and bf16 input) at `F32_ABS + F32_REL |y|` against the f64 oracle on
//! the same (rounded) values, for `Ā`, `h` and `f`.

use flowtracer_core::qk::{
    EXP_F32_MAX_REL_ERROR, EXP_F32_RANGE, EXP_F64_MAX_REL_ERROR, EXP_F64_RANGE, KEY_BLOCK,
    QkAccumulator, QkConfig, QkInput, QkLayer, QkShape, ROW_BLOCK, exp_f32, exp_f64,
    sequence_from_qk, split_ragged, split_ragged_lse,
};
use flowtracer_core::{
    AnswerMode, Error, FlowFloat, Sequence, Spans, TraceConfig, reference, trace,
};
use half::{bf16, f16};
use proptest::prelude::*;

use crate::common::*;

// ---------------------------------------------------------------------------------------
// The exponential.

/// f32 inputs spread over `[lo, hi]`: an even grid plus every f32 near 0 and near the
/// ends of the accurate range.
fn f32_grid(lo: f32, hi: f32, steps: usize) -> Vec<f32> {
    let mut xs: Vec<f32> = (0..=steps)
        .map(|i| lo + (hi - lo) * (i as f32 / steps as f32))
        .collect();
    for anchor in [
        0.0f32,
        EXP_F32_RANGE.0,
        EXP_F32_RANGE.1,
        -0.346_573_6,
        0.346_573_6,
    ] {
        let b = anchor.to_bits();
        for o in 0..2000u32 {
            xs.push(f32::from_bits(b.wrapping_add(o)));
            xs.push(f32::from_bits(b.wrapping_sub(o)));
        }
    }
    xs.retain(|x| x.is_finite() && *x >= lo && *x <= hi);
    xs
}

#[test]
fn exp_f32_error_bound_over_its_whole_input_range() {
    let (lo, hi) = EXP_F32_RANGE;
    let mut worst = 0.0f64;
    for x in f32_grid(lo, hi, 2_000_000) {
        let want = f64::from(x).exp();
        let got = f64::from(exp_f32(x));
        worst = worst.max((got - want).abs() / want);
    }
    assert!(
        worst <= EXP_F32_MAX_REL_ERROR,
        "exp_f32 relative error {worst:e} > {EXP_F32_MAX_REL_ERROR:e}"
    );
    // Below the range: 0 (including -inf), within exp(lo) of the truth.
    for x in [-87.000_01f32, -100.0, -1e30, f32::NEG_INFINITY] {
        assert_eq!(exp_f32(x), 0.0, "{x}");
        assert!(f64::from(x).exp() <= f64::from(lo).exp());
    }
    // Above the range (only an LSE that does not belong produces it): finite saturation.
    for x in [88.5f32, 1e30, f32::INFINITY] {
        assert_eq!(exp_f32(x), exp_f32(hi), "{x}");
        assert!(exp_f32(x).is_finite());
    }
    println!("exp_f32: worst relative error {worst:e} on [{lo}, {hi}]");
}

#[test]
fn exp_f64_error_bound_over_its_whole_input_range() {
    let (lo, hi) = EXP_F64_RANGE;
    let steps = 2_000_000usize;
    let mut worst = 0.0f64;
    let mut xs: Vec<f64> = (0..=steps)
        .map(|i| lo + (hi - lo) * (i as f64 / steps as f64))
        .collect();
    // Dense near 0, where the stage's arguments concentrate.
    xs.extend((0..=steps).map(|i| -30.0 + 31.0 * (i as f64 / steps as f64)));
    for x in xs {
        let want = x.exp();
        worst = worst.max((exp_f64(x) - want).abs() / want);
    }
    assert!(
        worst <= EXP_F64_MAX_REL_ERROR,
        "exp_f64 relative error {worst:e} > {EXP_F64_MAX_REL_ERROR:e}"
    );
    for x in [-708.000_001, -1e300, f64::NEG_INFINITY] {
        assert_eq!(exp_f64(x), 0.0, "{x}");
    }
    for x in [709.5, f64::INFINITY] {
        assert_eq!(exp_f64(x), exp_f64(hi));
    }
    println!("exp_f64: worst relative error {worst:e} on [{lo}, {hi}]");
}

// ---------------------------------------------------------------------------------------
// By hand.

/// One head, d = 1, scale 1, N = 3: `q = 1`, keys `0, ln 2, ln 3`, so row `k` is
/// proportional to `1, 2, 3` over its keys: `Ā = [1], [1/3, 2/3], [1/6, 2/6, 3/6]`.
/// With `Q = {0}`, `A = {2}`: `h = [5/18, 1/3, 1]`, `f = [1, 2/5, 1]`.
#[test]
fn n3_by_hand() {
    let q = [1.0f64; 3];
    let k = [0.0, 2f64.ln(), 3f64.ln()];
    let lse = [0.0f32, 3f32.ln(), 6f32.ln()];
    let expected_a = [
        1.0,
        0.0,
        0.0,
        1.0 / 3.0,
        2.0 / 3.0,
        0.0,
        1.0 / 6.0,
        2.0 / 6.0,
        3.0 / 6.0,
    ];
    let config = QkConfig::default().with_scale(1.0);
    let shape = QkShape::new(1, 1, 3, 1);
    let spans = || Spans::new(0..1, 2..3);
    for with_lse in [false, true] {
        let mut layer = QkLayer::new(0, &q[..], &k[..]);
        if with_lse {
            layer = layer.with_lse(&lse);
        }
        let seq: Sequence<'_, f64> =
            sequence_from_qk(&[layer], shape, &config, None, spans()).expect("valid input");
        // An LSE rounded to f32 moves p by at most 2 ulp(ln 6) relative.
        let tol = if with_lse { 1e-6 } else { 1e-15 };
        assert_all_close(seq.attention(), &expected_a, tol, 0.0, "Ā");
        let t = trace(&seq).expect("traceable");
        assert_all_close(t.reach(), &[5.0 / 18.0, 1.0 / 3.0, 1.0], tol, 0.0, "h");
        assert_all_close(t.flow(), &[1.0, 0.4, 1.0], tol, 0.0, "f");
    }
    // f32 arithmetic on the same case.
    let (q32, k32) = (to_f32(&q), to_f32(&k));
    let seq: Sequence<'_, f32> = sequence_from_qk(
        &[QkLayer::new(0, &q32[..], &k32[..])],
        shape,
        &config,
        None,
        spans(),
    )
    .expect("valid input");
    assert_all_close(
        &widen(seq.attention()),
        &expected_a,
        F32_ABS,
        F32_REL,
        "Ā f32",
    );
}

// ---------------------------------------------------------------------------------------
// Properties against the oracle.

/// One Q/K problem: values in `[-2, 2]`, optional window, left padding and saved LSE.
#[derive(Debug, Clone)]
pub(crate) struct QkCase {
    pub(crate) layers: usize,
    pub(crate) q_heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) n: usize,
    pub(crate) d: usize,
    pub(crate) q: Vec<f64>,
    pub(crate) k: Vec<f64>,
    pub(crate) window: Option<usize>,
    /// Left padding: keys `0..pad` are invalid (`None`: no mask).
    pub(crate) pad: Option<usize>,
    pub(crate) with_lse: bool,
    pub(crate) scale: Option<f64>,
    /// Gemma 2's logit soft-capping.
    pub(crate) softcap: Option<f64>,
}

impl QkCase {
    pub(crate) fn shape(&self) -> QkShape {
        QkShape::new(self.q_heads, self.kv_heads, self.n, self.d)
    }

    pub(crate) fn config(&self) -> QkConfig {
        let mut c = QkConfig::default();
        if let Some(w) = self.window {
            c = c.with_window(w);
        }
        if let Some(s) = self.scale {
            c = c.with_scale(s);
        }
        if let Some(cap) = self.softcap {
            c = c.with_logit_softcap(cap);
        }
        c
    }

    pub(crate) fn mask(&self) -> Option<Vec<bool>> {
        self.pad.map(|p| (0..self.n).map(|i| i >= p).collect())
    }

    pub(crate) fn scale_value(&self) -> f64 {
        self.scale.unwrap_or(1.0 / (self.d as f64).sqrt())
    }

    /// The log-sum-exp of every (layer, head, row) over its visible keys, in f64, for the
    /// given (already rounded) values; 0 for a row that sees no key.
    pub(crate) fn lse(&self, q: &[f64], k: &[f64]) -> Vec<f64> {
        let (n, d) = (self.n, self.d);
        let group = self.q_heads / self.kv_heads;
        let mask = self.mask();
        let mut out = vec![0.0; self.layers * self.q_heads * n];
        for l in 0..self.layers {
            for h in 0..self.q_heads {
                let g = h / group;
                for row in 0..n {
                    let s: Vec<f64> = (0..=row)
                        .filter(|&i| self.window.is_none_or(|w| row - i < w))
                        .filter(|&i| mask.as_ref().is_none_or(|m| m[i]))
                        .map(|i| {
                            let qr = &q[((l * self.q_heads + h) * n + row) * d..][..d];
                            let kr = &k[((l * self.kv_heads + g) * n + i) * d..][..d];
                            let s = qr.iter().zip(kr).map(|(a, b)| a * b).sum::<f64>()
                                * self.scale_value();
                            self.softcap.map_or(s, |cap| cap * (s / cap).tanh())
                        })
                        .collect();
                    if s.is_empty() {
                        continue;
                    }
                    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    out[(l * self.q_heads + h) * n + row] =
                        m + s.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                }
            }
        }
        out
    }

    /// Runs the stage on the values converted to `T` (and the LSE rounded to f32), and
    /// the oracle on the same values widened back to f64. Returns (stage `Ā`, oracle `Ā`).
    fn run<T: QkInput, F: FlowFloat>(
        &self,
        conv: impl Fn(f64) -> T,
        back: impl Fn(T) -> f64,
    ) -> (Result<Sequence<'static, F>, Error>, Vec<f64>) {
        let q: Vec<T> = self.q.iter().map(|&x| conv(x)).collect();
        let k: Vec<T> = self.k.iter().map(|&x| conv(x)).collect();
        let qw: Vec<f64> = q.iter().map(|&x| back(x)).collect();
        let kw: Vec<f64> = k.iter().map(|&x| back(x)).collect();
        let lse32: Vec<f32> = self.lse(&qw, &kw).iter().map(|&x| x as f32).collect();
        let lse64: Vec<f64> = lse32.iter().map(|&x| f64::from(x)).collect();
        let shape = self.shape();
        let (ql, kl, ll) = (shape.q_len(), shape.k_len(), shape.lse_len());
        let layers: Vec<QkLayer<'_, T>> = (0..self.layers)
            .map(|l| {
                let layer = QkLayer::new(l, &q[l * ql..][..ql], &k[l * kl..][..kl]);
                if self.with_lse {
                    layer.with_lse(&lse32[l * ll..][..ll])
                } else {
                    layer
                }
            })
            .collect();
        let mask = self.mask();
        let spans = self.spans().unwrap_or_else(|| Spans::new(0..1, 0..1));
        let got = sequence_from_qk::<T, F>(&layers, shape, &self.config(), mask.as_deref(), spans);
        let want = reference::attention_from_qk_capped(
            &qw,
            &kw,
            self.with_lse.then_some(&lse64[..]),
            (self.layers, self.q_heads, self.kv_heads),
            self.n,
            self.d,
            (self.scale_value(), self.softcap),
            self.window,
            mask.as_deref(),
        );
        (got, want)
    }

    /// Question: the first valid token; answer: the last token (when they differ).
    pub(crate) fn spans(&self) -> Option<Spans> {
        let first = self.pad.unwrap_or(0);
        (first + 1 < self.n).then(|| Spans::new(first..first + 1, self.n - 1..self.n))
    }
}

pub(crate) fn qk_case(max_n: usize) -> impl Strategy<Value = QkCase> {
    qk_case_in(1..=max_n)
}

/// [`qk_case`] with `N` drawn from `ns`.
pub(crate) fn qk_case_in(ns: core::ops::RangeInclusive<usize>) -> impl Strategy<Value = QkCase> {
    (
        1..=2usize,
        1..=3usize,
        1..=3usize,
        ns,
        1..=9usize,
        prop_oneof![2 => Just(None), 1 => (1..=12usize).prop_map(Some)],
        prop_oneof![2 => Just(None), 1 => (0..=4usize).prop_map(Some)],
        any::<bool>(),
        prop_oneof![3 => Just(None), 1 => (0.05f64..2.0).prop_map(Some)],
        prop_oneof![3 => Just(None), 1 => (0.5f64..30.0).prop_map(Some)],
    )
        .prop_flat_map(
            |(layers, kv_heads, group, n, d, window, pad, with_lse, scale, softcap)| {
                let q_heads = kv_heads * group;
                let pad = pad.map(|p| p.min(n));
                (
                    Just((
                        layers, q_heads, kv_heads, n, d, window, pad, with_lse, scale, softcap,
                    )),
                    prop::collection::vec(-2.0f64..2.0, layers * q_heads * n * d),
                    prop::collection::vec(-2.0f64..2.0, layers * kv_heads * n * d),
                )
            },
        )
        .prop_map(
            |((layers, q_heads, kv_heads, n, d, window, pad, with_lse, scale, softcap), q, k)| {
                QkCase {
                    layers,
                    q_heads,
                    kv_heads,
                    n,
                    d,
                    q,
                    k,
                    window,
                    pad,
                    with_lse,
                    scale,
                    softcap,
                }
            },
        )
}

/// Compares the stage's `Ā`, then `h` and `f` of tracing it, with the oracle's.
fn check_against_oracle<F: FlowFloat>(
    c: &QkCase,
    got: Result<Sequence<'static, F>, Error>,
    want: &[f64],
    (abs, rel): (f64, f64),
) -> Result<(), TestCaseError> {
    let spans_ok = c.spans().is_some();
    let seq = match got {
        Ok(seq) => seq,
        // Spans that cannot be placed (N = 1, or everything padded): only the span error.
        Err(e) if !spans_ok => {
            prop_assert!(
                matches!(e, Error::AnswerNotAfterQuestion { .. }),
                "unexpected {e:?}"
            );
            return Ok(());
        }
        Err(e) => return Err(TestCaseError::fail(format!("{e:?}"))),
    };
    let a: Vec<f64> = seq.attention().iter().map(|x| x.widen()).collect();
    for (i, (&x, &y)) in a.iter().zip(want).enumerate() {
        prop_assert!(close(x, y, abs, rel), "Ā[{i}]: {x} vs {y}");
    }
    let naive = reference::trace(
        want,
        c.n,
        &seq.question().iter().collect::<Vec<_>>(),
        &seq.answer().iter().collect::<Vec<_>>(),
        AnswerMode::Absorbing,
        0.0,
    );
    match trace(&seq) {
        Ok(t) => {
            for (what, got, want) in [("h", t.reach(), &naive.h), ("f", t.flow(), &naive.f)] {
                for (i, (x, &y)) in got.iter().zip(want.iter()).enumerate() {
                    let x = x.widen();
                    prop_assert!(close(x, y, abs, rel), "{what}[{i}]: {x} vs {y}");
                }
            }
        }
        Err(Error::NoSourceMass) => prop_assert_eq!(naive.sources, 0),
        Err(e) => return Err(TestCaseError::fail(format!("trace: {e:?}"))),
    }
    Ok(())
}

proptest! {
    #[test]
    fn f64_equals_oracle(c in qk_case(19)) {
        let (got, want) = c.run::<f64, f64>(|x| x, |x| x);
        check_against_oracle(&c, got, &want, (F64_ABS, F64_REL))?;
    }

    #[test]
    fn f32_equals_oracle(c in qk_case(19)) {
        let (got, want) = c.run::<f32, f32>(|x| x as f32, f64::from);
        check_against_oracle(&c, got, &want, (F32_ABS, F32_REL))?;
    }

    #[test]
    fn f16_and_bf16_equal_oracle_on_their_values(c in qk_case(13)) {
        let (got, want) = c.run::<f16, f32>(f16::from_f64, f16::to_f64);
        check_against_oracle(&c, got, &want, (F32_ABS, F32_REL))?;
        let (got, want) = c.run::<bf16, f32>(bf16::from_f64, bf16::to_f64);
        check_against_oracle(&c, got, &want, (F32_ABS, F32_REL))?;
    }

    /// f64 input stored as f32 `Ā`: the f64 arithmetic rounded once.
    #[test]
    fn f64_input_f32_storage(c in qk_case(11)) {
        let (got, want) = c.run::<f64, f32>(|x| x, |x| x);
        check_against_oracle(&c, got, &want, (F32_ABS, F32_REL))?;
    }

    /// Layers fed one at a time, in any order, give the one-call `Ā` bit for bit when
    /// they come ascending, and within rounding otherwise.
    #[test]
    fn layer_at_a_time_equals_one_call(c in qk_case(13), reverse in any::<bool>()) {
        let shape = c.shape();
        let mask = c.mask();
        let (ql, kl) = (shape.q_len(), shape.k_len());
        let mut acc = QkAccumulator::<f64>::new(shape, c.config(), mask.as_deref()).unwrap();
        let mut order: Vec<usize> = (0..c.layers).collect();
        if reverse {
            order.reverse();
        }
        for &l in &order {
            acc.add_layer(&QkLayer::new(l, &c.q[l * ql..][..ql], &c.k[l * kl..][..kl])).unwrap();
        }
        prop_assert_eq!(acc.layers(), c.layers);
        let streamed = acc.finish_matrix().unwrap();
        let c_no_lse = QkCase { with_lse: false, ..c.clone() };
        let (_, want) = c_no_lse.run::<f64, f64>(|x| x, |x| x);
        for (i, (&x, &y)) in streamed.iter().zip(&want).enumerate() {
            prop_assert!(close(x, y, F64_ABS, F64_REL), "Ā[{}]: {} vs {}", i, x, y);
        }
    }
}

/// Sizes around the tile edges (ROW_BLOCK, KEY_BLOCK and their multiples, plus one) with
/// a window that ends inside a panel, every head grouping at once.
#[test]
fn odd_block_boundaries() {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0
    };
    for n in [
        1,
        ROW_BLOCK - 1,
        ROW_BLOCK + 1,
        KEY_BLOCK - 1,
        KEY_BLOCK,
        KEY_BLOCK + 1,
        2 * KEY_BLOCK + 3,
        37,
    ] {
        for (q_heads, kv_heads) in [(1, 1), (4, 2), (3, 1), (2, 2)] {
            for window in [None, Some(3), Some(KEY_BLOCK + 1)] {
                let d = 3;
                let c = QkCase {
                    layers: 1,
                    q_heads,
                    kv_heads,
                    n,
                    d,
                    q: (0..q_heads * n * d).map(|_| next()).collect(),
                    k: (0..kv_heads * n * d).map(|_| next()).collect(),
                    window,
                    pad: None,
                    with_lse: n % 2 == 0,
                    scale: None,
                    softcap: (n % 3 == 0).then_some(5.0),
                };
                let (got, want) = c.run::<f64, f64>(|x| x, |x| x);
                check_against_oracle(&c, got, &want, (F64_ABS, F64_REL)).unwrap();
            }
        }
    }
}

/// Left padding: padded keys get nothing, padded query rows are zero, and the rest is the
/// softmax over the valid keys only; a window stacks on top.
#[test]
fn padding_mask_by_hand() {
    let shape = QkShape::new(1, 1, 4, 1);
    let q = [1.0f64; 4];
    let k = [7.0, 0.0, 2f64.ln(), 3f64.ln()];
    let mask = [false, true, true, true];
    let cfg = QkConfig::default().with_scale(1.0);
    let seq: Sequence<'_, f64> = sequence_from_qk(
        &[QkLayer::new(0, &q[..], &k[..])],
        shape,
        &cfg,
        Some(&mask),
        Spans::new(1..2, 3..4),
    )
    .unwrap();
    let want = [
        0.0,
        0.0,
        0.0,
        0.0, //
        0.0,
        1.0,
        0.0,
        0.0, //
        0.0,
        1.0 / 3.0,
        2.0 / 3.0,
        0.0, //
        0.0,
        1.0 / 6.0,
        2.0 / 6.0,
        3.0 / 6.0,
    ];
    assert_all_close(seq.attention(), &want, 1e-15, 0.0, "Ā");
    let seq: Sequence<'_, f64> = sequence_from_qk(
        &[QkLayer::new(0, &q[..], &k[..])],
        shape,
        &cfg.with_window(2),
        Some(&mask),
        Spans::new(1..2, 3..4),
    )
    .unwrap();
    let want = [
        0.0,
        0.0,
        0.0,
        0.0, //
        0.0,
        1.0,
        0.0,
        0.0, //
        0.0,
        1.0 / 3.0,
        2.0 / 3.0,
        0.0, //
        0.0,
        0.0,
        2.0 / 5.0,
        3.0 / 5.0,
    ];
    assert_all_close(seq.attention(), &want, 1e-15, 0.0, "Ā window 2");
    // Rows that see no valid key are not checked against a saved LSE.
    let lse = [123.0f32, 0.0, 3f32.ln(), 6f32.ln()];
    assert!(
        sequence_from_qk::<f64, f64>(
            &[QkLayer::new(0, &q[..], &k[..]).with_lse(&lse)],
            shape,
            &cfg,
            Some(&mask),
            Spans::new(1..2, 3..4),
        )
        .is_ok()
    );
}

/// fuzz/regressions/qk/padding-key-logit-overflow: a padding key whose logit overflows in
/// f32 (or is NaN) never counts: no `LogitsOverflow`, and its probability is exactly 0.
#[test]
fn padding_key_never_counts() {
    let shape = QkShape::new(1, 1, 4, 1);
    let q = [3.5f32; 4];
    let k = [3.5f32, -2.5e38, 0.0, 1.0];
    let mask = [true, false, true, true];
    let seq: Sequence<'_, f32> = sequence_from_qk(
        &[QkLayer::new(0, &q[..], &k[..])],
        shape,
        &QkConfig::default().with_scale(3.5),
        Some(&mask),
        Spans::new(0..1, 3..4),
    )
    .unwrap();
    for row in 1..4 {
        assert_eq!(seq.at(row, 1), 0.0);
    }
    let mass: f32 = seq.row(3).iter().sum();
    assert!((mass - 1.0).abs() < 1e-6);
}

/// The stage's `Ā` traces like the same `Ā` given densely (the existing path).
#[test]
fn traces_like_the_dense_path() {
    let c = QkCase {
        layers: 2,
        q_heads: 4,
        kv_heads: 2,
        n: 11,
        d: 5,
        q: (0..2 * 4 * 11 * 5)
            .map(|i| ((i * 37 % 101) as f64 / 50.0) - 1.0)
            .collect(),
        k: (0..2 * 2 * 11 * 5)
            .map(|i| ((i * 53 % 97) as f64 / 48.0) - 1.0)
            .collect(),
        window: None,
        pad: None,
        with_lse: false,
        scale: None,
        softcap: None,
    };
    let (got, want) = c.run::<f64, f64>(|x| x, |x| x);
    let seq = got.unwrap();
    let dense = Sequence::dense(&want, c.spans().unwrap()).unwrap();
    let mut tracer = tracer(TraceConfig::default()).unwrap();
    let (a, b) = (tracer.trace(&seq).unwrap(), tracer.trace(&dense).unwrap());
    assert_all_close(a.flow(), b.flow(), F64_ABS, F64_REL, "f");
    assert_all_close(a.reach(), b.reach(), F64_ABS, F64_REL, "h");
}

/// A ragged batch in FlashAttention's varlen layout (token-major `[total][H][d]`, LSE
/// `[H][total]`) cut by `cu_seqlens` gives, per sequence, exactly the head-major input, so
/// the same `Ā` bit for bit, and the oracle's.
#[test]
fn ragged_batch_equals_each_sequence_alone() {
    let (hq, hkv, d) = (4, 2, 3);
    let lens = [5usize, 1, 7, 0, 2];
    let cu: Vec<usize> = core::iter::once(0)
        .chain(lens.iter().scan(0, |s, &l| {
            *s += l;
            Some(*s)
        }))
        .collect();
    let total = cu[lens.len()];
    let val = |i: usize| ((i * 37 % 101) as f64 / 25.0) - 2.0;
    // Head-major per sequence, generated directly.
    let q_seq: Vec<Vec<f64>> = lens
        .iter()
        .enumerate()
        .map(|(b, &n)| (0..hq * n * d).map(|i| val(i + 1000 * b)).collect())
        .collect();
    let k_seq: Vec<Vec<f64>> = lens
        .iter()
        .enumerate()
        .map(|(b, &n)| (0..hkv * n * d).map(|i| val(i + 7 + 1000 * b)).collect())
        .collect();
    // The same values token-major in one buffer.
    let pack = |seqs: &[Vec<f64>], heads: usize| {
        let mut buf = vec![0.0; total * heads * d];
        for (b, s) in seqs.iter().enumerate() {
            let n = lens[b];
            for h in 0..heads {
                for t in 0..n {
                    for j in 0..d {
                        buf[((cu[b] + t) * heads + h) * d + j] = s[(h * n + t) * d + j];
                    }
                }
            }
        }
        buf
    };
    let (q_buf, k_buf) = (pack(&q_seq, hq), pack(&k_seq, hkv));
    let qs = split_ragged(&q_buf, &cu, hq, d).unwrap();
    let ks = split_ragged(&k_buf, &cu, hkv, d).unwrap();
    assert_eq!(qs, q_seq);
    assert_eq!(ks, k_seq);
    // LSE: [H][total] head-major.
    let lse_buf: Vec<f32> = (0..hq * total).map(|i| i as f32).collect();
    let lses = split_ragged_lse(&lse_buf, &cu, hq).unwrap();
    for (b, l) in lses.iter().enumerate() {
        assert_eq!(l.len(), hq * lens[b]);
        for h in 0..hq {
            for t in 0..lens[b] {
                assert_eq!(l[h * lens[b] + t], lse_buf[h * total + cu[b] + t]);
            }
        }
    }
    for (b, &n) in lens.iter().enumerate() {
        if n < 2 {
            continue;
        }
        let shape = QkShape::new(hq, hkv, n, d);
        let seq: Sequence<'_, f64> = sequence_from_qk(
            &[QkLayer::new(0, &qs[b][..], &ks[b][..])],
            shape,
            &QkConfig::default(),
            None,
            Spans::new(0..1, n - 1..n),
        )
        .unwrap();
        let want = reference::attention_from_qk(
            &q_seq[b],
            &k_seq[b],
            None,
            (1, hq, hkv),
            n,
            d,
            1.0 / (d as f64).sqrt(),
            None,
            None,
        );
        assert_all_close(
            seq.attention(),
            &want,
            F64_ABS,
            F64_REL,
            "Ā of a ragged sequence",
        );
    }
    // Bad offsets and lengths.
    assert_eq!(
        split_ragged(&q_buf, &[1, 2], hq, d),
        Err(Error::BadOffsets { index: 0 })
    );
    assert_eq!(
        split_ragged(&q_buf, &[0, 3, 2], hq, d),
        Err(Error::BadOffsets { index: 2 })
    );
    assert_eq!(
        split_ragged::<f64>(&q_buf, &[], hq, d),
        Err(Error::BadOffsets { index: 0 })
    );
    assert_eq!(
        split_ragged(&q_buf[1..], &cu, hq, d),
        Err(Error::ShapeMismatch {
            what: "ragged queries or keys",
            expected: q_buf.len(),
            actual: q_buf.len() - 1
        })
    );
    assert_eq!(
        split_ragged(&q_buf, &cu, 0, d),
        Err(Error::ZeroDimension { what: "heads" })
    );
    assert_eq!(
        split_ragged_lse(&lse_buf[1..], &cu, hq),
        Err(Error::ShapeMismatch {
            what: "ragged log-sum-exp",
            expected: lse_buf.len(),
            actual: lse_buf.len() - 1
        })
    );
}
