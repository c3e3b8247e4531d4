//! Stage 3: conserved flow `f`, edge flow `phi`, throughput `tau` (spec §5–7) and the
//! conservation residual, the forward pass.
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
//! ascending order, from the question's start to the answer's end (tokens before the
//! question carry no flow; tokens after the answer carry none either), four at a time: one
//! sweep over `v` gives the four dot products up to the block, then each row adds the
//! block's earlier rows. Throughput is
//! `tau(k) = inflow + outflow = 2 f(k)` for live tokens and 0 otherwise.

use core::ops::Range;

use crate::error::{Error, Stage};
use crate::float::FlowFloat;
use crate::kernels::{ROWS, dot, dot4, keep};
use crate::reach::AnswerMode;

/// The live question tokens outside the answer (`Q+` of spec §6), counted.
///
/// # Panics
///
/// If `question` is not inside `0..h.len()`.
///
/// # Complexity
///
/// O(|Q|).
pub fn num_sources(h: &[f64], question: &Range<usize>, answer: &Range<usize>) -> usize {
    h[question.clone()]
        .iter()
        .zip(question.clone())
        .filter(|&(&hq, q)| hq > 0.0 && !answer.contains(&q))
        .count()
}

/// Computes the flow `f` (and the masked `u = f / h` that the edge flows need) from the
/// reach `h`.
///
/// Inputs are as for [`reach_into`](crate::reach::reach_into), with `h` its output. `u`
/// receives `v` of the module docs: `f / h` where the token passes flow on, 0 elsewhere.
///
/// # Errors
///
/// [`Error::NoSourceMass`] if no question token is live (nothing reaches the answer);
/// [`Error::Overflow`] if the flow is not finite even on the overflow-free path (only
/// possible with a `row_tolerance` far above 1).
///
/// # Panics
///
/// If `attention.len() != n * n`, or `h`, `u`, `f` are not of length `n`, or a span is not
/// inside `0..n`.
///
/// # Complexity
///
/// O(N²) time, one streaming read of the rows `question.start..answer.end` of `Ā`; no extra
/// memory.
#[allow(clippy::too_many_arguments)]
pub fn flow_into<F: FlowFloat>(
    attention: &[F],
    n: usize,
    question: &Range<usize>,
    answer: &Range<usize>,
    mode: AnswerMode,
    edge_threshold: F,
    h: &[f64],
    u: &mut [f64],
    f: &mut [f64],
) -> Result<usize, Error> {
    assert_eq!(attention.len(), n * n, "attention must be n x n");
    assert!(
        h.len() == n && u.len() == n && f.len() == n,
        "h, u, f must have length n"
    );
    assert!(
        question.end <= n && answer.end <= n,
        "spans must lie in 0..n"
    );
    let sources = num_sources(h, question, answer);
    if sources == 0 {
        return Err(Error::NoSourceMass);
    }
    let threshold = edge_threshold.widen();
    if threshold > 0.0 {
        forward_checked::<F, true>(
            attention, n, question, answer, mode, threshold, sources, h, u, f,
        )?;
    } else {
        forward_checked::<F, false>(
            attention, n, question, answer, mode, threshold, sources, h, u, f,
        )?;
    }
    Ok(sources)
}

/// The fast forward pass, and the overflow-free one if the fast one overflowed.
#[allow(clippy::too_many_arguments)]
fn forward_checked<F: FlowFloat, const PRUNE: bool>(
    attention: &[F],
    n: usize,
    question: &Range<usize>,
    answer: &Range<usize>,
    mode: AnswerMode,
    threshold: f64,
    sources: usize,
    h: &[f64],
    u: &mut [f64],
    f: &mut [f64],
) -> Result<(), Error> {
    forward::<F, PRUNE>(
        attention, n, question, answer, mode, threshold, sources, h, u, f,
    );
    if !f.iter().all(|x| x.is_finite()) {
        // `u = f / h` overflowed: some live token has a reach below the smallest normal
        // f64 (about 1e-308). Recompute edge by edge, where `W'` itself never overflows.
        forward_per_edge::<F, PRUNE>(
            attention, n, question, answer, mode, threshold, sources, h, u, f,
        );
        if !f.iter().all(|x| x.is_finite()) {
            return Err(Error::Overflow { stage: Stage::Flow });
        }
    }
    Ok(())
}

/// The slow, overflow-free forward pass: `f(k) = src + sum_i f(i) (Ā[k][i] h(k)) / h(i)`,
/// where `Ā[k][i] h(k) <= h(i)` keeps every factor finite. O(N²) divisions; only taken when
/// the fast pass overflowed. `u` receives `f / h` (infinite where `h` is subnormal).
#[allow(clippy::too_many_arguments)]
#[cold]
fn forward_per_edge<F: FlowFloat, const PRUNE: bool>(
    attention: &[F],
    n: usize,
    question: &Range<usize>,
    answer: &Range<usize>,
    mode: AnswerMode,
    threshold: f64,
    sources: usize,
    h: &[f64],
    u: &mut [f64],
    f: &mut [f64],
) {
    u.fill(0.0);
    f.fill(0.0);
    let passes = |i: usize| h[i] > 0.0 && (mode == AnswerMode::Relay || !answer.contains(&i));
    for k in question.start..answer.end {
        if h[k] <= 0.0 {
            continue;
        }
        let mut fk = if question.contains(&k) && !answer.contains(&k) {
            1.0 / sources as f64
        } else {
            0.0
        };
        for i in question.start..k {
            if passes(i) {
                let w = keep::<PRUNE>(attention[k * n + i].widen(), threshold);
                fk += f[i] * ((w * h[k]) / h[i]);
            }
        }
        f[k] = fk;
        if passes(k) {
            u[k] = fk / h[k];
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn forward<F: FlowFloat, const PRUNE: bool>(
    attention: &[F],
    n: usize,
    question: &Range<usize>,
    answer: &Range<usize>,
    mode: AnswerMode,
    threshold: f64,
    sources: usize,
    h: &[f64],
    u: &mut [f64],
    f: &mut [f64],
) {
    u.fill(0.0);
    f.fill(0.0);
    let inject = 1.0 / sources as f64;
    let lo = question.start;
    let src = |k: usize, hk: f64| {
        if question.contains(&k) && !answer.contains(&k) {
            inject / hk
        } else {
            0.0
        }
    };
    let passes = |k: usize| mode == AnswerMode::Relay || !answer.contains(&k);
    // Row `k` (live, reach `hk`) with its weighted inflow `dot`: its flow, and its `u` if it
    // passes flow on.
    let finish = |k: usize, hk: f64, dot: f64, u: &mut [f64], f: &mut [f64]| {
        let uk = src(k, hk) + dot;
        f[k] = hk * uk;
        if passes(k) {
            u[k] = uk;
        }
    };
    // Rows in blocks of four, k to k + 3: one sweep over `u[lo..k]` serves all four; within
    // the block each row then adds the block's earlier rows, whose `u` is final by then.
    let mut k = lo;
    while k + ROWS <= answer.end {
        let rows: [&[F]; ROWS] =
            core::array::from_fn(|r| &attention[(k + r) * n + lo..=(k + r) * n + k + r]);
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
    for k in k..answer.end {
        let hk = h[k];
        if hk <= 0.0 {
            continue;
        }
        let row = &attention[k * n + lo..k * n + k];
        let inflow = dot::<F, PRUNE>(row, &u[lo..k], threshold);
        finish(k, hk, inflow, u, f);
    }
}

/// Throughput `tau = inflow + outflow`, which conservation makes `2 f` for live tokens and
/// 0 for the others (spec §7).
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
pub fn throughput_into<F: FlowFloat>(f: &[F], h: &[f64], tau: &mut [F]) {
    assert!(
        f.len() == tau.len() && h.len() == tau.len(),
        "f, h, tau must have one length"
    );
    for ((t, &fk), &hk) in tau.iter_mut().zip(f).zip(h) {
        *t = if hk > 0.0 { fk + fk } else { F::zero() };
    }
}

/// Edge flow `phi(i -> k) = f(i) W'[i][k] = v(i) Ā[k][i] h(k)` for `i < k`, from the `h`
/// and `u` of [`flow_into`] (0 for `i >= k` and for pruned edges).
///
/// # Panics
///
/// If an index is out of range of `h`, `u` or `attention`.
///
/// # Complexity
///
/// O(1).
#[inline]
pub fn edge_flow<F: FlowFloat>(
    attention: &[F],
    n: usize,
    edge_threshold: F,
    h: &[f64],
    u: &[f64],
    i: usize,
    k: usize,
) -> f64 {
    if i >= k {
        return 0.0;
    }
    let w = attention[k * n + i].widen();
    let t = edge_threshold.widen();
    if t > 0.0 && w < t {
        return 0.0;
    }
    u[i] * w * h[k]
}

/// How far the reach `h` is from conserving flow: the largest `|sum_{k>i} W'[i][k] - 1|`
/// over the live tokens outside the answer, with `W'[i][k] = keep(Ā[k][i]) h(k) / h(i)`
/// (spec §5). Every row of the conserved kernel sums to 1 in exact arithmetic, so for the
/// `h` of [`reach_into`](crate::reach::reach_into) this measures rounding (the property
/// tests hold it below 1e-12 for f64 input); 0 when no token qualifies.
///
/// Recomputes each column sum in its own order (ascending rows), independently of the
/// backward pass that produced `h`. Answer tokens are skipped: they absorb (or, in relay
/// mode, also pass on less than their reach).
///
/// # Panics
///
/// If `attention.len() != n * n`, `h.len() != n`, or `answer` is not inside `0..n`.
///
/// # Complexity
///
/// O(N²) time, O(N) extra memory (one f64 per token).
///
/// # Examples
///
/// ```
/// use flowtracer_core::flow::conservation_residual;
/// let a = [1.0, 0.0, 0.5, 0.5];
/// assert_eq!(conservation_residual(&a, 2, &(1..2), 0.0, &[0.5, 1.0]), 0.0);
/// assert_eq!(conservation_residual(&a, 2, &(1..2), 0.0, &[0.4, 1.0]), 0.25);
/// ```
pub fn conservation_residual<F: FlowFloat, H: FlowFloat>(
    attention: &[F],
    n: usize,
    answer: &Range<usize>,
    edge_threshold: F,
    h: &[H],
) -> f64 {
    assert_eq!(attention.len(), n * n, "attention must be n x n");
    assert_eq!(h.len(), n, "h must have length n");
    assert!(answer.end <= n, "answer must lie in 0..n");
    let threshold = edge_threshold.widen();
    let mut out = alloc::vec![0.0f64; n];
    for k in 0..n {
        let hk = h[k].widen();
        if hk <= 0.0 {
            continue;
        }
        for (o, &a) in out.iter_mut().zip(&attention[k * n..k * n + k]) {
            let w = a.widen();
            if threshold <= 0.0 || w >= threshold {
                *o += w * hk;
            }
        }
    }
    out.iter()
        .zip(h)
        .enumerate()
        .filter(|&(i, (_, hi))| hi.widen() > 0.0 && !answer.contains(&i))
        .map(|(_, (&o, hi))| (o / hi.widen() - 1.0).abs())
        .fold(0.0, f64::max)
}
