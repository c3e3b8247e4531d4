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

/// Adds four rows into `acc` in one sweep, `acc[i] = (((acc[i] + r0[i]) + r1[i]) + r2[i]) +
/// r3[i]` (the order of four one-row adds, so the same sums to the last bit), and returns
/// the minimum of the rows' entries, clamped above at 0. One load and store of `acc` serves
/// four rows, and no load of a row waits on a store to the same 4 KiB offset (`Ā` rows and
/// the head rows of a dense layer lie `N²` values apart).
///
/// # Panics
///
/// If a row is shorter than `acc`.
#[inline]
pub(crate) fn add4_min<F: FlowFloat>(rows: [&[F]; 4], acc: &mut [F]) -> F {
    let len = acc.len();
    let [r0, r1, r2, r3] = rows.map(|r| &r[..len]);
    let mut m = [F::zero(); LANES];
    let (ac, ar) = acc.as_chunks_mut::<LANES>();
    let (c0, t0) = r0.as_chunks::<LANES>();
    let (c1, t1) = r1.as_chunks::<LANES>();
    let (c2, t2) = r2.as_chunks::<LANES>();
    let (c3, t3) = r3.as_chunks::<LANES>();
    for ((((a, x0), x1), x2), x3) in ac.iter_mut().zip(c0).zip(c1).zip(c2).zip(c3) {
        for j in 0..LANES {
            a[j] = (((a[j] + x0[j]) + x1[j]) + x2[j]) + x3[j];
            for x in [x0[j], x1[j], x2[j], x3[j]] {
                if x < m[j] {
                    m[j] = x;
                }
            }
        }
    }
    let mut min = min_of(m);
    for ((((a, &x0), &x1), &x2), &x3) in ar.iter_mut().zip(t0).zip(t1).zip(t2).zip(t3) {
        *a = (((*a + x0) + x1) + x2) + x3;
        for x in [x0, x1, x2, x3] {
            if x < min {
                min = x;
            }
        }
    }
    min
}

/// `acc += row`, and the minimum of `row` clamped above at 0 (one row of [`add4_min`]).
///
/// # Panics
///
/// If `row` is shorter than `acc`.
#[inline]
pub(crate) fn add_min<F: FlowFloat>(row: &[F], acc: &mut [F]) -> F {
    let row = &row[..acc.len()];
    let mut m = [F::zero(); LANES];
    let (ac, ar) = acc.as_chunks_mut::<LANES>();
    let (c, t) = row.as_chunks::<LANES>();
    for (a, x) in ac.iter_mut().zip(c) {
        for j in 0..LANES {
            a[j] = a[j] + x[j];
            if x[j] < m[j] {
                m[j] = x[j];
            }
        }
    }
    let mut min = min_of(m);
    for (a, &x) in ar.iter_mut().zip(t) {
        *a = *a + x;
        if x < min {
            min = x;
        }
    }
    min
}

/// Whether every entry of `x` is finite: `v · 0` is 0 exactly for finite `v` and NaN for
/// an infinity or a NaN.
#[inline]
pub(crate) fn all_finite<F: FlowFloat>(x: &[F]) -> bool {
    let mut c = [F::zero(); LANES];
    let (xs, rest) = x.as_chunks::<LANES>();
    for v in xs {
        for j in 0..LANES {
            c[j] = c[j] + v[j] * F::zero();
        }
    }
    let mut sum = F::zero();
    for v in c.iter().chain(rest) {
        sum = sum + *v * F::zero();
    }
    sum == F::zero()
}

/// The hot loops against naive one-entry-at-a-time loops, over lengths that cross every
/// chunk, column-block and summary-block boundary. Sums are compared with a relative
/// tolerance of 1e-13 (the loops only reassociate f64 sums of at most ~1200 terms); minima,
/// `acc` updates in `F` and pruning exactly.
#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use super::*;

    const TOL: f64 = 1e-13;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= TOL * (1.0 + a.abs().max(b.abs()))
    }

    /// Deterministic values in [-0.25, 1) with some exact zeros (SplitMix64-like hash).
    fn values(len: usize, seed: u64) -> Vec<f64> {
        let mut g = crate::baselines::SplitMix64::new(seed);
        (0..len)
            .map(|i| {
                if i % 7 == 3 {
                    0.0
                } else {
                    g.next_f64() * 1.25 - 0.25
                }
            })
            .collect()
    }

    const LENS: [usize; 12] = [0, 1, 7, 8, 9, 127, 128, 129, 511, 512, 513, 1200];

    #[test]
    fn dot_and_dot4_match_naive() {
        for len in LENS {
            let v = values(len, 1);
            let rows: [Vec<f64>; ROWS] = core::array::from_fn(|r| values(len, 10 + r as u64));
            for threshold in [0.0, 0.3] {
                let naive = |row: &[f64]| -> f64 {
                    row.iter()
                        .zip(&v)
                        .map(|(&a, &b)| if threshold > 0.0 && a < threshold { 0.0 } else { a } * b)
                        .sum()
                };
                let four = if threshold > 0.0 {
                    dot4::<f64, true>(rows.each_ref().map(|r| &r[..]), &v, threshold)
                } else {
                    dot4::<f64, false>(rows.each_ref().map(|r| &r[..]), &v, threshold)
                };
                for (r, row) in rows.iter().enumerate() {
                    let one = if threshold > 0.0 {
                        dot::<f64, true>(row, &v, threshold)
                    } else {
                        dot::<f64, false>(row, &v, threshold)
                    };
                    assert!(close(one, naive(row)), "dot len {len} t {threshold}");
                    assert!(close(four[r], naive(row)), "dot4 len {len} row {r}");
                }
            }
        }
    }

    #[test]
    fn axpy4_summary_matches_naive() {
        for len in LENS {
            let rows: [Vec<f32>; ROWS] = core::array::from_fn(|r| {
                values(len, 20 + r as u64)
                    .into_iter()
                    .map(|x| x as f32)
                    .collect()
            });
            let hs = [0.5, 1.0, 0.25, 2.0];
            let start = values(len, 30);
            for threshold in [0.0, 0.3] {
                let mut acc = start.clone();
                let refs = rows.each_ref().map(|r| &r[..]);
                let sums = if threshold > 0.0 {
                    axpy4_summary::<f32, true>(refs, hs, threshold, &mut acc)
                } else {
                    axpy4_summary::<f32, false>(refs, hs, threshold, &mut acc)
                };
                let w = |a: f32| {
                    let a = f64::from(a);
                    if threshold > 0.0 && a < threshold {
                        0.0
                    } else {
                        a
                    }
                };
                for i in 0..len {
                    let want = start[i] + (0..ROWS).map(|r| w(rows[r][i]) * hs[r]).sum::<f64>();
                    assert!(close(acc[i], want), "acc len {len} i {i}");
                }
                for (r, row) in rows.iter().enumerate() {
                    // The summary is of the raw entries (pruning affects only the axpy).
                    let sum: f64 = row.iter().map(|&x| f64::from(x)).sum();
                    let min = row.iter().fold(0.0f32, |m, &x| if x < m { x } else { m });
                    let got = f64::from(sums[r].sum);
                    assert!(
                        (got - sum).abs() <= 1e-5 * (1.0 + sum.abs()),
                        "sum len {len}"
                    );
                    assert_eq!(sums[r].min, min, "min len {len} row {r}");
                }
            }
        }
    }

    #[test]
    fn row_stats_and_the_aggregation_adds_match_naive() {
        for len in LENS.into_iter().filter(|&l| l > 0) {
            let row: Vec<f64> = values(len, 40);
            let (sum, min) = row_stats(&row);
            let naive_sum: f64 = row.iter().sum();
            let naive_min = row.iter().fold(0.0f64, |m, &x| m.min(x));
            assert!(
                close(sum, naive_sum) && min == naive_min,
                "row_stats len {len}"
            );
            // add_min and add4_min: the sums of one-row adds in head order, bit for bit.
            let rows: Vec<Vec<f64>> = (0..4).map(|s| values(len, 42 + s)).collect();
            let mut acc = values(len, 41);
            let mut naive = acc.clone();
            for r in &rows {
                for (a, &x) in naive.iter_mut().zip(r) {
                    *a += x;
                }
            }
            let min4 = add4_min([&rows[0], &rows[1], &rows[2], &rows[3]], &mut acc);
            assert_eq!(acc, naive, "add4_min len {len}");
            let naive_min4 = rows.iter().flatten().fold(0.0f64, |m, &x| m.min(x));
            assert_eq!(min4, naive_min4, "add4_min min len {len}");
            let mut acc1 = values(len, 41);
            let min1 = add_min(&row, &mut acc1);
            let before = values(len, 41);
            for i in 0..len {
                assert_eq!(acc1[i], before[i] + row[i]);
            }
            assert_eq!(min1, naive_min, "add_min len {len}");
            // all_finite: true here; false for one infinity or NaN at any position.
            assert!(all_finite(&acc));
            for bad in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN] {
                for at in [0, len / 2, len - 1] {
                    let mut x = acc.clone();
                    x[at] = bad;
                    assert!(!all_finite(&x), "len {len} at {at}");
                }
            }
        }
    }
}
