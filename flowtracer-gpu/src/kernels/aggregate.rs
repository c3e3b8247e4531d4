//! Layer/head aggregation ([method §2](docs/method.md#s2)): `Ā += sum over heads of P[h]` for one layer, then a
//! final scale by `1 / (layers * heads)`.
//!
//! - `aggregate_layer`: one unit per output entry `(k, i)` of every sequence (3-D grid:
//!   x and y over the `n * n` entries, folded within the device's cubes per dimension as
//!   `Launch::elementwise` does, z over sequences). It sums the heads, writes (first layer)
//!   or adds (later layers) into `Ā`, and writes 0 above the diagonal, so the output never
//!   depends on what the buffer held before. It also records, per sequence and head, the
//!   first non-finite and the first negative entry (`k * n + i`, `atomic min`), read from
//!   the bits as in `check`.
//! - `aggregate_scale`: element-wise `Ā *= scale`.

use cubecl::prelude::*;

use crate::buffer::DeviceBuffer;
use crate::plan::Launch;

/// `u32` fields per sequence in the aggregation metadata.
pub(crate) const AGG_META: usize = 5;
/// Field: sequence length `n`.
pub(crate) const N: usize = 0;
/// Field: element offset of head 0, row 0 in the layer buffer.
pub(crate) const IN_OFFSET: usize = 1;
/// Field: elements between rows of a dense input (unused when packed).
pub(crate) const IN_ROW_STRIDE: usize = 2;
/// Field: elements between heads.
pub(crate) const IN_HEAD_STRIDE: usize = 3;
/// Field: element offset of `Ā[0][0]` in the output (dense, row stride `n`).
pub(crate) const OUT_OFFSET: usize = 4;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn aggregate_layer_kernel(
    layer: &[f32],
    metadata: &[u32],
    out: &mut [f32],
    status: &[Atomic<u32>],
    layer_offset: u32,
    heads: u32,
    first: u32,
    #[comptime] packed: bool,
) {
    let seq = CUBE_POS_Z as usize;
    let cube = CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize;
    let p = cube * CUBE_DIM_X as usize + UNIT_POS_X as usize;
    if seq >= metadata.len() / AGG_META {
        terminate!();
    }
    let base = seq * AGG_META;
    let n = metadata[base + N] as usize;
    if p >= n * n {
        terminate!();
    }
    let k = p / n;
    let i = p % n;
    let dst = metadata[base + OUT_OFFSET] as usize + p;
    if i > k {
        out[dst] = 0.0f32;
        terminate!();
    }
    let mut at = layer_offset as usize + metadata[base + IN_OFFSET] as usize + i;
    if packed {
        at += k * (k + 1) / 2;
    } else {
        at += k * (metadata[base + IN_ROW_STRIDE] as usize);
    }
    let head_stride = metadata[base + IN_HEAD_STRIDE] as usize;
    let mut sum = 0.0f32;
    for h in 0..heads as usize {
        let x = layer[at + h * head_stride];
        let bits = u32::reinterpret(x);
        let magnitude = bits & 0x7fff_ffffu32;
        let slot = (seq * heads as usize + h) * 2;
        if magnitude >= 0x7f80_0000u32 {
            status[slot].fetch_min(p as u32);
        } else if bits != magnitude && magnitude != 0u32 {
            status[slot + 1].fetch_min(p as u32);
        }
        sum += x;
    }
    if first == 0 {
        sum += out[dst];
    }
    out[dst] = sum;
}

/// One unit per `(sequence, head)`: copies the first negative entry the layer kernel found
/// (if any) into `values`, so the host can report its value without holding the layer.
#[cube(launch_unchecked)]
fn aggregate_negative_kernel(
    layer: &[f32],
    metadata: &[u32],
    status: &[u32],
    values: &mut [f32],
    layer_offset: u32,
    heads: u32,
    #[comptime] packed: bool,
) {
    if ABSOLUTE_POS >= values.len() {
        terminate!();
    }
    let seq = ABSOLUTE_POS / heads as usize;
    let h = ABSOLUTE_POS % heads as usize;
    let p = status[ABSOLUTE_POS * 2 + 1];
    if p == u32::MAX {
        terminate!();
    }
    let base = seq * AGG_META;
    let n = metadata[base + N] as usize;
    let k = p as usize / n;
    let i = p as usize % n;
    let mut at = layer_offset as usize + metadata[base + IN_OFFSET] as usize + i;
    if packed {
        at += k * (k + 1) / 2;
    } else {
        at += k * (metadata[base + IN_ROW_STRIDE] as usize);
    }
    values[ABSOLUTE_POS] = layer[at + h * (metadata[base + IN_HEAD_STRIDE] as usize)];
}

#[cube(launch_unchecked)]
fn aggregate_scale_kernel(out: &mut [f32], scale: f32) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let v = out[ABSOLUTE_POS];
    out[ABSOLUTE_POS] = v * scale;
}

/// Launches `aggregate_layer` for one layer.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_layer(
    client: &Client,
    launch: &Launch,
    layer: &DeviceBuffer,
    metadata: &DeviceBuffer,
    out: &DeviceBuffer,
    status: &DeviceBuffer,
    layer_offset: u32,
    heads: u32,
    first: bool,
    packed: bool,
) {
    // SAFETY: `DeviceBuffer::arg` declares each buffer with its true element count. The
    // kernel guards the sequence index (z) against the records in `metadata` and the entry
    // index `p = k * n + i` (flat over x and y) against `n * n`. `LayerAccumulator::new` (in `aggregate.rs`)
    // checked `n <= MAX_N` (so `n * n` fits in `u32`) and laid the outputs out back to
    // back, so `out_offset + n * n <= out.len()` and the total fits in `u32`;
    // `LayerAccumulator::add_layer` checked, before this launch, that every sequence's last
    // head and row, `layer_offset + in_offset + (heads - 1) * head_stride` plus the matrix
    // extent, lies inside `layer` and below 2^32, so every `layer[at + h * head_stride]`
    // with `i <= k < n`, `h < heads` is in bounds; and it allocated `status` with `2 * heads`
    // words per sequence.
    unsafe {
        aggregate_layer_kernel::launch_unchecked(
            client,
            launch.cube_count(),
            launch.cube_dim(),
            layer.arg(),
            metadata.arg(),
            out.arg(),
            status.arg(),
            layer_offset,
            heads,
            u32::from(first),
            packed,
        );
    }
}

/// Launches `aggregate_negative` (one unit per sequence and head).
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_negative(
    client: &Client,
    launch: &Launch,
    layer: &DeviceBuffer,
    metadata: &DeviceBuffer,
    status: &DeviceBuffer,
    values: &DeviceBuffer,
    layer_offset: u32,
    heads: u32,
    packed: bool,
) {
    // SAFETY: `DeviceBuffer::arg` declares each buffer with its true length.
    // `LayerAccumulator::add_layer` allocates `values` with one word and `status` with two
    // per (sequence, head), and the kernel guards `ABSOLUTE_POS < values.len()`, so the
    // sequence index `ABSOLUTE_POS / heads` has a record. A recorded position is an entry
    // `(k, i)`, `i <= k < n`, that `aggregate_layer` read with the same `layer_offset`,
    // `heads` and layout, so it lies inside `layer` (see `launch_layer`).
    unsafe {
        aggregate_negative_kernel::launch_unchecked(
            client,
            launch.cube_count(),
            launch.cube_dim(),
            layer.arg(),
            metadata.arg(),
            status.arg(),
            values.arg(),
            layer_offset,
            heads,
            packed,
        );
    }
}

/// Launches `aggregate_scale` over all of `out`.
pub(crate) fn launch_scale(client: &Client, launch: &Launch, out: &DeviceBuffer, scale: f32) {
    // SAFETY: `DeviceBuffer::arg` declares `out` with its true length and the kernel
    // guards `ABSOLUTE_POS < out.len()` (`ABSOLUTE_POS` is flat over every grid dimension,
    // so a folded grid covers each element once).
    unsafe {
        aggregate_scale_kernel::launch_unchecked(
            client,
            launch.cube_count(),
            launch.cube_dim(),
            out.arg(),
            scale,
        );
    }
}
