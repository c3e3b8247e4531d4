//! The flow pass ([method §6](docs/method.md#s6)) as a blocked forward triangular sweep on `u = f / h`.
//!
//! With `u(k) = f(k) / h(k)` the recurrence needs no materialised `W'`:
//! `u(k) = [k in Q+] / (|Q+| h(k)) + sum_{i < k, i contributes} Ā[k][i] u(i)`, `f = h u`,
//! where `i` contributes when it is live (`h(i) > 0`) and, in absorbing mode, not an answer
//! token. Dead tokens get `u = f = 0`.
//!
//! - `flow_init`: one cube per sequence counts the sources `|Q+|` (a shared-memory tree
//!   reduction) and zeroes the accumulator `u`.
//! - `flow_block`: step `s` owns rows `lo = s * block .. hi = min(lo + block, n)`. One cube
//!   per sequence loads the block's lower triangle into shared memory (row by row,
//!   coalesced), then finalises the rows in ascending order, broadcasting each `u(t)`
//!   through shared memory; later rows of the block add `Ā[j][t] u(t)`. One `sync_cube` per
//!   row. The `u` buffer then holds the *contributing* value (`u` or 0) that later rows use.
//! - `flow_update`: one unit per later row `k >= hi` adds the whole block,
//!   `u[k] += sum_{i in lo..hi} Ā[k][i] u(i)` (a matrix-vector product).

use cubecl::prelude::*;

use super::seq_meta::SeqMeta;
use crate::buffer::DeviceBuffer;
use crate::plan::Launch;

#[cube(launch_unchecked)]
fn flow_init_kernel(
    metadata: &[u32],
    h: &[f32],
    u: &mut [f32],
    sources: &mut [u32],
    #[comptime] units: usize,
) {
    let seq = CUBE_POS_X as usize;
    if seq >= SeqMeta::count(metadata) {
        terminate!();
    }
    let m = SeqMeta::read(metadata, seq);
    if !m.active {
        terminate!();
    }
    let n = m.n;
    let voff = m.vec_offset;
    let q_start = m.q_start;
    let q_end = m.q_end;
    let a_start = m.a_start;
    let a_end = m.a_end;
    let j = UNIT_POS_X as usize;

    let mut i = j;
    while i < n {
        u[voff + i] = 0.0f32;
        i += units;
    }

    let mut count = 0u32;
    let mut q = q_start + j;
    while q < q_end {
        let is_answer = q >= a_start && q < a_end;
        if h[voff + q] > 0.0f32 && !is_answer {
            count += 1u32;
        }
        q += units;
    }
    let mut partial = Shared::<[u32]>::new_slice(units);
    partial[j] = count;
    sync_cube();
    let mut stride = (CUBE_DIM_X / 2) as usize;
    while stride > 0 {
        if j < stride {
            let sum = partial[j] + partial[j + stride];
            partial[j] = sum;
        }
        sync_cube();
        stride /= 2;
    }
    if j == 0 {
        sources[seq] = partial[0];
    }
}

#[cube(launch_unchecked)]
fn flow_block_kernel(
    attention: &[f32],
    metadata: &[u32],
    h: &[f32],
    sources: &[u32],
    u: &mut [f32],
    f: &mut [f32],
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
    let lo = step as usize * block;
    // Cube-uniform exits only: every unit of the cube takes the same branch.
    if !m.active || lo >= n {
        terminate!();
    }
    let offset = m.offset;
    let ld = m.row_stride;
    let voff = m.vec_offset;
    let q_start = m.q_start;
    let q_end = m.q_end;
    let a_start = m.a_start;
    let a_end = m.a_end;
    let hi = if lo + block < n { lo + block } else { n };
    let len = hi - lo;
    let num_sources = sources[seq];

    let j = UNIT_POS_X as usize;
    let mut tile = Shared::<[f32]>::new_slice(block * block);
    let mut value = Shared::<[f32]>::new_slice(block);
    // tile[t * block + c] = W[lo + c][lo + t] for c < t: row t of the block, read coalesced.
    for t in 0..len {
        if j < t {
            let x = attention[offset + (lo + t) * ld + lo + j];
            let mut w = x;
            if x < threshold {
                w = 0.0f32;
            }
            tile[t * block + j] = w;
        }
    }
    let mut acc = 0.0f32;
    if j < len {
        acc = u[voff + lo + j];
    }
    sync_cube();
    for t in 0..len {
        if j == t {
            let i = lo + t;
            let hv = h[voff + i];
            let is_answer = i >= a_start && i < a_end;
            let mut uv = 0.0f32;
            if hv > 0.0f32 {
                uv = acc;
                if i >= q_start && i < q_end && !is_answer && num_sources > 0 {
                    uv += 1.0f32 / (f32::cast_from(num_sources) * hv);
                }
            }
            let mut passed = uv;
            if is_answer && !relay {
                passed = 0.0f32;
            }
            u[voff + i] = passed;
            f[voff + i] = hv * uv;
            value[t] = passed;
        }
        sync_cube();
        if j > t && j < len {
            acc += tile[j * block + t] * value[t];
        }
    }
}

#[cube(launch_unchecked)]
fn flow_update_kernel(
    attention: &[f32],
    metadata: &[u32],
    u: &mut [f32],
    step: u32,
    threshold: f32,
    #[comptime] block: usize,
) {
    let seq = CUBE_POS_Y as usize;
    let r = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
    if seq >= SeqMeta::count(metadata) {
        terminate!();
    }
    let m = SeqMeta::read(metadata, seq);
    let n = m.n;
    let lo = step as usize * block;
    let hi = lo + block;
    let k = hi + r;
    if !m.active || k >= n {
        terminate!();
    }
    let offset = m.offset;
    let ld = m.row_stride;
    let voff = m.vec_offset;
    let row = offset + k * ld;
    let mut acc = u[voff + k];
    for i in lo..hi {
        let x = attention[row + i];
        let mut w = x;
        if x < threshold {
            w = 0.0f32;
        }
        acc += w * u[voff + i];
    }
    u[voff + k] = acc;
}

/// Launches `flow_init` (one cube of `units` units per sequence).
pub(crate) fn launch_init(
    client: &Client,
    launch: &Launch,
    metadata: &DeviceBuffer,
    h: &DeviceBuffer,
    u: &DeviceBuffer,
    sources: &DeviceBuffer,
) {
    let units = launch.cube_dim.0 as usize;
    // SAFETY: `DeviceBuffer::arg` declares each buffer with its true element count. The
    // kernel reads record `seq` with `SeqMeta::read` only after its guard
    // `seq < SeqMeta::count(metadata)` and exits on an inactive record; `sources` has one
    // slot per sequence (`Workspace::reserve`), so `sources[seq]` is in bounds. An active
    // record carries the bounds listed in `kernels::seq_meta`: the kernel writes
    // `u[vec_offset + i]` for `i < n` and reads `h[vec_offset + q]` for `q` in the question
    // span, inside `0..n`, and both buffers hold the batch's tokens. The shared `partial`
    // holds `units` values, and `units` is this launch's cube dimension (read from `launch`
    // above), so `partial[j]` with `j < CUBE_DIM_X` and `partial[j + stride]` with
    // `j < stride <= CUBE_DIM_X / 2` are in bounds.
    unsafe {
        flow_init_kernel::launch_unchecked(
            client,
            launch.cube_count(),
            launch.cube_dim(),
            metadata.arg(),
            h.arg(),
            u.arg(),
            sources.arg(),
            units,
        );
    }
}

/// Launches one `flow_block` step.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_block(
    client: &Client,
    launch: &Launch,
    attention: &DeviceBuffer,
    metadata: &DeviceBuffer,
    h: &DeviceBuffer,
    sources: &DeviceBuffer,
    u: &DeviceBuffer,
    f: &DeviceBuffer,
    step: u32,
    threshold: f32,
    block: usize,
    relay: bool,
) {
    // SAFETY: `DeviceBuffer::arg` declares each buffer with its true element count. The
    // kernel reads record `seq` with `SeqMeta::read` only after its guard
    // `seq < SeqMeta::count(metadata)` and exits on an inactive record; `sources` has one
    // slot per sequence. An active record carries the bounds listed in `kernels::seq_meta`,
    // so every entry read, `Ā[lo + t][lo + j]` with `j < t < len` and `lo + len <= n`, lies
    // inside `attention`, and `h`, `u`, `f` are indexed at `vec_offset + i` with `i < n`,
    // all below 2^32. The shared `tile` (`block * block` f32) is indexed at `t * block + j`
    // and `j * block + t` with `j, t < len <= block`, and `value` at `t < len`, whatever
    // the cube dimension (`GpuOptions::fit` keeps the tile within the device's shared
    // memory).
    unsafe {
        flow_block_kernel::launch_unchecked(
            client,
            launch.cube_count(),
            launch.cube_dim(),
            attention.arg(),
            metadata.arg(),
            h.arg(),
            sources.arg(),
            u.arg(),
            f.arg(),
            step,
            threshold,
            block,
            relay,
        );
    }
}

/// Launches one `flow_update` step.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_update(
    client: &Client,
    launch: &Launch,
    attention: &DeviceBuffer,
    metadata: &DeviceBuffer,
    u: &DeviceBuffer,
    step: u32,
    threshold: f32,
    block: usize,
) {
    // SAFETY: as for `launch_block` (buffers, the record guard, the bounds of an active
    // record). After its guard `k < n` the kernel reads `Ā[k][i]` with
    // `lo <= i < hi <= k < n` and `u[vec_offset + i]`, `u[vec_offset + k]`, all in bounds;
    // it uses no shared memory.
    unsafe {
        flow_update_kernel::launch_unchecked(
            client,
            launch.cube_count(),
            launch.cube_dim(),
            attention.arg(),
            metadata.arg(),
            u.arg(),
            step,
            threshold,
            block,
        );
    }
}
