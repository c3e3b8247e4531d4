//! `flowtracer demo`: warm-up + FlowTracer GRPO on the built-in task, with a report.

use core::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use super::CliError;
use super::knobs::Knobs;
use super::train::{Start, grpo_session, warmup};
use crate::atomic::write_atomic;
use crate::metrics::StepMetrics;
use crate::plot::{Series, line_chart};
use crate::run;

/// Arguments of `flowtracer demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Run knobs (the defaults are the demo).
    #[command(flatten)]
    pub knobs: Knobs,
    /// Output directory.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
}

/// Mean of `f` over the metrics where it is defined.
pub fn mean_of(metrics: &[StepMetrics], f: impl Fn(&StepMetrics) -> Option<f64>) -> Option<f64> {
    let v: Vec<f64> = metrics.iter().filter_map(f).collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Runs `flowtracer demo`.
///
/// # Errors
///
/// A [`CliError`]: bad knobs (exit code 2), a failed write or a non-finite loss (exit
/// code 1).
pub fn run(args: Args) -> Result<(), CliError> {
    let k = &args.knobs;
    k.validate()?;
    let _lock = crate::atomic::DirLock::acquire(&args.out).map_err(CliError::bad_input)?;
    let t0 = Instant::now();
    let (eval, held) = run::held_out(&k.task(), k.eval_size, k.seed);
    let _ = std::fs::remove_file(args.out.join("metrics.jsonl"));
    let (model, (warm_greedy, warm_sampled), warm_secs) = warmup(k, &held, &eval, &args.out)?;
    println!(
        "warm-up accuracy: {:.1}% sampled at T={} (greedy {:.1}%) on {} held-out problems ({:.0} s)",
        100.0 * warm_sampled,
        k.temperature,
        100.0 * warm_greedy,
        eval.len(),
        warm_secs
    );
    let s = grpo_session(
        k,
        k.credit,
        k.seed,
        Start::Model {
            model: Box::new(model),
            run: Default::default(),
        },
        held,
        &eval,
        &args.out,
        0,
        "grpo",
    )?;
    let total = t0.elapsed().as_secs_f64();
    let delta = 100.0 * (s.final_sampled - warm_sampled);
    let delta_greedy = 100.0 * (s.final_accuracy - warm_greedy);
    println!(
        "final accuracy:   {:.1}% sampled at T={} ({:+.1} points; greedy {:.1}%, {:+.1} points) on {} held-out problems (GRPO {:.0} s, total {:.0} s)",
        100.0 * s.final_sampled,
        k.temperature,
        delta,
        100.0 * s.final_accuracy,
        delta_greedy,
        eval.len(),
        s.grpo_secs,
        total
    );
    // Learning curves: held-out sampled and greedy accuracy (periodic).
    let mut sampled_pts = vec![(0.0, warm_sampled)];
    sampled_pts.extend(
        s.metrics
            .iter()
            .filter_map(|m| m.eval_sampled_accuracy.map(|a| (m.step as f64, a))),
    );
    let mut greedy_pts = vec![(0.0, warm_greedy)];
    greedy_pts.extend(
        s.metrics
            .iter()
            .filter_map(|m| m.eval_accuracy.map(|a| (m.step as f64, a))),
    );
    let n_curve = k.eval_curve_size.min(eval.len());
    let svg = args.out.join("learning_curve.svg");
    line_chart(
        &svg,
        "flowtracer demo: GRPO with FlowTracer credit",
        "GRPO step",
        "accuracy",
        &[
            Series {
                label: format!(
                    "held-out, sampled at T={} ({n_curve} problems x 4)",
                    k.temperature
                ),
                points: sampled_pts,
                band: None,
            },
            Series {
                label: format!("held-out, greedy ({n_curve} problems)"),
                points: greedy_pts,
                band: None,
            },
        ],
    )
    .map_err(CliError::failure)?;
    let frac = mean_of(&s.metrics, |m| Some(m.flow.scoring_time_frac)).unwrap_or(0.0);
    let step = mean_of(&s.metrics, |m| Some(m.step_secs)).unwrap_or(0.0);
    let mut r = String::new();
    let _ = writeln!(r, "# flowtracer demo\n");
    let _ = writeln!(
        r,
        "Warm-up ({} supervised steps) then {} GRPO steps with `{}` credit (rho {}, gamma {}), seed {}.\n",
        k.warmup_steps,
        k.steps,
        k.credit.name(),
        k.rho,
        k.gamma,
        k.seed
    );
    let _ = writeln!(
        r,
        "| held-out accuracy ({} problems) | sampled at T={} (4 per problem; what GRPO optimises) | greedy |\n|---|---|---|",
        eval.len(),
        k.temperature
    );
    let _ = writeln!(
        r,
        "| after warm-up | {:.1}% | {:.1}% |",
        100.0 * warm_sampled,
        100.0 * warm_greedy
    );
    let _ = writeln!(
        r,
        "| after GRPO | {:.1}% | {:.1}% |",
        100.0 * s.final_sampled,
        100.0 * s.final_accuracy
    );
    let _ = writeln!(
        r,
        "| change | {delta:+.1} points | {delta_greedy:+.1} points |\n"
    );
    let _ = writeln!(
        r,
        "Wall time: {total:.0} s total (warm-up {warm_secs:.0} s, GRPO {:.0} s, {step:.2} s/step).",
        s.grpo_secs
    );
    let _ = writeln!(
        r,
        "Scoring overhead (attention readback + FlowTracer + shaping): {:.1}% of a GRPO step.\n",
        100.0 * frac
    );
    let _ = writeln!(r, "Flow diagnostics (mean over steps):\n");
    let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |x| format!("{x:.4}"));
    let _ = writeln!(
        r,
        "- weight mean: {}",
        fmt(mean_of(&s.metrics, |m| Some(m.flow.weight_mean)))
    );
    let _ = writeln!(
        r,
        "- answer mass: {}",
        fmt(mean_of(&s.metrics, |m| m.flow.answer_mass))
    );
    let _ = writeln!(
        r,
        "- max conservation residual (|sum_k W'[i][k] - 1| over live tokens): {}",
        s.metrics
            .iter()
            .filter_map(|m| m.flow.conservation_residual)
            .reduce(f64::max)
            .map_or_else(|| "n/a".to_string(), |x| format!("{x:.1e}"))
    );
    let _ = writeln!(
        r,
        "- no-answer fraction: {}",
        fmt(mean_of(&s.metrics, |m| Some(m.flow.no_answer_frac)))
    );
    let _ = writeln!(
        r,
        "- credit fidelity (precision of shaped tokens vs decisive tokens): {}\n",
        fmt(mean_of(&s.metrics, |m| m.flow.fidelity))
    );
    let _ = writeln!(r, "![learning curve](learning_curve.svg)\n");
    let _ = writeln!(r, "Per-step metrics: `metrics.jsonl`.");
    write_atomic(&args.out.join("report.md"), r.as_bytes()).map_err(CliError::failure)?;
    println!("wrote {}", args.out.display());
    Ok(())
}
