//! The three inner loops every stage streams rows through, written once.
//!
//! Each works on one row of `Ā` (or two, in the backward pass) at a time, in fixed chunks of
//! eight with eight independent f64 accumulators, so the compiler vectorises it without
//! bounds checks. Row masses are summed in f64 as a by-product; the order of that sum
//! depends on how the pass pairs rows, so two code paths may differ in the last bits of a
//! mass (never in a non-finite or negative position, which are found exactly).

use crate::float::FlowFloat;

const LANES: usize = 8;

#[inline(always)]
fn combine(s: [f64; LANES]) -> f64 {
    ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]))
}

#[inline(always)]
fn min_of<F: FlowFloat>(m: [F; LANES]) -> F {
    let mut min = F::zero();
    for v in m {
        if v < min {
            min = v;
        }
    }
    min
}

/// Keeps an edge weight unless pruning is on and it is below the threshold.
#[inline(always)]
pub(crate) fn keep<const PRUNE: bool>(w: f64, threshold: f64) -> f64 {
    if PRUNE && w < threshold { 0.0 } else { w }
}

/// Sum (f64) and minimum (clamped above at 0) of `row`; the last entry is the diagonal.
#[inline]
pub(crate) fn row_stats<F: FlowFloat>(row: &[F]) -> (f64, F) {
    let Some((&diag, lower)) = row.split_last() else {
        return (0.0, F::zero());
    };
    let mut s = [0.0f64; LANES];
    let mut m = [F::zero(); LANES];
    let (chunks, rest) = lower.as_chunks::<LANES>();
    for c in chunks {
        for j in 0..LANES {
            let x = c[j];
            s[j] += x.widen();
            if x < m[j] {
                m[j] = x;
            }
        }
    }
    finish_stats(s, m, rest, diag)
}

#[inline(always)]
fn finish_stats<F: FlowFloat>(s: [f64; LANES], m: [F; LANES], rest: &[F], diag: F) -> (f64, F) {
    let mut sum = combine(s);
    let mut min = min_of(m);
    for &x in rest.iter().chain(core::iter::once(&diag)) {
        sum += x.widen();
        if x < min {
            min = x;
        }
    }
    (sum, min)
}

/// Cheap per-row summary from the streaming passes: the sum and the minimum in `F`. A row is
/// then judged exactly ([`DataCheck`] rescans it in f64) only when it looks suspicious: a
/// non-finite or near-limit sum, or a negative minimum.
///
/// [`DataCheck`]: crate::validate::DataCheck
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowSummary<F> {
    /// Sum of the row in `F`, lanes combined pairwise.
    pub(crate) sum: F,
    /// Minimum of the row, clamped above at 0 (a NaN is caught by the sum instead).
    pub(crate) min: F,
}

impl<F: FlowFloat> RowSummary<F> {
    /// Adds one more entry.
    #[inline(always)]
    pub(crate) fn push(self, x: F) -> Self {
        Self {
            sum: self.sum + x,
            min: if x < self.min { x } else { self.min },
        }
    }
}

/// Entries per block of [`axpy2_summary`]: the block is summarised while it is still in L1.
const BLOCK: usize = 512;

/// [`RowSummary`] of a block, in lanes of eight (a separate loop from the axpy, so each loop
/// vectorises cleanly).
#[inline(always)]
fn summarize<F: FlowFloat>(x: &[F], into: RowSummary<F>) -> RowSummary<F> {
    const WIDE: usize = 16;
    let mut s = [F::zero(); WIDE];
    let mut m = [F::zero(); WIDE];
    let (chunks, rest) = x.as_chunks::<WIDE>();
    for c in chunks {
        for j in 0..WIDE {
            s[j] = s[j] + c[j];
            if c[j] < m[j] {
                m[j] = c[j];
            }
        }
    }
    let mut sum = F::zero();
    let mut min = F::zero();
    for j in 0..WIDE {
        sum = sum + s[j];
        if m[j] < min {
            min = m[j];
        }
    }
    let mut r = RowSummary {
        sum: into.sum + sum,
        min: if min < into.min { min } else { into.min },
    };
    for &v in rest {
        r = r.push(v);
    }
    r
}

/// The backward pass two rows at a time: `acc[i] += keep(a[i]) h_a + keep(b[i]) h_b`, one
/// read and write of `acc` for two rows of `Ā`. Returns the [`RowSummary`] of `a` and `b`.
///
/// # Panics
///
/// If `b` or `acc` is shorter than `a`.
#[inline]
pub(crate) fn axpy2_summary<F: FlowFloat, const PRUNE: bool>(
    a: &[F],
    h_a: f64,
    b: &[F],
    h_b: f64,
    threshold: f64,
    acc: &mut [f64],
) -> (RowSummary<F>, RowSummary<F>) {
    let len = a.len();
    let (b, acc) = (&b[..len], &mut acc[..len]);
    let empty = RowSummary {
        sum: F::zero(),
        min: F::zero(),
    };
    let (mut ra, mut rb) = (empty, empty);
    for ((ba, bb), bx) in a
        .chunks(BLOCK)
        .zip(b.chunks(BLOCK))
        .zip(acc.chunks_mut(BLOCK))
    {
        for ((&va, &vb), x) in ba.iter().zip(bb).zip(bx.iter_mut()) {
            *x += keep::<PRUNE>(va.widen(), threshold) * h_a
                + keep::<PRUNE>(vb.widen(), threshold) * h_b;
        }
        ra = summarize(ba, ra);
        rb = summarize(bb, rb);
    }
    (ra, rb)
}

/// `sum_i keep(row[i]) * v[i]` in f64.
///
/// # Panics
///
/// If `v` is shorter than `row`.
#[inline]
pub(crate) fn dot<F: FlowFloat, const PRUNE: bool>(row: &[F], v: &[f64], threshold: f64) -> f64 {
    let v = &v[..row.len()];
    let mut s = [0.0f64; LANES];
    let (chunks, rest) = row.as_chunks::<LANES>();
    let (v_chunks, v_rest) = v.as_chunks::<LANES>();
    for (c, b) in chunks.iter().zip(v_chunks) {
        for j in 0..LANES {
            s[j] += keep::<PRUNE>(c[j].widen(), threshold) * b[j];
        }
    }
    let mut sum = combine(s);
    // Mutant for the fuzz oracles (off in every normal build): drops the row's tail.
    #[cfg(flowtracer_mutant = "dot_tail")]
    let rest = &rest[..rest.len().saturating_sub(1)];
    for (&x, &b) in rest.iter().zip(v_rest) {
        sum += keep::<PRUNE>(x.widen(), threshold) * b;
    }
    sum
}

/// `acc[i] += row[i]` over the whole row, returning [`row_stats`] of `row`.
///
/// # Panics
///
/// If `acc` is shorter than `row`.
#[inline]
pub(crate) fn add_stats<F: FlowFloat>(row: &[F], acc: &mut [F]) -> (f64, F) {
    let Some((&diag, lower)) = row.split_last() else {
        return (0.0, F::zero());
    };
    let (acc_lower, acc_diag) = acc[..row.len()].split_at_mut(lower.len());
    acc_diag[0] = acc_diag[0] + diag;
    let mut s = [0.0f64; LANES];
    let mut m = [F::zero(); LANES];
    let (chunks, rest) = lower.as_chunks::<LANES>();
    let (acc_chunks, acc_rest) = acc_lower.as_chunks_mut::<LANES>();
    for (c, a) in chunks.iter().zip(acc_chunks) {
        for j in 0..LANES {
            let x = c[j];
            a[j] = a[j] + x;
            s[j] += x.widen();
            if x < m[j] {
                m[j] = x;
            }
        }
    }
    for (&x, a) in rest.iter().zip(acc_rest) {
        *a = *a + x;
    }
    finish_stats(s, m, rest, diag)
}
