//! The inner loops every stage streams rows through, written once.
//!
//! Each works on one row of `Ā`, or a block of [`ROWS`] rows that share one sweep over the
//! f64 vector, in fixed chunks with independent f64 accumulators, so the compiler vectorises
//! it without bounds checks. Row masses are summed as a by-product; the order of that sum
//! depends on how the pass groups rows, so two code paths may differ in the last bits of a
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

/// Entries per block of [`axpy4_summary`]: the block is summarised while it is still in L1.
const BLOCK: usize = 512;

/// [`RowSummary`] of a block, in sixteen lanes (a separate loop from the axpy, so each loop
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

/// Rows per block of the two streaming passes: each sweep over the f64 vector (`h` in the
/// backward pass, `u` in the forward pass) serves this many rows of `Ā`.
pub(crate) const ROWS: usize = 4;

/// The backward pass [`ROWS`] rows at a time: `acc[i] += sum_r keep(rows[r][i]) hs[r]`,
/// one read and write of `acc` for four rows of `Ā`, summed as
/// `(r0 h0 + r1 h1) + (r2 h2 + r3 h3)`. Returns the [`RowSummary`] of each row.
///
/// # Panics
///
/// If a row or `acc` is shorter than `rows[0]`.
#[inline]
pub(crate) fn axpy4_summary<F: FlowFloat, const PRUNE: bool>(
    rows: [&[F]; ROWS],
    hs: [f64; ROWS],
    threshold: f64,
    acc: &mut [f64],
) -> [RowSummary<F>; ROWS] {
    let len = rows[0].len();
    let [r0, r1, r2, r3] = rows.map(|r| &r[..len]);
    let acc = &mut acc[..len];
    let [h0, h1, h2, h3] = hs;
    let mut sums = [RowSummary {
        sum: F::zero(),
        min: F::zero(),
    }; ROWS];
    let blocks = r0
        .chunks(BLOCK)
        .zip(r1.chunks(BLOCK))
        .zip(r2.chunks(BLOCK))
        .zip(r3.chunks(BLOCK))
        .zip(acc.chunks_mut(BLOCK));
    for ((((b0, b1), b2), b3), bx) in blocks {
        let entries = bx.iter_mut().zip(b0).zip(b1).zip(b2).zip(b3);
        for ((((x, &a), &b), &c), &d) in entries {
            let w = |v: F| keep::<PRUNE>(v.widen(), threshold);
            *x += (w(a) * h0 + w(b) * h1) + (w(c) * h2 + w(d) * h3);
        }
        for (s, block) in sums.iter_mut().zip([b0, b1, b2, b3]) {
            *s = summarize(block, *s);
        }
    }
    sums
}

/// Columns per block of [`dot4`]: the four rows take turns every `COLS` entries, so four
/// memory streams are in flight while each row's loop vectorises on its own.
const COLS: usize = 128;

/// `sum_i keep(rows[r][i]) * v[i]` in f64 for [`ROWS`] rows in one sweep over `v`, block by
/// block of [`COLS`] columns; each row sums like [`dot`] (eight lanes, then its tail).
///
/// # Panics
///
/// If a row or `v` is shorter than `rows[0]`.
#[inline]
pub(crate) fn dot4<F: FlowFloat, const PRUNE: bool>(
    rows: [&[F]; ROWS],
    v: &[f64],
    threshold: f64,
) -> [f64; ROWS] {
    let len = rows[0].len();
    let full = len - len % LANES;
    let v = &v[..len];
    let rows = rows.map(|r| &r[..len]);
    let mut s = [[0.0f64; LANES]; ROWS];
    for start in (0..full).step_by(COLS) {
        let end = full.min(start + COLS);
        for (lanes, row) in s.iter_mut().zip(rows) {
            dot_lanes::<F, PRUNE>(&row[start..end], &v[start..end], threshold, lanes);
        }
    }
    core::array::from_fn(|r| {
        combine(s[r]) + tail_dot::<F, PRUNE>(&rows[r][full..], &v[full..], threshold)
    })
}

/// Adds `keep(row[i]) * v[i]` into eight lanes, over the whole chunks of `row`.
#[inline(always)]
fn dot_lanes<F: FlowFloat, const PRUNE: bool>(
    row: &[F],
    v: &[f64],
    threshold: f64,
    s: &mut [f64; LANES],
) {
    let (chunks, _) = row.as_chunks::<LANES>();
    let (v_chunks, _) = v.as_chunks::<LANES>();
    for (c, b) in chunks.iter().zip(v_chunks) {
        for j in 0..LANES {
            s[j] += keep::<PRUNE>(c[j].widen(), threshold) * b[j];
        }
    }
}

/// The entries of a row after its last full chunk, against the matching `v`.
#[inline(always)]
fn tail_dot<F: FlowFloat, const PRUNE: bool>(rest: &[F], v: &[f64], threshold: f64) -> f64 {
    // Mutant for the fuzz oracles (off in every normal build): drops the row's tail.
    #[cfg(flowtracer_mutant = "dot_tail")]
    let rest = &rest[..rest.len().saturating_sub(1)];
    let mut sum = 0.0;
    for (&x, &b) in rest.iter().zip(v) {
        sum += keep::<PRUNE>(x.widen(), threshold) * b;
    }
    sum
}

/// `sum_i keep(row[i]) * v[i]` in f64.
///
/// # Panics
///
/// If `v` is shorter than `row`.
#[inline]
pub(crate) fn dot<F: FlowFloat, const PRUNE: bool>(row: &[F], v: &[f64], threshold: f64) -> f64 {
    let full = row.len() - row.len() % LANES;
    let v = &v[..row.len()];
    let mut s = [0.0f64; LANES];
    dot_lanes::<F, PRUNE>(&row[..full], &v[..full], threshold, &mut s);
    combine(s) + tail_dot::<F, PRUNE>(&row[full..], &v[full..], threshold)
}

/// `acc[i] += row[i]` over the whole row, returning the [`RowSummary`] of `row` (sum and
/// minimum in `F`: the aggregation only needs them to spot a non-finite or negative entry,
/// which it then finds exactly).
///
/// # Panics
///
/// If `acc` is shorter than `row`.
#[inline]
pub(crate) fn add_summary<F: FlowFloat>(row: &[F], acc: &mut [F]) -> RowSummary<F> {
    let acc = &mut acc[..row.len()];
    let mut s = [F::zero(); LANES];
    let mut m = [F::zero(); LANES];
    let (chunks, rest) = row.as_chunks::<LANES>();
    let (acc_chunks, acc_rest) = acc.as_chunks_mut::<LANES>();
    for (c, a) in chunks.iter().zip(acc_chunks) {
        for j in 0..LANES {
            let x = c[j];
            a[j] = a[j] + x;
            s[j] = s[j] + x;
            if x < m[j] {
                m[j] = x;
            }
        }
    }
    let mut r = RowSummary {
        sum: ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])),
        min: min_of(m),
    };
    for (&x, a) in rest.iter().zip(acc_rest) {
        *a = *a + x;
        r = r.push(x);
    }
    r
}
