//! Issue 18: the key mask of the causal test, the causal test end to end on a tiny model,
//! and Countdown through the trainer.

use burn::tensor::Device;
use flowtracer_core::baselines::{CreditMethod, SplitMix64};
use flowtracer_train::causal::{CausalConfig, causal_test, masked_answers};
use flowtracer_train::model::{Batch, ModelConfig, Transformer};
use flowtracer_train::sampling::left_pad;
use flowtracer_train::task::{self, TaskConfig};
use flowtracer_train::tokenizer::{ANSWER_OPEN, CHAIN, COUNTDOWN};
use flowtracer_train::trainer::Trainer;

use crate::common::{config, model_config};

fn model() -> Transformer {
    model_config().init(5, &Device::flex())
}

/// The logits of every column of one sequence under a key mask, on the host.
fn logits(model: &Transformer, tokens: &[u32], masked: &[bool]) -> Vec<Vec<f32>> {
    let batch = left_pad(&[tokens.to_vec()]);
    let out = model.forward_batch_masked(&batch, masked, &[], &Device::flex());
    let [_, t, v] = out.logits.dims();
    let flat = out.logits.into_data().try_into_vec::<f32>().unwrap();
    (0..t).map(|c| flat[c * v..(c + 1) * v].to_vec()).collect()
}

/// A chained-arithmetic prompt, its reasoning and the answer tag, with the positions of the
/// first reasoning token.
fn sequence() -> (Vec<u32>, usize) {
    let p = task::generate(&TaskConfig::level(2), &mut SplitMix64::new(11));
    let open = p.response.iter().position(|&t| t == ANSWER_OPEN).unwrap();
    let mut s = p.prompt.clone();
    s.extend_from_slice(&p.response[..=open]);
    (s, p.prompt.len())
}

/// The test of the mask: perturbing a masked token (its embedding, through another token
/// id) leaves every later column's logits, the answer's included, bit-identical; perturbing
/// an unmasked reasoning token changes them. Without a masked column the masked pass is the
/// plain pass, bit for bit.
#[test]
fn a_masked_key_cannot_reach_the_answer_and_an_unmasked_one_does() {
    let model = model();
    let (tokens, start) = sequence();
    let n = tokens.len();
    let (hidden, open) = (start + 2, start + 4);
    let mut masked = vec![false; n];
    masked[hidden] = true;
    masked[start + 6] = true;
    let other = |t: u32| {
        if t == CHAIN.char_token('7').unwrap() {
            t + 1
        } else {
            CHAIN.char_token('7').unwrap()
        }
    };

    let base = logits(&model, &tokens, &masked);
    let mut perturbed = tokens.clone();
    perturbed[hidden] = other(tokens[hidden]);
    let after = logits(&model, &perturbed, &masked);
    for c in hidden + 1..n {
        assert_eq!(after[c], base[c], "column {c} saw the masked key {hidden}");
    }
    // The masked column's own query still reads its own token.
    assert_ne!(after[hidden], base[hidden]);

    let mut perturbed = tokens.clone();
    perturbed[open] = other(tokens[open]);
    let after = logits(&model, &perturbed, &masked);
    assert_ne!(
        after[n - 1],
        base[n - 1],
        "the answer logits ignore an unmasked token"
    );

    // No masked column: the masked pass is the plain one.
    let none = vec![false; n];
    let batch: Batch = left_pad(core::slice::from_ref(&tokens));
    let plain = model.forward_batch(&batch, &[], &Device::flex()).logits;
    let plain = plain.into_data().try_into_vec::<f32>().unwrap();
    let unmasked: Vec<f32> = logits(&model, &tokens, &none).concat();
    assert_eq!(unmasked, plain);

    // Decoding under the mask (the KV-cache path) ignores the masked token too, in a batch
    // with rows of other lengths (left padding).
    let prefix = tokens[..n - 1].to_vec();
    let short = prefix[..prefix.len() - 3].to_vec();
    let mut pert = prefix.clone();
    pert[hidden] = other(prefix[hidden]);
    let m = masked[..n - 1].to_vec();
    let m_short = vec![false; short.len()];
    let a = masked_answers(
        &model,
        &[prefix.clone(), short.clone()],
        &[m.clone(), m_short.clone()],
        6,
        &Device::flex(),
    );
    let b = masked_answers(&model, &[pert, short], &[m, m_short], 6, &Device::flex());
    assert_eq!(a, b);
}

/// An answer may use only the positions the model has left: a prefix near `max_len` with a
/// long `max_answer` decodes up to the last position, unclosed, without a panic.
#[test]
fn masked_answers_stop_at_the_models_positions() {
    let model = model();
    let max_len = model_config().max_len;
    let prefix: Vec<u32> = core::iter::once(flowtracer_train::tokenizer::BOS)
        .chain(core::iter::repeat_n(
            CHAIN.char_token('1').unwrap(),
            max_len - 4,
        ))
        .collect();
    let masked = vec![false; prefix.len()];
    let out = masked_answers(&model, &[prefix], &[masked], 50, &Device::flex());
    // The prefix and the tag take max_len - 2 positions: at most 2 answer tokens.
    assert!(out[0].0.len() <= 2, "{out:?}");
}

/// The causal test end to end on a tiny untrained model: the counts are consistent, every
/// method has its trials, and `random` pools its draws.
#[test]
fn causal_test_counts_are_consistent() {
    let model = model();
    let problems = task::eval_set(&TaskConfig::level(1), 6, 3);
    let methods = [
        CreditMethod::FlowTracer,
        CreditMethod::Random,
        CreditMethod::PredictiveEntropy,
    ];
    let cfg = CausalConfig {
        fraction: 0.2,
        random_draws: 3,
        max_completion_length: 24,
        max_answer_length: 4,
        batch_size: 4,
    };
    let mut calls = Vec::new();
    let r = causal_test(
        &model,
        &problems,
        &methods,
        &cfg,
        &Device::flex(),
        |d, t| calls.push((d, t)),
    )
    .unwrap();
    assert_eq!(r.problems, 6);
    assert!(r.tested <= 6);
    assert_eq!(r.rows.len(), 3);
    assert_eq!(calls.last(), Some(&(3 + 1 + 3 + 1, 3 + 1 + 3 + 1)));
    for row in &r.rows {
        let draws = if row.method == CreditMethod::Random {
            3
        } else {
            1
        };
        assert_eq!(row.draws, draws);
        assert_eq!(
            row.trials + row.unscored * draws,
            r.tested * draws,
            "{row:?}"
        );
        assert!(
            row.changed <= row.trials && row.reversed <= row.changed && row.fixed <= row.changed
        );
    }
}

/// Countdown runs through the trainer with its own vocabulary: a step trains, rewards come
/// from the equation verifier, and the canonical responses score 1.
#[test]
fn countdown_trains_with_its_own_vocabulary() {
    let task = TaskConfig::countdown(3);
    assert_eq!(task.vocab_size(), COUNTDOWN.vocab_size());
    assert_ne!(task.vocab_size(), CHAIN.vocab_size());
    let model_config = ModelConfig {
        vocab_size: task.vocab_size(),
        max_len: 96,
        ..model_config()
    };
    let device = Device::flex();
    let mut grpo = config(CreditMethod::FlowTracer);
    grpo.max_completion_length = task.response_len();
    let model = model_config.init(5, &device.clone().autodiff());
    flowtracer_train::config::validate_run(&grpo, &task, &model_config, &Default::default())
        .unwrap();
    let mut trainer = Trainer::new(grpo, task.clone(), model, Default::default(), device).unwrap();
    let m = trainer.train_step().unwrap();
    assert_eq!(m.step, 1);
    assert!(m.loss.is_finite());
    for p in task::eval_set(&task, 20, 1) {
        assert_eq!(task::score(&p, &p.response), 1.0);
        assert!(p.countdown.is_some());
    }
}

/// The chained-arithmetic generator is unchanged by Countdown: the first problems of a seed
/// are the ones it always drew (pinned text).
#[test]
fn chained_arithmetic_problems_are_unchanged() {
    let mut rng = SplitMix64::new(0);
    let p = task::generate(&TaskConfig::level(1), &mut rng);
    let q = task::generate(&TaskConfig::level(3), &mut rng);
    let text = |p: &task::Problem| {
        format!(
            "{} | {}",
            CHAIN.decode(&p.prompt),
            CHAIN.decode(&p.response)
        )
    };
    assert_eq!(text(&p), PINNED[0]);
    assert_eq!(text(&q), PINNED[1]);
    assert!(p.countdown.is_none());
}

const PINNED: [&str; 2] = [
    "e=9 j=3 c=j-e f=e-c ?c | c=3-9=4 f=9-4=5 <answer>4</answer>",
    "a=2 h=0 d=0 f=a+h b=a-7 i=f+4 e=i-8 g=a-7 ?e | f=2+0=2 b=2-7=5 i=2+4=6 e=6-8=8 g=2-7=5 <answer>8</answer>",
];
