//! GRPO updates and the credit stage against flowtracer-core.

use burn::module::Module;
use flowtracer_core::aggregate::{LayerSelection, Layout, aggregate};
use flowtracer_core::baselines::{CreditMethod, SplitMix64};
use flowtracer_core::flow::conservation_residual;
use flowtracer_core::grpo::{ScaleRewards, group_advantages};
use flowtracer_core::shaping::{shape_advantage, token_weights};
use flowtracer_core::{Sequence, Spans, trace};
use flowtracer_train::config::ADV_EPS;
use flowtracer_train::rollout::Rollout;
use flowtracer_train::sampling::Completion;
use flowtracer_train::task::{generate, reward};
use flowtracer_train::tokenizer::{EOS, digit_token};
use flowtracer_train::trainer::Trainer;

use crate::common::{task, trainer};

/// Two problems, four completions each: canonical (reward 1), a wrong answer (reward 0),
/// a short one without answer (ragged, reward 0) and canonical again.
fn fixed_rollout(t: &Trainer) -> Rollout {
    let mut rng = SplitMix64::new(11);
    let mut problems = Vec::new();
    let mut completions = Vec::new();
    for _ in 0..2 {
        let p = generate(&task(), &mut rng);
        let mut wrong = p.response.clone();
        let a = wrong.len() - 3;
        wrong[a] = digit_token((p.answer + 1) % 10);
        let short = vec![p.response[0], p.response[1], EOS];
        for c in [p.response.clone(), wrong, short, p.response.clone()] {
            problems.push(p.clone());
            completions.push(Completion {
                tokens: c,
                truncated: false,
            });
        }
    }
    let rewards: Vec<f64> = problems
        .iter()
        .zip(&completions)
        .map(|(p, c)| f64::from(reward(p.answer, &c.tokens)))
        .collect();
    assert_eq!(rewards, [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]);
    let adv = group_advantages(&rewards, 4, ScaleRewards::Group, ADV_EPS).unwrap();
    t.score(t.model.valid(), problems, completions, rewards, adv, 7)
        .unwrap()
}

#[test]
fn a_few_grpo_steps_lower_the_loss_on_a_fixed_batch() {
    for credit in [CreditMethod::Uniform, CreditMethod::FlowTracer] {
        let mut t = trainer(credit);
        let r = fixed_rollout(&t);
        let before = t.loss_on(&r).unwrap();
        for _ in 0..4 {
            t.update(&r).unwrap();
        }
        let after = t.loss_on(&r).unwrap();
        assert!(
            after < before - 1e-4,
            "{credit:?}: loss {before} -> {after}"
        );
    }
}

#[test]
fn shaped_advantages_equal_the_core() {
    let t = trainer(CreditMethod::FlowTracer);
    let r = fixed_rollout(&t);
    let shaping = t.config.credit.shaping();
    let c = r.completion_len;
    let mut shaped_count = 0;
    let mut max_residual = 0.0f64;
    for i in 0..r.problems.len() {
        let p_len = r.problems[i].prompt.len();
        let n = r.seq_len(i);
        let a = aggregate(
            &r.credit.attention[i],
            r.captured_layers,
            1,
            n,
            Layout::Dense,
            &LayerSelection::All,
        )
        .unwrap();
        // The capture is row-stochastic despite padding (ragged completions in one batch).
        for k in 0..n {
            let s: f64 = a[k * n..k * n + k + 1].iter().sum();
            assert!(
                (s - 1.0).abs() < 1e-5,
                "row {k} of sequence {i} sums to {s}"
            );
        }
        let weights = match &r.credit.answers[i] {
            Some(ans) => {
                let spans = Spans::new(0..p_len, ans.clone()).with_response(p_len..n);
                let seq = Sequence::dense(&a, spans).unwrap();
                let tr = trace(&seq).unwrap();
                shaped_count += 1;
                max_residual = max_residual.max(conservation_residual(&seq, 0.0, tr.reach()));
                token_weights(tr.throughput(), &(p_len..n).into(), &shaping).unwrap()
            }
            None => vec![1.0; n],
        };
        let mut expected = vec![0.0; n - p_len];
        shape_advantage(
            r.group_advantages[i],
            &weights[p_len..],
            &shaping,
            &mut expected,
        );
        assert_eq!(
            &r.credit.advantages[i * c..i * c + n - p_len],
            &expected[..],
            "sequence {i}"
        );
        assert!(
            r.credit.advantages[i * c + n - p_len..(i + 1) * c]
                .iter()
                .all(|&x| x == 0.0)
        );
    }
    assert_eq!(shaped_count, 6);
    assert_eq!(r.credit.no_answer, 2);
    // The logged residual is the core's, maximised over the scored sequences.
    let residual = r.credit.conservation_residual.unwrap();
    assert_eq!(residual, max_residual);
    assert!(residual < 1e-12, "conservation residual {residual}");
}

#[test]
fn padding_does_not_change_a_sequence_attention() {
    let t = trainer(CreditMethod::FlowTracer);
    let r = fixed_rollout(&t);
    // Re-score sequence 2 (the short, ragged one) alone.
    let alone = t
        .score(
            t.model.valid(),
            vec![r.problems[2].clone()],
            vec![r.completions[2].clone()],
            vec![0.0],
            vec![0.0],
            7,
        )
        .unwrap();
    let (x, y) = (&r.credit.attention[2], &alone.credit.attention[0]);
    assert_eq!(x.len(), y.len());
    for (a, b) in x.iter().zip(y) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

#[test]
fn training_steps_run_for_every_credit_method() {
    for &credit in CreditMethod::ALL {
        let mut t = trainer(credit);
        let m = t.train_step().unwrap();
        assert_eq!(m.step, 1);
        assert!(m.loss.is_finite());
        assert!((0.0..=1.0).contains(&m.flow.no_answer_frac));
    }
}

#[test]
fn a_non_finite_loss_stops_with_the_step_and_keeps_the_model() {
    let mut t = trainer(CreditMethod::FlowTracer);
    let mut r = fixed_rollout(&t);
    let before = flowtracer_train::model::param_values(&t.model);
    r.credit.advantages[0] = f64::NAN;
    let err = t.update(&r).unwrap_err();
    match &err {
        flowtracer_train::error::TrainError::NonFiniteLoss { step, .. } => assert_eq!(*step, 1),
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains("step 1"), "{err}");
    assert_eq!(flowtracer_train::model::param_values(&t.model), before);
}
