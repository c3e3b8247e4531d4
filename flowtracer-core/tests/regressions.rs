//! Inputs the fuzzers found (fuzz/regressions/README.md), as unit tests.

use flowtracer_core::shaping::{ShapingConfig, token_weights};
use flowtracer_core::{AnswerMode, Error, Sequence, Spans, Stage, TraceConfig, trace};

use crate::common::trace_dense;

/// fuzz/regressions/trace/tau-subnormal-f32: token 1 has a subnormal f32 flow; `tau` was
/// rounded from the f64 `2 f` and differed from twice the rounded `f`.
#[test]
fn tau_is_exactly_twice_the_flow_in_f32() {
    let a: Vec<f32> = vec![
        f32::from_bits(0x3f800000),
        f32::NAN,
        f32::NAN,
        f32::from_bits(0xb9b9),
        f32::from_bits(0x3f1dcb09),
        f32::NAN,
        f32::from_bits(0x3e8df4d6),
        f32::from_bits(0x3e8df4d6),
        f32::from_bits(0x3ee41655),
    ];
    let cfg = TraceConfig::default().with_answer_mode(AnswerMode::Relay);
    let t = trace_dense(&a, 0..1, 1..3, cfg).unwrap();
    assert!(
        t.flow()[1] > 0.0 && t.flow()[1] < f32::MIN_POSITIVE,
        "the flow of token 1 is subnormal"
    );
    for k in 0..3 {
        assert_eq!(t.throughput()[k], 2.0 * t.flow()[k], "tau[{k}]");
    }
}

/// fuzz/regressions/shaping_grpo/negative-weights-mix: `mix = 1.64`, `gamma_flow = 0.77`
/// gave every selected token the weight -0.26, flipping its advantage.
#[test]
fn mix_outside_unit_interval_is_rejected() {
    let scores = [1.0, 2.0, 3.0];
    let cfg = ShapingConfig::default()
        .with_mix(1.640625)
        .with_gamma_flow(0.765625);
    assert!(matches!(
        token_weights(&scores, &(0..3).into(), &cfg),
        Err(Error::InvalidConfig { field: "mix", .. })
    ));
    let w = token_weights(&scores, &(0..3).into(), &cfg.with_mix(1.0)).unwrap();
    assert!(w.iter().all(|&x| x >= 0.0));
}

/// fuzz/regressions/shaping_grpo/loss-overflow: an advantage near 1e300 times a ratio of
/// e^30 overflowed to an infinite loss; a trainer now gets a typed error instead.
#[test]
fn grpo_loss_overflow_is_an_error() {
    use flowtracer_core::grpo::{GrpoConfig, TokenBatch, grpo_loss};
    let batch = TokenBatch {
        num_sequences: 1,
        seq_len: 2,
        logp: &[-0.125, -0.5],
        old_logp: &[-30.875, -0.5],
        ref_logp: None,
        advantages: &[7.5e299, 1.0],
        mask: &[true, true],
    };
    let cfg = GrpoConfig::default()
        .with_epsilon(0.0)
        .with_epsilon_high(0.0);
    // Clipped at ratio 1 in this direction: no overflow, the loss is finite.
    assert!(grpo_loss(&batch, &cfg).is_ok());
    let batch = TokenBatch {
        advantages: &[-7.5e299, 1.0],
        ..batch
    };
    assert_eq!(
        grpo_loss(&batch, &cfg),
        Err(Error::Overflow {
            stage: Stage::GrpoLoss
        })
    );
}

/// fuzz/regressions/shaping_grpo/advantage-overflow: rewards near the f64 limit made the
/// group mean overflow and every advantage infinite. Centring around the first reward now
/// keeps such groups finite; only a spread beyond the f64 range overflows, as an error.
#[test]
fn group_advantage_overflow_is_an_error() {
    use flowtracer_core::grpo::{ScaleRewards, group_advantages};
    let r = [1.5e308, 1.6e308, -1.7e308, 1.0];
    let a = group_advantages(&r, 2, ScaleRewards::None, 1e-4).unwrap();
    for (got, want) in a.iter().zip([-0.5e307f64, 0.5e307, -0.85e308, 0.85e308]) {
        assert!((got - want).abs() <= 1e-15 * want.abs(), "{a:?}");
    }
    assert_eq!(
        group_advantages(&[1.7e308, -1.7e308], 2, ScaleRewards::None, 1e-4),
        Err(Error::Overflow {
            stage: Stage::GroupAdvantages
        })
    );
    assert!(group_advantages(&[1e300, -1e300], 2, ScaleRewards::Group, 1e-4).is_ok());
}

/// fuzz/regressions/shaping_grpo/advantage-cancellation: rewards of 3e134 differing in
/// their eighth digit. A mean rounded to one f64 is off by an ulp of 3e134, about 3e-8 of
/// the spread, so the group's advantages summed to 2e-8 instead of 0.
#[test]
fn group_advantages_sum_to_zero_for_huge_close_rewards() {
    use flowtracer_core::grpo::{ScaleRewards, group_advantages};
    let r = [-3.1638862116396127e134, -3.1638862396722063e134];
    let a = group_advantages(&r, 2, ScaleRewards::Group, 1e-4).unwrap();
    assert_eq!(a[0] + a[1], 0.0, "{a:?}");
    assert!((a[0] - 0.5f64.sqrt()).abs() <= 1e-15, "{a:?}");
}

/// fuzz/regressions/trace/f32-reach-underflow: two subnormal f32 edges in a row give a
/// reach of about 2e-90, which rounded to 0 in the f32 output although the token is live.
#[test]
fn live_reach_stays_positive_in_f32() {
    let tiny = f32::from_bits(1);
    // 0 -> 1 -> 2 with subnormal weights; 2 is the answer.
    let a: Vec<f32> = vec![1.0, 0.0, 0.0, tiny, 1.0 - tiny, 0.0, 0.0, tiny, 1.0 - tiny];
    let t = trace(&Sequence::dense(&a, Spans::new(0..1, 2..3)).unwrap()).unwrap();
    assert!(
        t.reach()[0] > 0.0,
        "token 0 reaches the answer through two tiny edges"
    );
    assert_eq!(t.reach()[0], tiny);
    assert_eq!(t.flow()[0], 1.0);
    assert_eq!(t.throughput()[0], 2.0);
}
