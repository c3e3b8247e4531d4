//! Where each sequence's queries, keys and log-sum-exp are in the layer buffers of
//! [`super::QkAccumulator`]: [`QkView`] (offset and strides of one tensor) and
//! [`QkSequence`] (one sequence, with constructors for the usual batch layouts).

use alloc::vec;
use alloc::vec::Vec;

use flowtracer_core::Error;
use flowtracer_core::qk::{split_ragged, split_ragged_lse};

/// Where one tensor of one sequence lives in a layer buffer: element `(head, row, col)` is
/// `offset + head * head_stride + row * row_stride + col`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QkView {
    /// Element offset of head 0, row 0, column 0.
    pub offset: usize,
    /// Elements between heads.
    pub head_stride: usize,
    /// Elements between rows (ignored for the log-sum-exp, whose rows are contiguous).
    pub row_stride: usize,
}

impl QkView {
    /// One past the last element read for `heads` heads of `n` rows of `width` values.
    pub(super) fn extent(&self, heads: usize, n: usize, width: usize) -> usize {
        self.offset + (heads - 1) * self.head_stride + (n - 1) * self.row_stride + width
    }

    /// Whether `heads` heads of `n` rows of `width` values, `row_stride` apart, read
    /// distinct elements: taken by increasing stride (an axis of one item has none), each
    /// axis's stride is at least the span of the axes inside it, so no two `(head, row,
    /// col)` meet. Every layout [`QkSequence`]'s constructors build (head-major, padded,
    /// token-major varlen) passes; one where a row or a head runs into the next fails.
    pub(super) fn disjoint(&self, heads: usize, n: usize, width: usize, row_stride: usize) -> bool {
        let mut axes = [(self.head_stride, heads), (row_stride, n)];
        axes.sort_unstable();
        let mut span = width;
        for (stride, count) in axes {
            if count <= 1 {
                continue;
            }
            if stride < span {
                return false;
            }
            span = stride.saturating_mul(count - 1).saturating_add(span);
        }
        true
    }
}

/// One sequence of a batch: its length, where its `Q`, `K` and log-sum-exp are in the
/// layer buffers, and its optional key-validity mask (`false`: a padding key no query
/// attends to).
///
/// The fields are public (a caller may describe any strided layout); `QkAccumulator::new`
/// refuses a `Q` or `K` view whose heads or rows overlap, and `check_layer` (called by
/// `add_layer`) a log-sum-exp view whose heads overlap or any view that runs past its
/// buffer. Two sequences may read the same elements (the buffers are only read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QkSequence {
    /// Tokens `n`.
    pub n: usize,
    /// Where `Q [H_q][n][d]` is.
    pub q: QkView,
    /// Where `K [H_kv][n][d]` is.
    pub k: QkView,
    /// Where the log-sum-exp `[H_q][n]` is (used only for layers that pass one).
    pub lse: QkView,
    /// Key-validity mask of length `n` (`None`: every key is valid).
    pub key_valid: Option<Vec<bool>>,
}

impl QkSequence {
    /// Sequences stored head-major back to back (`Q` of sequence `b` is `[H_q][n_b][d]`
    /// right after sequence `b - 1`'s, likewise `K` and the log-sum-exp `[H_q][n_b]`): the
    /// layout of the core's `QkLayer`, one sequence after another.
    pub fn ragged(q_heads: usize, kv_heads: usize, d: usize, lengths: &[usize]) -> Vec<Self> {
        let mut t = 0;
        lengths
            .iter()
            .map(|&n| {
                let s = Self {
                    n,
                    q: QkView {
                        offset: t * q_heads * d,
                        head_stride: n * d,
                        row_stride: d,
                    },
                    k: QkView {
                        offset: t * kv_heads * d,
                        head_stride: n * d,
                        row_stride: d,
                    },
                    lse: QkView {
                        offset: t * q_heads,
                        head_stride: n,
                        row_stride: 1,
                    },
                    key_valid: None,
                };
                t += n;
                s
            })
            .collect()
    }

    /// Sequence `batch_index` of a padded batch (`Q [B][H_q][t][d]`, `K [B][H_kv][t][d]`,
    /// log-sum-exp `[B][H_q][t]`), occupying tokens `start..start + n` of its slot.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] (field `"start"`) if `start + n > t`: the sequence would
    /// run past its slot into the next head's, or the next sequence's, rows.
    ///
    /// # Examples
    ///
    /// ```
    /// use flowtracer_core::Error;
    /// use flowtracer_gpu::QkSequence;
    /// let s = QkSequence::padded(1, (4, 2, 8), 16, 3, 13)?; // tokens 3..16 of slot 1
    /// assert_eq!(s.q.offset, (4 * 16 + 3) * 8);
    /// assert!(matches!(
    ///     QkSequence::padded(1, (4, 2, 8), 16, 4, 13),
    ///     Err(Error::InvalidConfig { field: "start", .. })
    /// ));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn padded(
        batch_index: usize,
        (q_heads, kv_heads, d): (usize, usize, usize),
        t: usize,
        start: usize,
        n: usize,
    ) -> Result<Self, Error> {
        if start.checked_add(n).is_none_or(|end| end > t) {
            return Err(Error::InvalidConfig {
                field: "start",
                reason: "a padded sequence occupies tokens start..start + n of its slot: \
                         start + n must be at most the padded length t",
            });
        }
        Ok(Self {
            n,
            q: QkView {
                offset: (batch_index * q_heads * t + start) * d,
                head_stride: t * d,
                row_stride: d,
            },
            k: QkView {
                offset: (batch_index * kv_heads * t + start) * d,
                head_stride: t * d,
                row_stride: d,
            },
            lse: QkView {
                offset: batch_index * q_heads * t + start,
                head_stride: t,
                row_stride: 1,
            },
            key_valid: None,
        })
    }

    /// The sequences of a ragged batch in FlashAttention's varlen layout: `Q` one
    /// token-major buffer `[total][H_q][d]` of `q_len` values, `K` `[total][H_kv][d]` of
    /// `k_len`, the log-sum-exp (if any) `[H_q][total]` of `lse_len`, and `cu_seqlens`
    /// (`[0, n_0, n_0 + n_1, ...]`). Read in place: nothing is copied.
    ///
    /// # Errors
    ///
    /// Exactly those of the core's `split_ragged` for `Q`, then `K`, then
    /// `split_ragged_lse`:
    /// [`Error::BadOffsets`], [`Error::ZeroDimension`], [`Error::ShapeMismatch`].
    ///
    /// # Complexity
    ///
    /// O(S) for `S` sequences; with a log-sum-exp, the core's check copies its `H_q · total`
    /// floats once (host memory O(H_q · total), never `N²`), `Q` and `K` are not touched.
    pub fn varlen(
        cu_seqlens: &[usize],
        (q_heads, kv_heads, d): (usize, usize, usize),
        q_len: usize,
        k_len: usize,
        lse_len: Option<usize>,
    ) -> Result<Vec<Self>, Error> {
        // `()` is zero-sized: the core validates lengths and offsets, and nothing is copied.
        split_ragged(&vec![(); q_len], cu_seqlens, q_heads, d)?;
        split_ragged(&vec![(); k_len], cu_seqlens, kv_heads, d)?;
        let total = *cu_seqlens.last().unwrap_or(&0);
        if let Some(len) = lse_len {
            // Its size is H_q · total values (O(N · H), never N²).
            split_ragged_lse(&vec![0.0f32; len], cu_seqlens, q_heads)?;
        }
        Ok(cu_seqlens
            .windows(2)
            .map(|w| Self {
                n: w[1] - w[0],
                q: QkView {
                    offset: w[0] * q_heads * d,
                    head_stride: d,
                    row_stride: q_heads * d,
                },
                k: QkView {
                    offset: w[0] * kv_heads * d,
                    head_stride: d,
                    row_stride: kv_heads * d,
                },
                lse: QkView {
                    offset: w[0],
                    head_stride: total,
                    row_stride: 1,
                },
                key_valid: None,
            })
            .collect())
    }

    /// The same sequence with a key-validity mask.
    #[must_use]
    pub fn with_key_valid(mut self, key_valid: Vec<bool>) -> Self {
        self.key_valid = Some(key_valid);
        self
    }
}
