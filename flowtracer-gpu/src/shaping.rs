//! Token weights and shaped advantages ([method §9](docs/method.md#s9)) on the device, mirroring
//! `flowtracer_core::shaping`.

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;

use cubecl::prelude::*;
use flowtracer_core::Error;
use flowtracer_core::shaping::{ApplyTo, Select, ShapingConfig, num_selected};
use flowtracer_core::validate::check_response;

use crate::buffer::DeviceBuffer;
use crate::kernels::shaping as k;
use crate::plan::{GpuOptions, Kernel, Launch, LaunchPlan, to_u32};

/// One sequence of a shaping batch: its tokens are elements `offset..offset + n` of the
/// score and weight buffers (e.g. [`crate::GpuTrace::range`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapingInput {
    /// Sequence length.
    pub n: usize,
    /// Element offset of token 0.
    pub offset: usize,
    /// The scored response tokens `R`.
    pub response: Range<usize>,
    /// Whether the sequence has scores; `false` (no answer span, or a failed trace) gives
    /// weight 1 everywhere, like the core's `scores = None`.
    pub scored: bool,
}

/// Per-token weights of a batch (ragged like the scores), and the launches made.
#[derive(Debug, Clone)]
pub struct TokenWeights {
    /// The weights, element `offset + t` for token `t` of each sequence.
    pub weights: DeviceBuffer,
    /// The launches made.
    pub plan: LaunchPlan,
}

/// The kernels index with `u32`: a sequence must end below element 2^32 of its buffer.
fn check_u32_end(input: &ShapingInput) -> Result<(), Error> {
    if u32::try_from(input.offset + input.n).is_err() {
        return Err(Error::InvalidConfig {
            field: "offset",
            reason: "the GPU kernels index with u32: every sequence must end below element \
                     2^32 of the score and weight buffers",
        });
    }
    Ok(())
}

fn metadata(
    inputs: &[ShapingInput],
    config: &ShapingConfig,
    len: usize,
) -> Result<(Vec<u32>, Vec<f32>), Error> {
    let high = (1.0 + config.mix * (config.gamma_flow - 1.0)) as f32;
    let mut meta = vec![0u32; inputs.len().max(1) * k::SHAPE_META];
    let mut inv_mean = vec![1.0f32; inputs.len().max(1)];
    for (b, input) in inputs.iter().enumerate() {
        if input.offset + input.n > len {
            return Err(Error::ShapeMismatch {
                what: "scores",
                expected: input.offset + input.n,
                actual: len,
            });
        }
        check_response(input.n, &input.response.clone().into())?;
        check_u32_end(input)?;
        let kk = num_selected(config.rho, input.response.len());
        let m = &mut meta[b * k::SHAPE_META..(b + 1) * k::SHAPE_META];
        m[k::N] = to_u32(input.n);
        m[k::OFFSET] = to_u32(input.offset);
        m[k::R_START] = to_u32(input.response.start);
        m[k::R_END] = to_u32(input.response.end);
        m[k::K] = to_u32(kk);
        m[k::SCORED] = u32::from(input.scored);
        if config.normalize_mean && input.scored {
            let len = input.response.len();
            let mean = ((len - kk) as f64 + kk as f64 * f64::from(high)) / len as f64;
            if mean > 0.0 {
                inv_mean[b] = (1.0 / mean) as f32;
            }
        }
    }
    Ok((meta, inv_mean))
}

fn grid(kernel: Kernel, inputs: &[ShapingInput], options: &GpuOptions) -> Launch {
    let n_max = inputs.iter().map(|i| i.n).max().unwrap_or(0);
    Launch::new(
        kernel,
        (
            to_u32(n_max.div_ceil(options.units as usize).max(1)),
            to_u32(inputs.len()),
            1,
        ),
        (options.units, 1, 1),
    )
}

/// Per-token weights `w = 1 + mix (gamma - 1)` on the top-ρ tokens of each response, 1
/// elsewhere (the GPU twin of `flowtracer_core::shaping::token_weights`, batched).
///
/// # Errors
///
/// The core's: [`Error::InvalidConfig`] for a bad `config`, [`Error::ShapeMismatch`] if a
/// sequence does not fit in `scores`, then [`Error::EmptySpan`] /
/// [`Error::SpanOutOfRange`] for a bad response span (first failing sequence). Also
/// [`Error::InvalidConfig`] (field `"offset"`) if a sequence ends at or past element 2^32
/// (the kernels index with `u32`).
///
/// # Complexity
///
/// One launch; O(sum N · |R|) work (each scored token ranks itself against its response).
pub fn token_weights(
    client: &Client,
    scores: &DeviceBuffer,
    inputs: &[ShapingInput],
    config: &ShapingConfig,
    options: &GpuOptions,
) -> Result<TokenWeights, Error> {
    config.validate()?;
    let options = options.fit(client);
    let (meta, inv_mean) = metadata(inputs, config, scores.len())?;
    let weights = DeviceBuffer::uninit(client, scores.len());
    let mut plan = LaunchPlan::default();
    if inputs.is_empty() {
        return Ok(TokenWeights { weights, plan });
    }
    let high = (1.0 + config.mix * (config.gamma_flow - 1.0)) as f32;
    let launch = plan.push(grid(Kernel::TokenWeights, inputs, &options));
    let meta = DeviceBuffer::from_u32(client, &meta);
    let inv_mean = DeviceBuffer::from_f32(client, &inv_mean);
    k::launch_weights(
        client,
        &launch,
        scores,
        &meta,
        &inv_mean,
        &weights,
        high,
        config.select == Select::Bottom,
    );
    Ok(TokenWeights { weights, plan })
}

/// Shaped advantages `w[t] * A_b` (or `A_b` for a negative advantage under
/// `ApplyTo::NonnegativeOnly`), one advantage per sequence (the GPU twin of
/// `flowtracer_core::shaping::shape_advantage`, batched).
///
/// # Errors
///
/// [`Error::ShapeMismatch`] if `advantages` does not have one value per sequence or a
/// sequence does not fit in `weights`; [`Error::InvalidConfig`] (field `"offset"`) if one
/// ends at or past element 2^32 (the kernels index with `u32`).
///
/// # Complexity
///
/// One element-wise launch.
pub fn shape_advantage(
    client: &Client,
    weights: &DeviceBuffer,
    inputs: &[ShapingInput],
    advantages: &[f32],
    config: &ShapingConfig,
    options: &GpuOptions,
) -> Result<DeviceBuffer, Error> {
    if advantages.len() != inputs.len() {
        return Err(Error::ShapeMismatch {
            what: "advantages",
            expected: inputs.len(),
            actual: advantages.len(),
        });
    }
    let options = options.fit(client);
    let mut meta = vec![0u32; inputs.len().max(1) * k::SHAPE_META];
    for (b, input) in inputs.iter().enumerate() {
        if input.offset + input.n > weights.len() {
            return Err(Error::ShapeMismatch {
                what: "weights",
                expected: input.offset + input.n,
                actual: weights.len(),
            });
        }
        check_u32_end(input)?;
        meta[b * k::SHAPE_META + k::N] = to_u32(input.n);
        meta[b * k::SHAPE_META + k::OFFSET] = to_u32(input.offset);
    }
    let out = DeviceBuffer::uninit(client, weights.len());
    if inputs.is_empty() {
        return Ok(out);
    }
    let launch = grid(Kernel::ShapeAdvantage, inputs, &options);
    let meta = DeviceBuffer::from_u32(client, &meta);
    let adv = DeviceBuffer::from_f32(client, advantages);
    k::launch_advantage(
        client,
        &launch,
        weights,
        &meta,
        &adv,
        &out,
        config.apply_to == ApplyTo::NonnegativeOnly,
    );
    Ok(out)
}
