//! GRPO loss types against hand-computed values, and the gradient coefficients against
//! finite differences.

use flowtracer_core::grpo::{GrpoConfig, LossType, TokenBatch, grpo_loss};
use proptest::prelude::*;

use crate::common::close;

const ADV: [f64; 6] = [1.0, 2.0, 9.0, -1.0, 9.0, 9.0];
const MASK: [bool; 6] = [true, true, false, true, false, false];
const LOGP: [f64; 6] = [-1.0, -2.0, -3.0, -1.5, -0.5, -0.1];

fn batch<'a>(logp: &'a [f64], old: &'a [f64], reference: Option<&'a [f64]>) -> TokenBatch<'a, f64> {
    TokenBatch {
        num_sequences: 2,
        seq_len: 3,
        logp,
        old_logp: old,
        ref_logp: reference,
        advantages: &ADV,
        mask: &MASK,
    }
}

#[test]
fn loss_types_with_padding() {
    // Ratio 1 everywhere: l = A on the three unmasked tokens (1, 2 | -1).
    let b = batch(&LOGP, &LOGP, None);
    let cfg = GrpoConfig::default().with_max_completion_length(4);
    let cases = [
        (
            LossType::Grpo,
            -((1.0 + 2.0) / 2.0 + -1.0) / 2.0,
            [-0.25, -0.5, 0.0, 0.5, 0.0, 0.0],
        ),
        (
            LossType::Bnpo,
            -(2.0 / 3.0),
            [-1.0 / 3.0, -2.0 / 3.0, 0.0, 1.0 / 3.0, 0.0, 0.0],
        ),
        (
            LossType::DrGrpo,
            -(2.0 / 8.0),
            [-1.0 / 8.0, -2.0 / 8.0, 0.0, 1.0 / 8.0, 0.0, 0.0],
        ),
    ];
    for (lt, loss, coef) in cases {
        let out = grpo_loss(&b, &cfg.with_loss_type(lt)).unwrap();
        assert!(
            close(out.loss, loss, 1e-15, 1e-15),
            "{lt:?}: {} vs {loss}",
            out.loss
        );
        for (c, e) in out.coef.iter().zip(coef) {
            assert!(close(*c, e, 1e-15, 1e-15), "{lt:?}: coef {c} vs {e}");
        }
        assert_eq!(out.stats.num_tokens, 3);
    }
    // dapo divides by the caller's global token count.
    let out = grpo_loss(
        &b,
        &cfg.with_loss_type(LossType::Dapo)
            .with_num_items_in_batch(Some(10)),
    )
    .unwrap();
    assert!(close(out.loss, -0.2, 1e-15, 0.0));
    let out = grpo_loss(&b, &cfg.with_loss_type(LossType::Dapo)).unwrap();
    assert!(
        close(out.loss, -2.0 / 3.0, 1e-15, 0.0),
        "dapo without a count uses this call's"
    );
}

#[test]
fn a_fully_masked_sequence_counts_in_grpo_mean_but_adds_nothing() {
    let mask = [true, true, false, false, false, false];
    let b = TokenBatch {
        mask: &mask,
        ..batch(&LOGP, &LOGP, None)
    };
    let out = grpo_loss(&b, &GrpoConfig::default()).unwrap();
    // (1 + 2) / 2 for sequence 0, 0 for sequence 1 (max(1, 0) tokens), mean over 2.
    assert!(close(out.loss, -0.75, 1e-15, 0.0));
}

#[test]
fn clipping_and_kl_by_hand() {
    // One sequence of four tokens, epsilon 0.2 / epsilon_high 0.28.
    let adv = [1.0, -1.0, 1.0, -1.0];
    let old = [0.0; 4];
    let logp = [0.5, -0.5, -0.5, 0.1];
    let reference = [0.0, 0.0, 0.0, 0.3];
    let mask = [true; 4];
    let b = TokenBatch {
        num_sequences: 1,
        seq_len: 4,
        logp: &logp,
        old_logp: &old,
        ref_logp: Some(&reference),
        advantages: &adv,
        mask: &mask,
    };
    let cfg = GrpoConfig::default().with_epsilon_high(0.28).with_beta(0.1);
    let out = grpo_loss(&b, &cfg).unwrap();
    let r = |x: f64| x.exp();
    // token 0: r = 1.6487 > 1.28, A > 0: clipped to 1.28, no gradient.
    // token 1: r = 0.6065 < 0.8, A < 0: min(-0.6065, -0.8) = -0.8, clipped, no gradient.
    // token 2: r = 0.6065, A > 0: unclipped 0.6065.
    // token 3: r = 1.1052 inside, A < 0: -1.1052.
    let surrogate = [1.28, -0.8, r(-0.5), -r(0.1)];
    let kl = |d: f64| d.exp() - d - 1.0;
    let kls = [kl(-0.5), kl(0.5), kl(0.5), kl(0.2)];
    let l: f64 = (0..4).map(|t| surrogate[t] - 0.1 * kls[t]).sum::<f64>() / 4.0;
    assert!(close(out.loss, -l, 1e-14, 1e-14), "{} vs {}", out.loss, -l);
    assert_eq!(out.stats.clip_ratio_high, 0.25);
    assert_eq!(out.stats.clip_ratio_low, 0.25);
    assert_eq!(out.stats.clip_ratio_region, 0.5);
    assert!(close(
        out.stats.kl_mean,
        kls.iter().sum::<f64>() / 4.0,
        1e-15,
        1e-15
    ));
    // Gradient: clipped tokens keep only the KL term.
    let kl_grad = |d: f64| 1.0 - d.exp();
    let g = [0.0, 0.0, r(-0.5), -r(0.1)];
    let d = [-0.5, 0.5, 0.5, 0.2];
    for t in 0..4 {
        let e = -(g[t] - 0.1 * kl_grad(d[t])) / 4.0;
        assert!(
            close(out.coef[t], e, 1e-15, 1e-14),
            "coef[{t}] {} vs {e}",
            out.coef[t]
        );
    }
}

#[test]
fn bad_shapes_and_config() {
    let b = TokenBatch {
        mask: &MASK[..5],
        ..batch(&LOGP, &LOGP, None)
    };
    assert!(matches!(
        grpo_loss(&b, &GrpoConfig::default()),
        Err(flowtracer_core::Error::ShapeMismatch { what: "mask", .. })
    ));
    let b = batch(&LOGP, &LOGP, None);
    assert!(matches!(
        grpo_loss(&b, &GrpoConfig::default().with_beta(0.1)),
        Err(flowtracer_core::Error::InvalidConfig { field: "beta", .. })
    ));
    assert!(matches!(
        grpo_loss(&b, &GrpoConfig::default().with_epsilon(-0.1)),
        Err(flowtracer_core::Error::InvalidConfig {
            field: "epsilon",
            ..
        })
    ));
}

proptest! {
    #[test]
    fn coef_is_the_gradient(
        logp in prop::collection::vec(-3.0f64..0.0, 12),
        shift in prop::collection::vec(-0.4f64..0.4, 12),
        reference in prop::collection::vec(-3.0f64..0.0, 12),
        adv in prop::collection::vec(-2.0f64..2.0, 12),
        mask in prop::collection::vec(any::<bool>(), 12),
        lt in 0u8..4,
        beta in prop_oneof![Just(0.0), 0.0f64..0.5],
    ) {
        let old: Vec<f64> = logp.iter().zip(&shift).map(|(l, s)| l + s).collect();
        let loss_type = [LossType::Grpo, LossType::Bnpo, LossType::DrGrpo, LossType::Dapo][lt as usize];
        let cfg = GrpoConfig::default().with_beta(beta).with_epsilon_high(0.28).with_loss_type(loss_type)
            .with_max_completion_length(5).with_num_items_in_batch(Some(7));
        let make = |lp: &[f64]| -> f64 {
            let b = TokenBatch { num_sequences: 3, seq_len: 4, logp: lp, old_logp: &old, ref_logp: Some(&reference), advantages: &adv, mask: &mask };
            grpo_loss(&b, &cfg).unwrap().loss
        };
        let b = TokenBatch { num_sequences: 3, seq_len: 4, logp: &logp, old_logp: &old, ref_logp: Some(&reference), advantages: &adv, mask: &mask };
        let out = grpo_loss(&b, &cfg).unwrap();
        let step = 1e-6;
        for t in 0..12 {
            let r = (logp[t] - old[t]).exp();
            // Finite differences are meaningless at the clip kinks.
            if (r - 0.8).abs() < 1e-3 || (r - 1.28).abs() < 1e-3 { continue; }
            let (mut up, mut down) = (logp.clone(), logp.clone());
            up[t] += step;
            down[t] -= step;
            let fd = (make(&up) - make(&down)) / (2.0 * step);
            prop_assert!(close(out.coef[t], fd, 1e-7, 1e-5), "token {}: coef {} vs fd {}", t, out.coef[t], fd);
        }
    }
}
