//! Run drivers shared by the subcommands: warm-up, GRPO loop with progress bar, metrics
//! JSONL, periodic evaluation and checkpoints.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use flowtracer_core::baselines::SplitMix64;

use crate::atomic::{read_regular, write_atomic};
use crate::checkpoint;
use crate::error::{FileError, TrainError};
use crate::metrics::StepMetrics;
use crate::model::{ModelConfig, Transformer};
use crate::sft::{self, SftConfig};
use crate::task::{Problem, TaskConfig};
use crate::trainer::Trainer;

/// After this many GRPO steps in a row with no reward variance in any group
/// (`zero_std_frac = 1`), [`grpo_loop`] warns once on stderr: the run learns nothing.
pub const NO_SIGNAL_STEPS: usize = 20;

/// How a GRPO loop is driven.
#[derive(Debug, Clone)]
pub struct LoopOptions {
    /// Directory for `metrics.jsonl` and checkpoints.
    pub out_dir: PathBuf,
    /// Total GRPO steps (a resumed run continues up to this number).
    pub steps: usize,
    /// Checkpoint every this many steps (0: never).
    pub checkpoint_every: usize,
    /// Evaluate on the held-out set every this many steps (0: never).
    pub eval_every: usize,
    /// Number of held-out problems in periodic evaluations.
    pub eval_size: usize,
    /// No progress bar.
    pub quiet: bool,
    /// Progress bar prefix.
    pub label: String,
    /// What each checkpoint records about the run.
    pub run: checkpoint::RunInfo,
}

/// A progress bar (hidden in quiet mode).
pub fn progress(len: usize, quiet: bool, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    } else {
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>12} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
    }
    bar.set_prefix(label.to_string());
    bar
}

/// The held-out set and the prompts training must avoid.
pub fn held_out(task: &TaskConfig, n: usize, seed: u64) -> (Vec<Problem>, HashSet<Vec<u32>>) {
    let eval = crate::task::eval_set(task, n, seed);
    let set = eval.iter().map(|p| p.prompt.clone()).collect();
    (eval, set)
}

/// Builds a fresh model and runs the supervised warm-up with a progress bar.
#[allow(clippy::too_many_arguments)]
pub fn warmup(
    model_config: &ModelConfig,
    task: &TaskConfig,
    sft_config: &SftConfig,
    held: &HashSet<Vec<u32>>,
    seed: u64,
    device: &Device,
    quiet: bool,
) -> Transformer {
    let ad = device.clone().autodiff();
    let model = model_config.init(seed, &ad);
    let mut rng = SplitMix64::new(seed ^ 0x5F7_0000);
    let bar = progress(sft_config.steps, quiet, "warm-up");
    let model = sft::warmup(model, task, sft_config, held, &mut rng, &ad, |_, loss| {
        bar.inc(1);
        bar.set_message(format!("loss {loss:.3}"));
    });
    bar.finish_and_clear();
    model
}

/// Greedy accuracy and sampled policy accuracy (4 samples per problem at `temperature`).
pub fn eval_both(
    model: &Transformer,
    task: &TaskConfig,
    problems: &[Problem],
    temperature: f64,
    device: &Device,
) -> (f64, f64) {
    let valid = model.valid();
    let len = task.response_len() + 8;
    (
        sft::evaluate(&valid, problems, len, 256, device),
        sft::evaluate_sampled(&valid, problems, len, temperature, 4, 1, device),
    )
}

/// Greedy accuracy of the trainer's policy on `problems`.
pub fn eval_accuracy(
    model: &Transformer,
    task: &TaskConfig,
    problems: &[Problem],
    device: &Device,
) -> f64 {
    sft::evaluate(
        &model.valid(),
        problems,
        task.response_len() + 8,
        256,
        device,
    )
}

/// The most bytes `metrics.jsonl` may hold when a run resumes (about a million steps).
const MAX_METRICS_BYTES: u64 = 1 << 30;

/// Keeps the lines of `metrics.jsonl` up to `step` (used when resuming), byte for byte: the
/// file is cut after the last complete line of a step `<= step` (a line past the checkpoint,
/// written before a kill, and a partial last line go) and left untouched when nothing goes.
/// Returns the kept lines' metrics.
fn truncate_metrics(path: &Path, step: usize) -> Result<Vec<StepMetrics>, FileError> {
    let bytes = match read_regular(path, MAX_METRICS_BYTES) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FileError::new("read", path, e)),
    };
    let mut kept = Vec::new();
    let mut end = 0;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        if !line.ends_with(b"\n") {
            break;
        }
        match serde_json::from_slice::<StepMetrics>(line) {
            Ok(m) if m.step <= step => kept.push(m),
            _ => break,
        }
        end += line.len();
    }
    if end < bytes.len() {
        write_atomic(path, &bytes[..end])?;
    }
    Ok(kept)
}

/// Runs GRPO steps until `opts.steps`, appending to `metrics.jsonl`, evaluating and
/// checkpointing. Returns every step's metrics (including earlier ones of a resumed run).
///
/// # Errors
///
/// [`TrainError`] from a step (e.g. a non-finite loss, which names the step) or from I/O.
pub fn grpo_loop(
    trainer: &mut Trainer,
    model_config: &ModelConfig,
    eval: &[Problem],
    opts: &LoopOptions,
) -> Result<Vec<StepMetrics>, TrainError> {
    fs::create_dir_all(&opts.out_dir).map_err(|e| FileError::new("create", &opts.out_dir, e))?;
    let path = opts.out_dir.join("metrics.jsonl");
    let mut all = truncate_metrics(&path, trainer.step)?;
    let append = |e: std::io::Error| FileError::new("append to", &path, e);
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .map_err(append)?;
    let bar = progress(opts.steps, opts.quiet, &opts.label);
    bar.set_position(trainer.step as u64);
    let eval_subset = &eval[..opts.eval_size.min(eval.len())];
    // Steps in a row in which no group had any reward variance (no learning signal).
    let mut flat = 0usize;
    while trainer.step < opts.steps {
        let mut m = trainer
            .train_step()
            .map_err(|e| diverged(e, &opts.out_dir, opts.checkpoint_every))?;
        if opts.eval_every > 0 && (m.step % opts.eval_every == 0 || m.step == opts.steps) {
            let (g, s) = eval_both(
                &trainer.model,
                &trainer.task,
                eval_subset,
                trainer.config.temperature,
                &trainer.device,
            );
            m.eval_accuracy = Some(g);
            m.eval_sampled_accuracy = Some(s);
        }
        flat = if m.zero_std_frac >= 1.0 { flat + 1 } else { 0 };
        if flat == NO_SIGNAL_STEPS {
            bar.suspend(|| {
                eprintln!(
                    "warning: no reward variance in any group for {NO_SIGNAL_STEPS} steps in a row (zero_std_frac = 1 at steps {}..={}): GRPO gets no learning signal; check that --max-completion-length fits a correct answer, lower --difficulty or warm up longer",
                    m.step + 1 - NO_SIGNAL_STEPS,
                    m.step
                );
            });
        }
        writeln!(file, "{}", serde_json::to_string(&m).expect("serialisable")).map_err(append)?;
        file.flush().map_err(append)?;
        bar.inc(1);
        bar.set_message(format!(
            "reward {:.2} acc {:.2}{}",
            m.reward_mean,
            m.accuracy,
            m.eval_sampled_accuracy
                .map_or(String::new(), |a| format!(" held-out {a:.3}"))
        ));
        all.push(m);
        if opts.checkpoint_every > 0 && trainer.step.is_multiple_of(opts.checkpoint_every) {
            checkpoint::save(trainer, model_config, &opts.run, &opts.out_dir)
                .map_err(|e| diverged(e, &opts.out_dir, opts.checkpoint_every))?;
        }
        crate::fault::step_done();
    }
    bar.finish_and_clear();
    Ok(all)
}

/// A non-finite step becomes [`TrainError::Diverged`], naming the run's last checkpoint
/// (which is finite: nothing non-finite is saved); other errors pass through.
fn diverged(e: TrainError, out: &Path, checkpoint_every: usize) -> TrainError {
    match e {
        TrainError::NonFiniteLoss { step, detail } => {
            let checkpoint = if checkpoint_every > 0 {
                checkpoint::latest(out).and_then(|p| {
                    let step = checkpoint::read_state(&p).ok()?.step;
                    Some((p, step))
                })
            } else {
                None
            };
            TrainError::Diverged {
                step,
                detail,
                checkpoint,
            }
        }
        e => e,
    }
}
