//! Where the two passes get the rows of `Ā`: a stored [`Sequence`], or a producer that
//! computes them on demand (mode (b) of the Q/K stage, [method §15](docs/method.md#s15)).
//!
//! The passes ask for a range of rows with [`RowSource::prepare`] before reading them with
//! [`RowSource::row`]; a stored sequence ignores the call, a producer computes the rows
//! there (a block of rows around the range, in the direction the pass is going), so one
//! pass body serves both.

use core::ops::Range;

use crate::float::FlowFloat;
use crate::sequence::Sequence;

/// Rows of `Ā` for the passes.
pub(crate) trait RowSource<F> {
    /// Number of tokens `N`.
    fn n(&self) -> usize;

    /// Makes rows `rows` readable by [`row`](Self::row) until the next call; `descending`
    /// says which way the pass goes next (a producer computes ahead in that direction).
    fn prepare(&mut self, rows: Range<usize>, descending: bool);

    /// Row `k` (keys `0..=k`), for `k` in the last prepared range.
    fn row(&self, k: usize) -> &[F];
}

/// A stored sequence: every row is always readable.
pub(crate) struct Stored<'s, 'a, F: Clone>(pub(crate) &'s Sequence<'a, F>);

impl<F: FlowFloat> RowSource<F> for Stored<'_, '_, F> {
    #[inline(always)]
    fn n(&self) -> usize {
        self.0.n()
    }

    #[inline(always)]
    fn prepare(&mut self, _rows: Range<usize>, _descending: bool) {}

    #[inline(always)]
    fn row(&self, k: usize) -> &[F] {
        self.0.row(k)
    }
}
