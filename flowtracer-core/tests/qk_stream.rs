//! Mode (b) of the Q/K stage (method §15): `Tracer::trace_qk` recomputes row blocks of `Ā`
//! inside the two passes. Checked bit for bit against mode (a) (`QkSequence::materialise`
//! traced by the existing path: the same row kernel, the same sum order, so the same `Ā`
//! rows and the same trace, `==`), against the f64 oracle `reference::attention_from_qk_capped`
//! traced by `reference::trace` (tolerances of `common`, as in `qk.rs`), and for the order
//! of its errors.
//!
//! Sizes reach past `STREAM_ROWS` so that the producer's blocks turn over in both
//! directions, and the spans are drawn anywhere (rows after the answer are produced for the
//! checks only).

use flowtracer_core::qk::{
    QkConfig, QkInput, QkLayer, QkSequence, QkShape, STREAM_ROWS, sequence_from_qk,
};
use flowtracer_core::{
    AnswerMode, Config, Error, FlowFloat, QkTensor, Spans, Trace, TraceConfig, Tracer, reference,
};
use half::f16;
use proptest::prelude::*;

use crate::common::*;
use crate::qk::{QkCase, qk_case, qk_case_in};

/// Spans from three fractions of the valid tokens `pad..N`: question `q0..q1`, answer
/// `a0..a1` after it; `None` when fewer than two valid tokens.
fn spans_at(n: usize, pad: usize, (x, y, z): (f64, f64, f64)) -> Option<Spans> {
    let valid = n.checked_sub(pad).filter(|&v| v >= 2)?;
    let at = |f: f64, lo: usize, hi: usize| lo + ((hi - lo) as f64 * f) as usize;
    let q1 = at(x, pad + 1, pad + valid); // question pad..q1, q1 in pad+1..n-1
    let q0 = at(y, pad, q1 - 1).min(q1 - 1);
    let a0 = at(z, q1, n - 1).min(n - 1);
    let a1 = at(1.0 - z, a0 + 1, n).max(a0 + 1).min(n);
    Some(Spans::new(q0..q1, a0..a1))
}

/// Runs mode (b) and mode (a) on the case's values in `T` (LSE rounded to f32) with
/// `spans`, and the oracle on the same values widened back to f64.
fn check_modes<T: QkInput, F: FlowFloat>(
    c: &QkCase,
    conv: impl Fn(f64) -> T,
    back: impl Fn(T) -> f64,
    spans: Option<Spans>,
    trace_config: TraceConfig,
    (abs, rel): (f64, f64),
) -> Result<(), TestCaseError> {
    let q: Vec<T> = c.q.iter().map(|&x| conv(x)).collect();
    let k: Vec<T> = c.k.iter().map(|&x| conv(x)).collect();
    let qw: Vec<f64> = q.iter().map(|&x| back(x)).collect();
    let kw: Vec<f64> = k.iter().map(|&x| back(x)).collect();
    let lse32: Vec<f32> = c.lse(&qw, &kw).iter().map(|&x| x as f32).collect();
    let lse64: Vec<f64> = lse32.iter().map(|&x| f64::from(x)).collect();
    let shape = c.shape();
    let (ql, kl, ll) = (shape.q_len(), shape.k_len(), shape.lse_len());
    let layers: Vec<QkLayer<'_, T>> = (0..c.layers)
        .map(|l| {
            let layer = QkLayer::new(l, &q[l * ql..][..ql], &k[l * kl..][..kl]);
            if c.with_lse {
                layer.with_lse(&lse32[l * ll..][..ll])
            } else {
                layer
            }
        })
        .collect();
    let mask = c.mask();
    let spans_ok = spans.is_some();
    let spans = spans.unwrap_or_else(|| Spans::new(0..1, 0..1));
    let mut tracer = Tracer::new(Config::default().with_trace(trace_config)).unwrap();
    // Mode (a) through the one-call entry, then traced by the existing path.
    let a = sequence_from_qk::<T, F>(&layers, shape, &c.config(), mask.as_deref(), spans.clone());
    let seq = match QkSequence::new(&layers, shape, &c.config(), mask.as_deref(), spans) {
        Ok(seq) => seq,
        Err(e) => {
            prop_assert_eq!(Err(e.clone()), a.map(|_| ()));
            prop_assert!(!spans_ok, "unexpected {:?}", e);
            return Ok(());
        }
    };
    prop_assert_eq!(seq.layers().len(), c.layers);
    // materialise is mode (a).
    let seq_a = a.map_err(|e| TestCaseError::fail(format!("mode (a): {e:?}")))?;
    let materialised = seq.materialise::<F>();
    prop_assert_eq!(materialised.as_ref(), Ok(&seq_a));
    // Mode (b): the same trace (or error), bit for bit.
    let trace_a = tracer.trace(&seq_a);
    let b: Result<Trace<F>, Error> = tracer.trace_qk(&seq);
    prop_assert_eq!(&b, &trace_a);
    if let Err(e) = b {
        // No question token reaches the answer: nothing to compare with the oracle.
        prop_assert_eq!(e, Error::NoSourceMass);
        return Ok(());
    }
    // Against the oracle.
    let want = reference::attention_from_qk_capped(
        &qw,
        &kw,
        c.with_lse.then_some(&lse64[..]),
        (c.layers, c.q_heads, c.kv_heads),
        c.n,
        c.d,
        (c.scale_value(), c.softcap),
        c.window,
        mask.as_deref(),
    );
    let naive = reference::trace(
        &want,
        c.n,
        &seq_a.question().iter().collect::<Vec<_>>(),
        &seq_a.answer().iter().collect::<Vec<_>>(),
        trace_config.answer_mode,
        0.0,
    );
    let t = b.unwrap();
    for (what, got, want) in [("h", t.reach(), &naive.h), ("f", t.flow(), &naive.f)] {
        for (i, (x, &y)) in got.iter().zip(want.iter()).enumerate() {
            let x = x.widen();
            prop_assert!(close(x, y, abs, rel), "{}[{}]: {} vs {}", what, i, x, y);
        }
    }
    Ok(())
}

/// [`check_modes`] with spans at `fractions` and the answer mode `relay` picks.
fn check_or_no_source<T: QkInput, F: FlowFloat>(
    c: &QkCase,
    conv: impl Fn(f64) -> T,
    back: impl Fn(T) -> f64,
    fractions: (f64, f64, f64),
    relay: bool,
    tol: (f64, f64),
) -> Result<(), TestCaseError> {
    let spans = spans_at(c.n, c.pad.unwrap_or(0), fractions);
    let mode = if relay {
        AnswerMode::Relay
    } else {
        AnswerMode::Absorbing
    };
    let config = TraceConfig::default().with_answer_mode(mode);
    check_modes::<T, F>(c, conv, back, spans, config, tol)
}

fn fractions() -> impl Strategy<Value = (f64, f64, f64)> {
    (0.0f64..1.0, 0.0f64..1.0, 0.0f64..1.0)
}

proptest! {
    #[test]
    fn stream_equals_materialised_and_oracle_f64(
        c in qk_case(19), s in fractions(), relay in any::<bool>()
    ) {
        check_or_no_source::<f64, f64>(&c, |x| x, |x| x, s, relay, (F64_ABS, F64_REL))?;
    }

    #[test]
    fn stream_equals_materialised_and_oracle_f32(
        c in qk_case(19), s in fractions(), relay in any::<bool>()
    ) {
        check_or_no_source::<f32, f32>(&c, |x| x as f32, f64::from, s, relay, (F32_ABS, F32_REL))?;
    }

    #[test]
    fn stream_f16_input(c in qk_case(13), s in fractions()) {
        check_or_no_source::<f16, f32>(&c, f16::from_f64, f16::to_f64, s, false, (F32_ABS, F32_REL))?;
    }

    /// Past STREAM_ROWS: the producer's blocks turn over in both passes.
    #[test]
    fn stream_long_sequences(
        c in qk_case_in(STREAM_ROWS - 3..=2 * STREAM_ROWS + 13), s in fractions(),
        relay in any::<bool>()
    ) {
        check_or_no_source::<f32, f32>(&c, |x| x as f32, f64::from, s, relay, (F32_ABS, F32_REL))?;
    }
}

/// N = 1, d = 1, and sizes on each side of the producer's and the tiles' block edges.
#[test]
fn stream_block_edges() {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0
    };
    for n in [
        1,
        2,
        3,
        5,
        STREAM_ROWS - 1,
        STREAM_ROWS,
        STREAM_ROWS + 1,
        2 * STREAM_ROWS + 3,
    ] {
        for (q_heads, kv_heads, d) in [(1, 1, 1), (4, 2, 3), (3, 1, 2)] {
            let c = QkCase {
                layers: 2,
                q_heads,
                kv_heads,
                n,
                d,
                q: (0..2 * q_heads * n * d).map(|_| next()).collect(),
                k: (0..2 * kv_heads * n * d).map(|_| next()).collect(),
                window: (n % 2 == 1).then_some(7),
                pad: (n > 3).then_some(2),
                with_lse: n % 3 != 0,
                scale: None,
                softcap: None,
            };
            for s in [(0.0, 0.0, 1.0), (0.3, 0.5, 0.2), (0.9, 0.1, 0.0)] {
                check_or_no_source::<f64, f64>(&c, |x| x, |x| x, s, false, (F64_ABS, F64_REL))
                    .unwrap_or_else(|e| panic!("n = {n}, heads {q_heads}/{kv_heads}: {e}"));
            }
        }
    }
}

/// Two layers of one head over N = 3 · STREAM_ROWS tokens, `d = 2`, with their exact
/// log-sum-exp (f32).
struct LseCase {
    n: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    lse: Vec<f32>,
}

impl LseCase {
    fn new() -> Self {
        let c = QkCase {
            layers: 2,
            q_heads: 2,
            kv_heads: 1,
            n: 3 * STREAM_ROWS,
            d: 2,
            q: (0..2 * 2 * 3 * STREAM_ROWS * 2)
                .map(|i| ((i * 37 % 101) as f64 / 50.0) - 1.0)
                .collect(),
            k: (0..2 * 3 * STREAM_ROWS * 2)
                .map(|i| ((i * 53 % 97) as f64 / 48.0) - 1.0)
                .collect(),
            window: None,
            pad: None,
            with_lse: true,
            scale: None,
            softcap: None,
        };
        let q = to_f32(&c.q);
        let k = to_f32(&c.k);
        let lse = c.lse(&widen(&q), &widen(&k));
        Self {
            n: c.n,
            q,
            k,
            lse: to_f32(&lse),
        }
    }

    /// Both modes on the case with `lse` (layer-major `[2][2][N]`), with its errors.
    fn errors(&self, lse: &[f32]) -> (Result<(), Error>, Result<(), Error>) {
        let n = self.n;
        let shape = QkShape::new(2, 1, n, 2);
        let (ql, kl, ll) = (shape.q_len(), shape.k_len(), shape.lse_len());
        let layers: Vec<QkLayer<'_, f32>> = (0..2)
            .map(|l| {
                QkLayer::new(l, &self.q[l * ql..][..ql], &self.k[l * kl..][..kl])
                    .with_lse(&lse[l * ll..][..ll])
            })
            .collect();
        let spans = Spans::new(0..4, n - 3..n - 1);
        let config = QkConfig::default();
        let a = sequence_from_qk::<f32, f32>(&layers, shape, &config, None, spans.clone())
            .and_then(|s| flowtracer_core::trace(&s).map(|_| ()));
        let b = QkSequence::new(&layers, shape, &config, None, spans)
            .and_then(|s| Tracer::default().trace_qk::<f32, f32>(&s).map(|_| ()));
        (a, b)
    }
}

/// A log-sum-exp that does not belong in a high row (met first by the backward pass,
/// which goes down) and in a low row: the low one is reported, by both modes, and a bad
/// row of a lower layer wins over a lower row of a higher layer. The bad rows are far
/// too heavy (mass e^5), so `Ā` itself would fail the trace's row check too: the Q/K
/// error comes first.
#[test]
fn stream_reports_the_lowest_bad_row() {
    let case = LseCase::new();
    let n = case.n;
    assert_eq!(case.errors(&case.lse), (Ok(()), Ok(())));
    let at = |layer: usize, head: usize, row: usize| (layer * 2 + head) * n + row;
    let mut lse = case.lse.clone();
    lse[at(0, 1, n - 5)] -= 5.0;
    lse[at(0, 1, 20)] -= 5.0;
    lse[at(1, 0, 3)] += 3.0;
    let (a, b) = case.errors(&lse);
    assert_eq!(a, b);
    match b {
        Err(Error::LseMismatch {
            layer: 0,
            head: 1,
            row: 20,
            mass,
            ..
        }) => assert!((mass - 5f64.exp()).abs() < 1e-3 * 5f64.exp(), "{mass}"),
        other => panic!("{other:?}"),
    }
    // Only the higher layer's: that one (too light, e^-3).
    let mut lse = case.lse.clone();
    lse[at(1, 0, 3)] += 3.0;
    lse[at(1, 1, 2 * STREAM_ROWS + 1)] += 3.0;
    let (a, b) = case.errors(&lse);
    assert_eq!(a, b);
    assert!(
        matches!(
            b,
            Err(Error::LseMismatch {
                layer: 1,
                head: 0,
                row: 3,
                ..
            })
        ),
        "{b:?}"
    );
    // A non-finite value anywhere comes first (layers ascending, Q, K, LSE): here the LSE
    // of layer 0 before a bad row.
    let mut lse = case.lse.clone();
    lse[at(0, 1, 20)] -= 5.0;
    lse[at(0, 0, n - 1)] = f32::NAN;
    let (a, b) = case.errors(&lse);
    assert_eq!(a, b);
    match b {
        Err(Error::NonFiniteInput {
            tensor: QkTensor::LogSumExp,
            position,
        }) => assert_eq!(
            (position.layer, position.head, position.row, position.col),
            (Some(0), Some(0), n - 1, 0)
        ),
        other => panic!("{other:?}"),
    }
}
