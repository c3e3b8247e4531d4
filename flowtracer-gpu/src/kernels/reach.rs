//! The reach pass ([method §4](docs/method.md#s4)) as a blocked backward triangular sweep.
//!
//! Step `s` of the sweep owns the block of rows `lo..hi` with `hi = n - s * block` and
//! `lo = hi.saturating_sub(block)` (blocks are aligned to the end of each sequence, so every
//! sequence of a ragged batch starts at once). The accumulator of a row is the `h` buffer
//! itself: when a step begins, `h[i]` for `i` in the block already holds
//! `sum_{k >= hi} W[i][k] h(k)`.
//!
//! - `reach_block`: one cube per sequence, one unit per row of the block. The rows are
//!   finalised in descending order; after row `t` is final its value is broadcast through
//!   shared memory and every earlier row of the block adds `Ā[t][j] h(t)` (an axpy over a
//!   contiguous row segment, so the reads are coalesced). One `sync_cube` per row.
//! - `reach_update`: one unit per earlier row `i < lo` of every sequence adds the whole
//!   block, `h[i] += sum_{k in lo..hi} W[i][k] h(k)` (a transposed matrix-vector product;
//!   neighbouring units read neighbouring columns of the same row).

use cubecl::prelude::*;

use super::seq_meta::SeqMeta;
use crate::buffer::DeviceBuffer;
use crate::plan::Launch;

/// `h[p] = 0` for every element of the ragged output (the accumulator starts clean).
#[cube(launch_unchecked)]
fn zero_kernel(out: &mut [f32]) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    out[ABSOLUTE_POS] = 0.0f32;
}

#[cube(launch_unchecked)]
fn reach_block_kernel(
    attention: &[f32],
    metadata: &[u32],
    h: &mut [f32],
    step: u32,
    threshold: f32,
    #[comptime] block: usize,
    #[comptime] relay: bool,
) {
    let seq = CUBE_POS_X as usize;
    if seq >= SeqMeta::count(metadata) {
        terminate!();
    }
    let m = SeqMeta::read(metadata, seq);
    let n = m.n;
    let done = step as usize * block;
    // Cube-uniform exits only: every unit of the cube takes the same branch.
    if !m.active || done >= n {
        terminate!();
    }
    let offset = m.offset;
    let ld = m.row_stride;
    let voff = m.vec_offset;
    let a_start = m.a_start;
    let a_end = m.a_end;
    let hi = n - done;
    let mut lo = 0usize;
    if hi > block {
        lo = hi - block;
    }
    let len = hi - lo;

    let j = UNIT_POS_X as usize;
    let mut value = Shared::<[f32]>::new_slice(block);
    let mut acc = 0.0f32;
    if j < len {
        acc = h[voff + lo + j];
    }
    for s in 0..len {
        let t = len - 1 - s;
        if j == t {
            let i = lo + t;
            let mut hv = acc;
            if i >= a_start && i < a_end {
                if relay {
                    hv = 1.0f32 + acc;
                } else {
                    hv = 1.0f32;
                }
            }
            h[voff + i] = hv;
            value[t] = hv;
        }
        sync_cube();
        if j < t {
            let x = attention[offset + (lo + t) * ld + lo + j];
            let mut w = x;
            if x < threshold {
                w = 0.0f32;
            }
            acc += w * value[t];
        }
    }
}

#[cube(launch_unchecked)]
fn reach_update_kernel(
    attention: &[f32],
    metadata: &[u32],
    h: &mut [f32],
    step: u32,
    threshold: f32,
    #[comptime] block: usize,
) {
    let seq = CUBE_POS_Y as usize;
    let i = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
    if seq >= SeqMeta::count(metadata) {
        terminate!();
    }
    let m = SeqMeta::read(metadata, seq);
    let n = m.n;
    let done = step as usize * block;
    if !m.active || done >= n {
        terminate!();
    }
    let hi = n - done;
    let mut lo = 0usize;
    if hi > block {
        lo = hi - block;
    }
    if i >= lo {
        terminate!();
    }
    let offset = m.offset;
    let ld = m.row_stride;
    let voff = m.vec_offset;
    let mut acc = h[voff + i];
    for k in lo..hi {
        let x = attention[offset + k * ld + i];
        let mut w = x;
        if x < threshold {
            w = 0.0f32;
        }
        acc += w * h[voff + k];
    }
    h[voff + i] = acc;
}

/// Zeroes `out` with the geometry of `launch`.
pub(crate) fn launch_zero(client: &Client, launch: &Launch, out: &DeviceBuffer) {
    // SAFETY: `DeviceBuffer::arg` declares `out` with its true length, and the kernel
    // guards `ABSOLUTE_POS < out.len()` before writing.
    unsafe {
        zero_kernel::launch_unchecked(client, launch.cube_count(), launch.cube_dim(), out.arg());
    }
}

/// Launches one `reach_block` step.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_block(
    client: &Client,
    launch: &Launch,
    attention: &DeviceBuffer,
    metadata: &DeviceBuffer,
    h: &DeviceBuffer,
    step: u32,
    threshold: f32,
    block: usize,
    relay: bool,
) {
    // SAFETY: `DeviceBuffer::arg` declares each buffer with its true element count. The
    // kernel reads record `seq` with `SeqMeta::read` only after its guard
    // `seq < SeqMeta::count(metadata)`, and exits on an inactive record. An active record
    // carries the bounds listed in `kernels::seq_meta` (checked by `validate_input` in
    // `trace.rs`), so every entry the kernel reads, `Ā[lo + t][lo + j]` with
    // `j < t < len` and `lo + len <= n`, lies inside `attention`, every `h[vec_offset + i]`
    // with `i < n` inside `h` (sized to the batch's tokens by `Workspace::reserve`), and all
    // of these indices are below 2^32 (the kernel's `usize` is 32-bit). The shared `value`
    // (`block` f32) is indexed by `t < len <= block` only, whatever the cube dimension.
    unsafe {
        reach_block_kernel::launch_unchecked(
            client,
            launch.cube_count(),
            launch.cube_dim(),
            attention.arg(),
            metadata.arg(),
            h.arg(),
            step,
            threshold,
            block,
            relay,
        );
    }
}

/// Launches one `reach_update` step.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_update(
    client: &Client,
    launch: &Launch,
    attention: &DeviceBuffer,
    metadata: &DeviceBuffer,
    h: &DeviceBuffer,
    step: u32,
    threshold: f32,
    block: usize,
) {
    // SAFETY: as for `launch_block` (buffers, the record guard, the bounds of an active
    // record). After its guard `i < lo` the kernel reads `Ā[k][i]` with
    // `i < lo <= k < hi <= n` and `h[vec_offset + i]`, `h[vec_offset + k]`, all in bounds;
    // it uses no shared memory.
    unsafe {
        reach_update_kernel::launch_unchecked(
            client,
            launch.cube_count(),
            launch.cube_dim(),
            attention.arg(),
            metadata.arg(),
            h.arg(),
            step,
            threshold,
            block,
        );
    }
}
