//! The GRPO trainer (TRL-style knobs) with per-token credit from `flowtracer-core`.
//!
//! One step:
//!
//! 1. draw `prompts_per_step` problems, sample `num_generations` completions each
//!    ([`crate::sampling`], no autodiff);
//! 2. exact-match rewards, group advantages (`flowtracer_core::grpo::group_advantages`);
//! 3. one no-grad forward over prompt + completion computes the old log-probabilities, the
//!    per-token entropies and, in the same pass, the head-mean attention of the selected
//!    layers (only when the credit method reads attention);
//! 4. per sequence, the credit method scores tokens and the core turns the scores into
//!    weights and shaped advantages (`token_weights`, `shape_advantage`);
//! 5. `num_iterations` times: an autodiff forward gives `logp`, the core's `grpo_loss`
//!    gives the loss and `coef = d loss / d logp` per token, and the trainer backpropagates
//!    `sum(coef * logp)` (its gradient is the exact GRPO gradient), then steps Adam.

use core::ops::Range;
use std::collections::HashSet;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use clap::ValueEnum;
use flowtracer_core::aggregate::{LayerSelection, select_layers};
use flowtracer_core::grpo::{
    GrpoConfig as CoreGrpoConfig, LossType as CoreLossType, ScaleRewards as CoreScale, TokenBatch,
    group_advantages, grpo_loss,
};
use flowtracer_core::shaping::shape_advantage;
use serde::{Deserialize, Serialize};

use crate::answer::locate_answer;
use crate::credit::{Credit, CreditConfig, SequenceView, Unshaped, score_sequence};
use crate::model::{Batch, Transformer, int_tensor, token_entropy, token_logps};
use crate::rng::Rng;
use crate::sampling::{Completion, SamplingConfig, generate, left_pad};
use crate::sft::{adam, train_problem};
use crate::task::{Problem, TaskConfig, reward};
use crate::tokenizer::PAD;

/// TRL's `loss_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum LossType {
    /// Per-sequence token mean, then mean over sequences.
    Grpo,
    /// Token sum over the unmasked tokens of the batch.
    Bnpo,
    /// Token sum over `sequences * max_completion_length`.
    DrGrpo,
    /// Token sum over the global token count.
    Dapo,
}

/// TRL's `scale_rewards`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum ScaleRewards {
    /// Divide by the group standard deviation.
    Group,
    /// Divide by the batch standard deviation.
    Batch,
    /// No division (Dr. GRPO).
    None,
}

/// Every knob of a GRPO run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrpoConfig {
    /// Completions per prompt (G >= 2).
    pub num_generations: usize,
    /// Prompts per step (the batch is `prompts_per_step * num_generations` sequences).
    pub prompts_per_step: usize,
    /// KL coefficient (k3 estimator to the frozen reference); 0 skips the reference pass.
    pub beta: f64,
    /// Lower clip range.
    pub epsilon: f64,
    /// Upper clip range (DAPO's clip-higher when larger than `epsilon`).
    pub epsilon_high: f64,
    /// Loss aggregation.
    pub loss_type: LossType,
    /// Advantage normalisation.
    pub scale_rewards: ScaleRewards,
    /// Optimizer steps per generated batch (reuses the old log-probabilities).
    pub num_iterations: usize,
    /// Sampling temperature (log-probabilities use the same temperature, as in TRL).
    pub temperature: f64,
    /// Top-k sampling (0 keeps all tokens).
    pub top_k: usize,
    /// Maximum completion length in tokens.
    pub max_completion_length: usize,
    /// Exclude completions that hit `max_completion_length` from the loss.
    pub mask_truncated_completions: bool,
    /// Adam learning rate.
    pub lr: f64,
    /// The `eps` of the advantage normalisation (TRL: 1e-4).
    pub adv_eps: f64,
    /// Seed of everything random in the run.
    pub seed: u64,
    /// Credit assignment.
    pub credit: CreditConfig,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        Self {
            num_generations: 8,
            prompts_per_step: 16,
            beta: 0.0,
            epsilon: 0.2,
            epsilon_high: 0.2,
            loss_type: LossType::Grpo,
            scale_rewards: ScaleRewards::Group,
            num_iterations: 1,
            temperature: 1.0,
            top_k: 0,
            max_completion_length: 40,
            mask_truncated_completions: false,
            lr: 3e-4,
            adv_eps: 1e-4,
            seed: 0,
            credit: CreditConfig::default(),
        }
    }
}

impl GrpoConfig {
    /// The core's loss config.
    pub fn core(&self) -> CoreGrpoConfig<f64> {
        let loss = match self.loss_type {
            LossType::Grpo => CoreLossType::Grpo,
            LossType::Bnpo => CoreLossType::Bnpo,
            LossType::DrGrpo => CoreLossType::DrGrpo,
            LossType::Dapo => CoreLossType::Dapo,
        };
        CoreGrpoConfig::default()
            .with_beta(self.beta)
            .with_epsilon(self.epsilon)
            .with_epsilon_high(self.epsilon_high)
            .with_loss_type(loss)
            .with_max_completion_length(self.max_completion_length)
    }

    fn core_scale(&self) -> CoreScale {
        match self.scale_rewards {
            ScaleRewards::Group => CoreScale::Group,
            ScaleRewards::Batch => CoreScale::Batch,
            ScaleRewards::None => CoreScale::None,
        }
    }

    /// Checks the knobs.
    ///
    /// # Errors
    ///
    /// A message naming the first bad knob.
    pub fn validate(&self) -> Result<(), String> {
        if self.num_generations < 2 {
            return Err("num_generations must be >= 2".into());
        }
        if self.prompts_per_step == 0 || self.num_iterations == 0 {
            return Err("prompts_per_step and num_iterations must be >= 1".into());
        }
        if self.max_completion_length == 0 {
            return Err("max_completion_length must be >= 1".into());
        }
        if self.temperature.is_nan() || self.temperature <= 0.0 {
            return Err("temperature must be > 0".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err("lr must be a positive number".into());
        }
        self.credit.shaping().validate().map_err(|e| e.to_string())
    }
}

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
    /// Shaped per-token advantages `[B][C]`: what the loss uses.
    pub advantages: Vec<f64>,
    /// Per-token entropy `[B][C]` of the sampling distribution.
    pub entropy: Vec<f64>,
    /// Per sequence: head-mean attention of the captured layers `[L_sel][n][n]` (empty when
    /// the credit method reads no attention).
    pub attention: Vec<Vec<f64>>,
    /// Number of captured layers.
    pub captured_layers: usize,
    /// Per sequence: the credit weights over its positions (length `n`).
    pub weights: Vec<Vec<f64>>,
    /// Per sequence: the raw credit score (length `n`) when the method produced one.
    pub scores: Vec<Option<Vec<f64>>>,
    /// Per sequence: answer span in sequence positions.
    pub answers: Vec<Option<Range<usize>>>,
    /// Sequences without an answer span.
    pub no_answer: usize,
    /// Sequences the core could not score (weight 1).
    pub unscored: usize,
    /// Mean `sum f(a)` over FlowTracer-scored sequences.
    pub answer_mass: Option<f64>,
    /// Max of the core's `conservation_residual` (`|sum_k W'[i][k] - 1|` over live tokens
    /// outside the answer) over FlowTracer-scored sequences.
    pub conservation_residual: Option<f64>,
    /// Seconds spent reading attention off the device and scoring.
    pub scoring_secs: f64,
}

impl Rollout {
    /// Sequence length of row `r` (prompt + completion).
    pub fn seq_len(&self, r: usize) -> usize {
        self.problems[r].prompt.len() + self.completions[r].tokens.len()
    }
}

/// Statistics of one update.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct UpdateStats {
    /// The GRPO loss (core's value).
    pub loss: f64,
    /// Fraction of tokens clipped below.
    pub clip_ratio_low: f64,
    /// Fraction of tokens clipped above.
    pub clip_ratio_high: f64,
    /// Fraction of tokens clipped either way.
    pub clip_ratio_region: f64,
    /// Mean k3 KL to the reference.
    pub kl: f64,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StepMetrics {
    /// 1-based step.
    pub step: usize,
    /// Mean reward of the sampled completions.
    pub reward_mean: f64,
    /// Standard deviation of the rewards.
    pub reward_std: f64,
    /// Fraction of sampled completions that are correct.
    pub accuracy: f64,
    /// GRPO loss (mean over iterations).
    pub loss: f64,
    /// Mean k3 KL to the reference.
    pub kl: f64,
    /// Low clip ratio.
    pub clip_ratio_low: f64,
    /// High clip ratio.
    pub clip_ratio_high: f64,
    /// Region clip ratio.
    pub clip_ratio_region: f64,
    /// Mean predictive entropy over unmasked tokens.
    pub entropy: f64,
    /// Mean completion length.
    pub completion_length: f64,
    /// Fraction of completions truncated at `max_completion_length`.
    pub truncated_frac: f64,
    /// Fraction of groups whose rewards all agree (zero advantage).
    pub zero_std_frac: f64,
    /// `flow/weight_mean`: mean credit weight over response tokens.
    #[serde(rename = "flow/weight_mean")]
    pub weight_mean: f64,
    /// `flow/weight_max`.
    #[serde(rename = "flow/weight_max")]
    pub weight_max: f64,
    /// `flow/answer_mass`: mean flow absorbed by the answer (1 by conservation).
    #[serde(rename = "flow/answer_mass")]
    pub answer_mass: Option<f64>,
    /// `flow/no_answer_frac`: completions without an answer span.
    #[serde(rename = "flow/no_answer_frac")]
    pub no_answer_frac: f64,
    /// `flow/unscored_frac`: completions the core could not score (e.g. no source mass).
    #[serde(rename = "flow/unscored_frac")]
    pub unscored_frac: f64,
    /// `flow/conservation_residual`: max over scored sequences and their live tokens outside
    /// the answer of `|sum_k W'[i][k] - 1|` (flow conservation; 0 up to rounding).
    #[serde(rename = "flow/conservation_residual")]
    pub conservation_residual: Option<f64>,
    /// `flow/scoring_time_frac`: attention readback + scoring time over step time.
    #[serde(rename = "flow/scoring_time_frac")]
    pub scoring_time_frac: f64,
    /// `flow/fidelity`: precision of the selected tokens against the decisive tokens, over
    /// completions equal to the canonical solution.
    #[serde(rename = "flow/fidelity")]
    pub fidelity: Option<f64>,
    /// Held-out greedy accuracy, when evaluated at this step.
    #[serde(rename = "eval/accuracy")]
    pub eval_accuracy: Option<f64>,
    /// Held-out sampled policy accuracy (4 samples per problem at the training temperature),
    /// when evaluated at this step.
    #[serde(rename = "eval/sampled_accuracy")]
    pub eval_sampled_accuracy: Option<f64>,
    /// Wall time of the step in seconds.
    pub step_secs: f64,
}

/// Errors that stop a run.
#[derive(Debug)]
pub enum TrainError {
    /// The loss or a gradient coefficient was not finite.
    NonFiniteLoss {
        /// The 1-based step.
        step: usize,
        /// What was not finite.
        detail: String,
    },
    /// The core rejected the batch (a bug in the trainer's shapes).
    Core(flowtracer_core::Error),
    /// A configuration error.
    Config(String),
    /// Checkpoint I/O.
    Io(String),
}

impl core::fmt::Display for TrainError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TrainError::NonFiniteLoss { step, detail } => write!(
                f,
                "non-finite loss at step {step} ({detail}): stopping; lower the learning rate or resume from an earlier checkpoint"
            ),
            TrainError::Core(e) => write!(f, "flowtracer-core rejected the batch: {e}"),
            TrainError::Config(m) => write!(f, "bad configuration: {m}"),
            TrainError::Io(m) => write!(f, "checkpoint I/O: {m}"),
        }
    }
}

impl core::error::Error for TrainError {}

impl From<flowtracer_core::Error> for TrainError {
    fn from(e: flowtracer_core::Error) -> Self {
        TrainError::Core(e)
    }
}

/// The GRPO trainer.
pub struct Trainer {
    /// Run configuration.
    pub config: GrpoConfig,
    /// Task configuration.
    pub task: TaskConfig,
    /// The policy (on the autodiff device).
    pub model: Transformer,
    /// The frozen reference (inference device), present when `beta > 0`.
    pub reference: Option<Transformer>,
    /// The optimizer.
    pub optim: ModuleOptimizer,
    /// The run's random state.
    pub rng: Rng,
    /// Completed steps.
    pub step: usize,
    /// Prompts the trainer never trains on (the held-out set).
    pub held_out: HashSet<Vec<u32>>,
    /// Layers whose attention is captured (spec §2 middle band).
    pub capture: Vec<usize>,
    /// Inference device.
    pub device: Device,
    /// Autodiff device.
    pub ad_device: Device,
}

impl core::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Trainer")
            .field("config", &self.config)
            .field("task", &self.task)
            .field("step", &self.step)
            .field("rng", &self.rng)
            .field("capture", &self.capture)
            .finish_non_exhaustive()
    }
}

impl Trainer {
    /// A trainer starting from `model` (on `device.autodiff()`); the reference is a frozen
    /// copy of `model` when `beta > 0`.
    ///
    /// # Errors
    ///
    /// [`TrainError::Config`] on bad knobs.
    pub fn new(
        config: GrpoConfig,
        task: TaskConfig,
        model: Transformer,
        held_out: HashSet<Vec<u32>>,
        device: Device,
    ) -> Result<Self, TrainError> {
        config.validate().map_err(TrainError::Config)?;
        task.validate().map_err(TrainError::Config)?;
        let capture = if config.credit.method.needs_attention() {
            select_layers(model.num_layers(), &LayerSelection::Middle)?
        } else {
            Vec::new()
        };
        let reference = (config.beta > 0.0).then(|| model.valid());
        let rng = Rng::new(config.seed ^ 0x6772_706F);
        Ok(Self {
            config,
            task,
            model,
            reference,
            optim: adam(),
            rng,
            step: 0,
            held_out,
            capture,
            ad_device: device.clone().autodiff(),
            device,
        })
    }

    /// Generation phase: sample, reward, old log-probs + attention, credit, shaped advantages.
    ///
    /// # Errors
    ///
    /// [`TrainError::Core`] if the core rejects the rewards (a trainer bug).
    pub fn rollout(&mut self) -> Result<Rollout, TrainError> {
        let cfg = &self.config;
        let g = cfg.num_generations;
        let mut problems = Vec::with_capacity(cfg.prompts_per_step * g);
        for _ in 0..cfg.prompts_per_step {
            let p = train_problem(&self.task, &self.held_out, &mut self.rng);
            problems.extend(core::iter::repeat_n(p, g));
        }
        let policy = self.model.valid();
        let prompts: Vec<Vec<u32>> = problems.iter().map(|p| p.prompt.clone()).collect();
        let sampling = SamplingConfig {
            temperature: cfg.temperature,
            top_k: cfg.top_k,
            max_completion_length: cfg.max_completion_length,
        };
        let completions = generate(&policy, &prompts, &sampling, &mut self.rng, &self.device);
        let rewards: Vec<f64> = problems
            .iter()
            .zip(&completions)
            .map(|(p, c)| f64::from(reward(p.answer, &c.tokens)))
            .collect();
        let group_adv = group_advantages(&rewards, g, cfg.core_scale(), cfg.adv_eps)?;
        let random_seed = self.rng.next_u64();
        self.score(
            policy,
            problems,
            completions,
            rewards,
            group_adv,
            random_seed,
        )
    }

    /// The no-grad forward and the credit stage for given completions (public so tests can
    /// build a rollout from fixed completions).
    ///
    /// # Errors
    ///
    /// [`TrainError::Core`] on shape errors.
    pub fn score(
        &self,
        policy: Transformer,
        problems: Vec<Problem>,
        completions: Vec<Completion>,
        rewards: Vec<f64>,
        group_adv: Vec<f64>,
        random_seed: u64,
    ) -> Result<Rollout, TrainError> {
        let cfg = &self.config;
        let b = problems.len();
        let prompts: Vec<Vec<u32>> = problems.iter().map(|p| p.prompt.clone()).collect();
        let (batch, prompt_cols, c_len) = full_batch(&prompts, &completions);
        let t = batch.len;
        let out = policy.forward_batch(&batch, &self.capture, &self.device);
        let targets = completion_targets(&batch, prompt_cols, c_len, &self.device);
        let logits = out.logits.narrow(1, prompt_cols - 1, c_len);
        let old_logp = to_f64(token_logps(
            logits.clone(),
            targets.clone(),
            cfg.temperature,
        ));
        let entropy = to_f64(token_entropy(logits, cfg.temperature));
        let ref_logp = self.reference.as_ref().map(|r| {
            let out = r.forward_batch(&batch, &[], &self.device);
            let logits = out.logits.narrow(1, prompt_cols - 1, c_len);
            to_f64(token_logps(logits, targets, cfg.temperature))
        });
        let mut mask = vec![false; b * c_len];
        for (r, c) in completions.iter().enumerate() {
            if cfg.mask_truncated_completions && c.truncated {
                continue;
            }
            for j in 0..c.tokens.len() {
                mask[r * c_len + j] = true;
            }
        }
        // Credit: read attention off the device (already head-averaged) and score.
        let scoring_start = Instant::now();
        let l_sel = self.capture.len();
        let attn_host: Vec<f32> = if l_sel > 0 {
            let stacked = Tensor::stack::<4>(out.attention, 1); // [B, L, T, T]
            stacked
                .into_data()
                .try_into_vec::<f32>()
                .expect("f32 attention")
        } else {
            Vec::new()
        };
        let mut attention = Vec::with_capacity(b);
        let mut weights = Vec::with_capacity(b);
        let mut scores = Vec::with_capacity(b);
        let mut answers = Vec::with_capacity(b);
        let mut advantages = vec![0.0; b * c_len];
        let (mut no_answer, mut unscored) = (0, 0);
        let (mut mass_sum, mut mass_n, mut residual) = (0.0, 0usize, 0.0f64);
        for r in 0..b {
            let p_len = problems[r].prompt.len();
            let comp = &completions[r].tokens;
            let n = p_len + comp.len();
            let offset = prompt_cols - p_len;
            let mut layer_means = Vec::with_capacity(l_sel * n * n);
            for l in 0..l_sel {
                for k in 0..n {
                    let row = ((r * l_sel + l) * t + offset + k) * t + offset;
                    layer_means.extend(attn_host[row..row + n].iter().map(|&x| f64::from(x)));
                }
            }
            let answer = locate_answer(comp)
                .range()
                .map(|a| a.start + p_len..a.end + p_len);
            let mut ent = vec![0.0; n];
            for j in 0..comp.len() {
                ent[p_len + j] = entropy[r * c_len + j];
            }
            let view = SequenceView {
                layer_means: &layer_means,
                num_layers: l_sel,
                n,
                question: 0..p_len,
                response: p_len..n,
                answer: answer.clone(),
                entropy: &ent,
                seed: random_seed.wrapping_add(r as u64),
            };
            let scored = if comp.is_empty() {
                crate::credit::Scored {
                    weights: vec![1.0; n],
                    scores: None,
                    status: Err(Unshaped::Core("empty completion".into())),
                    flow: None,
                }
            } else {
                score_sequence(&cfg.credit, &view)
            };
            if answer.is_none() {
                no_answer += 1;
            }
            if matches!(scored.status, Err(Unshaped::Core(_))) {
                unscored += 1;
            }
            if let Some(stats) = scored.flow {
                mass_sum += stats.answer_mass;
                mass_n += 1;
                residual = residual.max(stats.residual);
            }
            let mut shaped = vec![0.0; comp.len()];
            shape_advantage(
                group_adv[r],
                &scored.weights[p_len..n],
                &cfg.credit.shaping(),
                &mut shaped,
            );
            advantages[r * c_len..r * c_len + comp.len()].copy_from_slice(&shaped);
            attention.push(layer_means);
            weights.push(scored.weights);
            scores.push(scored.scores);
            answers.push(answer);
        }
        let scoring_secs = scoring_start.elapsed().as_secs_f64();
        Ok(Rollout {
            problems,
            completions,
            rewards,
            group_advantages: group_adv,
            batch,
            prompt_cols,
            completion_len: c_len,
            old_logp,
            ref_logp,
            mask,
            advantages,
            entropy,
            attention,
            captured_layers: l_sel,
            weights,
            scores,
            answers,
            no_answer,
            unscored,
            answer_mass: (mass_n > 0).then(|| mass_sum / mass_n as f64),
            conservation_residual: (mass_n > 0).then_some(residual),
            scoring_secs,
        })
    }

    /// The loss of the current policy on a rollout, without updating (for tests).
    ///
    /// # Errors
    ///
    /// [`TrainError::Core`] on shape errors.
    pub fn loss_on(&self, rollout: &Rollout) -> Result<f64, TrainError> {
        let policy = self.model.valid();
        let out = policy.forward_batch(&rollout.batch, &[], &self.device);
        let targets = completion_targets(
            &rollout.batch,
            rollout.prompt_cols,
            rollout.completion_len,
            &self.device,
        );
        let logits = out
            .logits
            .narrow(1, rollout.prompt_cols - 1, rollout.completion_len);
        let logp = to_f64(token_logps(logits, targets, self.config.temperature));
        Ok(self.core_loss(rollout, &logp)?.loss)
    }

    fn core_loss(
        &self,
        rollout: &Rollout,
        logp: &[f64],
    ) -> Result<flowtracer_core::grpo::GrpoOutput<f64>, TrainError> {
        let batch = TokenBatch {
            num_sequences: rollout.problems.len(),
            seq_len: rollout.completion_len,
            logp,
            old_logp: &rollout.old_logp,
            ref_logp: rollout.ref_logp.as_deref(),
            advantages: &rollout.advantages,
            mask: &rollout.mask,
        };
        Ok(grpo_loss(&batch, &self.config.core())?)
    }

    /// One optimizer step on a rollout: autodiff forward, core loss and coefficients,
    /// `sum(coef * logp)` backward, Adam step.
    ///
    /// # Errors
    ///
    /// [`TrainError::NonFiniteLoss`] naming the step (the model is left unchanged).
    pub fn update(&mut self, rollout: &Rollout) -> Result<UpdateStats, TrainError> {
        let (b, c) = (rollout.problems.len(), rollout.completion_len);
        let out = self
            .model
            .forward_batch(&rollout.batch, &[], &self.ad_device);
        let targets = completion_targets(&rollout.batch, rollout.prompt_cols, c, &self.ad_device);
        let logits = out.logits.narrow(1, rollout.prompt_cols - 1, c);
        let logp = token_logps(logits, targets, self.config.temperature);
        let logp_host = to_f64(logp.clone());
        let step = self.step + 1;
        let core = match self.core_loss(rollout, &logp_host) {
            Ok(c) => c,
            Err(TrainError::Core(
                e @ (flowtracer_core::Error::Overflow { .. }
                | flowtracer_core::Error::NonFinite { .. }),
            )) => {
                return Err(TrainError::NonFiniteLoss {
                    step,
                    detail: e.to_string(),
                });
            }
            Err(e) => return Err(e),
        };
        if !core.loss.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                step,
                detail: format!("loss = {}", core.loss),
            });
        }
        if let Some(bad) = core.coef.iter().find(|x| !x.is_finite()) {
            return Err(TrainError::NonFiniteLoss {
                step,
                detail: format!("gradient coefficient = {bad}"),
            });
        }
        let coef: Vec<f32> = core.coef.iter().map(|&x| x as f32).collect();
        let coef = Tensor::<2>::from_data(TensorData::new(coef, [b, c]), &self.ad_device);
        let surrogate = (logp * coef).sum();
        let grads = GradientsParams::from_grads(surrogate.backward(), &self.model);
        let stand_in = placeholder(&self.model);
        let model = core::mem::replace(&mut self.model, stand_in);
        self.model = self.optim.step(self.config.lr, model, grads);
        Ok(UpdateStats {
            loss: core.loss,
            clip_ratio_low: core.stats.clip_ratio_low,
            clip_ratio_high: core.stats.clip_ratio_high,
            clip_ratio_region: core.stats.clip_ratio_region,
            kl: core.stats.kl_mean,
        })
    }

    /// One full GRPO step (rollout + `num_iterations` updates) and its metrics.
    ///
    /// # Errors
    ///
    /// See [`Trainer::update`].
    pub fn train_step(&mut self) -> Result<StepMetrics, TrainError> {
        let start = Instant::now();
        let rollout = self.rollout()?;
        let mut stats = UpdateStats::default();
        for _ in 0..self.config.num_iterations {
            let s = self.update(&rollout)?;
            stats.loss += s.loss;
            stats.kl += s.kl;
            stats.clip_ratio_low += s.clip_ratio_low;
            stats.clip_ratio_high += s.clip_ratio_high;
            stats.clip_ratio_region += s.clip_ratio_region;
        }
        let it = self.config.num_iterations as f64;
        self.step += 1;
        let step_secs = start.elapsed().as_secs_f64();
        Ok(metrics(
            self.step,
            &rollout,
            &stats,
            it,
            &self.config,
            step_secs,
        ))
    }
}

/// A cheap stand-in used while the optimizer consumes the model.
fn placeholder(model: &Transformer) -> Transformer {
    model.clone()
}

fn metrics(
    step: usize,
    r: &Rollout,
    stats: &UpdateStats,
    iterations: f64,
    config: &GrpoConfig,
    step_secs: f64,
) -> StepMetrics {
    let b = r.problems.len() as f64;
    let mean = r.rewards.iter().sum::<f64>() / b;
    let var = r
        .rewards
        .iter()
        .map(|x| (x - mean) * (x - mean))
        .sum::<f64>()
        / (b - 1.0).max(1.0);
    let g = config.num_generations;
    let zero_std = r
        .rewards
        .chunks(g)
        .filter(|grp| grp.iter().all(|&x| x == grp[0]))
        .count() as f64
        / (r.rewards.len() / g) as f64;
    let (mut ent_sum, mut ent_n) = (0.0, 0usize);
    for (e, &m) in r.entropy.iter().zip(&r.mask) {
        if m {
            ent_sum += e;
            ent_n += 1;
        }
    }
    let (mut w_sum, mut w_n, mut w_max) = (0.0, 0usize, 0.0f64);
    let (mut fid_sum, mut fid_n) = (0.0, 0usize);
    let shaping = config.credit.shaping();
    for (i, w) in r.weights.iter().enumerate() {
        let p_len = r.problems[i].prompt.len();
        for &x in &w[p_len..] {
            w_sum += x;
            w_n += 1;
            w_max = w_max.max(x);
        }
        if r.completions[i].tokens == r.problems[i].response
            && let Some(s) = &r.scores[i]
        {
            let sel = flowtracer_core::shaping::select_tokens(
                s,
                p_len..w.len(),
                shaping.rho,
                shaping.select,
            );
            let decisive: Vec<usize> = r.problems[i].decisive.iter().map(|d| d + p_len).collect();
            if let Some(p) = crate::credit::precision(&sel, &decisive) {
                fid_sum += p;
                fid_n += 1;
            }
        }
    }
    StepMetrics {
        step,
        reward_mean: mean,
        reward_std: var.sqrt(),
        accuracy: mean,
        loss: stats.loss / iterations,
        kl: stats.kl / iterations,
        clip_ratio_low: stats.clip_ratio_low / iterations,
        clip_ratio_high: stats.clip_ratio_high / iterations,
        clip_ratio_region: stats.clip_ratio_region / iterations,
        entropy: if ent_n > 0 {
            ent_sum / ent_n as f64
        } else {
            0.0
        },
        completion_length: r
            .completions
            .iter()
            .map(|c| c.tokens.len() as f64)
            .sum::<f64>()
            / b,
        truncated_frac: r.completions.iter().filter(|c| c.truncated).count() as f64 / b,
        zero_std_frac: zero_std,
        weight_mean: if w_n > 0 { w_sum / w_n as f64 } else { 1.0 },
        weight_max: w_max,
        answer_mass: r.answer_mass,
        no_answer_frac: r.no_answer as f64 / b,
        unscored_frac: r.unscored as f64 / b,
        conservation_residual: r.conservation_residual,
        scoring_time_frac: if config.credit.method == Credit::Uniform {
            0.0
        } else {
            r.scoring_secs / step_secs
        },
        fidelity: (fid_n > 0).then(|| fid_sum / fid_n as f64),
        eval_accuracy: None,
        eval_sampled_accuracy: None,
        step_secs,
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

fn completion_targets(
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

fn to_f64(t: Tensor<2>) -> Vec<f64> {
    t.into_data()
        .try_into_vec::<f32>()
        .expect("f32 tensor")
        .into_iter()
        .map(f64::from)
        .collect()
}
