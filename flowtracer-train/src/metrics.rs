//! What a GRPO step logs: one [`StepMetrics`] per line of `metrics.jsonl`.
//!
//! The `flow/*` keys are the core's [`vocabulary::metrics`] names (the Rust trainer and the
//! Python package log exactly these); [`FlowMetrics::entries`] pairs each constant with its
//! value, and the serialisation of [`StepMetrics`] is built from those pairs, so no key is
//! spelled twice.
//!
//! [`vocabulary::metrics`]: flowtracer_core::vocabulary::metrics

use core::fmt;

use flowtracer_core::baselines::CreditMethod;
use flowtracer_core::vocabulary::metrics as names;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::GrpoConfig;
use crate::credit::fidelity;
use crate::rollout::Rollout;

/// Statistics of one update.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct UpdateStats {
    /// The GRPO loss (core's value).
    pub loss: f64,
    /// Fraction of tokens clipped below.
    pub clip_ratio_low: f64,
    /// Fraction of tokens clipped above.
    pub clip_ratio_high: f64,
    /// Fraction of tokens clipped either way.
    pub clip_ratio_region: f64,
    /// Mean k3 KL to the reference.
    pub kl: f64,
}

/// The `flow/*` metrics of a step (keys: [`vocabulary::metrics`]).
///
/// [`vocabulary::metrics`]: flowtracer_core::vocabulary::metrics
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FlowMetrics {
    /// `flow/weight_mean`: mean credit weight over response tokens.
    pub weight_mean: f64,
    /// `flow/weight_max`.
    pub weight_max: f64,
    /// `flow/answer_mass`: mean flow absorbed by the answer (1 by conservation).
    pub answer_mass: Option<f64>,
    /// `flow/no_answer_frac`: completions without an answer span.
    pub no_answer_frac: f64,
    /// `flow/unscored_frac`: completions the core could not score (e.g. no source mass).
    pub unscored_frac: f64,
    /// `flow/conservation_residual`: max over scored sequences and their live tokens outside
    /// the answer of `|sum_k W'[i][k] - 1|` (flow conservation; 0 up to rounding).
    pub conservation_residual: Option<f64>,
    /// `flow/scoring_time_frac`: attention readback + scoring time over step time.
    pub scoring_time_frac: f64,
    /// `flow/fidelity`: precision of the selected tokens against the decisive tokens, over
    /// completions equal to the canonical solution.
    pub fidelity: Option<f64>,
}

impl FlowMetrics {
    /// Every metric with its name, in the order of [`vocabulary::metrics::ALL`]; `None` is
    /// logged as `null`.
    ///
    /// [`vocabulary::metrics::ALL`]: flowtracer_core::vocabulary::metrics::ALL
    pub fn entries(&self) -> [(&'static str, Option<f64>); 8] {
        [
            (names::WEIGHT_MEAN, Some(self.weight_mean)),
            (names::WEIGHT_MAX, Some(self.weight_max)),
            (names::ANSWER_MASS, self.answer_mass),
            (names::NO_ANSWER_FRAC, Some(self.no_answer_frac)),
            (names::UNSCORED_FRAC, Some(self.unscored_frac)),
            (names::CONSERVATION_RESIDUAL, self.conservation_residual),
            (names::SCORING_TIME_FRAC, Some(self.scoring_time_frac)),
            (names::FIDELITY, self.fidelity),
        ]
    }

    /// The field that `name` logs, or `None` for a name that is not a `flow/*` metric.
    fn slot(&mut self, name: &str) -> Option<Slot<'_>> {
        Some(match name {
            names::WEIGHT_MEAN => Slot::Required(&mut self.weight_mean),
            names::WEIGHT_MAX => Slot::Required(&mut self.weight_max),
            names::ANSWER_MASS => Slot::Optional(&mut self.answer_mass),
            names::NO_ANSWER_FRAC => Slot::Required(&mut self.no_answer_frac),
            names::UNSCORED_FRAC => Slot::Required(&mut self.unscored_frac),
            names::CONSERVATION_RESIDUAL => Slot::Optional(&mut self.conservation_residual),
            names::SCORING_TIME_FRAC => Slot::Required(&mut self.scoring_time_frac),
            names::FIDELITY => Slot::Optional(&mut self.fidelity),
            _ => return None,
        })
    }
}

/// Where a deserialised `flow/*` value goes.
enum Slot<'a> {
    Required(&'a mut f64),
    Optional(&'a mut Option<f64>),
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepMetrics {
    /// 1-based step.
    pub step: usize,
    /// Mean reward of the sampled completions.
    pub reward_mean: f64,
    /// Standard deviation of the rewards.
    pub reward_std: f64,
    /// Fraction of sampled completions that are correct.
    pub accuracy: f64,
    /// GRPO loss (mean over iterations).
    pub loss: f64,
    /// Mean k3 KL to the reference.
    pub kl: f64,
    /// Low clip ratio.
    pub clip_ratio_low: f64,
    /// High clip ratio.
    pub clip_ratio_high: f64,
    /// Region clip ratio.
    pub clip_ratio_region: f64,
    /// Mean predictive entropy over unmasked tokens.
    pub entropy: f64,
    /// Mean completion length.
    pub completion_length: f64,
    /// Fraction of completions truncated at `max_completion_length`.
    pub truncated_frac: f64,
    /// Fraction of groups whose rewards all agree (zero advantage).
    pub zero_std_frac: f64,
    /// The `flow/*` metrics.
    pub flow: FlowMetrics,
    /// `eval/accuracy`: held-out greedy accuracy, when evaluated at this step.
    pub eval_accuracy: Option<f64>,
    /// `eval/sampled_accuracy`: held-out sampled policy accuracy (4 samples per problem at
    /// the training temperature), when evaluated at this step.
    pub eval_sampled_accuracy: Option<f64>,
    /// Wall time of the step in seconds.
    pub step_secs: f64,
}

const EVAL_ACCURACY: &str = "eval/accuracy";
const EVAL_SAMPLED_ACCURACY: &str = "eval/sampled_accuracy";

/// The keys of the plain `f64` fields, in logging order (`step` is first, `step_secs` last).
macro_rules! plain_fields {
    ($m:ident, $($borrow:tt)+) => {
        [
            ("reward_mean", $($borrow)+ $m.reward_mean),
            ("reward_std", $($borrow)+ $m.reward_std),
            ("accuracy", $($borrow)+ $m.accuracy),
            ("loss", $($borrow)+ $m.loss),
            ("kl", $($borrow)+ $m.kl),
            ("clip_ratio_low", $($borrow)+ $m.clip_ratio_low),
            ("clip_ratio_high", $($borrow)+ $m.clip_ratio_high),
            ("clip_ratio_region", $($borrow)+ $m.clip_ratio_region),
            ("entropy", $($borrow)+ $m.entropy),
            ("completion_length", $($borrow)+ $m.completion_length),
            ("truncated_frac", $($borrow)+ $m.truncated_frac),
            ("zero_std_frac", $($borrow)+ $m.zero_std_frac),
        ]
    };
}

impl Serialize for StepMetrics {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("step", &self.step)?;
        for (key, value) in plain_fields!(self, &) {
            map.serialize_entry(key, value)?;
        }
        for (key, value) in self.flow.entries() {
            map.serialize_entry(key, &value)?;
        }
        map.serialize_entry(EVAL_ACCURACY, &self.eval_accuracy)?;
        map.serialize_entry(EVAL_SAMPLED_ACCURACY, &self.eval_sampled_accuracy)?;
        map.serialize_entry("step_secs", &self.step_secs)?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for StepMetrics {
    /// Every plain field and every `flow/*` metric without an `Option` is required; the
    /// optional ones may be `null` or missing; unknown keys are ignored.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(StepVisitor)
    }
}

struct StepVisitor;

impl<'de> Visitor<'de> for StepVisitor {
    type Value = StepMetrics;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a metrics.jsonl line (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StepMetrics, A::Error> {
        let mut m = StepMetrics::default();
        let mut seen: Vec<String> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
            }
            if key == "step" {
                m.step = map.next_value()?;
            } else if key == "step_secs" {
                m.step_secs = map.next_value()?;
            } else if key == EVAL_ACCURACY {
                m.eval_accuracy = map.next_value()?;
            } else if key == EVAL_SAMPLED_ACCURACY {
                m.eval_sampled_accuracy = map.next_value()?;
            } else if let Some(slot) = m.flow.slot(&key) {
                match slot {
                    Slot::Required(x) => *x = map.next_value()?,
                    Slot::Optional(x) => *x = map.next_value()?,
                }
            } else if let Some((_, x)) = plain_fields!(m, &mut).into_iter().find(|(k, _)| *k == key)
            {
                *x = map.next_value()?;
            } else {
                map.next_value::<de::IgnoredAny>()?;
                continue;
            }
            seen.push(key);
        }
        let mut required = vec!["step", "step_secs"];
        required.extend(plain_fields!(m, &).map(|(k, _)| k));
        required.extend(
            FlowMetrics::default()
                .entries()
                .into_iter()
                .filter(|(_, v)| v.is_some())
                .map(|(k, _)| k),
        );
        match required.into_iter().find(|k| !seen.iter().any(|s| s == k)) {
            Some(missing) => Err(de::Error::missing_field(missing)),
            None => Ok(m),
        }
    }
}

/// The metrics of one step from its rollout and update statistics (summed over
/// `iterations` updates).
pub fn step_metrics(
    step: usize,
    r: &Rollout,
    stats: &UpdateStats,
    iterations: f64,
    config: &GrpoConfig,
    step_secs: f64,
) -> StepMetrics {
    let b = r.problems.len() as f64;
    let mean = r.rewards.iter().sum::<f64>() / b;
    let var = r
        .rewards
        .iter()
        .map(|x| (x - mean) * (x - mean))
        .sum::<f64>()
        / (b - 1.0).max(1.0);
    let g = config.num_generations;
    let zero_std = r
        .rewards
        .chunks(g)
        .filter(|grp| grp.iter().all(|&x| x == grp[0]))
        .count() as f64
        / (r.rewards.len() / g) as f64;
    let (mut ent_sum, mut ent_n) = (0.0, 0usize);
    for (e, &m) in r.entropy.iter().zip(&r.mask) {
        if m {
            ent_sum += e;
            ent_n += 1;
        }
    }
    let (mut w_sum, mut w_n, mut w_max) = (0.0, 0usize, 0.0f64);
    let (mut fid_sum, mut fid_n) = (0.0, 0usize);
    let shaping = config.credit.shaping();
    for (i, w) in r.credit.weights.iter().enumerate() {
        let p_len = r.problems[i].prompt.len();
        for &x in &w[p_len..] {
            w_sum += x;
            w_n += 1;
            w_max = w_max.max(x);
        }
        if r.completions[i].tokens == r.problems[i].response
            && let Some(s) = &r.credit.scores[i]
            && let Some(p) = fidelity(s, p_len, &r.problems[i].decisive, &shaping)
        {
            fid_sum += p;
            fid_n += 1;
        }
    }
    StepMetrics {
        step,
        reward_mean: mean,
        reward_std: var.sqrt(),
        accuracy: mean,
        loss: stats.loss / iterations,
        kl: stats.kl / iterations,
        clip_ratio_low: stats.clip_ratio_low / iterations,
        clip_ratio_high: stats.clip_ratio_high / iterations,
        clip_ratio_region: stats.clip_ratio_region / iterations,
        entropy: if ent_n > 0 {
            ent_sum / ent_n as f64
        } else {
            0.0
        },
        completion_length: r
            .completions
            .iter()
            .map(|c| c.tokens.len() as f64)
            .sum::<f64>()
            / b,
        truncated_frac: r.completions.iter().filter(|c| c.truncated).count() as f64 / b,
        zero_std_frac: zero_std,
        flow: FlowMetrics {
            weight_mean: if w_n > 0 { w_sum / w_n as f64 } else { 1.0 },
            weight_max: w_max,
            answer_mass: r.credit.answer_mass,
            no_answer_frac: r.credit.no_answer as f64 / b,
            unscored_frac: r.credit.unscored as f64 / b,
            conservation_residual: r.credit.conservation_residual,
            scoring_time_frac: if config.credit.method == CreditMethod::Uniform {
                0.0
            } else {
                r.scoring_secs / step_secs
            },
            fidelity: (fid_n > 0).then(|| fid_sum / fid_n as f64),
        },
        eval_accuracy: None,
        eval_sampled_accuracy: None,
        step_secs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StepMetrics {
        StepMetrics {
            step: 3,
            reward_mean: 0.25,
            reward_std: 0.5,
            accuracy: 0.25,
            loss: -0.125,
            kl: 0.0,
            clip_ratio_low: 0.01,
            clip_ratio_high: 0.02,
            clip_ratio_region: 0.03,
            entropy: 1.5,
            completion_length: 30.0,
            truncated_frac: 0.0,
            zero_std_frac: 0.5,
            flow: FlowMetrics {
                weight_mean: 1.2,
                weight_max: 1.5,
                answer_mass: Some(1.0),
                no_answer_frac: 0.25,
                unscored_frac: 0.0,
                conservation_residual: None,
                scoring_time_frac: 0.01,
                fidelity: Some(0.5),
            },
            eval_accuracy: None,
            eval_sampled_accuracy: Some(0.75),
            step_secs: 2.0,
        }
    }

    /// The logged `flow/*` keys are exactly the core's names, in the core's order.
    #[test]
    fn flow_keys_are_the_core_vocabulary() {
        let line = serde_json::to_string(&sample()).unwrap();
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .filter(|k| k.starts_with("flow/"))
            .collect();
        let mut expected = names::ALL.to_vec();
        expected.sort_unstable();
        assert_eq!(keys, expected);
        // In the text, in logging order.
        let positions: Vec<usize> = names::ALL
            .iter()
            .map(|k| line.find(&format!("\"{k}\"")).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{line}");
    }

    #[test]
    fn a_line_round_trips_and_earlier_lines_load() {
        let m = sample();
        let line = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<StepMetrics>(&line).unwrap(), m);
        // A line of an earlier version (serde's derive with renames), optional keys absent.
        let old = r#"{"step":1,"reward_mean":0.5,"reward_std":0.5,"accuracy":0.5,"loss":0.1,"kl":0.0,"clip_ratio_low":0.0,"clip_ratio_high":0.0,"clip_ratio_region":0.0,"entropy":1.0,"completion_length":20.0,"truncated_frac":0.0,"zero_std_frac":0.0,"flow/weight_mean":1.1,"flow/weight_max":1.5,"flow/answer_mass":null,"flow/no_answer_frac":0.0,"flow/unscored_frac":0.0,"flow/scoring_time_frac":0.02,"eval/accuracy":0.4,"step_secs":1.0,"extra":[1]}"#;
        let m: StepMetrics = serde_json::from_str(old).unwrap();
        assert_eq!(m.flow.weight_mean, 1.1);
        assert_eq!(m.flow.answer_mass, None);
        assert_eq!(m.eval_accuracy, Some(0.4));
        let missing = old.replace("\"flow/weight_max\":1.5,", "");
        let err = serde_json::from_str::<StepMetrics>(&missing).unwrap_err();
        assert!(err.to_string().contains("flow/weight_max"), "{err}");
    }
}
