//! `flowtracer train`: warm-up + GRPO with any credit method, checkpoints and `--resume`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use flowtracer_core::baselines::CreditMethod;
use serde::Serialize;

use super::CliError;
use super::knobs::Knobs;
use crate::atomic::write_atomic;
use crate::atomic::{remove_dir_durable, sync_dir};
use crate::checkpoint::{self, Resume};
use crate::error::{FileError, TrainError};
use crate::metrics::StepMetrics;
use crate::model::Transformer;
use crate::run::{self, LoopOptions};
use crate::task::Problem;
use crate::trainer::Trainer;

/// Arguments of `flowtracer train`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Run knobs.
    #[command(flatten)]
    pub knobs: Knobs,
    /// Output directory (metrics.jsonl, checkpoints, summary.json).
    #[arg(long, default_value = "runs/train")]
    pub out: PathBuf,
    /// Checkpoint every this many GRPO steps (0: never).
    #[arg(long, default_value_t = 10)]
    pub checkpoint_every: usize,
    /// Continue from the latest checkpoint in `--out` (exactly: same RNG state).
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Start a fresh run even though `--out` holds checkpoints: they are deleted first.
    #[arg(long)]
    pub overwrite: bool,
    /// Skip the warm-up and start GRPO from this model (e.g. a `warmup.bpk` of another run).
    #[arg(long, value_name = "FILE")]
    pub init: Option<PathBuf>,
}

/// What one warm-up + GRPO session produced.
#[derive(Debug, Clone, Serialize)]
pub struct Session {
    /// Held-out (greedy, sampled) accuracy after the warm-up.
    pub warmup_accuracy: Option<(f64, f64)>,
    /// Held-out greedy accuracy at the end.
    pub final_accuracy: f64,
    /// Held-out sampled policy accuracy at the end.
    pub final_sampled: f64,
    /// Per-step metrics.
    pub metrics: Vec<StepMetrics>,
    /// Seconds of the GRPO phase (this process only).
    pub grpo_secs: f64,
}

/// Warm-up (fresh model) and its held-out accuracy; saves `warmup.bpk` into `out` with
/// [`write_atomic`].
///
/// # Errors
///
/// [`TrainError::File`] if `out` or `warmup.bpk` cannot be written.
pub fn warmup(
    knobs: &Knobs,
    held: &std::collections::HashSet<Vec<u32>>,
    eval: &[Problem],
    out: &Path,
) -> Result<(Transformer, (f64, f64), f64), TrainError> {
    let device = knobs.device();
    let t0 = Instant::now();
    let model = run::warmup(
        &knobs.model(),
        &knobs.task(),
        &knobs.sft(),
        held,
        knobs.seed,
        &device,
        knobs.quiet,
    );
    let secs = t0.elapsed().as_secs_f64();
    std::fs::create_dir_all(out).map_err(|e| FileError::new("create", out, e))?;
    let path = out.join("warmup.bpk");
    let bytes = model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| FileError::new("encode the warm-up model for", &path, e))?;
    write_atomic(&path, &bytes)?;
    let acc = run::eval_both(&model, &knobs.task(), eval, knobs.temperature, &device);
    Ok((model, acc, secs))
}

/// Where a GRPO session starts.
#[derive(Debug)]
pub enum Start {
    /// From this model (after a warm-up or `--init`): step 0.
    Model(Box<Transformer>),
    /// From this complete checkpoint directory.
    Checkpoint(PathBuf),
}

/// Runs GRPO from a model or a checkpoint and evaluates at the end.
///
/// # Errors
///
/// The trainer's [`TrainError`] (a non-finite loss names its step).
#[allow(clippy::too_many_arguments)]
pub fn grpo_session(
    knobs: &Knobs,
    credit: CreditMethod,
    seed: u64,
    start: Start,
    held: std::collections::HashSet<Vec<u32>>,
    eval: &[Problem],
    out: &Path,
    checkpoint_every: usize,
    label: &str,
) -> Result<Session, TrainError> {
    let device = knobs.device();
    let model_config = knobs.model();
    let mut trainer = match start {
        Start::Model(m) => Trainer::new(
            knobs.grpo(credit, seed),
            knobs.task(),
            *m,
            held,
            device.clone(),
        )?,
        Start::Checkpoint(path) => {
            if !knobs.quiet {
                eprintln!("resuming from {}", path.display());
            }
            checkpoint::load(&path, held, device.clone())?.0
        }
    };
    let opts = LoopOptions {
        out_dir: out.to_path_buf(),
        steps: knobs.steps,
        checkpoint_every,
        eval_every: knobs.eval_every,
        eval_size: knobs.eval_curve_size,
        quiet: knobs.quiet,
        label: label.to_string(),
    };
    let t0 = Instant::now();
    let metrics = run::grpo_loop(&mut trainer, &model_config, eval, &opts)?;
    let grpo_secs = t0.elapsed().as_secs_f64();
    let (final_accuracy, final_sampled) = run::eval_both(
        &trainer.model,
        &trainer.task,
        eval,
        trainer.config.temperature,
        &device,
    );
    Ok(Session {
        warmup_accuracy: None,
        final_accuracy,
        final_sampled,
        metrics,
        grpo_secs,
    })
}

/// Runs `flowtracer train`.
///
/// # Errors
///
/// A [`CliError`]: bad knobs or a bad `--init` file (exit code 2), a failed write or a
/// non-finite loss naming the step (exit code 1).
pub fn run(args: Args) -> Result<(), CliError> {
    let k = &args.knobs;
    k.validate()?;
    let (eval, held) = run::held_out(&k.task(), k.eval_size, k.seed);
    let from = if args.resume {
        match checkpoint::resume_point(&args.out)? {
            Resume::Nothing => {
                eprintln!(
                    "no checkpoint in {}: starting a fresh run",
                    args.out.display()
                );
                None
            }
            Resume::Latest(path) => Some(path),
            Resume::Fallback { path, problem } => {
                eprintln!(
                    "warning: {problem}; resuming from the only complete checkpoint, {}",
                    path.display()
                );
                Some(path)
            }
        }
    } else {
        if checkpoint::holds_checkpoints(&args.out) {
            if !args.overwrite {
                return Err(CliError::bad_input(format!(
                    "{} holds the checkpoints of an earlier run: pass --resume to continue it, or --overwrite to delete them and start a fresh run",
                    args.out.display()
                )));
            }
            overwrite(&args.out).map_err(CliError::failure)?;
        }
        None
    };
    let (start, warm_acc) = if let Some(path) = from {
        (Start::Checkpoint(path), None)
    } else {
        let _ = std::fs::remove_file(args.out.join("metrics.jsonl"));
        let (m, acc) = match &args.init {
            Some(path) => {
                let bad_init = |e| CliError::bad_input(FileError::new("load --init", path, e));
                let record = burn::store::ModuleRecord::load(path).map_err(bad_init)?;
                let m = k
                    .model()
                    .init(0, &k.device().autodiff())
                    .try_load_record(record)
                    .map_err(bad_init)?;
                let acc = run::eval_both(&m, &k.task(), &eval, k.temperature, &k.device());
                (m, acc)
            }
            None => {
                let (m, acc, _) = warmup(k, &held, &eval, &args.out)?;
                (m, acc)
            }
        };
        println!(
            "warm-up accuracy: greedy {:.1}%, sampled {:.1}% ({} held-out problems)",
            100.0 * acc.0,
            100.0 * acc.1,
            eval.len()
        );
        (Start::Model(Box::new(m)), Some(acc))
    };
    let mut s = grpo_session(
        k,
        k.credit,
        k.seed,
        start,
        held,
        &eval,
        &args.out,
        args.checkpoint_every,
        k.credit.name(),
    )?;
    s.warmup_accuracy = warm_acc;
    println!(
        "final accuracy:   greedy {:.1}%, sampled {:.1}% ({} held-out problems)",
        100.0 * s.final_accuracy,
        100.0 * s.final_sampled,
        eval.len()
    );
    let json = serde_json::to_vec_pretty(&serde_json::json!({
        "warmup_accuracy": s.warmup_accuracy,
        "final_accuracy": s.final_accuracy,
        "final_sampled_accuracy": s.final_sampled,
        "steps": s.metrics.len(),
        "grpo_secs": s.grpo_secs,
        "credit": k.credit.name(),
    }))
    .map_err(CliError::failure)?;
    write_atomic(&args.out.join("summary.json"), &json).map_err(CliError::failure)?;
    Ok(())
}

/// `--overwrite`: deletes the earlier run's `latest`, checkpoints, metrics and summary from
/// `out` (durably), so a fresh run starts from an empty record.
fn overwrite(out: &Path) -> Result<(), FileError> {
    for name in [checkpoint::LATEST, "metrics.jsonl", "summary.json"] {
        let path = out.join(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(FileError::new("remove", &path, e));
            }
            _ => {}
        }
    }
    sync_dir(out).map_err(|e| FileError::new("sync", out, e))?;
    for path in checkpoint::checkpoints(out) {
        remove_dir_durable(&path)?;
    }
    Ok(())
}
