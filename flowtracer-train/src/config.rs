//! The knobs of a GRPO run (TRL's names) and their defaults.
//!
//! The loss knobs (`beta`, `epsilon`, `epsilon_high`, `loss_type`), `scale_rewards` and the
//! credit defaults (`rho`, `gamma`, the method) are the core's `Default`s; this module
//! restates none of them. The enums are the core's, serialised by their snake_case names,
//! so a `state.json` reads `"loss_type": "dr_grpo"`, `"method": "flowtracer"`.

use flowtracer_core::grpo::{GrpoConfig as CoreGrpoConfig, LossType, ScaleRewards};
use serde::{Deserialize, Serialize};

use crate::checkpoint::RunInfo;
use crate::credit::CreditConfig;
use crate::error::ConfigError;
use crate::model::ModelConfig;
use crate::task::TaskConfig;

/// The `eps` of the advantage normalisation `(r - mean) / (std + eps)`: the core's default
/// (`GrpoConfig::DEFAULT.advantage_eps`, TRL's value).
pub const ADV_EPS: f64 = CoreGrpoConfig::DEFAULT.advantage_eps;

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
    /// The `eps` of the advantage normalisation (default [`ADV_EPS`]).
    pub adv_eps: f64,
    /// Seed of everything random in the run.
    pub seed: u64,
    /// Credit assignment.
    pub credit: CreditConfig,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        let core = CoreGrpoConfig::default();
        Self {
            num_generations: 8,
            prompts_per_step: 16,
            beta: core.beta,
            epsilon: core.epsilon,
            epsilon_high: core.epsilon_high,
            loss_type: core.loss_type,
            scale_rewards: ScaleRewards::default(),
            num_iterations: 1,
            temperature: 1.0,
            top_k: 0,
            max_completion_length: 40,
            mask_truncated_completions: false,
            lr: 3e-4,
            adv_eps: ADV_EPS,
            seed: 0,
            credit: CreditConfig::default(),
        }
    }
}

impl GrpoConfig {
    /// The core's loss config.
    pub fn core(&self) -> CoreGrpoConfig {
        CoreGrpoConfig::default()
            .with_beta(self.beta)
            .with_epsilon(self.epsilon)
            .with_epsilon_high(self.epsilon_high)
            .with_loss_type(self.loss_type)
            .with_max_completion_length(self.max_completion_length)
            .with_scale_rewards(self.scale_rewards)
            .with_advantage_eps(self.adv_eps)
    }

    /// Checks the GRPO knobs (part of [`validate_run`], which also checks them against the
    /// task and the model).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first bad knob by its command-line flag, with its value
    /// and what it may be.
    pub fn validate(&self) -> Result<(), ConfigError> {
        in_range(
            "--num-generations",
            self.num_generations,
            2,
            MAX_GENERATIONS,
        )?;
        in_range(
            "--prompts-per-step",
            self.prompts_per_step,
            1,
            MAX_PROMPTS_PER_STEP,
        )?;
        in_range("--num-iterations", self.num_iterations, 1, MAX_ITERATIONS)?;
        in_range(
            "--max-completion-length",
            self.max_completion_length,
            1,
            MAX_POSITIONS,
        )?;
        positive("--temperature", self.temperature)?;
        positive("--lr", self.lr)?;
        non_negative("--beta", self.beta)?;
        non_negative("--epsilon", self.epsilon)?;
        non_negative("--epsilon-high", self.epsilon_high)?;
        non_negative("adv_eps", self.adv_eps)?;
        let c = &self.credit;
        if !(0.0..=1.0).contains(&c.rho) {
            return Err(ConfigError::knob(format!(
                "--rho must be in [0, 1], got {}",
                c.rho
            )));
        }
        non_negative("--gamma", c.gamma)?;
        Ok(self.credit.shaping().validate()?)
    }
}

/// The most completions per prompt (`--num-generations`).
pub const MAX_GENERATIONS: usize = 1024;
/// The most prompts per step (`--prompts-per-step`).
pub const MAX_PROMPTS_PER_STEP: usize = 4096;
/// The most sequences in one batch: GRPO's `prompts_per_step * num_generations`, and the
/// warm-up's `--warmup-batch`.
pub const MAX_BATCH: usize = 16384;
/// The most updates per generated batch (`--num-iterations`).
pub const MAX_ITERATIONS: usize = 1000;
/// The widest model (`--d-model`).
pub const MAX_D_MODEL: usize = 4096;
/// The deepest model (`--layers`) and the most heads (`--heads`).
pub const MAX_LAYERS: usize = 64;
/// The most heads (`--heads`).
pub const MAX_HEADS: usize = 64;
/// The longest position table of a model (and so the longest prompt + completion).
pub const MAX_POSITIONS: usize = 4096;
/// The most held-out problems (`--eval-size`).
pub const MAX_EVAL_SIZE: usize = 100_000;
/// The memory a run may need, by the estimate of [`estimated_bytes`]: 16 GiB (the project's
/// machines have 24 GiB).
pub const MAX_BYTES: u128 = 16 << 30;

fn in_range(flag: &str, value: usize, lo: usize, hi: usize) -> Result<(), ConfigError> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::knob(format!(
            "{flag} must be in {lo}..={hi}, got {value}"
        )))
    }
}

fn positive(flag: &str, value: f64) -> Result<(), ConfigError> {
    if value > 0.0 && value.is_finite() {
        Ok(())
    } else {
        Err(ConfigError::knob(format!(
            "{flag} must be a finite number > 0, got {value}"
        )))
    }
}

fn non_negative(flag: &str, value: f64) -> Result<(), ConfigError> {
    if value >= 0.0 && value.is_finite() {
        Ok(())
    } else {
        Err(ConfigError::knob(format!(
            "{flag} must be a finite number >= 0, got {value}"
        )))
    }
}

/// An estimate of the bytes a batch of `batch` sequences of `len` tokens needs while it
/// trains `model`: the parameters with their gradient and two Adam moments (4 copies of
/// `f32`), plus the activations autodiff keeps per layer and token (about `16 d_model`
/// values and two `heads x len` attention rows, `f32`). Computed in `u128`: never
/// overflows for sizes within the per-knob bounds.
pub fn estimated_bytes(model: &ModelConfig, batch: usize, len: usize) -> u128 {
    let (d, l, h, v) = (
        model.d_model as u128,
        model.n_layers as u128,
        model.n_heads as u128,
        model.vocab_size as u128,
    );
    let params = 2 * v * d + model.max_len as u128 * d + l * (12 * d * d + 13 * d) + 2 * d + v;
    let activations = batch as u128 * len as u128 * (l * (16 * d + 2 * h * len as u128) + v);
    4 * (4 * params + activations)
}

/// Checks every knob of a run together, whatever their source (the command line through
/// [`Knobs::validate`](crate::cli::knobs::Knobs::validate), or a checkpoint's `state.json`
/// through [`checkpoint::read_state`](crate::checkpoint::read_state)): the GRPO knobs, the
/// task, the model's shape, the held-out set and the warm-up when known, each within its
/// range, and the memory the run needs within [`MAX_BYTES`].
///
/// # Errors
///
/// A [`ConfigError`] naming the first bad knob by its command-line flag, with its value and
/// what it may be.
pub fn validate_run(
    grpo: &GrpoConfig,
    task: &TaskConfig,
    model: &ModelConfig,
    run: &RunInfo,
) -> Result<(), ConfigError> {
    task.validate()?;
    grpo.validate()?;
    let vocab = task.vocab_size();
    if model.vocab_size != vocab {
        return Err(ConfigError::knob(format!(
            "vocab_size must be the task's {vocab}, got {}",
            model.vocab_size
        )));
    }
    in_range("--d-model", model.d_model, 1, MAX_D_MODEL)?;
    in_range("--layers", model.n_layers, 1, MAX_LAYERS)?;
    in_range("--heads", model.n_heads, 1, MAX_HEADS)?;
    if !model.d_model.is_multiple_of(model.n_heads) {
        return Err(ConfigError::knob(format!(
            "--heads must divide --d-model, got --heads {} and --d-model {}",
            model.n_heads, model.d_model
        )));
    }
    in_range("max_len", model.max_len, 1, MAX_POSITIONS)?;
    let (prompt, response) = (task.prompt_len(), task.response_len());
    if prompt + grpo.max_completion_length > model.max_len {
        return Err(ConfigError::knob(format!(
            "--max-completion-length must be at most {} (the model's {} positions less the prompt's {prompt}), got {}",
            model.max_len.saturating_sub(prompt),
            model.max_len,
            grpo.max_completion_length
        )));
    }
    if grpo.max_completion_length < response {
        return Err(ConfigError::knob(format!(
            "--max-completion-length must be at least {response} (the task's canonical response, EOS included: a shorter completion is truncated and never rewarded), got {}",
            grpo.max_completion_length
        )));
    }
    let batch = grpo.prompts_per_step * grpo.num_generations;
    if batch > MAX_BATCH {
        return Err(ConfigError::knob(format!(
            "--prompts-per-step x --num-generations must be at most {MAX_BATCH} sequences, got {} x {} = {batch}",
            grpo.prompts_per_step, grpo.num_generations
        )));
    }
    let mut need = estimated_bytes(model, batch, prompt + grpo.max_completion_length);
    if let Some(n) = run.eval_size {
        in_range("--eval-size", n, 0, MAX_EVAL_SIZE)?;
    }
    if let Some(sft) = &run.warmup {
        in_range("--warmup-batch", sft.batch_size, 1, MAX_BATCH)?;
        positive("--warmup-lr", sft.lr)?;
        need = need.max(estimated_bytes(model, sft.batch_size, prompt + response));
    }
    if need > MAX_BYTES {
        return Err(ConfigError::knob(format!(
            "the run needs about {:.1} GiB ({batch} sequences of up to {} tokens through {} layers of width {}), more than the {} GiB bound: lower --prompts-per-step, --num-generations, --warmup-batch, --d-model or --layers",
            need as f64 / f64::from(1u32 << 30),
            prompt + grpo.max_completion_length,
            model.n_layers,
            model.d_model,
            MAX_BYTES >> 30
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `state.json` written before the trainer used the core's enums still loads, and
    /// is written back with the same strings.
    #[test]
    fn earlier_state_json_config_round_trips() {
        let old = r#"{"num_generations":8,"prompts_per_step":16,"beta":0.0,"epsilon":0.2,
            "epsilon_high":0.28,"loss_type":"dr_grpo","scale_rewards":"none",
            "num_iterations":1,"temperature":1.0,"top_k":0,"max_completion_length":40,
            "mask_truncated_completions":false,"lr":0.0003,"adv_eps":0.0001,"seed":0,
            "credit":{"method":"bottom_flow","rho":0.4,"gamma":1.5,"seed":0}}"#;
        let c: GrpoConfig = serde_json::from_str(old).unwrap();
        assert_eq!(c.loss_type, LossType::DrGrpo);
        assert_eq!(c.scale_rewards, ScaleRewards::None);
        assert_eq!(
            c.credit.method,
            flowtracer_core::baselines::CreditMethod::BottomFlow
        );
        let back: serde_json::Value = serde_json::to_value(&c).unwrap();
        let old: serde_json::Value = serde_json::from_str(old).unwrap();
        assert_eq!(back, old);
        let flow = GrpoConfig::default();
        let json = serde_json::to_value(&flow).unwrap();
        assert_eq!(json["credit"]["method"], "flowtracer");
        assert_eq!(json["loss_type"], "grpo");
        assert_eq!(json["scale_rewards"], "group");
    }

    #[test]
    fn defaults_are_the_core_defaults() {
        let c = GrpoConfig::default();
        let core = CoreGrpoConfig::default();
        assert_eq!(
            (c.beta, c.epsilon, c.epsilon_high, c.loss_type),
            (core.beta, core.epsilon, core.epsilon_high, core.loss_type)
        );
        assert_eq!(c.scale_rewards, ScaleRewards::default());
        c.validate().unwrap();
    }

    /// Every bound at its edge: the limit passes, one past it fails (`>=` where `>=` is
    /// meant).
    #[test]
    fn knobs_pass_at_their_bounds_and_fail_past_them() {
        let check = |f: &dyn Fn(&mut GrpoConfig)| {
            let mut c = GrpoConfig::default();
            f(&mut c);
            c.validate()
        };
        assert!(check(&|c| c.num_generations = 2).is_ok());
        assert!(check(&|c| c.num_generations = 1).is_err());
        assert!(check(&|c| c.num_generations = MAX_GENERATIONS).is_ok());
        assert!(check(&|c| c.num_generations = MAX_GENERATIONS + 1).is_err());
        assert!(check(&|c| c.prompts_per_step = MAX_PROMPTS_PER_STEP).is_ok());
        assert!(check(&|c| c.prompts_per_step = MAX_PROMPTS_PER_STEP + 1).is_err());
        assert!(check(&|c| c.prompts_per_step = 0).is_err());
        assert!(check(&|c| c.beta = 0.0).is_ok());
        assert!(check(&|c| c.beta = -f64::MIN_POSITIVE).is_err());
        assert!(check(&|c| c.epsilon_high = f64::INFINITY).is_err());
        assert!(check(&|c| c.lr = f64::MIN_POSITIVE).is_ok());
        assert!(check(&|c| c.lr = 0.0).is_err());
        assert!(check(&|c| c.credit.rho = 1.0).is_ok());
        assert!(check(&|c| c.credit.rho = 1.0 + f64::EPSILON).is_err());
        let err = check(&|c| c.num_generations = 1).unwrap_err().to_string();
        assert_eq!(err, "--num-generations must be in 2..=1024, got 1");

        let tiny = ModelConfig {
            d_model: 16,
            n_heads: 2,
            n_layers: 2,
            ..ModelConfig::default()
        };
        let task = TaskConfig::level(1);
        let run = RunInfo::default();
        let batch = |prompts| GrpoConfig {
            prompts_per_step: prompts,
            num_generations: 1024,
            ..GrpoConfig::default()
        };
        assert!(validate_run(&batch(MAX_BATCH / 1024), &task, &tiny, &run).is_ok());
        let err = validate_run(&batch(MAX_BATCH / 1024 + 1), &task, &tiny, &run).unwrap_err();
        assert!(err.to_string().contains("at most 16384 sequences"), "{err}");
        // The default model at the largest batch exceeds the memory bound.
        let err = validate_run(&batch(16), &task, &ModelConfig::default(), &run).unwrap_err();
        assert!(err.to_string().contains("16 GiB bound"), "{err}");
        let sane = GrpoConfig::default();
        assert!(validate_run(&sane, &task, &ModelConfig::default(), &run).is_ok());
        let wide = ModelConfig {
            d_model: MAX_D_MODEL + 1,
            n_heads: 1,
            ..ModelConfig::default()
        };
        assert!(validate_run(&sane, &task, &wide, &run).is_err());
    }
}
