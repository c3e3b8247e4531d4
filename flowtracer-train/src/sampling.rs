//! Autoregressive sampling with a key/value cache: temperature and top-k (burn has no
//! `generate`).
//!
//! Prompts are left-padded so that every row's next token goes to the same column; position
//! ids count real tokens only, so padding does not shift positions. Sampling happens on the
//! host from the last column's logits with the core's [`SplitMix64`], so a run is reproducible from
//! its seed.

use burn::tensor::{Device, Tensor, TensorData};
use flowtracer_core::baselines::SplitMix64;

use crate::model::{Batch, KvCache, NEG, Transformer, int_tensor};
use crate::tokenizer::{EOS, PAD};

/// How completions are drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// Softmax temperature; `0` means greedy (argmax).
    pub temperature: f64,
    /// Keep only the `top_k` most likely tokens (`0` keeps all).
    pub top_k: usize,
    /// Maximum number of completion tokens (EOS included).
    pub max_completion_length: usize,
}

/// One sampled completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The generated tokens, ending with EOS unless truncated.
    pub tokens: Vec<u32>,
    /// Whether generation stopped at `max_completion_length` without EOS.
    pub truncated: bool,
}

/// Left-pads prompts into a batch. Returns the batch (length = longest prompt).
pub fn left_pad(prompts: &[Vec<u32>]) -> Batch {
    let len = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut tokens = Vec::with_capacity(prompts.len() * len);
    let mut valid = Vec::with_capacity(prompts.len() * len);
    for p in prompts {
        let pad = len - p.len();
        tokens.extend(core::iter::repeat_n(PAD, pad));
        valid.extend(core::iter::repeat_n(false, pad));
        tokens.extend_from_slice(p);
        valid.extend(core::iter::repeat_n(true, p.len()));
    }
    Batch {
        tokens,
        valid,
        batch: prompts.len(),
        len,
    }
}

/// Draws one token from a row of logits.
pub fn sample_token(logits: &[f32], config: &SamplingConfig, rng: &mut SplitMix64) -> u32 {
    if config.temperature <= 0.0 {
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    if config.top_k > 0 && config.top_k < logits.len() {
        // Stable: ties keep the lower id first.
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        idx.truncate(config.top_k);
    }
    let max = idx
        .iter()
        .map(|&i| f64::from(logits[i]))
        .fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = idx
        .iter()
        .map(|&i| ((f64::from(logits[i]) - max) / config.temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.next_f64() * total;
    for (w, &i) in weights.iter().zip(&idx) {
        if u < *w {
            return i as u32;
        }
        u -= w;
    }
    *idx.last().expect("non-empty vocabulary") as u32
}

/// Samples one completion per prompt with the model on a non-autodiff device.
///
/// # Panics
///
/// Panics if the prompt plus `max_completion_length` exceeds the model's `max_len`.
pub fn generate(
    model: &Transformer,
    prompts: &[Vec<u32>],
    config: &SamplingConfig,
    rng: &mut SplitMix64,
    device: &Device,
) -> Vec<Completion> {
    let b = prompts.len();
    if b == 0 {
        return Vec::new();
    }
    let batch = left_pad(prompts);
    let p = batch.len;
    assert!(
        p + config.max_completion_length <= model.max_len(),
        "prompt + max_completion_length exceeds the model's max_len"
    );
    let mut valid = batch.valid.clone();
    let mut positions: Vec<i64> = prompts.iter().map(|x| x.len() as i64).collect();
    let mut cache = KvCache::default();
    let tokens = int_tensor(
        batch.tokens.iter().map(|&t| i64::from(t)).collect(),
        b,
        p,
        device,
    );
    let pos = int_tensor(batch.positions(), b, p, device);
    let out = model.forward(tokens, pos, batch.mask_bias(device), Some(&mut cache), &[]);
    let mut last = last_logits(out.logits);
    let vocab = last.len() / b;
    let mut done = vec![false; b];
    let mut result: Vec<Completion> = (0..b)
        .map(|_| Completion {
            tokens: Vec::new(),
            truncated: false,
        })
        .collect();
    for step in 0..config.max_completion_length {
        let mut next = vec![PAD; b];
        for r in 0..b {
            if done[r] {
                continue;
            }
            let t = sample_token(&last[r * vocab..(r + 1) * vocab], config, rng);
            result[r].tokens.push(t);
            next[r] = t;
            if t == EOS {
                done[r] = true;
            }
        }
        if done.iter().all(|&d| d) || step + 1 == config.max_completion_length {
            break;
        }
        // Feed the new column: real for every row (finished rows are ignored later).
        let tk = p + step + 1;
        let mut new_valid = Vec::with_capacity(b * tk);
        for r in 0..b {
            new_valid.extend_from_slice(&valid[r * (tk - 1)..(r + 1) * (tk - 1)]);
            new_valid.push(true);
        }
        valid = new_valid;
        let bias: Vec<f32> = valid.iter().map(|&v| if v { 0.0 } else { NEG }).collect();
        let bias = Tensor::<4>::from_data(TensorData::new(bias, [b, 1, 1, tk]), device);
        let tokens = int_tensor(next.iter().map(|&t| i64::from(t)).collect(), b, 1, device);
        let pos = int_tensor(positions.clone(), b, 1, device);
        for x in &mut positions {
            *x += 1;
        }
        let out = model.forward(tokens, pos, bias, Some(&mut cache), &[]);
        last = last_logits(out.logits);
    }
    for (r, c) in result.iter_mut().enumerate() {
        c.truncated = !done[r];
    }
    result
}

/// Logits of the last column, `[B * V]` on the host.
pub(crate) fn last_logits(logits: Tensor<3>) -> Vec<f32> {
    let [b, s, v] = logits.dims();
    logits
        .narrow(1, s - 1, 1)
        .reshape([b, v])
        .into_data()
        .try_into_vec::<f32>()
        .expect("f32 logits")
}
