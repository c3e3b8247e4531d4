//! The knobs of a GRPO run (TRL's names) and their defaults.
//!
//! The loss knobs (`beta`, `epsilon`, `epsilon_high`, `loss_type`), `scale_rewards` and the
//! credit defaults (`rho`, `gamma`, the method) are the core's `Default`s; this module
//! restates none of them. The enums are the core's, serialised by their snake_case names,
//! so a `state.json` reads `"loss_type": "dr_grpo"`, `"method": "flowtracer"`.

use flowtracer_core::grpo::{GrpoConfig as CoreGrpoConfig, LossType, ScaleRewards};
use serde::{Deserialize, Serialize};

use crate::credit::CreditConfig;
use crate::error::ConfigError;
use crate::model::ModelConfig;
use crate::sft::SftConfig;
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

    /// Checks the knobs.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first bad knob.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.num_generations < 2 {
            return Err(ConfigError::knob("num_generations must be >= 2"));
        }
        if self.prompts_per_step == 0 || self.num_iterations == 0 {
            return Err(ConfigError::knob(
                "prompts_per_step and num_iterations must be >= 1",
            ));
        }
        if self.max_completion_length == 0 {
            return Err(ConfigError::knob("max_completion_length must be >= 1"));
        }
        if self.temperature.is_nan() || self.temperature <= 0.0 {
            return Err(ConfigError::knob("temperature must be > 0"));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(ConfigError::knob("lr must be a positive number"));
        }
        Ok(self.credit.shaping().validate()?)
    }
}

/// Checks every knob of a run together, whatever their source (the command line through
/// [`Knobs::validate`](crate::cli::knobs::Knobs::validate), or a checkpoint's `state.json`
/// through [`checkpoint::read_state`](crate::checkpoint::read_state)): the GRPO knobs, the
/// task, the model's shape and, when given, the warm-up.
///
/// # Errors
///
/// A [`ConfigError`] naming the first bad knob.
pub fn validate_run(
    grpo: &GrpoConfig,
    task: &TaskConfig,
    model: &ModelConfig,
    sft: Option<&SftConfig>,
) -> Result<(), ConfigError> {
    task.validate()?;
    grpo.validate()?;
    if model.n_heads == 0
        || model.d_model == 0
        || !model.d_model.is_multiple_of(model.n_heads)
        || model.n_layers == 0
    {
        return Err(ConfigError::knob(
            "d_model must be a positive multiple of heads, layers >= 1",
        ));
    }
    if task.prompt_len() + grpo.max_completion_length > model.max_len {
        return Err(ConfigError::knob(format!(
            "prompt ({}) + max_completion_length ({}) exceeds the model's {} positions",
            task.prompt_len(),
            grpo.max_completion_length,
            model.max_len
        )));
    }
    if let Some(sft) = sft
        && (!(sft.lr > 0.0 && sft.lr.is_finite()) || sft.batch_size == 0)
    {
        return Err(ConfigError::knob(
            "warmup_lr must be positive and warmup_batch >= 1",
        ));
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
}
