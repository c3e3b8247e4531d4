//! The Q/K stage (method §15) against the naive f64 oracle `reference::attention_from_qk`:
//! a hand-computed N = 3 case, the exponential's error bound, properties (GQA, MQA, window,
//! LSE given vs computed, padding, N = 1, d = 1, odd block boundaries), layer-at-a-time
//! accumulation, and every bad input as a typed error in the order of method §15.
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
    AnswerMode, Error, FlowFloat, Position, QkTensor, Sequence, Span, Spans, TraceConfig,
    reference, trace,
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
struct QkCase {
    layers: usize,
    q_heads: usize,
    kv_heads: usize,
    n: usize,
    d: usize,
    q: Vec<f64>,
    k: Vec<f64>,
    window: Option<usize>,
    /// Left padding: keys `0..pad` are invalid (`None`: no mask).
    pad: Option<usize>,
    with_lse: bool,
    scale: Option<f64>,
    /// Gemma 2's logit soft-capping.
    softcap: Option<f64>,
}

impl QkCase {
    fn shape(&self) -> QkShape {
        QkShape::new(self.q_heads, self.kv_heads, self.n, self.d)
    }

    fn config(&self) -> QkConfig {
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

    fn mask(&self) -> Option<Vec<bool>> {
        self.pad.map(|p| (0..self.n).map(|i| i >= p).collect())
    }

    fn scale_value(&self) -> f64 {
        self.scale.unwrap_or(1.0 / (self.d as f64).sqrt())
    }

    /// The log-sum-exp of every (layer, head, row) over its visible keys, in f64, for the
    /// given (already rounded) values; 0 for a row that sees no key.
    fn lse(&self, q: &[f64], k: &[f64]) -> Vec<f64> {
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
    fn spans(&self) -> Option<Spans> {
        let first = self.pad.unwrap_or(0);
        (first + 1 < self.n).then(|| Spans::new(first..first + 1, self.n - 1..self.n))
    }
}

fn qk_case(max_n: usize) -> impl Strategy<Value = QkCase> {
    (
        1..=2usize,
        1..=3usize,
        1..=3usize,
        1..=max_n,
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

// ---------------------------------------------------------------------------------------
// Bad input: typed errors, in the order of method §15.

fn one_layer(
    shape: QkShape,
    q: &[f64],
    k: &[f64],
    lse: Option<&[f32]>,
    config: QkConfig,
    spans: Spans,
) -> Result<Sequence<'static, f64>, Error> {
    let mut layer = QkLayer::new(0, q, k);
    if let Some(l) = lse {
        layer = layer.with_lse(l);
    }
    sequence_from_qk(&[layer], shape, &config, None, spans)
}

fn spans() -> Spans {
    Spans::new(0..1, 2..3)
}

#[test]
fn shapes_and_config() {
    let ok = QkShape::new(2, 1, 3, 2);
    let (q, k) = (vec![0.5; 12], vec![0.25; 6]);
    let cfg = QkConfig::default();
    assert!(one_layer(ok, &q, &k, None, cfg, spans()).is_ok());
    let err = |shape, q: &[f64], k: &[f64], lse, config| {
        one_layer(shape, q, k, lse, config, spans()).unwrap_err()
    };
    assert_eq!(
        err(QkShape::new(2, 1, 0, 2), &[], &[], None, cfg),
        Error::EmptySequence
    );
    assert_eq!(
        err(QkShape::new(0, 1, 3, 2), &[], &k, None, cfg),
        Error::ZeroDimension {
            what: "query heads"
        }
    );
    assert_eq!(
        err(QkShape::new(2, 0, 3, 2), &q, &[], None, cfg),
        Error::ZeroDimension {
            what: "key/value heads"
        }
    );
    assert_eq!(
        err(QkShape::new(2, 1, 3, 0), &[], &[], None, cfg),
        Error::ZeroDimension {
            what: "head dimensions (d)"
        }
    );
    assert_eq!(
        err(QkShape::new(3, 2, 3, 2), &[0.0; 18], &[0.0; 12], None, cfg),
        Error::HeadsNotGrouped {
            q_heads: 3,
            kv_heads: 2
        }
    );
    // Boundary: H_q = H_kv and H_kv = 1 are fine.
    assert!(one_layer(QkShape::new(2, 2, 3, 2), &q, &q, None, cfg, spans()).is_ok());
    assert_eq!(
        err(ok, &q[..11], &k, None, cfg),
        Error::ShapeMismatch {
            what: "queries",
            expected: 12,
            actual: 11
        }
    );
    assert_eq!(
        err(ok, &q, &q, None, cfg),
        Error::ShapeMismatch {
            what: "keys",
            expected: 6,
            actual: 12
        }
    );
    assert_eq!(
        err(ok, &q, &k, Some(&[0.0; 5]), cfg),
        Error::ShapeMismatch {
            what: "log-sum-exp",
            expected: 6,
            actual: 5
        }
    );
    // Configuration: after the dimensions, before the buffers.
    for (config, field) in [
        (cfg.with_scale(0.0), "scale"),
        (cfg.with_scale(f64::NAN), "scale"),
        (cfg.with_scale(-1.0), "scale"),
        (cfg.with_window(0), "window"),
        (cfg.with_row_tolerance(-1e-9), "row_tolerance"),
        (cfg.with_logit_softcap(0.0), "logit_softcap"),
        (cfg.with_logit_softcap(f64::INFINITY), "logit_softcap"),
        (cfg.with_attention_sinks(true), "attention_sinks"),
        (cfg.with_alibi(true), "alibi"),
    ] {
        match err(ok, &q, &k, None, config) {
            Error::InvalidConfig { field: f, .. } => assert_eq!(f, field),
            e => panic!("{field}: {e:?}"),
        }
    }
    // Boundaries of the config: window 1 and row tolerance 0 are valid.
    assert!(
        one_layer(
            ok,
            &q,
            &k,
            None,
            cfg.with_window(1).with_row_tolerance(0.0),
            spans()
        )
        .is_ok()
    );
    // The mask's length.
    assert_eq!(
        sequence_from_qk::<f64, f64>(
            &[QkLayer::new(0, &q, &k)],
            ok,
            &cfg,
            Some(&[true; 2]),
            spans()
        )
        .unwrap_err(),
        Error::ShapeMismatch {
            what: "key mask",
            expected: 3,
            actual: 2
        }
    );
    // No layer at all.
    assert_eq!(
        sequence_from_qk::<f64, f64>(&[], ok, &cfg, None, spans()).unwrap_err(),
        Error::ZeroDimension { what: "layers" }
    );
    assert_eq!(
        QkAccumulator::<f32>::new(ok, cfg, None)
            .unwrap()
            .finish(spans())
            .unwrap_err(),
        Error::ZeroDimension { what: "layers" }
    );
    // An N whose N x N cannot be allocated is an error, not an abort.
    for n in [usize::MAX / 2, 1 << 40] {
        match QkAccumulator::<f64>::new(QkShape::new(1, 1, n, 1), cfg, None) {
            Err(Error::OutOfMemory { bytes, .. }) => assert!(bytes >= 1 << 40),
            other => panic!("{n}: {other:?}"),
        }
    }
    // Messages name the problem.
    assert!(
        err(ok, &q, &k, None, cfg.with_attention_sinks(true))
            .to_string()
            .contains("gpt-oss")
    );
    assert!(one_layer(ok, &q, &k, None, cfg.with_logit_softcap(50.0), spans()).is_ok());
}

#[test]
fn spans_come_after_shapes_and_before_data() {
    let shape = QkShape::new(1, 1, 3, 1);
    let q = [f64::NAN, 0.0, 0.0];
    let k = [0.0; 3];
    assert_eq!(
        one_layer(
            shape,
            &q,
            &k,
            None,
            QkConfig::default(),
            Spans::new(0..1, 3..4)
        )
        .unwrap_err(),
        Error::SpanOutOfRange {
            span: Span::Answer,
            range: 3..4,
            n: 3
        }
    );
    // A shape error wins over the spans.
    assert_eq!(
        one_layer(
            shape,
            &q[..2],
            &k,
            None,
            QkConfig::default(),
            Spans::new(0..1, 3..4)
        )
        .unwrap_err(),
        Error::ShapeMismatch {
            what: "queries",
            expected: 3,
            actual: 2
        }
    );
}

/// A layer's index, Q, K and LSE.
type LayerData = (usize, Vec<f64>, Vec<f64>, Vec<f32>);

/// The first non-finite value: layers ascending, then Q, K, LSE, each in flat order.
#[test]
fn first_non_finite_value_and_its_position() {
    let shape = QkShape::new(2, 1, 3, 2);
    let good = (vec![0.5f64; 12], vec![0.25f64; 6], vec![1.0f32; 6]);
    let pos = |layer, head, row, col| Position {
        layer: Some(layer),
        head: Some(head),
        row,
        col,
    };
    let run = |layers: &[LayerData]| {
        let ls: Vec<QkLayer<'_, f64>> = layers
            .iter()
            .map(|(i, q, k, l)| QkLayer::new(*i, q, k).with_lse(l))
            .collect();
        sequence_from_qk::<f64, f64>(&ls, shape, &QkConfig::default(), None, spans()).unwrap_err()
    };
    // Q at head 1, row 2, column 1 (flat 11); K earlier in flat order does not win.
    let mut q = good.0.clone();
    q[11] = f64::INFINITY;
    let mut k = good.1.clone();
    k[0] = f64::NAN;
    let mut lse = good.2.clone();
    lse[0] = f32::NAN;
    assert_eq!(
        run(&[(0, q.clone(), k.clone(), lse.clone())]),
        Error::NonFiniteInput {
            tensor: QkTensor::Query,
            position: pos(0, 1, 2, 1)
        }
    );
    assert_eq!(
        run(&[(0, good.0.clone(), k.clone(), lse.clone())]),
        Error::NonFiniteInput {
            tensor: QkTensor::Key,
            position: pos(0, 0, 0, 0)
        }
    );
    let mut lse4 = good.2.clone();
    lse4[4] = f32::NEG_INFINITY;
    assert_eq!(
        run(&[(0, good.0.clone(), good.1.clone(), lse4.clone())]),
        Error::NonFiniteInput {
            tensor: QkTensor::LogSumExp,
            position: pos(0, 1, 1, 0)
        }
    );
    // Layers ascending, whatever order they are given in: layer 3's LSE beats layer 5's Q.
    assert_eq!(
        run(&[
            (5, q.clone(), good.1.clone(), good.2.clone()),
            (3, good.0.clone(), good.1.clone(), lse4.clone())
        ]),
        Error::NonFiniteInput {
            tensor: QkTensor::LogSumExp,
            position: pos(3, 1, 1, 0)
        }
    );
    // The layer-at-a-time accumulator keeps the order across calls, and a non-finite
    // value of a later call wins over a bad row (an LSE that does not belong) of an
    // earlier one.
    let mut acc = QkAccumulator::<f64>::new(shape, QkConfig::default(), None).unwrap();
    let wrong_lse = vec![5.0f32; 6];
    acc.add_layer(&QkLayer::new(0, &good.0, &good.1).with_lse(&wrong_lse))
        .unwrap();
    acc.add_layer(&QkLayer::new(1, &q, &good.1)).unwrap();
    assert_eq!(
        acc.finish(spans()).unwrap_err(),
        Error::NonFiniteInput {
            tensor: QkTensor::Query,
            position: pos(1, 1, 2, 1)
        }
    );
    // f16 input: an infinity of the half type is found the same way.
    let mut qh = vec![f16::from_f32(0.5); 12];
    qh[7] = f16::INFINITY;
    let kh = vec![f16::from_f32(0.25); 6];
    assert_eq!(
        sequence_from_qk::<f16, f32>(
            &[QkLayer::new(2, &qh, &kh)],
            shape,
            &QkConfig::default(),
            None,
            spans()
        )
        .unwrap_err(),
        Error::NonFiniteInput {
            tensor: QkTensor::Query,
            position: pos(2, 1, 0, 1)
        }
    );
}

/// An LSE that does not belong: too large (rows sum below 1) or too small (above 1), the
/// first bad row by (layer, head, row); the boundary of the tolerance.
#[test]
fn lse_that_does_not_belong() {
    let shape = QkShape::new(1, 1, 3, 1);
    let q = [1.0f64; 3];
    let k = [0.0, 2f64.ln(), 3f64.ln()];
    let cfg = QkConfig::default().with_scale(1.0);
    let true_lse = [0.0f64, 3f64.ln(), 6f64.ln()];
    for (delta, row) in [
        (0.01f64, 1usize),
        (-0.01, 1),
        (0.5, 2),
        (-50.0, 2),
        (1e6, 1),
    ] {
        let mut lse: Vec<f32> = true_lse.iter().map(|&x| x as f32).collect();
        lse[row] = (true_lse[row] + delta) as f32;
        match one_layer(shape, &q, &k, Some(&lse), cfg, spans()).unwrap_err() {
            Error::LseMismatch {
                layer: 0,
                head: 0,
                row: r,
                mass,
                tolerance,
            } => {
                assert_eq!(r, row);
                assert_eq!(tolerance, 1e-3);
                assert!(
                    close(
                        mass,
                        (-f64::from(lse[row]) + true_lse[row]).exp(),
                        1e-6,
                        1e-5
                    ) || delta < -40.0,
                    "{mass}"
                );
                assert!(if delta > 0.0 { mass < 1.0 } else { mass > 1.0 });
            }
            e => panic!("{delta}: {e:?}"),
        }
    }
    // Boundary: a mass 1 ± (tolerance / 2) passes, 1 ± 2 tolerance fails.
    for (delta, ok) in [
        (5e-4f64, true),
        (-5e-4, true),
        (2e-3, false),
        (-2e-3, false),
    ] {
        let lse: Vec<f32> = true_lse.iter().map(|&x| (x + delta) as f32).collect();
        assert_eq!(
            one_layer(shape, &q, &k, Some(&lse), cfg, spans()).is_ok(),
            ok,
            "{delta}"
        );
    }
}

#[test]
fn logits_that_overflow() {
    let shape = QkShape::new(1, 1, 3, 2);
    // Finite in f32, but q·k is not.
    let q = [1e30f32, 1e30, 1.0, 1.0, 1.0, 1.0];
    let k = [1e30f32, 1e30, 1.0, 1.0, 1.0, 1.0];
    let err = sequence_from_qk::<f32, f32>(
        &[QkLayer::new(4, &q, &k)],
        shape,
        &QkConfig::default(),
        None,
        spans(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        Error::LogitsOverflow {
            layer: 4,
            head: 0,
            row: 0
        }
    );
    // The same values in f64 are fine (f64 products for f64 input).
    let q64: Vec<f64> = q.iter().map(|&x| f64::from(x)).collect();
    assert!(one_layer(shape, &q64, &q64, None, QkConfig::default(), spans()).is_ok());
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
