//! The causal test of credit: does masking the tokens a credit method ranks highest change
//! the model's answer?
//!
//! For each held-out problem the model's greedy completion is split at its answer tag: the
//! *reasoning* is the response tokens before the `<answer>` tag that opens the last complete
//! answer pair (completions without one are not tested). Each credit method scores the
//! completion as the trainer would (the core's [`credit_scores`] through
//! [`crate::credit::scores`], attention of the middle layers, predictive entropy at
//! temperature 1) and selects `ceil(fraction × |reasoning|)` reasoning tokens with its own
//! tie rule ([`select_tokens`] with [`CreditMethod::select`]). Then prompt + reasoning is
//! re-encoded with those positions hidden as keys from every later query in every layer
//! (logit `-inf`: [`crate::model::Batch::mask_bias_with_keys`]), the answer tag is appended, and the answer
//! is decoded greedily under the same mask ([`masked_answers`]). It is compared with the
//! answer decoded the same way without a mask (the baseline): the *answer-change rate*
//! (masked answer ≠ baseline answer) and the *correctness-reversal rate* (baseline correct,
//! masked answer wrong) over the tested problems, each with a 95% Wilson interval
//! ([`wilson`]). `random` is drawn several times (different seeds) and its counts pooled.
//!
//! [`credit_scores`]: flowtracer_core::baselines::credit_scores
//! [`select_tokens`]: flowtracer_core::shaping::select_tokens

use burn::tensor::{Device, Tensor};
use flowtracer_core::aggregate::{LayerSelection, select_layers};
use flowtracer_core::baselines::{CreditMethod, SplitMix64};
use flowtracer_core::shaping::select_tokens;
use serde::{Deserialize, Serialize};

use crate::answer::{AnswerSpan, locate_answer};
use crate::credit::{self, SequenceView};
use crate::error::TrainError;
use crate::model::{KvCache, MASKED, NEG, Transformer, int_tensor, token_entropy};
use crate::rollout::{full_batch, to_f64};
use crate::sampling::{Completion, SamplingConfig, generate, last_logits, left_pad, sample_token};
use crate::task::{Problem, score};
use crate::tokenizer::{ANSWER_CLOSE, ANSWER_OPEN, EOS};

/// The z of a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// Settings of the causal test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CausalConfig {
    /// Fraction of reasoning tokens masked (the issue's 0.2).
    pub fraction: f64,
    /// Draws of the `random` method (seeds 0, 1, ...), pooled.
    pub random_draws: usize,
    /// Longest greedy completion (tokens, EOS included).
    pub max_completion_length: usize,
    /// Longest decoded answer (tokens before `</answer>`).
    pub max_answer_length: usize,
    /// Sequences per forward pass.
    pub batch_size: usize,
}

/// One method's counts over every tested problem (and every draw for `random`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodRow {
    /// The credit method (by its core name).
    pub method: CreditMethod,
    /// Draws pooled (5 for `random` by default, else 1).
    pub draws: usize,
    /// Trials: tested problems the method could score, times draws.
    pub trials: usize,
    /// Trials whose masked answer differs from the baseline answer.
    pub changed: usize,
    /// Trials whose baseline answer is correct and masked answer is not.
    pub reversed: usize,
    /// Trials whose baseline answer is wrong and masked answer is correct.
    pub fixed: usize,
    /// Problems the method could not score (e.g. no source mass), per draw.
    pub unscored: usize,
    /// Mean number of masked tokens per trial.
    pub mean_masked: f64,
}

impl MethodRow {
    /// Answer-change rate and its 95% Wilson interval.
    pub fn change(&self) -> (f64, (f64, f64)) {
        rate(self.changed, self.trials)
    }

    /// Correctness-reversal rate and its 95% Wilson interval.
    pub fn reversal(&self) -> (f64, (f64, f64)) {
        rate(self.reversed, self.trials)
    }
}

fn rate(k: usize, n: usize) -> (f64, (f64, f64)) {
    let r = if n == 0 { 0.0 } else { k as f64 / n as f64 };
    (r, wilson(k, n, Z95))
}

/// What the causal test measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CausalResult {
    /// Held-out problems given.
    pub problems: usize,
    /// Problems tested (their greedy completion has an answer and a non-empty reasoning).
    pub tested: usize,
    /// Tested problems whose baseline answer is correct.
    pub baseline_correct: usize,
    /// Tested problems whose baseline answer equals the greedy completion's own answer.
    pub baseline_matches_completion: usize,
    /// Mean reasoning length (tokens) of the tested problems.
    pub mean_reasoning: f64,
    /// Per method, in the order asked.
    pub rows: Vec<MethodRow>,
}

/// The Wilson score interval of `k` successes in `n` trials at normal quantile `z`
/// (`(0, 1)` for `n = 0`): `(p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)`, clamped
/// to `[0, 1]`.
///
/// # Examples
///
/// ```
/// use flowtracer_train::causal::{wilson, Z95};
/// let (lo, hi) = wilson(10, 100, Z95);
/// assert!((lo - 0.0552).abs() < 1e-4 && (hi - 0.1744).abs() < 1e-4);
/// ```
pub fn wilson(k: usize, n: usize, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let d = 1.0 + z2 / n;
    (
        ((centre - half) / d).clamp(0.0, 1.0),
        ((centre + half) / d).clamp(0.0, 1.0),
    )
}

/// Greedy answers after `prefix + <answer>` with the key columns flagged in `masked` (one
/// flag per prefix token) hidden from every later query in every layer. Decoding stops at
/// `</answer>` or EOS (not included) or after `max_answer` tokens, or when the longest row
/// reaches the model's `max_len` positions. Returns each answer and whether it was closed
/// (an answer cut by either limit is not).
///
/// `model` must be on a non-autodiff device.
///
/// # Panics
///
/// If `masked[r].len() != prefixes[r].len()` or a prefix plus the answer tag exceeds the
/// model's `max_len` (caller bugs: a completion of the model fits).
pub fn masked_answers(
    model: &Transformer,
    prefixes: &[Vec<u32>],
    masked: &[Vec<bool>],
    max_answer: usize,
    device: &Device,
) -> Vec<(Vec<u32>, bool)> {
    let b = prefixes.len();
    if b == 0 {
        return Vec::new();
    }
    let rows: Vec<Vec<u32>> = prefixes
        .iter()
        .map(|p| {
            let mut r = p.clone();
            r.push(ANSWER_OPEN);
            r
        })
        .collect();
    let batch = left_pad(&rows);
    let p = batch.len;
    assert!(
        p <= model.max_len(),
        "prefix + answer tag exceeds the model's max_len"
    );
    // The answer may use what is left of the model's positions, no more.
    let max_answer = max_answer.min(model.max_len() - p);
    let mut keys = vec![false; b * p];
    // The additive bias each row's later queries see, per key column.
    let mut bias: Vec<Vec<f32>> = Vec::with_capacity(b);
    for r in 0..b {
        assert_eq!(masked[r].len(), prefixes[r].len(), "one flag per token");
        let pad = p - rows[r].len();
        for (j, &m) in masked[r].iter().enumerate() {
            keys[r * p + pad + j] = m;
        }
        bias.push(
            (0..p)
                .map(|c| {
                    if !batch.valid[r * p + c] {
                        NEG
                    } else if keys[r * p + c] {
                        MASKED
                    } else {
                        0.0
                    }
                })
                .collect(),
        );
    }
    let greedy = SamplingConfig {
        temperature: 0.0,
        top_k: 0,
        max_completion_length: max_answer,
    };
    let mut rng = SplitMix64::new(0);
    let mut cache = KvCache::default();
    let tokens = int_tensor(
        batch.tokens.iter().map(|&t| i64::from(t)).collect(),
        b,
        p,
        device,
    );
    let pos = int_tensor(batch.positions(), b, p, device);
    let out = model.forward(
        tokens,
        pos,
        batch.mask_bias_with_keys(&keys, device),
        Some(&mut cache),
        &[],
    );
    let mut last = last_logits(out.logits);
    let vocab = last.len() / b;
    let mut positions: Vec<i64> = rows.iter().map(|x| x.len() as i64).collect();
    let mut answers: Vec<(Vec<u32>, bool)> = vec![(Vec::new(), false); b];
    let mut done = vec![false; b];
    for step in 0..max_answer {
        let mut next = vec![EOS; b];
        for r in 0..b {
            if done[r] {
                continue;
            }
            let t = sample_token(&last[r * vocab..(r + 1) * vocab], &greedy, &mut rng);
            next[r] = t;
            if t == ANSWER_CLOSE || t == EOS {
                done[r] = true;
                answers[r].1 = t == ANSWER_CLOSE;
            } else {
                answers[r].0.push(t);
            }
        }
        if done.iter().all(|&d| d) || step + 1 == max_answer {
            break;
        }
        for row in &mut bias {
            row.push(0.0);
        }
        let tk = p + step + 1;
        let flat: Vec<f32> = bias.iter().flatten().copied().collect();
        let bias_t =
            Tensor::<4>::from_data(burn::tensor::TensorData::new(flat, [b, 1, 1, tk]), device);
        let tokens = int_tensor(next.iter().map(|&t| i64::from(t)).collect(), b, 1, device);
        let pos = int_tensor(positions.clone(), b, 1, device);
        for x in &mut positions {
            *x += 1;
        }
        let out = model.forward(tokens, pos, bias_t, Some(&mut cache), &[]);
        last = last_logits(out.logits);
    }
    answers
}

/// One tested problem.
struct Case {
    problem: usize,
    completion: Vec<u32>,
    /// Tokens before the answer tag.
    reasoning: usize,
}

/// The completion the verifier reads for a decoded answer: reasoning, the answer in tags,
/// EOS.
fn completed(reasoning: &[u32], answer: &(Vec<u32>, bool)) -> Vec<u32> {
    let mut t = reasoning.to_vec();
    t.push(ANSWER_OPEN);
    t.extend_from_slice(&answer.0);
    if answer.1 {
        t.push(ANSWER_CLOSE);
    }
    t.push(EOS);
    t
}

/// Runs the causal test of `methods` on `problems` with `model` (non-autodiff device);
/// `progress(done, total)` is called after each unit of work (greedy completion, scoring,
/// and one masked decoding per method and draw).
///
/// # Errors
///
/// [`TrainError::Core`] if the model has no middle layers to read ([`select_layers`]).
pub fn causal_test(
    model: &Transformer,
    problems: &[Problem],
    methods: &[CreditMethod],
    config: &CausalConfig,
    device: &Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<CausalResult, TrainError> {
    let draws = |m: CreditMethod| {
        if m == CreditMethod::Random {
            config.random_draws.max(1)
        } else {
            1
        }
    };
    let units = 3 + methods.iter().map(|&m| draws(m)).sum::<usize>();
    let bs = config.batch_size.max(1);
    // 1. Greedy completions.
    let sampling = SamplingConfig {
        temperature: 0.0,
        top_k: 0,
        max_completion_length: config.max_completion_length,
    };
    let mut rng = SplitMix64::new(0);
    let mut cases = Vec::new();
    for (c, chunk) in problems.chunks(bs).enumerate() {
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|p| p.prompt.clone()).collect();
        for (i, comp) in generate(model, &prompts, &sampling, &mut rng, device)
            .into_iter()
            .enumerate()
        {
            if let AnswerSpan::Found(r) = locate_answer(&comp.tokens)
                && r.start > 1
            {
                cases.push(Case {
                    problem: c * bs + i,
                    reasoning: r.start - 1,
                    completion: comp.tokens,
                });
            }
        }
    }
    progress(1, units);
    // 2. Scores: one forward pass over prompt + completion reads the middle layers'
    // attention and the entropies; every method selects from them.
    let layers = select_layers(model.num_layers(), &LayerSelection::Middle)?;
    // selections[method index][draw][case]: sequence positions to mask, `None` if unscored.
    let mut selections: Vec<Vec<Vec<Option<Vec<usize>>>>> = methods
        .iter()
        .map(|&m| vec![Vec::with_capacity(cases.len()); draws(m)])
        .collect();
    for (c, chunk) in cases.chunks(bs).enumerate() {
        let prompts: Vec<Vec<u32>> = chunk
            .iter()
            .map(|x| problems[x.problem].prompt.clone())
            .collect();
        let completions: Vec<Completion> = chunk
            .iter()
            .map(|x| Completion {
                tokens: x.completion.clone(),
                truncated: false,
            })
            .collect();
        let (batch, prompt_cols, c_len) = full_batch(&prompts, &completions);
        let out = model.forward_batch(&batch, &layers, device);
        let entropy = to_f64(token_entropy(
            out.logits.narrow(1, prompt_cols - 1, c_len),
            1.0,
        ));
        let t = batch.len;
        let l_sel = layers.len();
        let attention: Vec<f32> = Tensor::stack::<4>(out.attention, 1)
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32 attention");
        for (r, case) in chunk.iter().enumerate() {
            let p_len = prompts[r].len();
            let n = p_len + case.completion.len();
            let offset = prompt_cols - p_len;
            let mut layer_means = Vec::with_capacity(l_sel * n * n);
            for l in 0..l_sel {
                for k in 0..n {
                    let row = ((r * l_sel + l) * t + offset + k) * t + offset;
                    layer_means.extend(attention[row..row + n].iter().map(|&x| f64::from(x)));
                }
            }
            let mut ent = vec![0.0; n];
            for j in 0..case.completion.len() {
                ent[p_len + j] = entropy[r * c_len + j];
            }
            let answer = locate_answer(&case.completion)
                .range()
                .map(|a| a.start + p_len..a.end + p_len);
            let reasoning = (p_len..p_len + case.reasoning).into();
            for (&m, per_draw) in methods.iter().zip(&mut selections) {
                for (d, draw) in per_draw.iter_mut().enumerate() {
                    let view = SequenceView {
                        layer_means: &layer_means,
                        num_layers: l_sel,
                        n,
                        question: 0..p_len,
                        response: p_len..n,
                        answer: answer.clone(),
                        entropy: &ent,
                        seed: ((d as u64) << 32) ^ (c * bs + r) as u64,
                    };
                    let sel = credit::scores(m, &view)
                        .ok()
                        .map(|(s, _)| select_tokens(&s, &reasoning, config.fraction, m.select()));
                    draw.push(sel);
                }
            }
        }
    }
    progress(2, units);
    // 3. The baseline: the same decoding without a mask.
    let prefixes: Vec<Vec<u32>> = cases
        .iter()
        .map(|x| {
            let mut p = problems[x.problem].prompt.clone();
            p.extend_from_slice(&x.completion[..x.reasoning]);
            p
        })
        .collect();
    let decode = |masks: &[Vec<bool>], rows: &[usize]| -> Vec<(Vec<u32>, bool)> {
        let mut out = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(bs) {
            let pre: Vec<Vec<u32>> = chunk.iter().map(|&i| prefixes[i].clone()).collect();
            let m: Vec<Vec<bool>> = chunk.iter().map(|&i| masks[i].clone()).collect();
            out.extend(masked_answers(
                model,
                &pre,
                &m,
                config.max_answer_length,
                device,
            ));
        }
        out
    };
    let all: Vec<usize> = (0..cases.len()).collect();
    let none: Vec<Vec<bool>> = prefixes.iter().map(|p| vec![false; p.len()]).collect();
    let baseline = decode(&none, &all);
    let correct = |i: usize, a: &(Vec<u32>, bool)| {
        let case = &cases[i];
        score(
            &problems[case.problem],
            &completed(&case.completion[..case.reasoning], a),
        ) > 0.0
    };
    let base_ok: Vec<bool> = all.iter().map(|&i| correct(i, &baseline[i])).collect();
    let matches = cases
        .iter()
        .zip(&baseline)
        .filter(|(c, b)| {
            locate_answer(&c.completion)
                .range()
                .is_some_and(|r| c.completion[r] == b.0[..])
        })
        .count();
    let mut done = 3;
    progress(done, units);
    // 4. Each method and draw.
    let mut rows = Vec::with_capacity(methods.len());
    for (mi, &m) in methods.iter().enumerate() {
        let mut row = MethodRow {
            method: m,
            draws: draws(m),
            trials: 0,
            changed: 0,
            reversed: 0,
            fixed: 0,
            unscored: 0,
            mean_masked: 0.0,
        };
        let mut masked_total = 0usize;
        for sel in &selections[mi] {
            let scored: Vec<usize> = all.iter().copied().filter(|&i| sel[i].is_some()).collect();
            row.unscored += cases.len() - scored.len();
            let masks: Vec<Vec<bool>> = all
                .iter()
                .map(|&i| {
                    let mut v = vec![false; prefixes[i].len()];
                    for &p in sel[i].as_deref().unwrap_or(&[]) {
                        v[p] = true;
                    }
                    v
                })
                .collect();
            let answers = decode(&masks, &scored);
            for (&i, a) in scored.iter().zip(&answers) {
                row.trials += 1;
                masked_total += sel[i].as_ref().map_or(0, Vec::len);
                let ok = correct(i, a);
                row.changed += usize::from(a.0 != baseline[i].0);
                row.reversed += usize::from(base_ok[i] && !ok);
                row.fixed += usize::from(!base_ok[i] && ok);
            }
            done += 1;
            progress(done, units);
        }
        row.unscored /= row.draws;
        row.mean_masked = if row.trials > 0 {
            masked_total as f64 / row.trials as f64
        } else {
            0.0
        };
        rows.push(row);
    }
    Ok(CausalResult {
        problems: problems.len(),
        tested: cases.len(),
        baseline_correct: base_ok.iter().filter(|&&x| x).count(),
        baseline_matches_completion: matches,
        mean_reasoning: if cases.is_empty() {
            0.0
        } else {
            cases.iter().map(|c| c.reasoning as f64).sum::<f64>() / cases.len() as f64
        },
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-computed Wilson intervals (z = 1.96): 10/100 -> (0.0552, 0.1744); 0/10 ->
    /// (0, 0.2775); 10/10 -> (0.7225, 1).
    #[test]
    fn wilson_on_hand_computed_cases() {
        const TOL: f64 = 1e-4;
        let close =
            |a: (f64, f64), b: (f64, f64)| (a.0 - b.0).abs() < TOL && (a.1 - b.1).abs() < TOL;
        assert!(close(wilson(10, 100, Z95), (0.0552, 0.1744)));
        assert!(close(wilson(0, 10, Z95), (0.0, 0.2775)));
        assert!(close(wilson(10, 10, Z95), (0.7225, 1.0)));
        assert_eq!(wilson(0, 0, Z95), (0.0, 1.0));
    }
}
