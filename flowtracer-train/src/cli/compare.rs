//! `flowtracer compare`: the same budget for several credit methods over several seeds.
//!
//! Per seed, one warm-up is shared by every method (same starting model, same held-out
//! set), then each method runs the same number of GRPO steps with the same seed (so the same
//! problems are drawn; completions differ once the policies differ). The report gives the
//! final held-out accuracy (mean ± sample std over seeds), the paired difference to uniform
//! GRPO (mean, standard error, sign test), the steps to reach a threshold, the credit
//! fidelity of each method and the scoring overhead. Every run is kept as it finishes and an
//! interrupted one resumes from its checkpoint (`cli/runs.rs`), so a study can run in
//! pieces.

use alloc::collections::BTreeMap;
use core::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use flowtracer_core::baselines::CreditMethod;
use serde::{Deserialize, Serialize};

use super::CliError;
use super::demo::mean_of;
use super::knobs::{Knobs, named};
use super::pilot::plateau_report;
use super::runs;
use super::train::{Start, grpo_session, warmup};
use crate::atomic::write_atomic;
use crate::credit;
use crate::error::{FileError, TrainError};
use crate::model::Transformer;
use crate::plot::{Series, line_chart};
use crate::run;
use crate::sampling::Completion;
use crate::task::Problem;
use crate::trainer::Trainer;

/// Arguments of `flowtracer compare`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Run knobs (`--credit` is ignored: see `--methods`).
    #[command(flatten)]
    pub knobs: Knobs,
    /// Number of seeds (0, 1, ..., n - 1 added to `--seed`).
    #[arg(long, default_value_t = 5)]
    pub seeds: u64,
    /// Credit methods to compare.
    #[arg(long, value_parser = named::<CreditMethod>(CreditMethod::NAMES), value_delimiter = ',', default_values_t = vec![CreditMethod::Uniform, CreditMethod::FlowTracer, CreditMethod::Random, CreditMethod::AttentionReceived, CreditMethod::PredictiveEntropy])]
    pub methods: Vec<CreditMethod>,
    /// Accuracy threshold for "steps to threshold" (absolute, held-out curve).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Output directory (report.md, learning_curves.svg, results.json, per-run metrics,
    /// checkpoints and results: a later compare with the same knobs keeps the finished runs
    /// and resumes an interrupted one).
    #[arg(long, default_value = "runs/compare")]
    pub out: PathBuf,
    /// Checkpoint each run every this many GRPO steps (0: never; an interrupted run then
    /// starts over).
    #[arg(long, default_value_t = 10)]
    pub checkpoint_every: usize,
    /// Train nothing: re-render report.md and learning_curves.svg from the results.json an
    /// earlier run wrote to `--out` (pass that run's knobs and methods again).
    #[arg(long)]
    pub report_only: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunResult {
    /// Serialised by its name, as `results.json` always has.
    method: CreditMethod,
    seed: u64,
    warmup_accuracy: f64,
    final_accuracy: f64,
    warmup_greedy: f64,
    final_greedy: f64,
    curve: Vec<(usize, f64)>,
    mean_step_secs: f64,
    scoring_time_frac: f64,
    /// Wall time of the run (GRPO and its evaluations, over every piece of it); absent in
    /// results of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wall_secs: Option<f64>,
}

/// Credit fidelity of `method` with `model` on `problems` with their canonical solutions:
/// mean precision of the selected top-ρ tokens against the decisive tokens.
///
/// # Errors
///
/// The [`TrainError`] of building the trainer or scoring.
pub fn fidelity(
    knobs: &Knobs,
    method: CreditMethod,
    model: &Transformer,
    problems: &[Problem],
) -> Result<Option<f64>, TrainError> {
    if method == CreditMethod::Uniform {
        return Ok(None);
    }
    let trainer = Trainer::new(
        knobs.grpo(method, knobs.seed),
        knobs.task(),
        model.clone(),
        Default::default(),
        knobs.device(),
    )?;
    let completions: Vec<Completion> = problems
        .iter()
        .map(|p| Completion {
            tokens: p.response.clone(),
            truncated: false,
        })
        .collect();
    let zeros = vec![0.0; problems.len()];
    let r = trainer.score(
        model.clone().valid_model(),
        problems.to_vec(),
        completions,
        zeros.clone(),
        zeros,
        17,
    )?;
    let shaping = trainer.config.credit.shaping();
    let mut precisions = Vec::new();
    for (i, p) in problems.iter().enumerate() {
        if let Some(s) = &r.credit.scores[i]
            && let Some(x) = credit::fidelity(s, p.prompt.len(), &p.decisive, &shaping)
        {
            precisions.push(x);
        }
    }
    Ok((!precisions.is_empty()).then(|| precisions.iter().sum::<f64>() / precisions.len() as f64))
}

trait ValidModel {
    fn valid_model(self) -> Transformer;
}

impl ValidModel for Transformer {
    fn valid_model(self) -> Transformer {
        burn::module::Module::valid(&self)
    }
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let s = if v.len() > 1 {
        (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (m, s)
}

/// Runs `flowtracer compare`.
///
/// Resumable per run (see `cli/runs.rs`): finished runs under `--out` are kept, an
/// interrupted one continues from its latest checkpoint, a seed's warm-up is reused.
///
/// # Errors
///
/// A [`CliError`]: bad knobs or kept files of other knobs (exit code 2), a failed run or
/// write (exit code 1); with `--report-only`, see [`report_only`].
pub fn run(args: Args) -> Result<(), CliError> {
    if args.report_only {
        return report_only(&args);
    }
    let k = &args.knobs;
    k.validate()?;
    let _lock = crate::atomic::DirLock::acquire(&args.out).map_err(CliError::bad_input)?;
    if args.seeds == 0 || args.methods.is_empty() {
        return Err(CliError::bad_input(
            "compare needs at least one seed and one method",
        ));
    }
    let mut results: Vec<RunResult> = Vec::new();
    let mut fid: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    // Wall time of every piece of work the results hold, over all the processes that made
    // them (warm-ups and runs).
    let mut total = 0.0;
    for s in 0..args.seeds {
        let seed = k.seed + s;
        let mut ks = k.clone();
        ks.seed = seed;
        let seed_dir = args.out.join(format!("seed-{seed}"));
        let (eval, held) = run::held_out(&ks.task(), ks.eval_size, seed);
        let (model, warm) = seed_warmup(&ks, &args.methods, &held, &eval, &seed_dir)?;
        total += warm.secs;
        let (warm_greedy, warm_acc) = (warm.greedy, warm.sampled);
        if !k.quiet {
            eprintln!("seed {seed}: warm-up accuracy {:.1}%", 100.0 * warm_acc);
        }
        for &m in &args.methods {
            if let Some(Some(p)) = warm.fidelity.get(m.name()) {
                fid.entry(m.to_string()).or_default().push(*p);
            }
        }
        for &m in &args.methods {
            let dir = seed_dir.join(m.name());
            let key = runs::RunKey::new(&ks, m, seed);
            if let Some(r) = runs::kept_result::<RunResult>(&dir, &key)? {
                if !k.quiet {
                    eprintln!("seed {seed} {:>20}: kept ({})", m.name(), dir.display());
                }
                total += r.wall_secs.unwrap_or(0.0);
                results.push(r);
                continue;
            }
            let t_run = Instant::now();
            let start = match runs::resume_start(&dir, &key, held.clone(), &ks)? {
                Some(start) => start,
                None => Start::Model {
                    model: Box::new(model.clone()),
                    run: Default::default(),
                },
            };
            let label = format!("{}/{seed}", m.name());
            let sess = grpo_session(
                &ks,
                m,
                seed,
                start,
                held.clone(),
                &eval,
                &dir,
                args.checkpoint_every,
                &label,
            )?;
            let mut curve = vec![(0, warm_acc)];
            curve.extend(
                sess.metrics
                    .iter()
                    .filter_map(|x| x.eval_sampled_accuracy.map(|a| (x.step, a))),
            );
            if !k.quiet {
                eprintln!(
                    "seed {seed} {:>20}: final {:.1}% ({:.0} s)",
                    m.name(),
                    100.0 * sess.final_sampled,
                    sess.grpo_secs
                );
            }
            // A resumed run's earlier pieces: the step times of their metrics.
            let earlier: f64 = sess
                .metrics
                .iter()
                .filter(|x| x.step <= sess.start_step)
                .map(|x| x.step_secs)
                .sum();
            let result = RunResult {
                method: m,
                seed,
                warmup_accuracy: warm_acc,
                final_accuracy: sess.final_sampled,
                warmup_greedy: warm_greedy,
                final_greedy: sess.final_accuracy,
                curve,
                mean_step_secs: mean_of(&sess.metrics, |x| Some(x.step_secs)).unwrap_or(0.0),
                scoring_time_frac: mean_of(&sess.metrics, |x| Some(x.flow.scoring_time_frac))
                    .unwrap_or(0.0),
                wall_secs: Some(earlier + t_run.elapsed().as_secs_f64()),
            };
            total += result.wall_secs.unwrap_or(0.0);
            runs::save_model(&sess.model, &dir.join("final.bpk")).map_err(CliError::failure)?;
            runs::write_json(
                &dir.join("result.json"),
                &runs::Kept {
                    key,
                    result: result.clone(),
                },
            )
            .map_err(CliError::failure)?;
            results.push(result);
        }
    }
    write_report(&args, &results, &fid, Some(total)).map_err(CliError::failure)
}

/// A seed's warm-up model and record: read back from `seed_dir` when an earlier `compare`
/// made them with the same knobs, else trained (and saved); the credit fidelity of any
/// method in `methods` the record lacks is measured on it and added.
fn seed_warmup(
    ks: &Knobs,
    methods: &[CreditMethod],
    held: &std::collections::HashSet<Vec<u32>>,
    eval: &[Problem],
    seed_dir: &std::path::Path,
) -> Result<(Transformer, runs::WarmRecord), CliError> {
    let key = runs::WarmKey::new(ks);
    let record_path = seed_dir.join("warmup.json");
    let model_path = seed_dir.join("warmup.bpk");
    let (model, mut record) = match runs::read_json::<runs::WarmRecord>(&record_path)? {
        Some(r) if r.key == key => {
            let model = crate::checkpoint::load_model(&ks.model(), &model_path, &ks.device())?;
            (model, r)
        }
        Some(_) => return Err(runs::other_knobs(&record_path)),
        None => {
            let (model, (greedy, sampled), secs) = warmup(ks, held, eval, seed_dir)?;
            let record = runs::WarmRecord {
                key,
                greedy,
                sampled,
                secs,
                fidelity: BTreeMap::new(),
                fidelity_rho: Some(ks.rho),
            };
            (model, record)
        }
    };
    // Credit fidelity of every method on the warm-up model (canonical solutions), at this
    // `rho`: measured again when the kept one was measured at another.
    let probe = &eval[..eval.len().min(200)];
    let mut changed = !record_path.exists();
    if record.fidelity_rho != Some(ks.rho) {
        record.fidelity.clear();
        record.fidelity_rho = Some(ks.rho);
        changed = true;
    }
    for &m in methods {
        if !record.fidelity.contains_key(m.name()) {
            let f = fidelity(ks, m, &model, probe)?;
            record.fidelity.insert(m.name().to_owned(), f);
            changed = true;
        }
    }
    if changed {
        runs::write_json(&record_path, &record).map_err(CliError::failure)?;
    }
    Ok((model, record))
}

/// `flowtracer compare --report-only`: re-renders the report of an earlier run from its
/// `results.json`, training nothing.
///
/// # Errors
///
/// A [`CliError`] (bad input, exit code 2) if the file is missing, is not a compare
/// result, or the report cannot be written.
pub fn report_only(args: &Args) -> Result<(), CliError> {
    let path = args.out.join("results.json");
    let bytes = crate::atomic::read_regular(&path, 1 << 30)
        .map_err(|e| CliError::bad_input(FileError::new("read", &path, e)))?;
    let saved: Saved = serde_json::from_slice(&bytes).map_err(|e| {
        CliError::bad_input(format!("{} is not a compare result: {e}", path.display()))
    })?;
    if saved.runs.is_empty() {
        return Err(CliError::bad_input(format!(
            "{} holds no runs",
            path.display()
        )));
    }
    write_report(args, &saved.runs, &saved.fidelity, saved.total_secs).map_err(CliError::bad_input)
}

/// What `results.json` holds, read back by `--report-only`.
#[derive(Debug, Deserialize)]
struct Saved {
    runs: Vec<RunResult>,
    fidelity: BTreeMap<String, Vec<f64>>,
    #[serde(default)]
    total_secs: Option<f64>,
}

/// The paired difference to uniform of one method's final sampled accuracy, in points:
/// mean, sample std, seeds where it is better, seeds compared.
fn paired_vs_uniform(method: &[f64], uniform: &[f64]) -> (f64, f64, usize, usize) {
    let d: Vec<f64> = method
        .iter()
        .zip(uniform)
        .map(|(a, b)| 100.0 * (a - b))
        .collect();
    let (m, s) = mean_std(&d);
    (m, s, d.iter().filter(|x| **x > 0.0).count(), d.len())
}

/// The two-sided sign test: the probability, under a fair coin, of a split of `wins +
/// losses` seeds at least as uneven as the one seen (ties are dropped before). 1 for no
/// seeds.
///
/// # Complexity
///
/// O(n) for `n = wins + losses` (binomial coefficients in `f64`; exact to rounding for the
/// seed counts of a study).
pub fn sign_test(wins: usize, losses: usize) -> f64 {
    let n = wins + losses;
    let k = wins.min(losses);
    let mut c = 1.0f64;
    let mut tail = 0.0;
    for i in 0..=k {
        if i > 0 {
            c *= (n + 1 - i) as f64 / i as f64;
        }
        tail += c;
    }
    (2.0 * tail / 2f64.powi(n as i32)).min(1.0)
}

fn write_report(
    args: &Args,
    results: &[RunResult],
    fid: &BTreeMap<String, Vec<f64>>,
    total: Option<f64>,
) -> Result<(), FileError> {
    let k = &args.knobs;
    let warm: Vec<f64> = {
        let mut seen = BTreeMap::new();
        for r in results {
            seen.insert(r.seed, r.warmup_accuracy);
        }
        seen.into_values().collect()
    };
    let (wm, ws) = mean_std(&warm);
    let threshold = args.threshold.unwrap_or(wm + 0.05);
    let mut series = Vec::new();
    let mut table = String::new();
    let uniform_final: Vec<f64> = results
        .iter()
        .filter(|r| r.method == CreditMethod::Uniform)
        .map(|r| r.final_accuracy)
        .collect();
    for &m in &args.methods {
        let runs: Vec<&RunResult> = results.iter().filter(|r| r.method == m).collect();
        if runs.is_empty() {
            continue;
        }
        let finals: Vec<f64> = runs.iter().map(|r| r.final_accuracy).collect();
        let (fm, fs) = mean_std(&finals);
        let greedy: Vec<f64> = runs.iter().map(|r| r.final_greedy).collect();
        let (gm, gs) = mean_std(&greedy);
        let reach: Vec<usize> = runs
            .iter()
            .filter_map(|r| {
                r.curve
                    .iter()
                    .find(|(s, a)| *s > 0 && *a >= threshold)
                    .map(|(s, _)| *s)
            })
            .collect();
        let steps = if reach.is_empty() {
            "never".to_string()
        } else {
            let mean = reach.iter().sum::<usize>() as f64 / reach.len() as f64;
            format!("{mean:.0} ({}/{} seeds)", reach.len(), runs.len())
        };
        let delta_vs_uniform = if m != CreditMethod::Uniform && uniform_final.len() == finals.len()
        {
            let (dm, ds, wins, seeds) = paired_vs_uniform(&finals, &uniform_final);
            let se = ds / (seeds as f64).sqrt();
            let losses = finals
                .iter()
                .zip(&uniform_final)
                .filter(|(a, b)| a < b)
                .count();
            format!(
                "{dm:+.1} ± {se:.1} ({wins}/{seeds} seeds better, sign test p = {:.2})",
                sign_test(wins, losses)
            )
        } else {
            "–".to_string()
        };
        let f = fid.get(m.name()).map_or("n/a".to_string(), |v| {
            let (a, b) = mean_std(v);
            format!("{:.3} ± {:.3}", a, b)
        });
        let step_secs = runs.iter().map(|r| r.mean_step_secs).sum::<f64>() / runs.len() as f64;
        let frac = runs.iter().map(|r| r.scoring_time_frac).sum::<f64>() / runs.len() as f64;
        let _ = writeln!(
            table,
            "| {} | {:.1} ± {:.1} | {:.1} ± {:.1} | {} | {} | {} | {:.2} | {:.1}% |",
            m.name(),
            100.0 * fm,
            100.0 * fs,
            100.0 * gm,
            100.0 * gs,
            delta_vs_uniform,
            steps,
            f,
            step_secs,
            100.0 * frac
        );
        // Mean gain over the seed's own warm-up, with std band (curves share their eval
        // steps). Seeds start from warm-ups of very different accuracy; the gain removes that
        // offset, which would otherwise dominate every band.
        let len = runs.iter().map(|r| r.curve.len()).min().unwrap_or(0);
        let mut pts = Vec::new();
        let mut band = Vec::new();
        for i in 0..len {
            let v: Vec<f64> = runs
                .iter()
                .map(|r| 100.0 * (r.curve[i].1 - r.warmup_accuracy))
                .collect();
            let (a, b) = mean_std(&v);
            pts.push((runs[0].curve[i].0 as f64, a));
            band.push(b);
        }
        // Bands for the two methods the report is about; eight bands would hide the lines.
        let banded = matches!(m, CreditMethod::Uniform | CreditMethod::FlowTracer);
        series.push(Series {
            label: m.name().to_string(),
            points: pts,
            band: banded.then_some(band),
        });
    }
    std::fs::create_dir_all(&args.out).map_err(|e| FileError::new("create", &args.out, e))?;
    line_chart(
        &args.out.join("learning_curves.svg"),
        &format!(
            "gain over the seed's warm-up, mean over {} seeds (band: ± std)",
            args.seeds
        ),
        "GRPO step",
        &format!("sampled accuracy at T={} (points)", k.temperature),
        &series,
    )?;
    let mut r = String::new();
    let _ = writeln!(r, "# flowtracer compare\n");
    let _ = writeln!(
        r,
        "Task: {}; model d={} L={} H={}; warm-up {} steps; GRPO {} steps x {} prompts x G={} (lr {}, temperature {}, beta {}, loss {}); rho {}, gamma {}, apply to {}; seeds {}..{}.{}\n",
        k.task().describe(),
        k.d_model,
        k.layers,
        k.heads,
        k.warmup_steps,
        k.steps,
        k.prompts_per_step,
        k.num_generations,
        k.lr,
        k.temperature,
        k.beta,
        k.loss_type,
        k.rho,
        k.gamma,
        k.apply_to,
        k.seed,
        k.seed + args.seeds - 1,
        total.map_or(String::new(), |t| format!(" Total wall time {t:.0} s."))
    );
    let _ = writeln!(
        r,
        "Warm-up accuracy (shared by all methods of a seed): {:.1} ± {:.1}% sampled at T={} (4 samples per problem), greedy {:.1}%, on {} held-out problems. \"Sampled\" accuracy is the policy's expected exact-match reward, the quantity GRPO maximises; greedy decoding is reported alongside.\n",
        100.0 * wm,
        100.0 * ws,
        k.temperature,
        100.0 * results.iter().map(|r| r.warmup_greedy).sum::<f64>() / results.len().max(1) as f64,
        k.eval_size
    );
    let _ = writeln!(
        r,
        "| method | final accuracy % (sampled, mean ± std) | final greedy % | vs uniform (sampled, paired mean ± standard error, points) | steps to {:.0}% (sampled) | credit fidelity | s/step | scoring time |\n|---|---|---|---|---|---|---|---|",
        100.0 * threshold
    );
    r.push_str(&table);
    let _ = writeln!(r, "\n{}", verdict(results));
    let _ = writeln!(r, "\n{}", pilot_paragraph(results));
    let _ = writeln!(
        r,
        "\nCredit fidelity: precision of the method's top-ρ response tokens against the tokens the generator knows to be decisive ({}), on 200 held-out problems with their canonical solutions, scored with the warm-up model. Random selection scores the base rate.\n",
        match k.task {
            crate::task::TaskKind::Chain => {
                "operand and result digits of the steps the answer depends on, and the answer digit"
            }
            crate::task::TaskKind::Countdown => {
                "the numbers and operators of every step and of the answer's equation"
            }
        }
    );
    let _ = writeln!(
        r,
        "Learning curves: held-out sampled accuracy ({} problems, every {} steps) minus the seed's warm-up accuracy, in points.\n\n![learning curves](learning_curves.svg)\n",
        k.eval_curve_size, k.eval_every
    );
    write_atomic(&args.out.join("report.md"), r.as_bytes())?;
    let results_path = args.out.join("results.json");
    let json = serde_json::to_vec_pretty(
        &serde_json::json!({ "runs": results, "fidelity": fid, "total_secs": total }),
    )
    .map_err(|e| FileError::new("encode", &results_path, e))?;
    write_atomic(&results_path, &json)?;
    println!("{r}");
    println!("wrote {}", args.out.display());
    Ok(())
}

/// The report's pilot paragraph ([`plateau_report`]) on the mean held-out curve of `uniform`
/// (over its seeds), or of the first method when uniform did not run.
fn pilot_paragraph(results: &[RunResult]) -> String {
    let Some(first) = results.first() else {
        return String::new();
    };
    let method = if results.iter().any(|r| r.method == CreditMethod::Uniform) {
        CreditMethod::Uniform
    } else {
        first.method
    };
    let runs: Vec<&RunResult> = results.iter().filter(|r| r.method == method).collect();
    let len = runs.iter().map(|r| r.curve.len()).min().unwrap_or(0);
    let curve: Vec<(usize, f64)> = (0..len)
        .map(|i| {
            let mean = runs.iter().map(|r| r.curve[i].1).sum::<f64>() / runs.len() as f64;
            (runs[0].curve[i].0, mean)
        })
        .collect();
    plateau_report(method, runs.len(), &curve)
}

/// The report's plain-language answer: did FlowTracer beat uniform GRPO, by how much, with
/// what spread (paired over seeds), and which method ended highest.
fn verdict(results: &[RunResult]) -> String {
    let finals = |method: CreditMethod| -> Vec<f64> {
        results
            .iter()
            .filter(|r| r.method == method)
            .map(|r| r.final_accuracy)
            .collect()
    };
    let (uniform, flow) = (
        finals(CreditMethod::Uniform),
        finals(CreditMethod::FlowTracer),
    );
    let mut out = String::new();
    if !uniform.is_empty() && uniform.len() == flow.len() {
        let (dm, ds, wins, seeds) = paired_vs_uniform(&flow, &uniform);
        let se = ds / (seeds as f64).sqrt();
        let outcome = if dm > 0.0 { "beat" } else { "did not beat" };
        let _ = write!(
            out,
            "**FlowTracer vs uniform GRPO:** FlowTracer {outcome} uniform GRPO on this task: \
             {dm:+.1} points of final sampled accuracy, paired over {seeds} seeds \
             (std of the per-seed difference {ds:.1}, standard error of the mean {se:.1}; \
             FlowTracer ahead on {wins}/{seeds} seeds). "
        );
        let losses = flow.iter().zip(&uniform).filter(|(a, b)| a < b).count();
        let _ = write!(
            out,
            "Two-sided sign test over the seeds (ties dropped): p = {:.2}. ",
            sign_test(wins, losses)
        );
    }
    let mut means: Vec<(CreditMethod, f64)> = Vec::new();
    for r in results {
        if !means.iter().any(|(m, _)| *m == r.method) {
            let v = finals(r.method);
            means.push((r.method, mean_std(&v).0));
        }
    }
    if let Some((best, acc)) = means.iter().max_by(|a, b| a.1.total_cmp(&b.1)) {
        let _ = write!(
            out,
            "Highest mean final sampled accuracy: `{best}` ({:.1}%).",
            100.0 * acc
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::sign_test;

    /// Hand-computed: 6 of 6 seeds one way: 2 / 64; 5 to 1: 2 · 7 / 64; 3 to 3: capped at 1.
    #[test]
    fn sign_test_on_hand_computed_cases() {
        const TOL: f64 = 1e-15;
        assert!((sign_test(6, 0) - 2.0 / 64.0).abs() < TOL);
        assert!((sign_test(0, 6) - 2.0 / 64.0).abs() < TOL);
        assert!((sign_test(5, 1) - 14.0 / 64.0).abs() < TOL);
        assert_eq!(sign_test(3, 3), 1.0);
        assert_eq!(sign_test(0, 0), 1.0);
        assert!((sign_test(1, 0) - 1.0).abs() < TOL);
    }
}
