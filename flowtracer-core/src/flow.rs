//! Conserved flow `f` and throughput `tau` ([method §5–7](docs/method.md#s5)), the forward
//! pass, and the conservation residual. (Edge flows `phi(i -> k) = f(i) W'[i][k]` are formed
//! where they are needed, by the backbone.)
//!
//! The conserved kernel `W'[i][k] = W[i][k] h(k) / h(i)` (the paper's Doob h-transform) is
//! never materialised. With `u = f / h` the recursion becomes a dot product per row of `Ā`:
//!
//! ```text
//! u(k) = [k in Q+] / (|Q+| h(k))  +  sum_{i<k} Ā[k][i] v(i),     f(k) = h(k) u(k)
//! v(i) = u(i) if i is live (h(i) > 0) and (relay mode or i not in A), else 0
//! ```
//!
//! where `Q+` are the live question tokens outside the answer. Rows are streamed once in
//! ascending order, from the question's first token to the answer's last (tokens before the
//! question carry no flow; tokens after the answer carry none either), four at a time: one
//! sweep over `v` gives the four dot products up to the block, then each row adds the
//! block's earlier rows. Throughput is
//! `tau(k) = inflow + outflow = 2 f(k)` for live tokens and 0 otherwise.

use crate::error::{Error, Stage};
use crate::float::FlowFloat;
use crate::kernels::{ROWS, dot, dot4, keep};
use crate::reach::AnswerMode;
use crate::rows::RowSource;
use crate::sequence::{Sequence, Tokens};

/// The live question tokens outside the answer (`Q+` of [method §6](docs/method.md#s6)),
/// counted.
fn num_sources(h: &[f64], question: &Tokens, answer: &Tokens) -> usize {
    question
        .iter()
        .filter(|&q| h[q] > 0.0 && !answer.contains(q))
        .count()
}

/// What every forward pass reads besides the rows: the spans, the settings, `|Q+|` and the
/// reach.
struct Pass<'s> {
    question: &'s Tokens,
    answer: &'s Tokens,
    mode: AnswerMode,
    threshold: f64,
    sources: usize,
    h: &'s [f64],
}

impl Pass<'_> {
    /// Whether token `k` passes flow on (relay mode, or outside the answer).
    #[inline]
    fn passes(&self, k: usize) -> bool {
        self.mode == AnswerMode::Relay || !self.answer.contains(k)
    }

    /// The flow injected at `k`, as a share of `|Q+|`.
    #[inline]
    fn injected(&self, k: usize) -> f64 {
        if self.question.contains(k) && !self.answer.contains(k) {
            1.0 / self.sources as f64
        } else {
            0.0
        }
    }
}

/// Computes the flow `f` (and the masked `u = f / h` that the edge flows need) from the
/// reach `h` of [`reach_into`](crate::reach::reach_into). `u` receives `v` of the module
/// docs: `f / h` where the token passes flow on, 0 elsewhere. Returns `|Q+|`.
///
/// # Errors
///
/// [`Error::NoSourceMass`] if no question token is live (nothing reaches the answer);
/// [`Error::Overflow`] if the flow is not finite even on the overflow-free path (only
/// possible with a `row_tolerance` far above 1).
///
/// # Panics
///
/// If `h`, `u`, `f` are not of length `N`.
///
/// # Complexity
///
/// O(N²) time, one streaming read of the rows from the question's first token to the
/// answer's last (ascending); no extra memory.
pub(crate) fn flow_into<F: FlowFloat>(
    seq: &mut impl RowSource<F>,
    [question, answer]: [&Tokens; 2],
    mode: AnswerMode,
    edge_threshold: f64,
    h: &[f64],
    u: &mut [f64],
    f: &mut [f64],
) -> Result<usize, Error> {
    let n = seq.n();
    assert!(
        h.len() == n && u.len() == n && f.len() == n,
        "h, u, f must have length n"
    );
    let sources = num_sources(h, question, answer);
    if sources == 0 {
        return Err(Error::NoSourceMass);
    }
    let pass = Pass {
        question,
        answer,
        mode,
        threshold: edge_threshold,
        sources,
        h,
    };
    if edge_threshold > 0.0 {
        forward_checked::<F, true>(seq, &pass, u, f)?;
    } else {
        forward_checked::<F, false>(seq, &pass, u, f)?;
    }
    Ok(sources)
}

/// The fast forward pass, and the overflow-free one if the fast one overflowed.
fn forward_checked<F: FlowFloat, const PRUNE: bool>(
    seq: &mut impl RowSource<F>,
    pass: &Pass<'_>,
    u: &mut [f64],
    f: &mut [f64],
) -> Result<(), Error> {
    forward::<F, PRUNE>(seq, pass, u, f);
    if !f.iter().all(|x| x.is_finite()) {
        // `u = f / h` overflowed: some live token has a reach below the smallest normal
        // f64 (about 1e-308). Recompute edge by edge, where `W'` itself never overflows.
        forward_per_edge::<F, PRUNE>(seq, pass, u, f);
        if !f.iter().all(|x| x.is_finite()) {
            return Err(Error::Overflow { stage: Stage::Flow });
        }
    }
    Ok(())
}

/// The slow, overflow-free forward pass: `f(k) = src + sum_i f(i) (Ā[k][i] h(k)) / h(i)`,
/// where `Ā[k][i] h(k) <= h(i)` keeps every factor finite. O(N²) divisions; only taken when
/// the fast pass overflowed. `u` receives `f / h` (infinite where `h` is subnormal).
#[cold]
fn forward_per_edge<F: FlowFloat, const PRUNE: bool>(
    seq: &mut impl RowSource<F>,
    pass: &Pass<'_>,
    u: &mut [f64],
    f: &mut [f64],
) {
    let h = pass.h;
    u.fill(0.0);
    f.fill(0.0);
    let lo = pass.question.first().unwrap_or(0);
    for k in lo..pass.answer.end() {
        if h[k] <= 0.0 {
            continue;
        }
        let mut fk = pass.injected(k);
        seq.prepare(k..k + 1, false);
        let row = seq.row(k);
        for i in lo..k {
            if h[i] > 0.0 && pass.passes(i) {
                let w = keep::<PRUNE>(row[i].widen(), pass.threshold);
                fk += f[i] * ((w * h[k]) / h[i]);
            }
        }
        f[k] = fk;
        if pass.passes(k) {
            u[k] = fk / h[k];
        }
    }
}

fn forward<F: FlowFloat, const PRUNE: bool>(
    seq: &mut impl RowSource<F>,
    pass: &Pass<'_>,
    u: &mut [f64],
    f: &mut [f64],
) {
    let (h, threshold) = (pass.h, pass.threshold);
    u.fill(0.0);
    f.fill(0.0);
    let lo = pass.question.first().unwrap_or(0);
    let end = pass.answer.end();
    // Row `k` (live, reach `hk`) with its weighted inflow `dot`: its flow, and its `u` if it
    // passes flow on.
    let finish = |k: usize, hk: f64, dot: f64, u: &mut [f64], f: &mut [f64]| {
        let uk = pass.injected(k) / hk + dot;
        f[k] = hk * uk;
        if pass.passes(k) {
            u[k] = uk;
        }
    };
    // Rows in blocks of four, k to k + 3: one sweep over `u[lo..k]` serves all four; within
    // the block each row then adds the block's earlier rows, whose `u` is final by then.
    let mut k = lo;
    while k + ROWS <= end {
        seq.prepare(k..k + ROWS, false);
        let rows: [&[F]; ROWS] = core::array::from_fn(|r| &seq.row(k + r)[lo..]);
        let heads = rows.map(|row| &row[..k - lo]);
        let dots = dot4::<F, PRUNE>(heads, &u[lo..k], threshold);
        for (r, (row, dot)) in rows.iter().zip(dots).enumerate() {
            let i = k + r;
            let hi = h[i];
            if hi <= 0.0 {
                continue;
            }
            let mut acc = dot;
            for (&a, &ui) in row[k - lo..k - lo + r].iter().zip(&u[k..i]) {
                acc += keep::<PRUNE>(a.widen(), threshold) * ui;
            }
            finish(i, hi, acc, u, f);
        }
        k += ROWS;
    }
    // The last (at most three) rows, one at a time.
    for k in k..end {
        let hk = h[k];
        if hk <= 0.0 {
            continue;
        }
        seq.prepare(k..k + 1, false);
        let row = &seq.row(k)[lo..k];
        let inflow = dot::<F, PRUNE>(row, &u[lo..k], threshold);
        finish(k, hk, inflow, u, f);
    }
}

/// Throughput `tau = inflow + outflow`, which conservation makes `2 f` for live tokens and
/// 0 for the others ([method §7](docs/method.md#s7)).
///
/// Computed from the stored flow as `f + f` in `F`, so `tau == 2 f` holds exactly in the
/// output's own precision (doubling is exact in binary floating point).
///
/// # Panics
///
/// If the three slices differ in length.
///
/// # Complexity
///
/// O(N).
pub(crate) fn throughput_into<F: FlowFloat>(f: &[F], h: &[f64], tau: &mut [F]) {
    assert!(
        f.len() == tau.len() && h.len() == tau.len(),
        "f, h, tau must have one length"
    );
    for ((t, &fk), &hk) in tau.iter_mut().zip(f).zip(h) {
        *t = if hk > 0.0 { fk + fk } else { F::zero() };
    }
}

/// How far the reach `h` is from conserving flow: the largest `|sum_{k>i} W'[i][k] - 1|`
/// over the live tokens outside the answer, with `W'[i][k] = keep(Ā[k][i]) h(k) / h(i)`
/// ([method §5](docs/method.md#s5)). Every row of the conserved kernel sums to 1 in exact
/// arithmetic, so for the reach of a [`Trace`](crate::Trace) (or
/// [`Tracer::last_reach`](crate::Tracer::last_reach)) this measures rounding (the property
/// tests hold it below 1e-12 for f64 input); 0 when no token qualifies.
///
/// Recomputes each column sum in its own order (ascending rows), independently of the
/// backward pass that produced `h`. Answer tokens are skipped: they absorb (or, in relay
/// mode, also pass on less than their reach).
///
/// # Panics
///
/// If `h.len() != seq.n()`.
///
/// # Complexity
///
/// O(N²) time, O(N) extra memory (one f64 per token).
///
/// # Examples
///
/// ```
/// use flowtracer_core::flow::conservation_residual;
/// use flowtracer_core::{Sequence, Spans};
/// let a = [1.0, 0.0, 0.5, 0.5];
/// let seq = Sequence::dense(&a, Spans::new(0..1, 1..2))?;
/// assert_eq!(conservation_residual(&seq, 0.0, &[0.5, 1.0]), 0.0);
/// assert_eq!(conservation_residual(&seq, 0.0, &[0.4, 1.0]), 0.25);
/// # Ok::<(), flowtracer_core::Error>(())
/// ```
pub fn conservation_residual<F: FlowFloat, H: FlowFloat>(
    seq: &Sequence<'_, F>,
    edge_threshold: f64,
    h: &[H],
) -> f64 {
    let (n, answer, threshold) = (seq.n(), seq.answer(), edge_threshold);
    assert_eq!(h.len(), n, "h must have length n");
    let mut out = alloc::vec![0.0f64; n];
    for (k, hk) in h.iter().enumerate() {
        let hk = hk.widen();
        if hk <= 0.0 {
            continue;
        }
        for (o, &a) in out.iter_mut().zip(&seq.row(k)[..k]) {
            let w = a.widen();
            if threshold <= 0.0 || w >= threshold {
                *o += w * hk;
            }
        }
    }
    out.iter()
        .zip(h)
        .enumerate()
        .filter(|&(i, (_, hi))| hi.widen() > 0.0 && !answer.contains(i))
        .map(|(_, (&o, hi))| (o / hi.widen() - 1.0).abs())
        .fold(0.0, f64::max)
}
