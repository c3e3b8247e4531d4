//! The front door: a validated `Sequence` (dense, packed, per-layer; spans as ranges or
//! position lists), `Tracer` (trace, batch, token weights, shaped advantages) and
//! `split_ragged`.

use flowtracer_core::aggregate::{LayerSelection, Layout, aggregate};
use flowtracer_core::grpo::{GrpoConfig, ScaleRewards};
use flowtracer_core::sequence::split_ragged;
use flowtracer_core::shaping::{ApplyTo, ShapingConfig};
use flowtracer_core::{
    AnswerMode, Config, Error, FlowFloat, LayerShape, Position, Sequence, Span, Spans, Tokens,
    Trace, TraceConfig, Tracer, trace,
};
use proptest::prelude::*;

use crate::common::*;

// `Tracer` can be shared by worker threads (and moved to one), as can its inputs and
// outputs.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Tracer>();
    send_sync::<Sequence<'static, f32>>();
    send_sync::<Trace<f32>>();
    send_sync::<Error>();
};

/// Reach, flow and throughput as bit patterns (equal iff bit-identical; an f32 widens to
/// f64 exactly).
fn bits<F: FlowFloat>(t: &Trace<F>) -> [Vec<u64>; 3] {
    [t.reach(), t.flow(), t.throughput()].map(|x| x.iter().map(|v| v.widen().to_bits()).collect())
}

fn modes() -> impl Strategy<Value = AnswerMode> {
    prop_oneof![Just(AnswerMode::Absorbing), Just(AnswerMode::Relay)]
}

proptest! {
    /// Packed rows give bit-identical traces to the dense matrix (and the same error, at
    /// the same position, for a planted defect); an owned copy behaves as the borrowed one.
    #[test]
    fn packed_equals_dense_bit_for_bit(
        c in case(32),
        mode in modes(),
        thr in prop_oneof![Just(0.0), 0.0f64..0.3],
        defect in prop::option::of((any::<prop::sample::Index>(), any::<prop::sample::Index>(), prop_oneof![Just(f64::NAN), Just(-0.25), Just(0.75)])),
    ) {
        let n = c.n;
        let mut a = c.a.clone();
        if let Some((row, col, v)) = defect {
            let row = row.index(n);
            a[row * n + col.index(row + 1)] = v;
        }
        let packed = pack(&a, n);
        let dense_seq = Sequence::dense(&a, c.spans()).unwrap();
        let packed_seq = Sequence::packed(&packed, c.spans()).unwrap();
        prop_assert_eq!(packed_seq.n(), n);
        prop_assert_eq!(packed_seq.layout(), Layout::Packed);
        let row_bits = |s: &Sequence<'_, f64>, k| s.row(k).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for k in 0..n {
            prop_assert_eq!(row_bits(&packed_seq, k), row_bits(&dense_seq, k));
        }
        let mut tracer = tracer(TraceConfig::default().with_answer_mode(mode).with_edge_threshold(thr)).unwrap();
        let d = tracer.trace(&dense_seq);
        let p = tracer.trace(&packed_seq);
        let owned = Sequence::owned(packed.clone(), Layout::Packed, c.spans()).unwrap();
        prop_assert_eq!((owned.n(), owned.layout(), owned.response()), (n, Layout::Packed, packed_seq.response()));
        for k in 0..n {
            prop_assert_eq!(row_bits(&owned, k), row_bits(&packed_seq, k));
        }
        let o = tracer.trace(&owned);
        match (&d, &p) {
            (Ok(d), Ok(p)) => {
                prop_assert_eq!(bits(d), bits(p));
                prop_assert_eq!(d, p);
            }
            _ => prop_assert_eq!(&d, &p),
        }
        prop_assert_eq!(&p, &o);
        // The f32 path too.
        let (a32, p32) = (to_f32(&a), to_f32(&packed));
        let d32 = tracer.trace(&Sequence::dense(&a32, c.spans()).unwrap());
        let p32 = tracer.trace(&Sequence::packed(&p32, c.spans()).unwrap());
        prop_assert_eq!(d32.map(|t| bits(&t)), p32.map(|t| bits(&t)));
    }

    /// A ragged batch in one packed buffer, cut by `split_ragged`, traced by `trace_batch`:
    /// each result equals tracing that sequence alone, exactly, and a bad sequence in the
    /// middle reports its own error without stopping the others.
    #[test]
    fn ragged_batch_equals_one_by_one(
        cases in prop::collection::vec(case(20), 2..7),
        bad in any::<prop::sample::Index>(),
        bad_at in any::<prop::sample::Index>(),
    ) {
        // Never the first: a bad sequence with good ones on both sides, or last.
        let bad = 1 + bad.index(cases.len() - 1);
        let mut buffer = Vec::new();
        let mut cu = vec![0];
        let mut planted = Position::matrix(0, 0);
        for (j, c) in cases.iter().enumerate() {
            let mut p = pack(&c.a, c.n);
            if j == bad {
                let at = bad_at.index(p.len());
                p[at] = f64::INFINITY;
                let row = (0..c.n).find(|&k| (k + 1) * (k + 2) / 2 > at).unwrap();
                planted = Position::matrix(row, at - row * (row + 1) / 2);
            }
            buffer.extend_from_slice(&p);
            cu.push(cu[j] + c.n);
        }
        let parts = split_ragged(&buffer, &cu, Layout::Packed).unwrap();
        prop_assert_eq!(parts.len(), cases.len());
        let mut off = 0;
        for (part, c) in parts.iter().zip(&cases) {
            prop_assert_eq!(*part, &buffer[off..off + c.n * (c.n + 1) / 2]);
            off += part.len();
        }
        let seqs: Vec<Sequence<'_, f64>> = parts
            .iter()
            .zip(&cases)
            .map(|(part, c)| Sequence::packed(part, c.spans()).unwrap())
            .collect();
        let tracer = Tracer::new(Config::default()).unwrap();
        let batch = tracer.trace_batch(&seqs);
        prop_assert_eq!(batch.len(), seqs.len());
        for (j, (seq, got)) in seqs.iter().zip(&batch).enumerate() {
            let alone = trace(seq);
            prop_assert_eq!(&alone, got);
            if j == bad {
                prop_assert_eq!(alone, Err(Error::NonFinite { position: planted }));
            } else {
                // Good cases fail only for lack of source mass, alone or in the batch.
                prop_assert!(matches!(got, Ok(_) | Err(Error::NoSourceMass)), "{:?}", got);
            }
        }
    }

    /// `Sequence::from_layers` equals aggregating, then building a dense sequence: the same
    /// `Ā` and the same trace.
    #[test]
    fn from_layers_equals_aggregate_then_dense(
        layers in 1usize..5, heads in 1usize..4, n in 1usize..8,
        raw in prop::collection::vec(0.01f64..1.0, 4 * 3 * 7 * 7),
        packed in any::<bool>(),
        which in 0u8..4,
    ) {
        let m = n * n;
        // Each head row-stochastic (valid by construction).
        let mut data = Vec::new();
        for mat in raw[..layers * heads * m].chunks(m) {
            let s = stochastic(n, mat, &vec![1.0; n]);
            if packed { data.extend(pack(&s, n)); } else { data.extend(s); }
        }
        let layout = if packed { Layout::Packed } else { Layout::Dense };
        let selection = match which {
            0 => LayerSelection::All,
            1 => LayerSelection::Middle,
            2 => LayerSelection::Range(layers / 2..layers),
            _ => LayerSelection::List((0..layers).rev().step_by(2).collect()),
        };
        let spans = if n == 1 {
            Spans::new(0..1, 0..1).with_response(0..1)
        } else {
            Spans::new(0..1, n - 1..n)
        };
        let shape = LayerShape { layers, heads, n, layout };
        let from = Sequence::from_layers(&data, shape, &selection, spans.clone());
        let agg = aggregate(&data, layers, heads, n, layout, &selection).unwrap();
        let dense = Sequence::dense(&agg, spans);
        match (&from, &dense) {
            (Ok(f), Ok(d)) => {
                prop_assert_eq!(f.attention(), &agg[..]);
                prop_assert_eq!(f.layout(), Layout::Dense);
                prop_assert_eq!(f, d);
                prop_assert_eq!(trace(f), trace(d));
            }
            _ => {
                // Only N = 1, whose spans cannot be valid, fails: the same way.
                prop_assert_eq!(n, 1);
                let expected = Error::AnswerNotAfterQuestion { question: 0..1, answer: 0..1 };
                prop_assert_eq!(from.err(), Some(expected.clone()));
                prop_assert_eq!(dense.err(), Some(expected));
            }
        }
    }
}

#[test]
fn batch_with_mixed_layouts_sizes_and_errors() {
    let example_packed = pack(&EXAMPLE, 5);
    let small = [1.0, 0.0, 0.25, 0.75];
    let mut nan = EXAMPLE;
    nan[3 * 5 + 1] = f64::NAN;
    let unreachable = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0];
    let seqs = [
        Sequence::dense(&EXAMPLE, Spans::new(0..2, 4..5)).unwrap(),
        Sequence::dense(&nan, Spans::new(0..2, 4..5)).unwrap(),
        Sequence::packed(&example_packed, Spans::new([0usize, 1], [4usize])).unwrap(),
        Sequence::dense(&unreachable, Spans::new(0..1, 2..3)).unwrap(),
        Sequence::dense(&small, Spans::new(0..1, 1..2)).unwrap(),
    ];
    let tracer = Tracer::new(Config::default()).unwrap();
    let batch = tracer.trace_batch(&seqs);
    assert_eq!(batch.len(), 5);
    for (seq, got) in seqs.iter().zip(&batch) {
        assert_eq!(&trace(seq), got);
    }
    assert_eq!(
        batch[1],
        Err(Error::NonFinite {
            position: Position::matrix(3, 1)
        })
    );
    assert_eq!(batch[3], Err(Error::NoSourceMass));
    let (t0, t2, t4) = (
        batch[0].as_ref().unwrap(),
        batch[2].as_ref().unwrap(),
        batch[4].as_ref().unwrap(),
    );
    // Packed with contiguous lists: the same numbers as dense with ranges.
    assert_eq!(bits(t0), bits(t2));
    assert!((t0.reach()[0] - 0.5165).abs() < 1e-12);
    assert_eq!(t4.reach(), [0.25, 1.0]);
    assert_eq!(t4.flow(), [1.0, 1.0]);
    // An empty batch is an empty result.
    assert!(tracer.trace_batch::<f64>(&[]).is_empty());
}

#[test]
fn split_ragged_cuts_and_rejects() {
    // Packed: sequences of 2, 0 and 3 tokens (3 + 0 + 6 values).
    let buf: Vec<f64> = (0..9).map(f64::from).collect();
    let parts = split_ragged(&buf, &[0, 2, 2, 5], Layout::Packed).unwrap();
    assert_eq!(parts, [&buf[..3], &buf[3..3], &buf[3..]]);
    // The empty one is no sequence.
    assert_eq!(
        Sequence::packed(parts[1], Spans::new(0..1, 1..2)),
        Err(Error::EmptySequence)
    );
    assert_eq!(
        Sequence::packed(parts[2], Spans::new(0..1, 1..3)).map(|s| s.n()),
        Ok(3)
    );
    // Dense: 2 and 3 tokens (4 + 9 values).
    let buf: Vec<f64> = (0..13).map(f64::from).collect();
    let parts = split_ragged(&buf, &[0, 2, 5], Layout::Dense).unwrap();
    assert_eq!(parts, [&buf[..4], &buf[4..]]);
    // No sequences at all.
    assert_eq!(
        split_ragged::<f64>(&[], &[0], Layout::Dense),
        Ok(Vec::<&[f64]>::new())
    );
    // Bad offsets: the first offending entry.
    assert_eq!(
        split_ragged(&buf, &[], Layout::Dense),
        Err(Error::BadOffsets { index: 0 })
    );
    assert_eq!(
        split_ragged(&buf, &[1, 3], Layout::Dense),
        Err(Error::BadOffsets { index: 0 })
    );
    assert_eq!(
        split_ragged(&buf, &[0, 3, 2, 5], Layout::Dense),
        Err(Error::BadOffsets { index: 2 })
    );
    assert_eq!(
        split_ragged(&buf, &[0, 2, 5, 4], Layout::Dense),
        Err(Error::BadOffsets { index: 3 })
    );
    // A total that is not the buffer's length, short or long.
    assert_eq!(
        split_ragged(&buf[..12], &[0, 2, 5], Layout::Dense),
        Err(Error::ShapeMismatch {
            what: "ragged attention buffer",
            expected: 13,
            actual: 12
        })
    );
    assert_eq!(
        split_ragged(&buf, &[0, 2, 5], Layout::Packed),
        Err(Error::ShapeMismatch {
            what: "ragged attention buffer",
            expected: 9,
            actual: 13
        })
    );
}

/// The second sequence of the integration test: N = 3, Q = {0}, A = {2}.
const SMALL: [f64; 9] = [1.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.2, 0.3, 0.5];

/// The three calls a trainer makes per group, against numbers computed by hand.
#[test]
fn trace_then_weights_then_advantages() {
    let mut tracer = Tracer::new(Config::default()).unwrap();
    let s0 = Sequence::dense(&EXAMPLE, Spans::new(0..2, 4..5)).unwrap();
    let s1 = Sequence::dense(&SMALL, Spans::new(0..1, 2..3)).unwrap();
    let t0 = tracer.trace(&s0).unwrap();
    let t1 = tracer.trace(&s1).unwrap();
    // Sequence 1: h = (0.5 * 0.3 + 0.2, 0.3, 1) = (0.35, 0.3, 1);
    // f(1) = 0.5 * 0.3 / 0.35 = 3/7, f(2) = 0.2 / 0.35 + 3/7 = 1; tau = 2 f.
    assert_all_close(t1.reach(), &[0.35, 0.3, 1.0], 1e-15, 1e-15, "h");
    assert_all_close(t1.flow(), &[1.0, 3.0 / 7.0, 1.0], 1e-15, 1e-15, "f");
    assert_all_close(t1.throughput(), &[2.0, 6.0 / 7.0, 2.0], 1e-15, 1e-15, "tau");
    // Responses 2..5 and 1..3 (the defaults): ceil(0.4 * 3) = 2 and ceil(0.4 * 2) = 1
    // tokens of highest throughput.
    let w0 = tracer.token_weights(&t0);
    let w1 = tracer.token_weights(&t1);
    assert_eq!(w0, [1.0, 1.0, 1.5, 1.0, 1.5]);
    assert_eq!(w1, [1.0, 1.0, 1.5]);
    // The trainer's [B][T] completion weights, T = 3: the response tokens, padded with 1.
    let mut weights = w0[2..5].to_vec();
    weights.extend_from_slice(&w1[1..3]);
    weights.push(1.0);
    assert_eq!(weights, [1.5, 1.0, 1.5, 1.0, 1.5, 1.0]);
    // Rewards 1 and 0: mean 0.5, sample std sqrt(0.5), eps 1e-4.
    let a = 0.5 / (0.5f64.sqrt() + 1e-4);
    let adv = tracer.shape_advantages(&[1.0, 0.0], 2, &weights).unwrap();
    assert_all_close(
        &adv,
        &[1.5 * a, a, 1.5 * a, -a, -1.5 * a, -a],
        1e-15,
        1e-15,
        "advantages",
    );
    // Only non-negative advantages shaped: the second row is plain GRPO.
    let plain_negative = Tracer::new(
        Config::default()
            .with_shaping(ShapingConfig::default().with_apply_to(ApplyTo::NonnegativeOnly)),
    )
    .unwrap();
    let adv = plain_negative
        .shape_advantages(&[1.0, 0.0], 2, &weights)
        .unwrap();
    assert_all_close(
        &adv,
        &[1.5 * a, a, 1.5 * a, -a, -a, -a],
        1e-15,
        1e-15,
        "non-negative only",
    );
    // Unscaled rewards, two groups (the second constant: advantage exactly 0), T = 1.
    let unscaled = Tracer::new(
        Config::default().with_grpo(GrpoConfig::default().with_scale_rewards(ScaleRewards::None)),
    )
    .unwrap();
    let adv = unscaled
        .shape_advantages(&[1.0, 0.0, 3.0, 3.0], 2, &[1.5, 1.0, 1.5, 1.0])
        .unwrap();
    assert_eq!(adv, [0.75, -0.5, 0.0, 0.0]);
    // The group's eps comes from the configuration.
    let eps =
        Tracer::new(Config::default().with_grpo(GrpoConfig::default().with_advantage_eps(0.0)))
            .unwrap();
    let adv = eps.shape_advantages(&[1.0, 0.0], 2, &[1.0, 1.0]).unwrap();
    assert_all_close(
        &adv,
        &[0.5f64.sqrt(), -(0.5f64.sqrt())],
        1e-15,
        1e-15,
        "eps 0",
    );
    // f32 rewards and weights, the same numbers to f32 precision.
    let w32 = to_f32(&weights);
    let adv = tracer.shape_advantages(&[1.0f32, 0.0], 2, &w32).unwrap();
    assert_all_close(
        &widen(&adv),
        &[1.5 * a, a, 1.5 * a, -a, -1.5 * a, -a],
        F32_ABS,
        F32_REL,
        "f32",
    );
}

#[test]
fn shape_advantages_errors() {
    let tracer = Tracer::new(Config::default()).unwrap();
    assert_eq!(
        tracer.shape_advantages(&[1.0, 0.0, 1.0], 2, &[1.0; 6]),
        Err(Error::GroupSizeMismatch {
            batch: 3,
            num_generations: 2
        })
    );
    assert_eq!(
        tracer.shape_advantages(&[1.0, 0.0], 2, &[1.0; 5]),
        Err(Error::ShapeMismatch {
            what: "weights ([B][T])",
            expected: 6,
            actual: 5
        })
    );
    assert_eq!(
        tracer.shape_advantages(&[1.0, 0.0], 1, &[1.0; 2]),
        Err(Error::GroupTooSmall { num_generations: 1 })
    );
    assert_eq!(
        tracer.shape_advantages(&[1.0, f64::INFINITY], 2, &[1.0; 2]),
        Err(Error::NonFiniteReward { index: 1 })
    );
    assert_eq!(
        tracer.shape_advantages::<f64>(&[], 2, &[]),
        Err(Error::GroupSizeMismatch {
            batch: 0,
            num_generations: 2
        })
    );
    // Boundary: rows of length 0 are a whole number of rows.
    assert_eq!(
        tracer.shape_advantages::<f64>(&[1.0, 0.0], 2, &[]),
        Ok(vec![])
    );
    // Rewards are checked before the weights' shape.
    assert_eq!(
        tracer.shape_advantages(&[1.0, f64::NAN], 2, &[1.0; 3]),
        Err(Error::NonFiniteReward { index: 1 })
    );
}

#[test]
fn invalid_configurations_are_rejected_by_the_tracer() {
    assert!(matches!(
        Tracer::new(Config::default().with_shaping(ShapingConfig::default().with_rho(1.5))),
        Err(Error::InvalidConfig { field: "rho", .. })
    ));
    assert!(matches!(
        Tracer::new(Config::default().with_grpo(GrpoConfig::default().with_advantage_eps(-1e-4))),
        Err(Error::InvalidConfig {
            field: "advantage_eps",
            ..
        })
    ));
    // The trace part is checked first.
    assert!(matches!(
        Tracer::new(
            Config::default()
                .with_trace(TraceConfig::default().with_edge_threshold(f64::NAN))
                .with_shaping(ShapingConfig::default().with_rho(1.5))
        ),
        Err(Error::InvalidConfig {
            field: "edge_threshold",
            ..
        })
    ));
    assert_eq!(TraceConfig::DEFAULT, TraceConfig::default());
    assert_eq!(ShapingConfig::DEFAULT, ShapingConfig::default());
    assert_eq!(GrpoConfig::DEFAULT, GrpoConfig::default());
    assert_eq!(Tracer::default().config(), &Config::default());
}

/// Per-layer input: checks run shape, layer selection, spans, then data, so a NaN in the
/// layers does not hide a bad span.
#[test]
fn from_layers_reports_span_errors_before_data_errors() {
    let (layers, heads, n) = (2, 2, 3);
    let mut data = vec![0.25; layers * heads * n * n];
    data[(heads + 1) * n * n + n] = f64::NAN; // layer 1, head 1, row 1, col 0
    data[n + 1] = -1.0; // layer 0, head 0, row 1, col 1
    let shape = LayerShape {
        layers,
        heads,
        n,
        layout: Layout::Dense,
    };
    let all = LayerSelection::All;
    let bad_spans = || Spans::new(0..1, 2..4);
    assert_eq!(
        Sequence::from_layers(&data[1..], shape, &all, bad_spans()),
        Err(Error::ShapeMismatch {
            what: "attention",
            expected: 36,
            actual: 35
        })
    );
    assert!(matches!(
        Sequence::from_layers(&data, shape, &LayerSelection::List(vec![2]), bad_spans()),
        Err(Error::InvalidLayerSelection { value: 2, .. })
    ));
    assert_eq!(
        Sequence::from_layers(&data, shape, &all, bad_spans()),
        Err(Error::SpanOutOfRange {
            span: Span::Answer,
            range: 2..4,
            n: 3
        })
    );
    assert_eq!(
        Sequence::from_layers(&data, shape, &all, Spans::new([0usize, 1], [1usize, 2])),
        Err(Error::AnswerNotAfterQuestion {
            question: 0..2,
            answer: 1..3
        })
    );
    // Valid spans: the NaN (a later layer) wins over the negative value.
    assert_eq!(
        Sequence::from_layers(&data, shape, &all, Spans::new(0..1, 2..3)),
        Err(Error::NonFinite {
            position: Position {
                layer: Some(1),
                head: Some(1),
                row: 1,
                col: 0
            }
        })
    );
    assert_eq!(
        Sequence::from_layers(
            &data,
            shape,
            &LayerSelection::List(vec![0]),
            Spans::new(0..1, 2..3)
        ),
        Err(Error::Negative {
            position: Position {
                layer: Some(0),
                head: Some(0),
                row: 1,
                col: 1
            },
            value: -1.0
        })
    );
    // A layer list in any order: the defect at the lowest (layer, head, row, col) wins,
    // as in `aggregate`.
    let mut two = vec![0.25; layers * heads * n * n];
    two[n * n + 2 * n] = f64::NAN; // layer 0, head 1, row 2, col 0
    two[heads * n * n] = f64::INFINITY; // layer 1, head 0, row 0, col 0
    let expected = Err(Error::NonFinite {
        position: Position {
            layer: Some(0),
            head: Some(1),
            row: 2,
            col: 0,
        },
    });
    let backwards = LayerSelection::List(vec![1, 0]);
    assert_eq!(
        aggregate(&two, layers, heads, n, Layout::Dense, &backwards).map(|_| ()),
        expected
    );
    assert_eq!(
        Sequence::from_layers(&two, shape, &backwards, Spans::new(0..1, 2..3)).map(|_| ()),
        expected
    );
    // Without the defects, the owned `Ā` is the mean: 0.25 on and below the diagonal.
    data[(heads + 1) * n * n + n] = 0.25;
    data[n + 1] = 0.25;
    let seq = Sequence::from_layers(&data, shape, &all, Spans::new(0..1, 2..3)).unwrap();
    assert_eq!(
        seq.attention(),
        [0.25, 0.0, 0.0, 0.25, 0.25, 0.0, 0.25, 0.25, 0.25]
    );
    assert_eq!(seq.layout(), Layout::Dense);
    assert_eq!(seq.response(), &Tokens::Range(1..3));
}

/// Spans given as lists: empty (question, answer, response), then unsorted (same order),
/// then out of range (same order), then the answer starting before the question ends, then
/// the response missing an answer token. Each input carries the defects of the later
/// checks.
#[test]
fn list_span_checks_in_order() {
    let a = [0.0f64; 16]; // N = 4
    let make = |s: Spans| Sequence::dense(&a, s).map(|_| ());
    let empty: Vec<usize> = Vec::new();
    // Empty: question, then answer, then response; emptiness wins over every other defect.
    assert_eq!(
        make(Spans::new(empty.clone(), [3usize, 2]).with_response([9usize])),
        Err(Error::EmptySpan {
            span: Span::Question
        })
    );
    assert_eq!(
        make(Spans::new([1usize, 0], empty.clone()).with_response(empty.clone())),
        Err(Error::EmptySpan { span: Span::Answer })
    );
    assert_eq!(
        make(Spans::new([1usize, 0], [9usize]).with_response(empty.clone())),
        Err(Error::EmptySpan {
            span: Span::Response
        })
    );
    // A defaulted response is never what fails: the question and answer are checked first
    // (here the answer starts inside the question, which also ends the sequence).
    assert_eq!(
        make(Spans::new([1usize, 3], [2usize])),
        Err(Error::AnswerNotAfterQuestion {
            question: 1..4,
            answer: 2..3
        })
    );
    // Unsorted (a repeat is unsorted too), with the index of the first entry not above
    // its predecessor: question, then answer, then response; before any out-of-range span.
    assert_eq!(
        make(Spans::new([0usize, 2, 1], [3usize, 3]).with_response([5usize, 4])),
        Err(Error::UnsortedSpan {
            span: Span::Question,
            index: 2
        })
    );
    assert_eq!(
        make(Spans::new([0usize, 9], [3usize, 3]).with_response([5usize, 4])),
        Err(Error::UnsortedSpan {
            span: Span::Answer,
            index: 1
        })
    );
    assert_eq!(
        make(Spans::new([0usize, 9], [2usize, 3]).with_response([2usize, 3, 3])),
        Err(Error::UnsortedSpan {
            span: Span::Response,
            index: 2
        })
    );
    // Out of range, reported as the list's hull: question, then answer, then response.
    assert_eq!(
        make(Spans::new([0usize, 4], [1usize, 9]).with_response([0usize, 7])),
        Err(Error::SpanOutOfRange {
            span: Span::Question,
            range: 0..5,
            n: 4
        })
    );
    assert_eq!(
        make(Spans::new([0usize], [1usize, 4]).with_response([0usize, 7])),
        Err(Error::SpanOutOfRange {
            span: Span::Answer,
            range: 1..5,
            n: 4
        })
    );
    assert_eq!(
        make(Spans::new([0usize], [1usize, 3]).with_response([0usize, 4])),
        Err(Error::SpanOutOfRange {
            span: Span::Response,
            range: 0..5,
            n: 4
        })
    );
    // Boundary: the last token is in range.
    assert_eq!(
        make(Spans::new([0usize], [3usize]).with_response([3usize])),
        Ok(())
    );
    // The answer starts before the last question token ends (interleaved lists), with the
    // response also missing an answer token.
    assert_eq!(
        make(Spans::new([0usize, 2], [1usize, 3]).with_response([3usize])),
        Err(Error::AnswerNotAfterQuestion {
            question: 0..3,
            answer: 1..4
        })
    );
    // Boundary: the answer starting right after the last question token is fine.
    assert_eq!(make(Spans::new([0usize, 2], [3usize])), Ok(()));
    // The response misses an answer token inside its hull.
    assert_eq!(
        make(Spans::new([0usize], [1usize, 3]).with_response([1usize, 2])),
        Err(Error::ResponseMissesAnswer {
            response: 1..3,
            answer: 1..4
        })
    );
    assert_eq!(
        make(Spans::new([0usize], [1usize, 3]).with_response([1usize, 2, 3])),
        Ok(())
    );
    assert_eq!(
        make(Spans::new([0usize], [1usize, 3]).with_response([0usize, 3])),
        Err(Error::ResponseMissesAnswer {
            response: 0..4,
            answer: 1..4
        })
    );
    // Spans are checked when the sequence is built, before any data: a NaN does not
    // hide them.
    let nan = [f64::NAN; 16];
    assert_eq!(
        Sequence::dense(&nan, Spans::new([0usize], [2usize, 1])).map(|_| ()),
        Err(Error::UnsortedSpan {
            span: Span::Answer,
            index: 1
        })
    );
}

/// A list that happens to be contiguous behaves exactly like the equal range.
#[test]
fn contiguous_lists_equal_ranges() {
    let r = Sequence::dense(&EXAMPLE, Spans::new(0..2, 4..5).with_response(2..5)).unwrap();
    let l = Sequence::dense(
        &EXAMPLE,
        Spans::new([0usize, 1], vec![4usize]).with_response(&[2usize, 3, 4][..]),
    )
    .unwrap();
    let mut tracer = Tracer::new(Config::default()).unwrap();
    let (tr, tl) = (tracer.trace(&r).unwrap(), tracer.trace(&l).unwrap());
    assert_eq!(bits(&tr), bits(&tl));
    assert_eq!(tracer.token_weights(&tr), tracer.token_weights(&tl));
    assert_eq!(tl.question(), &Tokens::List(vec![0, 1]));
    // Tokens before the question's first position get no flow; those in the hull but not
    // in the list are not sources.
    let gap = Sequence::dense(&EXAMPLE, Spans::new([1usize], [4usize])).unwrap();
    let t = tracer.trace(&gap).unwrap();
    assert_eq!(t.num_sources(), 1);
    assert_eq!(t.flow()[0], 0.0);
    assert!((t.flow()[1] - 1.0).abs() < 1e-15);
    assert!((t.answer_mass() - 1.0).abs() < 1e-12);
    // Its reach is the same as with the full question: reach does not see the question.
    assert_eq!(t.reach(), tr.reach());
    assert_eq!(tracer.last_reach(), t.reach());
}

/// `credit_scores` is the one dispatch: every method gives exactly what its own scoring
/// function gives (the trace's throughput for the two flow methods), `uniform` gives
/// nothing, and a method that reads attention without a sequence is a typed error.
#[test]
fn credit_scores_dispatch_to_each_method() {
    use flowtracer_core::baselines::{
        CreditInputs, CreditMethod, attention_entropy, attention_received, credit_scores,
        random_scores, rollout,
    };
    let a = [
        1.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.3, 0.5, 0.2, 0.0, 0.0, 0.1, 0.2, 0.3,
        0.4, 0.0, 0.1, 0.1, 0.6, 0.1, 0.1,
    ];
    let seq = Sequence::dense(&a, Spans::new(0..2, 4..5)).unwrap();
    let entropy = [0.5, 0.1, 0.9, 0.3, 0.7];
    let inputs = CreditInputs {
        n: 5,
        response: seq.response(),
        sequence: Some(&seq),
        layer_means: &a,
        num_layers: 1,
        entropy: &entropy,
        seed: 11,
    };
    let mut tracer = Tracer::default();
    let t = trace(&seq).unwrap();
    let random: Vec<f64> = random_scores(5, seq.response(), 11).unwrap();
    for &method in CreditMethod::ALL {
        let got = credit_scores(method, &mut tracer, &inputs).unwrap();
        let want: Option<Vec<f64>> = match method {
            CreditMethod::Uniform => None,
            CreditMethod::FlowTracer | CreditMethod::BottomFlow => Some(t.throughput().to_vec()),
            CreditMethod::Random => Some(random.clone()),
            CreditMethod::AttentionReceived => Some(attention_received(&seq).unwrap()),
            CreditMethod::AttentionEntropy => Some(attention_entropy(&seq).unwrap()),
            CreditMethod::PredictiveEntropy => Some(entropy.to_vec()),
            CreditMethod::Rollout => Some(rollout(&a, 1, 5, seq.answer()).unwrap()),
            other => panic!("untested method {other}"),
        };
        assert_eq!(got.as_ref().map(|(s, _)| s.clone()), want, "{method}");
        let traced = matches!(method, CreditMethod::FlowTracer | CreditMethod::BottomFlow);
        assert_eq!(got.and_then(|(_, t)| t).is_some(), traced, "{method}");
    }
    let no_seq = CreditInputs {
        sequence: None,
        ..inputs
    };
    for &method in CreditMethod::ALL {
        let r = credit_scores(method, &mut tracer, &no_seq);
        if method.needs_attention() || method.needs_answer() {
            assert!(
                matches!(
                    r,
                    Err(Error::InvalidConfig {
                        field: "credit",
                        ..
                    })
                ),
                "{method}: {r:?}"
            );
        } else {
            assert!(r.is_ok(), "{method}");
        }
    }
    let short = CreditInputs {
        entropy: &entropy[..4],
        ..inputs
    };
    assert_eq!(
        credit_scores(CreditMethod::PredictiveEntropy, &mut tracer, &short),
        Err(Error::ShapeMismatch {
            what: "entropy",
            expected: 5,
            actual: 4
        })
    );
}
