//! `flowtracer causal`: the causal test of credit ([`crate::causal`]) on a saved model.
//!
//! Masks the `--fraction` of reasoning tokens each credit method ranks highest (the method's
//! own tie rule; bottom flow its lowest) from every later query, decodes the answer again,
//! and reports how often it changes and how often a correct answer becomes wrong, with 95%
//! Wilson intervals: `causal.json`, `causal.md` and `causal.svg` in `--out`.

use core::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use flowtracer_core::baselines::CreditMethod;

use super::CliError;
use super::knobs::{Knobs, named};
use crate::causal::{CausalConfig, CausalResult, causal_test};
use crate::checkpoint::load_model;
use crate::error::FileError;
use crate::plot::{BarGroup, bar_chart};
use crate::run::progress;
use crate::task::eval_set;

/// Arguments of `flowtracer causal`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The model's task, shape and `--seed` (its held-out set); the GRPO knobs are unused.
    #[command(flatten)]
    pub knobs: Knobs,
    /// The model to test: a `warmup.bpk`, a `final.bpk` of a compare run, or a checkpoint's
    /// `model.bpk` (of the shape and task the knobs give).
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// Held-out problems (the first of `--seed`'s held-out set; keep it at most the run's
    /// `--eval-size` so that none was trained on).
    #[arg(long, default_value_t = 500)]
    pub problems: usize,
    /// Fraction of reasoning tokens masked.
    #[arg(long, default_value_t = 0.2)]
    pub fraction: f64,
    /// Draws of the `random` method, pooled.
    #[arg(long, default_value_t = 5)]
    pub random_draws: usize,
    /// Credit methods to test (`uniform` scores nothing and is refused).
    #[arg(long, value_parser = named::<CreditMethod>(CreditMethod::NAMES), value_delimiter = ',', default_values_t = CreditMethod::ALL.iter().copied().filter(|&m| m != CreditMethod::Uniform).collect::<Vec<_>>())]
    pub methods: Vec<CreditMethod>,
    /// A name for the model in the report (e.g. `warm-up`, `after GRPO`).
    #[arg(long, default_value = "model")]
    pub label: String,
    /// Output directory (causal.json, causal.md, causal.svg).
    #[arg(long, default_value = "runs/causal")]
    pub out: PathBuf,
}

/// Runs `flowtracer causal`.
///
/// # Errors
///
/// A [`CliError`]: bad knobs or a bad model file (exit code 2), a failed write (exit
/// code 1).
pub fn run(args: Args) -> Result<(), CliError> {
    let k = &args.knobs;
    k.validate()?;
    if args.problems == 0 || args.problems > crate::config::MAX_EVAL_SIZE {
        return Err(CliError::bad_input(format!(
            "--problems must be in 1..={}, got {}",
            crate::config::MAX_EVAL_SIZE,
            args.problems
        )));
    }
    if !(args.fraction > 0.0 && args.fraction <= 1.0) {
        return Err(CliError::bad_input(format!(
            "--fraction must be in (0, 1], got {}",
            args.fraction
        )));
    }
    if !(1..=100).contains(&args.random_draws) {
        return Err(CliError::bad_input(format!(
            "--random-draws must be in 1..=100, got {}",
            args.random_draws
        )));
    }
    if args.methods.is_empty() || args.methods.contains(&CreditMethod::Uniform) {
        return Err(CliError::bad_input(
            "--methods must name at least one method, and not uniform (it scores nothing)",
        ));
    }
    let device = k.device();
    let model = load_model(&k.model(), &args.model, &device)
        .map_err(CliError::bad_input)?
        .valid();
    let task = k.task();
    let problems = eval_set(&task, args.problems, k.seed);
    let config = CausalConfig {
        fraction: args.fraction,
        random_draws: args.random_draws,
        max_completion_length: k.completion_length(),
        max_answer_length: task.response_len(),
        batch_size: 128,
    };
    let t0 = Instant::now();
    let bar = progress(1, k.quiet, "causal");
    let result = causal_test(
        &model,
        &problems,
        &args.methods,
        &config,
        &device,
        |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    write(&args, &task.describe(), &result, secs).map_err(CliError::failure)
}

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

fn write(args: &Args, task: &str, r: &CausalResult, secs: f64) -> Result<(), FileError> {
    std::fs::create_dir_all(&args.out).map_err(|e| FileError::new("create", &args.out, e))?;
    let json_path = args.out.join("causal.json");
    super::runs::write_json(
        &json_path,
        &serde_json::json!({
            "model": args.model.display().to_string(),
            "label": args.label,
            "task": task,
            "seed": args.knobs.seed,
            "fraction": args.fraction,
            "random_draws": args.random_draws,
            "secs": secs,
            "result": r,
        }),
    )?;
    let mut md = String::new();
    let _ = writeln!(md, "# Causal test: {} ({task})\n", args.label);
    let _ = writeln!(
        md,
        "Model `{}`, seed {}: {} held-out problems, {} tested (greedy completion with an answer after a non-empty reasoning; mean reasoning {:.1} tokens), unmasked answer correct on {} ({}%); it equals the completion's own answer on {}. Each method masks ceil({} × reasoning) tokens (mean per trial below) from every later query in every layer; `random` pools {} draws. Rates with 95% Wilson intervals. Wall time {secs:.0} s.\n",
        args.model.display(),
        args.knobs.seed,
        r.problems,
        r.tested,
        r.mean_reasoning,
        r.baseline_correct,
        pct(r.baseline_correct as f64 / r.tested.max(1) as f64),
        r.baseline_matches_completion,
        args.fraction,
        args.random_draws,
    );
    let _ = writeln!(
        md,
        "| method | trials | masked tokens | answer changed % [95% CI] | correct → wrong % [95% CI] | wrong → correct | unscored |\n|---|---|---|---|---|---|---|"
    );
    let mut groups = Vec::new();
    for row in &r.rows {
        let (c, (cl, ch)) = row.change();
        let (v, (vl, vh)) = row.reversal();
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {} [{}, {}] | {} [{}, {}] | {} | {} |",
            row.method,
            row.trials,
            row.mean_masked,
            pct(c),
            pct(cl),
            pct(ch),
            pct(v),
            pct(vl),
            pct(vh),
            row.fixed,
            row.unscored
        );
        groups.push(BarGroup {
            label: row.method.to_string(),
            bars: vec![
                (100.0 * c, (100.0 * cl, 100.0 * ch)),
                (100.0 * v, (100.0 * vl, 100.0 * vh)),
            ],
        });
    }
    let _ = writeln!(md, "\n![causal test](causal.svg)");
    crate::atomic::write_atomic(&args.out.join("causal.md"), md.as_bytes())?;
    bar_chart(
        &args.out.join("causal.svg"),
        &format!(
            "masking {}% of reasoning tokens: {} ({task})",
            100.0 * args.fraction,
            args.label
        ),
        "% of trials (95% Wilson interval)",
        &["answer changed", "correct -> wrong"],
        &groups,
    )?;
    println!("{md}");
    println!("wrote {}", args.out.display());
    Ok(())
}
