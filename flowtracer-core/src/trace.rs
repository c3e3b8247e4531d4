//! The front door: validated reach, flow and throughput of one sequence, or a batch.

use alloc::vec::Vec;
use core::ops::Range;

use crate::error::Error;
use crate::float::FlowFloat;
use crate::flow::{flow_into, throughput_into};
use crate::reach::{AnswerMode, reach_into};
use crate::validate::{check_matrix_shape, check_spans};

/// Configuration of [`trace`]. `Default` is the paper's setting.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct TraceConfig<F> {
    /// How answer tokens treat flow (default [`AnswerMode::Absorbing`]).
    pub answer_mode: AnswerMode,
    /// **\[ours\]** Edges with `W < edge_threshold` are dropped before the reach is
    /// computed (default 0: nothing is dropped).
    pub edge_threshold: F,
    /// A row of `Ā` may sum to at most `1 + row_tolerance` (default `1e-3`).
    pub row_tolerance: F,
}

impl<F: FlowFloat> Default for TraceConfig<F> {
    fn default() -> Self {
        Self {
            answer_mode: AnswerMode::Absorbing,
            edge_threshold: F::zero(),
            row_tolerance: F::from_f64_lossy(1e-3),
        }
    }
}

impl<F: FlowFloat> TraceConfig<F> {
    /// Sets [`answer_mode`](Self::answer_mode).
    pub fn with_answer_mode(mut self, mode: AnswerMode) -> Self {
        self.answer_mode = mode;
        self
    }

    /// Sets [`edge_threshold`](Self::edge_threshold).
    pub fn with_edge_threshold(mut self, threshold: F) -> Self {
        self.edge_threshold = threshold;
        self
    }

    /// Sets [`row_tolerance`](Self::row_tolerance).
    pub fn with_row_tolerance(mut self, tolerance: F) -> Self {
        self.row_tolerance = tolerance;
        self
    }

    /// Checks every field's domain.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a negative or non-finite `edge_threshold` or
    /// `row_tolerance`.
    pub fn validate(&self) -> Result<(), Error> {
        let t = self.edge_threshold.widen();
        if !(t >= 0.0 && t.is_finite()) {
            return Err(Error::InvalidConfig {
                field: "edge_threshold",
                reason: "must be finite and >= 0",
            });
        }
        let r = self.row_tolerance.widen();
        if !(r >= 0.0 && r.is_finite()) {
            return Err(Error::InvalidConfig {
                field: "row_tolerance",
                reason: "must be finite and >= 0",
            });
        }
        Ok(())
    }
}

/// The result of tracing one sequence: reach, flow and throughput of every token.
///
/// Values are computed in f64 and stored as `F`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Trace<F> {
    n: usize,
    question: Range<usize>,
    answer: Range<usize>,
    answer_mode: AnswerMode,
    edge_threshold: F,
    num_sources: usize,
    reach: Vec<F>,
    flow: Vec<F>,
    throughput: Vec<F>,
}

impl<F: FlowFloat> Trace<F> {
    /// An empty trace, to be filled by [`trace_with_workspace`].
    pub fn new() -> Self {
        Self {
            n: 0,
            question: 0..0,
            answer: 0..0,
            answer_mode: AnswerMode::Absorbing,
            edge_threshold: F::zero(),
            num_sources: 0,
            reach: Vec::new(),
            flow: Vec::new(),
            throughput: Vec::new(),
        }
    }

    /// Number of tokens `N`.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The question span `Q`.
    pub fn question(&self) -> Range<usize> {
        self.question.clone()
    }

    /// The answer span `A`.
    pub fn answer(&self) -> Range<usize> {
        self.answer.clone()
    }

    /// The answer mode the trace was computed with.
    pub fn answer_mode(&self) -> AnswerMode {
        self.answer_mode
    }

    /// The edge threshold the trace was computed with.
    pub fn edge_threshold(&self) -> F {
        self.edge_threshold
    }

    /// `|Q+|`: the number of live question tokens where flow was injected.
    pub fn num_sources(&self) -> usize {
        self.num_sources
    }

    /// Reach `h` (spec §4), length `N`. Positive exactly for live tokens (a live reach too
    /// small for `F` is stored as `F`'s smallest subnormal).
    pub fn reach(&self) -> &[F] {
        &self.reach
    }

    /// Flow `f` (spec §6), length `N`, each in `[0, 1]`.
    pub fn flow(&self) -> &[F] {
        &self.flow
    }

    /// Throughput `tau` (spec §7), length `N`: `2 f` for live tokens, 0 otherwise.
    pub fn throughput(&self) -> &[F] {
        &self.throughput
    }

    /// Flow absorbed by the answer: `sum f(a)` (absorbing) or `sum f(a) / h(a)` (relay).
    /// Conservation makes it 1 up to rounding.
    ///
    /// # Complexity
    ///
    /// O(|A|).
    pub fn answer_mass(&self) -> f64 {
        self.answer
            .clone()
            .map(|a| {
                let f = self.flow[a].widen();
                match self.answer_mode {
                    AnswerMode::Absorbing => f,
                    AnswerMode::Relay => f / self.reach[a].widen(),
                }
            })
            .sum()
    }
}

/// Reusable scratch for [`trace_with_workspace`]: three f64 buffers of length `N`.
#[derive(Debug, Clone, Default)]
pub struct Workspace {
    h: Vec<f64>,
    u: Vec<f64>,
    f: Vec<f64>,
}

impl Workspace {
    /// An empty workspace; it grows to the largest `N` it sees and then stops allocating.
    pub fn new() -> Self {
        Self::default()
    }

    /// `u = f / h` of the last trace, masked as in [`flow_into`] (what edge flows need).
    pub fn u(&self) -> &[f64] {
        &self.u
    }

    /// Reach `h` of the last trace, in f64.
    pub fn h(&self) -> &[f64] {
        &self.h
    }
}

/// Sets the length to `n` without clearing: the passes zero what they accumulate into and
/// overwrite every output, so stale values never survive (the `workspace_reuse` fuzz
/// target checks exactly this).
fn resize<T: Copy + Default>(v: &mut Vec<T>, n: usize) {
    v.resize(n, T::default());
}

/// Traces the flow from `question` to `answer` through the attention graph `Ā`.
///
/// `attention` is the dense row-major `n x n` aggregated attention `Ā[k][i]` (query `k`,
/// key `i <= k`); entries above the diagonal are ignored. Spans are half-open token ranges.
///
/// # Errors
///
/// The first failing check of spec §13, see [`validate`](crate::validate), and
/// [`Error::InvalidConfig`] for a negative or non-finite threshold or tolerance.
///
/// # Complexity
///
/// O(N²) time: two streaming reads of the lower triangle (one backward, one forward).
/// Extra memory O(N).
///
/// # Examples
///
/// The worked example of spec §12:
///
/// ```
/// use flowtracer_core::{trace, TraceConfig};
/// let a: [f64; 25] = [
///     1.0, 0.0, 0.0, 0.0, 0.0,
///     0.5, 0.5, 0.0, 0.0, 0.0,
///     0.3, 0.5, 0.2, 0.0, 0.0,
///     0.1, 0.2, 0.3, 0.4, 0.0,
///     0.1, 0.1, 0.6, 0.1, 0.1,
/// ];
/// let t = trace(&a, 5, 0..2, 4..5, &TraceConfig::default())?;
/// assert!((t.reach()[0] - 0.5165).abs() < 1e-12);
/// assert!((t.flow()[1] - 734.0 / 1033.0).abs() < 1e-12);
/// assert!((t.throughput()[4] - 2.0).abs() < 1e-12);
/// # Ok::<(), flowtracer_core::Error>(())
/// ```
pub fn trace<F: FlowFloat>(
    attention: &[F],
    n: usize,
    question: Range<usize>,
    answer: Range<usize>,
    config: &TraceConfig<F>,
) -> Result<Trace<F>, Error> {
    let mut out = Trace::new();
    trace_with_workspace(
        attention,
        n,
        question,
        answer,
        config,
        &mut Workspace::new(),
        &mut out,
    )?;
    Ok(out)
}

/// [`trace`] into a caller-provided [`Trace`], using caller-provided scratch.
///
/// Allocates nothing once `workspace` and `out` have held a sequence at least this long.
/// On error, `out` is left unspecified.
///
/// # Errors
///
/// As [`trace`].
///
/// # Complexity
///
/// As [`trace`].
///
/// # Examples
///
/// ```
/// use flowtracer_core::{trace_with_workspace, Trace, TraceConfig, Workspace};
/// let mut ws = Workspace::new();
/// let mut out = Trace::new();
/// for n in [2usize, 3] {
///     // Uniform causal attention.
///     let mut a = vec![0.0f32; n * n];
///     for k in 0..n { for i in 0..=k { a[k * n + i] = 1.0 / (k + 1) as f32; } }
///     trace_with_workspace(&a, n, 0..1, n - 1..n, &TraceConfig::default(), &mut ws, &mut out)?;
///     assert!((out.answer_mass() - 1.0).abs() < 1e-6);
/// }
/// # Ok::<(), flowtracer_core::Error>(())
/// ```
pub fn trace_with_workspace<F: FlowFloat>(
    attention: &[F],
    n: usize,
    question: Range<usize>,
    answer: Range<usize>,
    config: &TraceConfig<F>,
    workspace: &mut Workspace,
    out: &mut Trace<F>,
) -> Result<(), Error> {
    check_matrix_shape(attention.len(), n)?;
    check_spans(n, &question, &answer)?;
    config.validate()?;
    let Workspace { h, u, f } = workspace;
    resize(h, n);
    resize(u, n);
    resize(f, n);
    reach_into(
        attention,
        n,
        answer.clone(),
        config.answer_mode,
        config.edge_threshold,
        config.row_tolerance,
        h,
    )?;
    let sources = flow_into(
        attention,
        n,
        &question,
        &answer,
        config.answer_mode,
        config.edge_threshold,
        h,
        u,
        f,
    )?;
    out.n = n;
    out.question = question;
    out.answer = answer;
    out.answer_mode = config.answer_mode;
    out.edge_threshold = config.edge_threshold;
    out.num_sources = sources;
    out.reach.clear();
    // A live reach below `F`'s smallest subnormal is stored as that subnormal rather than
    // 0, so `reach() > 0` still tells exactly which tokens are live.
    let tiny = F::min_positive_value() * F::epsilon();
    out.reach.extend(h.iter().map(|&x| {
        let r = F::from_f64_lossy(x);
        if r == F::zero() && x > 0.0 { tiny } else { r }
    }));
    out.flow.clear();
    out.flow.extend(f.iter().map(|&x| F::from_f64_lossy(x)));
    resize(&mut out.throughput, n);
    throughput_into(&out.flow, h, &mut out.throughput);
    Ok(())
}

/// One sequence of a batch: its `Ā` and spans.
#[derive(Debug, Clone)]
pub struct TraceInput<'a, F> {
    /// Dense row-major `n x n` aggregated attention.
    pub attention: &'a [F],
    /// Number of tokens.
    pub n: usize,
    /// Question span.
    pub question: Range<usize>,
    /// Answer span.
    pub answer: Range<usize>,
}

/// Traces many sequences (e.g. a GRPO group) with one reused workspace.
///
/// Each result is independent: one bad sequence does not stop the others.
///
/// # Complexity
///
/// The sum of the sequences' O(N²); extra memory O(max N) beyond the outputs.
pub fn trace_batch<F: FlowFloat>(
    inputs: &[TraceInput<'_, F>],
    config: &TraceConfig<F>,
) -> Vec<Result<Trace<F>, Error>> {
    let mut ws = Workspace::new();
    inputs
        .iter()
        .map(|x| trace_one(x, config, &mut ws))
        .collect()
}

fn trace_one<F: FlowFloat>(
    x: &TraceInput<'_, F>,
    config: &TraceConfig<F>,
    ws: &mut Workspace,
) -> Result<Trace<F>, Error> {
    let mut out = Trace::new();
    trace_with_workspace(
        x.attention,
        x.n,
        x.question.clone(),
        x.answer.clone(),
        config,
        ws,
        &mut out,
    )?;
    Ok(out)
}

/// [`trace_batch`] on every core (rayon), one workspace per worker thread.
///
/// Results are in input order and equal [`trace_batch`]'s exactly.
///
/// # Complexity
///
/// As [`trace_batch`], divided over the threads (the work is memory-bound: expect the
/// speed-up of concurrent streaming reads, not of the core count).
#[cfg(feature = "parallel")]
pub fn trace_batch_parallel<F: FlowFloat>(
    inputs: &[TraceInput<'_, F>],
    config: &TraceConfig<F>,
) -> Vec<Result<Trace<F>, Error>> {
    use rayon::prelude::*;
    inputs
        .par_iter()
        .map_init(Workspace::new, |ws, x| trace_one(x, config, ws))
        .collect()
}
