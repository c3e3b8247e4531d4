//! The credit methods ([method §11](docs/method.md#s11)): FlowTracer's throughput and the
//! point-wise baselines. Each produces one score per token; the scores go through the same
//! selection and shaping as FlowTracer's throughput
//! ([`token_weights`](crate::shaping::token_weights)).
//!
//! [`credit_scores`] is the one dispatch from a [`CreditMethod`] to its score, so adding a
//! method is one variant (with its name) plus its scoring function, here: the trainer, the
//! CLI's `--credit` and `compare` take every method from [`CreditMethod::ALL`].

use alloc::vec;
use alloc::vec::Vec;

use crate::error::Error;
use crate::error::Span;
use crate::float::FlowFloat;
use crate::sequence::{Sequence, Tokens};
use crate::shaping::Select;
use crate::trace::{Trace, Tracer};
use crate::validate::{check_data, check_response, check_rows};

/// Row tolerance of the data checks the baselines run (the default of
/// [`TraceConfig`](crate::TraceConfig)).
const ROW_TOLERANCE: f64 = crate::TraceConfig::DEFAULT.row_tolerance;

/// Which score selects the shaped tokens ([method §11](docs/method.md#s11)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CreditMethod {
    /// Plain GRPO: every weight 1.
    Uniform,
    /// FlowTracer throughput `tau`, top-ρ (default).
    #[default]
    FlowTracer,
    /// `k` tokens drawn by a seeded SplitMix64 generator ([`random_scores`]).
    Random,
    /// Attention received from later response tokens ([`attention_received`]).
    AttentionReceived,
    /// Normalised entropy of each token's attention row ([`attention_entropy`]).
    AttentionEntropy,
    /// The policy's per-token predictive entropy, passed by the caller.
    PredictiveEntropy,
    /// Attention rollout into the answer ([`rollout`]).
    Rollout,
    /// FlowTracer throughput, bottom-ρ (`select = bottom`).
    BottomFlow,
}

crate::vocabulary::named_enum!(CreditMethod, "credit", {
    Uniform => "uniform",
    FlowTracer => "flowtracer",
    Random => "random",
    AttentionReceived => "attention_received",
    AttentionEntropy => "attention_entropy",
    PredictiveEntropy => "predictive_entropy",
    Rollout => "rollout",
    BottomFlow => "bottom_flow",
});

impl CreditMethod {
    /// Whether the method reads attention (a trainer must capture it).
    pub const fn needs_attention(self) -> bool {
        !matches!(
            self,
            CreditMethod::Uniform | CreditMethod::Random | CreditMethod::PredictiveEntropy
        )
    }

    /// Whether the method needs an answer span (without one a response is not shaped).
    pub const fn needs_answer(self) -> bool {
        matches!(
            self,
            CreditMethod::FlowTracer | CreditMethod::BottomFlow | CreditMethod::Rollout
        )
    }

    /// Which end of the score ranking the method selects.
    pub const fn select(self) -> Select {
        match self {
            CreditMethod::BottomFlow => Select::Bottom,
            _ => Select::Top,
        }
    }
}

/// What a credit method may read about one sequence.
#[derive(Debug, Clone, Copy)]
pub struct CreditInputs<'s, 'a, F: Clone> {
    /// Number of tokens `N`.
    pub n: usize,
    /// The scored response tokens `R`.
    pub response: &'s Tokens,
    /// The validated attention and spans: required by every method that
    /// [`needs_attention`](CreditMethod::needs_attention) or
    /// [`needs_answer`](CreditMethod::needs_answer); `None` is fine for the others.
    pub sequence: Option<&'s Sequence<'a, F>>,
    /// Head-mean attention of each selected layer, `[layers][N][N]` dense, in layer order
    /// (what [`rollout`] reads; may be empty for the other methods).
    pub layer_means: &'s [F],
    /// Number of layers in `layer_means`.
    pub num_layers: usize,
    /// The policy's predictive entropy per position, length `N` (what `predictive_entropy`
    /// reads; may be empty for the other methods).
    pub entropy: &'s [F],
    /// Seed of the `random` baseline.
    pub seed: u64,
}

/// One sequence's scores under a credit method, and its trace when the method traced it.
pub type CreditScores<F> = (Vec<F>, Option<Trace<F>>);

/// The score of every token under `method` ([method §11](docs/method.md#s11)), and the
/// trace for the methods that trace (FlowTracer, bottom flow); `None` for `uniform`, which
/// scores nothing. The one dispatch from a method to its scoring function.
///
/// # Errors
///
/// [`Error::InvalidConfig`] (field `credit`) if the method reads attention or an answer
/// and `inputs.sequence` is `None`; [`Error::ShapeMismatch`] for an `entropy` that is not
/// of length `N`; then the method's own errors: those of [`Tracer::trace`], the data
/// checks of the baselines that read `Ā`, the span checks of `random`.
///
/// # Complexity
///
/// That of the method: O(N²) for the attention-based ones, O(|A| · L · N²) for rollout,
/// O(N) for `random` and `predictive_entropy`.
///
/// # Examples
///
/// ```
/// use flowtracer_core::baselines::{credit_scores, CreditInputs, CreditMethod};
/// use flowtracer_core::{Sequence, Spans, Tracer};
/// let a = [1.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.2, 0.3, 0.5];
/// let seq = Sequence::dense(&a, Spans::new(0..1, 2..3))?;
/// let inputs = CreditInputs {
///     n: 3, response: seq.response(), sequence: Some(&seq),
///     layer_means: &a, num_layers: 1, entropy: &[0.1, 0.9, 0.2], seed: 7,
/// };
/// let mut tracer = Tracer::default();
/// for &method in CreditMethod::ALL {
///     let scored = credit_scores(method, &mut tracer, &inputs)?;
///     assert_eq!(scored.is_some(), method != CreditMethod::Uniform);
/// }
/// # Ok::<(), flowtracer_core::Error>(())
/// ```
pub fn credit_scores<F: FlowFloat>(
    method: CreditMethod,
    tracer: &mut Tracer,
    inputs: &CreditInputs<'_, '_, F>,
) -> Result<Option<CreditScores<F>>, Error> {
    let seq = || {
        inputs.sequence.ok_or(Error::InvalidConfig {
            field: "credit",
            reason: "this method reads the attention and the answer: pass the sequence",
        })
    };
    let scores = |s: Vec<F>| Ok(Some((s, None)));
    match method {
        CreditMethod::Uniform => Ok(None),
        CreditMethod::FlowTracer | CreditMethod::BottomFlow => {
            let t = tracer.trace(seq()?)?;
            Ok(Some((t.throughput().to_vec(), Some(t))))
        }
        CreditMethod::Random => scores(
            random_scores(inputs.n, inputs.response, inputs.seed)?
                .into_iter()
                .map(F::from_f64_lossy)
                .collect(),
        ),
        CreditMethod::AttentionReceived => scores(attention_received(seq()?)?),
        CreditMethod::AttentionEntropy => scores(attention_entropy(seq()?)?),
        CreditMethod::PredictiveEntropy => {
            if inputs.entropy.len() != inputs.n {
                return Err(Error::ShapeMismatch {
                    what: "entropy",
                    expected: inputs.n,
                    actual: inputs.entropy.len(),
                });
            }
            scores(inputs.entropy.to_vec())
        }
        CreditMethod::Rollout => {
            let seq = seq()?;
            scores(rollout(
                inputs.layer_means,
                inputs.num_layers,
                seq.n(),
                seq.answer(),
            )?)
        }
    }
}

/// SplitMix64 (Steele, Lea and Flood 2014): 64 bits of state, passes BigCrush, trivially
/// serialisable. The seeded generator of the `random` baseline, and the one generator of the
/// trainer (problems, sampling, shuffles), so a checkpoint stores one `u64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed` (also how a saved [`state`](Self::state) resumes).
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The raw state: `SplitMix64::new(g.state())` continues exactly where `g` is.
    pub fn state(&self) -> u64 {
        self.0
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform value in `(0, 1]` (53 random bits): never 0, so a drawn score always
    /// outranks the score 0 of tokens outside the response.
    pub fn next_unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform value in `[0, 1)` (53 random bits), for sampling.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform integer in `0..n` (Lemire's multiply-shift; bias below `n / 2^64`).
    ///
    /// # Panics
    ///
    /// If `n == 0`.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "SplitMix64::below(0)");
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// An independent generator derived from this one (advances `self` once).
    pub fn fork(&mut self) -> Self {
        Self::new(self.next_u64())
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// Serialised as `{"state": u64}` (what the trainer's checkpoints store).
#[cfg(feature = "serde")]
impl serde::Serialize for SplitMix64 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("SplitMix64", 1)?;
        st.serialize_field("state", &self.0)?;
        st.end()
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for SplitMix64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct State;
        impl<'de> serde::de::Visitor<'de> for State {
            type Value = SplitMix64;
            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str("a generator state {\"state\": u64}")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> Result<SplitMix64, M::Error> {
                let mut state = None;
                while let Some(key) = m.next_key::<alloc::string::String>()? {
                    if key != "state" || state.is_some() {
                        return Err(serde::de::Error::custom(
                            "expected exactly one field `state`",
                        ));
                    }
                    state = Some(m.next_value::<u64>()?);
                }
                state
                    .map(SplitMix64)
                    .ok_or_else(|| serde::de::Error::missing_field("state"))
            }
        }
        d.deserialize_struct("SplitMix64", &["state"], State)
    }
}

/// Random scores in `(0, 1]` for the tokens of `response` (0 elsewhere), drawn in position
/// order from SplitMix64(`seed`); the top `k` of them are `k` tokens drawn uniformly without
/// replacement.
///
/// # Errors
///
/// Errors of [`check_response`].
///
/// # Complexity
///
/// O(N).
pub fn random_scores(n: usize, response: &Tokens, seed: u64) -> Result<Vec<f64>, Error> {
    check_response(n, response)?;
    let mut rng = SplitMix64::new(seed);
    let mut s = vec![0.0; n];
    for p in response.iter() {
        s[p] = rng.next_unit();
    }
    Ok(s)
}

/// `score(i) = sum over later response rows k > i, k in R, of Ā[k][i]`.
///
/// # Errors
///
/// The data checks of [`check_data`].
///
/// # Complexity
///
/// O(|R| · N) time (a streaming read of the response rows), O(N) memory.
pub fn attention_received<F: FlowFloat>(seq: &Sequence<'_, F>) -> Result<Vec<F>, Error> {
    check_data(seq, ROW_TOLERANCE)?;
    let mut acc = vec![0.0f64; seq.n()];
    for k in seq.response().iter() {
        for (a, x) in acc[..k].iter_mut().zip(&seq.row(k)[..k]) {
            *a += x.widen();
        }
    }
    Ok(acc.into_iter().map(F::from_f64_lossy).collect())
}

/// `score(t) = -sum_{i<=t} Ā[t][i] ln Ā[t][i] / ln(t + 1)`, 0 for `t = 0` (terms with
/// `Ā = 0` count 0).
///
/// # Errors
///
/// The data checks of [`check_data`].
///
/// # Complexity
///
/// O(N²) time, O(N) memory.
pub fn attention_entropy<F: FlowFloat>(seq: &Sequence<'_, F>) -> Result<Vec<F>, Error> {
    check_data(seq, ROW_TOLERANCE)?;
    Ok((0..seq.n())
        .map(|t| {
            if t == 0 {
                return F::zero();
            }
            let e: f64 = seq
                .row(t)
                .iter()
                .map(|x| x.widen())
                .filter(|&x| x > 0.0)
                .map(|x| -x * num_traits::Float::ln(x))
                .sum();
            F::from_f64_lossy(e / num_traits::Float::ln((t + 1) as f64))
        })
        .collect())
}

/// Attention rollout (Abnar and Zuidema 2020) into the answer.
///
/// `layer_means` holds the head-mean matrices `M_l` of the selected layers, in layer order,
/// `[num_layers][N][N]` dense. With `N_l = norm(0.5 M_l + 0.5 I)` (rows renormalised),
/// `R = N_last ··· N_first` and `score(i) = mean over answer rows a of R[a][i]`. Only the
/// answer rows of `R` are formed: row vectors are pushed through the layers from the last
/// to the first.
///
/// # Errors
///
/// [`Error::ZeroDimension`] for zero layers, [`Error::ShapeMismatch`] for the length,
/// [`Error::EmptySequence`], span errors for `answer`, then the data checks of
/// [`check_data`] layer by layer.
///
/// # Complexity
///
/// O(|A| · L · N²) time, O(|A| · N) memory.
pub fn rollout<F: FlowFloat>(
    layer_means: &[F],
    num_layers: usize,
    n: usize,
    answer: &Tokens,
) -> Result<Vec<F>, Error> {
    if num_layers == 0 {
        return Err(Error::ZeroDimension { what: "layers" });
    }
    let m = n.saturating_mul(n);
    let expected = m.saturating_mul(num_layers);
    if layer_means.len() != expected {
        return Err(Error::ShapeMismatch {
            what: "layer means",
            expected,
            actual: layer_means.len(),
        });
    }
    if n == 0 {
        return Err(Error::EmptySequence);
    }
    answer.check(Span::Answer, n)?;
    for l in 0..num_layers {
        let mat = &layer_means[l * m..(l + 1) * m];
        check_rows(n, |k| &mat[k * n..=k * n + k], ROW_TOLERANCE)?;
    }
    let mut score = vec![0.0f64; n];
    let mut row = vec![0.0f64; n];
    let mut next = vec![0.0f64; n];
    for a in answer.iter() {
        row.fill(0.0);
        row[a] = 1.0;
        for l in (0..num_layers).rev() {
            let mat = &layer_means[l * m..(l + 1) * m];
            next.fill(0.0);
            // next = row · N_l, where N_l[k] = (0.5 M_l[k] + 0.5 e_k) / (0.5 |M_l[k]| + 0.5).
            for (k, &r) in row.iter().enumerate() {
                if r == 0.0 {
                    continue;
                }
                let mk = &mat[k * n..=k * n + k];
                let mass: f64 = mk.iter().map(|x| x.widen()).sum();
                let scale = r / (0.5 * mass + 0.5);
                for (nx, x) in next.iter_mut().zip(mk) {
                    *nx += scale * 0.5 * x.widen();
                }
                next[k] += scale * 0.5;
            }
            core::mem::swap(&mut row, &mut next);
        }
        for (s, r) in score.iter_mut().zip(&row) {
            *s += r;
        }
    }
    let count = answer.len() as f64;
    Ok(score
        .into_iter()
        .map(|s| F::from_f64_lossy(s / count))
        .collect())
}
