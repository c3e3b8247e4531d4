//! One generation phase's output ([`Rollout`]) and the padded batches it is built on.

use burn::tensor::{Device, Tensor};

use crate::credit::CreditedBatch;
use crate::model::{Batch, int_tensor};
use crate::sampling::{Completion, left_pad};
use crate::task::Problem;
use crate::tokenizer::PAD;

/// Everything one generation phase produced; the update phase consumes it.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// The problem of each sequence (each repeated `num_generations` times, grouped).
    pub problems: Vec<Problem>,
    /// The sampled completions.
    pub completions: Vec<Completion>,
    /// Reward of each sequence.
    pub rewards: Vec<f64>,
    /// Group advantage of each sequence (from the core).
    pub group_advantages: Vec<f64>,
    /// The padded prompt + completion batch.
    pub batch: Batch,
    /// Column where completions start (all prompts are left-padded to it).
    pub prompt_cols: usize,
    /// Padded completion length `C`.
    pub completion_len: usize,
    /// Old log-probabilities `[B][C]`.
    pub old_logp: Vec<f64>,
    /// Reference log-probabilities `[B][C]` (when `beta > 0`).
    pub ref_logp: Option<Vec<f64>>,
    /// Loss mask `[B][C]`.
    pub mask: Vec<bool>,
    /// Per-token entropy `[B][C]` of the sampling distribution.
    pub entropy: Vec<f64>,
    /// Number of captured layers.
    pub captured_layers: usize,
    /// The credit stage's output: shaped advantages `[B][C]` (what the loss uses), the
    /// captured attention, weights, scores and answers per sequence, and its counters.
    pub credit: CreditedBatch,
    /// Seconds spent reading attention off the device and scoring.
    pub scoring_secs: f64,
}

impl Rollout {
    /// Sequence length of row `r` (prompt + completion).
    pub fn seq_len(&self, r: usize) -> usize {
        self.problems[r].prompt.len() + self.completions[r].tokens.len()
    }
}

/// Prompt (left-padded to a common width) + completion (right-padded) batch.
/// Returns the batch, the prompt width and the padded completion length (>= 1).
pub fn full_batch(prompts: &[Vec<u32>], completions: &[Completion]) -> (Batch, usize, usize) {
    let left = left_pad(prompts);
    let p = left.len;
    let c = completions
        .iter()
        .map(|x| x.tokens.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let t = p + c;
    let b = prompts.len();
    let mut tokens = Vec::with_capacity(b * t);
    let mut valid = Vec::with_capacity(b * t);
    for (r, completion) in completions.iter().enumerate().take(b) {
        tokens.extend_from_slice(&left.tokens[r * p..(r + 1) * p]);
        valid.extend_from_slice(&left.valid[r * p..(r + 1) * p]);
        let comp = &completion.tokens;
        tokens.extend_from_slice(comp);
        valid.extend(core::iter::repeat_n(true, comp.len()));
        tokens.extend(core::iter::repeat_n(PAD, c - comp.len()));
        valid.extend(core::iter::repeat_n(false, c - comp.len()));
    }
    (
        Batch {
            tokens,
            valid,
            batch: b,
            len: t,
        },
        p,
        c,
    )
}

/// The completion tokens of a padded batch, `[B][c]` from column `prompt_cols`: the targets
/// of the logits at columns `prompt_cols - 1 ..`.
pub(crate) fn completion_targets(
    batch: &Batch,
    prompt_cols: usize,
    c: usize,
    device: &Device,
) -> Tensor<2, burn::tensor::Int> {
    let mut ids = Vec::with_capacity(batch.batch * c);
    for r in 0..batch.batch {
        for j in 0..c {
            ids.push(i64::from(batch.tokens[r * batch.len + prompt_cols + j]));
        }
    }
    int_tensor(ids, batch.batch, c, device)
}

/// A 2-d f32 tensor as f64 values on the host, row-major.
pub(crate) fn to_f64(t: Tensor<2>) -> Vec<f64> {
    t.into_data()
        .try_into_vec::<f32>()
        .expect("f32 tensor")
        .into_iter()
        .map(f64::from)
        .collect()
}
