//! The bench binary behind `benches/compare_passes.py` (issue 15, item 5): the aggregation
//! and the two passes against their floors, with one variant per named cause of the gap,
//! all timed in one run on the same data.
//!
//! ```text
//! bench_passes --n N [--reps R]
//! ```
//!
//! Prints one JSON line of medians (seconds); the contenders run round robin, one run of
//! each per round, so load that drifts during the run (the machine is shared) hits them
//! alike. Data: `[2][4][N][N]` f32 attention (random
//! causal rows of mass 1, SplitMix64) for the aggregation, and one such `N x N` matrix for
//! the trace (question: the first eighth, answer: the last 8 tokens). Entries:
//!
//! - `agg_shipped`: `aggregate` on dense input (one thread); `agg_packed`: packed input;
//!   `agg_reused`: `LayerAccumulator::with_buffer` on the previous `Ā`'s allocation (no
//!   fresh pages to fault in).
//! - Replicas of the row loops into a reused buffer (see `Loop`), each changing one thing:
//!   `agg_rep_previous` (the loop before issue 15: one head at a time, with its sum and
//!   minimum), `agg_rep_dense` (the shipped dense loop: one head at a time, the minimum
//!   per entry, the sum row's finiteness once), `agg_rep_dense_sweep4` (four heads per
//!   sweep on dense input), `agg_rep_dense_nochecks`, `agg_rep_packed` (the shipped packed
//!   loop: four heads per sweep), `agg_rep_packed_nochecks`, `agg_rep_fused` (packed, no
//!   checks, every layer and head per row with the scale folded in, so `Ā` is written
//!   once).
//! - `agg_floor_rust`: one read of the eight packed triangles plus one write of a packed
//!   triangle (the floor the numpy script also measures).
//! - `trace_shipped` (dense `Ā`), `trace_packed`; replicas of the two passes with the
//!   shipped four-row sweeps and no data checks: `trace_rep_f64` (f64 accumulation, as
//!   shipped), `trace_rep_f32` (f32 accumulation), `trace_rep_f32_packed`.
//! - `trace_floor_rust`: two streaming sums over the packed triangle.
//!
//! Replicas are benchmark-only code (here, not in the library); their results are checked
//! against the shipped ones before timing (bit for bit for the aggregation replicas, 1e-6
//! relative for the fused one, 1e-3 for f32 accumulation) so they compute the same thing.

use core::hint::black_box;
use core::ops::{Add, Div, Mul, Range};
use std::time::Instant;

use flowtracer_core::aggregate::{LayerAccumulator, LayerSelection, Layout, aggregate};
use flowtracer_core::baselines::SplitMix64;
use flowtracer_core::{Sequence, Spans, Trace, Tracer};

#[path = "support/mod.rs"]
#[allow(dead_code)] // the allocator and range parser serve the other bench binaries
mod support;

const LAYERS: usize = 2;
const HEADS: usize = 4;
const LANES: usize = 8;

/// A random causal `n x n` matrix with rows of mass 1, appended to `out`.
fn attention(n: usize, seed: u64, out: &mut Vec<f32>) {
    let mut rng = SplitMix64::new(seed);
    let start = out.len();
    out.resize(start + n * n, 0.0);
    for k in 0..n {
        let row = &mut out[start + k * n..=start + k * n + k];
        let mut s = 0.0f64;
        for x in row.iter_mut() {
            let v = rng.next_unit();
            *x = v as f32;
            s += v;
        }
        for x in row.iter_mut() {
            *x = (f64::from(*x) / s) as f32;
        }
    }
}

fn pack(dense: &[f32], n: usize) -> Vec<f32> {
    let mut p = Vec::with_capacity(dense.len() / n * (n + 1) / 2);
    for m in dense.chunks(n * n) {
        for k in 0..n {
            p.extend_from_slice(&m[k * n..=k * n + k]);
        }
    }
    p
}

/// The shipped aggregation row loop (`kernels::add_summary`): add, and the sum and minimum.
#[inline]
fn add_summary(row: &[f32], acc: &mut [f32]) -> (f32, f32) {
    let acc = &mut acc[..row.len()];
    let (mut s, mut m) = ([0f32; LANES], [0f32; LANES]);
    let (c, cr) = row.as_chunks::<LANES>();
    let (a, ar) = acc.as_chunks_mut::<LANES>();
    for (c, a) in c.iter().zip(a) {
        for j in 0..LANES {
            let x = c[j];
            a[j] += x;
            s[j] += x;
            if x < m[j] {
                m[j] = x;
            }
        }
    }
    let mut sum: f32 = s.iter().sum();
    let mut min = m.iter().fold(0f32, |a, &b| a.min(b));
    for (&x, a) in cr.iter().zip(ar) {
        *a += x;
        sum += x;
        min = min.min(x);
    }
    (sum, min)
}

#[inline]
fn add(row: &[f32], acc: &mut [f32]) {
    for (a, &x) in acc[..row.len()].iter_mut().zip(row) {
        *a += x;
    }
}

/// The shipped four-head sweep (`kernels::add4_min`): one load and store of the sum per
/// four heads, the minimum kept per entry when `checks`.
#[inline]
fn add4(rows: [&[f32]; 4], acc: &mut [f32], checks: bool) -> f32 {
    let mut m = [0f32; LANES];
    let len = acc.len();
    let (ac, ar) = acc.as_chunks_mut::<LANES>();
    let [c0, c1, c2, c3] = rows.map(|r| r[..len].as_chunks::<LANES>().0);
    for ((((a, x0), x1), x2), x3) in ac.iter_mut().zip(c0).zip(c1).zip(c2).zip(c3) {
        for j in 0..LANES {
            a[j] = (((a[j] + x0[j]) + x1[j]) + x2[j]) + x3[j];
            if checks {
                for x in [x0[j], x1[j], x2[j], x3[j]] {
                    if x < m[j] {
                        m[j] = x;
                    }
                }
            }
        }
    }
    let tail = len - ar.len();
    for (i, a) in ar.iter_mut().enumerate() {
        for r in rows {
            *a += r[tail + i];
            m[0] = m[0].min(r[tail + i]);
        }
    }
    m.iter().fold(0f32, |a, &b| a.min(b))
}

/// `acc += row` and the minimum of `row` (the shipped dense loop, `kernels::add_min`).
#[inline]
fn add_min(row: &[f32], acc: &mut [f32]) -> f32 {
    let mut m = [0f32; LANES];
    let len = acc.len();
    let (ac, ar) = acc.as_chunks_mut::<LANES>();
    let (c, t) = row[..len].as_chunks::<LANES>();
    for (a, x) in ac.iter_mut().zip(c) {
        for j in 0..LANES {
            a[j] += x[j];
            if x[j] < m[j] {
                m[j] = x[j];
            }
        }
    }
    for (a, &x) in ar.iter_mut().zip(t) {
        *a += x;
        m[0] = m[0].min(x);
    }
    m.iter().fold(0f32, |a, &b| a.min(b))
}

/// The row loops the aggregation replicas compare.
#[derive(Clone, Copy)]
enum Loop {
    /// One head at a time with its sum and minimum (the loop before issue 15).
    Previous,
    /// One head at a time with its minimum, the sum row's finiteness once (shipped, dense).
    PerHead,
    /// Four heads per sweep with their minimum, the sum row's finiteness once (shipped,
    /// packed).
    Sweep4,
    /// One head at a time, no checks.
    PerHeadPlain,
    /// Four heads per sweep, no checks.
    Sweep4Plain,
}

/// Replica of the per-layer aggregation into `out` (dense `N x N`) with row loop `how`.
fn agg_replica(data: &[f32], n: usize, packed: bool, how: Loop, out: &mut [f32]) {
    let m = if packed { n * (n + 1) / 2 } else { n * n };
    out.fill(0.0);
    let mut bad = false;
    for layer in 0..LAYERS {
        for k in 0..n {
            let off = if packed { k * (k + 1) / 2 } else { k * n };
            let acc = &mut out[k * n..=k * n + k];
            let row = |head: usize| &data[(layer * HEADS + head) * m + off..][..=k];
            match how {
                Loop::Previous => {
                    for head in 0..HEADS {
                        let (s, min) = add_summary(row(head), acc);
                        bad |= !s.is_finite() || min < 0.0;
                    }
                }
                Loop::PerHead => {
                    let mut min = 0f32;
                    for head in 0..HEADS {
                        min = min.min(add_min(row(head), acc));
                    }
                    bad |= min < 0.0 || !acc.iter().all(|x| x.is_finite());
                }
                Loop::Sweep4 | Loop::Sweep4Plain => {
                    let checks = matches!(how, Loop::Sweep4);
                    let min = add4(core::array::from_fn(row), acc, checks);
                    bad |= checks && (min < 0.0 || !acc.iter().all(|x| x.is_finite()));
                }
                Loop::PerHeadPlain => {
                    for head in 0..HEADS {
                        add(row(head), acc);
                    }
                }
            }
        }
    }
    assert!(!bad);
    let scale = 1.0 / (LAYERS * HEADS) as f32;
    for k in 0..n {
        for x in &mut out[k * n..=k * n + k] {
            *x *= scale;
        }
    }
}

/// Every layer and head per row, the scale folded in: `Ā` written once (packed input).
fn agg_fused(data: &[f32], n: usize, out: &mut [f32]) {
    let m = n * (n + 1) / 2;
    let scale = 1.0 / (LAYERS * HEADS) as f32;
    for k in 0..n {
        let off = k * (k + 1) / 2;
        let acc = &mut out[k * n..=k * n + k];
        acc.copy_from_slice(&data[off..][..=k]);
        for mat in 1..LAYERS * HEADS {
            add(&data[mat * m + off..][..=k], acc);
        }
        for x in acc.iter_mut() {
            *x *= scale;
        }
    }
}

/// One read of the packed triangles, one write of a packed triangle.
fn agg_floor(data: &[f32], m: usize, out: &mut [f32]) {
    out.copy_from_slice(&data[..m]);
    for mat in 1..LAYERS * HEADS {
        add(&data[mat * m..][..m], out);
    }
}

fn lane_sum(x: &[f32]) -> f32 {
    let mut s = [0f32; 16];
    let (c, r) = x.as_chunks::<16>();
    for c in c {
        for j in 0..16 {
            s[j] += c[j];
        }
    }
    s.iter().sum::<f32>() + r.iter().sum::<f32>()
}

/// The accumulation type of the pass replicas.
trait Acc:
    Copy
    + Default
    + Add<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + From<f32>
    + PartialOrd
{
}
impl Acc for f32 {}
impl Acc for f64 {}

/// Replica of the backward pass (absorbing answer, four rows per sweep, no data checks).
fn reach_rep<'a, A: Acc>(row: impl Fn(usize) -> &'a [f32], answer: &Range<usize>, h: &mut [A]) {
    h.fill(A::default());
    let one = A::from(1.0);
    let mut k = answer.end;
    while k >= 4 {
        let base = k - 4;
        let rows: [&[f32]; 4] = core::array::from_fn(|r| row(k - 1 - r));
        let mut hs = [A::default(); 4];
        for r in 0..4 {
            let i = k - 1 - r;
            let mut acc = h[i];
            for p in 0..r {
                acc = acc + A::from(rows[p][i]) * hs[p];
            }
            hs[r] = if answer.contains(&i) { one } else { acc };
            h[i] = hs[r];
        }
        let [r0, r1, r2, r3] = rows.map(|r| &r[..base]);
        for ((((x, &a), &b), &c), &d) in h[..base].iter_mut().zip(r0).zip(r1).zip(r2).zip(r3) {
            *x = *x
                + ((A::from(a) * hs[0] + A::from(b) * hs[1])
                    + (A::from(c) * hs[2] + A::from(d) * hs[3]));
        }
        k = base;
    }
    while k > 0 {
        k -= 1;
        let r = row(k);
        let hk = if answer.contains(&k) { one } else { h[k] };
        h[k] = hk;
        for (x, &a) in h[..k].iter_mut().zip(r) {
            *x = *x + A::from(a) * hk;
        }
    }
}

/// Four dot products of `rows` with `u` in one sweep, `LANES` accumulators each.
#[inline]
fn dot4<A: Acc>(rows: [&[f32]; 4], u: &[A]) -> [A; 4] {
    let len = u.len();
    let mut s = [[A::default(); LANES]; 4];
    let (uc, ur) = u.as_chunks::<LANES>();
    let rc = rows.map(|r| r[..len].as_chunks::<LANES>().0);
    for (c, uc) in uc.iter().enumerate() {
        for r in 0..4 {
            for j in 0..LANES {
                s[r][j] = s[r][j] + A::from(rc[r][c][j]) * uc[j];
            }
        }
    }
    let tail = len - ur.len();
    core::array::from_fn(|r| {
        let mut t = s[r].iter().fold(A::default(), |a, &b| a + b);
        for (i, &x) in ur.iter().enumerate() {
            t = t + A::from(rows[r][tail + i]) * x;
        }
        t
    })
}

/// Replica of the forward pass (absorbing answer, four rows per sweep).
fn flow_rep<'a, A: Acc>(
    row: impl Fn(usize) -> &'a [f32],
    question: &Range<usize>,
    answer: &Range<usize>,
    h: &[A],
    u: &mut [A],
    f: &mut [A],
) {
    u.fill(A::default());
    f.fill(A::default());
    let zero = A::default();
    let sources = question.clone().filter(|&q| h[q] > zero).count();
    let inj = A::from(1.0 / sources as f32);
    let (lo, end) = (question.start, answer.end);
    let finish = |k: usize, dot: A, u: &mut [A], f: &mut [A]| {
        let hk = h[k];
        let src = if question.contains(&k) { inj } else { zero };
        let uk = src / hk + dot;
        f[k] = hk * uk;
        if !answer.contains(&k) {
            u[k] = uk;
        }
    };
    let mut k = lo;
    while k + 4 <= end {
        let rows: [&[f32]; 4] = core::array::from_fn(|r| &row(k + r)[lo..]);
        let dots = dot4(rows.map(|r| &r[..k - lo]), &u[lo..k]);
        for r in 0..4 {
            let i = k + r;
            if h[i] <= zero {
                continue;
            }
            let mut acc = dots[r];
            for (p, &ui) in u[k..i].iter().enumerate() {
                acc = acc + A::from(rows[r][k - lo + p]) * ui;
            }
            finish(i, acc, u, f);
        }
        k += 4;
    }
    for k in k..end {
        if h[k] <= zero {
            continue;
        }
        let d = dot4([&row(k)[lo..k]; 4], &u[lo..k])[0];
        finish(k, d, u, f);
    }
}

/// A named contender of [`round_robin`].
type Contender<'a> = (&'static str, Box<dyn FnMut() + 'a>);

/// Times every contender `reps` times, round robin (one run of each per round), so load
/// that drifts during the run hits them alike; returns the medians.
fn round_robin<'a>(reps: usize, mut contenders: Vec<Contender<'a>>) -> Vec<(&'static str, f64)> {
    let mut times = vec![Vec::with_capacity(reps); contenders.len()];
    for _ in 0..reps {
        for ((_, f), t) in contenders.iter_mut().zip(&mut times) {
            let s = Instant::now();
            f();
            t.push(s.elapsed().as_secs_f64());
        }
    }
    contenders
        .iter()
        .zip(times)
        .map(|((name, _), mut t)| {
            t.sort_by(f64::total_cmp);
            (*name, t[reps / 2])
        })
        .collect()
}

fn main() {
    let get = support::flags();
    let n: usize = get("--n").expect("--n").parse().expect("--n N");
    let reps: usize = get("--reps").map_or(5, |r| r.parse().expect("--reps R"));

    // Aggregation data: [2][4][N][N] dense and packed.
    let mut dense = Vec::with_capacity(LAYERS * HEADS * n * n);
    for s in 0..(LAYERS * HEADS) as u64 {
        attention(n, s, &mut dense);
    }
    let packed = pack(&dense, n);
    let m = n * (n + 1) / 2;
    let all = LayerSelection::All;
    let shipped = aggregate(&dense, LAYERS, HEADS, n, Layout::Dense, &all).unwrap();
    // Every replica computes what the shipped code does (checked once, before timing).
    let mut out = vec![0f32; n * n];
    let replicas = [
        ("agg_rep_previous", false, Loop::Previous),
        ("agg_rep_dense", false, Loop::PerHead),
        ("agg_rep_dense_sweep4", false, Loop::Sweep4),
        ("agg_rep_dense_nochecks", false, Loop::PerHeadPlain),
        ("agg_rep_packed", true, Loop::Sweep4),
        ("agg_rep_packed_nochecks", true, Loop::Sweep4Plain),
    ];
    for (name, is_packed, how) in replicas {
        let data = if is_packed { &packed } else { &dense };
        agg_replica(data, n, is_packed, how, &mut out);
        assert!(
            out == shipped,
            "{name} differs from the shipped aggregation"
        );
    }
    agg_fused(&packed, n, &mut out);
    for (x, y) in out.iter().zip(&shipped) {
        assert!(
            (x - y).abs() <= 1e-6 * y.abs() + 1e-12,
            "agg_rep_fused: {x} vs {y}"
        );
    }
    let (dense, packed, all) = (&dense, &packed, &all);
    let mut agg: Vec<Contender<'_>> = vec![
        (
            "agg_shipped",
            Box::new(move || {
                black_box(aggregate(dense, LAYERS, HEADS, n, Layout::Dense, all).unwrap());
            }),
        ),
        (
            "agg_packed",
            Box::new(move || {
                black_box(aggregate(packed, LAYERS, HEADS, n, Layout::Packed, all).unwrap());
            }),
        ),
    ];
    let mut buffer = Some(shipped.clone());
    agg.push((
        "agg_reused",
        Box::new(move || {
            let mut acc =
                LayerAccumulator::with_buffer(HEADS, n, Layout::Dense, buffer.take().unwrap())
                    .unwrap();
            for l in 0..LAYERS {
                acc.add_layer(l, &dense[l * HEADS * n * n..][..HEADS * n * n])
                    .unwrap();
            }
            buffer = Some(black_box(acc.finish().unwrap()));
        }),
    ));
    for (name, is_packed, how) in replicas {
        let data = if is_packed { packed } else { dense };
        let mut out = vec![0f32; n * n];
        agg.push((
            name,
            Box::new(move || agg_replica(data, n, is_packed, how, black_box(&mut out))),
        ));
    }
    agg.push((
        "agg_rep_fused",
        Box::new(move || agg_fused(packed, n, black_box(&mut out))),
    ));
    let mut tri = vec![0f32; m];
    agg.push((
        "agg_floor_rust",
        Box::new(move || agg_floor(packed, m, black_box(&mut tri))),
    ));
    let mut results = round_robin(reps, agg);

    // Trace data: one N x N matrix.
    let mut a = Vec::with_capacity(n * n);
    attention(n, 99, &mut a);
    let ap = pack(&a, n);
    let (question, answer) = (0..n / 8, n - 8..n);
    let spans = Spans::new(question.clone(), answer.clone());
    let seq = Sequence::dense(&a, spans.clone()).unwrap();
    let seqp = Sequence::packed(&ap, spans).unwrap();
    let mut tracer = Tracer::default();
    let mut t = Trace::default();
    tracer.trace_into(&seq, &mut t).unwrap();
    let (h_ref, f_ref) = (tracer.last_reach().to_vec(), t.flow().to_vec());
    let (a, ap) = (&a, &ap);
    let dense_row = move |k: usize| &a[k * n..=k * n + k];
    let packed_row = move |k: usize| &ap[k * (k + 1) / 2..][..=k];
    let (mut h64, mut u64_, mut f64_) = (vec![0f64; n], vec![0f64; n], vec![0f64; n]);
    reach_rep(dense_row, &answer, &mut h64);
    flow_rep(dense_row, &question, &answer, &h64, &mut u64_, &mut f64_);
    let (mut h32, mut u32_, mut f32_) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
    reach_rep(dense_row, &answer, &mut h32);
    flow_rep(dense_row, &question, &answer, &h32, &mut u32_, &mut f32_);
    let widen = |x: &[f32]| x.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
    for (what, got, want, tol) in [
        ("h f64", h64.clone(), h_ref.clone(), 1e-9),
        ("f f64", f64_.clone(), widen(&f_ref), 1e-6),
        ("h f32", widen(&h32), h_ref.clone(), 1e-3),
        ("f f32", widen(&f32_), widen(&f_ref), 1e-3),
    ] {
        let scale = want.iter().fold(0f64, |s, &x| s.max(x.abs()));
        for (i, (x, y)) in got.iter().zip(&want).enumerate() {
            assert!(
                (x - y).abs() <= tol * scale,
                "{what}[{i}]: replica {x} vs shipped {y}"
            );
        }
    }
    let (q, ans) = (&question, &answer);
    let mut tracer_p = Tracer::default();
    let mut tp = Trace::default();
    let (mut h32p, mut u32p, mut f32p) = (h32.clone(), u32_.clone(), f32_.clone());
    let trace: Vec<Contender<'_>> = vec![
        (
            "trace_shipped",
            Box::new(|| tracer.trace_into(&seq, &mut t).unwrap()),
        ),
        (
            "trace_packed",
            Box::new(|| tracer_p.trace_into(&seqp, &mut tp).unwrap()),
        ),
        (
            "trace_rep_f64",
            Box::new(move || {
                reach_rep(dense_row, ans, &mut h64);
                flow_rep(dense_row, q, ans, &h64, &mut u64_, &mut f64_);
            }),
        ),
        (
            "trace_rep_f32",
            Box::new(move || {
                reach_rep(dense_row, ans, &mut h32);
                flow_rep(dense_row, q, ans, &h32, &mut u32_, &mut f32_);
            }),
        ),
        (
            "trace_rep_f32_packed",
            Box::new(move || {
                reach_rep(packed_row, ans, &mut h32p);
                flow_rep(packed_row, q, ans, &h32p, &mut u32p, &mut f32p);
            }),
        ),
        (
            "trace_floor_rust",
            Box::new(move || {
                black_box(lane_sum(black_box(ap)));
                black_box(lane_sum(black_box(ap)));
            }),
        ),
    ];
    results.extend(round_robin(reps, trace));
    let body: Vec<String> = results
        .iter()
        .map(|(k, v)| format!("\"{k}\": {v}"))
        .collect();
    println!("{{\"n\": {n}, {}}}", body.join(", "));
}
