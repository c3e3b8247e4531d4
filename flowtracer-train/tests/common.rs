//! Shared fixtures: a tiny model and trainer.

use burn::tensor::Device;
use flowtracer_core::baselines::CreditMethod;
use flowtracer_train::config::GrpoConfig;
use flowtracer_train::model::ModelConfig;
use flowtracer_train::task::TaskConfig;
use flowtracer_train::trainer::Trainer;

pub(crate) fn model_config() -> ModelConfig {
    ModelConfig {
        d_model: 16,
        n_heads: 2,
        n_layers: 3,
        max_len: 64,
        ..ModelConfig::default()
    }
}

pub(crate) fn task() -> TaskConfig {
    TaskConfig::level(1)
}

pub(crate) fn config(credit: CreditMethod) -> GrpoConfig {
    let mut c = GrpoConfig {
        num_generations: 4,
        prompts_per_step: 2,
        max_completion_length: 24,
        lr: 1e-3,
        seed: 3,
        ..GrpoConfig::default()
    };
    c.credit.method = credit;
    c
}

pub(crate) fn trainer(credit: CreditMethod) -> Trainer {
    let device = Device::flex();
    let model = model_config().init(5, &device.clone().autodiff());
    Trainer::new(config(credit), task(), model, Default::default(), device).expect("valid config")
}

pub(crate) fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("flowtracer-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}
