//! [`SeqMeta`]: where one sequence of a trace batch lives, written once by the host and read
//! by one `#[cube]` function in every trace kernel.
//!
//! The trace kernels (`check`, `reach_block`, `reach_update`, `flow_init`, `flow_block`,
//! `flow_update`) receive one `u32` buffer holding [`SeqMeta::WORDS`] words per sequence.
//! The host fills it with [`SeqMeta::encode`], and the kernels read a record with
//! [`SeqMeta::read`], so the word order is written down in exactly these two functions.
//!
//! # The bounds a record guarantees
//!
//! `trace_batch_with_workspace` (in `trace.rs`) encodes a record as [`SeqMeta::active`] only
//! after `validate_input` accepted the sequence; an inactive record is all zeros and every
//! kernel exits on it before touching another buffer. For an active record:
//!
//! - `1 <= n <= MAX_N` (65 535), so `n * n` and every flat index `k * n + i` fit in `u32`;
//! - `row_stride >= n` and `offset + (n - 1) * row_stride + n <= attention.len()` and
//!   `< 2^32`, so every `offset + k * row_stride + i` with `i <= k < n` is inside the
//!   attention buffer and does not wrap in the kernels' 32-bit `usize`;
//! - `q_start <= q_end <= n` and `a_start <= a_end <= n` (`check_spans`);
//! - `vec_offset + n <= tokens`, the length of every per-token buffer (`h`, `f`, `u`,
//!   `tau`): `vec_offset` is the running sum of the lengths before it and
//!   `Workspace::reserve` sizes those buffers to the sum of all lengths.

use cubecl::prelude::*;

/// Words per record (the fields of [`SeqMeta`], one `u32` each).
const WORDS: usize = 9;

/// One sequence's record in the metadata buffer of the trace kernels.
///
/// A plain struct on the host ([`SeqMeta::encode`]) and a cube type on the device
/// ([`SeqMeta::read`]); the fields are the same on both sides.
#[derive(CubeType, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SeqMeta {
    /// Sequence length `n`.
    pub(crate) n: usize,
    /// Element offset of `Ā[0][0]` in the attention buffer.
    pub(crate) offset: usize,
    /// Elements between `Ā[k][0]` and `Ā[k + 1][0]`.
    pub(crate) row_stride: usize,
    /// Element offset of token 0 in the per-token buffers.
    pub(crate) vec_offset: usize,
    /// Question span start.
    pub(crate) q_start: usize,
    /// Question span end.
    pub(crate) q_end: usize,
    /// Answer span start.
    pub(crate) a_start: usize,
    /// Answer span end.
    pub(crate) a_end: usize,
    /// Whether the sequence passed host validation and is traced.
    pub(crate) active: bool,
}

impl SeqMeta {
    /// Number of `u32` words per record.
    pub(crate) const WORDS: usize = WORDS;

    /// The record's words, in the order [`SeqMeta::read`] reads them.
    ///
    /// # Panics
    ///
    /// If a field does not fit in `u32` (callers encode only validated sequences, whose
    /// fields all do).
    pub(crate) fn encode(&self) -> [u32; Self::WORDS] {
        let w = crate::plan::to_u32;
        [
            w(self.n),
            w(self.offset),
            w(self.row_stride),
            w(self.vec_offset),
            w(self.q_start),
            w(self.q_end),
            w(self.a_start),
            w(self.a_end),
            u32::from(self.active),
        ]
    }
}

#[cube]
impl SeqMeta {
    /// Number of records in `metadata`. Every trace kernel exits for a sequence index at or
    /// past it before calling [`SeqMeta::read`].
    pub(crate) fn count(metadata: &[u32]) -> usize {
        metadata.len() / WORDS
    }

    /// Record `seq` of `metadata` (words `WORDS * seq..WORDS * (seq + 1)`, in the order of
    /// [`SeqMeta::encode`]). The caller guarantees `seq < SeqMeta::count(metadata)`.
    pub(crate) fn read(metadata: &[u32], seq: usize) -> SeqMeta {
        let base = seq * WORDS;
        SeqMeta {
            n: metadata[base] as usize,
            offset: metadata[base + 1] as usize,
            row_stride: metadata[base + 2] as usize,
            vec_offset: metadata[base + 3] as usize,
            q_start: metadata[base + 4] as usize,
            q_end: metadata[base + 5] as usize,
            a_start: metadata[base + 6] as usize,
            a_end: metadata[base + 7] as usize,
            active: metadata[base + 8] != 0u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SeqMeta;

    #[test]
    fn encode_writes_the_fields_in_declaration_order() {
        let m = SeqMeta {
            n: 1,
            offset: 2,
            row_stride: 3,
            vec_offset: 4,
            q_start: 5,
            q_end: 6,
            a_start: 7,
            a_end: 8,
            active: true,
        };
        assert_eq!(m.encode(), [1, 2, 3, 4, 5, 6, 7, 8, 1]);
        assert_eq!(SeqMeta::default().encode(), [0; SeqMeta::WORDS]);
    }
}
