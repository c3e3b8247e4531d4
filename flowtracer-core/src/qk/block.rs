//! The row-block kernels of the stage: register tiles of `Q K^T`, the per-row maximum, exponential
//! and head sum, the defect bookkeeping, and the scan for the first non-finite input.

use super::*;

/// A row defect keyed by (layer, head, row).
pub(super) type Defect = Option<((usize, usize, usize), RowDefect)>;

/// The earlier of two row defects.
pub(super) fn first_defect(a: Defect, b: Defect) -> Defect {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.0 < x.0 { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Per-thread scratch of one row block: the block of `Q` transposed, its logits, and the
/// head sum.
pub(super) struct Scratch<C> {
    qt: Vec<C>,
    logits: Vec<C>,
    mean: Vec<C>,
}

impl<C: QkFloat> Scratch<C> {
    pub(super) fn new(shape: QkShape) -> Self {
        let width = shape.n.div_ceil(KEY_BLOCK) * KEY_BLOCK;
        Self {
            qt: vec![C::zero(); shape.d * ROW_BLOCK],
            logits: vec![C::zero(); ROW_BLOCK * width],
            mean: vec![C::zero(); ROW_BLOCK * width],
        }
    }
}

/// What every row block of one layer reads.
pub(super) struct Block<'a, 'l, T: QkInput> {
    pub(super) shape: QkShape,
    pub(super) window: Option<usize>,
    pub(super) row_tolerance: f64,
    pub(super) valid_before: &'a [usize],
    pub(super) scale: T::Compute,
    pub(super) softcap: Option<T::Compute>,
    pub(super) packed: &'a [T::Compute],
    pub(super) bias: &'a [T::Compute],
    pub(super) layer: &'a QkLayer<'l, T>,
}

impl<T: QkInput> Block<'_, '_, T> {
    /// The visible keys of query `row`: `lo..=row`.
    #[inline]
    fn first_key(&self, row: usize) -> usize {
        self.window.map_or(0, |w| (row + 1).saturating_sub(w))
    }

    /// Rows `rb..rb + ROW_BLOCK` (clipped to `N`): every head's probabilities, summed over
    /// the heads in `scratch`, then added into `sum` (those rows of the running `Ā`,
    /// `ROW_BLOCK x N` or fewer rows). Returns the block's first bad row.
    pub(super) fn run<F: FlowFloat>(
        &self,
        rb: usize,
        sum: &mut [F],
        scratch: &mut Scratch<T::Compute>,
    ) -> Defect {
        let QkShape {
            q_heads,
            kv_heads,
            n,
            d,
        } = self.shape;
        let layer = self.layer;
        let group = q_heads / kv_heads;
        let panels = n.div_ceil(KEY_BLOCK);
        let width = panels * KEY_BLOCK;
        let panel_len = d * KEY_BLOCK;
        let zero = T::Compute::zero();
        let Scratch { qt, logits, mean } = scratch;
        let mut defect: Defect = None;
        let re = (rb + ROW_BLOCK).min(n);
        let (p_lo, p_hi) = (self.first_key(rb) / KEY_BLOCK, re.div_ceil(KEY_BLOCK));
        for r in 0..ROW_BLOCK {
            mean[r * width + p_lo * KEY_BLOCK..r * width + p_hi * KEY_BLOCK].fill(zero);
        }
        for h in 0..q_heads {
            let g = h / group;
            // This head's row block of Q, transposed to [d][ROW_BLOCK].
            for r in 0..ROW_BLOCK {
                let row = rb + r;
                if row < re {
                    let src = &layer.q[(h * n + row) * d..][..d];
                    for (j, &x) in src.iter().enumerate() {
                        qt[j * ROW_BLOCK + r] = x.to_compute();
                    }
                } else {
                    for j in 0..d {
                        qt[j * ROW_BLOCK + r] = zero;
                    }
                }
            }
            for p in p_lo..p_hi {
                let panel = &self.packed[(g * panels + p) * panel_len..][..panel_len];
                let tile = tile(qt, panel);
                for (r, t) in tile.iter().enumerate() {
                    logits[r * width + p * KEY_BLOCK..][..KEY_BLOCK].copy_from_slice(t);
                }
            }
            for row in rb..re {
                let lo = self.first_key(row);
                if self.valid_before[row + 1] == self.valid_before[lo] {
                    continue; // no visible valid key: the row stays zero
                }
                let r = row - rb;
                let x = &mut logits[r * width + lo..=r * width + row];
                let b = &self.bias[lo..=row];
                let (max, finite) = max_and_check(x, b);
                let key = (layer.index, h, row);
                if !finite {
                    defect = first_defect(defect, Some((key, RowDefect::Overflow)));
                    continue;
                }
                // Soft-capping: the logits become cap · tanh(x · scale / cap), in place; the
                // row maximum goes through the same function, so it stays the maximum.
                let (scale, max) = match self.softcap {
                    Some(cap) => {
                        soft_cap_row(x, self.scale, cap);
                        (T::Compute::one(), soft_cap(max, self.scale, cap))
                    }
                    None => (self.scale, max),
                };
                let lse = layer.lse.map(|l| l[h * n + row]);
                let shift = match lse {
                    Some(l) => T::Compute::from_f64_lossy(f64::from(l)),
                    None => max * scale,
                };
                let mass = exp_row(x, b, scale, shift);
                let inv = match lse {
                    Some(_) => {
                        if mass.is_nan() || (mass - 1.0).abs() > self.row_tolerance {
                            defect = first_defect(defect, Some((key, RowDefect::Mass(mass))));
                        }
                        T::Compute::one()
                    }
                    None => T::Compute::from_f64_lossy(1.0 / mass),
                };
                add_scaled(&mut mean[r * width + lo..=r * width + row], x, inv);
            }
        }
        for row in rb..re {
            let lo = self.first_key(row);
            let r = row - rb;
            let src = &mean[r * width + lo..=r * width + row];
            let dst = &mut sum[r * n + lo..=r * n + row];
            for (s, &m) in dst.iter_mut().zip(src) {
                *s = *s + F::from_f64_lossy(m.widen());
            }
        }
        defect
    }
}

/// The first non-finite value of one layer: `Q`, then `K`, then the LSE, each in flat order.
pub(super) fn first_non_finite<T: QkInput>(
    layer: &QkLayer<'_, T>,
    shape: QkShape,
) -> Option<(QkTensor, Position)> {
    let (n, d) = (shape.n, shape.d);
    let at = |idx: usize, width: usize| Position {
        layer: Some(layer.index),
        head: Some(idx / (n * width)),
        row: (idx / width) % n,
        col: idx % width,
    };
    let scan = |x: &[T]| x.iter().position(|v| !v.to_compute().is_finite());
    if let Some(i) = scan(layer.q) {
        return Some((QkTensor::Query, at(i, d)));
    }
    if let Some(i) = scan(layer.k) {
        return Some((QkTensor::Key, at(i, d)));
    }
    let lse = layer.lse?;
    lse.iter()
        .position(|v| !v.is_finite())
        .map(|i| (QkTensor::LogSumExp, at(i, 1)))
}

/// One register tile of logits: `ROW_BLOCK` query rows (`qt`, `[d][ROW_BLOCK]`) against
/// one panel of `KEY_BLOCK` keys (`[d][KEY_BLOCK]`), `d` innermost.
#[inline(always)]
pub(super) fn tile<T: QkFloat>(qt: &[T], panel: &[T]) -> [[T; KEY_BLOCK]; ROW_BLOCK] {
    let mut acc = [[T::zero(); KEY_BLOCK]; ROW_BLOCK];
    let (qs, _) = qt.as_chunks::<ROW_BLOCK>();
    let (ks, _) = panel.as_chunks::<KEY_BLOCK>();
    for (q, k) in qs.iter().zip(ks) {
        for r in 0..ROW_BLOCK {
            for c in 0..KEY_BLOCK {
                acc[r][c] = acc[r][c] + q[r] * k[c];
            }
        }
    }
    acc
}

pub(super) const LANES: usize = 8;

/// The maximum of `x + bias` and whether every logit of a valid key (`bias = 0`) is finite.
#[inline]
pub(super) fn max_and_check<T: QkFloat>(x: &[T], bias: &[T]) -> (T, bool) {
    let mut m = [T::neg_infinity(); LANES];
    let mut chk = [T::zero(); LANES];
    let (xs, xr) = x.as_chunks::<LANES>();
    let (bs, br) = bias.as_chunks::<LANES>();
    for (xc, bc) in xs.iter().zip(bs) {
        for j in 0..LANES {
            let v = xc[j] + bc[j];
            m[j] = if v > m[j] { v } else { m[j] };
            // x * 0 is 0 for finite x, NaN for inf or NaN; padding keys are not checked.
            let z = xc[j] * T::zero();
            chk[j] = chk[j] + if bc[j] == T::zero() { z } else { T::zero() };
        }
    }
    let mut max = T::neg_infinity();
    let mut c = T::zero();
    for j in 0..LANES {
        max = if m[j] > max { m[j] } else { max };
        c = c + chk[j];
    }
    for (&xv, &bv) in xr.iter().zip(br) {
        let v = xv + bv;
        max = if v > max { v } else { max };
        c = c + if bv == T::zero() {
            xv * T::zero()
        } else {
            T::zero()
        };
    }
    (max, c == T::zero())
}

/// Replaces each logit by `exp(x · scale + bias − shift)` and returns their sum (f64).
///
/// Two loops: an element-wise one (the exponential; LLVM's loop vectoriser takes it), then
/// the sum in independent f64 lanes.
#[inline]
pub(super) fn exp_row<T: QkFloat>(x: &mut [T], bias: &[T], scale: T, shift: T) -> f64 {
    for (v, &b) in x.iter_mut().zip(bias) {
        let e = (*v * scale + b - shift).exp_fast();
        // Exactly 0 for a padding key, whatever its logit.
        *v = if b == T::zero() { e } else { T::zero() };
    }
    let mut s = [0.0f64; LANES];
    let (xs, xr) = x.as_chunks::<LANES>();
    for c in xs {
        for j in 0..LANES {
            s[j] += c[j].widen();
        }
    }
    let mut sum = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
    for v in xr {
        sum += v.widen();
    }
    sum
}

/// `cap · tanh(x · scale / cap)`, with `tanh(y) = 1 − 2 / (exp(2y) + 1)` through the
/// stage's exponential: absolute error a few units of `cap · eps`; `±cap` where `exp`
/// saturates.
#[inline(always)]
pub(super) fn soft_cap<T: QkFloat>(x: T, scale: T, cap: T) -> T {
    let two = T::one() + T::one();
    let e = (two * x * scale / cap).exp_fast();
    cap * (T::one() - two / (e + T::one()))
}

/// [`soft_cap`] over a row, in place (element-wise: vectorised).
#[inline]
pub(super) fn soft_cap_row<T: QkFloat>(x: &mut [T], scale: T, cap: T) {
    for v in x.iter_mut() {
        *v = soft_cap(*v, scale, cap);
    }
}

/// `acc += x · inv`.
#[inline]
pub(super) fn add_scaled<T: QkFloat>(acc: &mut [T], x: &[T], inv: T) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a = *a + v * inv;
    }
}
