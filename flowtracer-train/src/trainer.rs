//! The GRPO trainer (TRL-style knobs, [`GrpoConfig`]) with per-token credit from
//! `flowtracer-core`.
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
//!    weights and shaped advantages ([`crate::credit::score_rollouts`]: `token_weights`,
//!    `shape_advantage`);
//! 5. `num_iterations` times: an autodiff forward gives `logp`, the core's `grpo_loss`
//!    gives the loss and `coef = d loss / d logp` per token, and the trainer backpropagates
//!    `sum(coef * logp)` (its gradient is the exact GRPO gradient), then steps Adam.

use std::collections::HashSet;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use flowtracer_core::aggregate::{LayerSelection, select_layers};
use flowtracer_core::baselines::SplitMix64;
use flowtracer_core::grpo::{TokenBatch, group_advantages, grpo_loss};

use crate::config::GrpoConfig;
use crate::credit::{CapturedBatch, score_rollouts};
use crate::error::TrainError;
use crate::metrics::{StepMetrics, UpdateStats, step_metrics};
use crate::model::{Transformer, param_values, token_entropy, token_logps};
use crate::rollout::{Rollout, completion_targets, full_batch, to_f64};
use crate::sampling::{Completion, SamplingConfig, generate};
use crate::sft::{adam, train_problem};
use crate::task::{Problem, TaskConfig, score};

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
    pub rng: SplitMix64,
    /// Completed steps.
    pub step: usize,
    /// Prompts the trainer never trains on (the held-out set).
    pub held_out: HashSet<Vec<u32>>,
    /// Layers whose attention is captured ([method §2](docs/method.md#s2) middle band).
    pub capture: Vec<usize>,
    /// Score on the device through flowtracer-gpu's Q/K kernels when the device is wgpu and
    /// the method scores by throughput (`gpu_credit`, feature `wgpu`; default
    /// `true`); `false` reads the head-mean attention back and scores on the CPU.
    pub device_scoring: bool,
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
        config.validate()?;
        task.validate()?;
        let capture = if config.credit.method.needs_attention() {
            select_layers(model.num_layers(), &LayerSelection::Middle)?
        } else {
            Vec::new()
        };
        let reference = (config.beta > 0.0).then(|| model.valid());
        let rng = SplitMix64::new(config.seed ^ 0x6772_706F);
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
            device_scoring: true,
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
            .map(|(p, c)| f64::from(score(p, &c.tokens)))
            .collect();
        let group_adv = group_advantages(&rewards, g, cfg.scale_rewards, cfg.adv_eps)?;
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
        #[cfg(feature = "wgpu")]
        let (out, device_qk) = crate::gpu_credit::forward(self, &policy, &batch);
        #[cfg(not(feature = "wgpu"))]
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
        let layers = self.capture.len();
        // On the wgpu backend with Q/K captured, the device scores; otherwise the host does.
        #[cfg(feature = "wgpu")]
        let device_credit = match device_qk {
            Some(qk) => {
                let layout = crate::gpu_credit::PaddedLayout {
                    width: batch.len,
                    prompt_cols,
                    completion_len: c_len,
                    heads: policy.num_heads(),
                };
                Some(crate::gpu_credit::score_rollouts(
                    &cfg.credit,
                    &problems,
                    &completions,
                    &group_adv,
                    &qk,
                    &self.capture,
                    layout,
                )?)
            }
            None => None,
        };
        #[cfg(not(feature = "wgpu"))]
        let device_credit = None;
        let credit = match device_credit {
            Some(credit) => credit,
            None => {
                let attention_host: Vec<f32> = if layers > 0 {
                    let stacked = Tensor::stack::<4>(out.attention, 1); // [B, L, T, T]
                    stacked
                        .into_data()
                        .try_into_vec::<f32>()
                        .expect("f32 attention")
                } else {
                    Vec::new()
                };
                let captured = CapturedBatch {
                    attention: &attention_host,
                    layers,
                    width: batch.len,
                    prompt_cols,
                    completion_len: c_len,
                    entropy: &entropy,
                };
                score_rollouts(
                    &cfg.credit,
                    &problems,
                    &completions,
                    &group_adv,
                    &captured,
                    random_seed,
                )
            }
        };
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
            entropy,
            captured_layers: layers,
            credit,
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
            advantages: &rollout.credit.advantages,
            mask: &rollout.mask,
        };
        Ok(grpo_loss(&batch, &self.config.core())?)
    }

    /// One optimizer step on a rollout: autodiff forward, core loss and coefficients,
    /// `sum(coef * logp)` backward, Adam step.
    ///
    /// # Errors
    ///
    /// [`TrainError::NonFiniteLoss`] naming the step: the model is left unchanged when the
    /// loss or a coefficient is non-finite; when the update itself makes a parameter
    /// non-finite, the model holds it and must not be saved (nor is it: see
    /// [`crate::checkpoint::save`]).
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
        if param_values(&self.model).iter().any(|x| !x.is_finite()) {
            return Err(TrainError::NonFiniteLoss {
                step,
                detail: "the update made parameters non-finite".into(),
            });
        }
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
        Ok(step_metrics(
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
