//! Atomic checkpoints: everything a GRPO run needs to continue exactly.
//!
//! A checkpoint is a directory `checkpoint-NNNNNN/` holding the policy (`model.bpk`), the
//! Adam state (`optim.bpk`), the frozen reference when there is one (`reference.bpk`) and
//! `state.json` (step, RNG state, configs). It is written into a temporary directory and
//! renamed into place; then the `latest` file (itself written to a temporary file and
//! renamed) is switched to it, and older checkpoints are removed. A kill at any moment
//! leaves either the previous or the new checkpoint complete.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::grpo::{GrpoConfig, TrainError, Trainer};
use crate::model::ModelConfig;
use crate::rng::Rng;
use crate::sft::adam;
use crate::task::TaskConfig;

/// The JSON part of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Completed GRPO steps.
    pub step: usize,
    /// The run's RNG state.
    pub rng: u64,
    /// GRPO knobs.
    pub config: GrpoConfig,
    /// Task knobs.
    pub task: TaskConfig,
    /// Model shape.
    pub model: ModelConfig,
}

fn io<E: core::fmt::Display>(what: &str) -> impl FnOnce(E) -> TrainError + '_ {
    move |e| TrainError::Io(format!("{what}: {e}"))
}

/// Writes `bytes` to `path` atomically (temporary file in the same directory + rename).
///
/// # Errors
///
/// I/O errors.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

/// Saves the trainer under `dir` (see the module docs for the layout).
///
/// # Errors
///
/// [`TrainError::Io`].
pub fn save(
    trainer: &Trainer,
    model_config: &ModelConfig,
    dir: &Path,
) -> Result<PathBuf, TrainError> {
    fs::create_dir_all(dir).map_err(io("create run dir"))?;
    let name = format!("checkpoint-{:06}", trainer.step);
    let tmp = dir.join(format!(".{name}.tmp"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io("clear temp dir"))?;
    }
    fs::create_dir_all(&tmp).map_err(io("create temp dir"))?;
    trainer
        .model
        .clone()
        .into_record()
        .save(tmp.join("model.bpk"))
        .map_err(io("save model"))?;
    trainer
        .optim
        .save(tmp.join("optim.bpk"))
        .map_err(io("save optimizer"))?;
    if let Some(r) = &trainer.reference {
        r.clone()
            .into_record()
            .save(tmp.join("reference.bpk"))
            .map_err(io("save reference"))?;
    }
    let state = State {
        step: trainer.step,
        rng: trainer.rng.state(),
        config: trainer.config.clone(),
        task: trainer.task.clone(),
        model: model_config.clone(),
    };
    let json = serde_json::to_vec_pretty(&state).map_err(io("encode state"))?;
    fs::write(tmp.join("state.json"), json).map_err(io("write state"))?;
    let target = dir.join(&name);
    if target.exists() {
        fs::remove_dir_all(&target).map_err(io("replace checkpoint"))?;
    }
    fs::rename(&tmp, &target).map_err(io("publish checkpoint"))?;
    write_atomic(&dir.join("latest"), name.as_bytes()).map_err(io("write latest"))?;
    // Remove older checkpoints.
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("checkpoint-") && n != name {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
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
/// [`TrainError::Io`] when a file is missing or unreadable.
pub fn load(
    path: &Path,
    held_out: HashSet<Vec<u32>>,
    device: Device,
) -> Result<(Trainer, ModelConfig), TrainError> {
    let json = fs::read(path.join("state.json")).map_err(io("read state"))?;
    let state: State = serde_json::from_slice(&json).map_err(io("decode state"))?;
    let ad = device.clone().autodiff();
    let record = ModuleRecord::load(path.join("model.bpk")).map_err(io("load model"))?;
    let model = state
        .model
        .init(0, &ad)
        .try_load_record(record)
        .map_err(io("apply model"))?;
    let mut trainer = Trainer::new(
        state.config.clone(),
        state.task.clone(),
        model,
        held_out,
        device.clone(),
    )?;
    trainer.reference = if path.join("reference.bpk").exists() {
        let record =
            ModuleRecord::load(path.join("reference.bpk")).map_err(io("load reference"))?;
        Some(
            state
                .model
                .init(0, &device)
                .try_load_record(record)
                .map_err(io("apply reference"))?
                .valid(),
        )
    } else {
        None
    };
    trainer.optim = adam()
        .load(path.join("optim.bpk"))
        .map_err(io("load optimizer"))?;
    trainer.rng = Rng::new(state.rng);
    trainer.step = state.step;
    Ok((trainer, state.model))
}
