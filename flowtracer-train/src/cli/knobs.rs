//! Command-line knobs shared by `demo`, `train` and `compare`.

use std::path::PathBuf;

use burn::tensor::Device;

use crate::credit::{Credit, CreditConfig};
use crate::grpo::{GrpoConfig, LossType, ScaleRewards};
use crate::model::ModelConfig;
use crate::sft::SftConfig;
use crate::task::TaskConfig;

/// Every knob of a run (TRL names where TRL has one).
#[derive(Debug, Clone, clap::Args)]
pub struct Knobs {
    /// Seed of everything (model init, problems, sampling).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Task difficulty level 1..=4 (the chain length; levels 1-2 have one distractor).
    #[arg(long, default_value_t = 1)]
    pub difficulty: usize,
    /// Supervised warm-up steps.
    #[arg(long, default_value_t = 600)]
    pub warmup_steps: usize,
    /// Warm-up problems per step.
    #[arg(long, default_value_t = 32)]
    pub warmup_batch: usize,
    /// Warm-up learning rate.
    #[arg(long, default_value_t = 3e-3)]
    pub warmup_lr: f64,
    /// GRPO steps.
    #[arg(long, default_value_t = 150)]
    pub steps: usize,
    /// Completions per prompt (G).
    #[arg(long, default_value_t = 8)]
    pub num_generations: usize,
    /// Prompts per GRPO step.
    #[arg(long, default_value_t = 16)]
    pub prompts_per_step: usize,
    /// KL coefficient to the frozen reference (k3 estimator).
    #[arg(long, default_value_t = 0.0)]
    pub beta: f64,
    /// Lower clip range.
    #[arg(long, default_value_t = 0.2)]
    pub epsilon: f64,
    /// Upper clip range (default: `--epsilon`).
    #[arg(long)]
    pub epsilon_high: Option<f64>,
    /// Loss aggregation.
    #[arg(long, value_enum, default_value_t = LossType::Grpo)]
    pub loss_type: LossType,
    /// Advantage normalisation.
    #[arg(long, value_enum, default_value_t = ScaleRewards::Group)]
    pub scale_rewards: ScaleRewards,
    /// Optimizer steps per generated batch.
    #[arg(long, default_value_t = 1)]
    pub num_iterations: usize,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Top-k sampling (0: off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Maximum completion length in tokens.
    #[arg(long, default_value_t = 40)]
    pub max_completion_length: usize,
    /// Exclude truncated completions from the loss.
    #[arg(long)]
    pub mask_truncated_completions: bool,
    /// GRPO learning rate.
    #[arg(long, default_value_t = 3e-4)]
    pub lr: f64,
    /// Credit method.
    #[arg(long, value_enum, default_value_t = Credit::Flowtracer)]
    pub credit: Credit,
    /// Fraction of response tokens shaped.
    #[arg(long, default_value_t = 0.4)]
    pub rho: f64,
    /// Weight of a shaped token.
    #[arg(long, default_value_t = 1.5)]
    pub gamma: f64,
    /// Model width.
    #[arg(long, default_value_t = 64)]
    pub d_model: usize,
    /// Model depth (FlowTracer reads the middle third).
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Held-out problems for the final evaluation.
    #[arg(long, default_value_t = 500)]
    pub eval_size: usize,
    /// Evaluate every this many GRPO steps (on `--eval-curve-size` problems).
    #[arg(long, default_value_t = 10)]
    pub eval_every: usize,
    /// Held-out problems in the periodic evaluations.
    #[arg(long, default_value_t = 200)]
    pub eval_curve_size: usize,
    /// No progress bar (for CI and logs).
    #[arg(long)]
    pub quiet: bool,
    /// Use the wgpu backend instead of the CPU (`flex`) backend.
    #[cfg(feature = "wgpu")]
    #[arg(long)]
    pub wgpu: bool,
}

impl Knobs {
    /// The compute device.
    pub fn device(&self) -> Device {
        #[cfg(feature = "wgpu")]
        if self.wgpu {
            return Device::wgpu(Default::default());
        }
        Device::flex()
    }

    /// Checks every knob before any work is done.
    ///
    /// # Errors
    ///
    /// A message naming the first bad knob.
    pub fn validate(&self) -> Result<(), String> {
        self.task().validate()?;
        self.grpo(self.credit, self.seed).validate()?;
        let m = self.model();
        if m.n_heads == 0
            || m.d_model == 0
            || !m.d_model.is_multiple_of(m.n_heads)
            || m.n_layers == 0
        {
            return Err("d_model must be a positive multiple of heads, layers >= 1".into());
        }
        if self.task().prompt_len() + self.max_completion_length > m.max_len {
            return Err(format!(
                "prompt ({}) + max_completion_length ({}) exceeds the model's {} positions",
                self.task().prompt_len(),
                self.max_completion_length,
                m.max_len
            ));
        }
        if !(self.warmup_lr > 0.0 && self.warmup_lr.is_finite()) || self.warmup_batch == 0 {
            return Err("warmup_lr must be positive and warmup_batch >= 1".into());
        }
        Ok(())
    }

    /// Task config.
    pub fn task(&self) -> TaskConfig {
        TaskConfig::level(self.difficulty)
    }

    /// Model config.
    pub fn model(&self) -> ModelConfig {
        ModelConfig {
            d_model: self.d_model,
            n_layers: self.layers,
            n_heads: self.heads,
            ..ModelConfig::default()
        }
    }

    /// Warm-up config.
    pub fn sft(&self) -> SftConfig {
        SftConfig {
            steps: self.warmup_steps,
            batch_size: self.warmup_batch,
            lr: self.warmup_lr,
        }
    }

    /// GRPO config for one credit method and seed.
    pub fn grpo(&self, credit: Credit, seed: u64) -> GrpoConfig {
        GrpoConfig {
            num_generations: self.num_generations,
            prompts_per_step: self.prompts_per_step,
            beta: self.beta,
            epsilon: self.epsilon,
            epsilon_high: self.epsilon_high.unwrap_or(self.epsilon),
            loss_type: self.loss_type,
            scale_rewards: self.scale_rewards,
            num_iterations: self.num_iterations,
            temperature: self.temperature,
            top_k: self.top_k,
            max_completion_length: self.max_completion_length,
            mask_truncated_completions: self.mask_truncated_completions,
            lr: self.lr,
            adv_eps: 1e-4,
            seed,
            credit: CreditConfig {
                method: credit,
                rho: self.rho,
                gamma: self.gamma,
                seed,
            },
        }
    }
}

/// The output directory argument.
#[derive(Debug, Clone, clap::Args)]
pub struct OutDir {
    /// Output directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
}
