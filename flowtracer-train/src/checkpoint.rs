//! Atomic checkpoints: everything a GRPO run needs to continue exactly.
//!
//! A checkpoint is a directory `checkpoint-NNNNNN/` holding the policy (`model.bpk`), the
//! Adam state (`optim.bpk`), the frozen reference when there is one (`reference.bpk`) and
//! `state.json` (step, RNG state, configs). Each file is written durably
//! ([`write_atomic`]: fsynced) into a temporary directory, which is renamed into place (and
//! the run directory fsynced); then the `latest` file (itself written with [`write_atomic`])
//! is switched to it, and older checkpoints are removed. A kill at any moment leaves either
//! the previous or the new checkpoint complete.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::Device;
use flowtracer_core::baselines::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::atomic::{rename_durable, sync_dir, write_atomic};
use crate::config::GrpoConfig;
use crate::error::{FileError, TrainError};
use crate::model::ModelConfig;
use crate::sft::adam;
use crate::task::TaskConfig;
use crate::trainer::Trainer;

/// The JSON part of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Completed GRPO steps.
    pub step: usize,
    /// The run's RNG state ([`SplitMix64::state`]).
    pub rng: u64,
    /// GRPO knobs.
    pub config: GrpoConfig,
    /// Task knobs.
    pub task: TaskConfig,
    /// Model shape.
    pub model: ModelConfig,
}

/// Saves the trainer under `dir` (see the module docs for the layout).
///
/// Every file is written with [`write_atomic`] (fsynced) into the temporary directory, which
/// is then renamed into place and the run directory fsynced, before `latest` is switched.
///
/// # Errors
///
/// [`TrainError::File`] naming the file that could not be written.
pub fn save(
    trainer: &Trainer,
    model_config: &ModelConfig,
    dir: &Path,
) -> Result<PathBuf, TrainError> {
    fs::create_dir_all(dir).map_err(|e| FileError::new("create", dir, e))?;
    let name = format!("checkpoint-{:06}", trainer.step);
    let tmp = dir.join(format!(".{name}.tmp"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| FileError::new("clear", &tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| FileError::new("create", &tmp, e))?;
    let model_path = tmp.join("model.bpk");
    let model = trainer
        .model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| FileError::new("encode the model for", &model_path, e))?;
    write_atomic(&model_path, &model)?;
    let optim_path = tmp.join("optim.bpk");
    let optim = trainer
        .optim
        .into_bytes()
        .map_err(|e| FileError::new("encode the optimizer for", &optim_path, e))?;
    write_atomic(&optim_path, &optim)?;
    if let Some(r) = &trainer.reference {
        let path = tmp.join("reference.bpk");
        let reference = r
            .clone()
            .into_record()
            .into_bytes()
            .map_err(|e| FileError::new("encode the reference for", &path, e))?;
        write_atomic(&path, &reference)?;
    }
    let state = State {
        step: trainer.step,
        rng: trainer.rng.state(),
        config: trainer.config.clone(),
        task: trainer.task.clone(),
        model: model_config.clone(),
    };
    let state_path = tmp.join("state.json");
    let json =
        serde_json::to_vec_pretty(&state).map_err(|e| FileError::new("encode", &state_path, e))?;
    write_atomic(&state_path, &json)?;
    let target = dir.join(&name);
    if target.exists() {
        fs::remove_dir_all(&target).map_err(|e| FileError::new("replace", &target, e))?;
    }
    rename_durable(&tmp, &target)?;
    write_atomic(&dir.join("latest"), name.as_bytes())?;
    // Remove older checkpoints.
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("checkpoint-") && n != name {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    let _ = sync_dir(dir);
    Ok(target)
}

/// The latest complete checkpoint under `dir`, if any.
pub fn latest(dir: &Path) -> Option<PathBuf> {
    let name = fs::read_to_string(dir.join("latest")).ok()?;
    let path = dir.join(name.trim());
    path.join("state.json").exists().then_some(path)
}

/// Rebuilds a trainer from a checkpoint directory.
///
/// # Errors
///
/// [`TrainError::File`] naming a file that is missing or unreadable.
pub fn load(
    path: &Path,
    held_out: HashSet<Vec<u32>>,
    device: Device,
) -> Result<(Trainer, ModelConfig), TrainError> {
    let state_path = path.join("state.json");
    let json = fs::read(&state_path).map_err(|e| FileError::new("read", &state_path, e))?;
    let state: State =
        serde_json::from_slice(&json).map_err(|e| FileError::new("decode", &state_path, e))?;
    let ad = device.clone().autodiff();
    let model_path = path.join("model.bpk");
    let record =
        ModuleRecord::load(&model_path).map_err(|e| FileError::new("load", &model_path, e))?;
    let model = state
        .model
        .init(0, &ad)
        .try_load_record(record)
        .map_err(|e| FileError::new("apply the model in", &model_path, e))?;
    let mut trainer = Trainer::new(
        state.config.clone(),
        state.task.clone(),
        model,
        held_out,
        device.clone(),
    )?;
    let reference_path = path.join("reference.bpk");
    trainer.reference = if reference_path.exists() {
        let record = ModuleRecord::load(&reference_path)
            .map_err(|e| FileError::new("load", &reference_path, e))?;
        Some(
            state
                .model
                .init(0, &device)
                .try_load_record(record)
                .map_err(|e| FileError::new("apply the reference in", &reference_path, e))?
                .valid(),
        )
    } else {
        None
    };
    let optim_path = path.join("optim.bpk");
    trainer.optim = adam()
        .load(&optim_path)
        .map_err(|e| FileError::new("load", &optim_path, e))?;
    trainer.rng = SplitMix64::new(state.rng);
    trainer.step = state.step;
    Ok((trainer, state.model))
}
