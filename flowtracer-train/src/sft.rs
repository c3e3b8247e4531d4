//! Supervised warm-up on generated traces, and greedy evaluation on a held-out set.

use std::collections::HashSet;

use burn::grad_clipping::GradientClippingConfig;
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use flowtracer_core::baselines::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::model::{Batch, Transformer, int_tensor, token_logps};
use crate::sampling::{SamplingConfig, generate};
use crate::task::{Problem, TaskConfig, generate as gen_problem, score};
use crate::tokenizer::PAD;

/// Warm-up settings. `Default` is the demo's warm-up (the `--warmup-*` knobs' defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Problems per step.
    pub batch_size: usize,
    /// Adam learning rate.
    pub lr: f64,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            steps: 600,
            batch_size: 32,
            lr: 3e-3,
        }
    }
}

/// Draws a training problem whose prompt is not in the held-out set.
pub fn train_problem(
    task: &TaskConfig,
    held_out: &HashSet<Vec<u32>>,
    rng: &mut SplitMix64,
) -> Problem {
    loop {
        let p = gen_problem(task, rng);
        if !held_out.contains(&p.prompt) {
            return p;
        }
    }
}

/// Right-pads full sequences (prompt + response) into a batch.
pub fn right_pad(seqs: &[Vec<u32>]) -> Batch {
    let len = seqs.iter().map(Vec::len).max().unwrap_or(0);
    let mut tokens = Vec::with_capacity(seqs.len() * len);
    let mut valid = Vec::with_capacity(seqs.len() * len);
    for s in seqs {
        tokens.extend_from_slice(s);
        valid.extend(core::iter::repeat_n(true, s.len()));
        tokens.extend(core::iter::repeat_n(PAD, len - s.len()));
        valid.extend(core::iter::repeat_n(false, len - s.len()));
    }
    Batch {
        tokens,
        valid,
        batch: seqs.len(),
        len,
    }
}

/// The mean cross-entropy of the response tokens of `problems` (teacher forcing), on the
/// autodiff graph when `device` is an autodiff device.
pub fn sft_loss(model: &Transformer, problems: &[Problem], device: &Device) -> Tensor<1> {
    let seqs: Vec<Vec<u32>> = problems
        .iter()
        .map(|p| [p.prompt.as_slice(), p.response.as_slice()].concat())
        .collect();
    let batch = right_pad(&seqs);
    let (b, t) = (batch.batch, batch.len);
    let out = model.forward_batch(&batch, &[], device);
    // Predict column c+1 from column c.
    let logits = out.logits.narrow(1, 0, t - 1);
    let mut targets = vec![0i64; b * (t - 1)];
    let mut mask = vec![0f32; b * (t - 1)];
    for (r, p) in problems.iter().enumerate() {
        let seq = &seqs[r];
        for c in 0..t - 1 {
            if c + 1 < seq.len() {
                targets[r * (t - 1) + c] = i64::from(seq[c + 1]);
                if c + 1 >= p.prompt.len() {
                    mask[r * (t - 1) + c] = 1.0;
                }
            }
        }
    }
    let count: f32 = mask.iter().sum();
    let logp = token_logps(logits, int_tensor(targets, b, t - 1, device), 1.0);
    let mask = Tensor::<2>::from_data(TensorData::new(mask, [b, t - 1]), device);
    (logp * mask).sum().neg().div_scalar(count.max(1.0))
}

/// Builds the Adam optimizer every phase uses (gradient norm clipped at 1).
pub fn adam() -> ModuleOptimizer {
    AdamConfig::new()
        .with_grad_clipping(Some(GradientClippingConfig::Norm(1.0)))
        .init()
}

/// Runs the supervised warm-up; `on_step(step, loss)` is called after every step.
///
/// The model must live on an autodiff device.
pub fn warmup(
    mut model: Transformer,
    task: &TaskConfig,
    config: &SftConfig,
    held_out: &HashSet<Vec<u32>>,
    rng: &mut SplitMix64,
    device: &Device,
    mut on_step: impl FnMut(usize, f32),
) -> Transformer {
    let mut optim = adam();
    for step in 0..config.steps {
        let problems: Vec<Problem> = (0..config.batch_size)
            .map(|_| train_problem(task, held_out, rng))
            .collect();
        let loss = sft_loss(&model, &problems, device);
        let value = loss.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        // Linear decay to 10% keeps the end of the warm-up stable.
        let frac = step as f64 / config.steps.max(1) as f64;
        model = optim.step(config.lr * (1.0 - 0.9 * frac), model, grads);
        on_step(step, value);
    }
    model
}

/// Greedy-decoding accuracy on `problems` (exact match), in `[0, 1]`.
///
/// `model` must be on a non-autodiff device (use `model.valid()`).
pub fn evaluate(
    model: &Transformer,
    problems: &[Problem],
    max_completion_length: usize,
    batch_size: usize,
    device: &Device,
) -> f64 {
    if problems.is_empty() {
        return 0.0;
    }
    let cfg = SamplingConfig {
        temperature: 0.0,
        top_k: 0,
        max_completion_length,
    };
    let mut rng = SplitMix64::new(0);
    let mut correct = 0.0;
    for chunk in problems.chunks(batch_size.max(1)) {
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|p| p.prompt.clone()).collect();
        let outs = generate(model, &prompts, &cfg, &mut rng, device);
        for (p, c) in chunk.iter().zip(&outs) {
            correct += f64::from(score(p, &c.tokens));
        }
    }
    correct / problems.len() as f64
}

/// Policy accuracy on `problems`: the mean exact-match reward of `samples` completions per
/// problem drawn at `temperature` (what GRPO optimises), in `[0, 1]`.
///
/// `model` must be on a non-autodiff device. Deterministic for a given `seed`.
pub fn evaluate_sampled(
    model: &Transformer,
    problems: &[Problem],
    max_completion_length: usize,
    temperature: f64,
    samples: usize,
    seed: u64,
    device: &Device,
) -> f64 {
    if problems.is_empty() || samples == 0 {
        return 0.0;
    }
    let cfg = SamplingConfig {
        temperature,
        top_k: 0,
        max_completion_length,
    };
    let mut rng = SplitMix64::new(seed ^ 0xE7A1);
    let mut correct = 0.0;
    for chunk in problems.chunks(128) {
        let prompts: Vec<Vec<u32>> = chunk
            .iter()
            .flat_map(|p| core::iter::repeat_n(p.prompt.clone(), samples))
            .collect();
        let outs = generate(model, &prompts, &cfg, &mut rng, device);
        for (i, c) in outs.iter().enumerate() {
            correct += f64::from(score(&chunk[i / samples], &c.tokens));
        }
    }
    correct / (problems.len() * samples) as f64
}

/// The inference copy of a training model (no autodiff graph).
pub fn inference(model: &Transformer) -> Transformer {
    model.valid()
}
