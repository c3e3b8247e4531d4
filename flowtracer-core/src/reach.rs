//! The answer-conditioned reach `h` ([method §4](docs/method.md#s4)): the backward pass.
//!
//! `h(i)` is the total attention-weighted influence token `i` has on the answer:
//!
//! ```text
//! h(a) = 1                               a in A   (absorbing, the default)
//! h(a) = 1 + sum_{k>a} W[a][k] h(k)      a in A   (relay)
//! h(i) = sum_{k>i} W[i][k] h(k)          otherwise, with W[i][k] = Ā[k][i]
//! ```
//!
//! Tokens after the last answer token get `h = 0`. A token is *live* when `h > 0` exactly.
//!
//! The pass streams the rows of `Ā` once, in descending order: when row `k` is reached,
//! `h(k)` is final, and the row is added into the accumulator of every earlier token
//! (`acc[i] += Ā[k][i] h(k)`, an axpy). The accumulator lives in the output buffer itself,
//! so the extra memory is the `N` f64 values of `h`. Rows go four at a time: the block's
//! entries among its own rows are applied first (making each of the four `h` final in turn),
//! then one sweep over the accumulator adds all four rows. Data validation ([method §13](docs/method.md#s13),
//! checks 3–5) is fused into the same pass: each row's sum and minimum are taken from the
//! blocks the axpy has just read.

use crate::error::{Error, Stage};
use crate::float::FlowFloat;
use crate::kernels::{ROWS, axpy4_summary, keep, row_stats};
use crate::rows::RowSource;
use crate::sequence::Tokens;
use crate::validate::DataCheck;

/// How answer tokens treat incoming flow ([method §4](docs/method.md#s4), §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AnswerMode {
    /// Answer tokens absorb: `h(a) = 1`, and they pass nothing on (the paper's choice).
    #[default]
    Absorbing,
    /// **\[ours\]** Answer tokens pass flow on to later answer tokens as well as to the sink:
    /// `h(a) = 1 + sum_{k>a} W[a][k] h(k)`.
    Relay,
}

crate::vocabulary::named_enum!(AnswerMode, "answer_mode", {
    Absorbing => "absorbing",
    Relay => "relay",
});

/// Computes the reach `h` of every token into `h` (f64), validating the data on the way.
///
/// Edges with weight below `edge_threshold` are dropped when it is positive
/// (**\[ours\]**, default 0: nothing dropped).
///
/// # Errors
///
/// The data checks of [method §13](docs/method.md#s13) ([`Error::NonFinite`],
/// [`Error::Negative`], [`Error::RowMassExceeded`]), for the whole matrix, in that order;
/// then [`Error::Overflow`] if `h` is not finite (only possible when rows may sum to far
/// more than 1, i.e. with a huge `row_tolerance`).
///
/// # Panics
///
/// If `h.len() != seq.n()`.
///
/// # Complexity
///
/// O(N²) time, one streaming read of the lower triangle of `Ā` (every row, descending
/// from the answer's last, then the rows after it); no extra memory.
pub(crate) fn reach_into<F: FlowFloat>(
    seq: &mut impl RowSource<F>,
    answer: &Tokens,
    mode: AnswerMode,
    edge_threshold: f64,
    row_tolerance: f64,
    h: &mut [f64],
) -> Result<(), Error> {
    assert_eq!(h.len(), seq.n(), "h must have length n");
    if edge_threshold > 0.0 {
        backward::<F, true>(seq, answer, mode, edge_threshold, row_tolerance, h)
    } else {
        backward::<F, false>(seq, answer, mode, edge_threshold, row_tolerance, h)
    }
}

fn backward<F: FlowFloat, const PRUNE: bool>(
    seq: &mut impl RowSource<F>,
    answer: &Tokens,
    mode: AnswerMode,
    threshold: f64,
    row_tolerance: f64,
    h: &mut [f64],
) -> Result<(), Error> {
    let n = seq.n();
    let mut check = DataCheck::new(row_tolerance);
    // Rows after the answer cannot reach it: only their data is checked.
    for k in answer.end()..n {
        seq.prepare(k..k + 1, false);
        let row = seq.row(k);
        let (sum, min) = row_stats(row);
        check.observe_row(k, row, sum, min);
    }
    // Mutant for the fuzz oracles (off in every normal build): keeps stale scratch.
    #[cfg(not(flowtracer_mutant = "stale_workspace"))]
    h.fill(0.0);
    let answer_reach = |k: usize, acc: f64| match (answer.contains(k), mode) {
        (false, _) => acc,
        (true, AnswerMode::Absorbing) => 1.0,
        (true, AnswerMode::Relay) => 1.0 + acc,
    };
    // Rows in blocks of four, k - 1 down to k - 4: one sweep over the accumulator serves
    // all four. Within the block, each row first reaches the later-numbered rows below it,
    // which makes their `h` final before the sweep.
    let mut k = answer.end();
    while k >= ROWS {
        let base = k - ROWS;
        seq.prepare(base..k, true);
        let rows: [&[F]; ROWS] = core::array::from_fn(|r| seq.row(k - 1 - r));
        let mut hs = [0.0f64; ROWS];
        for r in 0..ROWS {
            let i = k - 1 - r;
            let mut acc = h[i];
            for (&row, &hp) in rows[..r].iter().zip(&hs[..r]) {
                acc += keep::<PRUNE>(row[i].widen(), threshold) * hp;
            }
            hs[r] = answer_reach(i, acc);
            h[i] = hs[r];
        }
        let heads = rows.map(|row| &row[..base]);
        let sums = axpy4_summary::<F, PRUNE>(heads, hs, threshold, &mut h[..base]);
        for (r, (row, sum)) in rows.iter().zip(sums).enumerate() {
            let summary = row[base..].iter().fold(sum, |s, &x| s.push(x));
            check.observe_summary(k - 1 - r, row, summary);
        }
        k = base;
    }
    // The first (at most three) rows, one at a time.
    while k > 0 {
        k -= 1;
        seq.prepare(k..k + 1, true);
        let row = seq.row(k);
        let hk = answer_reach(k, h[k]);
        h[k] = hk;
        for (x, &a) in h[..k].iter_mut().zip(row) {
            *x += keep::<PRUNE>(a.widen(), threshold) * hk;
        }
        let (sum, min) = row_stats(row);
        check.observe_row(k, row, sum, min);
    }
    check.finish()?;
    if h.iter().all(|x| x.is_finite()) {
        Ok(())
    } else {
        Err(Error::Overflow {
            stage: Stage::Reach,
        })
    }
}
