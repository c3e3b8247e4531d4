//! The trainer's device scoring (feature `wgpu`, `src/gpu_credit.rs`): on the wgpu backend
//! (lavapipe on CPU-only machines) a tiny model's rollouts are scored through
//! flowtracer-gpu's Q/K kernels, and the weights must equal the CPU path's on the same
//! rollout (the head-mean attention read back and scored by flowtracer-core).
//!
//! Equal means: the device's f32 weight equals the CPU's f64 weight rounded to f32, except
//! at the `k`-th selection boundary, where the two paths' throughputs (f32 on the device,
//! f64 from f32 attention on the CPU) may order two nearly tied tokens differently: there
//! the token's CPU throughput must lie within [`BOUNDARY_REL`] (relative) of the `k`-th
//! token in the method's order (the core's `select_tokens` with `CreditMethod::select`:
//! the `k`-th largest for FlowTracer, the `k`-th smallest for `bottom_flow`). The number of
//! such cases is printed, and so is `flow/scoring_time_frac` of both paths.
//!
//! Without an adapter this fails (lavapipe: `apt-get install mesa-vulkan-drivers
//! libvulkan1`, `XDG_RUNTIME_DIR=/tmp`).

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, DeviceKind};
use flowtracer_core::baselines::{CreditMethod, SplitMix64};
use flowtracer_core::grpo::{ScaleRewards, group_advantages};
use flowtracer_core::shaping::{ShapingConfig, num_selected, select_tokens};
use flowtracer_train::config::{ADV_EPS, GrpoConfig};
use flowtracer_train::credit::CreditConfig;
use flowtracer_train::gpu_credit;
use flowtracer_train::model::ModelConfig;
use flowtracer_train::rollout::Rollout;
use flowtracer_train::sampling::Completion;
use flowtracer_train::task::{TaskConfig, generate};
use flowtracer_train::trainer::Trainer;

/// How close (relative) to the `k`-th CPU throughput in the method's order a token must be
/// for the two paths to select it differently.
const BOUNDARY_REL: f64 = 1e-6;

fn trainer(method: CreditMethod) -> Trainer {
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    let model = ModelConfig {
        d_model: 16,
        n_heads: 2,
        n_layers: 3,
        max_len: 64,
        ..ModelConfig::default()
    }
    .init(5, &device.clone().autodiff());
    let mut config = GrpoConfig {
        num_generations: 4,
        prompts_per_step: 2,
        max_completion_length: 24,
        lr: 1e-3,
        seed: 3,
        ..GrpoConfig::default()
    };
    config.credit.method = method;
    Trainer::new(
        config,
        TaskConfig::level(1),
        model,
        Default::default(),
        device,
    )
    .expect("valid config")
}

/// The CPU path on the rollout's own problems, completions and advantages, with the
/// trainer's current policy.
fn cpu_score(t: &mut Trainer, r: &Rollout) -> Rollout {
    t.device_scoring = false;
    assert!(!gpu_credit::applies(t));
    let cpu = t
        .score(
            t.model.valid(),
            r.problems.clone(),
            r.completions.clone(),
            r.rewards.clone(),
            r.group_advantages.clone(),
            7,
        )
        .expect("cpu score");
    t.device_scoring = true;
    cpu
}

/// Canonical responses (every one has an answer span), so the comparison is never vacuous.
fn fixed(t: &Trainer, seed: u64) -> Rollout {
    let mut rng = SplitMix64::new(seed);
    let mut problems = Vec::new();
    let mut completions = Vec::new();
    for _ in 0..2 {
        let p = generate(&TaskConfig::level(1), &mut rng);
        for _ in 0..4 {
            problems.push(p.clone());
            completions.push(Completion {
                tokens: p.response.clone(),
                truncated: false,
            });
        }
    }
    let rewards = vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0];
    let adv = group_advantages(&rewards, 4, ScaleRewards::Group, ADV_EPS).unwrap();
    t.score(t.model.valid(), problems, completions, rewards, adv, 7)
        .expect("device score")
}

/// The score of the `k`-th token the core selects from `tau[p_len..]` under `shaping`
/// (`k = num_selected(rho, |R|)`), in the core's order (`select_tokens` with the method's
/// `Select`: highest first for `Top`, lowest first for `Bottom`, zeros last, ties to the
/// earlier position): the one token selected with `k` and not with `k - 1`. `None` when
/// nothing is selected.
fn boundary(tau: &[f64], p_len: usize, shaping: &ShapingConfig) -> Option<f64> {
    let response = (p_len..tau.len()).into();
    let len = tau.len() - p_len;
    let k = num_selected(shaping.rho, len);
    if k == 0 {
        return None;
    }
    let chosen = select_tokens(tau, &response, shaping.rho, shaping.select);
    let before = select_tokens(tau, &response, (k - 1) as f64 / len as f64, shaping.select);
    assert_eq!(
        (chosen.len(), before.len()),
        (k, k - 1),
        "nested selections"
    );
    let last = chosen.iter().find(|p| !before.contains(p)).expect("nested");
    Some(tau[*last])
}

/// Compares the two paths' weights; returns (sequences with a selection, boundary cases).
fn compare(what: &str, shaping: &ShapingConfig, dev: &Rollout, cpu: &Rollout) -> (usize, usize) {
    assert_eq!(
        dev.credit.no_answer, cpu.credit.no_answer,
        "{what}: no_answer"
    );
    assert_eq!(dev.credit.unscored, cpu.credit.unscored, "{what}: unscored");
    assert_eq!(dev.credit.answers, cpu.credit.answers, "{what}: answers");
    let (mut selecting, mut boundary_cases) = (0, 0);
    for (i, (wd, wc)) in dev
        .credit
        .weights
        .iter()
        .zip(&cpu.credit.weights)
        .enumerate()
    {
        assert_eq!(wd.len(), wc.len(), "{what} seq {i}: lengths");
        if wc.iter().any(|&w| w != 1.0) {
            selecting += 1;
        }
        let p_len = dev.problems[i].prompt.len();
        for (p, (&d, &c)) in wd.iter().zip(wc).enumerate() {
            if d == f64::from(c as f32) {
                continue;
            }
            // Only a selection boundary may differ: the token's CPU throughput is tied
            // (within BOUNDARY_REL) with the k-th of its response in the method's order.
            let tau = cpu.credit.scores[i]
                .as_ref()
                .unwrap_or_else(|| panic!("{what} seq {i} pos {p}: {d} vs {c}, no CPU score"));
            let kth = boundary(tau, p_len, shaping)
                .unwrap_or_else(|| panic!("{what} seq {i} pos {p}: {d} vs {c}, k = 0"));
            assert!(
                (tau[p] - kth).abs() <= BOUNDARY_REL * kth.abs(),
                "{what} seq {i} pos {p}: weight {d} (device) vs {c} (cpu), tau {} vs k-th {kth}",
                tau[p]
            );
            boundary_cases += 1;
        }
    }
    (selecting, boundary_cases)
}

/// The boundary follows the method: the `k`-th largest for FlowTracer, the `k`-th smallest
/// (positive) for `bottom_flow`, ties to the earlier position, zeros last (the old rule took
/// the `k`-th largest for both, so a genuine bottom-k tie failed).
#[test]
fn the_boundary_is_the_kth_in_the_methods_order() {
    // Prompt of 2, response of 7: k = ceil(0.4 * 7) = 3.
    let tau = [9.0, 9.0, 0.5, 0.1, 0.0, 0.4, 0.2, 0.35, 0.6];
    let top = CreditConfig {
        method: CreditMethod::FlowTracer,
        ..CreditConfig::default()
    }
    .shaping();
    let bottom = CreditConfig {
        method: CreditMethod::BottomFlow,
        ..CreditConfig::default()
    }
    .shaping();
    assert_eq!(boundary(&tau, 2, &top), Some(0.4));
    assert_eq!(boundary(&tau, 2, &bottom), Some(0.35));
    // A genuine bottom-k tie at the boundary: the 3rd smallest is 0.2 (twice).
    let tied = [9.0, 9.0, 0.5, 0.2, 0.1, 0.2, 0.9, 0.7, 0.8];
    assert_eq!(boundary(&tied, 2, &bottom), Some(0.2));
    // Bottom-k with only two positive scores takes the zero third.
    let sparse = [1.0, 0.0, 0.0, 0.7, 0.0, 0.2, 0.0, 0.0];
    assert_eq!(boundary(&sparse, 2, &bottom), Some(0.0));
    assert_eq!(boundary(&sparse, 2, &top), Some(0.0));
    // Nothing selected: no boundary.
    assert_eq!(boundary(&tau, 2, &top.with_rho(0.0)), None);
}

#[test]
fn device_scoring_equals_the_cpu_path_over_two_steps() {
    let mut t = trainer(CreditMethod::FlowTracer);
    assert!(
        gpu_credit::applies(&t),
        "the wgpu trainer scores on the device"
    );
    let shaping = t.config.credit.shaping();
    let mut boundary_cases = 0;
    let mut selecting = 0;
    for step in 1..=2 {
        let t0 = Instant::now();
        let dev = t.rollout().expect("rollout");
        let rollout_secs = t0.elapsed().as_secs_f64();
        assert!(
            dev.credit.attention.iter().all(Vec::is_empty),
            "the device path never brings Ā back"
        );
        // The CPU path on the same rollout and the same policy (before the update).
        let cpu = cpu_score(&mut t, &dev);
        let (s, b) = compare("sampled", &shaping, &dev, &cpu);
        selecting += s;
        boundary_cases += b;
        // Canonical responses on the same policy: never vacuous.
        let fixed_dev = fixed(&t, 11 + step);
        let fixed_cpu = cpu_score(&mut t, &fixed_dev);
        let (s, b) = compare("fixed", &shaping, &fixed_dev, &fixed_cpu);
        assert!(s > 0, "step {step}: no sequence selected any token");
        selecting += s;
        boundary_cases += b;
        let t2 = Instant::now();
        for _ in 0..t.config.num_iterations {
            t.update(&dev).expect("update");
        }
        let step_secs = rollout_secs + t2.elapsed().as_secs_f64();
        let cpu_step = step_secs - dev.scoring_secs + cpu.scoring_secs;
        println!(
            "step {step}: flow/scoring_time_frac device {:.4} (scoring {:.4} s of a {:.3} s \
             step), cpu {:.4} (scoring {:.4} s of the same step with CPU scoring)",
            dev.scoring_secs / step_secs,
            dev.scoring_secs,
            step_secs,
            cpu.scoring_secs / cpu_step,
            cpu.scoring_secs,
        );
    }
    println!(
        "device vs cpu weights: {selecting} sequences with a selection compared, \
         {boundary_cases} boundary cases (|Δτ| <= {BOUNDARY_REL:e} relative)"
    );
}

#[test]
fn other_methods_and_the_flag_fall_back_to_the_cpu() {
    let mut t = trainer(CreditMethod::AttentionReceived);
    assert!(!gpu_credit::applies(&t));
    let r = fixed(&t, 5);
    assert!(
        r.credit.attention.iter().all(|a| !a.is_empty()),
        "the CPU path reads Ā back"
    );
    t = trainer(CreditMethod::BottomFlow);
    assert!(gpu_credit::applies(&t));
    let shaping = t.config.credit.shaping();
    let dev = fixed(&t, 5);
    let cpu = cpu_score(&mut t, &dev);
    let (selecting, boundary_cases) = compare("bottom_flow", &shaping, &dev, &cpu);
    assert!(selecting > 0, "bottom_flow: no sequence selected any token");
    println!(
        "bottom_flow: {selecting} sequences with a selection, {boundary_cases} boundary cases"
    );
}
