//! The data check of [method §13](docs/method.md#s13) (checks 3 to 5) as one kernel.
//!
//! One unit per row `k` of every sequence scans the row's lower triangle (`Ā[k][0..=k]`)
//! and lowers three per-sequence atomics with `fetch_min`:
//!
//! - slot 0: flat index `k * n + i` of the first non-finite entry,
//! - slot 1: flat index of the first negative entry,
//! - slot 2: the first row whose mass exceeds `1 + tolerance`.
//!
//! The minimum over rows of "first in the row" is the first in row-major order, so the
//! result does not depend on which unit runs first. Finiteness and sign are read from the
//! bits (`exponent == 0xff`, sign bit on a non-zero magnitude), so no fast-math rewrite can
//! remove the test. The host turns the slots into the core's `Error` variants.

use cubecl::prelude::*;

use super::seq_meta::SeqMeta;
use crate::buffer::DeviceBuffer;
use crate::plan::Launch;

/// Slots per sequence in the status buffer.
pub(crate) const SLOTS: usize = 3;

#[cube(launch_unchecked)]
fn check_kernel(attention: &[f32], metadata: &[u32], status: &[Atomic<u32>], tolerance: f32) {
    let seq = CUBE_POS_Y as usize;
    let k = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
    if seq >= SeqMeta::count(metadata) {
        terminate!();
    }
    let m = SeqMeta::read(metadata, seq);
    let n = m.n;
    if !m.active || k >= n {
        terminate!();
    }
    let row = m.offset + k * m.row_stride;
    let none = n * n;
    let mut first_bad = none;
    let mut first_negative = none;
    let mut mass = 0.0f32;
    for i in 0..k + 1 {
        let x = attention[row + i];
        let bits = u32::reinterpret(x);
        let magnitude = bits & 0x7fff_ffffu32;
        if magnitude >= 0x7f80_0000u32 {
            if first_bad == none {
                first_bad = k * n + i;
            }
        } else if bits != magnitude && magnitude != 0u32 && first_negative == none {
            first_negative = k * n + i;
        }
        mass += x;
    }
    let slot = seq * SLOTS;
    if first_bad != none {
        status[slot].fetch_min(first_bad as u32);
    }
    if first_negative != none {
        status[slot + 1].fetch_min(first_negative as u32);
    }
    // Written so that a NaN mass also counts as too heavy, as in the core.
    let within = mass <= 1.0f32 + tolerance;
    if !within {
        status[slot + 2].fetch_min(k as u32);
    }
}

/// Launches `check`; `status` must hold `u32::MAX` in every slot beforehand.
pub(crate) fn launch(
    client: &Client,
    launch: &Launch,
    attention: &DeviceBuffer,
    metadata: &DeviceBuffer,
    status: &DeviceBuffer,
    tolerance: f32,
) {
    // SAFETY: `DeviceBuffer::arg` declares each buffer with its true element count. The
    // kernel reads record `seq` with `SeqMeta::read` only after its guard
    // `seq < SeqMeta::count(metadata)`, and exits on an inactive record or a row `k >= n`.
    // An active record carries the bounds listed in `kernels::seq_meta`: the row's entries
    // `Ā[k][i]`, `i <= k < n`, lie inside `attention` below 2^32, and `n <= MAX_N` keeps the
    // flat indices `k * n + i < n * n` inside `u32`. `status` holds `SLOTS` words per
    // sequence (allocated so by `trace_batch_with_workspace`), indexed at
    // `seq * SLOTS + 0..3`.
    unsafe {
        check_kernel::launch_unchecked(
            client,
            launch.cube_count(),
            launch.cube_dim(),
            attention.arg(),
            metadata.arg(),
            status.arg(),
            tolerance,
        );
    }
}
