//! Command-line knobs shared by `demo`, `train` and `compare`.
//!
//! Every default is referenced, not restated: the GRPO and credit defaults are those of
//! [`GrpoConfig::default`] (which takes the loss, reward-scaling and shaping defaults from
//! the core), the model's of [`ModelConfig::default`], the warm-up's of
//! [`SftConfig::default`]. The option enums are the core's, parsed by their names
//! ([`named`]), so `--help` lists the core's names.

use core::str::FromStr;
use std::path::PathBuf;

use burn::tensor::Device;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use flowtracer_core::baselines::CreditMethod;
use flowtracer_core::grpo::{LossType, ScaleRewards};
use flowtracer_core::shaping::ApplyTo;

use crate::config::GrpoConfig;
use crate::countdown::CountdownConfig;
use crate::credit::CreditConfig;
use crate::error::ConfigError;
use crate::model::ModelConfig;
use crate::sft::SftConfig;
use crate::task::{TaskConfig, TaskKind};

/// A clap value parser for one of the core's option enums: accepts exactly `names` (listed
/// by `--help` and in the error for any other value) and parses them with `FromStr`.
pub fn named<T>(names: &'static [&'static str]) -> impl TypedValueParser<Value = T>
where
    T: FromStr + Clone + Send + Sync + 'static,
    T::Err: core::error::Error + Send + Sync + 'static,
{
    PossibleValuesParser::new(names).try_map(|name| name.parse::<T>())
}

/// Every knob of a run (TRL names where TRL has one).
#[derive(Debug, Clone, clap::Args)]
pub struct Knobs {
    /// Seed of everything (model init, problems, sampling).
    #[arg(long, default_value_t = GrpoConfig::default().seed)]
    pub seed: u64,
    /// The task: chained arithmetic (`chain`, sized by `--difficulty`) or Countdown
    /// (`countdown`, sized by `--countdown-numbers`).
    #[arg(long, value_parser = named::<TaskKind>(TaskKind::NAMES), default_value_t = TaskKind::default())]
    pub task: TaskKind,
    /// Task difficulty level 1..=4 (the chain length; levels 1-2 have one distractor).
    #[arg(long, default_value_t = 1)]
    pub difficulty: usize,
    /// Countdown: numbers per problem (3 or 4 in the study; 2..=4 accepted), each in 1..=20,
    /// targets up to 100.
    #[arg(long, default_value_t = CountdownConfig::default().numbers)]
    pub countdown_numbers: usize,
    /// Supervised warm-up steps.
    #[arg(long, default_value_t = SftConfig::default().steps)]
    pub warmup_steps: usize,
    /// Warm-up problems per step.
    #[arg(long, default_value_t = SftConfig::default().batch_size)]
    pub warmup_batch: usize,
    /// Warm-up learning rate.
    #[arg(long, default_value_t = SftConfig::default().lr)]
    pub warmup_lr: f64,
    /// GRPO steps.
    #[arg(long, default_value_t = 150)]
    pub steps: usize,
    /// Completions per prompt (G).
    #[arg(long, default_value_t = GrpoConfig::default().num_generations)]
    pub num_generations: usize,
    /// Prompts per GRPO step.
    #[arg(long, default_value_t = GrpoConfig::default().prompts_per_step)]
    pub prompts_per_step: usize,
    /// KL coefficient to the frozen reference (k3 estimator).
    #[arg(long, default_value_t = GrpoConfig::default().beta)]
    pub beta: f64,
    /// Lower clip range.
    #[arg(long, default_value_t = GrpoConfig::default().epsilon)]
    pub epsilon: f64,
    /// Upper clip range (default: `--epsilon`).
    #[arg(long)]
    pub epsilon_high: Option<f64>,
    /// Loss aggregation.
    #[arg(long, value_parser = named::<LossType>(LossType::NAMES), default_value_t = GrpoConfig::default().loss_type)]
    pub loss_type: LossType,
    /// Advantage normalisation.
    #[arg(long, value_parser = named::<ScaleRewards>(ScaleRewards::NAMES), default_value_t = GrpoConfig::default().scale_rewards)]
    pub scale_rewards: ScaleRewards,
    /// Optimizer steps per generated batch.
    #[arg(long, default_value_t = GrpoConfig::default().num_iterations)]
    pub num_iterations: usize,
    /// Sampling temperature.
    #[arg(long, default_value_t = GrpoConfig::default().temperature)]
    pub temperature: f64,
    /// Top-k sampling (0: off).
    #[arg(long, default_value_t = GrpoConfig::default().top_k)]
    pub top_k: usize,
    /// Maximum completion length in tokens [default: 40, or the task's canonical response
    /// length when longer; at least that length].
    #[arg(long)]
    pub max_completion_length: Option<usize>,
    /// Exclude truncated completions from the loss.
    #[arg(long)]
    pub mask_truncated_completions: bool,
    /// GRPO learning rate.
    #[arg(long, default_value_t = GrpoConfig::default().lr)]
    pub lr: f64,
    /// Credit method.
    #[arg(long, value_parser = named::<CreditMethod>(CreditMethod::NAMES), default_value_t = CreditConfig::default().method)]
    pub credit: CreditMethod,
    /// Fraction of response tokens shaped.
    #[arg(long, default_value_t = CreditConfig::default().rho)]
    pub rho: f64,
    /// Weight of a shaped token.
    #[arg(long, default_value_t = CreditConfig::default().gamma)]
    pub gamma: f64,
    /// Which responses are shaped: every one, or only those with a non-negative advantage.
    #[arg(long, value_parser = named::<ApplyTo>(ApplyTo::NAMES), default_value_t = CreditConfig::default().apply_to)]
    pub apply_to: ApplyTo,
    /// Model width.
    #[arg(long, default_value_t = ModelConfig::default().d_model)]
    pub d_model: usize,
    /// Model depth (FlowTracer reads the middle third).
    #[arg(long, default_value_t = ModelConfig::default().n_layers)]
    pub layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = ModelConfig::default().n_heads)]
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

    /// Checks every knob before any work is done: `--difficulty`, then everything else with
    /// [`validate_run`](crate::config::validate_run), the one check a `state.json` goes
    /// through too.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first bad knob, its value and what it may be.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=4).contains(&self.difficulty) {
            return Err(ConfigError::knob(format!(
                "--difficulty must be in 1..=4, got {}",
                self.difficulty
            )));
        }
        crate::config::validate_run(
            &self.grpo(self.credit, self.seed),
            &self.task(),
            &self.model(),
            &self.run_info(),
        )
    }

    /// What a fresh run records about itself before its warm-up accuracy is known.
    pub fn run_info(&self) -> crate::checkpoint::RunInfo {
        crate::checkpoint::RunInfo {
            eval_size: Some(self.eval_size),
            warmup: Some(self.sft()),
            warmup_accuracy: None,
        }
    }

    /// `--max-completion-length`, or its default: [`GrpoConfig::default`]'s 40, raised to
    /// the task's canonical response length (EOS included) when that is longer, so that a
    /// correct completion always fits.
    pub fn completion_length(&self) -> usize {
        self.max_completion_length.unwrap_or_else(|| {
            GrpoConfig::default()
                .max_completion_length
                .max(self.task().response_len())
        })
    }

    /// Task config.
    pub fn task(&self) -> TaskConfig {
        match self.task {
            TaskKind::Chain => TaskConfig::level(self.difficulty),
            TaskKind::Countdown => TaskConfig::countdown(self.countdown_numbers),
        }
    }

    /// Model config (its vocabulary is the task's).
    pub fn model(&self) -> ModelConfig {
        ModelConfig {
            vocab_size: self.task().vocab_size(),
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
    pub fn grpo(&self, credit: CreditMethod, seed: u64) -> GrpoConfig {
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
            max_completion_length: self.completion_length(),
            mask_truncated_completions: self.mask_truncated_completions,
            lr: self.lr,
            seed,
            credit: CreditConfig {
                method: credit,
                rho: self.rho,
                gamma: self.gamma,
                seed,
                apply_to: self.apply_to,
            },
            ..GrpoConfig::default()
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
