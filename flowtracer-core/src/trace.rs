//! The front door: a [`Tracer`] (configuration plus reusable scratch) that turns a
//! [`Sequence`] into its reach, flow and throughput, its token weights, and a group's
//! shaped advantages; and [`trace()`], the same with the default configuration.

use alloc::vec;
use alloc::vec::Vec;

use crate::error::Error;
use crate::float::FlowFloat;
use crate::flow::{flow_into, throughput_into};
use crate::grpo::{GrpoConfig, group_advantages};
use crate::qk::{QkInput, QkRows, QkSequence};
use crate::reach::{AnswerMode, reach_into};
use crate::rows::{RowSource, Stored};
use crate::sequence::{Sequence, Tokens};
use crate::shaping::{ShapingConfig, shape_advantage, weights};

/// Configuration of the reach and flow passes. `Default` is the paper's setting.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct TraceConfig {
    /// How answer tokens treat flow (default [`AnswerMode::Absorbing`]).
    pub answer_mode: AnswerMode,
    /// **\[ours\]** Edges with `W < edge_threshold` are dropped before the reach is
    /// computed (default 0: nothing is dropped).
    pub edge_threshold: f64,
    /// A row of `Ā` may sum to at most `1 + row_tolerance` (default `1e-3`).
    pub row_tolerance: f64,
}

impl TraceConfig {
    /// The paper's setting, as a constant (what `Default` returns).
    pub const DEFAULT: Self = Self {
        answer_mode: AnswerMode::Absorbing,
        edge_threshold: 0.0,
        row_tolerance: 1e-3,
    };

    /// Sets [`answer_mode`](Self::answer_mode).
    pub fn with_answer_mode(mut self, mode: AnswerMode) -> Self {
        self.answer_mode = mode;
        self
    }

    /// Sets [`edge_threshold`](Self::edge_threshold).
    pub fn with_edge_threshold(mut self, threshold: f64) -> Self {
        self.edge_threshold = threshold;
        self
    }

    /// Sets [`row_tolerance`](Self::row_tolerance).
    pub fn with_row_tolerance(mut self, tolerance: f64) -> Self {
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
        for (field, v) in [
            ("edge_threshold", self.edge_threshold),
            ("row_tolerance", self.row_tolerance),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(Error::InvalidConfig {
                    field,
                    reason: "must be finite and >= 0",
                });
            }
        }
        Ok(())
    }
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Everything a [`Tracer`] needs: the passes, the shaping, and the group advantages.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct Config {
    /// Reach and flow ([method §4–6](docs/method.md#s4)).
    pub trace: TraceConfig,
    /// Token selection and weights ([method §9](docs/method.md#s9)).
    pub shaping: ShapingConfig,
    /// Group advantages and the loss ([method §10](docs/method.md#s10)).
    pub grpo: GrpoConfig,
}

impl Config {
    /// Sets [`trace`](Self::trace).
    pub fn with_trace(mut self, trace: TraceConfig) -> Self {
        self.trace = trace;
        self
    }

    /// Sets [`shaping`](Self::shaping).
    pub fn with_shaping(mut self, shaping: ShapingConfig) -> Self {
        self.shaping = shaping;
        self
    }

    /// Sets [`grpo`](Self::grpo).
    pub fn with_grpo(mut self, grpo: GrpoConfig) -> Self {
        self.grpo = grpo;
        self
    }

    /// Checks every part.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the first bad field (trace, then shaping, then grpo).
    pub fn validate(&self) -> Result<(), Error> {
        self.trace.validate()?;
        self.shaping.validate()?;
        self.grpo.validate()
    }
}

/// The result of tracing one sequence: reach, flow and throughput of every token, with the
/// spans and settings it was computed with.
///
/// Values are computed in f64 and stored as `F`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Trace<F> {
    n: usize,
    question: Tokens,
    answer: Tokens,
    response: Tokens,
    answer_mode: AnswerMode,
    edge_threshold: f64,
    num_sources: usize,
    reach: Vec<F>,
    flow: Vec<F>,
    throughput: Vec<F>,
}

impl<F: FlowFloat> Trace<F> {
    /// Number of tokens `N`.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The question tokens `Q`.
    pub fn question(&self) -> &Tokens {
        &self.question
    }

    /// The answer tokens `A`.
    pub fn answer(&self) -> &Tokens {
        &self.answer
    }

    /// The scored response tokens `R`.
    pub fn response(&self) -> &Tokens {
        &self.response
    }

    /// The answer mode the trace was computed with.
    pub fn answer_mode(&self) -> AnswerMode {
        self.answer_mode
    }

    /// The edge threshold the trace was computed with.
    pub fn edge_threshold(&self) -> f64 {
        self.edge_threshold
    }

    /// `|Q+|`: the number of live question tokens where flow was injected.
    pub fn num_sources(&self) -> usize {
        self.num_sources
    }

    /// Reach `h` ([method §4](docs/method.md#s4)), length `N`. Positive exactly for
    /// live tokens (a live reach too small for `F` is stored as `F`'s smallest subnormal).
    pub fn reach(&self) -> &[F] {
        &self.reach
    }

    /// Flow `f` ([method §6](docs/method.md#s6)), length `N`, each in `[0, 1]`.
    pub fn flow(&self) -> &[F] {
        &self.flow
    }

    /// Throughput `tau` ([method §7](docs/method.md#s7)), length `N`: `2 f` for live
    /// tokens, 0 otherwise.
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
            .iter()
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

/// Scratch of the two passes: `h`, `u = f / h` and `f` in f64, length `N`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Workspace {
    h: Vec<f64>,
    u: Vec<f64>,
    f: Vec<f64>,
}

impl Workspace {
    /// Traces `seq` into `out`; allocates nothing once both have held a sequence this long.
    fn trace<F: FlowFloat>(
        &mut self,
        seq: &Sequence<'_, F>,
        config: &TraceConfig,
        out: &mut Trace<F>,
    ) -> Result<(), Error> {
        let spans = [seq.question(), seq.answer(), seq.response()];
        self.trace_rows(&mut Stored(seq), spans, config, out)
    }

    /// Traces the rows of `rows` with the checked `[question, answer, response]` into `out`.
    pub(crate) fn trace_rows<F: FlowFloat>(
        &mut self,
        rows: &mut impl RowSource<F>,
        [question, answer, response]: [&Tokens; 3],
        config: &TraceConfig,
        out: &mut Trace<F>,
    ) -> Result<(), Error> {
        let n = rows.n();
        let Workspace { h, u, f } = self;
        // The passes zero what they accumulate into and overwrite every output, so stale
        // values never survive (the `workspace_reuse` fuzz target checks exactly this).
        for v in [&mut *h, &mut *u, &mut *f] {
            v.resize(n, 0.0);
        }
        reach_into(
            rows,
            answer,
            config.answer_mode,
            config.edge_threshold,
            config.row_tolerance,
            h,
        )?;
        let sources = flow_into(
            rows,
            [question, answer],
            config.answer_mode,
            config.edge_threshold,
            h,
            u,
            f,
        )?;
        out.n = n;
        out.question.clone_from(question);
        out.answer.clone_from(answer);
        out.response.clone_from(response);
        out.answer_mode = config.answer_mode;
        out.edge_threshold = config.edge_threshold;
        out.num_sources = sources;
        out.reach.clear();
        // A live reach below `F`'s smallest subnormal is stored as that subnormal rather
        // than 0, so `reach() > 0` still tells exactly which tokens are live.
        let tiny = F::min_positive_value() * F::epsilon();
        out.reach.extend(h.iter().map(|&x| {
            let r = F::from_f64_lossy(x);
            if r == F::zero() && x > 0.0 { tiny } else { r }
        }));
        out.flow.clear();
        out.flow.extend(f.iter().map(|&x| F::from_f64_lossy(x)));
        out.throughput.resize(n, F::zero());
        throughput_into(&out.flow, h, &mut out.throughput);
        Ok(())
    }
}

/// FlowTracer with a configuration and reusable scratch: the one configurable front door.
///
/// A trainer needs three calls per group, each also useful alone:
/// [`trace`](Self::trace) per sequence (attention and spans in, reach, flow and throughput
/// out), [`token_weights`](Self::token_weights) per sequence (its per-token weights), and
/// [`shape_advantages`](Self::shape_advantages) per group (rewards and weights in, shaped
/// per-token advantages out).
///
/// `Tracer` is `Send + Sync`: its scratch is plain vectors. [`trace`](Self::trace) takes
/// `&mut self` to reuse them; [`trace_batch`](Self::trace_batch) takes `&self` and gives
/// each worker thread its own.
///
/// # Examples
///
/// ```
/// use flowtracer_core::{Config, Sequence, Spans, Tracer};
/// // Ā of the worked example (method §12), row k = query k over keys 0..=k.
/// let a: [f64; 25] = [
///     1.0, 0.0, 0.0, 0.0, 0.0,
///     0.5, 0.5, 0.0, 0.0, 0.0,
///     0.3, 0.5, 0.2, 0.0, 0.0,
///     0.1, 0.2, 0.3, 0.4, 0.0,
///     0.1, 0.1, 0.6, 0.1, 0.1,
/// ];
/// let mut tracer = Tracer::new(Config::default())?;
/// let seq = Sequence::dense(&a, Spans::new(0..2, 4..5))?; // question 0..2, answer 4
/// let t = tracer.trace(&seq)?;
/// let w = tracer.token_weights(&t);
/// assert_eq!(w, [1.0, 1.0, 1.5, 1.0, 1.5]);
/// // Two responses of 3 completion tokens each, rewards 1 and 0.
/// let adv = tracer.shape_advantages(&[1.0, 0.0], 2, &[1.0, 1.5, 1.5, 1.0, 1.0, 1.0])?;
/// let a0 = 0.5 / (0.5f64.sqrt() + 1e-4); // (1 - 0.5) / (sample std + eps)
/// for (x, y) in adv.iter().zip([a0, 1.5 * a0, 1.5 * a0, -a0, -a0, -a0]) {
///     assert!((x - y).abs() < 1e-12);
/// }
/// # Ok::<(), flowtracer_core::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Tracer {
    config: Config,
    workspace: Workspace,
}

impl Tracer {
    /// A tracer with a checked configuration.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] from [`Config::validate`].
    pub fn new(config: Config) -> Result<Self, Error> {
        config.validate()?;
        Ok(Self {
            config,
            workspace: Workspace::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The reach `h` of the last sequence [`trace`](Self::trace) or
    /// [`trace_into`](Self::trace_into) computed, in f64 before it was stored as `F`
    /// (unspecified after an error; empty before the first call).
    pub fn last_reach(&self) -> &[f64] {
        &self.workspace.h
    }

    /// Reach, flow and throughput of one sequence
    /// ([method §4–7](docs/method.md#s4)).
    ///
    /// # Errors
    ///
    /// The data checks of [method §13](docs/method.md#s13) (first non-finite entry,
    /// then first negative entry, then first row heavier than `1 + row_tolerance`), then
    /// [`Error::NoSourceMass`]; [`Error::Overflow`] only with rows far heavier than 1.
    ///
    /// # Complexity
    ///
    /// O(N²) time: two streaming reads of the lower triangle of `Ā` (one backward, one
    /// forward). Extra memory O(N), reused across calls.
    pub fn trace<F: FlowFloat>(&mut self, seq: &Sequence<'_, F>) -> Result<Trace<F>, Error> {
        let mut out = Trace::default();
        self.workspace.trace(seq, &self.config.trace, &mut out)?;
        Ok(out)
    }

    /// [`trace`](Self::trace) into a caller-provided [`Trace`]: allocates nothing once the
    /// tracer and `out` have held a sequence at least this long. On error, `out` is left
    /// unspecified.
    ///
    /// # Errors
    ///
    /// As [`trace`](Self::trace).
    pub fn trace_into<F: FlowFloat>(
        &mut self,
        seq: &Sequence<'_, F>,
        out: &mut Trace<F>,
    ) -> Result<(), Error> {
        self.workspace.trace(seq, &self.config.trace, out)
    }

    /// Reach, flow and throughput straight from queries and keys: mode (b) of
    /// [method §15](docs/method.md#s15). The rows of `Ā` are recomputed in blocks of
    /// [`STREAM_ROWS`](crate::qk::STREAM_ROWS) inside the backward pass (descending) and
    /// the forward pass (ascending), so nothing `N x N` exists; each row equals the row of
    /// mode (a) ([`QkSequence::materialise`]) bit for bit, so the trace equals
    /// `trace(&seq.materialise()?)` exactly.
    ///
    /// # Errors
    ///
    /// [`Error::LogitsOverflow`] or [`Error::LseMismatch`] for the first bad row by
    /// (layer, head, row), reported once the backward pass has produced every row; then the
    /// errors of [`trace`](Self::trace). (Shape, configuration, span and non-finite errors
    /// come from [`QkSequence::new`].)
    ///
    /// # Complexity
    ///
    /// Every row's probabilities are computed twice for the tokens from the question's
    /// first to the answer's last (once per pass), once for the others: at most twice mode
    /// (a)'s O(L · H_q · N_vis · d) time. Extra memory O(N · (d + STREAM_ROWS)): the keys
    /// of every layer packed once (`L · H_kv · ⌈N / 8⌉ · 8 · d` values of the arithmetic
    /// type), `STREAM_ROWS · N` values of `F` for the block of rows, per thread one row
    /// block's scratch (`(4 d + 8 ⌈N / 8⌉ · 8)` values), and the passes' `3 N` f64.
    ///
    /// # Examples
    ///
    /// ```
    /// use flowtracer_core::qk::{QkConfig, QkLayer, QkSequence, QkShape};
    /// use flowtracer_core::{Spans, Trace, Tracer, trace};
    /// // One head, d = 1, N = 3, scale 1: rows [1], [1/3, 2/3], [1/6, 2/6, 3/6].
    /// let (q, k) = ([1.0f64; 3], [0.0, 2f64.ln(), 3f64.ln()]);
    /// let layers = [QkLayer::new(0, &q, &k)];
    /// let config = QkConfig::default().with_scale(1.0);
    /// let seq = QkSequence::new(&layers, QkShape::new(1, 1, 3, 1), &config, None, Spans::new(0..1, 2..3))?;
    /// let t: Trace<f64> = Tracer::default().trace_qk(&seq)?;
    /// assert!((t.flow()[1] - 0.4).abs() < 1e-12);
    /// assert_eq!(t, trace(&seq.materialise::<f64>()?)?); // mode (a), bit for bit
    /// # Ok::<(), flowtracer_core::Error>(())
    /// ```
    pub fn trace_qk<T: QkInput, F: FlowFloat>(
        &mut self,
        seq: &QkSequence<'_, T>,
    ) -> Result<Trace<F>, Error> {
        let mut out = Trace::default();
        self.trace_qk_into(seq, &mut out)?;
        Ok(out)
    }

    /// [`trace_qk`](Self::trace_qk) into a caller-provided [`Trace`] (the passes' scratch
    /// is reused; the producer's is allocated per call). On error, `out` is left
    /// unspecified.
    ///
    /// # Errors
    ///
    /// As [`trace_qk`](Self::trace_qk).
    pub fn trace_qk_into<T: QkInput, F: FlowFloat>(
        &mut self,
        seq: &QkSequence<'_, T>,
        out: &mut Trace<F>,
    ) -> Result<(), Error> {
        let mut rows = QkRows::<T, F>::new(seq);
        let traced = self
            .workspace
            .trace_rows(&mut rows, seq.roles(), &self.config.trace, out);
        // The backward pass produced every row, so the first bad one is known: it comes
        // before any error of the passes, as in mode (a).
        rows.check()?;
        traced
    }

    /// Traces many sequences (a GRPO group, a ragged batch cut by
    /// [`split_ragged`](crate::sequence::split_ragged)); on every core with the `parallel`
    /// feature, one scratch per worker thread. Results are in input order, each independent:
    /// one bad sequence does not stop the others, and they equal [`trace`](Self::trace)'s
    /// exactly.
    ///
    /// # Complexity
    ///
    /// The sum of the sequences' O(N²), divided over the threads (the work is
    /// memory-bound: expect the speed-up of concurrent streaming reads, not of the core
    /// count); extra memory O(max N) per thread beyond the outputs.
    pub fn trace_batch<F: FlowFloat + Send + Sync>(
        &self,
        batch: &[Sequence<'_, F>],
    ) -> Vec<Result<Trace<F>, Error>> {
        let one = |ws: &mut Workspace, seq: &Sequence<'_, F>| {
            let mut out = Trace::default();
            ws.trace(seq, &self.config.trace, &mut out).map(|()| out)
        };
        #[cfg(feature = "parallel")]
        {
            use rayon::prelude::*;
            batch.par_iter().map_init(Workspace::default, one).collect()
        }
        #[cfg(not(feature = "parallel"))]
        {
            let mut ws = Workspace::default();
            batch.iter().map(|seq| one(&mut ws, seq)).collect()
        }
    }

    /// Per-token weights of a traced sequence, length `N`: `gamma_flow` for the top-`rho`
    /// response tokens by throughput, 1 elsewhere ([method §9](docs/method.md#s9)).
    ///
    /// # Complexity
    ///
    /// O(N + |R| log |R|).
    pub fn token_weights<F: FlowFloat>(&self, trace: &Trace<F>) -> Vec<F> {
        weights(trace.throughput(), trace.response(), &self.config.shaping)
    }

    /// Shaped per-token advantages of whole groups: the group advantages of `rewards`
    /// ([method §10](docs/method.md#s10), `scale_rewards` and `advantage_eps` of the
    /// configuration), each spread over its sequence's weights
    /// ([method §9](docs/method.md#s9), `apply_to`).
    ///
    /// `weights` is row-major `[B][T]` with `B = rewards.len()` (the `(B, T)` layout of TRL
    /// and verl: weight 1 at padding); the result has the same layout.
    ///
    /// # Errors
    ///
    /// The errors of [`group_advantages`]; [`Error::ShapeMismatch`] if `weights` is not a
    /// whole number of rows of `B`.
    ///
    /// # Complexity
    ///
    /// O(B · T).
    pub fn shape_advantages<F: FlowFloat>(
        &self,
        rewards: &[F],
        num_generations: usize,
        weights: &[F],
    ) -> Result<Vec<F>, Error> {
        let grpo = &self.config.grpo;
        let adv = group_advantages(
            rewards,
            num_generations,
            grpo.scale_rewards,
            grpo.advantage_eps,
        )?;
        let b = rewards.len();
        if !weights.len().is_multiple_of(b) {
            return Err(Error::ShapeMismatch {
                what: "weights ([B][T])",
                expected: weights.len().div_ceil(b) * b,
                actual: weights.len(),
            });
        }
        let t = weights.len() / b;
        let mut out = vec![F::zero(); weights.len()];
        for (r, &a) in adv.iter().enumerate() {
            let row = r * t..(r + 1) * t;
            shape_advantage(
                a,
                &weights[row.clone()],
                &self.config.shaping,
                &mut out[row],
            );
        }
        Ok(out)
    }
}

/// Traces one sequence with the default configuration: [`Tracer::trace`] on
/// `Tracer::default()`.
///
/// # Errors
///
/// As [`Tracer::trace`].
///
/// # Complexity
///
/// As [`Tracer::trace`], plus the O(N) scratch it allocates.
///
/// # Examples
///
/// The worked example of [method §12](docs/method.md#s12):
///
/// ```
/// use flowtracer_core::{trace, Sequence, Spans};
/// let a: [f64; 25] = [
///     1.0, 0.0, 0.0, 0.0, 0.0,
///     0.5, 0.5, 0.0, 0.0, 0.0,
///     0.3, 0.5, 0.2, 0.0, 0.0,
///     0.1, 0.2, 0.3, 0.4, 0.0,
///     0.1, 0.1, 0.6, 0.1, 0.1,
/// ];
/// let t = trace(&Sequence::dense(&a, Spans::new(0..2, 4..5))?)?;
/// assert!((t.reach()[0] - 0.5165).abs() < 1e-12);
/// assert!((t.flow()[1] - 734.0 / 1033.0).abs() < 1e-12);
/// assert!((t.throughput()[4] - 2.0).abs() < 1e-12);
/// # Ok::<(), flowtracer_core::Error>(())
/// ```
pub fn trace<F: FlowFloat>(seq: &Sequence<'_, F>) -> Result<Trace<F>, Error> {
    Tracer::default().trace(seq)
}
