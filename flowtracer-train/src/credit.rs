//! Credit methods: which response tokens get the shaped (γ-weighted) advantage.
//!
//! Every method produces per-token weights for one sequence through `flowtracer-core`
//! (`trace` + `shaping::token_weights`, or a `baselines` score + `token_weights`); this module
//! only chooses the score and handles the cases the core reports as errors (no answer span,
//! no source mass), where the sequence gets weight 1 everywhere (spec §1, §6).

use core::ops::Range;

use clap::ValueEnum;
use flowtracer_core::aggregate::{LayerSelection, Layout, aggregate};
use flowtracer_core::baselines;
use flowtracer_core::flow::conservation_residual;
use flowtracer_core::shaping::{Select, ShapingConfig, token_weights};
use flowtracer_core::{TraceConfig, trace};
use serde::{Deserialize, Serialize};

/// The credit method of a run (spec §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Credit {
    /// Plain GRPO: every weight 1.
    Uniform,
    /// FlowTracer throughput, top-ρ.
    Flowtracer,
    /// ρ of the response tokens drawn at random (seeded).
    Random,
    /// Attention received from later response tokens.
    AttentionReceived,
    /// Normalised entropy of each token's attention row.
    AttentionEntropy,
    /// The policy's predictive entropy at each token.
    PredictiveEntropy,
    /// Attention rollout into the answer.
    Rollout,
    /// FlowTracer throughput, bottom-ρ (ablation).
    BottomFlow,
}

impl Credit {
    /// Every method, uniform first.
    pub const ALL: [Credit; 8] = [
        Credit::Uniform,
        Credit::Flowtracer,
        Credit::Random,
        Credit::AttentionReceived,
        Credit::AttentionEntropy,
        Credit::PredictiveEntropy,
        Credit::Rollout,
        Credit::BottomFlow,
    ];

    /// The snake_case name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Credit::Uniform => "uniform",
            Credit::Flowtracer => "flowtracer",
            Credit::Random => "random",
            Credit::AttentionReceived => "attention_received",
            Credit::AttentionEntropy => "attention_entropy",
            Credit::PredictiveEntropy => "predictive_entropy",
            Credit::Rollout => "rollout",
            Credit::BottomFlow => "bottom_flow",
        }
    }

    /// Whether the method reads attention (so the trainer must capture it).
    pub fn needs_attention(self) -> bool {
        !matches!(
            self,
            Credit::Uniform | Credit::Random | Credit::PredictiveEntropy
        )
    }

    /// Whether the method needs an answer span (without one the sequence is not shaped).
    pub fn needs_answer(self) -> bool {
        matches!(
            self,
            Credit::Flowtracer | Credit::BottomFlow | Credit::Rollout
        )
    }
}

/// Credit settings of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreditConfig {
    /// The method.
    pub method: Credit,
    /// Fraction of response tokens selected (spec default 0.4).
    pub rho: f64,
    /// Weight of a selected token (spec default 1.5).
    pub gamma: f64,
    /// Seed of the `random` baseline.
    pub seed: u64,
}

impl Default for CreditConfig {
    fn default() -> Self {
        Self {
            method: Credit::Flowtracer,
            rho: 0.4,
            gamma: 1.5,
            seed: 0,
        }
    }
}

impl CreditConfig {
    /// The core's shaping config for this run.
    pub fn shaping(&self) -> ShapingConfig {
        let select = if self.method == Credit::BottomFlow {
            Select::Bottom
        } else {
            Select::Top
        };
        ShapingConfig::default()
            .with_rho(self.rho)
            .with_gamma_flow(self.gamma)
            .with_select(select)
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
pub enum Unshaped {
    /// No answer span (counted in `flow/no_answer_frac`).
    NoAnswer,
    /// The core rejected the input (e.g. no source mass); the message is kept for logs.
    Core(String),
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

/// The aggregated attention Ā (dense `n x n`) of a view: the mean of its captured layers.
///
/// # Errors
///
/// The core's validation errors.
pub fn aggregated(view: &SequenceView<'_>) -> Result<Vec<f64>, flowtracer_core::Error> {
    aggregate(
        view.layer_means,
        view.num_layers,
        1,
        view.n,
        Layout::Dense,
        &LayerSelection::All,
    )
}

/// The raw score of `method` for one sequence (length `n`), or why there is none.
pub fn scores(
    method: Credit,
    view: &SequenceView<'_>,
) -> Result<(Vec<f64>, Option<FlowStats>), Unshaped> {
    let core_err = |e: flowtracer_core::Error| Unshaped::Core(e.to_string());
    if method.needs_answer() && view.answer.is_none() {
        return Err(Unshaped::NoAnswer);
    }
    match method {
        Credit::Uniform => Err(Unshaped::Core("uniform has no score".into())),
        Credit::Flowtracer | Credit::BottomFlow => {
            let a = aggregated(view).map_err(core_err)?;
            let answer = view.answer.clone().expect("checked");
            let cfg = TraceConfig::default();
            let t =
                trace(&a, view.n, view.question.clone(), answer.clone(), &cfg).map_err(core_err)?;
            let stats = FlowStats {
                answer_mass: t.answer_mass(),
                residual: conservation_residual(&a, view.n, &answer, cfg.edge_threshold, t.reach()),
            };
            Ok((t.throughput().to_vec(), Some(stats)))
        }
        Credit::Random => baselines::random_scores(view.n, view.response.clone(), view.seed)
            .map(|s| (s, None))
            .map_err(core_err),
        Credit::AttentionReceived => {
            let a = aggregated(view).map_err(core_err)?;
            baselines::attention_received(&a, view.n, view.response.clone())
                .map(|s| (s, None))
                .map_err(core_err)
        }
        Credit::AttentionEntropy => {
            let a = aggregated(view).map_err(core_err)?;
            baselines::attention_entropy(&a, view.n)
                .map(|s| (s, None))
                .map_err(core_err)
        }
        Credit::PredictiveEntropy => Ok((view.entropy.to_vec(), None)),
        Credit::Rollout => {
            let answer = view.answer.clone().expect("checked");
            baselines::rollout(view.layer_means, view.num_layers, view.n, answer)
                .map(|s| (s, None))
                .map_err(core_err)
        }
    }
}

/// Scores one sequence and turns the score into token weights with the core.
pub fn score_sequence(config: &CreditConfig, view: &SequenceView<'_>) -> Scored {
    let shaping = config.shaping();
    let ones = || vec![1.0; view.n];
    if config.method == Credit::Uniform {
        return Scored {
            weights: ones(),
            scores: None,
            status: Ok(()),
            flow: None,
        };
    }
    match scores(config.method, view) {
        Ok((s, mass)) => match token_weights(Some(&s), view.n, view.response.clone(), &shaping) {
            Ok(w) => Scored {
                weights: w,
                scores: Some(s),
                status: Ok(()),
                flow: mass,
            },
            Err(e) => Scored {
                weights: ones(),
                scores: Some(s),
                status: Err(Unshaped::Core(e.to_string())),
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
