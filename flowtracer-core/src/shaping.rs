//! Token weights and advantage shaping ([method §9](docs/method.md#s9)).
//!
//! Per response, the `k = ceil(rho |R| - 1e-9)` scored tokens with the largest score (the
//! throughput `tau`, or a baseline's score) get weight `gamma_flow`, the others 1; the
//! shaped advantage of a token is its weight times the response's GRPO advantage. Weights
//! are constants: no gradient flows through them.

use alloc::vec;
use alloc::vec::Vec;
use core::cmp::Ordering;

use crate::error::Error;
use crate::float::FlowFloat;
use crate::sequence::Tokens;
use crate::validate::check_response;

/// Which responses are shaped ([method §9](docs/method.md#s9)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ApplyTo {
    /// Every response: high-flow tokens of wrong answers also get a larger penalty (default).
    #[default]
    Both,
    /// Only responses with a non-negative advantage (arXiv 2510.13554).
    NonnegativeOnly,
}

/// Which end of the score ranking is selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Select {
    /// The highest scores (default).
    #[default]
    Top,
    /// **\[ours\]** The lowest scores, for the paper's bottom-k ablation. Tokens with score
    /// 0 are still taken last, as in `Top`.
    Bottom,
}

crate::vocabulary::named_enum!(ApplyTo, "apply_to", {
    Both => "both",
    NonnegativeOnly => "nonnegative_only",
});

crate::vocabulary::named_enum!(Select, "select", {
    Top => "top",
    Bottom => "bottom",
});

/// Configuration of the shaping stage. `Default` is the paper's setting.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct ShapingConfig {
    /// Fraction of the scored tokens selected (default 0.4).
    pub rho: f64,
    /// Weight of a selected token (default 1.5).
    pub gamma_flow: f64,
    /// Which responses are shaped (default [`ApplyTo::Both`]).
    pub apply_to: ApplyTo,
    /// **\[ours\]** `w = 1 + mix (gamma - 1)`, `mix` in `[0, 1]`; 0 is exactly plain GRPO
    /// (default 1).
    pub mix: f64,
    /// **\[ours\]** Rescale weights to mean 1 over the response (default false).
    pub normalize_mean: bool,
    /// Top or bottom selection (default [`Select::Top`]).
    pub select: Select,
}

impl Default for ShapingConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl ShapingConfig {
    /// The paper's setting, as a constant (what `Default` returns).
    pub const DEFAULT: Self = Self {
        rho: 0.4,
        gamma_flow: 1.5,
        apply_to: ApplyTo::Both,
        mix: 1.0,
        normalize_mean: false,
        select: Select::Top,
    };

    /// Sets [`rho`](Self::rho).
    pub fn with_rho(mut self, rho: f64) -> Self {
        self.rho = rho;
        self
    }
    /// Sets [`gamma_flow`](Self::gamma_flow).
    pub fn with_gamma_flow(mut self, gamma: f64) -> Self {
        self.gamma_flow = gamma;
        self
    }
    /// Sets [`apply_to`](Self::apply_to).
    pub fn with_apply_to(mut self, apply_to: ApplyTo) -> Self {
        self.apply_to = apply_to;
        self
    }
    /// Sets [`mix`](Self::mix).
    pub fn with_mix(mut self, mix: f64) -> Self {
        self.mix = mix;
        self
    }
    /// Sets [`normalize_mean`](Self::normalize_mean).
    pub fn with_normalize_mean(mut self, on: bool) -> Self {
        self.normalize_mean = on;
        self
    }
    /// Sets [`select`](Self::select).
    pub fn with_select(mut self, select: Select) -> Self {
        self.select = select;
        self
    }

    /// Checks every field's domain.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the first bad field: `rho` outside `[0, 1]`,
    /// `gamma_flow` negative or not finite, `mix` outside `[0, 1]` (so weights are never
    /// negative).
    pub fn validate(&self) -> Result<(), Error> {
        if !(0.0..=1.0).contains(&self.rho) {
            return Err(Error::InvalidConfig {
                field: "rho",
                reason: "must lie in [0, 1]",
            });
        }
        if !(self.gamma_flow.is_finite() && self.gamma_flow >= 0.0) {
            return Err(Error::InvalidConfig {
                field: "gamma_flow",
                reason: "must be finite and >= 0",
            });
        }
        if !(0.0..=1.0).contains(&self.mix) {
            return Err(Error::InvalidConfig {
                field: "mix",
                reason: "must lie in [0, 1]",
            });
        }
        Ok(())
    }
}

/// `k = ceil(rho * len - 1e-9)`, computed in f64 (so `0.4 * 25` gives 10 in f32 and f64
/// alike), clamped to `len`.
///
/// # Examples
///
/// ```
/// use flowtracer_core::shaping::num_selected;
/// assert_eq!(num_selected(0.4, 25), 10);
/// assert_eq!(num_selected(0.4, 3), 2);
/// assert_eq!(num_selected(0.0, 3), 0);
/// ```
pub fn num_selected(rho: f64, len: usize) -> usize {
    let k = num_traits::Float::ceil(rho * len as f64 - 1e-9);
    if k <= 0.0 { 0 } else { (k as usize).min(len) }
}

/// Orders positions for selection: positive scores before the rest, then by score (highest
/// first for `Top`, lowest first for `Bottom`), then earlier position first. A NaN score
/// ranks with the zeros.
fn rank<F: FlowFloat>(scores: &[F], select: Select, a: usize, b: usize) -> Ordering {
    let key = |p: usize| {
        let s = scores[p];
        (s > F::zero(), if s > F::zero() { s } else { F::zero() })
    };
    let (pa, sa) = key(a);
    let (pb, sb) = key(b);
    pb.cmp(&pa)
        .then_with(|| {
            let by = sb.partial_cmp(&sa).unwrap_or(Ordering::Equal);
            match select {
                Select::Top => by,
                Select::Bottom => by.reverse(),
            }
        })
        .then(a.cmp(&b))
}

/// The `k = num_selected(rho, |R|)` positions of `response` selected by score, ascending.
///
/// Ties go to the earlier position; tokens with score 0 (e.g. after the answer) are taken
/// only when fewer than `k` tokens score above 0.
///
/// # Panics
///
/// If a response position is not inside `0..scores.len()`.
///
/// # Complexity
///
/// O(|R| log |R|) time, O(|R|) memory.
///
/// # Examples
///
/// ```
/// use flowtracer_core::shaping::{select_tokens, Select};
/// let tau = [1.0, 1.42, 1.39, 0.15, 2.0];
/// assert_eq!(select_tokens(&tau, &(2..5).into(), 0.4, Select::Top), vec![2, 4]);
/// assert_eq!(select_tokens(&tau, &[1, 3, 4].into(), 0.4, Select::Top), vec![1, 4]);
/// ```
pub fn select_tokens<F: FlowFloat>(
    scores: &[F],
    response: &Tokens,
    rho: f64,
    select: Select,
) -> Vec<usize> {
    let k = num_selected(rho, response.len());
    let mut order: Vec<usize> = response.iter().collect();
    if k < order.len() && k > 0 {
        order.select_nth_unstable_by(k - 1, |&a, &b| rank(scores, select, a, b));
    }
    order.truncate(k);
    order.sort_unstable();
    order
}

/// Per-token weights of one response, length `scores.len()` (1 outside `response`).
///
/// Selected tokens get `gamma_flow`, then `w = 1 + mix (w - 1)`, then, if
/// `normalize_mean`, the weights of `response` are scaled to mean 1. A response without an
/// answer span gets no shaping: its weights are all 1, and a trainer counts it in
/// `flow/no_answer_frac` instead of calling this.
///
/// # Errors
///
/// [`Error::InvalidConfig`] (see [`ShapingConfig::validate`]); the span errors of the
/// response against `scores.len()` ([`Error::EmptySpan`], [`Error::UnsortedSpan`],
/// [`Error::SpanOutOfRange`]).
///
/// # Complexity
///
/// O(N + |R| log |R|).
///
/// # Examples
///
/// The worked example of [method §12](docs/method.md#s12):
///
/// ```
/// use flowtracer_core::shaping::{token_weights, ShapingConfig};
/// let tau = [1.0, 1.42, 1.39, 0.15, 2.0];
/// let w = token_weights(&tau, &(2..5).into(), &ShapingConfig::default())?;
/// assert_eq!(w, vec![1.0, 1.0, 1.5, 1.0, 1.5]);
/// # Ok::<(), flowtracer_core::Error>(())
/// ```
pub fn token_weights<F: FlowFloat>(
    scores: &[F],
    response: &Tokens,
    config: &ShapingConfig,
) -> Result<Vec<F>, Error> {
    config.validate()?;
    check_response(scores.len(), response)?;
    Ok(weights(scores, response, config))
}

/// [`token_weights`] for a valid configuration and response.
pub(crate) fn weights<F: FlowFloat>(
    scores: &[F],
    response: &Tokens,
    config: &ShapingConfig,
) -> Vec<F> {
    let mut w = vec![F::one(); scores.len()];
    let high = F::from_f64_lossy(1.0 + config.mix * (config.gamma_flow - 1.0));
    for p in select_tokens(scores, response, config.rho, config.select) {
        w[p] = high;
    }
    if config.normalize_mean {
        let mean = response.iter().map(|p| w[p].widen()).sum::<f64>() / response.len() as f64;
        if mean > 0.0 {
            for p in response.iter() {
                w[p] = F::from_f64_lossy(w[p].widen() / mean);
            }
        }
    }
    w
}

/// Shaped advantages of one response: `out[t] = w[t] * advantage` ([method §9](docs/method.md#s9)), or the plain
/// advantage everywhere when `apply_to` is [`ApplyTo::NonnegativeOnly`] and the advantage
/// is negative.
///
/// # Panics
///
/// If `weights` and `out` differ in length.
///
/// # Complexity
///
/// O(len).
///
/// # Examples
///
/// ```
/// use flowtracer_core::shaping::{shape_advantage, ShapingConfig};
/// let mut out = [0.0; 3];
/// shape_advantage(-0.5, &[1.0, 1.5, 1.0], &ShapingConfig::default(), &mut out);
/// assert_eq!(out, [-0.5, -0.75, -0.5]);
/// ```
pub fn shape_advantage<F: FlowFloat>(
    advantage: F,
    weights: &[F],
    config: &ShapingConfig,
    out: &mut [F],
) {
    assert_eq!(
        weights.len(),
        out.len(),
        "weights and out must have one length"
    );
    let plain = config.apply_to == ApplyTo::NonnegativeOnly && advantage < F::zero();
    for (o, &w) in out.iter_mut().zip(weights) {
        *o = if plain { advantage } else { w * advantage };
    }
}
