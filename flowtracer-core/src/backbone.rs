//! The backbone of the flow ([method §8](docs/method.md#s8)) **\[ours: the paper names it, these
//! definitions are ours\]**: the most probable question-to-answer path, the edges that carry
//! most of the flow, the hubs and the checkpoints. An analysis tool, not on the training
//! path.

use alloc::vec;
use alloc::vec::Vec;
use core::cmp::Ordering;

use crate::error::Error;
use crate::float::FlowFloat;
use crate::reach::AnswerMode;
use crate::sequence::Sequence;
use crate::shaping::{Select, select_tokens};
use crate::trace::Trace;

/// Configuration of [`backbone`]. `Default` is the setting of [method §8](docs/method.md#s8).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct BackboneConfig {
    /// Fraction of the total edge flow the kept edges must reach (default 0.8).
    pub coverage: f64,
    /// Tokens with `f >= checkpoint_threshold` are checkpoints (default 0.5).
    pub checkpoint_threshold: f64,
    /// Fraction of response tokens that are hubs (default 0.4, as the shaping's `rho`).
    pub rho: f64,
}

impl Default for BackboneConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl BackboneConfig {
    /// The defaults, as a constant (what `Default` returns); `rho` is the shaping's.
    pub const DEFAULT: Self = Self {
        coverage: 0.8,
        checkpoint_threshold: 0.5,
        rho: crate::shaping::ShapingConfig::DEFAULT.rho,
    };

    /// Checks every field's domain.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the first bad field: `coverage` or `rho` outside
    /// `[0, 1]`, a non-finite `checkpoint_threshold`.
    pub fn validate(&self) -> Result<(), Error> {
        for (field, v) in [("coverage", self.coverage), ("rho", self.rho)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(Error::InvalidConfig {
                    field,
                    reason: "must lie in [0, 1]",
                });
            }
        }
        if !self.checkpoint_threshold.is_finite() {
            return Err(Error::InvalidConfig {
                field: "checkpoint_threshold",
                reason: "must be finite",
            });
        }
        Ok(())
    }

    /// Sets [`coverage`](Self::coverage).
    pub fn with_coverage(mut self, coverage: f64) -> Self {
        self.coverage = coverage;
        self
    }
    /// Sets [`checkpoint_threshold`](Self::checkpoint_threshold).
    pub fn with_checkpoint_threshold(mut self, threshold: f64) -> Self {
        self.checkpoint_threshold = threshold;
        self
    }
    /// Sets [`rho`](Self::rho).
    pub fn with_rho(mut self, rho: f64) -> Self {
        self.rho = rho;
        self
    }
}

/// One token-to-token edge and the flow it carries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Edge {
    /// Source token `i`.
    pub from: usize,
    /// Target token `k > i`.
    pub to: usize,
    /// Edge flow `phi(i -> k)`.
    pub flow: f64,
}

/// The backbone of one traced sequence.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Backbone {
    /// Most probable path from a source token to an answer token.
    pub path: Vec<usize>,
    /// Its probability `(1 / |Q+|) * product of W'` along it.
    pub path_probability: f64,
    /// Shortest prefix of the edges sorted by flow (descending, ties by `(from, to)`)
    /// whose flow reaches `coverage` of the total edge flow.
    pub edges: Vec<Edge>,
    /// Total flow over all token-to-token edges.
    pub total_edge_flow: f64,
    /// The top-`rho` response tokens by throughput.
    pub hubs: Vec<usize>,
    /// Tokens with `f >= checkpoint_threshold`.
    pub checkpoints: Vec<usize>,
}

/// The `h` of a trace and the flow `f(i)` of the tokens that pass flow on (live, and outside
/// the answer unless in relay mode; 0 for the others), in f64.
pub(crate) fn h_and_passing_flow<F: FlowFloat>(trace: &Trace<F>) -> (Vec<f64>, Vec<f64>) {
    let answer = trace.answer();
    let h: Vec<f64> = trace.reach().iter().map(|x| x.widen()).collect();
    let f = trace
        .flow()
        .iter()
        .zip(&h)
        .enumerate()
        .map(|(i, (f, &hi))| {
            let passes = trace.answer_mode() == AnswerMode::Relay || !answer.contains(i);
            if hi > 0.0 && passes { f.widen() } else { 0.0 }
        })
        .collect();
    (h, f)
}

/// Orders edges by flow descending, then `(from, to)` ascending.
pub(crate) fn edge_order(a: &Edge, b: &Edge) -> Ordering {
    b.flow
        .partial_cmp(&a.flow)
        .unwrap_or(Ordering::Equal)
        .then((a.from, a.to).cmp(&(b.from, b.to)))
}

/// Computes the backbone of a trace over the `Ā` it was computed from ([method §8](docs/method.md#s8)).
///
/// `path`: dynamic programming in log space over `W'`, on ties the earlier predecessor wins
/// (starting at a source counts as the earliest), then the earlier answer token. Ties are
/// exact ties of the computed log sums: paths equally probable in exact arithmetic may
/// differ in their last bits, and then the larger computed sum wins.
/// `edges`: the total flow is summed row by row of `Ā`; a bisection on the flow value finds
/// a threshold whose edges cover the target, and only those are kept and sorted.
///
/// # Errors
///
/// [`Error::ShapeMismatch`] if the trace is not of the sequence's length;
/// [`Error::InvalidConfig`] for `coverage` or `rho` outside `[0, 1]` or a non-finite
/// `checkpoint_threshold`. The hubs are taken over the trace's response.
///
/// # Complexity
///
/// Path O(N²) time, O(N) memory; edges O(N² log(1/ε)) time (about 60 bisection passes at
/// most), O(N + kept edges) memory; hubs O(|R| log |R|).
///
/// # Examples
///
/// ```
/// use flowtracer_core::{trace, Sequence, Spans};
/// use flowtracer_core::backbone::{backbone, BackboneConfig};
/// let a: [f64; 25] = [
///     1.0, 0.0, 0.0, 0.0, 0.0,
///     0.5, 0.5, 0.0, 0.0, 0.0,
///     0.3, 0.5, 0.2, 0.0, 0.0,
///     0.1, 0.2, 0.3, 0.4, 0.0,
///     0.1, 0.1, 0.6, 0.1, 0.1,
/// ];
/// let seq = Sequence::dense(&a, Spans::new(0..2, 4..5))?;
/// let t = trace(&seq)?;
/// let b = backbone(&seq, &t, &BackboneConfig::default())?;
/// assert_eq!(b.path, vec![1, 2, 4]);
/// assert!((b.path_probability - 10.0 / 29.0).abs() < 1e-12);
/// assert_eq!(b.edges.len(), 5);
/// assert_eq!(b.hubs, vec![2, 4]);
/// # Ok::<(), flowtracer_core::Error>(())
/// ```
pub fn backbone<F: FlowFloat>(
    seq: &Sequence<'_, F>,
    trace: &Trace<F>,
    config: &BackboneConfig,
) -> Result<Backbone, Error> {
    let n = seq.n();
    if trace.n() != n {
        return Err(Error::ShapeMismatch {
            what: "trace",
            expected: n,
            actual: trace.n(),
        });
    }
    config.validate()?;
    let (h, fp) = h_and_passing_flow(trace);
    let threshold = trace.edge_threshold();
    let w = |k: usize, i: usize| {
        let x = seq.at(k, i).widen();
        if threshold > 0.0 && x < threshold {
            0.0
        } else {
            x
        }
    };
    let (path, path_probability) = best_path(trace, &h, &fp, &w);
    let (edges, total_edge_flow) = covering_edges(n, &h, &fp, &w, config.coverage);
    let hubs = select_tokens(
        trace.throughput(),
        trace.response(),
        config.rho,
        Select::Top,
    );
    let checkpoints = (0..n)
        .filter(|&k| trace.flow()[k].widen() >= config.checkpoint_threshold)
        .collect();
    Ok(Backbone {
        path,
        path_probability,
        edges,
        total_edge_flow,
        hubs,
        checkpoints,
    })
}

fn best_path<F: FlowFloat>(
    trace: &Trace<F>,
    h: &[f64],
    fp: &[f64],
    w: &impl Fn(usize, usize) -> f64,
) -> (Vec<usize>, f64) {
    let n = trace.n();
    let (question, answer) = (trace.question(), trace.answer());
    let mut best = vec![f64::NEG_INFINITY; n];
    let mut pred = vec![usize::MAX; n];
    let start = -num_traits::Float::ln(trace.num_sources() as f64);
    let lo = question.first().unwrap_or(0);
    for k in lo..answer.end() {
        if h[k] <= 0.0 {
            continue;
        }
        if question.contains(k) && !answer.contains(k) {
            best[k] = start;
        }
        for i in lo..k {
            // Only tokens that pass flow on and carry some.
            if fp[i] <= 0.0 || best[i] == f64::NEG_INFINITY {
                continue;
            }
            let wik = w(k, i);
            if wik <= 0.0 {
                continue;
            }
            // ln of W' itself, not a sum of logs: a W' of exactly 1 adds exactly 0, so a
            // path through a token whose only edge this is ties with starting after it.
            let cand = best[i] + num_traits::Float::ln(wik * h[k] / h[i]);
            if cand > best[k] {
                best[k] = cand;
                pred[k] = i;
            }
        }
    }
    let mut end = None;
    for a in answer.iter() {
        if best[a] > end.map_or(f64::NEG_INFINITY, |e: usize| best[e]) {
            end = Some(a);
        }
    }
    let Some(end) = end else {
        return (Vec::new(), 0.0);
    };
    let mut path = vec![end];
    let mut k = end;
    while pred[k] != usize::MAX {
        k = pred[k];
        path.push(k);
    }
    path.reverse();
    (path, num_traits::Float::exp(best[end]))
}

fn covering_edges(
    n: usize,
    h: &[f64],
    fp: &[f64],
    w: &impl Fn(usize, usize) -> f64,
    coverage: f64,
) -> (Vec<Edge>, f64) {
    // phi = f(i) W'[i][k], with W' = (W h(k)) / h(i): no factor can overflow.
    let phi = |i: usize, k: usize| {
        if fp[i] > 0.0 {
            fp[i] * ((w(k, i) * h[k]) / h[i])
        } else {
            0.0
        }
    };
    // Sum and max over all edges, row by row of Ā.
    let (mut total, mut max) = (0.0f64, 0.0f64);
    for k in 0..n {
        for i in 0..k {
            let p = phi(i, k);
            total += p;
            max = max.max(p);
        }
    }
    let target = coverage * total;
    if target.is_nan() || target <= 0.0 {
        return (Vec::new(), total);
    }
    let mass_at_least = |t: f64| {
        let mut s = 0.0;
        for k in 0..n {
            for i in 0..k {
                let p = phi(i, k);
                if p >= t && p > 0.0 {
                    s += p;
                }
            }
        }
        s
    };
    // Largest threshold whose edges still cover the target with a margin for rounding.
    let goal = target * (1.0 + 1e-9);
    let (mut lo, mut hi) = (0.0f64, max);
    if mass_at_least(hi) >= goal {
        lo = hi;
    } else {
        for _ in 0..60 {
            let mid = 0.5 * (lo + hi);
            if mid <= lo || mid >= hi {
                break;
            }
            if mass_at_least(mid) >= goal {
                lo = mid
            } else {
                hi = mid
            }
        }
    }
    let mut edges = Vec::new();
    for k in 0..n {
        for i in 0..k {
            let p = phi(i, k);
            if p > 0.0 && p >= lo {
                edges.push(Edge {
                    from: i,
                    to: k,
                    flow: p,
                });
            }
        }
    }
    edges.sort_unstable_by(edge_order);
    let mut sum = 0.0;
    let cut = edges
        .iter()
        .position(|e| {
            sum += e.flow;
            sum >= target
        })
        .map_or(edges.len(), |p| p + 1);
    edges.truncate(cut);
    (edges, total)
}
