//! `backbone::backbone` (reachable from user files through `flowtracer score`).
//!
//! Valid inputs, built from the bytes to be causal and row-stochastic (rows may be lighter
//! than 1, tokens may be dead), with spans as ranges or sorted position lists, an optional
//! explicit response, either answer mode, an edge threshold and any backbone settings in
//! range, are checked against the naive oracles: the path equals `reference::best_path`
//! (or, where two paths tie in exact arithmetic and rounding breaks the tie differently, is
//! a source-to-answer path whose probability by the reference's `W'` is the optimum within
//! [`TOL`]) and its probability agrees within [`TOL`]; the covering edges equal
//! `reference::covering_edges` as a set, flows within [`TOL`] (the sets may differ only by
//! rounding at the cut, see [`check_edges`]); the total edge flow agrees within [`TOL`];
//! the hubs equal `reference::select` on the response; the checkpoints are exactly the
//! tokens with `f >= checkpoint_threshold`.
//!
//! Any other input (planted defects, f32, settings out of range or NaN, a trace of another
//! sequence) must not panic, must fail only for the documented reasons, and a result must
//! be well formed.
#![no_main]

use core::fmt;

use arbitrary::Arbitrary;
use flowtracer_core::backbone::{Backbone, BackboneConfig, Edge, backbone};
use flowtracer_core::{AnswerMode, Error, FlowFloat, Sequence, Tokens, Trace, Tracer, reference};
use flowtracer_fuzz::{MAX_N, Problem, TraceCase, close, positions};
use libfuzzer_sys::fuzz_target;

/// The one tolerance of this target, for path probabilities, edge flows and the total edge
/// flow against the oracle: `|fast - reference| <= TOL.0 + TOL.1 * |reference|`.
const TOL: (f64, f64) = (1e-12, 1e-9);

/// `|x - reference| <= TOL.0 + TOL.1 * |reference|`.
fn near(x: f64, reference: f64) -> bool {
    close(x, reference, TOL.0, TOL.1)
}

#[derive(Arbitrary, Debug)]
enum Input {
    /// Valid by construction: checked against the reference.
    Valid(Valid),
    /// Anything: no panic, documented errors only, well-formed results.
    Any(Box<Any>),
}

/// A valid problem and backbone settings in range.
#[derive(Arbitrary)]
struct Valid {
    n: u8,
    weights: Vec<u8>,
    masses: Vec<u8>,
    /// Start, end, and a mask making it a sorted list (`None`: a range).
    question: (u8, u8, Option<u32>),
    /// Start, end, and a mask making it a sorted list (`None`: a range).
    answer: (u8, u8, Option<u32>),
    /// Mask over `0..n` of extra response tokens (`None`: the default response).
    response: Option<u32>,
    relay: bool,
    threshold: u8,
    coverage: u8,
    checkpoint: u8,
    rho: u8,
}

/// The positions of `range` whose bit is set in `mask`, plus `always`.
fn list(range: core::ops::Range<usize>, mask: u32, always: usize) -> Vec<usize> {
    let start = range.start;
    range
        .filter(|&p| p == always || (mask >> ((p - start) % 32)) & 1 == 1)
        .collect()
}

impl Valid {
    /// The problem (valid by construction) and the backbone settings.
    fn build(&self) -> (Problem, BackboneConfig) {
        let n = 2 + usize::from(self.n) % (MAX_N - 1);
        let mut a = vec![f64::NAN; n * n]; // garbage above the diagonal: never read
        for k in 0..n {
            let w = |i: usize| {
                if self.weights.is_empty() {
                    1.0
                } else {
                    f64::from(self.weights[(k * n + i) % self.weights.len()])
                }
            };
            let total: f64 = (0..=k).map(w).sum();
            let m = self.masses.get(k).copied().unwrap_or(255);
            let mass = if m > 127 { 1.0 } else { f64::from(m) / 128.0 };
            for i in 0..=k {
                a[k * n + i] = if total > 0.0 {
                    w(i) / total * mass
                } else {
                    0.0
                };
            }
        }
        let q_end = 1 + usize::from(self.question.1) % (n - 1);
        let q_start = usize::from(self.question.0) % q_end;
        let question = match self.question.2 {
            None => Tokens::Range(q_start..q_end),
            Some(m) => Tokens::List(list(q_start..q_end, m, q_end - 1)),
        };
        let a_start = q_end + usize::from(self.answer.0) % (n - q_end);
        let a_end = a_start + 1 + usize::from(self.answer.1) % (n - a_start);
        let answer = match self.answer.2 {
            None => Tokens::Range(a_start..a_end),
            Some(m) => Tokens::List(list(a_start..a_end, m, a_start)),
        };
        let response = self.response.map(|m| {
            let ans = positions(&answer);
            Tokens::List(
                (0..n)
                    .filter(|&p| ans.contains(&p) || (m >> (p % 32)) & 1 == 1)
                    .collect(),
            )
        });
        let problem = Problem {
            n,
            attention: a,
            question,
            answer,
            response,
            mode: if self.relay {
                AnswerMode::Relay
            } else {
                AnswerMode::Absorbing
            },
            single: false,
            threshold: if self.threshold < 128 {
                0.0
            } else {
                f64::from(self.threshold - 128) / 1024.0
            },
        };
        let config = BackboneConfig::default()
            .with_coverage(f64::from(self.coverage) / 255.0)
            .with_checkpoint_threshold(f64::from(self.checkpoint) / 255.0)
            .with_rho(f64::from(self.rho) / 255.0);
        (problem, config)
    }
}

impl fmt::Debug for Valid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (p, c) = self.build();
        writeln!(f, "{p:?}")?;
        write!(
            f,
            "let b = flowtracer_core::backbone::backbone(&seq, &trace, &{c:?});"
        )
    }
}

/// Anything: a problem with planted defects, another problem whose trace is passed along
/// (same or other length), settings from raw bits.
#[derive(Arbitrary, Debug)]
struct Any {
    case: TraceCase,
    other: Option<TraceCase>,
    coverage: f64,
    checkpoint: f64,
    rho: f64,
}

/// Covering edges against the oracle: every edge in both has flows within [`TOL`], and the
/// sets are equal except for rounding at the cut. An edge in one set alone must either tie
/// (within [`TOL`]) with the smallest edge of the other set (a tie group the cut splits, its
/// members ordered by flows that differ in the last bits), or be the last edge of its own
/// set while the flows before it already reach `target` within [`TOL`] (a cut that rounding
/// puts one edge earlier or later).
fn check_edges(fast: &[Edge], naive: &[(usize, usize, f64)], target: f64) {
    let fast: Vec<(usize, usize, f64)> = fast.iter().map(|e| (e.from, e.to, e.flow)).collect();
    for e in &fast {
        if let Some(r) = naive.iter().find(|r| (r.0, r.1) == (e.0, e.1)) {
            assert!(
                near(e.2, r.2),
                "edge {:?}: flow {} vs reference {}",
                (e.0, e.1),
                e.2,
                r.2
            );
        }
    }
    for (mine, other, who) in [(&fast[..], naive, "fast"), (naive, &fast[..], "reference")] {
        for (j, e) in mine.iter().enumerate() {
            if other.iter().any(|r| (r.0, r.1) == (e.0, e.1)) {
                continue;
            }
            let ties = other
                .last()
                .is_some_and(|last| near(e.2, last.2) || near(last.2, e.2));
            let before: f64 = mine[..j].iter().map(|x| x.2).sum();
            let late_cut = j + 1 == mine.len() && near(before, target);
            assert!(
                ties || late_cut,
                "edge {:?} (flow {}) only in the {who} set",
                (e.0, e.1),
                e.2
            );
        }
    }
}

/// The valid branch: agreement with the oracles.
fn check_valid(v: &Valid) {
    let (p, cfg) = v.build();
    let seq = Sequence::dense(&p.attention, p.spans()).expect("valid by construction");
    let (q, a) = (positions(&p.question), positions(&p.answer));
    let naive = reference::trace(&p.attention, p.n, &q, &a, p.mode, p.threshold);
    let t = match Tracer::new(p.config())
        .expect("valid by construction")
        .trace(&seq)
    {
        Err(Error::NoSourceMass) => {
            assert_eq!(
                naive.sources, 0,
                "NoSourceMass but the reference has sources"
            );
            return;
        }
        other => other.expect("valid input rejected"),
    };
    let b = backbone(&seq, &t, &cfg).expect("valid input and settings rejected");
    let (path, prob) = reference::best_path(&naive, &q, &a);
    assert!(
        near(b.path_probability, prob),
        "path probability {} vs reference {prob}",
        b.path_probability
    );
    if b.path != path {
        // Only a tie: paths whose probabilities are equal in exact arithmetic come out a few
        // ulps apart (the fast path sums logarithms, the reference multiplies), so the
        // tie-break (the earlier predecessor) can go either way. The fast path must then be
        // a path from a source to an answer token whose probability, by the reference's
        // `W'`, is the optimum within TOL.
        let first = b.path[0];
        assert!(
            q.contains(&first) && !a.contains(&first) && naive.h[first] > 0.0,
            "path {:?} does not start at a source (reference {path:?})",
            b.path
        );
        assert!(
            a.contains(&b.path[b.path.len() - 1]),
            "path {:?} does not end in the answer (reference {path:?})",
            b.path
        );
        let by_reference = b.path.windows(2).fold(1.0 / naive.sources as f64, |pr, w| {
            pr * naive.w_prime[w[0]][w[1]]
        });
        assert!(
            near(by_reference, prob),
            "path {:?} (reference probability {by_reference}) differs from the reference's {path:?} ({prob}), which is no tie",
            b.path
        );
    }
    let total: f64 = (0..p.n)
        .map(|k| {
            (0..k)
                .map(|i| naive.f[i] * naive.w_prime[i][k])
                .sum::<f64>()
        })
        .sum();
    assert!(
        near(b.total_edge_flow, total),
        "total edge flow {} vs reference {total}",
        b.total_edge_flow
    );
    check_edges(
        &b.edges,
        &reference::covering_edges(&naive, cfg.coverage),
        cfg.coverage * total,
    );
    let response = match &p.response {
        Some(r) => positions(r),
        None => (q[q.len() - 1] + 1..p.n).collect(),
    };
    assert_eq!(
        b.hubs,
        reference::select(t.throughput(), &response, cfg.rho, false),
        "hubs"
    );
    let checkpoints: Vec<usize> = (0..p.n)
        .filter(|&k| t.flow()[k] >= cfg.checkpoint_threshold)
        .collect();
    assert_eq!(b.checkpoints, checkpoints, "checkpoints");
    for k in 0..p.n {
        let f = naive.f[k];
        if !near(f, cfg.checkpoint_threshold) && !near(cfg.checkpoint_threshold, f) {
            assert_eq!(
                b.checkpoints.contains(&k),
                f >= cfg.checkpoint_threshold,
                "checkpoint {k}: reference f = {f}"
            );
        }
    }
}

/// A result must be well formed whatever the input.
fn check_well_formed<F: FlowFloat>(b: &Backbone, t: &Trace<F>, cfg: &BackboneConfig) {
    let n = t.n();
    assert!(
        b.path.windows(2).all(|w| w[0] < w[1]),
        "path not increasing: {:?}",
        b.path
    );
    if let (Some(&first), Some(&last)) = (b.path.first(), b.path.last()) {
        assert!(
            t.question().contains(first),
            "path starts outside the question: {:?}",
            b.path
        );
        assert!(
            t.answer().contains(last),
            "path ends outside the answer: {:?}",
            b.path
        );
    }
    assert!(
        b.path.is_empty() || b.path_probability >= 0.0,
        "probability {}",
        b.path_probability
    );
    for e in &b.edges {
        assert!(e.from < e.to && e.to < n, "edge {e:?}");
        assert!(e.flow > 0.0, "edge {e:?}");
    }
    assert!(
        b.edges.windows(2).all(|w| w[0].flow >= w[1].flow),
        "edges not sorted by flow"
    );
    let resp: Vec<usize> = t.response().iter().collect();
    assert!(
        b.hubs.windows(2).all(|w| w[0] < w[1]) && b.hubs.iter().all(|h| resp.contains(h)),
        "hubs {:?}",
        b.hubs
    );
    let flow: Vec<usize> = (0..n)
        .filter(|&k| t.flow()[k].widen() >= cfg.checkpoint_threshold)
        .collect();
    assert_eq!(b.checkpoints, flow, "checkpoints");
}

/// The any branch in one precision.
fn check_any<F: FlowFloat>(input: &Any, a: &[F], p: &Problem, other: Option<(&[F], &Problem)>) {
    let Ok(seq) = Sequence::dense(a, p.spans()) else {
        return;
    };
    let traced = match other {
        None => Tracer::new(p.config()).unwrap().trace(&seq),
        Some((oa, op)) => {
            let Ok(os) = Sequence::dense(oa, op.spans()) else {
                return;
            };
            Tracer::new(op.config()).unwrap().trace(&os)
        }
    };
    let Ok(t) = traced else { return };
    let cfg = BackboneConfig::default()
        .with_coverage(input.coverage)
        .with_checkpoint_threshold(input.checkpoint)
        .with_rho(input.rho);
    let got = backbone(&seq, &t, &cfg);
    let expected = if t.n() != seq.n() {
        Some(Error::ShapeMismatch {
            what: "trace",
            expected: seq.n(),
            actual: t.n(),
        })
    } else if !(0.0..=1.0).contains(&cfg.coverage) {
        Some(Error::InvalidConfig {
            field: "coverage",
            reason: "must lie in [0, 1]",
        })
    } else if !(0.0..=1.0).contains(&cfg.rho) {
        Some(Error::InvalidConfig {
            field: "rho",
            reason: "must lie in [0, 1]",
        })
    } else if !cfg.checkpoint_threshold.is_finite() {
        Some(Error::InvalidConfig {
            field: "checkpoint_threshold",
            reason: "must be finite",
        })
    } else {
        None
    };
    match (got, expected) {
        (Ok(b), None) => {
            // A trace of this very sequence: its data passed the checks.
            if other.is_none() {
                check_well_formed(&b, &t, &cfg);
            }
        }
        (got, expected) => assert_eq!(got.err(), expected),
    }
}

fuzz_target!(|input: Input| {
    match input {
        Input::Valid(v) => check_valid(&v),
        Input::Any(any) => {
            let p = any.case.problem();
            let op = any.other.as_ref().map(TraceCase::problem);
            if p.single {
                let a = p.attention_f32();
                let oa = op.as_ref().map(Problem::attention_f32);
                check_any(&any, &a, &p, oa.as_deref().zip(op.as_ref()));
            } else {
                check_any(
                    &any,
                    &p.attention,
                    &p,
                    op.as_ref().map(|o| (&o.attention[..], o)),
                );
            }
        }
    }
});
