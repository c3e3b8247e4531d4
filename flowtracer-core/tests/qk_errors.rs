//! The Q/K stage (method §15) on bad input: every defect is a typed error, reported in the
//! order of method §15 (shape and configuration, spans, the first non-finite value by layer,
//! tensor and flat position, then the first bad row), and never a panic.

use flowtracer_core::qk::{QkAccumulator, QkConfig, QkLayer, QkShape, sequence_from_qk};
use flowtracer_core::{Error, Position, QkTensor, Sequence, Span, Spans};
use half::f16;

use crate::common::*;

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

/// `QkShape::check_lengths`, the one length check every front door uses: each buffer
/// against its own length, `Q` before `K` before the log-sum-exp, and no LSE is no check.
#[test]
fn check_lengths_names_the_first_wrong_buffer() {
    let shape = QkShape::new(6, 3, 5, 4);
    let (q, k, lse) = (6 * 5 * 4, 3 * 5 * 4, 6 * 5);
    assert_eq!(shape.check_lengths(q, k, Some(lse)), Ok(()));
    assert_eq!(shape.check_lengths(q, k, None), Ok(()));
    let mismatch = |what, expected, actual| {
        Err(Error::ShapeMismatch {
            what,
            expected,
            actual,
        })
    };
    assert_eq!(
        shape.check_lengths(q + 1, k - 1, Some(0)),
        mismatch("queries", q, q + 1)
    );
    assert_eq!(
        shape.check_lengths(q, k - 1, Some(0)),
        mismatch("keys", k, k - 1)
    );
    assert_eq!(
        shape.check_lengths(q, k, Some(lse + 1)),
        mismatch("log-sum-exp", lse, lse + 1)
    );
    // K sized as if it had H_q heads (no grouping) is refused.
    assert_eq!(shape.check_lengths(q, q, None), mismatch("keys", k, q));
}
