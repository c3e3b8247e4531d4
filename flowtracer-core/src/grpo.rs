//! The GRPO math the shaping plugs into ([method §10](docs/method.md#s10)), as plain slice functions.
//!
//! Group advantages, the per-token clipped surrogate with asymmetric clipping, the k3 KL
//! estimator, the four `loss_type` aggregations (TRL names), and the per-token gradient
//! coefficient `d loss / d logp`: a trainer with its own autodiff gets the exact GRPO
//! gradient by back-propagating `sum(stop_gradient(coef) * logp)`.
//!
//! Token tensors are flattened row-major `[num_sequences][seq_len]`; `mask[t]` is false
//! for padding and for tokens a trainer drops (e.g. truncated completions).

use alloc::vec;
use alloc::vec::Vec;

use crate::error::{Error, Stage};
use crate::float::FlowFloat;

/// How rewards are scaled into advantages (TRL's `scale_rewards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ScaleRewards {
    /// `(r - group mean) / (group std + eps)` (default).
    #[default]
    Group,
    /// `(r - group mean) / (batch std + eps)`.
    Batch,
    /// `r - group mean` (Dr. GRPO).
    None,
}

/// How per-token objectives are aggregated into the loss (TRL's `loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LossType {
    /// Per sequence: sum over its unmasked tokens / max(1, their count); then the mean over
    /// sequences (default).
    #[default]
    Grpo,
    /// Sum over unmasked tokens / max(1, unmasked tokens in this call).
    Bnpo,
    /// Sum / (number of sequences · `max_completion_length`).
    DrGrpo,
    /// Sum / `num_items_in_batch` (the global token count under gradient accumulation).
    Dapo,
}

crate::vocabulary::named_enum!(ScaleRewards, "scale_rewards", {
    Group => "group",
    Batch => "batch",
    None => "none",
});

crate::vocabulary::named_enum!(LossType, "loss_type", {
    Grpo => "grpo",
    Bnpo => "bnpo",
    DrGrpo => "dr_grpo",
    Dapo => "dapo",
});

/// The mean of `x` held as `shift + delta` (with `shift = x[0]`), so that
/// [`Centre::of`] is accurate to the spread of `x` rather than to its magnitude, and the
/// sample standard deviation (divisor `len - 1`), in f64.
///
/// Rewards of 3e134 that differ in their eighth digit would otherwise lose half their
/// digits: a mean rounded to one f64 is off by an ulp of 3e134, about 1e-8 of their spread.
#[derive(Debug, Clone, Copy)]
struct Centre {
    shift: f64,
    delta: f64,
    std: f64,
}

impl Centre {
    fn new<F: FlowFloat>(x: &[F]) -> Self {
        let n = x.len() as f64;
        let shift = x.first().map_or(0.0, |v| v.widen());
        let delta = x.iter().map(|v| v.widen() - shift).sum::<f64>() / n;
        let mut c = Self {
            shift,
            delta,
            std: 0.0,
        };
        let var = x.iter().map(|&v| c.of(v) * c.of(v)).sum::<f64>() / (n - 1.0);
        c.std = num_traits::Float::sqrt(var);
        c
    }

    /// `v - mean`, computed as `(v - shift) - delta`.
    #[inline]
    fn of<F: FlowFloat>(&self, v: F) -> f64 {
        (v.widen() - self.shift) - self.delta
    }
}

/// GRPO advantages `A_i = (r_i - mean r) / (std r + eps)` per group of `num_generations`
/// consecutive responses, with the sample standard deviation (divisor `G - 1`, as TRL and
/// verl). `eps` is TRL's `1e-4` by default in trainers; verl uses `1e-6`. Each group is
/// centred around its first reward, so a group's advantages sum to 0 up to rounding of the
/// rewards' spread, however large the rewards themselves are.
///
/// # Errors
///
/// [`Error::GroupTooSmall`] if `num_generations < 2`; [`Error::GroupSizeMismatch`] if it
/// does not divide `rewards.len()`; [`Error::InvalidConfig`] for a negative or non-finite
/// `eps`; [`Error::NonFiniteReward`] for the first non-finite reward;
/// [`Error::Overflow`] if a group's rewards are spread beyond the f64 range (e.g. 1.7e308 and
/// -1.7e308).
///
/// # Complexity
///
/// O(B).
///
/// # Examples
///
/// ```
/// use flowtracer_core::grpo::{group_advantages, ScaleRewards};
/// let a = group_advantages(&[1.0, 0.0, 1.0, 1.0], 2, ScaleRewards::None, 1e-4)?;
/// assert_eq!(a, vec![0.5, -0.5, 0.0, 0.0]);
/// # Ok::<(), flowtracer_core::Error>(())
/// ```
pub fn group_advantages<F: FlowFloat>(
    rewards: &[F],
    num_generations: usize,
    scale: ScaleRewards,
    eps: f64,
) -> Result<Vec<F>, Error> {
    if num_generations < 2 {
        return Err(Error::GroupTooSmall { num_generations });
    }
    if rewards.is_empty() || !rewards.len().is_multiple_of(num_generations) {
        return Err(Error::GroupSizeMismatch {
            batch: rewards.len(),
            num_generations,
        });
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::InvalidConfig {
            field: "eps",
            reason: "must be finite and >= 0",
        });
    }
    if let Some(i) = rewards.iter().position(|r| !r.is_finite()) {
        return Err(Error::NonFiniteReward { index: i });
    }
    let batch_std = Centre::new(rewards).std;
    let mut out = Vec::with_capacity(rewards.len());
    for group in rewards.chunks_exact(num_generations) {
        let centre = Centre::new(group);
        let denom = match scale {
            ScaleRewards::Group => centre.std + eps,
            ScaleRewards::Batch => batch_std + eps,
            ScaleRewards::None => 1.0,
        };
        out.extend(group.iter().map(|&r| {
            let centred = centre.of(r);
            // A constant group has advantage exactly 0, even with eps = 0.
            F::from_f64_lossy(if centred == 0.0 { 0.0 } else { centred / denom })
        }));
    }
    if out.iter().any(|a| !a.is_finite()) {
        return Err(Error::Overflow {
            stage: Stage::GroupAdvantages,
        });
    }
    Ok(out)
}

/// Configuration of [`grpo_loss`], with TRL's knob names. `Default` is TRL's default
/// (`beta = 0`, `epsilon = epsilon_high = 0.2`, `loss_type = grpo`, `scale_rewards =
/// group`, `advantage_eps = 1e-4`).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct GrpoConfig {
    /// KL coefficient against the reference policy (k3 estimator).
    pub beta: f64,
    /// Lower clipping range: the ratio is clipped at `1 - epsilon`.
    pub epsilon: f64,
    /// Upper clipping range: the ratio is clipped at `1 + epsilon_high` (DAPO: 0.28).
    pub epsilon_high: f64,
    /// Aggregation of per-token objectives.
    pub loss_type: LossType,
    /// Completion length bound, the denominator of `dr_grpo`.
    pub max_completion_length: usize,
    /// Token count of the whole batch under gradient accumulation, the denominator of
    /// `dapo` (`None`: this call's unmasked token count).
    pub num_items_in_batch: Option<usize>,
    /// How rewards are scaled into advantages.
    pub scale_rewards: ScaleRewards,
    /// `eps` of `(r - mean) / (std + eps)` (TRL's 1e-4; verl uses 1e-6).
    pub advantage_eps: f64,
}

impl GrpoConfig {
    /// The defaults, as a constant (what `Default` returns).
    pub const DEFAULT: Self = Self {
        beta: 0.0,
        epsilon: 0.2,
        epsilon_high: 0.2,
        loss_type: LossType::Grpo,
        max_completion_length: 256,
        num_items_in_batch: None,
        scale_rewards: ScaleRewards::Group,
        advantage_eps: 1e-4,
    };

    /// Sets [`beta`](Self::beta).
    pub fn with_beta(mut self, beta: f64) -> Self {
        self.beta = beta;
        self
    }
    /// Sets [`epsilon`](Self::epsilon) and, like TRL, nothing else.
    pub fn with_epsilon(mut self, epsilon: f64) -> Self {
        self.epsilon = epsilon;
        self
    }
    /// Sets [`epsilon_high`](Self::epsilon_high).
    pub fn with_epsilon_high(mut self, epsilon_high: f64) -> Self {
        self.epsilon_high = epsilon_high;
        self
    }
    /// Sets [`loss_type`](Self::loss_type).
    pub fn with_loss_type(mut self, loss_type: LossType) -> Self {
        self.loss_type = loss_type;
        self
    }
    /// Sets [`max_completion_length`](Self::max_completion_length).
    pub fn with_max_completion_length(mut self, len: usize) -> Self {
        self.max_completion_length = len;
        self
    }
    /// Sets [`num_items_in_batch`](Self::num_items_in_batch).
    pub fn with_num_items_in_batch(mut self, count: Option<usize>) -> Self {
        self.num_items_in_batch = count;
        self
    }
    /// Sets [`scale_rewards`](Self::scale_rewards).
    pub fn with_scale_rewards(mut self, scale: ScaleRewards) -> Self {
        self.scale_rewards = scale;
        self
    }
    /// Sets [`advantage_eps`](Self::advantage_eps).
    pub fn with_advantage_eps(mut self, eps: f64) -> Self {
        self.advantage_eps = eps;
        self
    }

    /// Checks every field's domain.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a negative or non-finite `beta`, `epsilon`,
    /// `epsilon_high` or `advantage_eps`.
    pub fn validate(&self) -> Result<(), Error> {
        for (field, v) in [
            ("beta", self.beta),
            ("epsilon", self.epsilon),
            ("epsilon_high", self.epsilon_high),
            ("advantage_eps", self.advantage_eps),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::InvalidConfig {
                    field,
                    reason: "must be finite and >= 0",
                });
            }
        }
        Ok(())
    }
}

impl Default for GrpoConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Per-token inputs of one loss computation, flattened `[num_sequences][seq_len]`.
#[derive(Debug, Clone, Copy)]
pub struct TokenBatch<'a, F> {
    /// Number of sequences (completions).
    pub num_sequences: usize,
    /// Padded length of each sequence.
    pub seq_len: usize,
    /// Log-probabilities under the current policy.
    pub logp: &'a [F],
    /// Log-probabilities under the policy that sampled (equal to `logp` on the first
    /// iteration).
    pub old_logp: &'a [F],
    /// Log-probabilities under the frozen reference policy (needed when `beta != 0`).
    pub ref_logp: Option<&'a [F]>,
    /// Per-token advantages, already shaped.
    pub advantages: &'a [F],
    /// `true` for tokens that count.
    pub mask: &'a [bool],
}

/// Counters a trainer logs next to the loss (masked tokens excluded).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct GrpoStats {
    /// Unmasked tokens.
    pub num_tokens: usize,
    /// Fraction of tokens with negative advantage clipped at `1 - epsilon`.
    pub clip_ratio_low: f64,
    /// Fraction of tokens with positive advantage clipped at `1 + epsilon_high`.
    pub clip_ratio_high: f64,
    /// `clip_ratio_low + clip_ratio_high`.
    pub clip_ratio_region: f64,
    /// Mean k3 KL to the reference (0 without one).
    pub kl_mean: f64,
}

/// The loss, its per-token gradient coefficients, and the clip and KL counters.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpoOutput<F> {
    /// `-aggregate(l)`.
    pub loss: F,
    /// `d loss / d logp` per token (0 where masked).
    pub coef: Vec<F>,
    /// Counters.
    pub stats: GrpoStats,
}

/// The first non-finite value among the unmasked tokens (padding may hold anything).
fn check_finite<F: FlowFloat>(batch: &TokenBatch<'_, F>) -> Result<(), Error> {
    let seq_len = batch.seq_len.max(1);
    for t in (0..batch.mask.len()).filter(|&t| batch.mask[t]) {
        let finite = batch.logp[t].is_finite()
            && batch.old_logp[t].is_finite()
            && batch.advantages[t].is_finite()
            && batch.ref_logp.is_none_or(|r| r[t].is_finite());
        if !finite {
            let position = crate::error::Position::matrix(t / seq_len, t % seq_len);
            return Err(Error::NonFinite { position });
        }
    }
    Ok(())
}

/// The aggregation weight `c_i` of each token of sequence `i`, so that
/// `loss = -sum_t c_t l_t`.
fn aggregation_weights<F>(
    batch: &TokenBatch<'_, F>,
    config: &GrpoConfig,
    total: usize,
) -> Vec<f64> {
    let nseq = batch.num_sequences as f64;
    (0..batch.num_sequences)
        .map(|s| {
            let count = batch.mask[s * batch.seq_len..(s + 1) * batch.seq_len]
                .iter()
                .filter(|&&m| m)
                .count();
            match config.loss_type {
                LossType::Grpo => 1.0 / (nseq * count.max(1) as f64),
                // Mutant for the fuzz oracles (off in normal builds): the wrong denominator.
                #[cfg(flowtracer_mutant = "bnpo_denominator")]
                LossType::Bnpo => 1.0 / (count.max(1) as f64 * nseq),
                #[cfg(not(flowtracer_mutant = "bnpo_denominator"))]
                LossType::Bnpo => 1.0 / total.max(1) as f64,
                LossType::DrGrpo => 1.0 / (nseq * config.max_completion_length.max(1) as f64),
                LossType::Dapo => 1.0 / config.num_items_in_batch.unwrap_or(total).max(1) as f64,
            }
        })
        .collect()
}

/// The GRPO loss ([method §10](docs/method.md#s10)) with its exact per-token gradient coefficients.
///
/// Per token, with `r = exp(logp - old_logp)` and `A` the (shaped) advantage:
/// `l = min(r A, clip(r, 1 - epsilon, 1 + epsilon_high) A) - beta KL`, with the k3
/// estimator `KL = exp(ref - logp) - (ref - logp) - 1`. The loss is `-aggregate(l)`.
/// `coef[t] = d loss / d logp[t] = -c_t (g_t - beta (1 - exp(ref - logp)))`, where `g_t` is
/// `r A` unless the clip binds (then 0) and `c_t` the aggregation weight.
///
/// # Errors
///
/// [`Error::ShapeMismatch`] for a slice not of length `num_sequences * seq_len`;
/// [`Error::InvalidConfig`] for negative or non-finite `epsilon`, `epsilon_high`, `beta`,
/// or `beta != 0` without `ref_logp`; [`Error::NonFinite`] for the first non-finite
/// log-probability or advantage of an unmasked token (row = sequence, col = token);
/// [`Error::Overflow`] if the loss overflows f64 (e.g. advantages near 1e300 times a large
/// probability ratio).
///
/// # Complexity
///
/// O(num_sequences · seq_len), one pass; O(that) memory for `coef`.
///
/// # Examples
///
/// ```
/// use flowtracer_core::grpo::{grpo_loss, GrpoConfig, TokenBatch};
/// let logp = [-1.0, -2.0];
/// let batch = TokenBatch {
///     num_sequences: 1, seq_len: 2, logp: &logp, old_logp: &logp, ref_logp: None,
///     advantages: &[0.5, 0.5], mask: &[true, false],
/// };
/// let out = grpo_loss(&batch, &GrpoConfig::default())?;
/// assert_eq!(out.loss, -0.5); // ratio 1, one unmasked token
/// assert_eq!(out.coef, vec![-0.5, 0.0]);
/// # Ok::<(), flowtracer_core::Error>(())
/// ```
pub fn grpo_loss<F: FlowFloat>(
    batch: &TokenBatch<'_, F>,
    config: &GrpoConfig,
) -> Result<GrpoOutput<F>, Error> {
    let len = batch.num_sequences.saturating_mul(batch.seq_len);
    let slices: [(&'static str, usize); 4] = [
        ("logp", batch.logp.len()),
        ("old_logp", batch.old_logp.len()),
        ("advantages", batch.advantages.len()),
        ("mask", batch.mask.len()),
    ];
    for (what, actual) in slices {
        if actual != len {
            return Err(Error::ShapeMismatch {
                what,
                expected: len,
                actual,
            });
        }
    }
    if let Some(r) = batch.ref_logp
        && r.len() != len
    {
        return Err(Error::ShapeMismatch {
            what: "ref_logp",
            expected: len,
            actual: r.len(),
        });
    }
    config.validate()?;
    let (beta, eps_low, eps_high) = (config.beta, config.epsilon, config.epsilon_high);
    if beta != 0.0 && batch.ref_logp.is_none() {
        return Err(Error::InvalidConfig {
            field: "beta",
            reason: "beta != 0 needs ref_logp",
        });
    }
    check_finite(batch)?;
    let total = batch.mask.iter().filter(|&&m| m).count();
    let weights = aggregation_weights(batch, config, total);
    let mut coef = vec![F::zero(); len];
    let (mut loss, mut low, mut high, mut kl_sum) = (0.0f64, 0usize, 0usize, 0.0f64);
    for t in (0..len).filter(|&t| batch.mask[t]) {
        let c = weights[t / batch.seq_len.max(1)];
        let logp = batch.logp[t].widen();
        let adv = batch.advantages[t].widen();
        let ratio = num_traits::Float::exp(logp - batch.old_logp[t].widen());
        let clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high);
        let (surrogate, grad) = if ratio * adv <= clipped * adv {
            (ratio * adv, ratio * adv)
        } else {
            (clipped * adv, 0.0)
        };
        let binds_low = adv < 0.0 && ratio < 1.0 - eps_low;
        let binds_high = adv > 0.0 && ratio > 1.0 + eps_high;
        low += usize::from(binds_low);
        high += usize::from(binds_high);
        let (kl, kl_grad) = match batch.ref_logp {
            Some(r) => {
                let d = r[t].widen() - logp;
                let e = num_traits::Float::exp(d);
                (e - d - 1.0, 1.0 - e)
            }
            None => (0.0, 0.0),
        };
        kl_sum += kl;
        loss -= c * (surrogate - beta * kl);
        coef[t] = F::from_f64_lossy(-c * (grad - beta * kl_grad));
    }
    if !loss.is_finite() {
        return Err(Error::Overflow {
            stage: Stage::GrpoLoss,
        });
    }
    let denom = total.max(1) as f64;
    let stats = GrpoStats {
        num_tokens: total,
        clip_ratio_low: low as f64 / denom,
        clip_ratio_high: high as f64 / denom,
        clip_ratio_region: (low + high) as f64 / denom,
        kl_mean: kl_sum / denom,
    };
    Ok(GrpoOutput {
        loss: F::from_f64_lossy(loss),
        coef,
        stats,
    })
}
