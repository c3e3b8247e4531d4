//! Credit methods: which response tokens get the shaped (γ-weighted) advantage.
//!
//! Every method produces per-token weights for one sequence through `flowtracer-core`
//! (`trace` + `shaping::token_weights`, or a `baselines` score + `token_weights`); this module
//! only chooses the score and handles the cases the core reports as errors (no answer span,
//! no source mass), where the sequence gets weight 1 everywhere ([method §1](docs/method.md#s1), §6).

use core::ops::Range;

use flowtracer_core::aggregate::{LayerSelection, Layout};
use flowtracer_core::baselines::{CreditInputs, CreditMethod, credit_scores};
use flowtracer_core::flow::conservation_residual;
use flowtracer_core::shaping::{
    ApplyTo, ShapingConfig, select_tokens, shape_advantage, token_weights,
};
use flowtracer_core::{LayerShape, Sequence, Spans, Tokens, Tracer};
use serde::{Deserialize, Serialize};

use crate::answer::locate_answer;
use crate::sampling::Completion;
use crate::task::Problem;

/// Credit settings of a run. `Default` is the core's: FlowTracer with the shaping defaults
/// of [`ShapingConfig`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreditConfig {
    /// The method (the core's [`CreditMethod`], serialised by its snake_case name).
    pub method: CreditMethod,
    /// Fraction of response tokens selected ([`ShapingConfig::rho`]).
    pub rho: f64,
    /// Weight of a selected token ([`ShapingConfig::gamma_flow`]).
    pub gamma: f64,
    /// Seed of the `random` baseline.
    pub seed: u64,
    /// Which responses are shaped ([`ShapingConfig::apply_to`]; absent in `state.json` of
    /// earlier versions and not written at its default, so those files read back
    /// unchanged).
    #[serde(default, skip_serializing_if = "is_default_apply_to")]
    pub apply_to: ApplyTo,
}

fn is_default_apply_to(a: &ApplyTo) -> bool {
    *a == ApplyTo::default()
}

impl Default for CreditConfig {
    fn default() -> Self {
        let shaping = ShapingConfig::default();
        Self {
            method: CreditMethod::default(),
            rho: shaping.rho,
            gamma: shaping.gamma_flow,
            seed: 0,
            apply_to: shaping.apply_to,
        }
    }
}

impl CreditConfig {
    /// The core's shaping config for this run.
    pub fn shaping(&self) -> ShapingConfig {
        let select = self.method.select();
        ShapingConfig::default()
            .with_rho(self.rho)
            .with_gamma_flow(self.gamma)
            .with_apply_to(self.apply_to)
            .with_select(select)
    }

    /// This config with the knobs its method never reads put at their defaults: `uniform`
    /// weighs every token 1 ([`score_sequence`]), so its `rho`, `gamma` and `apply_to` cannot
    /// change a run. Two runs whose canonical configs are equal are the same run, which lets a
    /// sensitivity sweep over those knobs keep the uniform runs it is compared against.
    pub fn canonical(&self) -> Self {
        if self.method != CreditMethod::Uniform {
            return self.clone();
        }
        let d = Self::default();
        Self {
            rho: d.rho,
            gamma: d.gamma,
            apply_to: d.apply_to,
            ..self.clone()
        }
    }
}

/// One sequence as the credit methods see it.
#[derive(Debug, Clone)]
pub struct SequenceView<'a> {
    /// Head-mean attention of the captured layers, `[L_sel][n][n]` row-major (may be empty
    /// when the method needs no attention).
    pub layer_means: &'a [f64],
    /// Number of captured layers in `layer_means`.
    pub num_layers: usize,
    /// Sequence length (prompt + completion).
    pub n: usize,
    /// The question span (the prompt).
    pub question: Range<usize>,
    /// The scored response span.
    pub response: Range<usize>,
    /// The answer span, if the response has a non-empty one.
    pub answer: Option<Range<usize>>,
    /// Predictive entropy per position (length `n`; used by `predictive_entropy`).
    pub entropy: &'a [f64],
    /// Seed of the `random` baseline for this sequence.
    pub seed: u64,
}

/// Why a sequence got weight 1 everywhere.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Unshaped {
    /// No answer span (counted in `flow/no_answer_frac`).
    NoAnswer,
    /// The completion is empty: nothing to score.
    EmptyCompletion,
    /// The method has no score (`uniform`).
    NoScore(CreditMethod),
    /// The core rejected the input (e.g. no source mass).
    Core(flowtracer_core::Error),
}

impl Unshaped {
    /// Whether the sequence counts as unscored (`flow/unscored_frac`): every cause but a
    /// missing answer, which has its own metric.
    pub fn is_unscored(&self) -> bool {
        !matches!(self, Unshaped::NoAnswer)
    }
}

/// Weights of one sequence plus FlowTracer diagnostics.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// Per-position weight (length `n`, 1 outside the response).
    pub weights: Vec<f64>,
    /// The raw score the selection used (length `n`), when there was one.
    pub scores: Option<Vec<f64>>,
    /// `Err` when the sequence is not shaped.
    pub status: Result<(), Unshaped>,
    /// Conservation diagnostics (FlowTracer methods only).
    pub flow: Option<FlowStats>,
}

/// Conservation diagnostics of one traced sequence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlowStats {
    /// `sum f(a)` over the answer: 1 by conservation.
    pub answer_mass: f64,
    /// The core's [`conservation_residual`]: the largest `|sum_k W'[i][k] - 1|` over live
    /// tokens outside the answer (0 up to rounding).
    ///
    /// [`conservation_residual`]: flowtracer_core::flow::conservation_residual
    pub residual: f64,
}

/// The view as the core's validated [`Sequence`]: the mean of its captured layers (the
/// trainer captures only the selected ones) as `Ā`, with its spans, checked once.
///
/// A view without an answer gets its last response token as a stand-in answer: only the
/// methods that do not read the answer ([`CreditMethod::needs_answer`] is false) get this far
/// without one.
///
/// # Errors
///
/// The core's validation errors (shapes, spans, the layers' data).
pub fn sequence(view: &SequenceView<'_>) -> Result<Sequence<'static, f64>, flowtracer_core::Error> {
    let answer = view
        .answer
        .clone()
        .unwrap_or(view.response.end.saturating_sub(1)..view.response.end);
    let shape = LayerShape {
        layers: view.num_layers,
        heads: 1,
        n: view.n,
        layout: Layout::Dense,
    };
    let spans = Spans::new(view.question.clone(), answer).with_response(view.response.clone());
    Sequence::from_layers(view.layer_means, shape, &LayerSelection::All, spans)
}

/// The raw score of `method` for one sequence (length `n`), or why there is none: the core's
/// [`credit_scores`] on the view, plus the conservation diagnostics of a traced sequence.
pub fn scores(
    method: CreditMethod,
    view: &SequenceView<'_>,
) -> Result<(Vec<f64>, Option<FlowStats>), Unshaped> {
    if method.needs_answer() && view.answer.is_none() {
        return Err(Unshaped::NoAnswer);
    }
    let seq = if method.needs_attention() || method.needs_answer() {
        Some(sequence(view).map_err(Unshaped::Core)?)
    } else {
        None
    };
    let response = Tokens::from(view.response.clone());
    let inputs = CreditInputs {
        n: view.n,
        response: &response,
        sequence: seq.as_ref(),
        layer_means: view.layer_means,
        num_layers: view.num_layers,
        entropy: view.entropy,
        seed: view.seed,
    };
    match credit_scores(method, &mut Tracer::default(), &inputs) {
        Ok(Some((s, trace))) => {
            let stats = trace.zip(seq.as_ref()).map(|(t, seq)| FlowStats {
                answer_mass: t.answer_mass(),
                residual: conservation_residual(seq, t.edge_threshold(), t.reach()),
            });
            Ok((s, stats))
        }
        Ok(None) => Err(Unshaped::NoScore(method)),
        Err(e) => Err(Unshaped::Core(e)),
    }
}

/// Scores one sequence and turns the score into token weights with the core.
pub fn score_sequence(config: &CreditConfig, view: &SequenceView<'_>) -> Scored {
    let shaping = config.shaping();
    let ones = || vec![1.0; view.n];
    if config.method == CreditMethod::Uniform {
        return Scored {
            weights: ones(),
            scores: None,
            status: Ok(()),
            flow: None,
        };
    }
    match scores(config.method, view) {
        Ok((s, mass)) => match token_weights(&s, &view.response.clone().into(), &shaping) {
            Ok(w) => Scored {
                weights: w,
                scores: Some(s),
                status: Ok(()),
                flow: mass,
            },
            Err(e) => Scored {
                weights: ones(),
                scores: Some(s),
                status: Err(Unshaped::Core(e)),
                flow: mass,
            },
        },
        Err(u) => Scored {
            weights: ones(),
            scores: None,
            status: Err(u),
            flow: None,
        },
    }
}

/// The attention and entropy one no-grad forward pass captured for a batch of
/// prompt + completion sequences, as read off the device.
#[derive(Debug, Clone, Copy)]
pub struct CapturedBatch<'a> {
    /// Head-mean attention of the captured layers, `[B][layers][width][width]` (empty when
    /// no layer is captured).
    pub attention: &'a [f32],
    /// Number of captured layers.
    pub layers: usize,
    /// Padded sequence width `T = prompt_cols + completion_len`.
    pub width: usize,
    /// Column where completions start (every prompt is left-padded to it).
    pub prompt_cols: usize,
    /// Padded completion length `C`.
    pub completion_len: usize,
    /// Per-token entropy `[B][C]` of the sampling distribution.
    pub entropy: &'a [f64],
}

/// What the credit stage produced for a batch (one entry per sequence, in batch order).
#[derive(Debug, Clone, PartialEq)]
pub struct CreditedBatch {
    /// Shaped per-token advantages `[B][C]` (0 on completion padding).
    pub advantages: Vec<f64>,
    /// Head-mean attention of the captured layers `[layers][n][n]` per sequence, without
    /// padding (empty when no layer is captured).
    pub attention: Vec<Vec<f64>>,
    /// Credit weights over each sequence's positions (length `n`).
    pub weights: Vec<Vec<f64>>,
    /// The raw credit score (length `n`) when the method produced one.
    pub scores: Vec<Option<Vec<f64>>>,
    /// Answer span in sequence positions.
    pub answers: Vec<Option<Range<usize>>>,
    /// Sequences without an answer span.
    pub no_answer: usize,
    /// Sequences the core could not score (weight 1).
    pub unscored: usize,
    /// Mean `sum f(a)` over FlowTracer-scored sequences.
    pub answer_mass: Option<f64>,
    /// Max of the core's `conservation_residual` over FlowTracer-scored sequences.
    pub conservation_residual: Option<f64>,
}

/// Scores every sequence of a batch with the credit method and shapes its group advantage:
/// per sequence, unpads its captured attention, locates the answer, scores the tokens
/// ([`score_sequence`]) and turns the weights into per-token advantages with the core's
/// `shape_advantage`.
///
/// `problems[r]` and `completions[r]` make sequence `r` (prompt + completion);
/// `group_advantages[r]` is its GRPO advantage. The `random` baseline of sequence `r` is
/// seeded with `random_seed + r`. An empty completion is counted as unscored.
///
/// # Panics
///
/// If the slices disagree on the batch size or `captured` is shorter than its layout says
/// (a trainer bug).
pub fn score_rollouts(
    config: &CreditConfig,
    problems: &[Problem],
    completions: &[Completion],
    group_advantages: &[f64],
    captured: &CapturedBatch<'_>,
    random_seed: u64,
) -> CreditedBatch {
    let b = problems.len();
    assert_eq!(completions.len(), b, "one completion per problem");
    assert_eq!(group_advantages.len(), b, "one advantage per sequence");
    let (l_sel, t, c_len) = (captured.layers, captured.width, captured.completion_len);
    let shaping = config.shaping();
    let mut out = CreditedBatch {
        advantages: vec![0.0; b * c_len],
        attention: Vec::with_capacity(b),
        weights: Vec::with_capacity(b),
        scores: Vec::with_capacity(b),
        answers: Vec::with_capacity(b),
        no_answer: 0,
        unscored: 0,
        answer_mass: None,
        conservation_residual: None,
    };
    let (mut mass_sum, mut mass_n, mut residual) = (0.0, 0usize, 0.0f64);
    for r in 0..b {
        let p_len = problems[r].prompt.len();
        let comp = &completions[r].tokens;
        let n = p_len + comp.len();
        let offset = captured.prompt_cols - p_len;
        let mut layer_means = Vec::with_capacity(l_sel * n * n);
        for l in 0..l_sel {
            for k in 0..n {
                let row = ((r * l_sel + l) * t + offset + k) * t + offset;
                layer_means.extend(
                    captured.attention[row..row + n]
                        .iter()
                        .map(|&x| f64::from(x)),
                );
            }
        }
        let answer = locate_answer(comp)
            .range()
            .map(|a| a.start + p_len..a.end + p_len);
        let mut ent = vec![0.0; n];
        for j in 0..comp.len() {
            ent[p_len + j] = captured.entropy[r * c_len + j];
        }
        let view = SequenceView {
            layer_means: &layer_means,
            num_layers: l_sel,
            n,
            question: 0..p_len,
            response: p_len..n,
            answer: answer.clone(),
            entropy: &ent,
            seed: random_seed.wrapping_add(r as u64),
        };
        let scored = if comp.is_empty() {
            Scored {
                weights: vec![1.0; n],
                scores: None,
                status: Err(Unshaped::EmptyCompletion),
                flow: None,
            }
        } else {
            score_sequence(config, &view)
        };
        if answer.is_none() {
            out.no_answer += 1;
        }
        if scored.status.as_ref().is_err_and(Unshaped::is_unscored) {
            out.unscored += 1;
        }
        if let Some(stats) = scored.flow {
            mass_sum += stats.answer_mass;
            mass_n += 1;
            residual = residual.max(stats.residual);
        }
        let mut shaped = vec![0.0; comp.len()];
        shape_advantage(
            group_advantages[r],
            &scored.weights[p_len..n],
            &shaping,
            &mut shaped,
        );
        out.advantages[r * c_len..r * c_len + comp.len()].copy_from_slice(&shaped);
        out.attention.push(layer_means);
        out.weights.push(scored.weights);
        out.scores.push(scored.scores);
        out.answers.push(answer);
    }
    out.answer_mass = (mass_n > 0).then(|| mass_sum / mass_n as f64);
    out.conservation_residual = (mass_n > 0).then_some(residual);
    out
}

/// Credit fidelity of one scored sequence: the [`precision`] of the tokens the shaping
/// selects from the response (`prompt_len..scores.len()`) against the decisive response
/// positions `decisive` (relative to the response start).
pub fn fidelity(
    scores: &[f64],
    prompt_len: usize,
    decisive: &[usize],
    shaping: &ShapingConfig,
) -> Option<f64> {
    let response = (prompt_len..scores.len()).into();
    let selected = select_tokens(scores, &response, shaping.rho, shaping.select);
    let decisive: Vec<usize> = decisive.iter().map(|d| d + prompt_len).collect();
    precision(&selected, &decisive)
}

/// Precision of a method's top-ρ tokens against the known decisive tokens.
///
/// `selected` and `decisive` are positions; returns `|selected ∩ decisive| / |selected|`
/// (`None` when nothing is selected).
pub fn precision(selected: &[usize], decisive: &[usize]) -> Option<f64> {
    if selected.is_empty() {
        return None;
    }
    let hits = selected.iter().filter(|p| decisive.contains(p)).count();
    Some(hits as f64 / selected.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every credit method of the core has a scoring function here: none falls into the
    /// catch-all arm of [`scores`].
    #[test]
    fn every_core_credit_method_is_scored() {
        // The worked example of the method (5 tokens, question 0..2, answer 4..5).
        let a = [
            1.0, 0.0, 0.0, 0.0, 0.0, //
            0.5, 0.5, 0.0, 0.0, 0.0, //
            0.3, 0.5, 0.2, 0.0, 0.0, //
            0.1, 0.2, 0.3, 0.4, 0.0, //
            0.1, 0.1, 0.6, 0.1, 0.1, //
        ];
        let entropy = [0.0, 0.0, 0.3, 0.2, 0.1];
        let view = SequenceView {
            layer_means: &a,
            num_layers: 1,
            n: 5,
            question: 0..2,
            response: 2..5,
            answer: Some(4..5),
            entropy: &entropy,
            seed: 1,
        };
        for &method in CreditMethod::ALL {
            let config = CreditConfig {
                method,
                ..CreditConfig::default()
            };
            let scored = score_sequence(&config, &view);
            assert_eq!(scored.status, Ok(()), "{method}");
            assert_eq!(scored.weights.len(), 5, "{method}");
        }
    }

    #[test]
    fn defaults_are_the_core_defaults() {
        let c = CreditConfig::default();
        let core = ShapingConfig::default();
        assert_eq!(c.method, CreditMethod::FlowTracer);
        assert_eq!(c.shaping(), core);
        // `apply_to` reaches the core's shaping, and is written only when not the default.
        let nonneg = CreditConfig {
            apply_to: ApplyTo::NonnegativeOnly,
            ..c.clone()
        };
        assert_eq!(nonneg.shaping().apply_to, ApplyTo::NonnegativeOnly);
        let json = serde_json::to_value(&nonneg).unwrap();
        assert_eq!(json["apply_to"], "nonnegative_only");
        assert_eq!(
            serde_json::from_value::<CreditConfig>(json).unwrap(),
            nonneg
        );
        assert!(serde_json::to_value(&c).unwrap().get("apply_to").is_none());
    }
}
