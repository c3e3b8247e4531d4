//! FlowTracer on the device: the reach, flow and throughput passes, layer aggregation, `Ā`
//! from post-RoPE queries and keys ([`qk`], [method §15](docs/method.md#s15)), the data
//! checks and token shaping as portable [cubecl] kernels, so the attention never has to
//! leave the GPU (and, from queries and keys, is never formed per head).
//!
//! Runtimes are features; none is on by default. Only `wgpu` is built and tested, through
//! Mesa's lavapipe, a CPU Vulkan driver (correctness, not speed). `cuda` and `hip` are wired
//! to cubecl but do not build on our machines (their cubecl-llvm dependency downloads LLVM
//! at build time) and have never been tested. See `docs/gpu.md` for the exact failure, the
//! launch structure and a roofline estimate.
//!
//! # Numerical conventions
//!
//! Exactly those of `flowtracer_core`: `Ā[k][i]` is query `k` attending key `i <= k`
//! (entries above the diagonal are never read), the edge `i -> k` has weight
//! `W[i][k] = Ā[k][i]`, nothing is normalised. Everything on the device is `f32` (WGSL has
//! no f64), including the accumulation of `h` and `u`; against the core's f64 results the
//! outputs agree within [`TOLERANCE`] (`1e-5 + 1e-4 * |x|`) for sequences of up to a few
//! hundred tokens. A token is live when its f32 `h` is `> 0`; this differs from the
//! core only if a true `h` underflows f32 (below about `1e-38`).
//!
//! NaN policy: inputs are checked on the device before they are used ([method §13](docs/method.md#s13): the first
//! non-finite entry, then the first negative one, then the first row with too much mass),
//! and reported with the core's [`Error`](flowtracer_core::Error) variants and positions.
//!
//! # Layout
//!
//! Every entry point takes a batch: sequences of different lengths, ragged (back to back)
//! or inside a padded tensor, described by [`TraceInput`] / [`LayerInput`] /
//! [`ShapingInput`]; one launch sequence serves the whole batch. Per-token outputs are
//! ragged [`DeviceBuffer`]s. Every call's launches are listed in a [`LaunchPlan`].
//!
//! [cubecl]: https://github.com/tracel-ai/cubecl

extern crate alloc;

/// The cubecl this crate is built on (clients, handles and runtimes must come from this
/// exact version).
pub use cubecl;

pub mod aggregate;
mod buffer;
mod kernels;
pub mod plan;
pub mod qk;
pub mod shaping;
mod tolerance;
pub mod trace;

pub use aggregate::{Aggregated, LayerAccumulator, LayerInput, aggregate};
pub use buffer::DeviceBuffer;
pub use plan::{GpuOptions, Kernel, Launch, LaunchPlan};
pub use qk::{QkAccumulator, QkDeviceLayer, QkSequence, QkView, QkWorkspace, attention_from_qk};
pub use shaping::{ShapingInput, TokenWeights, shape_advantage, token_weights};
pub use tolerance::{TOLERANCE, Tolerance};
pub use trace::{
    GpuTrace, HostTrace, MAX_N, TraceInput, Workspace, trace, trace_batch,
    trace_batch_with_workspace, trace_plan,
};
