//! Stage-level checks not covered by the worked example: layer streaming, baselines,
//! relay mode, pruning, shaping options, rows longer than the kernels' blocks.

use flowtracer_core::aggregate::{LayerAccumulator, LayerSelection, Layout, aggregate};
use flowtracer_core::baselines::{
    SplitMix64, attention_entropy, attention_received, random_scores, rollout,
};
use flowtracer_core::shaping::{
    ApplyTo, Select, ShapingConfig, num_selected, shape_advantage, token_weights,
};
use flowtracer_core::{AnswerMode, Error, Sequence, Span, Spans, TraceConfig, reference, trace};

use crate::common::*;

#[test]
fn layer_accumulator_equals_aggregate() {
    let (layers, heads, n) = (4, 2, 3);
    let data: Vec<f64> = (0..layers * heads * n * n)
        .map(|x| ((x * 7919) % 13) as f64 / 13.0)
        .collect();
    let per = heads * n * n;
    let mut acc = LayerAccumulator::new(heads, n, Layout::Dense).unwrap();
    for l in 1..3 {
        acc.add_layer(l, &data[l * per..(l + 1) * per]).unwrap();
    }
    assert_eq!(acc.layers(), 2);
    let a = acc.finish().unwrap();
    // A reused buffer (of another size, with stale values) gives the same mean.
    let mut again =
        LayerAccumulator::with_buffer(heads, n, Layout::Dense, vec![7.0; 2 * n * n]).unwrap();
    for l in 1..3 {
        again.add_layer(l, &data[l * per..(l + 1) * per]).unwrap();
    }
    assert_eq!(again.finish().unwrap(), a);
    // L = 4: middle band 1..2 is layer 1 only; ask for 1..3 explicitly.
    let b = aggregate(
        &data,
        layers,
        heads,
        n,
        Layout::Dense,
        &LayerSelection::Range(1..3),
    )
    .unwrap();
    assert_eq!(a, b);
    let acc = LayerAccumulator::<f64>::new(heads, n, Layout::Dense).unwrap();
    assert_eq!(acc.finish(), Err(Error::ZeroDimension { what: "layers" }));
    let mut acc = LayerAccumulator::new(heads, n, Layout::Dense).unwrap();
    assert!(matches!(
        acc.add_layer(0, &data[..5]),
        Err(Error::ShapeMismatch { .. })
    ));
}

/// Six heads (packed: one sweep of four, then two alone) over rows longer than the lanes:
/// the first defect is the lowest `(head, row, col)` of the layer added first, whichever
/// sweep saw it, and the mean equals the naive one within f32 rounding (1e-6 relative).
#[test]
fn layer_accumulator_defects_across_head_sweeps() {
    use flowtracer_core::Position;
    let (heads, n) = (6, 135);
    let m = n * n;
    let layer: Vec<f32> = (0..heads * m)
        .map(|x| ((x * 7919) % 13) as f32 / 64.0)
        .collect();
    let at = |head: usize, row: usize, col: usize| head * m + row * n + col;
    let mut acc = LayerAccumulator::new(heads, n, Layout::Dense).unwrap();
    acc.add_layer(0, &layer).unwrap();
    acc.add_layer(1, &layer).unwrap();
    let mean = acc.finish().unwrap();
    for k in 0..n {
        for i in 0..n {
            let want = if i <= k {
                (0..heads).map(|h| layer[at(h, k, i)]).sum::<f32>() / heads as f32
            } else {
                0.0
            };
            let got = mean[k * n + i];
            assert!(
                (got - want).abs() <= 1e-6 * want.max(1.0),
                "[{k}][{i}] {got} vs {want}"
            );
        }
    }
    let pos = |layer, head, row, col| Position {
        layer: Some(layer),
        head: Some(head),
        row,
        col,
    };
    let mut bad = layer.clone();
    bad[at(5, n - 1, 3)] = f32::NAN; // a head added alone
    bad[at(1, 65, 0)] = -1.0; // in the sweep of four
    bad[at(4, 66, 5)] = f32::INFINITY; // the first non-finite: head 4 before head 5
    bad[at(0, 10, 11)] = 7.0; // above the diagonal: not data
    let mut later = layer.clone();
    later[at(0, 0, 0)] = f32::NAN; // a lower position, but in a layer added later
    // Dense input goes a head at a time, packed input four heads per sweep: both report
    // the same first defect.
    let packed = |x: &[f32]| -> Vec<f32> { x.chunks(m).flat_map(|h| pack(h, n)).collect() };
    for layout in [Layout::Dense, Layout::Packed] {
        let (b, l) = match layout {
            Layout::Dense => (bad.clone(), later.clone()),
            _ => (packed(&bad), packed(&later)),
        };
        let mut acc = LayerAccumulator::new(heads, n, layout).unwrap();
        acc.add_layer(4, &b).unwrap();
        acc.add_layer(2, &l).unwrap();
        assert_eq!(
            acc.finish(),
            Err(Error::NonFinite {
                position: pos(4, 4, 66, 5)
            }),
            "{layout:?}"
        );
    }
    bad[at(4, 66, 5)] = 0.5;
    bad[at(5, n - 1, 3)] = 0.5;
    bad[at(2, 3, 1)] = -2.0; // a lower row, but a later head than the other negative
    bad[at(5, 2, 0)] = -3.0; // a head added alone, later still
    for (layout, b) in [(Layout::Dense, bad.clone()), (Layout::Packed, packed(&bad))] {
        let mut acc = LayerAccumulator::new(heads, n, layout).unwrap();
        acc.add_layer(4, &b).unwrap();
        assert_eq!(
            acc.finish(),
            Err(Error::Negative {
                position: pos(4, 1, 65, 0),
                value: -1.0
            }),
            "{layout:?}"
        );
    }
}

#[test]
fn num_selected_rounding() {
    assert_eq!(num_selected(0.4, 25), 10);
    assert_eq!(num_selected(0.4, 3), 2);
    assert_eq!(num_selected(1.0, 7), 7);
    assert_eq!(num_selected(0.0, 7), 0);
    assert_eq!(num_selected(0.4, 0), 0);
}

#[test]
fn shaping_options() {
    let tau = [1.0, 1.42, 1.39, 0.15, 2.0, 0.0];
    let base = ShapingConfig::default();
    let r = (2..6).into();
    // Token 5 (tau = 0, after the answer) is never picked while positives remain.
    assert_eq!(
        token_weights(&tau, &r, &base).unwrap(),
        [1.0, 1.0, 1.5, 1.0, 1.5, 1.0]
    );
    let bottom = base.with_select(Select::Bottom);
    assert_eq!(
        token_weights(&tau, &r, &bottom).unwrap(),
        [1.0, 1.0, 1.5, 1.5, 1.0, 1.0]
    );
    let half = base.with_mix(0.5);
    assert_eq!(
        token_weights(&tau, &r, &half).unwrap(),
        [1.0, 1.0, 1.25, 1.0, 1.25, 1.0]
    );
    let norm = base.with_normalize_mean(true);
    let w = token_weights(&tau, &r, &norm).unwrap();
    assert_eq!(w, [1.0, 1.0, 1.2, 0.8, 1.2, 0.8]);
    // A list response, tokens 1, 3, 4, 5: two of four are selected, only among them.
    let list = [1usize, 3, 4, 5].into();
    assert_eq!(
        token_weights(&tau, &list, &base).unwrap(),
        [1.0, 1.5, 1.0, 1.0, 1.5, 1.0]
    );
    assert_eq!(
        token_weights(&tau, &list, &bottom).unwrap(),
        [1.0, 1.5, 1.0, 1.5, 1.0, 1.0]
    );
    assert_eq!(
        token_weights(&tau, &list, &norm).unwrap(),
        [1.0, 1.2, 1.0, 0.8, 1.2, 0.8]
    );
    let mut out = [0.0; 3];
    shape_advantage(
        -2.0,
        &[1.0, 1.5, 1.0],
        &base.with_apply_to(ApplyTo::NonnegativeOnly),
        &mut out,
    );
    assert_eq!(out, [-2.0, -2.0, -2.0]);
    shape_advantage(
        2.0,
        &[1.0, 1.5, 1.0],
        &base.with_apply_to(ApplyTo::NonnegativeOnly),
        &mut out,
    );
    assert_eq!(out, [2.0, 3.0, 2.0]);
    assert!(matches!(
        token_weights(&tau, &r, &base.with_rho(1.5)),
        Err(Error::InvalidConfig { field: "rho", .. })
    ));
    // The response is checked against the number of scores.
    assert_eq!(
        token_weights(&tau[..5], &r, &base),
        Err(Error::SpanOutOfRange {
            span: Span::Response,
            range: 2..6,
            n: 5
        })
    );
    assert_eq!(
        token_weights(&tau, &(3..3).into(), &base),
        Err(Error::EmptySpan {
            span: Span::Response
        })
    );
    assert_eq!(
        token_weights(&tau, &[2usize, 4, 4].into(), &base),
        Err(Error::UnsortedSpan {
            span: Span::Response,
            index: 2
        })
    );
}

#[test]
fn relay_mode_by_hand() {
    // N = 3, Q = {0}, A = {1, 2}: relay lets token 1 pass flow on to token 2.
    let a = [1.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.2, 0.3, 0.5];
    let cfg = TraceConfig::default().with_answer_mode(AnswerMode::Relay);
    let t = trace_dense(&a, 0..1, 1..3, cfg).unwrap();
    // h(2) = 1, h(1) = 1 + 0.3, h(0) = 0.5 h(1) + 0.2 h(2) = 0.85.
    assert_all_close(t.reach(), &[0.85, 1.3, 1.0], 1e-15, 1e-15, "h");
    // f(1) = 0.5 * 1.3 / 0.85, f(2) = 0.2 / 0.85 + f(1) * 0.3 / 1.3.
    let f1 = 0.65 / 0.85;
    let f2 = 0.2 / 0.85 + f1 * 0.3 / 1.3;
    assert_all_close(t.flow(), &[1.0, f1, f2], 1e-15, 1e-15, "f");
    assert!(close(t.answer_mass(), 1.0, 1e-15, 0.0));
    // Absorbing: token 1 keeps what it receives.
    let t = trace(&Sequence::dense(&a, Spans::new(0..1, 1..3)).unwrap()).unwrap();
    assert_all_close(t.reach(), &[0.7, 1.0, 1.0], 1e-15, 1e-15, "h");
    assert_all_close(t.flow(), &[1.0, 0.5 / 0.7, 0.2 / 0.7], 1e-15, 1e-15, "f");
}

#[test]
fn edge_threshold_prunes() {
    let cfg = TraceConfig::default().with_edge_threshold(0.15);
    let t = trace_dense(&EXAMPLE, 0..2, 4..5, cfg).unwrap();
    // Edges 0->3, 0->4, 1->4, 3->4 (all 0.1) are gone: h(3) = 0, h(2) = 0.6.
    assert_eq!(t.reach()[3], 0.0);
    assert!(close(t.reach()[2], 0.6, 1e-15, 0.0));
    assert!(close(t.reach()[1], 0.3, 1e-15, 0.0));
    assert!(close(t.answer_mass(), 1.0, 1e-15, 0.0));
}

#[test]
fn baselines_by_hand() {
    // The default response of these spans is 2..5.
    let seq = Sequence::dense(&EXAMPLE, Spans::new(0..2, 4..5)).unwrap();
    let recv = attention_received(&seq).unwrap();
    // Column sums over rows 2..5 strictly below the row: col 0: .3+.1+.1, col 1: .5+.2+.1, ...
    assert_all_close(&recv, &[0.5, 0.8, 0.9, 0.1, 0.0], 1e-15, 1e-15, "received");
    let ent = attention_entropy(&seq).unwrap();
    let h1 = -(0.5f64 * 0.5f64.ln()) * 2.0 / 2.0f64.ln();
    assert!(close(ent[0], 0.0, 0.0, 0.0));
    assert!(close(ent[1], h1, 1e-15, 1e-15));
    let r = random_scores(6, &(2..6).into(), 42).unwrap();
    assert_eq!(&r[..2], [0.0, 0.0]);
    assert!(r[2..].iter().all(|&x| x > 0.0 && x <= 1.0));
    assert_eq!(r, random_scores(6, &(2..6).into(), 42).unwrap());
    assert_ne!(r, random_scores(6, &(2..6).into(), 43).unwrap());
    // A list response draws at its positions, in order: the same draws as the range.
    let l = random_scores(6, &[1usize, 3, 4, 5].into(), 42).unwrap();
    assert_eq!(l, [0.0, r[2], 0.0, r[3], r[4], r[5]]);
    assert_eq!(
        random_scores(6, &(2..7).into(), 42),
        Err(Error::SpanOutOfRange {
            span: Span::Response,
            range: 2..7,
            n: 6
        })
    );
    // SplitMix64 reference output for seed 0 (Vigna's splitmix64.c).
    assert_eq!(SplitMix64::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
}

#[test]
fn rollout_by_hand() {
    // One layer: R = norm(0.5 M + 0.5 I); answer row 4 of the example, mass 1:
    // R[4] = 0.5 * M[4] + 0.5 e_4.
    let s = rollout(&EXAMPLE, 1, 5, &(4..5).into()).unwrap();
    assert_all_close(&s, &[0.05, 0.05, 0.3, 0.05, 0.55], 1e-15, 1e-15, "rollout");
    // Two identical layers: R[4] = N[4] · N, computed by hand as a row-vector product.
    let mut two = EXAMPLE.to_vec();
    two.extend_from_slice(&EXAMPLE);
    let s2 = rollout(&two, 2, 5, &(4..5).into()).unwrap();
    let n = |k: usize, i: usize| 0.5 * EXAMPLE[k * 5 + i] + if k == i { 0.5 } else { 0.0 };
    for (i, &got) in s2.iter().enumerate() {
        let e: f64 = (0..5).map(|k| n(4, k) * n(k, i)).sum();
        assert!(close(got, e, 1e-15, 1e-14), "rollout2[{i}] {got} vs {e}");
    }
    assert!(close(s2.iter().sum::<f64>(), 1.0, 1e-14, 0.0));
    assert_eq!(
        rollout::<f64>(&[], 0, 5, &(4..5).into()),
        Err(Error::ZeroDimension { what: "layers" })
    );
    // An answer given as a list is checked as the answer span.
    assert_eq!(
        rollout(&EXAMPLE, 1, 5, &[4usize, 3].into()),
        Err(Error::UnsortedSpan {
            span: Span::Answer,
            index: 1
        })
    );
}

/// Rows across the backward kernel's 512-entry summary blocks, in both answer modes, with
/// and without pruning, against the naive oracle; and a planted defect past the first block.
#[test]
fn long_rows_equal_reference() {
    let mut rng = SplitMix64::new(7);
    for n in [515, 603] {
        let raw: Vec<f64> = (0..n * n).map(|_| rng.next_unit()).collect();
        let mass: Vec<f64> = (0..n).map(|k| if k % 3 == 0 { 0.9 } else { 1.0 }).collect();
        let a = stochastic(n, &raw, &mass);
        for (mode, thr) in [
            (AnswerMode::Absorbing, 0.0),
            (AnswerMode::Relay, 0.0),
            (AnswerMode::Absorbing, 5e-4),
        ] {
            let (question, answer) = (3..40, n - 9..n - 2);
            let cfg = TraceConfig::default()
                .with_answer_mode(mode)
                .with_edge_threshold(thr);
            let t = trace_dense(&a, question.clone(), answer.clone(), cfg).unwrap();
            let (q, ans): (Vec<usize>, Vec<usize>) = (question.collect(), answer.collect());
            let naive = reference::trace(&a, n, &q, &ans, mode, thr);
            assert_all_close(t.reach(), &naive.h, F64_ABS, F64_REL, "h");
            assert_all_close(t.flow(), &naive.f, F64_ABS, F64_REL, "f");
        }
        let mut bad = a.clone();
        bad[(n - 4) * n + 530.min(n - 5)] = -1e-9;
        assert!(matches!(
            trace_dense(&bad, 3..40, n - 9..n - 2, TraceConfig::default()),
            Err(Error::Negative { .. })
        ));
    }
}
