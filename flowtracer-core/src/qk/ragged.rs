//! Cutting a ragged batch in FlashAttention's varlen layout into per-sequence tensors.

use super::*;

/// Checks `cu_seqlens` (cumulative token counts `[0, n_0, n_0 + n_1, ...]`) and returns the
/// total token count.
pub(super) fn check_offsets(cu_seqlens: &[usize]) -> Result<usize, Error> {
    if cu_seqlens.first() != Some(&0) {
        return Err(Error::BadOffsets { index: 0 });
    }
    if let Some(i) = cu_seqlens.windows(2).position(|w| w[1] < w[0]) {
        return Err(Error::BadOffsets { index: i + 1 });
    }
    Ok(*cu_seqlens.last().unwrap_or(&0))
}

/// Cuts a ragged batch of queries or keys in FlashAttention's varlen layout (one buffer
/// `[total][heads][d]`, token-major, sequences back to back as `cu_seqlens` says, as verl's
/// remove-padding and TRL's padding-free batches hold them) into one head-major
/// `[heads][n_b][d]` buffer per sequence, the layout [`QkLayer`] takes.
///
/// # Errors
///
/// [`Error::BadOffsets`] if `cu_seqlens` is empty, does not start at 0 or decreases;
/// [`Error::ZeroDimension`] for no heads or `d = 0`; [`Error::ShapeMismatch`] if `buffer`
/// is not `total · heads · d` long.
///
/// # Complexity
///
/// O(total · heads · d) time; one copy of the buffer (small beside the attention itself:
/// the stage then costs O(n_b² · heads · d) per sequence).
///
/// # Examples
///
/// ```
/// use flowtracer_core::qk::split_ragged;
/// // Two sequences of 1 and 2 tokens, 2 heads, d = 1, token-major.
/// let q = [1.0, 2.0, /* seq 1 */ 3.0, 4.0, 5.0, 6.0];
/// let parts = split_ragged(&q, &[0, 1, 3], 2, 1)?;
/// assert_eq!(parts[1], [3.0, 5.0, 4.0, 6.0]); // head 0: tokens 0, 1; head 1: tokens 0, 1
/// # Ok::<(), flowtracer_core::Error>(())
/// ```
pub fn split_ragged<T: Copy>(
    buffer: &[T],
    cu_seqlens: &[usize],
    heads: usize,
    d: usize,
) -> Result<Vec<Vec<T>>, Error> {
    let total = check_offsets(cu_seqlens)?;
    for (what, v) in [("heads", heads), ("head dimensions (d)", d)] {
        if v == 0 {
            return Err(Error::ZeroDimension { what });
        }
    }
    let expected = total.saturating_mul(heads).saturating_mul(d);
    if buffer.len() != expected {
        return Err(Error::ShapeMismatch {
            what: "ragged queries or keys",
            expected,
            actual: buffer.len(),
        });
    }
    Ok(cu_seqlens
        .windows(2)
        .map(|w| {
            let n = w[1] - w[0];
            let mut out = Vec::with_capacity(heads * n * d);
            for h in 0..heads {
                for t in w[0]..w[1] {
                    out.extend_from_slice(&buffer[(t * heads + h) * d..][..d]);
                }
            }
            out
        })
        .collect())
}

/// Cuts FlashAttention's varlen log-sum-exp (`[heads][total]`, head-major) into one
/// `[heads][n_b]` buffer per sequence of a ragged batch (see [`split_ragged`]).
///
/// # Errors
///
/// [`Error::BadOffsets`], [`Error::ZeroDimension`] for no heads, [`Error::ShapeMismatch`] if
/// `lse` is not `heads · total` long.
///
/// # Complexity
///
/// O(heads · total).
pub fn split_ragged_lse(
    lse: &[f32],
    cu_seqlens: &[usize],
    heads: usize,
) -> Result<Vec<Vec<f32>>, Error> {
    let total = check_offsets(cu_seqlens)?;
    if heads == 0 {
        return Err(Error::ZeroDimension { what: "heads" });
    }
    let expected = total.saturating_mul(heads);
    if lse.len() != expected {
        return Err(Error::ShapeMismatch {
            what: "ragged log-sum-exp",
            expected,
            actual: lse.len(),
        });
    }
    Ok(cu_seqlens
        .windows(2)
        .map(|w| {
            (0..heads)
                .flat_map(|h| lse[h * total + w[0]..h * total + w[1]].iter().copied())
                .collect()
        })
        .collect())
}
