//! Property tests on inputs valid by construction (see `common::case`).
//! Case count: `PROPTEST_CASES` (proptest's default 256 otherwise).

use flowtracer_core::aggregate::{LayerSelection, Layout, aggregate};
use flowtracer_core::backbone::{BackboneConfig, backbone};
use flowtracer_core::flow::conservation_residual;
use flowtracer_core::grpo::{ScaleRewards, group_advantages};
use flowtracer_core::shaping::{
    Select, ShapingConfig, select_tokens, shape_advantage, token_weights,
};
use flowtracer_core::{
    AnswerMode, Config, Error, Sequence, Spans, Tokens, Trace, TraceConfig, Tracer, reference,
    trace,
};
use proptest::prelude::*;

use crate::common::*;

fn modes() -> impl Strategy<Value = AnswerMode> {
    prop_oneof![Just(AnswerMode::Absorbing), Just(AnswerMode::Relay)]
}

proptest! {
    #[test]
    fn fast_path_equals_reference(c in case(24), mode in modes(), thr in prop_oneof![Just(0.0), 0.0f64..0.3]) {
        check_fast_path(&c, mode, thr)?;
    }

    #[test]
    fn conservation_residual_is_rounding_and_sees_a_perturbation(
        c in case(32),
        mode in modes(),
        thr in prop_oneof![Just(0.0), 0.0f64..0.3],
        bump in 0.001f64..0.5,
    ) {
        let cfg = TraceConfig::default().with_answer_mode(mode).with_edge_threshold(thr);
        let seq = c.seq();
        let Ok(t) = tracer(cfg).unwrap().trace(&seq) else {
            return Ok(());
        };
        let r = conservation_residual(&seq, thr, t.reach());
        prop_assert!(r <= 1e-12, "residual {r}");
        // One live token outside the answer with its reach off by `bump` breaks its row.
        if let Some(i) = (0..c.n).find(|&i| t.reach()[i] > 0.0 && !c.answer.contains(&i)) {
            let mut h = t.reach().to_vec();
            h[i] *= 1.0 + bump;
            let r = conservation_residual(&seq, thr, &h);
            prop_assert!(r >= bump / (1.0 + bump) - 1e-12, "residual {r} for bump {bump}");
        }
    }

    #[test]
    fn conservation_and_bounds(c in case(32), mode in modes()) {
        let cfg = TraceConfig::default().with_answer_mode(mode);
        let Ok(t) = tracer(cfg).unwrap().trace(&c.seq()) else {
            return Ok(());
        };
        let (h, f, tau) = (t.reach(), t.flow(), t.throughput());
        let n = c.n;
        for i in 0..n {
            // sum_k W'[i][k] = 1 for every live non-answer token.
            if h[i] > 0.0 && !c.answer.contains(&i) {
                let s: f64 = (i + 1..n).map(|k| c.a[k * n + i] * h[k] / h[i]).sum();
                prop_assert!(close(s, 1.0, 1e-12, 1e-12), "row {} of W' sums to {}", i, s);
            }
            if mode == AnswerMode::Absorbing {
                prop_assert!(f[i] >= 0.0 && f[i] <= 1.0 + 1e-12, "f[{}] = {}", i, f[i]);
            }
            let expected_tau = if h[i] > 0.0 { 2.0 * f[i] } else { 0.0 };
            prop_assert_eq!(tau[i], expected_tau);
            if i >= c.answer.end {
                prop_assert_eq!((h[i], f[i], tau[i]), (0.0, 0.0, 0.0));
            }
        }
        // All injected flow reaches the answer.
        prop_assert!(close(t.answer_mass(), 1.0, 1e-12, 0.0), "answer mass {}", t.answer_mass());
    }

    #[test]
    fn f32_matches_f64(c in case(32)) {
        let t64 = trace(&c.seq());
        let a32 = to_f32(&c.a);
        let t32 = trace(&Sequence::dense(&a32, c.spans()).unwrap());
        match (t64, t32) {
            (Ok(a), Ok(b)) => {
                assert_all_close(&widen(b.reach()), a.reach(), F32_ABS, F32_REL, "h");
                assert_all_close(&widen(b.flow()), a.flow(), F32_ABS, F32_REL, "f");
            }
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (a, b) => prop_assert!(false, "f64 {:?} vs f32 {:?}", a.err(), b.err()),
        }
    }

    /// One `Tracer` reused across sequences of different sizes (its scratch and a reused
    /// output) gives exactly what a fresh one gives; so does the batch, in input order.
    #[test]
    fn tracer_reuse_equals_fresh(cases in prop::collection::vec(case(20), 1..6)) {
        let mut reused = Tracer::new(Config::default()).unwrap();
        let mut into = Tracer::new(Config::default()).unwrap();
        let mut out = Trace::default();
        let seqs: Vec<Sequence<'_, f64>> = cases.iter().map(Case::seq).collect();
        for seq in &seqs {
            let fresh = trace(seq);
            let again = reused.trace(seq);
            let filled = into.trace_into(seq, &mut out);
            prop_assert_eq!(&fresh, &again);
            match fresh {
                Ok(t) => {
                    prop_assert_eq!(filled, Ok(()));
                    prop_assert_eq!(&t, &out);
                    // The f64 reach before storing: the stored one, exactly, for f64.
                    prop_assert_eq!(reused.last_reach(), t.reach());
                    prop_assert_eq!(into.last_reach(), t.reach());
                }
                Err(e) => prop_assert_eq!(Err(e), filled),
            }
        }
        let batch = reused.trace_batch(&seqs);
        prop_assert_eq!(batch.len(), seqs.len());
        for (seq, b) in seqs.iter().zip(&batch) {
            prop_assert_eq!(&trace(seq), b);
        }
    }

    #[test]
    fn backbone_equals_reference(c in case(16), coverage in 0.0f64..=1.0) {
        let seq = c.seq();
        let Ok(t) = trace(&seq) else {
            return Ok(());
        };
        // The default response: every token after the question.
        let response: Vec<usize> = (c.question.end..c.n).collect();
        prop_assert_eq!(t.response(), &Tokens::Range(c.question.end..c.n));
        let cfg = BackboneConfig::default().with_coverage(coverage);
        let b = backbone(&seq, &t, &cfg).unwrap();
        let (q, a) = (c.question_positions(), c.answer_positions());
        let naive = reference::trace(&c.a, c.n, &q, &a, AnswerMode::Absorbing, 0.0);
        let (path, p) = reference::best_path(&naive, &q, &a);
        prop_assert!(close(b.path_probability, p, 1e-12, 1e-9), "{} vs {}", b.path_probability, p);
        prop_assert_eq!(b.path, path);
        let edges = reference::covering_edges(&naive, coverage);
        // The flows agree position by position; the (i, k) labels may differ only among
        // edges whose flows tie to rounding (e.g. two edges each carrying exactly 1/2), at
        // most one tie group's worth at the cut.
        let common = b.edges.len().min(edges.len());
        for (e, r) in b.edges[..common].iter().zip(&edges[..common]) {
            prop_assert!(close(e.flow, r.2, F64_ABS, F64_REL), "phi {} vs {}", e.flow, r.2);
        }
        for e in &b.edges {
            if !edges.iter().any(|r| (r.0, r.1) == (e.from, e.to)) {
                prop_assert!(edges.iter().any(|r| close(r.2, e.flow, F64_ABS, F64_REL)), "edge {:?} only in fast", e);
            }
        }
        for r in &edges {
            if !b.edges.iter().any(|e| (r.0, r.1) == (e.from, e.to)) {
                let near_cut = b.edges.last().is_some_and(|last| close(r.2, last.flow, F64_ABS, F64_REL));
                let swapped = b.edges.iter().any(|e| close(r.2, e.flow, F64_ABS, F64_REL));
                prop_assert!(near_cut || swapped, "edge {:?} only in reference", r);
            }
        }
        prop_assert!(b.edges.len().abs_diff(edges.len()) <= 1);
        prop_assert_eq!(b.hubs, reference::select(t.throughput(), &response, 0.4, false));
    }

    #[test]
    fn selection_equals_reference(
        scores in prop::collection::vec(prop_oneof![2 => 0.0f64..2.0, 1 => Just(0.0), 1 => Just(1.0)], 1..40),
        keep in prop::collection::vec(any::<bool>(), 40),
        rho in 0.0f64..=1.0,
        bottom in any::<bool>(),
    ) {
        let n = scores.len();
        let select = if bottom { Select::Bottom } else { Select::Top };
        for start in [0, n / 2] {
            let got = select_tokens(&scores, &(start..n).into(), rho, select);
            let all: Vec<usize> = (start..n).collect();
            prop_assert_eq!(got, reference::select(&scores, &all, rho, bottom));
        }
        // A response given as a list of positions (possibly empty).
        let list: Vec<usize> = (0..n).filter(|&i| keep[i]).collect();
        let got = select_tokens(&scores, &Tokens::from(list.clone()), rho, select);
        prop_assert_eq!(got, reference::select(&scores, &list, rho, bottom));
    }

    #[test]
    fn mix_zero_is_plain_grpo(
        scores in prop::collection::vec(0.0f64..2.0, 2..30),
        adv in -3.0f64..3.0,
        normalize in any::<bool>(),
    ) {
        let n = scores.len();
        let cfg = ShapingConfig::default().with_mix(0.0).with_normalize_mean(normalize);
        let w = token_weights(&scores, &(1..n).into(), &cfg).unwrap();
        let mut out = vec![0.0; n];
        shape_advantage(adv, &w, &cfg, &mut out);
        prop_assert!(out.iter().all(|&x| x == adv));
    }

    #[test]
    fn normalize_mean_gives_mean_one(scores in prop::collection::vec(0.01f64..2.0, 2..30), gamma in 0.5f64..3.0) {
        let n = scores.len();
        let cfg = ShapingConfig::default().with_gamma_flow(gamma).with_normalize_mean(true);
        let w = token_weights(&scores, &(0..n).into(), &cfg).unwrap();
        let mean: f64 = w.iter().sum::<f64>() / n as f64;
        prop_assert!(close(mean, 1.0, 1e-12, 0.0));
    }

    #[test]
    fn group_advantages_sum_to_zero(
        g in 2usize..8,
        groups in 1usize..5,
        seed in prop::collection::vec(-2.0f64..2.0, 40),
        scale in 0u8..3,
    ) {
        let rewards: Vec<f64> = seed[..g * groups].to_vec();
        let kind = [ScaleRewards::Group, ScaleRewards::Batch, ScaleRewards::None][scale as usize];
        let adv = group_advantages(&rewards, g, kind, 1e-4).unwrap();
        let naive = reference::group_advantages(&rewards, g, scale, 1e-4);
        assert_all_close(&adv, &naive, F64_ABS, F64_REL, "advantages");
        for grp in adv.chunks(g) {
            let s: f64 = grp.iter().sum();
            prop_assert!(s.abs() < 1e-9, "group sums to {}", s);
        }
    }

    #[test]
    fn aggregation_is_the_mean_and_ignores_order(
        layers in 1usize..5, heads in 1usize..4, n in 1usize..7,
        raw in prop::collection::vec(0.0f64..1.0, 4 * 3 * 6 * 6),
        rot in 0usize..4,
    ) {
        let m = n * n;
        let data: Vec<f64> = raw[..layers * heads * m].to_vec();
        let a = aggregate(&data, layers, heads, n, Layout::Dense, &LayerSelection::All).unwrap();
        let all: Vec<usize> = (0..layers).collect();
        assert_all_close(&a, &reference::aggregate(&data, heads, n, &all), 1e-12, 1e-12, "mean");
        // Permute heads within each layer and rotate the layers: same Ā.
        let mut perm = vec![0.0; data.len()];
        for l in 0..layers {
            for h in 0..heads {
                let (pl, ph) = ((l + rot) % layers, (heads - 1 - h));
                perm[(pl * heads + ph) * m..(pl * heads + ph + 1) * m].copy_from_slice(&data[(l * heads + h) * m..(l * heads + h + 1) * m]);
            }
        }
        let b = aggregate(&perm, layers, heads, n, Layout::Dense, &LayerSelection::All).unwrap();
        assert_all_close(&b, &a, 1e-12, 1e-12, "permuted");
        // Packed input gives the same Ā.
        let mut packed = Vec::new();
        for mat in data.chunks(m) {
            for k in 0..n { packed.extend_from_slice(&mat[k * n..=k * n + k]); }
        }
        let c = aggregate(&packed, layers, heads, n, Layout::Packed, &LayerSelection::All).unwrap();
        prop_assert_eq!(c, a);
    }
}

proptest! {
    /// Spans as sorted position lists: the trace equals the oracle on the same positions,
    /// and the tracer's token weights are the oracle's selection over the list response.
    #[test]
    fn list_spans_equal_reference(
        c in list_case(24),
        mode in modes(),
        thr in prop_oneof![Just(0.0), 0.0f64..0.3],
        rho in 0.0f64..=1.0,
        bottom in any::<bool>(),
    ) {
        let spans = Spans::new(c.question.clone(), c.answer.clone()).with_response(c.response.clone());
        if c.n == 1 {
            prop_assert_eq!(
                Sequence::dense(&c.a, spans),
                Err(Error::AnswerNotAfterQuestion { question: 0..1, answer: 0..1 })
            );
            return Ok(());
        }
        let seq = Sequence::dense(&c.a, spans).unwrap();
        prop_assert_eq!(seq.response(), &Tokens::List(c.response.clone()));
        let select = if bottom { Select::Bottom } else { Select::Top };
        let config = Config::default()
            .with_trace(TraceConfig::default().with_answer_mode(mode).with_edge_threshold(thr))
            .with_shaping(ShapingConfig::default().with_rho(rho).with_select(select));
        let mut tracer = Tracer::new(config).unwrap();
        let naive = reference::trace(&c.a, c.n, &c.question, &c.answer, mode, thr);
        match tracer.trace(&seq) {
            Ok(t) => {
                assert_all_close(t.reach(), &naive.h, F64_ABS, F64_REL, "h");
                assert_all_close(t.flow(), &naive.f, F64_ABS, F64_REL, "f");
                assert_all_close(t.throughput(), &naive.tau, F64_ABS, F64_REL, "tau");
                prop_assert_eq!(t.num_sources(), naive.sources);
                prop_assert_eq!(t.question(), &Tokens::List(c.question.clone()));
                prop_assert_eq!(t.answer(), &Tokens::List(c.answer.clone()));
                prop_assert_eq!(t.response(), &Tokens::List(c.response.clone()));
                let chosen = reference::select(t.throughput(), &c.response, rho, bottom);
                let expected: Vec<f64> =
                    (0..c.n).map(|i| if chosen.contains(&i) { 1.5 } else { 1.0 }).collect();
                prop_assert_eq!(tracer.token_weights(&t), expected);
            }
            Err(e) => {
                prop_assert_eq!(e, Error::NoSourceMass);
                prop_assert_eq!(naive.sources, 0);
            }
        }
    }
}

/// The fast path against the naive oracle on one case (f64, tolerances of `common`).
fn check_fast_path(c: &Case, mode: AnswerMode, thr: f64) -> Result<(), TestCaseError> {
    let cfg = TraceConfig::default()
        .with_answer_mode(mode)
        .with_edge_threshold(thr);
    let (q, a) = (c.question_positions(), c.answer_positions());
    let naive = reference::trace(&c.a, c.n, &q, &a, mode, thr);
    match tracer(cfg).unwrap().trace(&c.seq()) {
        Ok(t) => {
            assert_all_close(t.reach(), &naive.h, F64_ABS, F64_REL, "h");
            assert_all_close(t.flow(), &naive.f, F64_ABS, F64_REL, "f");
            assert_all_close(t.throughput(), &naive.tau, F64_ABS, F64_REL, "tau");
            prop_assert_eq!(t.num_sources(), naive.sources);
        }
        Err(e) => {
            prop_assert_eq!(e, Error::NoSourceMass);
            prop_assert_eq!(naive.sources, 0);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Rows longer than the forward kernel's column block (128 entries), with every
    /// remainder of the four-row blocks (`stages::long_rows_equal_reference` covers the
    /// backward kernel's 512-entry summary blocks).
    #[test]
    fn fast_path_equals_reference_long_rows(c in case(300), mode in modes(), thr in prop_oneof![Just(0.0), 0.0f64..0.3]) {
        check_fast_path(&c, mode, thr)?;
    }
}
