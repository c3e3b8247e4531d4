//! Atomic checkpoints: everything a GRPO run needs to continue exactly.
//!
//! A checkpoint is a directory `checkpoint-NNNNNN/` holding the policy (`model.bpk`), the
//! Adam state (`optim.bpk`), the frozen reference when there is one (`reference.bpk`) and
//! `state.json` (step, RNG state, configs). Each file is written durably
//! ([`write_atomic`]: fsynced) into a temporary directory, which is renamed into place (and
//! the run directory fsynced); then the `latest` file (itself written with [`write_atomic`])
//! is switched to it, and only then are older checkpoints removed. A kill at any moment
//! leaves either the previous or the new checkpoint complete and named by `latest`
//! (`tests/run/crash.rs` aborts a save at each of its writes, fsyncs, renames and removals in
//! turn); [`remove_temporaries`] clears what the kill left behind.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::Device;
use flowtracer_core::baselines::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::atomic::{read_regular, remove_dir_durable, rename_durable, sync_dir, write_atomic};
use crate::config::GrpoConfig;
use crate::error::{FileError, TrainError};
use crate::fault;
use crate::model::ModelConfig;
use crate::sft::{SftConfig, adam};
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
    /// What the run recorded before GRPO (absent in checkpoints of earlier versions).
    #[serde(default)]
    pub run: RunInfo,
}

/// What a `flowtracer train` run records about itself beyond the trainer: the knobs that
/// chose its held-out set and warm-up, and the warm-up's accuracy (for `summary.json` of a
/// resumed run).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// `--eval-size`: the held-out problems (excluded from training).
    pub eval_size: Option<usize>,
    /// The warm-up knobs (`None` with `--init` or outside `flowtracer train`).
    pub warmup: Option<SftConfig>,
    /// Held-out (greedy, sampled) accuracy after the warm-up.
    pub warmup_accuracy: Option<(f64, f64)>,
}

/// The file naming the checkpoint to resume from.
pub const LATEST: &str = "latest";

/// The most `state.json` may hold (bytes); a larger one is refused before it is read.
pub const MAX_STATE_BYTES: u64 = 1 << 20;

/// Saves the trainer under `dir` (see the module docs for the layout).
///
/// Every file is written with [`write_atomic`] (fsynced) into the temporary directory, which
/// is then renamed into place and the run directory fsynced, before `latest` is switched.
/// Only then are older checkpoints removed (each removal fsynced).
///
/// # Errors
///
/// [`TrainError::File`] naming the file that could not be written.
pub fn save(
    trainer: &Trainer,
    model_config: &ModelConfig,
    run: &RunInfo,
    dir: &Path,
) -> Result<PathBuf, TrainError> {
    let _armed = fault::Armed::new();
    fs::create_dir_all(dir).map_err(|e| FileError::new("create", dir, e))?;
    let name = checkpoint_name(trainer.step);
    let tmp = dir.join(format!(".{name}.tmp"));
    remove_dir_durable(&tmp)?;
    fault::point("write");
    fs::create_dir_all(&tmp).map_err(|e| FileError::new("create", &tmp, e))?;
    let model_path = tmp.join("model.bpk");
    let model = trainer
        .model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| FileError::new("encode the model for", &model_path, e))?;
    let optim_path = tmp.join("optim.bpk");
    let optim = trainer
        .optim
        .into_bytes()
        .map_err(|e| FileError::new("encode the optimizer for", &optim_path, e))?;
    let reference_path = tmp.join("reference.bpk");
    let reference = match &trainer.reference {
        Some(r) => Some(
            r.clone()
                .into_record()
                .into_bytes()
                .map_err(|e| FileError::new("encode the reference for", &reference_path, e))?,
        ),
        None => None,
    };
    // Nothing non-finite is ever saved: the previous checkpoint stays the latest.
    for (what, bytes) in [
        ("parameters", Some(&model)),
        ("optimizer state", Some(&optim)),
        ("reference", reference.as_ref()),
    ] {
        if let Some(bytes) = bytes
            && let Some(tensor) =
                first_non_finite(bytes).map_err(|e| FileError::new("check", &tmp, e))?
        {
            return Err(TrainError::NonFiniteLoss {
                step: trainer.step,
                detail: format!("the {what} hold non-finite values (tensor {tensor})"),
            });
        }
    }
    write_atomic(&model_path, &model)?;
    write_atomic(&optim_path, &optim)?;
    if let Some(reference) = &reference {
        write_atomic(&reference_path, reference)?;
    }
    let state = State {
        step: trainer.step,
        rng: trainer.rng.state(),
        config: trainer.config.clone(),
        task: trainer.task.clone(),
        model: model_config.clone(),
        run: run.clone(),
    };
    let state_path = tmp.join("state.json");
    let json =
        serde_json::to_vec_pretty(&state).map_err(|e| FileError::new("encode", &state_path, e))?;
    write_atomic(&state_path, &json)?;
    let target = dir.join(&name);
    // A checkpoint of this step left by an interrupted earlier try: the new one is complete.
    remove_dir_durable(&target)?;
    rename_durable(&tmp, &target)?;
    write_atomic(&dir.join(LATEST), name.as_bytes())?;
    // `latest` names the new checkpoint (durably): the others are superseded.
    for old in checkpoints(dir) {
        if old != target {
            remove_dir_durable(&old)?;
        }
    }
    Ok(target)
}

/// The name of the first tensor of a burnpack record (`.bpk` bytes) that holds a NaN or an
/// infinity, if any.
///
/// # Errors
///
/// The decoding error, as text, if `bytes` are not a burnpack record.
pub fn first_non_finite(bytes: &[u8]) -> Result<Option<String>, String> {
    use burn_pack::{Bytes, DType, Reader};
    let reader =
        Reader::from_bytes(Bytes::from_bytes_vec(bytes.to_vec())).map_err(|e| format!("{e:?}"))?;
    for tensor in reader.into_tensors().map_err(|e| format!("{e:?}"))? {
        let (name, dtype, _, _, data) = tensor.into_parts().map_err(|e| format!("{e:?}"))?;
        let finite = match dtype {
            DType::F32 | DType::Flex32 => data
                .chunks_exact(4)
                .all(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite()),
            DType::F64 => data
                .chunks_exact(8)
                .all(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")).is_finite()),
            // f16 and bf16: the exponent bits all ones is an infinity or a NaN.
            DType::F16 => data
                .chunks_exact(2)
                .all(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7C00 != 0x7C00),
            DType::BF16 => data
                .chunks_exact(2)
                .all(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7F80 != 0x7F80),
            _ => true,
        };
        if !finite {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// `checkpoint-NNNNNN` for a step.
fn checkpoint_name(step: usize) -> String {
    format!("checkpoint-{step:06}")
}

/// Whether `name` is a checkpoint directory's name (`checkpoint-` and at least six digits).
fn is_checkpoint_name(name: &str) -> bool {
    name.strip_prefix("checkpoint-")
        .is_some_and(|d| d.len() >= 6 && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Every `checkpoint-NNNNNN` entry of `dir` (complete or not), in step order.
pub fn checkpoints(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if !is_checkpoint_name(&name) {
                return None;
            }
            let step = name["checkpoint-".len()..].parse().unwrap_or(u64::MAX);
            Some((step, e.path()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, p)| p).collect()
}

/// Whether `dir` holds a run's checkpoints (`latest` or any `checkpoint-NNNNNN`).
pub fn holds_checkpoints(dir: &Path) -> bool {
    dir.join(LATEST).symlink_metadata().is_ok() || !checkpoints(dir).is_empty()
}

/// Reads and checks `state.json` of a checkpoint directory, and that its other files exist.
///
/// # Errors
///
/// A [`FileError`] naming the file that is missing, not a regular file, too large, not a
/// JSON object of the right fields, or holding a knob that
/// [`validate_run`](crate::config::validate_run) rejects.
pub fn read_state(path: &Path) -> Result<State, FileError> {
    let state_path = path.join("state.json");
    let bytes = read_regular(&state_path, MAX_STATE_BYTES)
        .map_err(|e| FileError::new("read", &state_path, e))?;
    let state: State = json_object(&bytes).map_err(|e| FileError::new("decode", &state_path, e))?;
    crate::config::validate_run(&state.config, &state.task, &state.model, &state.run)
        .map_err(|e| FileError::new("use", &state_path, format!("bad knob: {e}")))?;
    let mut files = vec!["model.bpk", "optim.bpk"];
    if state.config.beta > 0.0 {
        files.push("reference.bpk");
    }
    for f in files {
        let file = path.join(f);
        match fs::metadata(&file) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(FileError::new("read", &file, "not a regular file")),
            Err(e) => return Err(FileError::new("read", &file, e)),
        }
    }
    Ok(state)
}

/// Decodes a JSON object (an array or any other value is refused, so fields are never read
/// by position).
///
/// # Errors
///
/// The JSON error, or "invalid type ..., expected a map" for another value.
pub fn json_object<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(bytes)?;
    T::deserialize(serde_json::Value::Object(map))
}

/// Where `--resume` continues from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// No `latest` and no checkpoint: nothing to resume.
    Nothing,
    /// The complete checkpoint `latest` names.
    Latest(PathBuf),
    /// `latest` is damaged (`problem` says how) and this is the only complete checkpoint.
    Fallback {
        /// The checkpoint resumed from.
        path: PathBuf,
        /// What is wrong with `latest` or the checkpoint it names.
        problem: String,
    },
}

/// Finds the checkpoint to resume from in `dir`.
///
/// `latest` must name a complete checkpoint (`state.json` a JSON object of the right fields,
/// `model.bpk` and `optim.bpk` present). If it does not (missing, unreadable, garbage, naming
/// a missing or incomplete directory), the run falls back to a complete checkpoint only when
/// exactly one exists. Nothing is removed either way.
///
/// # Errors
///
/// [`TrainError::Damaged`] saying what is damaged, when there is no complete checkpoint to
/// fall back to, or several.
pub fn resume_point(dir: &Path) -> Result<Resume, TrainError> {
    let latest = dir.join(LATEST);
    let problem = match read_regular(&latest, 4096) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if checkpoints(dir).is_empty() {
                return Ok(Resume::Nothing);
            }
            format!("{} is missing", latest.display())
        }
        Err(e) => format!("cannot read {}: {e}", latest.display()),
        Ok(bytes) => match core::str::from_utf8(&bytes).map(str::trim) {
            Ok(name) if is_checkpoint_name(name) => match read_state(&dir.join(name)) {
                Ok(_) => return Ok(Resume::Latest(dir.join(name))),
                Err(e) => format!(
                    "{} names {name}, which is not a complete checkpoint ({e})",
                    latest.display()
                ),
            },
            _ => format!(
                "{} does not name a checkpoint (it holds {:?})",
                latest.display(),
                String::from_utf8_lossy(&bytes[..bytes.len().min(64)])
            ),
        },
    };
    let complete: Vec<PathBuf> = checkpoints(dir)
        .into_iter()
        .filter(|p| read_state(p).is_ok())
        .collect();
    match complete.as_slice() {
        [only] => Ok(Resume::Fallback {
            path: only.clone(),
            problem,
        }),
        [] => Err(TrainError::Damaged(FileError::new(
            "resume from",
            dir,
            format!("{problem}; no complete checkpoint to fall back to"),
        ))),
        several => {
            let names: Vec<String> = several.iter().map(|p| p.display().to_string()).collect();
            Err(TrainError::Damaged(FileError::new(
                "resume from",
                dir,
                format!(
                    "{problem}; several complete checkpoints ({}): write the name of the one to resume from into {}",
                    names.join(", "),
                    latest.display()
                ),
            )))
        }
    }
}

/// Removes what a killed run may have left in `dir`: temporary checkpoint directories
/// (`.checkpoint-NNNNNN.tmp`) and temporary files of [`write_atomic`] (`.NAME.tmp-PID-K`).
/// Call it only while holding the run directory's lock.
///
/// # Errors
///
/// A [`FileError`] naming the entry that could not be removed.
pub fn remove_temporaries(dir: &Path) -> Result<(), FileError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    let mut removed = false;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.starts_with(".checkpoint-") && name.ends_with(".tmp") {
            fs::remove_dir_all(&path).map_err(|err| FileError::new("remove", &path, err))?;
            removed = true;
        } else if name.starts_with('.') && name.contains(".tmp-") {
            fs::remove_file(&path).map_err(|err| FileError::new("remove", &path, err))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(dir).map_err(|e| FileError::new("sync", dir, e))?;
    }
    Ok(())
}

/// The complete checkpoint `latest` names under `dir`, if any (no fallback; see
/// [`resume_point`]).
pub fn latest(dir: &Path) -> Option<PathBuf> {
    match resume_point(dir) {
        Ok(Resume::Latest(p)) => Some(p),
        _ => None,
    }
}

/// Loads a model file (`model.bpk` of a checkpoint, a run's `warmup.bpk` or `final.bpk`) of
/// shape `config` onto `device.autodiff()`, as a checkpoint's policy is loaded.
///
/// # Errors
///
/// [`TrainError::Damaged`] naming the file when it is missing, unreadable, not a model
/// record, of another shape, or holds non-finite values.
pub fn load_model(
    config: &ModelConfig,
    path: &Path,
    device: &Device,
) -> Result<crate::model::Transformer, TrainError> {
    let damaged = |action, e: Box<dyn core::error::Error + Send + Sync>| {
        TrainError::Damaged(FileError::new(action, path, e))
    };
    let bytes = read_regular(path, u64::MAX).map_err(|e| damaged("read", e.into()))?;
    match first_non_finite(&bytes) {
        Ok(None) => {}
        Ok(Some(tensor)) => {
            return Err(damaged(
                "load",
                format!("tensor {tensor} holds non-finite values").into(),
            ));
        }
        Err(e) => return Err(damaged("decode", e.into())),
    }
    let record = ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
        .map_err(|e| damaged("decode", e.into()))?;
    config
        .init(0, &device.clone().autodiff())
        .try_load_record(record)
        .map_err(|e| {
            // burn lists every mismatching tensor: the first says enough.
            let full = e.to_string();
            let first: String = full.chars().take(200).collect();
            let more = if first.len() < full.len() { "..." } else { "" };
            damaged(
                "apply the model in",
                format!(
                    "it does not fit the model the knobs give ({} tokens, width {}, {} layers, {} heads): {first}{more}",
                    config.vocab_size, config.d_model, config.n_layers, config.n_heads
                )
                .into(),
            )
        })
}

/// Rebuilds a trainer from a checkpoint directory.
///
/// # Errors
///
/// [`TrainError::Damaged`] naming a file that is missing, unreadable or malformed.
pub fn load(
    path: &Path,
    held_out: HashSet<Vec<u32>>,
    device: Device,
) -> Result<(Trainer, ModelConfig), TrainError> {
    let state = read_state(path).map_err(TrainError::Damaged)?;
    let damaged = |action, file: &Path, e: Box<dyn core::error::Error + Send + Sync>| {
        TrainError::Damaged(FileError::new(action, file, e))
    };
    for name in ["model.bpk", "optim.bpk", "reference.bpk"] {
        let file = path.join(name);
        if name == "reference.bpk" && !file.exists() {
            continue;
        }
        let bytes = read_regular(&file, u64::MAX).map_err(|e| damaged("read", &file, e.into()))?;
        match first_non_finite(&bytes) {
            Ok(None) => {}
            Ok(Some(tensor)) => {
                return Err(damaged(
                    "resume from",
                    &file,
                    format!("tensor {tensor} holds non-finite values").into(),
                ));
            }
            Err(e) => return Err(damaged("decode", &file, e.into())),
        }
    }
    let ad = device.clone().autodiff();
    let model_path = path.join("model.bpk");
    let record =
        ModuleRecord::load(&model_path).map_err(|e| damaged("load", &model_path, e.into()))?;
    let model = state
        .model
        .init(0, &ad)
        .try_load_record(record)
        .map_err(|e| damaged("apply the model in", &model_path, e.into()))?;
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
            .map_err(|e| damaged("load", &reference_path, e.into()))?;
        Some(
            state
                .model
                .init(0, &device)
                .try_load_record(record)
                .map_err(|e| damaged("apply the reference in", &reference_path, e.into()))?
                .valid(),
        )
    } else {
        None
    };
    let optim_path = path.join("optim.bpk");
    trainer.optim = adam()
        .load(&optim_path)
        .map_err(|e| damaged("load", &optim_path, e.into()))?;
    trainer.rng = SplitMix64::new(state.rng);
    trainer.step = state.step;
    Ok((trainer, state.model))
}
