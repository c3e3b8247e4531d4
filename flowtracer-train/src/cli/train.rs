//! `flowtracer train`: warm-up + GRPO with any credit method, checkpoints and `--resume`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use flowtracer_core::baselines::CreditMethod;
use serde::Serialize;

use super::CliError;
use super::knobs::Knobs;
use crate::atomic::write_atomic;
use crate::atomic::{DirLock, read_regular, remove_dir_durable, sync_dir};
use crate::checkpoint::{self, Resume, RunInfo, State};
use crate::config::GrpoConfig;
use crate::error::{FileError, TrainError};
use crate::metrics::StepMetrics;
use crate::model::ModelConfig;
use crate::model::Transformer;
use crate::run::{self, LoopOptions};
use crate::task::Problem;
use crate::task::{TaskConfig, TaskKind};
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
    /// The knobs given on the command line (clap ids such as `d_model`; filled by the
    /// binary): with `--resume`, only these are compared with the checkpoint's.
    #[arg(skip)]
    pub given: Vec<String>,
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
    /// The step the session started from (0, or a resumed checkpoint's).
    pub start_step: usize,
    /// The policy at the end (autodiff device).
    #[serde(skip)]
    pub model: Transformer,
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
    /// From this model (after a warm-up or `--init`): step 0, with the knobs' configs.
    Model {
        /// The starting policy.
        model: Box<Transformer>,
        /// What checkpoints record about the run.
        run: RunInfo,
    },
    /// From a trainer loaded from a checkpoint, with its model shape (the knobs' shape is
    /// not used: a checkpoint's shape is fixed).
    Resumed {
        /// The trainer, with the knobs applied on resume.
        trainer: Box<Trainer>,
        /// The checkpoint's model shape.
        model: ModelConfig,
        /// What the checkpoint recorded about the run.
        run: RunInfo,
    },
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
    let (mut trainer, model_config, run) = match start {
        Start::Model { model, run } => (
            Trainer::new(
                knobs.grpo(credit, seed),
                knobs.task(),
                *model,
                held,
                device.clone(),
            )?,
            knobs.model(),
            run,
        ),
        Start::Resumed {
            trainer,
            model,
            run,
        } => (*trainer, model, run),
    };
    let opts = LoopOptions {
        out_dir: out.to_path_buf(),
        steps: knobs.steps,
        checkpoint_every,
        eval_every: knobs.eval_every,
        eval_size: knobs.eval_curve_size,
        quiet: knobs.quiet,
        label: label.to_string(),
        run,
    };
    let t0 = Instant::now();
    let start_step = trainer.step;
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
        warmup_accuracy: opts.run.warmup_accuracy,
        final_accuracy,
        final_sampled,
        metrics,
        grpo_secs,
        start_step,
        model: trainer.model,
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
    let _lock = DirLock::acquire(&args.out).map_err(CliError::bad_input)?;
    checkpoint::remove_temporaries(&args.out).map_err(CliError::failure)?;
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
    let (start, eval, held) = if let Some(path) = from {
        let state = checkpoint::read_state(&path).map_err(TrainError::Damaged)?;
        let config = resume_config(k, &args.given, &state, &path)?;
        let eval_size = state.run.eval_size.unwrap_or(k.eval_size);
        let (eval, held) = run::held_out(&state.task, eval_size, state.config.seed);
        if !k.quiet {
            eprintln!("resuming from {} (step {})", path.display(), state.step);
        }
        let (mut trainer, model) = checkpoint::load(&path, held.clone(), k.device())?;
        trainer.config = config;
        // Checkpoints older than the one loaded are superseded (a kill during a rotation
        // may have left one, possibly half removed).
        for old in checkpoint::checkpoints(&args.out)
            .into_iter()
            .take_while(|p| *p != path)
        {
            remove_dir_durable(&old).map_err(CliError::failure)?;
        }
        let start = Start::Resumed {
            trainer: Box::new(trainer),
            model,
            run: state.run,
        };
        (start, eval, held)
    } else {
        let (eval, held) = run::held_out(&k.task(), k.eval_size, k.seed);
        let _ = std::fs::remove_file(args.out.join("metrics.jsonl"));
        let (m, acc) = match &args.init {
            Some(path) => {
                let bad_init = |e| CliError::bad_input(FileError::new("load --init", path, e));
                let bytes = read_regular(path, u64::MAX)
                    .map_err(|e| CliError::bad_input(FileError::new("load --init", path, e)))?;
                let record = burn::store::ModuleRecord::from_bytes(
                    burn::tensor::Bytes::from_bytes_vec(bytes),
                )
                .map_err(bad_init)?;
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
        let run = RunInfo {
            eval_size: Some(k.eval_size),
            warmup: args.init.is_none().then(|| k.sft()),
            warmup_accuracy: Some(acc),
        };
        let start = Start::Model {
            model: Box::new(m),
            run,
        };
        (start, eval, held)
    };
    let s = grpo_session(
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
    println!(
        "final accuracy:   greedy {:.1}%, sampled {:.1}% ({} held-out problems)",
        100.0 * s.final_accuracy,
        100.0 * s.final_sampled,
        eval.len()
    );
    let s_credit = k.credit.name();
    let json = serde_json::to_vec_pretty(&serde_json::json!({
        "warmup_accuracy": s.warmup_accuracy,
        "final_accuracy": s.final_accuracy,
        "final_sampled_accuracy": s.final_sampled,
        "steps": s.metrics.len(),
        "grpo_secs": s.grpo_secs,
        "credit": s_credit,
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

/// The GRPO config of a resumed run: the checkpoint's, with the knobs given on the command
/// line applied where a knob may change (each change said on stderr).
///
/// Per knob, when given with a value other than the checkpoint's:
///
/// - fixed for a run, an error (exit 2): `--d-model`, `--layers`, `--heads` (the model's
///   shape), `--task`, `--difficulty`, `--countdown-numbers` (the task), `--seed`, `--credit`, `--beta` (the reference
///   model), `--num-generations` (the group size), `--eval-size` (the held-out set), the
///   warm-up knobs and `--init` (the warm-up is done);
/// - applied from the next step and logged: `--lr`, `--temperature`, `--top-k`,
///   `--epsilon`, `--epsilon-high`, `--loss-type`, `--scale-rewards`, `--num-iterations`,
///   `--max-completion-length`, `--mask-truncated-completions`, `--rho`, `--gamma`,
///   `--apply-to`,
///   `--prompts-per-step`;
/// - schedule, used as given: `--steps`, `--eval-every`, `--eval-curve-size`,
///   `--checkpoint-every`, `--quiet`.
///
/// # Errors
///
/// A [`CliError`] (exit 2) naming the first fixed knob that differs, or a bad combination.
pub fn resume_config(
    k: &Knobs,
    given: &[String],
    state: &State,
    path: &Path,
) -> Result<GrpoConfig, CliError> {
    let is_given = |id: &str| given.iter().any(|g| g == id);
    let flag = |id: &str| format!("--{}", id.replace('_', "-"));
    let state_path = path.join("state.json");
    let fixed = |id: &str, ours: String, theirs: Option<String>, why: &str| {
        if !is_given(id) {
            return Ok(());
        }
        match theirs {
            Some(theirs) if theirs == ours => Ok(()),
            Some(theirs) => Err(CliError::bad_input(format!(
                "{} {ours} differs from the checkpoint's {theirs} ({}): {why}; drop {} to resume",
                flag(id),
                state_path.display(),
                flag(id)
            ))),
            None => Err(CliError::bad_input(format!(
                "{} has no effect on --resume ({why}); drop it to resume",
                flag(id)
            ))),
        }
    };
    let c = &state.config;
    let m: &ModelConfig = &state.model;
    let shape = "the model's shape is fixed for a run";
    fixed(
        "d_model",
        k.d_model.to_string(),
        Some(m.d_model.to_string()),
        shape,
    )?;
    fixed(
        "layers",
        k.layers.to_string(),
        Some(m.n_layers.to_string()),
        shape,
    )?;
    fixed(
        "heads",
        k.heads.to_string(),
        Some(m.n_heads.to_string()),
        shape,
    )?;
    let task: &TaskConfig = &state.task;
    if task.kind == TaskKind::Chain {
        let level = (TaskConfig::level(k.difficulty) == *task).then(|| k.difficulty.to_string());
        fixed(
            "difficulty",
            k.difficulty.to_string(),
            Some(level.unwrap_or_else(|| format!("task {task:?}"))),
            "the task is fixed for a run",
        )?;
    }
    fixed(
        "task",
        k.task.to_string(),
        Some(task.kind.to_string()),
        "the task is fixed for a run",
    )?;
    if task.kind == TaskKind::Countdown {
        fixed(
            "countdown_numbers",
            k.countdown_numbers.to_string(),
            Some(task.countdown.numbers.to_string()),
            "the task is fixed for a run",
        )?;
    }
    fixed(
        "seed",
        k.seed.to_string(),
        Some(c.seed.to_string()),
        "the seed is fixed for a run",
    )?;
    fixed(
        "credit",
        k.credit.name().to_owned(),
        Some(c.credit.method.name().to_owned()),
        "the credit method is fixed for a run",
    )?;
    fixed(
        "beta",
        k.beta.to_string(),
        Some(c.beta.to_string()),
        "the KL term and its reference model are fixed for a run",
    )?;
    fixed(
        "num_generations",
        k.num_generations.to_string(),
        Some(c.num_generations.to_string()),
        "the group size is fixed for a run",
    )?;
    if let Some(n) = state.run.eval_size {
        fixed(
            "eval_size",
            k.eval_size.to_string(),
            Some(n.to_string()),
            "the held-out set is fixed for a run",
        )?;
    }
    let warm = state.run.warmup.as_ref();
    let done = "the warm-up is done";
    fixed(
        "warmup_steps",
        k.warmup_steps.to_string(),
        warm.map(|w| w.steps.to_string()),
        done,
    )?;
    fixed(
        "warmup_batch",
        k.warmup_batch.to_string(),
        warm.map(|w| w.batch_size.to_string()),
        done,
    )?;
    fixed(
        "warmup_lr",
        k.warmup_lr.to_string(),
        warm.map(|w| w.lr.to_string()),
        done,
    )?;
    fixed(
        "init",
        String::new(),
        None,
        "the run continues from its checkpoint",
    )?;

    let mut new = c.clone();
    let mut notes = Vec::new();
    let mut note = |id: &str, ours: String, theirs: String| {
        notes.push(format!(
            "resume: {} {ours} replaces the checkpoint's {theirs} from step {} on",
            flag(id),
            state.step + 1
        ));
    };
    macro_rules! apply {
        ($id:literal, $($field:ident).+, $value:expr) => {
            if is_given($id) && new.$($field).+ != $value {
                note($id, $value.to_string(), new.$($field).+.to_string());
                new.$($field).+ = $value;
            }
        };
    }
    apply!("lr", lr, k.lr);
    apply!("temperature", temperature, k.temperature);
    apply!("top_k", top_k, k.top_k);
    if is_given("epsilon_high") {
        apply!(
            "epsilon_high",
            epsilon_high,
            k.epsilon_high.unwrap_or(k.epsilon)
        );
    } else if is_given("epsilon") && c.epsilon_high == c.epsilon {
        apply!("epsilon", epsilon_high, k.epsilon);
    }
    apply!("epsilon", epsilon, k.epsilon);
    apply!("loss_type", loss_type, k.loss_type);
    apply!("scale_rewards", scale_rewards, k.scale_rewards);
    apply!("num_iterations", num_iterations, k.num_iterations);
    apply!(
        "max_completion_length",
        max_completion_length,
        k.completion_length()
    );
    apply!(
        "mask_truncated_completions",
        mask_truncated_completions,
        k.mask_truncated_completions
    );
    apply!("rho", credit.rho, k.rho);
    apply!("gamma", credit.gamma, k.gamma);
    apply!("apply_to", credit.apply_to, k.apply_to);
    apply!("prompts_per_step", prompts_per_step, k.prompts_per_step);
    crate::config::validate_run(&new, task, m, &state.run)?;
    for n in notes {
        eprintln!("{n}");
    }
    Ok(new)
}
