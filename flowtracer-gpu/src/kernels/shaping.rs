//! Per-response top-ρ selection and token weights ([method §9](docs/method.md#s9)), and the shaped advantages.
//!
//! - `token_weights`: one unit per token of every sequence (2-D grid: x over tokens, y over
//!   sequences). A scored token `t` of the response `R` computes its rank, the number of
//!   tokens of `R` ordered before it: tokens with `tau > 0` before the others, then by
//!   `tau` (descending for top, ascending for bottom), then by position. It is selected
//!   when its rank is below `k` (computed on the host in f64 by the core's
//!   `num_selected`), which reproduces the core's selection exactly, ties included.
//!   O(|R|) per token.
//! - `shape_advantage`: element-wise `w * A` (or `A` for a negative advantage under
//!   `nonnegative_only`), with one advantage per sequence.

use cubecl::prelude::*;

use crate::buffer::DeviceBuffer;
use crate::plan::Launch;

/// `u32` fields per sequence in the shaping metadata.
pub(crate) const SHAPE_META: usize = 6;
/// Field: sequence length.
pub(crate) const N: usize = 0;
/// Field: element offset of token 0 in the score and weight buffers.
pub(crate) const OFFSET: usize = 1;
/// Field: response start.
pub(crate) const R_START: usize = 2;
/// Field: response end.
pub(crate) const R_END: usize = 3;
/// Field: number of tokens to select.
pub(crate) const K: usize = 4;
/// Field: 1 when the sequence has scores (an answer span), 0 for all-ones weights.
pub(crate) const SCORED: usize = 5;

#[cube(launch_unchecked)]
fn token_weights_kernel(
    scores: &[f32],
    metadata: &[u32],
    inv_mean: &[f32],
    weights: &mut [f32],
    high: f32,
    #[comptime] bottom: bool,
) {
    let seq = CUBE_POS_Y as usize;
    let t = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
    if seq >= metadata.len() / SHAPE_META {
        terminate!();
    }
    let base = seq * SHAPE_META;
    let n = metadata[base + N] as usize;
    if t >= n {
        terminate!();
    }
    let offset = metadata[base + OFFSET] as usize;
    let r_start = metadata[base + R_START] as usize;
    let r_end = metadata[base + R_END] as usize;
    let mut w = 1.0f32;
    if metadata[base + SCORED] != 0 && t >= r_start && t < r_end {
        let st = scores[offset + t];
        let pt = st > 0.0f32;
        let mut ct = 0.0f32;
        if pt {
            ct = st;
        }
        let mut rank = 0u32;
        for s in r_start..r_end {
            let ss = scores[offset + s];
            let ps = ss > 0.0f32;
            let mut cs = 0.0f32;
            if ps {
                cs = ss;
            }
            let mut before = false;
            if ps && !pt {
                before = true;
            } else if ps == pt {
                if bottom {
                    before = cs < ct || (cs == ct && s < t);
                } else {
                    before = cs > ct || (cs == ct && s < t);
                }
            }
            if before {
                rank += 1u32;
            }
        }
        if rank < metadata[base + K] {
            w = high;
        }
        w *= inv_mean[seq];
    }
    weights[offset + t] = w;
}

#[cube(launch_unchecked)]
fn shape_advantage_kernel(
    weights: &[f32],
    metadata: &[u32],
    advantages: &[f32],
    out: &mut [f32],
    #[comptime] nonnegative_only: bool,
) {
    let seq = CUBE_POS_Y as usize;
    let t = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
    if seq >= metadata.len() / SHAPE_META {
        terminate!();
    }
    let base = seq * SHAPE_META;
    if t >= metadata[base + N] as usize {
        terminate!();
    }
    let at = metadata[base + OFFSET] as usize + t;
    let a = advantages[seq];
    let mut v = weights[at] * a;
    if nonnegative_only && a < 0.0f32 {
        v = a;
    }
    out[at] = v;
}

/// Launches `token_weights`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_weights(
    client: &Client,
    launch: &Launch,
    scores: &DeviceBuffer,
    metadata: &DeviceBuffer,
    inv_mean: &DeviceBuffer,
    weights: &DeviceBuffer,
    high: f32,
    bottom: bool,
) {
    // SAFETY: `DeviceBuffer::arg` declares each buffer with its true length. The kernel
    // guards the sequence index against the records in `metadata` and the token index
    // against `n`. `shaping::metadata` (in `shaping.rs`) wrote a record only after checking
    // `offset + n <= scores.len()` (= `weights.len()`, allocated so by `token_weights`) and
    // that `offset + n` fits in `u32`, and `check_response` put the response inside `0..n`,
    // so `scores[offset + s]` and `weights[offset + t]` are in bounds; `inv_mean` has one
    // slot per record.
    unsafe {
        token_weights_kernel::launch_unchecked(
            client,
            launch.cube_count(),
            launch.cube_dim(),
            scores.arg(),
            metadata.arg(),
            inv_mean.arg(),
            weights.arg(),
            high,
            bottom,
        );
    }
}

/// Launches `shape_advantage`.
pub(crate) fn launch_advantage(
    client: &Client,
    launch: &Launch,
    weights: &DeviceBuffer,
    metadata: &DeviceBuffer,
    advantages: &DeviceBuffer,
    out: &DeviceBuffer,
    nonnegative_only: bool,
) {
    // SAFETY: `DeviceBuffer::arg` declares each buffer with its true length. The kernel
    // guards the sequence index against the records in `metadata` and the token index
    // against `n`. `shape_advantage` (in `shaping.rs`) wrote a record only after checking
    // `offset + n <= weights.len()` (= `out.len()`) and that `offset + n` fits in `u32`, and
    // checked that `advantages` has one value per sequence.
    unsafe {
        shape_advantage_kernel::launch_unchecked(
            client,
            launch.cube_count(),
            launch.cube_dim(),
            weights.arg(),
            metadata.arg(),
            advantages.arg(),
            out.arg(),
            nonnegative_only,
        );
    }
}
