//! Group advantages, token weights, shaping and the GRPO loss on arbitrary rewards, group
//! sizes, masks, scores and loss types. Oracle: errors only for the documented conditions;
//! finite outputs; advantages sum to ~0 per group; `mix = 0` is exactly plain GRPO; the
//! loss equals `reference::grpo_loss`; coefficients vanish on masked tokens.
#![no_main]

use core::fmt;

use arbitrary::Arbitrary;
use flowtracer_core::Error;
use flowtracer_core::grpo::{
    GrpoConfig, LossType, ScaleRewards, TokenBatch, group_advantages, grpo_loss,
};
use flowtracer_core::shaping::{ApplyTo, Select, ShapingConfig, shape_advantage, token_weights};
use flowtracer_fuzz::{Special, close};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary)]
struct Input {
    rewards: Vec<(u8, Option<Special>)>,
    group: u8,
    scale: u8,
    seq_len: u8,
    tokens: Vec<(u8, u8, u8, bool)>,
    scores: Vec<u8>,
    rho: u8,
    gamma: u8,
    mix: u8,
    normalize: bool,
    bottom: bool,
    nonneg: bool,
    loss_type: u8,
    beta: u8,
    eps: (u8, u8),
}

impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r: Vec<f64> = self.rewards();
        writeln!(f, "// Reproduction:")?;
        writeln!(f, "let rewards: Vec<f64> = vec!{r:?};")?;
        writeln!(
            f,
            "let adv = flowtracer_core::grpo::group_advantages(&rewards, {}, ScaleRewards::{:?}, 1e-4);",
            self.group,
            self.scale()
        )?;
        write!(
            f,
            "// seq_len {}, tokens {:?}, scores {:?}, shaping {:?}, grpo {:?}",
            self.seq_len(),
            self.tokens,
            self.scores,
            self.shaping(),
            self.grpo()
        )
    }
}

impl Input {
    fn rewards(&self) -> Vec<f64> {
        self.rewards
            .iter()
            .take(32)
            .map(|&(r, s)| s.map_or(f64::from(r) / 64.0, |s| s.value(false)))
            .collect()
    }
    fn scale(&self) -> ScaleRewards {
        [ScaleRewards::Group, ScaleRewards::Batch, ScaleRewards::None][usize::from(self.scale % 3)]
    }
    fn seq_len(&self) -> usize {
        usize::from(self.seq_len % 9)
    }
    fn shaping(&self) -> ShapingConfig {
        ShapingConfig::default()
            .with_rho(f64::from(self.rho) / 255.0)
            .with_gamma_flow(f64::from(self.gamma) / 64.0)
            .with_mix(f64::from(self.mix) / 128.0)
            .with_normalize_mean(self.normalize)
            .with_select(if self.bottom {
                Select::Bottom
            } else {
                Select::Top
            })
            .with_apply_to(if self.nonneg {
                ApplyTo::NonnegativeOnly
            } else {
                ApplyTo::Both
            })
    }
    fn grpo(&self) -> GrpoConfig {
        let lt = [
            LossType::Grpo,
            LossType::Bnpo,
            LossType::DrGrpo,
            LossType::Dapo,
        ][usize::from(self.loss_type % 4)];
        GrpoConfig::default()
            .with_loss_type(lt)
            .with_beta(f64::from(self.beta) / 255.0)
            .with_epsilon(f64::from(self.eps.0) / 512.0)
            .with_epsilon_high(f64::from(self.eps.1) / 512.0)
            .with_max_completion_length(self.seq_len().max(1) + usize::from(self.loss_type / 4 % 4))
            .with_num_items_in_batch(if self.loss_type & 16 != 0 {
                Some(usize::from(self.beta) + 1)
            } else {
                None
            })
    }
}

fuzz_target!(|input: Input| {
    let rewards = input.rewards();
    let g = usize::from(input.group % 9);
    let adv = group_advantages(&rewards, g, input.scale(), 1e-4);
    // Errors only for the documented conditions, in order.
    if g < 2 {
        assert_eq!(adv, Err(Error::GroupTooSmall { num_generations: g }));
        return;
    }
    if rewards.is_empty() || !rewards.len().is_multiple_of(g) {
        assert_eq!(
            adv,
            Err(Error::GroupSizeMismatch {
                batch: rewards.len(),
                num_generations: g
            })
        );
        return;
    }
    if let Some(i) = rewards.iter().position(|r| !r.is_finite()) {
        assert_eq!(adv, Err(Error::NonFiniteReward { index: i }));
        return;
    }
    let big = rewards.iter().any(|r| r.abs() > 1e150);
    if let Err(Error::Overflow { .. }) = adv {
        assert!(
            rewards.iter().any(|r| r.abs() > 1e300),
            "overflow reported for moderate rewards"
        );
        return;
    }
    let adv = adv.expect("valid rewards rejected");
    for grp in adv.chunks(g) {
        assert!(
            grp.iter().all(|a| a.is_finite()),
            "non-finite advantage {grp:?}"
        );
        if !big {
            let s: f64 = grp.iter().sum();
            let scale: f64 = grp.iter().map(|a| a.abs()).sum::<f64>().max(1.0);
            assert!(s.abs() <= 1e-9 * scale, "group advantages sum to {s}");
        }
    }
    // Token weights and shaping for every response.
    let seq_len = input.seq_len();
    let shaping = input.shaping();
    let weights = if seq_len == 0 {
        None
    } else {
        let scores: Vec<f64> = (0..seq_len)
            .map(|t| input.scores.get(t).map_or(1.0, |&s| f64::from(s) / 16.0))
            .collect();
        let w = token_weights(&scores, &(0..seq_len).into(), &shaping);
        match w {
            Err(Error::InvalidConfig { field, .. }) => {
                assert!(
                    matches!(field, "rho" | "gamma_flow" | "mix"),
                    "unexpected config error {field}"
                );
                assert!(
                    shaping.rho > 1.0 || shaping.mix > 1.0,
                    "config error {field} for a valid config"
                );
                return;
            }
            Err(e) => panic!("unexpected {e}"),
            Ok(w) => {
                assert!(
                    w.iter().all(|x| x.is_finite() && *x >= 0.0),
                    "weights {w:?}"
                );
                let plain =
                    token_weights(&scores, &(0..seq_len).into(), &shaping.with_mix(0.0)).unwrap();
                let mut shaped = vec![0.0; seq_len];
                for &a in &adv {
                    shape_advantage(a, &plain, &shaping, &mut shaped);
                    assert!(shaped.iter().all(|&s| s == a), "mix = 0 is not plain GRPO");
                }
                Some(w)
            }
        }
    };
    let nseq = adv.len();
    let len = nseq * seq_len;
    let tok = |t: usize| input.tokens.get(t).copied().unwrap_or((0, 0, 0, true));
    let logp: Vec<f64> = (0..len).map(|t| -f64::from(tok(t).0) / 8.0).collect();
    let old: Vec<f64> = (0..len).map(|t| -f64::from(tok(t).1) / 8.0).collect();
    let reference: Vec<f64> = (0..len).map(|t| -f64::from(tok(t).2) / 8.0).collect();
    let mask: Vec<bool> = (0..len).map(|t| tok(t).3).collect();
    let mut advantages = vec![0.0; len];
    if let Some(w) = &weights {
        for (s, &a) in adv.iter().enumerate() {
            shape_advantage(
                a,
                w,
                &shaping,
                &mut advantages[s * seq_len..(s + 1) * seq_len],
            );
        }
    }
    let batch = TokenBatch {
        num_sequences: nseq,
        seq_len,
        logp: &logp,
        old_logp: &old,
        ref_logp: Some(&reference),
        advantages: &advantages,
        mask: &mask,
    };
    let cfg = input.grpo();
    if (0..len).any(|t| mask[t] && !advantages[t].is_finite()) {
        // A weight above 1 times an advantage near the f64 limit: shaped to infinity.
        assert!(matches!(
            grpo_loss(&batch, &cfg),
            Err(Error::NonFinite { .. })
        ));
        return;
    }
    let out = match grpo_loss(&batch, &cfg) {
        Err(Error::Overflow { .. }) => {
            // Only when a term can really leave the f64 range.
            let term = (0..len)
                .filter(|&t| mask[t])
                .map(|t| {
                    advantages[t].abs() * (logp[t] - old[t]).exp() + (reference[t] - logp[t]).exp()
                })
                .fold(0.0, f64::max);
            assert!(
                term > 1e290,
                "overflow reported for terms of at most {term}"
            );
            return;
        }
        other => other.expect("valid batch rejected"),
    };
    assert!(out.loss.is_finite(), "loss {}", out.loss);
    assert_eq!(out.coef.len(), len, "one coefficient per token");
    for (t, (&c, &m)) in out.coef.iter().zip(&mask).enumerate() {
        assert!(c.is_finite());
        if !m {
            assert_eq!(c, 0.0, "masked token {t} has a gradient");
        }
    }
    let lt = match cfg.loss_type {
        LossType::Grpo => 0,
        LossType::Bnpo => 1,
        LossType::DrGrpo => 2,
        _ => 3,
    };
    let total = mask.iter().filter(|&&m| m).count();
    let naive = flowtracer_core::reference::grpo_loss(
        seq_len,
        &logp,
        &old,
        Some(&reference),
        &advantages,
        &mask,
        (cfg.beta, cfg.epsilon, cfg.epsilon_high),
        lt,
        cfg.max_completion_length,
        cfg.num_items_in_batch.unwrap_or(total),
    );
    let naive = if seq_len == 0 { 0.0 } else { naive };
    // Rounding is relative to the size of the terms summed, not of their (cancelling) sum.
    let magnitude: f64 = (0..len)
        .filter(|&t| mask[t])
        .map(|t| 2.0 * advantages[t].abs() + (reference[t] - logp[t]).abs().exp())
        .sum();
    // The naive sum may overflow where the fast one (scaled before summing) does not.
    if naive.is_finite() && magnitude < 1e290 {
        assert!(
            close(out.loss, naive, 1e-9 * (1.0 + magnitude), 1e-9),
            "loss {} vs reference {naive}",
            out.loss
        );
    }
});
