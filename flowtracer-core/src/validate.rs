//! Validation of shapes, spans and attention data, in the order of [method §13](docs/method.md#s13).
//!
//! Every entry point of the crate (and the GPU crate, which reuses these functions) checks
//! its input in this order and returns the first failing check:
//!
//! 1. shapes: data length against `N x N` (or `[layers][heads][N][N]`), `N = 0`, zero layers
//!    or heads;
//! 2. spans: empty (question, then answer), out of range (question, then answer), answer
//!    starting before the question ends, response not containing the answer;
//! 3. the first non-finite entry (lowest flat index);
//! 4. the first negative entry (lowest flat index);
//! 5. the first row whose mass on and below the diagonal exceeds `1 + row_tolerance`;
//! 6. no source mass (checked by the flow stage once the reach is known).
//!
//! Only entries on and below the diagonal are data: entries above it are ignored everywhere,
//! so they are never reported.

use crate::error::{Error, Position, Span};
use crate::float::FlowFloat;
use crate::kernels::{RowSummary, row_stats};
use crate::sequence::{Sequence, Spans, Tokens};

/// Checks that `attention` holds exactly `n * n` values and that `n > 0`.
///
/// # Errors
///
/// [`Error::ShapeMismatch`] if the length is not `n * n`, then [`Error::EmptySequence`] if
/// `n == 0`.
///
/// # Complexity
///
/// O(1).
pub fn check_matrix_shape(len: usize, n: usize) -> Result<(), Error> {
    // One layer of one dense head: the same checks, in the same order, as per-layer input.
    crate::aggregate::check_shape(len, 1, 1, n, crate::aggregate::Layout::Dense).map(|_| ())
}

/// Checks spans against a sequence of `n` tokens, exactly as building a
/// [`Sequence`] does (for entry points such as the GPU crate's that take `Ā` in their own
/// buffers).
///
/// # Errors
///
/// The span errors, in the order documented on [`Spans`].
///
/// # Complexity
///
/// O(|Q| + |A| + |R|).
pub fn check_spans(n: usize, spans: &Spans) -> Result<(), Error> {
    spans.check(n)
}

/// Checks a scored response span on its own against a sequence of `n` tokens.
///
/// # Errors
///
/// [`Error::EmptySpan`], [`Error::UnsortedSpan`], [`Error::SpanOutOfRange`].
///
/// # Complexity
///
/// O(|R|).
pub fn check_response(n: usize, response: &Tokens) -> Result<(), Error> {
    response.check(Span::Response, n)
}

/// Checks the data of a sequence's `Ā` (checks 3 to 5 of
/// [method §13](docs/method.md#s13)), for the stages that read `Ā` without the
/// backward pass (the point-wise baselines).
///
/// # Errors
///
/// [`Error::NonFinite`], then [`Error::Negative`], then [`Error::RowMassExceeded`], each for
/// the first offending entry or row.
///
/// # Complexity
///
/// O(N²) time (one pass over the lower triangle), O(1) extra memory.
pub fn check_data<F: FlowFloat>(seq: &Sequence<'_, F>, row_tolerance: f64) -> Result<(), Error> {
    check_rows(seq.n(), |k| seq.row(k), row_tolerance)
}

/// [`check_data`] over any `n` rows (row `k` = entries `0..=k`).
pub(crate) fn check_rows<'r, F: FlowFloat + 'r>(
    n: usize,
    row: impl Fn(usize) -> &'r [F],
    row_tolerance: f64,
) -> Result<(), Error> {
    let mut check = DataCheck::new(row_tolerance);
    for k in 0..n {
        let row = row(k);
        let (sum, min) = row_stats(row);
        check.observe_row(k, row, sum, min);
    }
    check.finish()
}

/// Running record of the first defect of each kind, fed one row at a time in any row order.
///
/// The streaming passes compute each row's sum and minimum as a by-product; only a row that
/// looks suspicious (non-finite sum, negative minimum) is scanned again entry by entry.
#[derive(Debug, Clone)]
pub(crate) struct DataCheck {
    limit: f64,
    tolerance: f64,
    non_finite: Option<(usize, usize)>,
    negative: Option<(usize, usize, f64)>,
    heavy: Option<(usize, f64)>,
}

impl DataCheck {
    /// A check for rows whose mass may not exceed `1 + row_tolerance`.
    pub(crate) fn new(row_tolerance: f64) -> Self {
        Self {
            limit: 1.0 + row_tolerance,
            tolerance: row_tolerance,
            non_finite: None,
            negative: None,
            heavy: None,
        }
    }

    /// Records row `k` (`row` = entries `0..=k`) with its precomputed sum and minimum.
    #[inline]
    pub(crate) fn observe_row<F: FlowFloat>(&mut self, k: usize, row: &[F], sum: f64, min: F) {
        if !sum.is_finite() || min < F::zero() {
            self.scan_row(k, row);
        }
        // A NaN sum counts as too heavy (its non-finite entry is reported first anyway).
        if (sum.is_nan() || sum > self.limit) && self.heavy.is_none_or(|(r, _)| k < r) {
            self.heavy = Some((k, sum));
        }
    }

    /// Records row `k` from the streaming passes' cheap [`RowSummary`]; the row is summed
    /// again exactly (f64, [`row_stats`]) and scanned only when the summary is suspicious:
    /// a negative minimum, a non-finite sum, or a sum within its rounding error of the limit
    /// or above.
    #[inline]
    pub(crate) fn observe_summary<F: FlowFloat>(
        &mut self,
        k: usize,
        row: &[F],
        summary: RowSummary<F>,
    ) {
        let sum = summary.sum.widen();
        // Bound on the relative error of the summary's sum of non-negative entries (16 lanes,
        // blocks of 512): comfortably above (len / 16 + len / 512 + 16) ulp.
        let margin = (row.len() as f64 / 8.0 + 64.0) * F::epsilon().widen();
        if summary.min < F::zero() || !sum.is_finite() || sum > self.limit * (1.0 - margin) {
            let (sum, min) = row_stats(row);
            self.observe_row(k, row, sum, min);
        }
    }

    #[cold]
    fn scan_row<F: FlowFloat>(&mut self, k: usize, row: &[F]) {
        if let Some(i) = row.iter().position(|x| !x.is_finite())
            && self.non_finite.is_none_or(|p| (k, i) < p)
        {
            self.non_finite = Some((k, i));
        }
        if let Some(i) = row.iter().position(|&x| x < F::zero())
            && self.negative.is_none_or(|(r, c, _)| (k, i) < (r, c))
        {
            self.negative = Some((k, i, row[i].widen()));
        }
    }

    /// The first failing check, in the order of [method §13](docs/method.md#s13).
    pub(crate) fn finish(&self) -> Result<(), Error> {
        if let Some((row, col)) = self.non_finite {
            return Err(Error::NonFinite {
                position: Position::matrix(row, col),
            });
        }
        if let Some((row, col, value)) = self.negative {
            return Err(Error::Negative {
                position: Position::matrix(row, col),
                value,
            });
        }
        if let Some((row, mass)) = self.heavy {
            return Err(Error::RowMassExceeded {
                row,
                mass,
                tolerance: self.tolerance,
            });
        }
        Ok(())
    }
}
