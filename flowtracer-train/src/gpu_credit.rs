//! FlowTracer credit on the device (feature `wgpu`): the trainer's wgpu backend keeps the
//! queries and keys of the captured layers, flowtracer-gpu's Q/K kernels form `Ā` from them
//! on the same wgpu device ([method §15](docs/method.md#s15)), its reach and flow kernels
//! trace it and its `token_weights` kernel selects the tokens; only the per-token weights
//! (`n` floats per sequence) come back to the host.
//!
//! Used by [`Trainer::score`] when [`Trainer::device_scoring`] is set (the default), the
//! trainer runs on `Device::wgpu(DeviceKind::DefaultDevice)` (the CLI's `--wgpu`) and the
//! credit method scores by throughput (`flowtracer`, `bottom_flow`); every other case reads
//! the head-mean attention back and scores on the CPU, as before.
//!
//! # How Q and K reach flowtracer-gpu
//!
//! burn 0.22.1 can hand out a tensor's backend primitive (`Tensor::try_into_primitive`, a
//! `CubeTensor` holding a cubecl `Handle` when fusion is off), but that ties the trainer to
//! burn-cubecl's internal types and to burn's fusion setting, so this module does not use
//! it: it **reads back** `Q` and `K` of each captured layer (`[B, T, 2 d]` floats: `O(B · T ·
//! d)`, never a `T x T` matrix) and uploads them to flowtracer-gpu's client of the same
//! wgpu device (`WgpuDevice::new(WgpuDeviceKind::DefaultDevice)`, the device burn's
//! `Device::wgpu(DeviceKind::DefaultDevice)` names). Nothing `N x N` crosses the bus; the
//! head-mean attention is never formed per head.
//!
//! # What differs from the CPU path
//!
//! - The weights are flowtracer-gpu's f32 weights widened to f64: equal to the core's f64
//!   weights rounded to f32, except where the device's f32 throughput orders two tokens at
//!   the `k`-th selection boundary differently from the CPU's (ties within about `1e-6`
//!   relative; the test counts them).
//! - [`CreditedBatch::attention`] holds an empty vector per sequence (`Ā` stays on the
//!   device), [`CreditedBatch::scores`] is `None` (the throughput stays on the device, so
//!   `flow/fidelity` is not reported), and `answer_mass` / `conservation_residual` are `None`.

use burn::tensor::{Device, DeviceKind, Tensor};
use flowtracer_core::Config;
use flowtracer_core::baselines::CreditMethod;
use flowtracer_core::qk::QkConfig;
use flowtracer_core::shaping::shape_advantage;
use flowtracer_gpu::cubecl::client::Client;
use flowtracer_gpu::{
    DeviceBuffer, GpuOptions, QkAccumulator, QkDeviceLayer, QkSequence, QkView, ShapingInput,
    TraceInput, token_weights, trace_batch,
};

use crate::answer::locate_answer;
use crate::credit::{CreditConfig, CreditedBatch};
use crate::error::TrainError;
use crate::model::{Batch, ForwardOutput, Transformer};
use crate::sampling::Completion;
use crate::task::Problem;
use crate::trainer::Trainer;

/// Whether [`Trainer::score`] scores `trainer`'s rollouts on the device: device scoring on,
/// a throughput credit method, captured layers, and the default wgpu device.
pub fn applies(trainer: &Trainer) -> bool {
    trainer.device_scoring
        && matches!(
            trainer.config.credit.method,
            CreditMethod::FlowTracer | CreditMethod::BottomFlow
        )
        && !trainer.capture.is_empty()
        && trainer.device == Device::wgpu(DeviceKind::DefaultDevice)
}

/// The no-grad forward of [`Trainer::score`]: with device scoring, the logits and `Q | K`
/// (`[B, T, 2d]`) of every captured layer; otherwise the logits and the head-mean attention.
pub(crate) fn forward(
    trainer: &Trainer,
    policy: &Transformer,
    batch: &Batch,
) -> (ForwardOutput, Option<Vec<Tensor<3>>>) {
    if applies(trainer) {
        let (out, qk) = policy.forward_batch_qk(batch, &trainer.capture, &trainer.device);
        (out, Some(qk))
    } else {
        (
            policy.forward_batch(batch, &trainer.capture, &trainer.device),
            None,
        )
    }
}

/// flowtracer-gpu's client on the device burn's `Device::wgpu(DeviceKind::DefaultDevice)`
/// names.
fn client() -> Client {
    use flowtracer_gpu::cubecl::wgpu::{WgpuDevice, WgpuDeviceKind};
    flowtracer_gpu::cubecl::Device::Wgpu(WgpuDevice::new(WgpuDeviceKind::DefaultDevice)).client()
}

/// Where the batch is in the padded `[B, T]` layout of [`crate::rollout::full_batch`].
#[derive(Debug, Clone, Copy)]
pub struct PaddedLayout {
    /// Padded width `T`.
    pub width: usize,
    /// Column where completions start (prompts are left-padded to it).
    pub prompt_cols: usize,
    /// Padded completion length `C`.
    pub completion_len: usize,
    /// Attention heads of the model (as many key heads as query heads).
    pub heads: usize,
}

/// [`crate::credit::score_rollouts`] for a throughput method, on the device: `qk[i]` is
/// `Q | K` (`[B, T, 2d]`) of model layer `layers[i]`.
///
/// # Errors
///
/// [`TrainError::Core`] if flowtracer-gpu rejects the batch's shapes (a trainer bug);
/// per-sequence data errors (non-finite `Q`/`K`, overflowing logits, no source mass) make
/// that sequence unscored (weight 1), as on the CPU path.
///
/// # Panics
///
/// If the slices disagree on the batch size (a trainer bug).
#[allow(clippy::too_many_arguments)]
pub fn score_rollouts(
    config: &CreditConfig,
    problems: &[Problem],
    completions: &[Completion],
    group_advantages: &[f64],
    qk: &[Tensor<3>],
    layers: &[usize],
    layout: PaddedLayout,
) -> Result<CreditedBatch, TrainError> {
    let b = problems.len();
    assert_eq!(completions.len(), b, "one completion per problem");
    assert_eq!(group_advantages.len(), b, "one advantage per sequence");
    assert_eq!(qk.len(), layers.len(), "one Q|K tensor per captured layer");
    let c_len = layout.completion_len;
    let shaping = config.shaping();
    let mut out = CreditedBatch {
        advantages: vec![0.0; b * c_len],
        attention: vec![Vec::new(); b],
        weights: Vec::with_capacity(b),
        scores: vec![None; b],
        answers: Vec::with_capacity(b),
        no_answer: 0,
        unscored: 0,
        answer_mass: None,
        conservation_residual: None,
    };
    // Which sequences are traced: a non-empty completion with an answer span.
    let mut traced = Vec::new();
    for (r, (p, c)) in problems.iter().zip(completions).enumerate() {
        let p_len = p.prompt.len();
        let answer = locate_answer(&c.tokens)
            .range()
            .map(|a| a.start + p_len..a.end + p_len);
        if answer.is_none() {
            out.no_answer += 1;
        }
        if c.tokens.is_empty() {
            out.unscored += 1;
        } else if let Some(a) = &answer {
            traced.push((r, p_len, p_len + c.tokens.len(), a.clone()));
        }
        out.answers.push(answer);
        out.weights.push(vec![1.0; p_len + c.tokens.len()]);
    }
    if !traced.is_empty() {
        let weights = device_weights(config, qk, layers, layout, &traced)?;
        for ((r, _, n, _), w) in traced.iter().zip(weights) {
            match w {
                Some(w) => out.weights[*r] = w,
                None => out.unscored += 1,
            }
            debug_assert_eq!(out.weights[*r].len(), *n);
        }
    }
    for (r, c) in completions.iter().enumerate() {
        let p_len = problems[r].prompt.len();
        let len = c.tokens.len();
        let mut shaped = vec![0.0; len];
        let w = &out.weights[r][p_len..p_len + len];
        shape_advantage(group_advantages[r], w, &shaping, &mut shaped);
        out.advantages[r * c_len..r * c_len + len].copy_from_slice(&shaped);
    }
    Ok(out)
}

/// The weights of the traced sequences `(r, prompt length, n, answer)`, `None` for one the
/// device could not score: `Ā` from `Q | K` (`qk_scan`, `qk_stats`, `qk_mean` per layer),
/// the trace, the token weights, one read of `n` floats per sequence.
fn device_weights(
    config: &CreditConfig,
    qk: &[Tensor<3>],
    layers: &[usize],
    layout: PaddedLayout,
    traced: &[(usize, usize, usize, core::ops::Range<usize>)],
) -> Result<Vec<Option<Vec<f64>>>, TrainError> {
    let client = client();
    let options = GpuOptions::default();
    let d2 = qk[0].dims()[2];
    let (d, heads, t) = (d2 / 2, layout.heads, layout.width);
    let dh = d / heads;
    // Q | K of each layer, read back and uploaded: B · T · 2d floats, never T x T.
    let buffers: Vec<DeviceBuffer> = qk
        .iter()
        .map(|x| {
            let host = x
                .clone()
                .into_data()
                .try_into_vec::<f32>()
                .expect("f32 Q|K");
            DeviceBuffer::from_f32(&client, &host)
        })
        .collect();
    let sequences = traced
        .iter()
        .map(|&(r, p_len, n, _)| {
            let row0 = (r * t + layout.prompt_cols - p_len) * d2;
            let view = |offset| QkView {
                offset,
                head_stride: dh,
                row_stride: d2,
            };
            QkSequence {
                n,
                q: view(row0),
                k: view(row0 + d),
                lse: QkView::default(),
                key_valid: None,
            }
        })
        .collect();
    let mut acc = QkAccumulator::new(
        &client,
        (heads, heads, dh),
        &QkConfig::default(),
        sequences,
        &options,
    )?;
    for (buf, &index) in buffers.iter().zip(layers) {
        let layer = QkDeviceLayer {
            index,
            q: buf,
            k: buf,
            lse: None,
        };
        acc.add_layer(&client, &layer)?;
    }
    let a = acc.finish(&client)?;
    let inputs: Vec<TraceInput> = traced
        .iter()
        .enumerate()
        .map(|(j, (_, p_len, n, answer))| a.trace_input(j, *n, 0..*p_len, answer.clone()))
        .collect();
    let trace = trace_batch(
        &client,
        &a.attention,
        &inputs,
        &Config::default().trace,
        &options,
    )?;
    let ok: Vec<bool> = (0..traced.len())
        .map(|j| a.results[j].is_ok() && trace.result(j).is_ok())
        .collect();
    let shaping_inputs: Vec<ShapingInput> = traced
        .iter()
        .enumerate()
        .map(|(j, &(_, p_len, n, _))| ShapingInput {
            n,
            offset: trace.range(j).start,
            response: p_len..n,
            scored: ok[j],
        })
        .collect();
    let w = token_weights(
        &client,
        trace.throughput(),
        &shaping_inputs,
        &config.shaping(),
        &options,
    )?;
    let host = w.weights.read_f32(&client);
    Ok(traced
        .iter()
        .enumerate()
        .map(|(j, _)| ok[j].then(|| host[trace.range(j)].iter().map(|&x| f64::from(x)).collect()))
        .collect())
}
