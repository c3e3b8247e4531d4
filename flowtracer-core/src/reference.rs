//! Deliberately naive oracles for tests (the oracle chain: hand-computed cases →
//! `reference` → fast paths → GPU kernels): the graph, aggregation, reach, the conserved
//! kernel, the trace, selection, the backbone's path and edges, the GRPO math, and
//! attention from queries and keys.
//!
//! Everything here is written straight from the definitions of
//! [`docs/method.md`](docs/method.md#s1), in f64, with the matrices `W` and `W'` materialised
//! as `Vec<Vec<f64>>`: O(N²) memory and no attention to speed. They share no code with the
//! fast paths (only the [`AnswerMode`] enum), return no errors and assume valid input (these
//! functions do not validate). Spans are plain position lists, searched linearly.

use alloc::vec;
use alloc::vec::Vec;

use crate::reach::AnswerMode;

/// The graph `W[i][k] = Ā[k][i]` for `i < k` (0 elsewhere), with edges below `threshold`
/// dropped when it is positive.
pub fn graph(attention: &[f64], n: usize, threshold: f64) -> Vec<Vec<f64>> {
    let mut w = vec![vec![0.0; n]; n];
    for (i, wi) in w.iter_mut().enumerate() {
        for (k, wik) in wi.iter_mut().enumerate().skip(i + 1) {
            let x = attention[k * n + i];
            *wik = if threshold > 0.0 && x < threshold {
                0.0
            } else {
                x
            };
        }
    }
    w
}

/// Mean over the selected layers and all heads of `[layers][heads][N][N]` dense attention,
/// entry by entry (lower triangle; zeros above).
pub fn aggregate(attention: &[f64], heads: usize, n: usize, selected: &[usize]) -> Vec<f64> {
    let mut out = vec![0.0; n * n];
    let count = (selected.len() * heads) as f64;
    for k in 0..n {
        for i in 0..=k {
            let mut s = 0.0;
            for &l in selected {
                for h in 0..heads {
                    s += attention[((l * heads + h) * n + k) * n + i];
                }
            }
            out[k * n + i] = s / count;
        }
    }
    out
}

/// Reach `h` by the recursion of [method §4](docs/method.md#s4), token by token from the last.
pub fn reach(
    attention: &[f64],
    n: usize,
    answer: &[usize],
    mode: AnswerMode,
    threshold: f64,
) -> Vec<f64> {
    let w = graph(attention, n, threshold);
    let mut h = vec![0.0; n];
    for i in (0..n).rev() {
        let later: f64 = (i + 1..n).map(|k| w[i][k] * h[k]).sum();
        h[i] = if answer.contains(&i) {
            match mode {
                AnswerMode::Absorbing => 1.0,
                AnswerMode::Relay => 1.0 + later,
            }
        } else {
            later
        };
    }
    h
}

/// The conserved kernel `W'[i][k] = W[i][k] h(k) / h(i)` for live `i` that pass flow on
/// (all live `i` in relay mode, live `i` outside the answer in absorbing mode); 0 elsewhere.
pub fn conserved_kernel(
    w: &[Vec<f64>],
    h: &[f64],
    answer: &[usize],
    mode: AnswerMode,
) -> Vec<Vec<f64>> {
    let n = h.len();
    let mut wp = vec![vec![0.0; n]; n];
    for i in 0..n {
        let passes = mode == AnswerMode::Relay || !answer.contains(&i);
        if h[i] > 0.0 && passes {
            for k in i + 1..n {
                wp[i][k] = w[i][k] * h[k] / h[i];
            }
        }
    }
    wp
}

/// Naive results of one trace: `h`, `f`, `tau`, and the materialised `W'`.
#[derive(Debug, Clone)]
pub struct NaiveTrace {
    /// Reach.
    pub h: Vec<f64>,
    /// Flow.
    pub f: Vec<f64>,
    /// Throughput, as inflow + outflow summed edge by edge.
    pub tau: Vec<f64>,
    /// Conserved kernel.
    pub w_prime: Vec<Vec<f64>>,
    /// Number of sources `|Q+|` (0: no source mass).
    pub sources: usize,
}

/// Flow by the definition of [method §6](docs/method.md#s6) over the materialised `W'`, and throughput as the sum
/// of every edge into and out of each token, source and sink edges included ([method §7](docs/method.md#s7)).
pub fn trace(
    attention: &[f64],
    n: usize,
    question: &[usize],
    answer: &[usize],
    mode: AnswerMode,
    threshold: f64,
) -> NaiveTrace {
    let h = reach(attention, n, answer, mode, threshold);
    let w = graph(attention, n, threshold);
    let wp = conserved_kernel(&w, &h, answer, mode);
    let sources: Vec<usize> = question
        .iter()
        .copied()
        .filter(|&q| h[q] > 0.0 && !answer.contains(&q))
        .collect();
    let mut f = vec![0.0; n];
    for k in 0..n {
        let inject = if sources.contains(&k) {
            1.0 / sources.len() as f64
        } else {
            0.0
        };
        f[k] = inject + (0..k).map(|i| f[i] * wp[i][k]).sum::<f64>();
    }
    let mut tau = vec![0.0; n];
    for k in 0..n {
        let source_in = if sources.contains(&k) {
            1.0 / sources.len() as f64
        } else {
            0.0
        };
        let inflow = source_in + (0..k).map(|i| f[i] * wp[i][k]).sum::<f64>();
        let sink_out = if answer.contains(&k) && h[k] > 0.0 {
            match mode {
                AnswerMode::Absorbing => f[k],
                AnswerMode::Relay => f[k] / h[k],
            }
        } else {
            0.0
        };
        let outflow = sink_out + (k + 1..n).map(|j| f[k] * wp[k][j]).sum::<f64>();
        tau[k] = if h[k] > 0.0 { inflow + outflow } else { 0.0 };
    }
    NaiveTrace {
        h,
        f,
        tau,
        w_prime: wp,
        sources: sources.len(),
    }
}

/// Selected positions by full sort: key (score > 0 first, score descending for top /
/// ascending for bottom, position ascending), first `ceil(rho |R| - 1e-9)`.
pub fn select(scores: &[f64], response: &[usize], rho: f64, bottom: bool) -> Vec<usize> {
    let len = response.len();
    let mut k = 0;
    while (k as f64) < rho * len as f64 - 1e-9 && k < len {
        k += 1;
    }
    let mut pos: Vec<usize> = response.to_vec();
    pos.sort_by(|&a, &b| {
        let (sa, sb) = (scores[a], scores[b]);
        let pa = sa > 0.0;
        let pb = sb > 0.0;
        let by = if bottom {
            sa.partial_cmp(&sb)
        } else {
            sb.partial_cmp(&sa)
        };
        pb.cmp(&pa).then(by.unwrap()).then(a.cmp(&b))
    });
    let mut chosen: Vec<usize> = pos[..k].to_vec();
    chosen.sort();
    chosen
}

/// Every positive edge `(i, k, phi)` sorted by flow descending then `(i, k)`, the shortest
/// prefix reaching `coverage` of the total (summed row by row of `Ā`, as the fast path).
pub fn covering_edges(t: &NaiveTrace, coverage: f64) -> Vec<(usize, usize, f64)> {
    let n = t.h.len();
    let mut all = Vec::new();
    let mut total = 0.0;
    for k in 0..n {
        for i in 0..k {
            let phi = t.f[i] * t.w_prime[i][k];
            total += phi;
            if phi > 0.0 {
                all.push((i, k, phi));
            }
        }
    }
    all.sort_by(|a, b| {
        b.2.partial_cmp(&a.2)
            .unwrap()
            .then((a.0, a.1).cmp(&(b.0, b.1)))
    });
    let target = coverage * total;
    let mut out = Vec::new();
    let mut sum = 0.0;
    for e in all {
        if target <= 0.0 || sum >= target {
            break;
        }
        sum += e.2;
        out.push(e);
    }
    out
}

/// Most probable path by exhaustive dynamic programming in probability space (products, no
/// logarithms): returns the path and its probability.
pub fn best_path(t: &NaiveTrace, question: &[usize], answer: &[usize]) -> (Vec<usize>, f64) {
    let n = t.h.len();
    let mut p = vec![0.0f64; n];
    let mut pred: Vec<Option<usize>> = vec![None; n];
    for k in 0..n {
        if question.contains(&k) && !answer.contains(&k) && t.h[k] > 0.0 {
            p[k] = 1.0 / t.sources as f64;
        }
        for i in 0..k {
            let c = p[i] * t.w_prime[i][k];
            if c > p[k] {
                p[k] = c;
                pred[k] = Some(i);
            }
        }
    }
    let mut end = answer[0];
    for &a in answer {
        if p[a] > p[end] {
            end = a;
        }
    }
    let mut path = vec![end];
    let mut k = end;
    while let Some(i) = pred[k] {
        path.push(i);
        k = i;
    }
    path.reverse();
    (path, p[end])
}

/// Group advantages straight from [method §10](docs/method.md#s10) (`scale`: 0 group, 1 batch, 2 none).
pub fn group_advantages(rewards: &[f64], g: usize, scale: u8, eps: f64) -> Vec<f64> {
    let std = |x: &[f64]| {
        let m = x.iter().sum::<f64>() / x.len() as f64;
        num_traits::Float::sqrt(
            x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (x.len() as f64 - 1.0),
        )
    };
    let batch_std = std(rewards);
    let mut out = Vec::new();
    for grp in rewards.chunks(g) {
        let m = grp.iter().sum::<f64>() / g as f64;
        for r in grp {
            out.push(match scale {
                0 => (r - m) / (std(grp) + eps),
                1 => (r - m) / (batch_std + eps),
                _ => r - m,
            });
        }
    }
    out
}

/// The GRPO loss straight from [method §10](docs/method.md#s10), per loss type (`loss_type`: 0 grpo, 1 bnpo,
/// 2 dr_grpo, 3 dapo with `num_items`), token by token.
#[allow(clippy::too_many_arguments)]
pub fn grpo_loss(
    seq_len: usize,
    logp: &[f64],
    old_logp: &[f64],
    ref_logp: Option<&[f64]>,
    advantages: &[f64],
    mask: &[bool],
    (beta, eps_low, eps_high): (f64, f64, f64),
    loss_type: u8,
    max_completion_length: usize,
    num_items: usize,
) -> f64 {
    let per_token = |t: usize| {
        let r = num_traits::Float::exp(logp[t] - old_logp[t]);
        let a = advantages[t];
        let clipped = if r < 1.0 - eps_low {
            1.0 - eps_low
        } else if r > 1.0 + eps_high {
            1.0 + eps_high
        } else {
            r
        };
        let s = if r * a < clipped * a {
            r * a
        } else {
            clipped * a
        };
        let kl = ref_logp.map_or(0.0, |rl| {
            let d = rl[t] - logp[t];
            num_traits::Float::exp(d) - d - 1.0
        });
        s - beta * kl
    };
    let seqs = mask.len().checked_div(seq_len).unwrap_or(0);
    let mut total_sum = 0.0;
    let mut total_count = 0usize;
    let mut mean_of_means = 0.0;
    for s in 0..seqs {
        let mut sum = 0.0;
        let mut count = 0usize;
        for (t, &m) in mask.iter().enumerate().skip(s * seq_len).take(seq_len) {
            if m {
                sum += per_token(t);
                count += 1;
            }
        }
        total_sum += sum;
        total_count += count;
        mean_of_means += sum / count.max(1) as f64;
    }
    let aggregate = match loss_type {
        0 => mean_of_means / seqs as f64,
        1 => total_sum / total_count.max(1) as f64,
        2 => total_sum / (seqs * max_completion_length.max(1)) as f64,
        _ => total_sum / num_items.max(1) as f64,
    };
    -aggregate
}

/// Aggregated attention `Ā` from post-RoPE queries and keys ([method §15](docs/method.md#s15)),
/// deliberately naive: every layer's every head's softmax is materialised as an `N x N`
/// matrix in f64, then all of them are averaged entry by entry.
///
/// `q` is `[layers][q_heads][N][d]`, `k` is `[layers][kv_heads][N][d]`, `lse` (if given)
/// `[layers][q_heads][N]`; query head `h` reads key head `h / (q_heads / kv_heads)`. Query
/// `k` sees key `i` iff `i <= k`, `k - i < window` (if a window is given) and
/// `key_valid[i]` (if a mask is given). With `lse`, `p = exp(s - lse)`; without, the
/// row's softmax over the visible keys. A row that sees no key is zero.
#[allow(clippy::too_many_arguments)]
pub fn attention_from_qk(
    q: &[f64],
    k: &[f64],
    lse: Option<&[f64]>,
    heads: (usize, usize, usize),
    n: usize,
    d: usize,
    scale: f64,
    window: Option<usize>,
    key_valid: Option<&[bool]>,
) -> Vec<f64> {
    attention_from_qk_capped(q, k, lse, heads, n, d, (scale, None), window, key_valid)
}

/// [`attention_from_qk`] with Gemma 2's logit soft-capping: each scaled logit `s` becomes
/// `cap · tanh(s / cap)` (f64 `tanh`) when `softcap` is `Some(cap)`.
#[allow(clippy::too_many_arguments)]
pub fn attention_from_qk_capped(
    q: &[f64],
    k: &[f64],
    lse: Option<&[f64]>,
    (layers, q_heads, kv_heads): (usize, usize, usize),
    n: usize,
    d: usize,
    (scale, softcap): (f64, Option<f64>),
    window: Option<usize>,
    key_valid: Option<&[bool]>,
) -> Vec<f64> {
    let group = q_heads / kv_heads;
    let mut out = vec![0.0; n * n];
    let count = (layers * q_heads) as f64;
    for l in 0..layers {
        for h in 0..q_heads {
            let g = h / group;
            let mut p = vec![vec![0.0f64; n]; n];
            for (row, p_row) in p.iter_mut().enumerate() {
                let visible: Vec<usize> = (0..=row)
                    .filter(|&i| window.is_none_or(|w| row - i < w))
                    .filter(|&i| key_valid.is_none_or(|m| m[i]))
                    .collect();
                if visible.is_empty() {
                    continue;
                }
                let logit = |i: usize| {
                    let mut s = 0.0;
                    for j in 0..d {
                        s += q[((l * q_heads + h) * n + row) * d + j]
                            * k[((l * kv_heads + g) * n + i) * d + j];
                    }
                    let s = s * scale;
                    match softcap {
                        Some(cap) => cap * num_traits::Float::tanh(s / cap),
                        None => s,
                    }
                };
                let s: Vec<f64> = visible.iter().map(|&i| logit(i)).collect();
                match lse {
                    Some(lse) => {
                        let z = lse[(l * q_heads + h) * n + row];
                        for (&i, &si) in visible.iter().zip(&s) {
                            p_row[i] = num_traits::Float::exp(si - z);
                        }
                    }
                    None => {
                        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let z: f64 = s.iter().map(|&si| num_traits::Float::exp(si - m)).sum();
                        for (&i, &si) in visible.iter().zip(&s) {
                            p_row[i] = num_traits::Float::exp(si - m) / z;
                        }
                    }
                }
            }
            for row in 0..n {
                for i in 0..=row {
                    out[row * n + i] += p[row][i] / count;
                }
            }
        }
    }
    out
}
