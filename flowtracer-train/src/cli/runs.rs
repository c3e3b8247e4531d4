//! `compare`'s per-run store, so a study can run in pieces.
//!
//! Layout under `--out`: `seed-S/warmup.bpk` + `seed-S/warmup.json` (the seed's warm-up model,
//! its held-out accuracy and the credit fidelity of each method on it), and per method
//! `seed-S/METHOD/` with the run's `metrics.jsonl`, its checkpoints, and, once the run is
//! finished, `final.bpk` (the policy after GRPO) then `result.json` (its result and the knobs
//! that made it). A later `compare` with the same knobs keeps every finished run (reads its
//! `result.json`, trains nothing), continues an interrupted run from its latest checkpoint
//! (exactly: same RNG state, so the result equals an uninterrupted run's), and reuses a
//! seed's warm-up. A kept file made with other knobs is refused (exit 2), never mixed in;
//! knobs a file's work never reads are not part of its key (the warm-up reads no credit
//! knob, a uniform run none of `rho`, `gamma`, `apply_to`), so a sweep over them can keep
//! the study's warm-ups and uniform runs (`scripts/sensitivity.sh`).

use alloc::collections::BTreeMap;
use std::collections::HashSet;
use std::path::Path;

use flowtracer_core::baselines::CreditMethod;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::CliError;
use super::knobs::Knobs;
use super::train::Start;
use crate::atomic::{read_regular, write_atomic};
use crate::checkpoint::{self, Resume};
use crate::config::GrpoConfig;
use crate::error::{FileError, TrainError};
use crate::model::{ModelConfig, Transformer};
use crate::sft::SftConfig;
use crate::task::TaskConfig;

/// The most bytes a kept JSON file may hold.
const MAX_JSON_BYTES: u64 = 64 << 20;

/// Everything that decides a run's outcome: a kept result or a checkpoint is used only when
/// its key equals the current one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RunKey {
    config: GrpoConfig,
    task: TaskConfig,
    model: ModelConfig,
    warmup: SftConfig,
    steps: usize,
    eval_size: usize,
    eval_every: usize,
    eval_curve_size: usize,
}

impl RunKey {
    pub(crate) fn new(k: &Knobs, method: CreditMethod, seed: u64) -> Self {
        Self {
            config: canonical(k.grpo(method, seed)),
            task: k.task(),
            model: k.model(),
            warmup: k.sft(),
            steps: k.steps,
            eval_size: k.eval_size,
            eval_every: k.eval_every,
            eval_curve_size: k.eval_curve_size,
        }
    }
}

/// A GRPO config as a key sees it: the credit knobs its method never reads at their
/// defaults ([`CreditConfig::canonical`](crate::credit::CreditConfig::canonical)).
fn canonical(config: GrpoConfig) -> GrpoConfig {
    GrpoConfig {
        credit: config.credit.canonical(),
        ..config
    }
}

/// Everything that decides a seed's warm-up model and its held-out accuracy. The credit
/// knobs do not (a sweep over `--rho` or `--gamma` reuses the warm-up); the fidelity
/// measured on the model depends on `rho`, recorded beside it in [`WarmRecord`]. (Records
/// written before also held `rho` and `gamma` here; they read back, their fidelity is
/// measured again.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct WarmKey {
    seed: u64,
    task: TaskConfig,
    model: ModelConfig,
    warmup: SftConfig,
    eval_size: usize,
    temperature: f64,
}

impl WarmKey {
    pub(crate) fn new(k: &Knobs) -> Self {
        Self {
            seed: k.seed,
            task: k.task(),
            model: k.model(),
            warmup: k.sft(),
            eval_size: k.eval_size,
            temperature: k.temperature,
        }
    }
}

/// `seed-S/warmup.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WarmRecord {
    pub(crate) key: WarmKey,
    /// Held-out greedy accuracy of the warm-up model.
    pub(crate) greedy: f64,
    /// Held-out sampled accuracy of the warm-up model.
    pub(crate) sampled: f64,
    /// Seconds the warm-up took.
    pub(crate) secs: f64,
    /// Credit fidelity per method name (`None`: the method scores nothing).
    pub(crate) fidelity: BTreeMap<String, Option<f64>>,
    /// The `rho` the fidelity was measured at (`None` in records written before it was
    /// kept: measured again).
    #[serde(default)]
    pub(crate) fidelity_rho: Option<f64>,
}

/// `seed-S/METHOD/result.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Kept<R> {
    pub(crate) key: RunKey,
    pub(crate) result: R,
}

/// Reads a kept JSON file: `None` when it does not exist.
///
/// # Errors
///
/// Bad input (exit 2) when it cannot be read or parsed.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, CliError> {
    let bytes = match read_regular(path, MAX_JSON_BYTES) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CliError::bad_input(FileError::new("read", path, e))),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        CliError::bad_input(format!(
            "{} is not a file compare wrote: {e}; delete it to recompute",
            path.display()
        ))
    })
}

/// Writes a JSON file with [`write_atomic`].
///
/// # Errors
///
/// The [`FileError`] of encoding or writing.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), FileError> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| FileError::new("encode", path, e))?;
    write_atomic(path, &json)
}

/// The error for a kept file made with other knobs.
pub(crate) fn other_knobs(path: &Path) -> CliError {
    CliError::bad_input(format!(
        "{} was made with other knobs than these: run compare with its knobs, or give another --out",
        path.display()
    ))
}

/// A finished run's kept result in `dir`, if any.
///
/// # Errors
///
/// Bad input (exit 2) when `result.json` is unreadable or was made with another key.
pub(crate) fn kept_result<R: DeserializeOwned>(
    dir: &Path,
    key: &RunKey,
) -> Result<Option<R>, CliError> {
    let path = dir.join("result.json");
    match read_json::<Kept<R>>(&path)? {
        Some(kept) if kept.key == *key => Ok(Some(kept.result)),
        Some(_) => Err(other_knobs(&path)),
        None => Ok(None),
    }
}

/// Where an unfinished run in `dir` starts: from its latest checkpoint (which must have been
/// made with `key`), or `None` for a fresh start (the directory is then emptied).
///
/// # Errors
///
/// Bad input (exit 2) for a checkpoint of other knobs; the [`TrainError`] of a damaged one.
pub(crate) fn resume_start(
    dir: &Path,
    key: &RunKey,
    held: HashSet<Vec<u32>>,
    k: &Knobs,
) -> Result<Option<Start>, CliError> {
    checkpoint::remove_temporaries(dir).map_err(CliError::failure)?;
    let path = match checkpoint::resume_point(dir)? {
        Resume::Nothing => {
            match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(CliError::failure(FileError::new("remove", dir, e)));
                }
                _ => {}
            }
            return Ok(None);
        }
        Resume::Latest(path) => path,
        Resume::Fallback { path, problem } => {
            eprintln!(
                "warning: {problem}; resuming from the only complete checkpoint, {}",
                path.display()
            );
            path
        }
    };
    let state = checkpoint::read_state(&path).map_err(TrainError::Damaged)?;
    if canonical(state.config) != key.config || state.task != key.task || state.model != key.model {
        return Err(other_knobs(&path));
    }
    let (trainer, model) = checkpoint::load(&path, held, k.device())?;
    if !k.quiet {
        eprintln!("resuming {} from step {}", dir.display(), trainer.step);
    }
    Ok(Some(Start::Resumed {
        trainer: Box::new(trainer),
        model,
        run: state.run,
    }))
}

/// Saves a finished run's policy as `final.bpk` in `dir` (before its `result.json`).
///
/// # Errors
///
/// The [`FileError`] of encoding or writing.
pub(crate) fn save_model(model: &Transformer, path: &Path) -> Result<(), FileError> {
    use burn::module::Module;
    let bytes = model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| FileError::new("encode the model for", path, e))?;
    write_atomic(path, &bytes)
}
