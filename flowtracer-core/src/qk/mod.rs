//! The first stage for models that run FlashAttention or SDPA: the aggregated attention `Ā`
//! from post-RoPE queries and keys ([method §15](docs/method.md#s15)), with no per-head
//! `N x N` matrix anywhere.
//!
//! Per selected layer the stage takes `Q [H_q][N][d]` and `K [H_kv][N][d]` (and optionally
//! the log-sum-exp `[H_q][N]` FlashAttention saves), forms each head's causal softmax one
//! block of [`ROW_BLOCK`] query rows at a time, averages the heads inside the block, and adds
//! the block into the running sum of `Ā`. In mode (a) of the method `Ā` itself (`N²`
//! values of the storage type) is the only `N x N` buffer and the passes then run on it
//! unchanged; in mode (b) ([`Tracer::trace_qk`](crate::Tracer::trace_qk)) the passes
//! recompute its rows in blocks and nothing `N x N` exists (see "Memory: two modes").
//!
//! - **Grouped-query and multi-query attention**: query head `h` uses key head
//!   `h / (H_q / H_kv)`, as Hugging Face's `repeat_kv`.
//! - **Scale**: [`QkConfig::scale`], default `1 / sqrt(d)`.
//! - **Causal mask and sliding window**: query `k` sees key `i` iff `i <= k` and, with a
//!   window `w`, `k - w < i` ([`QkConfig::window`]).
//! - **Padding and packed batches**: a key-validity mask (left padding): invalid keys get
//!   probability 0; a query row that sees no valid key is all zero. A ragged batch in
//!   FlashAttention's varlen layout (one buffer plus `cu_seqlens`) is cut into sequences by
//!   [`split_ragged`] and [`split_ragged_lse`].
//! - **Saved log-sum-exp**: when given, `p = exp(q·k·scale − lse)` in one pass, and every
//!   row that sees a valid key must sum to 1 within [`QkConfig::row_tolerance`]
//!   ([`Error::LseMismatch`]); without it the row maximum and sum are computed (a block's
//!   rows hold all their logits in scratch, so a max-then-exp pass replaces FlashAttention's
//!   online rescaling, with the same result).
//! - **Soft-capping** (Gemma 2): [`QkConfig::logit_softcap`], each scaled logit becomes
//!   `cap · tanh(s / cap)` before the softmax.
//! - **Input types**: `f32` and `f64` (f64 products for f64), `half::f16` and `half::bf16`
//!   (converted once, f32 products) ([`QkInput`]).
//!
//! # Speed, without `unsafe`
//!
//! The core keeps `forbid(unsafe_code)`, so `gemm` and `matrixmultiply` (whose kernels are
//! `unsafe fn`, and which detect AVX/FMA only with std) are out. `Q·Kᵀ` is computed in safe
//! register tiles of [`ROW_BLOCK`] query rows by [`KEY_BLOCK`] keys with the feature
//! dimension `d` innermost: `K` is packed once per layer into panels `[d][KEY_BLOCK]`, the
//! row block of `Q` is transposed to `[d][ROW_BLOCK]`, and the tile loop is a chain of
//! fixed-size array multiply-adds that LLVM keeps in registers and vectorises on the
//! baseline target (SSE2 on x86-64, NEON on aarch64; no `-C target-cpu=native`). The
//! exponential is [`exp_f32`]/[`exp_f64`]: a Cody-Waite range reduction and a polynomial,
//! branch-free in the inner loop, so it vectorises too. A faster `Q·Kᵀ` (faer's matmul, with
//! runtime AVX2/AVX-512 detection) would live in a separate std crate beside the no_std core,
//! not behind a core feature; it is not built, because the tiles keep the core portable,
//! free of a GEMM dependency and bit-reproducible across machines (no runtime dispatch, no FMA
//! contraction), and the softmax and head mean, which a GEMM crate does not fuse, would still
//! be these loops. With the `parallel` feature the row blocks of a layer are spread over
//! rayon's threads (each block writes its own rows of `Ā`; the result is the same bit for
//! bit, and so is the first bad row reported).
//!
//! # Memory: two modes
//!
//! Mode (a) ([`QkAccumulator`], [`sequence_from_qk`], [`QkSequence::materialise`]): `Ā`
//! (`N²` values of the storage type `F`, allocated fallibly: [`Error::OutOfMemory`]), the
//! layer's keys packed once (`H_kv · N · d` values of the arithmetic type) and, per
//! thread, `O(N · ROW_BLOCK + d · ROW_BLOCK)` of scratch; the passes then read `Ā` twice.
//!
//! Mode (b) ([`QkSequence`] and [`Tracer::trace_qk`](crate::Tracer::trace_qk)): nothing
//! `N x N`. The rows of `Ā` are recomputed, [`STREAM_ROWS`] at a time, inside the backward
//! pass (descending) and the forward pass (ascending) by the same row-block kernel and in
//! the same order as mode (a), so they equal its rows bit for bit (and the trace equals
//! mode (a)'s trace exactly). Extra memory `O(N · (d + STREAM_ROWS))`: the keys of every
//! layer packed once (`L · H_kv · ⌈N / 8⌉ · 8 · d` values of the arithmetic type),
//! `STREAM_ROWS · N` values of `F`, per-thread row-block scratch, and the passes' `3 N`
//! f64. The price is time: the rows from the question's first token to the answer's last
//! are computed twice (once per pass).
//!
//! # Validation order
//!
//! As [method §15](docs/method.md#s15): the shape and the configuration, the spans, then the
//! first non-finite value scanning layers ascending, `Q`, then `K`, then the log-sum-exp,
//! each in flat order (head, row, column), then the first bad row (logits that overflow, or
//! a log-sum-exp that does not belong) by (layer, head, row). [`QkAccumulator`] keeps this
//! order across calls: data errors are reported by its `finish`, after every layer was
//! scanned.
//!
//! # Sliding windows of real models
//!
//! `w` is the number of keys a query sees, itself included. Mistral and Gemma 2/3 in
//! Hugging Face transformers (the `sliding_window` of their configs, applied by
//! `masking_utils` as `kv_idx > q_idx - sliding_window`) map to `w = sliding_window`.
//! FlashAttention's `window_size = (left, right)` with `right = 0` maps to `w = left + 1`
//! (a query sees itself and `left` keys before it); transformers passes
//! `left = sliding_window - 1` there, the same `w`. Gemma 2's logit soft-capping
//! (`attn_logit_softcapping`) is [`QkConfig::logit_softcap`]; gpt-oss's attention sinks and
//! ALiBi biases are not supported and are rejected by [`QkConfig::validate`] rather than
//! silently mis-scored.

use alloc::vec;
use alloc::vec::Vec;

use half::{bf16, f16};
use num_traits::{Float, One, Zero};

use crate::aggregate::Layout;
use crate::error::{Error, Position, QkTensor};
use crate::float::FlowFloat;
use crate::sequence::{Sequence, Spans};

/// Query rows per tile (and per block of the head mean).
pub const ROW_BLOCK: usize = 4;
/// Keys per tile (the width of one packed panel of `K`).
pub const KEY_BLOCK: usize = 8;

mod block;
mod float;
mod ragged;
mod stream;

use block::{Block, Scratch, first_defect, first_non_finite};
pub use float::{
    EXP_F32_MAX_REL_ERROR, EXP_F32_RANGE, EXP_F64_MAX_REL_ERROR, EXP_F64_RANGE, QkFloat, QkInput,
    exp_f32, exp_f64,
};
pub use ragged::{split_ragged, split_ragged_lse};
pub(crate) use stream::QkRows;
pub use stream::{QkSequence, STREAM_ROWS};

/// The shape of one layer's input: query heads, key/value heads, tokens, head dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QkShape {
    /// Query heads `H_q`.
    pub q_heads: usize,
    /// Key/value heads `H_kv` (`H_q` must be a multiple of it; 1 for multi-query).
    pub kv_heads: usize,
    /// Tokens `N`.
    pub n: usize,
    /// Head dimension `d`.
    pub d: usize,
}

impl QkShape {
    /// A shape.
    pub const fn new(q_heads: usize, kv_heads: usize, n: usize, d: usize) -> Self {
        Self {
            q_heads,
            kv_heads,
            n,
            d,
        }
    }

    /// Checks the dimensions (check 1 of [method §15](docs/method.md#s15)).
    ///
    /// # Errors
    ///
    /// [`Error::EmptySequence`] for `N = 0`, then [`Error::ZeroDimension`] for no query
    /// heads, no key/value heads, `d = 0`, then [`Error::HeadsNotGrouped`].
    ///
    /// # Complexity
    ///
    /// O(1).
    pub fn check(&self) -> Result<(), Error> {
        if self.n == 0 {
            return Err(Error::EmptySequence);
        }
        for (what, v) in [
            ("query heads", self.q_heads),
            ("key/value heads", self.kv_heads),
            ("head dimensions (d)", self.d),
        ] {
            if v == 0 {
                return Err(Error::ZeroDimension { what });
            }
        }
        if !self.q_heads.is_multiple_of(self.kv_heads) {
            return Err(Error::HeadsNotGrouped {
                q_heads: self.q_heads,
                kv_heads: self.kv_heads,
            });
        }
        Ok(())
    }

    /// Values in one layer's `Q`: `H_q · N · d`.
    pub fn q_len(&self) -> usize {
        self.q_heads.saturating_mul(self.n).saturating_mul(self.d)
    }

    /// Values in one layer's `K`: `H_kv · N · d`.
    pub fn k_len(&self) -> usize {
        self.kv_heads.saturating_mul(self.n).saturating_mul(self.d)
    }

    /// Values in one layer's log-sum-exp: `H_q · N`.
    pub fn lse_len(&self) -> usize {
        self.q_heads.saturating_mul(self.n)
    }

    /// Checks the lengths of one layer's buffers against this shape: `q` values of `Q`,
    /// `k` of `K` and, when given, `lse` of the saved log-sum-exp (the last part of check 1
    /// of [method §15](docs/method.md#s15)). Every front door (the core's and the GPU's)
    /// checks a layer with it.
    ///
    /// # Errors
    ///
    /// [`Error::ShapeMismatch`] for `Q` (`"queries"`, expected [`q_len`](Self::q_len)),
    /// then `K` (`"keys"`, [`k_len`](Self::k_len)), then the log-sum-exp
    /// (`"log-sum-exp"`, [`lse_len`](Self::lse_len)).
    ///
    /// # Complexity
    ///
    /// O(1).
    ///
    /// # Examples
    ///
    /// ```
    /// use flowtracer_core::Error;
    /// use flowtracer_core::qk::QkShape;
    /// let shape = QkShape::new(4, 2, 3, 8); // Q: 4·3·8 = 96, K: 2·3·8 = 48, LSE: 4·3 = 12
    /// assert_eq!(shape.check_lengths(96, 48, None), Ok(()));
    /// assert_eq!(
    ///     shape.check_lengths(96, 48, Some(11)),
    ///     Err(Error::ShapeMismatch { what: "log-sum-exp", expected: 12, actual: 11 })
    /// );
    /// ```
    pub fn check_lengths(&self, q: usize, k: usize, lse: Option<usize>) -> Result<(), Error> {
        for (what, expected, actual) in [
            ("queries", self.q_len(), Some(q)),
            ("keys", self.k_len(), Some(k)),
            ("log-sum-exp", self.lse_len(), lse),
        ] {
            if let Some(actual) = actual
                && actual != expected
            {
                return Err(Error::ShapeMismatch {
                    what,
                    expected,
                    actual,
                });
            }
        }
        Ok(())
    }
}

/// The lengths of one layer's buffers against `s` ([`QkShape::check_lengths`]).
fn check_layer_lengths<T>(s: QkShape, layer: &QkLayer<'_, T>) -> Result<(), Error> {
    s.check_lengths(layer.q.len(), layer.k.len(), layer.lse.map(<[f32]>::len))
}

/// Configuration of the Q/K stage. `Default`: scale `1/sqrt(d)`, no window, row tolerance
/// `1e-3`, no soft-capping, sinks or ALiBi.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct QkConfig {
    /// Softmax scale (`None`: `1 / sqrt(d)`); finite and positive.
    pub scale: Option<f64>,
    /// Sliding window `w >= 1`: query `k` sees key `i` iff `k - w < i <= k` (`None`: every
    /// key `i <= k`). See the module docs for Mistral's and Gemma's mapping.
    pub window: Option<usize>,
    /// With a saved log-sum-exp, every row must sum to 1 within this (default `1e-3`).
    pub row_tolerance: f64,
    /// Gemma 2's logit soft-capping (`attn_logit_softcapping`, 50 in Gemma 2): the scaled
    /// logit `s` becomes `cap · tanh(s / cap)` before the softmax (`None`: no capping);
    /// finite and positive.
    pub logit_softcap: Option<f64>,
    /// gpt-oss's per-head attention sinks: not supported; `true` is rejected.
    pub attention_sinks: bool,
    /// ALiBi position biases: not supported; `true` is rejected.
    pub alibi: bool,
}

impl QkConfig {
    /// The default, as a constant.
    pub const DEFAULT: Self = Self {
        scale: None,
        window: None,
        row_tolerance: 1e-3,
        logit_softcap: None,
        attention_sinks: false,
        alibi: false,
    };

    /// Sets [`scale`](Self::scale).
    pub fn with_scale(mut self, scale: f64) -> Self {
        self.scale = Some(scale);
        self
    }

    /// Sets [`window`](Self::window).
    pub fn with_window(mut self, window: usize) -> Self {
        self.window = Some(window);
        self
    }

    /// Sets [`row_tolerance`](Self::row_tolerance).
    pub fn with_row_tolerance(mut self, tolerance: f64) -> Self {
        self.row_tolerance = tolerance;
        self
    }

    /// Sets [`logit_softcap`](Self::logit_softcap).
    pub fn with_logit_softcap(mut self, cap: f64) -> Self {
        self.logit_softcap = Some(cap);
        self
    }

    /// Sets [`attention_sinks`](Self::attention_sinks) (rejected by `validate`).
    pub fn with_attention_sinks(mut self, sinks: bool) -> Self {
        self.attention_sinks = sinks;
        self
    }

    /// Sets [`alibi`](Self::alibi) (rejected by `validate`).
    pub fn with_alibi(mut self, alibi: bool) -> Self {
        self.alibi = alibi;
        self
    }

    /// Checks every field.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for the first bad field: `scale` not finite and positive,
    /// `window = 0`, `row_tolerance` negative or not finite, `logit_softcap` not finite and
    /// positive, then sinks and ALiBi (unsupported).
    ///
    /// # Complexity
    ///
    /// O(1).
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field, reason| Err(Error::InvalidConfig { field, reason });
        if let Some(s) = self.scale
            && !(s > 0.0 && s.is_finite())
        {
            return bad("scale", "must be finite and > 0");
        }
        if self.window == Some(0) {
            return bad("window", "must be at least 1 (a query always sees itself)");
        }
        if !(self.row_tolerance >= 0.0 && self.row_tolerance.is_finite()) {
            return bad("row_tolerance", "must be finite and >= 0");
        }
        if let Some(c) = self.logit_softcap
            && !(c > 0.0 && c.is_finite())
        {
            return bad("logit_softcap", "must be finite and > 0");
        }
        if self.attention_sinks {
            return bad(
                "attention_sinks",
                "attention sinks (gpt-oss) are not supported by the Q/K stage; capture attention probabilities instead",
            );
        }
        if self.alibi {
            return bad(
                "alibi",
                "ALiBi biases are not supported by the Q/K stage; capture attention probabilities instead",
            );
        }
        Ok(())
    }
}

impl QkConfig {
    /// The softmax scale for head dimension `d`: [`scale`](Self::scale) or `1 / sqrt(d)`.
    pub fn scale_for(&self, d: usize) -> f64 {
        self.scale
            .unwrap_or_else(|| 1.0 / num_traits::Float::sqrt(d as f64))
    }
}

impl Default for QkConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One layer's input: its index (used to report positions), post-RoPE `Q [H_q][N][d]` and
/// `K [H_kv][N][d]` (row-major), and optionally the saved log-sum-exp `[H_q][N]` (natural
/// log, f32, as FlashAttention returns it).
#[derive(Debug, Clone, Copy)]
pub struct QkLayer<'a, T> {
    /// The layer's index in the model.
    pub index: usize,
    /// Queries `[H_q][N][d]`.
    pub q: &'a [T],
    /// Keys `[H_kv][N][d]`.
    pub k: &'a [T],
    /// Saved log-sum-exp `[H_q][N]`, if any.
    pub lse: Option<&'a [f32]>,
}

impl<'a, T> QkLayer<'a, T> {
    /// A layer without a saved log-sum-exp.
    pub fn new(index: usize, q: &'a [T], k: &'a [T]) -> Self {
        Self {
            index,
            q,
            k,
            lse: None,
        }
    }

    /// Adds the saved log-sum-exp.
    pub fn with_lse(mut self, lse: &'a [f32]) -> Self {
        self.lse = Some(lse);
        self
    }
}

/// The first bad row found so far, keyed by (layer, head, row).
#[derive(Debug, Clone, Copy, PartialEq)]
enum RowDefect {
    Overflow,
    Mass(f64),
}

/// The error of a row defect keyed by (layer, head, row).
fn defect_error(
    ((layer, head, row), defect): ((usize, usize, usize), RowDefect),
    tolerance: f64,
) -> Error {
    match defect {
        RowDefect::Overflow => Error::LogitsOverflow { layer, head, row },
        RowDefect::Mass(mass) => Error::LseMismatch {
            layer,
            head,
            row,
            mass,
            tolerance,
        },
    }
}

/// `K [H_kv][N][d]` of every key/value head packed once into panels of [`KEY_BLOCK`] keys,
/// `[H_kv][panel][d][KEY_BLOCK]`, in the arithmetic type (padding keys of the last panel 0).
fn pack_keys<T: QkInput>(k: &[T], shape: QkShape) -> Vec<T::Compute> {
    let QkShape { kv_heads, n, d, .. } = shape;
    let panels = n.div_ceil(KEY_BLOCK);
    let panel_len = d * KEY_BLOCK;
    let mut packed = vec![T::Compute::zero(); kv_heads * panels * panel_len];
    for g in 0..kv_heads {
        for key in 0..n {
            let src = &k[(g * n + key) * d..][..d];
            let base = (g * panels + key / KEY_BLOCK) * panel_len + key % KEY_BLOCK;
            for (j, &x) in src.iter().enumerate() {
                packed[base + j * KEY_BLOCK] = x.to_compute();
            }
        }
    }
    packed
}

/// 0 for a valid key, `-inf` for padding: added to the logits.
fn key_bias<C: QkFloat>(key_valid: Option<&[bool]>, n: usize) -> Vec<C> {
    (0..n)
        .map(|i| {
            if key_valid.is_none_or(|m| m[i]) {
                C::zero()
            } else {
                C::neg_infinity()
            }
        })
        .collect()
}

/// `valid_before[i]`: valid keys among `0..i` (length `N + 1`).
fn valid_before(key_valid: Option<&[bool]>, n: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(n + 1);
    out.push(0);
    for i in 0..n {
        out.push(out[i] + usize::from(key_valid.is_none_or(|m| m[i])));
    }
    out
}

/// Streams one layer's `Q` and `K` at a time into the running sum of `Ā` (mode (a) of
/// [method §15](docs/method.md#s15)), so a forward hook that sees one layer at a time never
/// holds all of them.
///
/// Shape errors come back from [`add_layer`](Self::add_layer) at once; data errors are
/// recorded and reported by [`finish`](Self::finish) in the order of method §15 whatever
/// order the layers came in (the first non-finite value by lowest layer wins over any bad
/// row).
///
/// # Examples
///
/// ```
/// use flowtracer_core::qk::{QkAccumulator, QkConfig, QkLayer, QkShape};
/// use flowtracer_core::{Spans, trace};
/// // One head, d = 1, N = 3, scale 1: keys 0, ln 2, ln 3 give rows [1], [1/3, 2/3],
/// // [1/6, 2/6, 3/6].
/// let (q, k) = ([1.0f64; 3], [0.0, 2f64.ln(), 3f64.ln()]);
/// let mut acc = QkAccumulator::<f64>::new(QkShape::new(1, 1, 3, 1), QkConfig::default().with_scale(1.0), None)?;
/// acc.add_layer(&QkLayer::new(0, &q, &k))?;
/// let seq = acc.finish(Spans::new(0..1, 2..3))?;
/// assert!((seq.at(2, 2) - 0.5).abs() < 1e-15);
/// assert!((trace(&seq)?.flow()[1] - 0.4).abs() < 1e-12);
/// # Ok::<(), flowtracer_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct QkAccumulator<F> {
    shape: QkShape,
    scale: f64,
    window: Option<usize>,
    row_tolerance: f64,
    softcap: Option<f64>,
    /// `valid_before[i]`: valid keys among `0..i` (length `N + 1`).
    valid_before: Vec<usize>,
    key_valid: Option<Vec<bool>>,
    layers: usize,
    sum: Vec<F>,
    non_finite: Option<(usize, QkTensor, Position)>,
    bad_row: Option<((usize, usize, usize), RowDefect)>,
}

impl<F: FlowFloat> QkAccumulator<F> {
    /// An accumulator for `shape` under `config`, with an optional key-validity mask of
    /// length `N` (`false`: a padding token no query attends to).
    ///
    /// # Errors
    ///
    /// The shape errors of [`QkShape::check`], then [`Error::InvalidConfig`], then
    /// [`Error::ShapeMismatch`] for a mask that is not `N` long, then
    /// [`Error::OutOfMemory`] if `N²` values of `F` cannot be allocated.
    ///
    /// # Complexity
    ///
    /// O(N²) to zero the sum (`N²` values of `F`, the only `N x N` buffer of the stage).
    pub fn new(
        shape: QkShape,
        config: QkConfig,
        key_valid: Option<&[bool]>,
    ) -> Result<Self, Error> {
        shape.check()?;
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
        // Ā is the one buffer whose size the input does not bound (N² from N): allocated
        // fallibly, so a huge N is an error, not an abort.
        let cells = n.checked_mul(n);
        let bytes = cells.map_or(usize::MAX, |c| c.saturating_mul(core::mem::size_of::<F>()));
        let oom = Error::OutOfMemory {
            what: "the aggregated attention (N x N)",
            bytes,
        };
        let mut sum = Vec::new();
        sum.try_reserve_exact(cells.ok_or(oom.clone())?)
            .map_err(|_| oom)?;
        sum.resize(n * n, F::zero());
        Ok(Self {
            shape,
            scale: config.scale_for(shape.d),
            window: config.window,
            row_tolerance: config.row_tolerance,
            softcap: config.logit_softcap,
            valid_before: valid_before(key_valid, n),
            key_valid: key_valid.map(<[bool]>::to_vec),
            layers: 0,
            sum,
            non_finite: None,
            bad_row: None,
        })
    }

    /// The shape every layer must have.
    pub fn shape(&self) -> QkShape {
        self.shape
    }

    /// Number of layers added so far.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Checks the lengths of one layer's buffers against the shape.
    ///
    /// # Errors
    ///
    /// [`Error::ShapeMismatch`] for `Q`, then `K`, then the log-sum-exp.
    ///
    /// # Complexity
    ///
    /// O(1).
    pub fn check_layer<T>(&self, layer: &QkLayer<'_, T>) -> Result<(), Error> {
        check_layer_lengths(self.shape, layer)
    }

    /// Adds one layer: scans it for non-finite values, then (if no layer had any) adds its
    /// head-mean probabilities block by block into the sum.
    ///
    /// # Errors
    ///
    /// Only [`Error::ShapeMismatch`] (see [`check_layer`](Self::check_layer)); data errors
    /// are reported by [`finish`](Self::finish).
    ///
    /// # Complexity
    ///
    /// O(H_q · N_vis · d) time, `N_vis ≈ N² / 2` (causal) or `N · w` (window) visible
    /// pairs; extra memory O(H_kv · N · d) for the packed keys plus O(N · (d + ROW_BLOCK))
    /// of scratch, freed on return. No `N x N` allocation.
    pub fn add_layer<T: QkInput>(&mut self, layer: &QkLayer<'_, T>) -> Result<(), Error> {
        self.check_layer(layer)?;
        self.layers += 1;
        if let Some((tensor, position)) = first_non_finite(layer, self.shape)
            && self
                .non_finite
                .as_ref()
                .is_none_or(|(l, _, _)| layer.index < *l)
        {
            self.non_finite = Some((layer.index, tensor, position));
        }
        if self.non_finite.is_none() {
            self.accumulate(layer);
        }
        Ok(())
    }

    fn record_row(&mut self, key: (usize, usize, usize), defect: RowDefect) {
        if self.bad_row.as_ref().is_none_or(|(k, _)| key < *k) {
            self.bad_row = Some((key, defect));
        }
    }

    fn accumulate<T: QkInput>(&mut self, layer: &QkLayer<'_, T>) {
        let n = self.shape.n;
        let packed = pack_keys(layer.k, self.shape);
        let bias = key_bias(self.key_valid.as_deref(), n);
        let block = Block {
            shape: self.shape,
            window: self.window,
            row_tolerance: self.row_tolerance,
            valid_before: &self.valid_before,
            scale: T::Compute::from_f64_lossy(self.scale),
            softcap: self.softcap.map(T::Compute::from_f64_lossy),
            packed: &packed,
            bias: &bias,
            layer,
        };
        let rows = ROW_BLOCK * n;
        #[cfg(feature = "parallel")]
        let defect = {
            use rayon::prelude::*;
            self.sum
                .par_chunks_mut(rows)
                .enumerate()
                .map_init(
                    || Scratch::new(self.shape),
                    |scratch, (b, sum)| block.run(b * ROW_BLOCK, sum, scratch),
                )
                .reduce(|| None, first_defect)
        };
        #[cfg(not(feature = "parallel"))]
        let defect = {
            let mut scratch = Scratch::new(self.shape);
            self.sum
                .chunks_mut(rows)
                .enumerate()
                .map(|(b, sum)| block.run(b * ROW_BLOCK, sum, &mut scratch))
                .fold(None, first_defect)
        };
        if let Some((key, defect)) = defect {
            self.record_row(key, defect);
        }
    }

    /// The mean `Ā` (dense `N x N`, zeros above the diagonal and outside the window).
    ///
    /// # Errors
    ///
    /// [`Error::ZeroDimension`] if no layer was added, then [`Error::NonFiniteInput`],
    /// then [`Error::LogitsOverflow`] or [`Error::LseMismatch`] (the first bad row by
    /// layer, head, row).
    ///
    /// # Complexity
    ///
    /// O(N²), in place.
    pub fn finish_matrix(self) -> Result<Vec<F>, Error> {
        if self.layers == 0 {
            return Err(Error::ZeroDimension { what: "layers" });
        }
        if let Some((layer, tensor, mut position)) = self.non_finite {
            position.layer = Some(layer);
            return Err(Error::NonFiniteInput { tensor, position });
        }
        if let Some(defect) = self.bad_row {
            return Err(defect_error(defect, self.row_tolerance));
        }
        let n = self.shape.n;
        let scale = F::from_f64_lossy(1.0 / (self.layers * self.shape.q_heads) as f64);
        let mut sum = self.sum;
        for k in 0..n {
            for x in &mut sum[k * n..=k * n + k] {
                *x = *x * scale;
            }
        }
        Ok(sum)
    }

    /// The validated [`Sequence`] of the mean `Ā` and `spans`.
    ///
    /// # Errors
    ///
    /// [`Error::ZeroDimension`] if no layer was added, then the span errors, then the data
    /// errors of [`finish_matrix`](Self::finish_matrix).
    ///
    /// # Complexity
    ///
    /// O(N²), in place.
    pub fn finish(self, spans: Spans) -> Result<Sequence<'static, F>, Error> {
        if self.layers == 0 {
            return Err(Error::ZeroDimension { what: "layers" });
        }
        spans.check(self.shape.n)?;
        Sequence::owned(self.finish_matrix()?, Layout::Dense, spans)
    }
}

/// The validated [`Sequence`] of `Ā` averaged over `layers` (each `Q`, `K` and optional
/// log-sum-exp of `shape`) and every query head, with `spans`: mode (a) of
/// [method §15](docs/method.md#s15) in one call.
///
/// # Errors
///
/// In the order of method §15: the shape errors ([`QkShape::check`], then
/// [`Error::ZeroDimension`] for no layer, then each layer's [`Error::ShapeMismatch`]), the
/// configuration ([`Error::InvalidConfig`]), the mask's length, the spans, then
/// [`Error::NonFiniteInput`] (layers ascending, `Q`, `K`, LSE, flat order), then
/// [`Error::LogitsOverflow`] or [`Error::LseMismatch`].
///
/// # Complexity
///
/// O(L · H_q · N_vis · d) time; `N²` values of `F` for `Ā` plus O(H_kv · N · d) scratch.
///
/// # Examples
///
/// ```
/// use flowtracer_core::qk::{QkConfig, QkLayer, QkShape, sequence_from_qk};
/// use flowtracer_core::{Sequence, Spans};
/// // Two query heads sharing one key head, N = 2, d = 1.
/// let q = [0.0f32, 0.0, /* head 1 */ 0.0, 1.0];
/// let k = [0.0f32, 2f32.ln()];
/// let seq: Sequence<'_, f32> = sequence_from_qk(
///     &[QkLayer::new(0, &q, &k)],
///     QkShape::new(2, 1, 2, 1),
///     &QkConfig::default().with_scale(1.0),
///     None,
///     Spans::new(0..1, 1..2),
/// )?;
/// // Row 1: head 0 is uniform (1/2, 1/2), head 1 is (1/3, 2/3).
/// assert!((seq.at(1, 0) - (0.5 + 1.0 / 3.0) / 2.0).abs() < 1e-6);
/// # Ok::<(), flowtracer_core::Error>(())
/// ```
pub fn sequence_from_qk<T: QkInput, F: FlowFloat>(
    layers: &[QkLayer<'_, T>],
    shape: QkShape,
    config: &QkConfig,
    key_valid: Option<&[bool]>,
    spans: Spans,
) -> Result<Sequence<'static, F>, Error> {
    shape.check()?;
    if layers.is_empty() {
        return Err(Error::ZeroDimension { what: "layers" });
    }
    let mut acc = QkAccumulator::<F>::new(shape, *config, key_valid)?;
    for layer in layers {
        acc.check_layer(layer)?;
    }
    spans.check(shape.n)?;
    // Ascending layers, so the scan meets the lowest layer's defect first.
    let mut order: Vec<&QkLayer<'_, T>> = layers.iter().collect();
    order.sort_by_key(|l| l.index);
    for layer in order {
        acc.add_layer(layer)?;
    }
    acc.finish(spans)
}
