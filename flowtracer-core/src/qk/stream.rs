//! Mode (b) of [method §15](docs/method.md#s15): a validated Q/K sequence ([`QkSequence`])
//! and the producer that recomputes row blocks of `Ā` inside the two passes, so that
//! nothing `N x N` exists at all.
//!
//! The producer ([`QkRows`]) serves the passes through the same `prepare`/`row` interface
//! as a stored sequence: when a pass asks for rows it does not hold, it computes a block of
//! [`STREAM_ROWS`] rows ahead in the pass's direction (descending for the reach, ascending
//! for the flow), every layer and head through the same row-block kernel as mode (a)
//! ([`Block::run`]), summed over the layers in the same order and scaled by the same
//! factor, so every row equals mode (a)'s row bit for bit.

use core::ops::Range;

use super::block::Defect;
use super::*;
use crate::sequence::Tokens;

/// Rows of `Ā` one block of mode (b) holds: the passes' next [`STREAM_ROWS`] rows are
/// computed together (spread over rayon's threads with the `parallel` feature).
pub const STREAM_ROWS: usize = 16 * ROW_BLOCK;

/// One sequence's Q/K input, validated: the layers (sorted by index), their shape and
/// configuration, the key mask and the spans. Input to mode (b),
/// [`Tracer::trace_qk`](crate::Tracer::trace_qk), and to mode (a) through
/// [`materialise`](Self::materialise).
///
/// Building one runs every check of [method §15](docs/method.md#s15) that needs no
/// probability: the shape and configuration, the spans, then the first non-finite value
/// (layers ascending, `Q`, `K`, log-sum-exp, each in flat order). The row check (logits
/// that overflow, a log-sum-exp that does not belong) needs the probabilities and is made
/// while they are computed.
#[derive(Debug, Clone)]
pub struct QkSequence<'a, T> {
    layers: Vec<QkLayer<'a, T>>,
    shape: QkShape,
    config: QkConfig,
    key_valid: Option<&'a [bool]>,
    spans: Spans,
    question: Tokens,
    answer: Tokens,
    response: Tokens,
}

impl<'a, T: QkInput> QkSequence<'a, T> {
    /// Checks and holds `layers` (each `Q`, `K` and optional log-sum-exp of `shape`), the
    /// configuration, an optional key-validity mask of length `N` and the spans.
    ///
    /// # Errors
    ///
    /// In the order of [method §15](docs/method.md#s15), as
    /// [`sequence_from_qk`](super::sequence_from_qk): [`QkShape::check`], then
    /// [`Error::ZeroDimension`] for no layer, [`Error::InvalidConfig`], the mask's
    /// [`Error::ShapeMismatch`], each layer's [`Error::ShapeMismatch`], the span errors,
    /// then [`Error::NonFiniteInput`].
    ///
    /// # Complexity
    ///
    /// O(L · (H_q + H_kv) · N · d) time for the non-finite scan; O(L) extra memory (the
    /// layers are borrowed).
    pub fn new(
        layers: &[QkLayer<'a, T>],
        shape: QkShape,
        config: &QkConfig,
        key_valid: Option<&'a [bool]>,
        spans: Spans,
    ) -> Result<Self, Error> {
        shape.check()?;
        if layers.is_empty() {
            return Err(Error::ZeroDimension { what: "layers" });
        }
        config.validate()?;
        let n = shape.n;
        if let Some(mask) = key_valid
            && mask.len() != n
        {
            return Err(Error::ShapeMismatch {
                what: "key mask",
                expected: n,
                actual: mask.len(),
            });
        }
        let mut layers = layers.to_vec();
        for layer in &layers {
            check_layer_lengths(shape, layer)?;
        }
        let resolved = spans.clone().resolve(n)?;
        // Ascending (stable), as mode (a) sums them: the same `Ā` to the last bit, and the
        // scan meets the lowest layer's defect first.
        layers.sort_by_key(|l| l.index);
        for layer in &layers {
            if let Some((tensor, position)) = first_non_finite(layer, shape) {
                return Err(Error::NonFiniteInput { tensor, position });
            }
        }
        Ok(Self {
            layers,
            shape,
            config: *config,
            key_valid,
            spans,
            question: resolved.question,
            answer: resolved.answer,
            response: resolved.response,
        })
    }

    /// The shape of every layer.
    pub fn shape(&self) -> QkShape {
        self.shape
    }

    /// The layers, sorted by index.
    pub fn layers(&self) -> &[QkLayer<'a, T>] {
        &self.layers
    }

    /// The spans as given.
    pub fn spans(&self) -> &Spans {
        &self.spans
    }

    /// `[question, answer, response]`, checked against `N`, the response filled in.
    pub(crate) fn roles(&self) -> [&Tokens; 3] {
        [&self.question, &self.answer, &self.response]
    }

    /// Mode (a): the validated [`Sequence`] of the materialised `Ā`
    /// ([`sequence_from_qk`](super::sequence_from_qk) on the same input).
    ///
    /// # Errors
    ///
    /// [`Error::OutOfMemory`] if `N²` values of `F` cannot be allocated, then
    /// [`Error::LogitsOverflow`] or [`Error::LseMismatch`] (the first bad row by layer,
    /// head, row).
    ///
    /// # Complexity
    ///
    /// As [`sequence_from_qk`](super::sequence_from_qk): `N²` values of `F` plus
    /// O(H_kv · N · d) scratch.
    pub fn materialise<F: FlowFloat>(&self) -> Result<Sequence<'static, F>, Error> {
        sequence_from_qk(
            &self.layers,
            self.shape,
            &self.config,
            self.key_valid,
            self.spans.clone(),
        )
    }
}

/// The row producer of mode (b): rows of `Ā` computed on demand, [`STREAM_ROWS`] at a
/// time, from a [`QkSequence`].
///
/// Extra memory: the keys of every layer packed once (`L · H_kv · ⌈N / 8⌉ · 8 · d` values
/// of the arithmetic type), the block of rows (`STREAM_ROWS · N` values of `F`), the key
/// bias and visibility counts (`N` values and `N + 1` words), and per thread one row
/// block's scratch (`d · ROW_BLOCK + 2 · ROW_BLOCK · ⌈N / 8⌉ · 8` values).
pub(crate) struct QkRows<'q, 'a, T: QkInput, F> {
    seq: &'q QkSequence<'a, T>,
    packed: Vec<Vec<T::Compute>>,
    bias: Vec<T::Compute>,
    valid_before: Vec<usize>,
    scale: T::Compute,
    softcap: Option<T::Compute>,
    mean_scale: F,
    rows: Vec<F>,
    held: Range<usize>,
    #[cfg(not(feature = "parallel"))]
    scratch: Scratch<T::Compute>,
    defect: Defect,
}

impl<'q, 'a, T: QkInput, F: FlowFloat> QkRows<'q, 'a, T, F> {
    /// A producer for `seq` (packs every layer's keys).
    pub(crate) fn new(seq: &'q QkSequence<'a, T>) -> Self {
        let shape = seq.shape;
        let n = shape.n;
        let config = &seq.config;
        Self {
            seq,
            packed: seq.layers.iter().map(|l| pack_keys(l.k, shape)).collect(),
            bias: key_bias(seq.key_valid, n),
            valid_before: valid_before(seq.key_valid, n),
            scale: T::Compute::from_f64_lossy(config.scale_for(shape.d)),
            softcap: config.logit_softcap.map(T::Compute::from_f64_lossy),
            mean_scale: F::from_f64_lossy(1.0 / (seq.layers.len() * shape.q_heads) as f64),
            rows: vec![F::zero(); STREAM_ROWS.min(n.next_multiple_of(ROW_BLOCK)) * n],
            held: 0..0,
            #[cfg(not(feature = "parallel"))]
            scratch: Scratch::new(shape),
            defect: None,
        }
    }

    /// The first bad row seen (by layer, head, row) as its error.
    pub(crate) fn check(&self) -> Result<(), Error> {
        match self.defect {
            Some(d) => Err(defect_error(d, self.seq.config.row_tolerance)),
            None => Ok(()),
        }
    }

    /// Computes rows `lo..hi` into the block (`hi - lo` a multiple of [`ROW_BLOCK`], or
    /// `hi = N`).
    fn compute(&mut self, lo: usize, hi: usize) {
        let Self {
            seq,
            packed,
            bias,
            valid_before,
            scale,
            softcap,
            mean_scale,
            rows,
            ..
        } = self;
        let n = seq.shape.n;
        let config = &seq.config;
        let blocks: Vec<Block<'_, '_, T>> = seq
            .layers
            .iter()
            .zip(packed.iter())
            .map(|(layer, packed)| Block {
                shape: seq.shape,
                window: config.window,
                row_tolerance: config.row_tolerance,
                valid_before,
                scale: *scale,
                softcap: *softcap,
                packed,
                bias,
                layer,
            })
            .collect();
        let mean_scale = *mean_scale;
        // One row block: zero its rows, add every layer's head sum as mode (a) does (layers
        // ascending, in `F`), then scale by `1 / (L · H_q)`.
        let run = |scratch: &mut Scratch<T::Compute>, (b, sum): (usize, &mut [F])| -> Defect {
            let rb = lo + b * ROW_BLOCK;
            let re = (rb + ROW_BLOCK).min(n);
            for row in rb..re {
                sum[(row - rb) * n..=(row - rb) * n + row].fill(F::zero());
            }
            let mut defect = None;
            for block in &blocks {
                defect = first_defect(defect, block.run(rb, sum, scratch));
            }
            for row in rb..re {
                for x in &mut sum[(row - rb) * n..=(row - rb) * n + row] {
                    *x = *x * mean_scale;
                }
            }
            defect
        };
        let rows = &mut rows[..(hi - lo) * n];
        #[cfg(feature = "parallel")]
        let defect = {
            use rayon::prelude::*;
            let shape = seq.shape;
            rows.par_chunks_mut(ROW_BLOCK * n)
                .enumerate()
                .map_init(|| Scratch::new(shape), run)
                .reduce(|| None, first_defect)
        };
        #[cfg(not(feature = "parallel"))]
        let defect = {
            let scratch = &mut self.scratch;
            rows.chunks_mut(ROW_BLOCK * n)
                .enumerate()
                .map(|x| run(scratch, x))
                .fold(None, first_defect)
        };
        self.defect = first_defect(self.defect, defect);
        self.held = lo..hi;
    }
}

impl<T: QkInput, F: FlowFloat> crate::rows::RowSource<F> for QkRows<'_, '_, T, F> {
    #[inline]
    fn n(&self) -> usize {
        self.seq.shape.n
    }

    fn prepare(&mut self, rows: Range<usize>, descending: bool) {
        if self.held.start <= rows.start && rows.end <= self.held.end {
            return;
        }
        let n = self.seq.shape.n;
        let cap = self.rows.len() / n;
        let lo = if descending {
            rows.end.saturating_sub(cap)
        } else {
            rows.start
        };
        // Whole row blocks, or up to the last row.
        let hi = (lo + cap).min(n);
        self.compute(lo, hi);
    }

    #[inline]
    fn row(&self, k: usize) -> &[F] {
        let off = (k - self.held.start) * self.seq.shape.n;
        &self.rows[off..=off + k]
    }
}
