//! The validated input of every stage: one sequence's aggregated attention `Ā` and its
//! question, answer and response tokens ([method §1](docs/method.md#s1)).
//!
//! A [`Sequence`] is checked once, when it is built: the shape of the attention, then the
//! spans (checks 1 and 2 of [method §13](docs/method.md#s13)). The stages take it and
//! never check shapes or spans again. The data checks (non-finite, negative, row mass) stay
//! fused into the backward pass, where the rows are read anyway.
//!
//! Spans are [`Tokens`]: a half-open range or a sorted list of positions, so a problem
//! statement inside a chat template or a multi-turn response with tool outputs masked out
//! can be described exactly.

use alloc::borrow::Cow;
use alloc::vec::Vec;
use core::ops::Range;

use crate::aggregate::{LayerAccumulator, LayerSelection, Layout, check_shape, select_layers};
use crate::error::{Error, Span};
use crate::float::FlowFloat;

/// A set of token positions: a half-open range, or a strictly ascending list.
///
/// A list that happens to be contiguous behaves exactly like the equal range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tokens {
    /// The positions `start..end`.
    Range(Range<usize>),
    /// Strictly ascending positions (checked when a [`Sequence`] is built).
    List(Vec<usize>),
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens::Range(0..0)
    }
}

impl From<Range<usize>> for Tokens {
    fn from(r: Range<usize>) -> Self {
        Tokens::Range(r)
    }
}

impl From<Vec<usize>> for Tokens {
    fn from(v: Vec<usize>) -> Self {
        Tokens::List(v)
    }
}

impl From<&[usize]> for Tokens {
    fn from(v: &[usize]) -> Self {
        Tokens::List(v.to_vec())
    }
}

impl<const K: usize> From<[usize; K]> for Tokens {
    fn from(v: [usize; K]) -> Self {
        Tokens::List(v.to_vec())
    }
}

impl Tokens {
    /// Number of positions.
    pub fn len(&self) -> usize {
        match self {
            Tokens::Range(r) => r.len(),
            Tokens::List(v) => v.len(),
        }
    }

    /// Whether there is no position.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first position, if any.
    pub fn first(&self) -> Option<usize> {
        match self {
            Tokens::Range(r) => (!r.is_empty()).then_some(r.start),
            Tokens::List(v) => v.first().copied(),
        }
    }

    /// One past the last position (0 when empty).
    pub fn end(&self) -> usize {
        match self {
            Tokens::Range(r) => {
                if r.is_empty() {
                    0
                } else {
                    r.end
                }
            }
            Tokens::List(v) => v.last().map_or(0, |&l| l + 1),
        }
    }

    /// The smallest range holding every position (`first..end`).
    pub fn hull(&self) -> Range<usize> {
        self.first().unwrap_or(0)..self.end()
    }

    /// Whether `k` is one of the positions. O(1) for a range, O(log len) for a list.
    #[inline]
    pub fn contains(&self, k: usize) -> bool {
        match self {
            Tokens::Range(r) => r.contains(&k),
            Tokens::List(v) => v.binary_search(&k).is_ok(),
        }
    }

    /// The positions, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        let (range, list) = match self {
            Tokens::Range(r) => (r.clone(), &[][..]),
            Tokens::List(v) => (0..0, &v[..]),
        };
        range.chain(list.iter().copied())
    }

    /// The index of the first list entry not above its predecessor, if any.
    fn first_unsorted(&self) -> Option<usize> {
        match self {
            Tokens::Range(_) => None,
            Tokens::List(v) => v.windows(2).position(|w| w[0] >= w[1]).map(|i| i + 1),
        }
    }

    /// The three checks of one span against `n` tokens, each as its own step.
    fn checks(&self, span: Span, n: usize) -> [Result<(), Error>; 3] {
        [
            if self.is_empty() {
                Err(Error::EmptySpan { span })
            } else {
                Ok(())
            },
            match self.first_unsorted() {
                Some(index) => Err(Error::UnsortedSpan { span, index }),
                None => Ok(()),
            },
            if self.end() > n {
                Err(Error::SpanOutOfRange {
                    span,
                    range: self.hull(),
                    n,
                })
            } else {
                Ok(())
            },
        ]
    }

    /// Checks the span on its own against a sequence of `n` tokens: empty, then not
    /// strictly ascending, then out of range.
    pub(crate) fn check(&self, span: Span, n: usize) -> Result<(), Error> {
        self.checks(span, n).into_iter().collect()
    }
}

/// The question, answer and (optionally) response tokens of one sequence.
///
/// The response defaults to every token after the last question token (the paper's `R`
/// when the question is the whole prompt).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Spans {
    /// `Q`: where flow is injected.
    pub question: Tokens,
    /// `A`: where flow is absorbed; every answer token comes after every question token.
    pub answer: Tokens,
    /// `R`: the tokens whose weights are shaped (`None`: every token after the question).
    pub response: Option<Tokens>,
}

impl Spans {
    /// Question and answer spans; the response is every token after the question.
    pub fn new(question: impl Into<Tokens>, answer: impl Into<Tokens>) -> Self {
        Self {
            question: question.into(),
            answer: answer.into(),
            response: None,
        }
    }

    /// Sets the scored response tokens `R`.
    pub fn with_response(mut self, response: impl Into<Tokens>) -> Self {
        self.response = Some(response.into());
        self
    }

    /// Checks the spans against a sequence of `n` tokens (check 2 of
    /// [method §13](docs/method.md#s13)).
    ///
    /// Order: empty (question, answer, then the response if given), a list not strictly
    /// ascending (same order), out of range (same order), the answer starting before the
    /// question ends, the response not containing every answer token. A response left to its
    /// default (every token after the question) cannot fail once the others pass.
    pub(crate) fn check(&self, n: usize) -> Result<(), Error> {
        self.clone().resolve(n).map(|_| ())
    }

    pub(crate) fn resolve(self, n: usize) -> Result<Resolved, Error> {
        let Spans {
            question,
            answer,
            response,
        } = self;
        let given = [
            Some((Span::Question, &question)),
            Some((Span::Answer, &answer)),
            response.as_ref().map(|r| (Span::Response, r)),
        ];
        // Each kind of check across every given span before the next kind.
        let checks: Vec<[Result<(), Error>; 3]> = given
            .iter()
            .flatten()
            .map(|&(span, t)| t.checks(span, n))
            .collect();
        for kind in 0..3 {
            for c in &checks {
                c[kind].clone()?;
            }
        }
        if answer.first() < Some(question.end()) {
            return Err(Error::AnswerNotAfterQuestion {
                question: question.hull(),
                answer: answer.hull(),
            });
        }
        let response = response.unwrap_or(Tokens::Range(question.end()..n));
        if answer.iter().any(|a| !response.contains(a)) {
            return Err(Error::ResponseMissesAnswer {
                response: response.hull(),
                answer: answer.hull(),
            });
        }
        Ok(Resolved {
            question,
            answer,
            response,
        })
    }
}

/// Spans checked against a length, with the response filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub(crate) question: Tokens,
    pub(crate) answer: Tokens,
    pub(crate) response: Tokens,
}

/// One sequence, validated: the aggregated attention `Ā` (dense or packed rows, borrowed
/// or, when built from per-layer input, owned) and its spans.
///
/// Building one checks shapes and spans; every stage then trusts it. The data itself is
/// checked by the backward pass ([`Tracer::trace`](crate::Tracer::trace)) or by the
/// baseline that reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence<'a, F: Clone> {
    attention: Cow<'a, [F]>,
    layout: Layout,
    n: usize,
    question: Tokens,
    answer: Tokens,
    response: Tokens,
}

/// The `N` of `Ā` stored in `layout` in `len` values.
fn side(len: usize, layout: Layout) -> Result<usize, Error> {
    if len == 0 {
        return Err(Error::EmptySequence);
    }
    match layout {
        Layout::Dense => dense_side(len),
        Layout::Packed => packed_side(len),
    }
    .ok_or(Error::NotSquare { len, layout })
}

/// The `N` with `len = N²`, if any.
fn dense_side(len: usize) -> Option<usize> {
    let n = num_traits::Float::sqrt(len as f64) as usize;
    // The float root can be off by one near 2^52.
    (n.saturating_sub(1)..=n + 1).find(|&m| m.checked_mul(m) == Some(len))
}

/// The `N` with `len = N (N + 1) / 2`, if any.
fn packed_side(len: usize) -> Option<usize> {
    let n = num_traits::Float::sqrt(2.0 * len as f64) as usize;
    (n.saturating_sub(1)..=n + 1).find(|&m| m.checked_mul(m + 1).map(|x| x / 2) == Some(len))
}

impl<'a, F: FlowFloat> Sequence<'a, F> {
    /// A sequence from dense row-major `N x N` attention `Ā[k][i]` (query `k`, key `i`;
    /// entries above the diagonal are ignored). `N` is the side of the matrix.
    ///
    /// # Errors
    ///
    /// [`Error::EmptySequence`] for no data, [`Error::NotSquare`] if the length is not a
    /// square, then the span checks (see [`Spans`]).
    ///
    /// # Complexity
    ///
    /// O(|Q| + |A| + |R|); borrows the attention.
    ///
    /// # Examples
    ///
    /// ```
    /// use flowtracer_core::{Sequence, Spans};
    /// let a = [1.0, 0.0, 0.5, 0.5];
    /// let seq = Sequence::dense(&a, Spans::new(0..1, 1..2))?;
    /// assert_eq!(seq.n(), 2);
    /// # Ok::<(), flowtracer_core::Error>(())
    /// ```
    pub fn dense(attention: &'a [F], spans: Spans) -> Result<Self, Error> {
        Self::borrowed(attention, Layout::Dense, spans)
    }

    /// A sequence from packed lower-triangular rows (row `k` holds keys `0..=k`, rows back
    /// to back, `N (N + 1) / 2` values): half the memory of [`dense`](Self::dense), the
    /// same results.
    ///
    /// # Errors
    ///
    /// As [`dense`](Self::dense), with [`Error::NotSquare`] for a length that is no
    /// triangular number.
    pub fn packed(attention: &'a [F], spans: Spans) -> Result<Self, Error> {
        Self::borrowed(attention, Layout::Packed, spans)
    }

    /// A sequence from `Ā` stored in `layout`.
    ///
    /// # Errors
    ///
    /// As [`dense`](Self::dense).
    pub fn borrowed(attention: &'a [F], layout: Layout, spans: Spans) -> Result<Self, Error> {
        let n = side(attention.len(), layout)?;
        Self::with_n(Cow::Borrowed(attention), layout, n, spans)
    }

    /// A sequence from per-layer, per-head attention `[layers][heads][N][N]` (each matrix in
    /// `layout`): the selected layers and every head are averaged into `Ā`
    /// ([method §2](docs/method.md#s2)), which the sequence then owns.
    ///
    /// Checks run in the order of [method §13](docs/method.md#s13): the shape, the
    /// layer selection, the spans, then the data of the selected layers (first non-finite
    /// value, then first negative value, by lowest `(layer, head, row, column)`).
    ///
    /// # Errors
    ///
    /// [`Error::ShapeMismatch`], [`Error::EmptySequence`], [`Error::ZeroDimension`],
    /// [`Error::InvalidLayerSelection`], the span errors, [`Error::NonFinite`],
    /// [`Error::Negative`].
    ///
    /// # Complexity
    ///
    /// O(L_sel · H · N²) time, one read of the selected layers; N² values of `F` for `Ā`.
    pub fn from_layers(
        attention: &[F],
        shape: LayerShape,
        selection: &LayerSelection,
        spans: Spans,
    ) -> Result<Sequence<'static, F>, Error> {
        let LayerShape {
            layers,
            heads,
            n,
            layout,
        } = shape;
        let per_layer = check_shape(attention.len(), layers, heads, n, layout)?;
        // Ascending, as `aggregate` sums them: the same `Ā` to the last bit, and the first
        // defect by lowest layer.
        let mut selected = select_layers(layers, selection)?;
        selected.sort_unstable();
        let resolved = spans.resolve(n)?;
        let mut acc = LayerAccumulator::new(heads, n, layout)?;
        for &l in &selected {
            acc.add_layer(l, &attention[l * per_layer..(l + 1) * per_layer])?;
        }
        Ok(Sequence::from_resolved(
            Cow::Owned(acc.finish()?),
            Layout::Dense,
            n,
            resolved,
        ))
    }

    /// A sequence that owns an `Ā` built elsewhere (for example by a
    /// [`LayerAccumulator`] fed layer by layer from a forward hook).
    ///
    /// # Errors
    ///
    /// As [`borrowed`](Self::borrowed).
    pub fn owned(
        attention: Vec<F>,
        layout: Layout,
        spans: Spans,
    ) -> Result<Sequence<'static, F>, Error> {
        let n = side(attention.len(), layout)?;
        Sequence::with_n(Cow::Owned(attention), layout, n, spans)
    }

    fn with_n(
        attention: Cow<'a, [F]>,
        layout: Layout,
        n: usize,
        spans: Spans,
    ) -> Result<Self, Error> {
        let resolved = spans.resolve(n)?;
        Ok(Self::from_resolved(attention, layout, n, resolved))
    }

    fn from_resolved(attention: Cow<'a, [F]>, layout: Layout, n: usize, spans: Resolved) -> Self {
        Self {
            attention,
            layout,
            n,
            question: spans.question,
            answer: spans.answer,
            response: spans.response,
        }
    }

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

    /// How `Ā` is stored.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// `Ā` as stored (dense `N x N` or packed rows, see [`layout`](Self::layout)).
    pub fn attention(&self) -> &[F] {
        &self.attention
    }

    /// Row `k` of `Ā` on and below the diagonal: keys `0..=k`.
    ///
    /// # Panics
    ///
    /// If `k >= N`.
    #[inline]
    pub fn row(&self, k: usize) -> &[F] {
        let off = self.layout.row_offset(self.n, k);
        &self.attention[off..=off + k]
    }

    /// `Ā[k][i]` for `i <= k`.
    ///
    /// # Panics
    ///
    /// If `i > k` or `k >= N`.
    #[inline]
    pub fn at(&self, k: usize, i: usize) -> F {
        assert!(i <= k, "only entries on and below the diagonal are data");
        self.attention[self.layout.row_offset(self.n, k) + i]
    }
}

/// Cuts one buffer that holds a ragged batch of `Ā` matrices back to back (each stored in
/// `layout`) into one slice per sequence. `cu_seqlens` are the cumulative token counts
/// `[0, n_0, n_0 + n_1, ...]`, as FlashAttention's varlen kernels, verl's remove-padding and
/// TRL's padding-free batches use them.
///
/// # Errors
///
/// [`Error::BadOffsets`] if `cu_seqlens` is empty, does not start at 0 or decreases;
/// [`Error::ShapeMismatch`] if the matrices do not fill `buffer` exactly.
///
/// # Complexity
///
/// O(B).
///
/// # Examples
///
/// ```
/// use flowtracer_core::aggregate::Layout;
/// use flowtracer_core::sequence::split_ragged;
/// // Two packed sequences of 2 and 3 tokens: 3 + 6 values.
/// let buf = [1.0, 0.5, 0.5, 1.0, 0.5, 0.5, 0.2, 0.3, 0.5];
/// let parts = split_ragged(&buf, &[0, 2, 5], Layout::Packed)?;
/// assert_eq!(parts[1], &buf[3..]);
/// # Ok::<(), flowtracer_core::Error>(())
/// ```
pub fn split_ragged<'a, F>(
    buffer: &'a [F],
    cu_seqlens: &[usize],
    layout: Layout,
) -> Result<Vec<&'a [F]>, Error> {
    if cu_seqlens.first() != Some(&0) {
        return Err(Error::BadOffsets { index: 0 });
    }
    if let Some(i) = cu_seqlens.windows(2).position(|w| w[1] < w[0]) {
        return Err(Error::BadOffsets { index: i + 1 });
    }
    let lens: Vec<usize> = cu_seqlens
        .windows(2)
        .map(|w| layout.matrix_len(w[1] - w[0]))
        .collect();
    let total = lens.iter().fold(0usize, |a, &b| a.saturating_add(b));
    if total != buffer.len() {
        return Err(Error::ShapeMismatch {
            what: "ragged attention buffer",
            expected: total,
            actual: buffer.len(),
        });
    }
    let mut rest = buffer;
    Ok(lens
        .into_iter()
        .map(|m| {
            let (head, tail) = rest.split_at(m);
            rest = tail;
            head
        })
        .collect())
}

/// The shape of per-layer attention `[layers][heads][N][N]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerShape {
    /// Layers in the input.
    pub layers: usize,
    /// Heads per layer.
    pub heads: usize,
    /// Tokens.
    pub n: usize,
    /// How each `N x N` matrix is stored.
    pub layout: Layout,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides() {
        for n in [1usize, 2, 3, 7, 100, 4096, 94_906_265] {
            assert_eq!(dense_side(n * n), Some(n));
            assert_eq!(packed_side(n * (n + 1) / 2), Some(n));
        }
        for len in [2usize, 3, 5, 8, 15, 99] {
            assert_eq!(dense_side(len), None, "{len}");
        }
        for len in [2usize, 4, 5, 7, 8, 9] {
            assert_eq!(packed_side(len), None, "{len}");
        }
    }

    #[test]
    fn tokens() {
        let l = Tokens::from([2usize, 5, 9]);
        assert_eq!(
            (l.first(), l.end(), l.len(), l.hull()),
            (Some(2), 10, 3, 2..10)
        );
        assert!(l.contains(5) && !l.contains(4));
        assert_eq!(l.iter().collect::<Vec<_>>(), [2, 5, 9]);
        let r = Tokens::from(3..3);
        assert_eq!((r.first(), r.end(), r.is_empty()), (None, 0, true));
    }

    #[test]
    fn span_checks_in_order() {
        let a = [0.0f64; 16];
        let make = |s: Spans| Sequence::dense(&a, s).map(|_| ());
        assert_eq!(
            make(Spans::new(0..0, 9..9)),
            Err(Error::EmptySpan {
                span: Span::Question
            })
        );
        assert_eq!(
            make(Spans::new([1usize, 0], 9..10)),
            Err(Error::UnsortedSpan {
                span: Span::Question,
                index: 1
            })
        );
        assert_eq!(
            make(Spans::new(0..1, [2usize, 2])),
            Err(Error::UnsortedSpan {
                span: Span::Answer,
                index: 1
            })
        );
        assert_eq!(
            make(Spans::new(0..1, 3..5)),
            Err(Error::SpanOutOfRange {
                span: Span::Answer,
                range: 3..5,
                n: 4
            })
        );
        assert_eq!(
            make(Spans::new([0usize, 2], [1usize, 3])),
            Err(Error::AnswerNotAfterQuestion {
                question: 0..3,
                answer: 1..4
            })
        );
        assert_eq!(
            make(Spans::new(0..1, [2usize, 3]).with_response([1usize, 2])),
            Err(Error::ResponseMissesAnswer {
                response: 1..3,
                answer: 2..4
            })
        );
        // The default response is everything after the question.
        let s = Sequence::dense(&a, Spans::new([0usize, 1], 3..4)).unwrap();
        assert_eq!(s.response(), &Tokens::Range(2..4));
    }
}
