//! Bad input of every listed kind yields the matching error variant, in the order of
//! method §13, and every validator is tested at its boundary.

use flowtracer_core::aggregate::{LayerSelection, Layout, aggregate, select_layers};
use flowtracer_core::grpo::{ScaleRewards, group_advantages};
use flowtracer_core::{
    Config, Error, LayerShape, Position, Sequence, Span, Spans, TraceConfig, Tracer, trace,
};
use proptest::prelude::*;

use crate::common::*;

/// Builds a dense sequence and traces it with the default configuration.
fn run(a: &[f64], q: core::ops::Range<usize>, ans: core::ops::Range<usize>) -> Result<(), Error> {
    run_with(a, Spans::new(q, ans))
}

/// [`run`] with any spans.
fn run_with(a: &[f64], spans: Spans) -> Result<(), Error> {
    trace(&Sequence::dense(a, spans)?).map(|_| ())
}

#[test]
fn shapes_and_sizes_zero_one_two() {
    assert_eq!(run(&[], 0..1, 1..2), Err(Error::EmptySequence));
    assert_eq!(
        Sequence::<f64>::packed(&[], Spans::new(0..1, 1..2)),
        Err(Error::EmptySequence)
    );
    // N is derived from the length: 3 values are N x N for no N (but packed N = 2), 4
    // values are packed N (N + 1) / 2 for no N.
    assert_eq!(
        run(&[1.0; 3], 0..1, 1..2),
        Err(Error::NotSquare {
            len: 3,
            layout: Layout::Dense
        })
    );
    assert_eq!(
        Sequence::packed(&[1.0; 4], Spans::new(0..1, 1..2)),
        Err(Error::NotSquare {
            len: 4,
            layout: Layout::Packed
        })
    );
    assert_eq!(
        Sequence::packed(&[1.0; 3], Spans::new(0..1, 1..2)).map(|s| s.n()),
        Ok(2)
    );
    // Per-layer input states N: a length that does not match is a shape mismatch.
    let shape = LayerShape {
        layers: 1,
        heads: 1,
        n: 2,
        layout: Layout::Dense,
    };
    assert_eq!(
        Sequence::from_layers(
            &[1.0; 3],
            shape,
            &LayerSelection::All,
            Spans::new(0..1, 1..2)
        ),
        Err(Error::ShapeMismatch {
            what: "attention",
            expected: 4,
            actual: 3
        })
    );
    // N = 1 cannot hold a question and an answer after it.
    assert_eq!(
        run_with(&[1.0], Spans::new(0..1, 1..2).with_response(0..1)),
        Err(Error::SpanOutOfRange {
            span: Span::Answer,
            range: 1..2,
            n: 1
        })
    );
    assert_eq!(
        run_with(&[1.0], Spans::new(0..1, 0..1).with_response(0..1)),
        Err(Error::AnswerNotAfterQuestion {
            question: 0..1,
            answer: 0..1
        })
    );
    // N = 2: the smallest valid sequence.
    let t =
        trace(&Sequence::dense(&[1.0, 0.0, 0.25, 0.75], Spans::new(0..1, 1..2)).unwrap()).unwrap();
    assert_eq!(t.reach(), [0.25, 1.0]);
    assert_eq!(t.flow(), [1.0, 1.0]);
}

/// Every check of method §13 in turn: each input carries the defects of all later checks,
/// and fixing the one reported exposes the next.
#[test]
fn checks_run_in_method_order() {
    // Token 0 (the question) has no edge to a later token: no source mass once all else
    // is fixed. Row 1 is heavy, (2, 1) negative, (3, 2) NaN.
    let mut a = vec![0.0; 25];
    for k in 0..5 {
        a[k * 5 + k] = 1.0;
    }
    a[5 + 1] = 1.5;
    a[2 * 5 + 1] = -0.1;
    a[3 * 5 + 2] = f64::NAN;
    let bad_spans = || Spans::new(0..1, 4..6);
    let spans = || Spans::new(0..1, 4..5);
    let go = |a: &[f64], s: Spans| Sequence::dense(a, s).and_then(|s| trace(&s)).map(|_| ());
    assert_eq!(
        go(&a[..24], bad_spans()),
        Err(Error::NotSquare {
            len: 24,
            layout: Layout::Dense
        })
    );
    assert_eq!(
        go(&a, bad_spans()),
        Err(Error::SpanOutOfRange {
            span: Span::Answer,
            range: 4..6,
            n: 5
        })
    );
    assert_eq!(
        go(&a, spans()),
        Err(Error::NonFinite {
            position: Position::matrix(3, 2)
        })
    );
    a[3 * 5 + 2] = 0.0;
    assert_eq!(
        go(&a, spans()),
        Err(Error::Negative {
            position: Position::matrix(2, 1),
            value: -0.1
        })
    );
    a[2 * 5 + 1] = 0.0;
    assert_eq!(
        go(&a, spans()),
        Err(Error::RowMassExceeded {
            row: 1,
            mass: 1.5,
            tolerance: 1e-3
        })
    );
    a[5 + 1] = 1.0;
    assert_eq!(go(&a, spans()), Err(Error::NoSourceMass));
    a[5] = 0.5;
    a[5 + 1] = 0.5;
    a[4 * 5] = 0.5;
    a[4 * 5 + 4] = 0.5;
    assert_eq!(go(&a, spans()), Ok(()));
}

#[test]
fn spans() {
    let a = EXAMPLE;
    assert_eq!(
        run(&a, 1..1, 4..5),
        Err(Error::EmptySpan {
            span: Span::Question
        })
    );
    assert_eq!(
        run(&a, 0..2, 4..4),
        Err(Error::EmptySpan { span: Span::Answer })
    );
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = 3..2;
    assert_eq!(
        run(&a, 0..2, reversed),
        Err(Error::EmptySpan { span: Span::Answer })
    );
    assert_eq!(
        run_with(&a, Spans::new(0..6, 4..5).with_response(2..5)),
        Err(Error::SpanOutOfRange {
            span: Span::Question,
            range: 0..6,
            n: 5
        })
    );
    assert_eq!(
        run(&a, 0..2, 4..6),
        Err(Error::SpanOutOfRange {
            span: Span::Answer,
            range: 4..6,
            n: 5
        })
    );
    // Boundary: an answer starting exactly where the question ends is fine, one before is not.
    assert!(run(&a, 0..2, 2..5).is_ok());
    assert_eq!(
        run(&a, 0..3, 2..5),
        Err(Error::AnswerNotAfterQuestion {
            question: 0..3,
            answer: 2..5
        })
    );
    // The response must hold the answer; boundary: the response is exactly the answer.
    assert_eq!(
        run_with(&a, Spans::new(0..2, 3..5).with_response(2..4)),
        Err(Error::ResponseMissesAnswer {
            response: 2..4,
            answer: 3..5
        })
    );
    assert!(run_with(&a, Spans::new(0..2, 3..5).with_response(3..5)).is_ok());
}

#[test]
fn data_checks_in_order() {
    let mut a = EXAMPLE.to_vec();
    a[3 * 5 + 1] = -0.1; // negative at (3, 1)
    a[4 * 5 + 2] = f64::NAN; // NaN later, at (4, 2)
    a[5 + 1] = 0.9; // row 1 sums to 1.4
    // Non-finite wins over an earlier negative and heavier rows.
    assert_eq!(
        run(&a, 0..2, 4..5),
        Err(Error::NonFinite {
            position: Position::matrix(4, 2)
        })
    );
    a[4 * 5 + 2] = 0.6;
    assert_eq!(
        run(&a, 0..2, 4..5),
        Err(Error::Negative {
            position: Position::matrix(3, 1),
            value: -0.1
        })
    );
    a[3 * 5 + 1] = 0.2;
    match run(&a, 0..2, 4..5) {
        Err(Error::RowMassExceeded { row: 1, mass, .. }) => assert!((mass - 1.4).abs() < 1e-12),
        other => panic!("expected row 1 too heavy, got {other:?}"),
    }
    // Entries above the diagonal are not data: garbage there is ignored.
    let mut b = EXAMPLE.to_vec();
    b[1] = f64::NAN;
    b[4] = -7.0;
    assert!(run(&b, 0..2, 4..5).is_ok());
}

#[test]
fn infinity_after_the_answer_is_still_reported() {
    let mut a = vec![0.0; 36];
    for k in 0..6 {
        a[k * 6 + k] = 1.0;
    }
    a[5 * 6 + 4] = f64::INFINITY;
    assert_eq!(
        run(&a, 0..1, 2..3),
        Err(Error::NonFinite {
            position: Position::matrix(5, 4)
        })
    );
}

#[test]
fn row_mass_boundary() {
    // Exactly 1 + tolerance passes; just above fails.
    let tol = 0.25;
    let cfg = TraceConfig::default().with_row_tolerance(tol);
    let ok = [1.0, 0.0, 0.5, 0.75];
    assert!(trace_dense(&ok, 0..1, 1..2, cfg).is_ok());
    let heavy = [1.0, 0.0, 0.5, 0.750_000_001];
    assert!(matches!(
        trace_dense(&heavy, 0..1, 1..2, cfg),
        Err(Error::RowMassExceeded { row: 1, .. })
    ));
    let zero = [0.0, 0.0, 0.0, 0.0];
    assert_eq!(
        trace_dense(&zero, 0..1, 1..2, cfg),
        Err(Error::NoSourceMass)
    );
    // A negative zero is not negative.
    let neg_zero = [1.0, 0.0, -0.0, 1.0];
    assert_eq!(
        trace_dense(&neg_zero, 0..1, 1..2, cfg),
        Err(Error::NoSourceMass)
    );
}

#[test]
fn no_source_mass() {
    // The question attends nowhere the answer can see: token 0 has no edge to 1..3.
    let a = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0];
    assert_eq!(run(&a, 0..1, 2..3), Err(Error::NoSourceMass));
}

#[test]
fn config_domains() {
    let cfg = TraceConfig::default().with_edge_threshold(-1.0);
    assert!(matches!(
        trace_dense(&EXAMPLE, 0..2, 4..5, cfg),
        Err(Error::InvalidConfig {
            field: "edge_threshold",
            ..
        })
    ));
    let cfg = TraceConfig::default().with_row_tolerance(f64::NAN);
    assert!(matches!(
        Tracer::new(Config::default().with_trace(cfg)),
        Err(Error::InvalidConfig {
            field: "row_tolerance",
            ..
        })
    ));
    // Boundary: 0 is in the domain of both.
    let zero = TraceConfig::default()
        .with_edge_threshold(0.0)
        .with_row_tolerance(0.0);
    assert_eq!(zero.validate(), Ok(()));
    assert!(tracer(zero).is_ok());
}

#[test]
fn aggregation_errors() {
    let d = [1.0; 8];
    assert_eq!(
        aggregate(&d, 1, 2, 3, Layout::Dense, &LayerSelection::All),
        Err(Error::ShapeMismatch {
            what: "attention",
            expected: 18,
            actual: 8
        })
    );
    assert_eq!(
        aggregate::<f64>(&[], 1, 1, 0, Layout::Dense, &LayerSelection::All),
        Err(Error::EmptySequence)
    );
    assert_eq!(
        aggregate::<f64>(&[], 0, 1, 2, Layout::Dense, &LayerSelection::All),
        Err(Error::ZeroDimension { what: "layers" })
    );
    assert_eq!(
        aggregate::<f64>(&[], 1, 0, 2, Layout::Dense, &LayerSelection::All),
        Err(Error::ZeroDimension { what: "heads" })
    );
    let mut d = vec![0.5; 2 * 2 * 4];
    d[(2 + 1) * 4 + 2] = f64::NAN; // layer 1, head 1, row 1, col 0
    d[3] = -1.0; // layer 0, head 0, row 1, col 1 (earlier, but negative loses to NaN)
    assert_eq!(
        aggregate(&d, 2, 2, 2, Layout::Dense, &LayerSelection::All),
        Err(Error::NonFinite {
            position: Position {
                layer: Some(1),
                head: Some(1),
                row: 1,
                col: 0
            }
        })
    );
    // Within a layer the lowest flat index wins, although rows are visited across heads
    // (head 1's row 0 is seen before head 0's row 1).
    let mut e = vec![0.5; 2 * 4];
    e[4] = f64::NAN; // head 1, row 0, col 0
    e[2] = f64::INFINITY; // head 0, row 1, col 0
    let at = |head, row, col| Position {
        layer: Some(0),
        head: Some(head),
        row,
        col,
    };
    assert_eq!(
        aggregate(&e, 1, 2, 2, Layout::Dense, &LayerSelection::All),
        Err(Error::NonFinite {
            position: at(0, 1, 0)
        })
    );
    let mut e = vec![0.5; 2 * 4];
    e[4] = -1.0; // head 1, row 0, col 0
    e[3] = -2.0; // head 0, row 1, col 1
    assert_eq!(
        aggregate(&e, 1, 2, 2, Layout::Dense, &LayerSelection::All),
        Err(Error::Negative {
            position: at(0, 1, 1),
            value: -2.0
        })
    );
    // Layer 1 is not selected: its NaN is not data.
    assert_eq!(
        aggregate(&d, 2, 2, 2, Layout::Dense, &LayerSelection::List(vec![0])),
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
}

#[test]
fn layer_selection() {
    assert_eq!(
        select_layers(12, &LayerSelection::Middle).unwrap(),
        [4, 5, 6, 7]
    );
    assert_eq!(select_layers(3, &LayerSelection::Middle).unwrap(), [1]);
    assert_eq!(select_layers(2, &LayerSelection::Middle).unwrap(), [0]);
    assert_eq!(select_layers(1, &LayerSelection::Middle).unwrap(), [0]);
    assert_eq!(select_layers(12, &LayerSelection::Spaced(1)).unwrap(), [5]);
    assert_eq!(
        select_layers(12, &LayerSelection::Spaced(2)).unwrap(),
        [4, 7]
    );
    assert_eq!(
        select_layers(12, &LayerSelection::Spaced(4)).unwrap(),
        [4, 5, 6, 7]
    );
    assert_eq!(
        select_layers(32, &LayerSelection::Spaced(3)).unwrap(),
        [10, 15, 20]
    );
    assert!(matches!(
        select_layers(12, &LayerSelection::Spaced(5)),
        Err(Error::InvalidLayerSelection { value: 5, .. })
    ));
    assert!(matches!(
        select_layers(12, &LayerSelection::Spaced(0)),
        Err(Error::InvalidLayerSelection { .. })
    ));
    assert_eq!(
        select_layers(4, &LayerSelection::Range(1..4)).unwrap(),
        [1, 2, 3]
    );
    assert!(matches!(
        select_layers(4, &LayerSelection::Range(1..5)),
        Err(Error::InvalidLayerSelection { value: 5, .. })
    ));
    assert!(matches!(
        select_layers(4, &LayerSelection::List(vec![1, 1])),
        Err(Error::InvalidLayerSelection { value: 1, .. })
    ));
    assert!(matches!(
        select_layers(4, &LayerSelection::List(vec![4])),
        Err(Error::InvalidLayerSelection { value: 4, .. })
    ));
    assert_eq!(
        select_layers(0, &LayerSelection::All),
        Err(Error::ZeroDimension { what: "layers" })
    );
}

#[test]
fn grpo_group_errors() {
    assert_eq!(
        group_advantages(&[1.0, 2.0], 1, ScaleRewards::Group, 1e-4),
        Err(Error::GroupTooSmall { num_generations: 1 })
    );
    assert_eq!(
        group_advantages(&[1.0, 2.0, 3.0], 2, ScaleRewards::Group, 1e-4),
        Err(Error::GroupSizeMismatch {
            batch: 3,
            num_generations: 2
        })
    );
    assert_eq!(
        group_advantages(&[1.0, f64::NAN], 2, ScaleRewards::Group, 1e-4),
        Err(Error::NonFiniteReward { index: 1 })
    );
}

/// One defect planted in a valid case.
#[derive(Debug, Clone, Copy)]
enum Defect {
    NonFinite(f64),
    Negative,
    Heavy,
}

proptest! {
    #[test]
    fn each_defect_gives_its_variant(c in case(16), which in 0u8..5, row_sel in any::<prop::sample::Index>(), col_sel in any::<prop::sample::Index>()) {
        let defect = [Defect::NonFinite(f64::NAN), Defect::NonFinite(f64::INFINITY), Defect::NonFinite(f64::NEG_INFINITY), Defect::Negative, Defect::Heavy][which as usize];
        let n = c.n;
        let row = row_sel.index(n);
        let col = col_sel.index(row + 1);
        let mut a = c.a.clone();
        let expected = match defect {
            Defect::NonFinite(v) => { a[row * n + col] = v; Error::NonFinite { position: Position::matrix(row, col) } }
            Defect::Negative => { a[row * n + col] = -0.5; Error::Negative { position: Position::matrix(row, col), value: -0.5 } }
            Defect::Heavy => {
                // Rows of a case carry mass 0.5 to 1, so this is at least 1.1.
                a[row * n + col] += 0.6;
                let mass: f64 = crate::common::row_mass(&a, n, row);
                Error::RowMassExceeded { row, mass, tolerance: 1e-3 }
            }
        };
        let got = trace(&Sequence::dense(&a, c.spans()).unwrap()).map(|_| ());
        match (got, expected) {
            (Err(Error::RowMassExceeded { row: r, mass: m, .. }), Error::RowMassExceeded { row: er, mass: em, .. }) => {
                prop_assert_eq!(r, er);
                prop_assert!(close(m, em, 1e-12, 1e-12));
            }
            (got, expected) => prop_assert_eq!(got, Err(expected)),
        }
    }
}
