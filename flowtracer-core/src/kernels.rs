//! The three inner loops every stage streams rows through, written once.
//!
//! Each works on one row of `Ā` at a time, in fixed chunks of eight with eight independent
//! f64 accumulators, so the compiler vectorises it without bounds checks, and every caller
//! (validation, reach, flow) sums a row in exactly the same order: chunks of eight over the
//! strictly-lower part, lanes combined pairwise, then the remainder, then the diagonal.

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
fn keep<const PRUNE: bool>(w: f64, threshold: f64) -> f64 {
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

/// `acc[i] += keep(row[i]) * h` for the strictly-lower part of `row` (the diagonal is the
/// last entry), returning the row's [`row_stats`] as a by-product.
///
/// # Panics
///
/// If `acc` is shorter than `row.len() - 1`.
#[inline]
pub(crate) fn axpy_stats<F: FlowFloat, const PRUNE: bool>(
    row: &[F],
    h: f64,
    threshold: f64,
    acc: &mut [f64],
) -> (f64, F) {
    let Some((&diag, lower)) = row.split_last() else {
        return (0.0, F::zero());
    };
    let acc = &mut acc[..lower.len()];
    let mut s = [0.0f64; LANES];
    let mut m = [F::zero(); LANES];
    let (chunks, rest) = lower.as_chunks::<LANES>();
    let (acc_chunks, acc_rest) = acc.as_chunks_mut::<LANES>();
    for (c, a) in chunks.iter().zip(acc_chunks) {
        for j in 0..LANES {
            let x = c[j];
            let w = x.widen();
            a[j] += keep::<PRUNE>(w, threshold) * h;
            s[j] += w;
            if x < m[j] {
                m[j] = x;
            }
        }
    }
    for (&x, a) in rest.iter().zip(acc_rest) {
        *a += keep::<PRUNE>(x.widen(), threshold) * h;
    }
    finish_stats(s, m, rest, diag)
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
