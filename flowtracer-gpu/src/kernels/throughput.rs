//! Throughput ([method §7](docs/method.md#s7)): `tau(k) = 2 f(k)` where `h(k) > 0`, else 0.
//!
//! Element-wise over the whole ragged batch: one unit per token.

use cubecl::prelude::*;

use crate::buffer::DeviceBuffer;
use crate::plan::Launch;

#[cube(launch_unchecked)]
fn throughput_kernel(h: &[f32], f: &[f32], tau: &mut [f32]) {
    if ABSOLUTE_POS >= tau.len() {
        terminate!();
    }
    let mut t = 0.0f32;
    if h[ABSOLUTE_POS] > 0.0f32 {
        t = 2.0f32 * f[ABSOLUTE_POS];
    }
    tau[ABSOLUTE_POS] = t;
}

/// Launches `throughput` over every token of the batch.
pub(crate) fn launch(
    client: &Client,
    launch: &Launch,
    h: &DeviceBuffer,
    f: &DeviceBuffer,
    tau: &DeviceBuffer,
) {
    // SAFETY: `DeviceBuffer::arg` declares the three buffers with their true lengths, which
    // are equal: they are the reach, flow and throughput buffers of one `Workspace`, each
    // sized to the batch's tokens by `Workspace::reserve`. The kernel guards
    // `ABSOLUTE_POS < tau.len()` before touching any of them.
    unsafe {
        throughput_kernel::launch_unchecked(
            client,
            launch.cube_count(),
            launch.cube_dim(),
            h.arg(),
            f.arg(),
            tau.arg(),
        );
    }
}
