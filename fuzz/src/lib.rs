//! Structured inputs and oracles shared by the fuzz targets.
//!
//! Every input type has a `Debug` that prints a ready-to-paste Rust reproduction: the
//! literal values handed to flowtracer, not the fuzzer's bytes.

use core::fmt;
use core::ops::Range;

use arbitrary::Arbitrary;
use flowtracer_core::{
    AnswerMode, Config, Error, Position, Sequence, Span, Spans, Tokens, TraceConfig, Tracer,
};

/// Largest sequence the trace targets build (keeps the naive oracle fast).
pub const MAX_N: usize = 24;
/// The default row tolerance the oracles assume.
pub const ROW_TOLERANCE: f64 = TraceConfig::DEFAULT.row_tolerance;
/// Span positions the generators draw, `0..SPAN_LIMIT`: past `MAX_N`, so spans out of range
/// occur.
pub const SPAN_LIMIT: usize = MAX_N + 2;

/// A value planted into otherwise valid attention.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Special {
    /// NaN.
    Nan,
    /// +inf.
    Inf,
    /// -inf.
    NegInf,
    /// A negative value `-x/255`.
    Negative(u8),
    /// The smallest positive subnormal f64 (or f32).
    Subnormal,
    /// `10^-e` for `e` up to 255 (down to f64's subnormals).
    Tiny(u8),
    /// A huge finite value.
    Huge,
    /// Negative zero.
    NegZero,
    /// Any bit pattern.
    Bits(u64),
}

impl Special {
    /// The value, rounded through f32 where `f32_mode` asks for it.
    pub fn value(self, f32_mode: bool) -> f64 {
        match self {
            Special::Nan => f64::NAN,
            Special::Inf => f64::INFINITY,
            Special::NegInf => f64::NEG_INFINITY,
            Special::Negative(x) => -(f64::from(x) + 1.0) / 256.0,
            Special::Subnormal if f32_mode => f64::from(f32::from_bits(1)),
            Special::Subnormal => f64::from_bits(1),
            Special::Tiny(e) => 10f64.powi(-i32::from(e)),
            Special::Huge => 1e300,
            Special::NegZero => -0.0,
            Special::Bits(b) if f32_mode => f64::from(f32::from_bits(b as u32)),
            Special::Bits(b) => f64::from_bits(b),
        }
    }
}

/// One tracing problem: mostly valid attention with planted defects and arbitrary spans.
#[derive(Clone, Arbitrary)]
pub struct TraceCase {
    n: u8,
    weights: Vec<u8>,
    masses: Vec<u8>,
    defects: Vec<(u16, Special)>,
    question: (u8, u8),
    answer: (u8, u8),
    relay: bool,
    single: bool,
    threshold: u8,
    // Last, so that inputs written before it existed (the committed regressions) decode to
    // `SpanForm::Ranges`, exactly the case they were.
    form: SpanForm,
}

/// How a [`TraceCase`] gives its spans.
#[derive(Debug, Clone, Arbitrary)]
pub enum SpanForm {
    /// The question and answer as half-open ranges; the default response.
    Ranges,
    /// Sorted position lists cut from the same ranges: position `start + j` of a span is
    /// kept when bit `j` of its mask is set (an empty mask gives an empty list). With
    /// `response`, an explicit response: the positions `j < SPAN_LIMIT` whose bit is set.
    Sorted {
        /// Mask over the question range.
        question: u32,
        /// Mask over the answer range.
        answer: u32,
        /// Mask over `0..SPAN_LIMIT` (`None`: the default response).
        response: Option<u32>,
    },
    /// Lists exactly as given (modulo `SPAN_LIMIT`): possibly unsorted or repeated.
    Raw {
        /// Question positions.
        question: Vec<u8>,
        /// Answer positions.
        answer: Vec<u8>,
        /// Response positions (`None`: the default response).
        response: Option<Vec<u8>>,
    },
}

/// The positions of `start..end` whose bit is set in `mask`.
fn masked(range: Range<usize>, mask: u32) -> Vec<usize> {
    let start = range.start;
    range
        .filter(|&p| (mask >> ((p - start) % 32)) & 1 == 1)
        .collect()
}

/// A [`TraceCase`] resolved into the values flowtracer sees.
#[derive(Clone, PartialEq)]
pub struct Problem {
    /// Sequence length.
    pub n: usize,
    /// Dense `n x n` attention (f64; in single mode every value is an f32 widened).
    pub attention: Vec<f64>,
    /// Question span.
    pub question: Tokens,
    /// Answer span.
    pub answer: Tokens,
    /// Response span (`None`: the default, every token after the question).
    pub response: Option<Tokens>,
    /// Answer mode.
    pub mode: AnswerMode,
    /// Run in f32.
    pub single: bool,
    /// Edge threshold.
    pub threshold: f64,
}

impl TraceCase {
    /// The problem this case describes.
    pub fn problem(&self) -> Problem {
        let n = usize::from(self.n) % (MAX_N + 1);
        let mut a = vec![0.0f64; n * n];
        for k in 0..n {
            let w = |i: usize| {
                let j = k * n + i;
                if self.weights.is_empty() {
                    1.0
                } else {
                    f64::from(self.weights[j % self.weights.len()])
                }
            };
            let total: f64 = (0..=k).map(w).sum();
            let m = self.masses.get(k).copied().unwrap_or(255);
            // Mostly 1; sometimes lighter; bytes above 250 make the row a little heavier
            // than 1, straddling the 1e-3 tolerance.
            let mass = if m > 250 {
                1.0 + f64::from(m - 250) * 4e-4
            } else if m > 127 {
                1.0
            } else {
                0.5 + f64::from(m) / 256.0
            };
            for i in 0..=k {
                a[k * n + i] = if total > 0.0 {
                    w(i) / total * mass
                } else {
                    0.0
                };
            }
            // Garbage above the diagonal must be ignored.
            for i in k + 1..n {
                a[k * n + i] = f64::NAN;
            }
        }
        if n > 0 {
            for &(at, special) in &self.defects {
                a[usize::from(at) % (n * n)] = special.value(self.single);
            }
        }
        if self.single {
            for x in &mut a {
                *x = f64::from(*x as f32);
            }
        }
        let span = |(s, e): (u8, u8)| usize::from(s) % SPAN_LIMIT..usize::from(e) % SPAN_LIMIT;
        let (q, ans) = (span(self.question), span(self.answer));
        let raw = |v: &[u8]| Tokens::List(v.iter().map(|&x| usize::from(x) % SPAN_LIMIT).collect());
        let (question, answer, response) = match &self.form {
            SpanForm::Ranges => (Tokens::Range(q), Tokens::Range(ans), None),
            SpanForm::Sorted {
                question,
                answer,
                response,
            } => (
                Tokens::List(masked(q, *question)),
                Tokens::List(masked(ans, *answer)),
                response.map(|m| Tokens::List(masked(0..SPAN_LIMIT, m))),
            ),
            SpanForm::Raw {
                question,
                answer,
                response,
            } => (raw(question), raw(answer), response.as_deref().map(raw)),
        };
        Problem {
            n,
            attention: a,
            question,
            answer,
            response,
            mode: if self.relay {
                AnswerMode::Relay
            } else {
                AnswerMode::Absorbing
            },
            single: self.single,
            // Representable in f32, so both precisions prune the same edges.
            threshold: if self.threshold < 200 {
                0.0
            } else {
                f64::from((f64::from(self.threshold - 200) / 400.0) as f32)
            },
        }
    }
}

impl fmt::Debug for TraceCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.problem(), f)
    }
}

impl fmt::Debug for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ty = if self.single { "f32" } else { "f64" };
        writeln!(f, "// Reproduction (paste into a test of flowtracer-core):")?;
        write!(f, "let a: Vec<{ty}> = vec![")?;
        for (j, x) in self.attention.iter().enumerate() {
            if j % self.n.max(1) == 0 {
                write!(f, "\n    ")?;
            }
            write!(f, "{}, ", literal(*x, ty))?;
        }
        writeln!(f, "\n];")?;
        let tokens = |t: &Tokens| match t {
            Tokens::Range(r) => format!("{r:?}"),
            Tokens::List(v) => format!("vec!{v:?}"),
        };
        write!(
            f,
            "let spans = flowtracer_core::Spans::new({}, {})",
            tokens(&self.question),
            tokens(&self.answer)
        )?;
        if let Some(r) = &self.response {
            write!(f, ".with_response({})", tokens(r))?;
        }
        writeln!(f, ";")?;
        writeln!(
            f,
            "let cfg = flowtracer_core::TraceConfig::default().with_answer_mode(flowtracer_core::AnswerMode::{:?}).with_edge_threshold({:?});",
            self.mode, self.threshold
        )?;
        write!(
            f,
            "let result = flowtracer_core::Sequence::dense(&a, spans).and_then(|s| flowtracer_core::Tracer::new(flowtracer_core::Config::default().with_trace(cfg))?.trace(&s));"
        )
    }
}

impl Problem {
    /// The spans as flowtracer takes them.
    pub fn spans(&self) -> Spans {
        let spans = Spans::new(self.question.clone(), self.answer.clone());
        match &self.response {
            Some(r) => spans.with_response(r.clone()),
            None => spans,
        }
    }

    /// The configuration (valid by construction).
    pub fn config(&self) -> Config {
        Config::default().with_trace(
            TraceConfig::default()
                .with_answer_mode(self.mode)
                .with_edge_threshold(self.threshold),
        )
    }

    /// The attention in the problem's precision (f32 values are exact: they were rounded
    /// through f32 when the problem was built).
    pub fn attention_f32(&self) -> Vec<f32> {
        self.attention.iter().map(|&x| x as f32).collect()
    }
}

/// The positions of a span, written out independently of [`Tokens`]' own methods.
pub fn positions(t: &Tokens) -> Vec<usize> {
    match t {
        Tokens::Range(r) => (r.start..r.end).collect(),
        Tokens::List(v) => v.clone(),
    }
}

/// The smallest range holding a non-empty span (what span errors report).
fn hull(t: &Tokens) -> Range<usize> {
    match t {
        Tokens::Range(r) => r.clone(),
        Tokens::List(v) => v[0]..v[v.len() - 1] + 1,
    }
}

/// A Rust literal for `x` as type `ty` (NaN and infinities spelled out).
pub fn literal(x: f64, ty: &str) -> String {
    if x.is_nan() {
        format!("{ty}::NAN")
    } else if x == f64::INFINITY {
        format!("{ty}::INFINITY")
    } else if x == f64::NEG_INFINITY {
        format!("{ty}::NEG_INFINITY")
    } else if ty == "f32" {
        format!("f32::from_bits({:#x})", (x as f32).to_bits())
    } else {
        format!("{x:?}")
    }
}

/// `|x - y| <= abs + rel |y|`.
pub fn close(x: f64, y: f64, abs: f64, rel: f64) -> bool {
    (x - y).abs() <= abs + rel * y.abs()
}

/// What [method §13](docs/method.md#s13) says the first failing check is, computed naively; `None` if the shape,
/// spans and data are valid. `Ok(Some(row))` marks a row mass within rounding of the
/// limit, where either answer is right.
pub fn expected_error(p: &Problem) -> Result<Option<Error>, usize> {
    let n = p.n;
    if n == 0 {
        return Ok(Some(Error::EmptySequence));
    }
    let mut spans = vec![(Span::Question, &p.question), (Span::Answer, &p.answer)];
    if let Some(r) = &p.response {
        spans.push((Span::Response, r));
    }
    let spans: Vec<(Span, &Tokens, Vec<usize>)> = spans
        .into_iter()
        .map(|(s, t)| (s, t, positions(t)))
        .collect();
    for (span, _, pos) in &spans {
        if pos.is_empty() {
            return Ok(Some(Error::EmptySpan { span: *span }));
        }
    }
    for (span, _, pos) in &spans {
        if let Some(i) = (1..pos.len()).find(|&i| pos[i] <= pos[i - 1]) {
            return Ok(Some(Error::UnsortedSpan {
                span: *span,
                index: i,
            }));
        }
    }
    for (span, t, pos) in &spans {
        if pos[pos.len() - 1] >= n {
            return Ok(Some(Error::SpanOutOfRange {
                span: *span,
                range: hull(t),
                n,
            }));
        }
    }
    let (q, a) = (&spans[0].2, &spans[1].2);
    if a[0] <= q[q.len() - 1] {
        return Ok(Some(Error::AnswerNotAfterQuestion {
            question: hull(&p.question),
            answer: hull(&p.answer),
        }));
    }
    if let Some(r) = &p.response {
        let rp = positions(r);
        if a.iter().any(|x| !rp.contains(x)) {
            return Ok(Some(Error::ResponseMissesAnswer {
                response: hull(r),
                answer: hull(&p.answer),
            }));
        }
    }
    let lower = || (0..n).flat_map(move |k| (0..=k).map(move |i| (k, i)));
    if let Some((k, i)) = lower().find(|&(k, i)| !p.attention[k * n + i].is_finite()) {
        return Ok(Some(Error::NonFinite {
            position: Position::matrix(k, i),
        }));
    }
    if let Some((k, i)) = lower().find(|&(k, i)| p.attention[k * n + i] < 0.0) {
        let value = p.attention[k * n + i];
        return Ok(Some(Error::Negative {
            position: Position::matrix(k, i),
            value,
        }));
    }
    for k in 0..n {
        let mass: f64 = p.attention[k * n..=k * n + k].iter().sum();
        let limit = 1.0 + ROW_TOLERANCE;
        if close(mass, limit, 0.0, 1e-12) {
            return Err(k);
        }
        if mass > limit {
            return Ok(Some(Error::RowMassExceeded {
                row: k,
                mass,
                tolerance: ROW_TOLERANCE,
            }));
        }
    }
    Ok(None)
}

/// `(h, f, tau, answer mass)` of a trace, widened to f64.
pub type Traced = (Vec<f64>, Vec<f64>, Vec<f64>, f64);

/// Runs flowtracer on a problem in its own precision, returning `(h, f, tau, answer mass)`
/// widened to f64.
pub fn run(p: &Problem) -> Result<Traced, Error> {
    fn go<F: flowtracer_core::FlowFloat>(p: &Problem, a: &[F]) -> Result<Traced, Error> {
        let seq = Sequence::dense(a, p.spans())?;
        let t = Tracer::new(p.config())?.trace(&seq)?;
        let w = |x: &[F]| x.iter().map(|v| v.widen()).collect::<Vec<f64>>();
        Ok((
            w(t.reach()),
            w(t.flow()),
            w(t.throughput()),
            t.answer_mass(),
        ))
    }
    if p.single {
        go(p, &p.attention_f32())
    } else {
        go(p, &p.attention)
    }
}

/// The oracle of the `trace` target: errors match the defect present; results satisfy the
/// invariants of [method §6–7](docs/method.md#s6) and equal `reference` within tolerance. Panics on a violation.
pub fn check_trace(p: &Problem) {
    let got = run(p);
    let expected = match expected_error(p) {
        Err(_) => return, // a row mass within rounding of the limit: either answer is right
        Ok(e) => e,
    };
    if let Some(e) = expected {
        match (&got, &e) {
            (
                Err(Error::RowMassExceeded { row, mass, .. }),
                Error::RowMassExceeded {
                    row: r, mass: m, ..
                },
            ) => {
                assert_eq!(row, r, "row mass error on the wrong row");
                assert!(close(*mass, *m, 0.0, 1e-12), "mass {mass} vs {m}");
            }
            (
                Err(Error::Negative { position, value }),
                Error::Negative {
                    position: p2,
                    value: v2,
                },
            ) => {
                assert_eq!(position, p2);
                assert_eq!(value.to_bits(), v2.to_bits());
            }
            _ => assert_eq!(got.as_ref().err(), Some(&e), "wrong result for bad input"),
        }
        return;
    }
    let (q, a) = (positions(&p.question), positions(&p.answer));
    let naive = flowtracer_core::reference::trace(&p.attention, p.n, &q, &a, p.mode, p.threshold);
    let (h, f, tau, mass) = match got {
        Err(Error::NoSourceMass) => {
            assert_eq!(
                naive.sources, 0,
                "NoSourceMass but the reference has sources"
            );
            return;
        }
        Err(e) => panic!("valid input rejected: {e}"),
        Ok(x) => x,
    };
    assert_eq!(
        h.iter().filter(|&&x| x > 0.0).count(),
        naive.h.iter().filter(|&&x| x > 0.0).count(),
        "live sets differ"
    );
    let rel = if p.single { 1e-6 } else { 1e-9 };
    let normal = naive.h.iter().all(|&x| x == 0.0 || x >= 1e-290);
    for k in 0..p.n {
        assert!(
            h[k].is_finite() && f[k].is_finite() && tau[k].is_finite(),
            "non-finite result at {k}"
        );
        // f32 output: absolute error up to f32's subnormal spacing (a live reach below it is
        // stored as the smallest subnormal).
        let abs = if p.single { 1.5e-45 } else { 1e-300 };
        assert!(
            close(h[k], naive.h[k], abs, rel),
            "h[{k}] {} vs reference {}",
            h[k],
            naive.h[k]
        );
        assert_eq!(
            tau[k],
            if h[k] > 0.0 { 2.0 * f[k] } else { 0.0 },
            "tau != 2f at {k}"
        );
        if p.mode == AnswerMode::Absorbing {
            assert!(
                f[k] >= 0.0 && f[k] <= 1.0 + 1e-9,
                "f[{k}] = {} outside [0, 1]",
                f[k]
            );
        }
        if normal {
            assert!(
                close(f[k], naive.f[k], 1e-9, rel),
                "f[{k}] {} vs reference {}",
                f[k],
                naive.f[k]
            );
        }
    }
    if normal {
        // f32 results are f64 results rounded once: the sum of |A| of them is off by ~|A| ulp.
        let tol = if p.single {
            1e-6 * a.len() as f64
        } else {
            1e-9
        };
        assert!(close(mass, 1.0, tol, 0.0), "answer mass {mass} != 1");
    }
}

/// A counting global allocator for the reader targets: peak live bytes during a call.
pub mod alloc_guard {
    use core::alloc::{GlobalAlloc, Layout};
    use core::sync::atomic::{AtomicUsize, Ordering};
    use std::alloc::System;

    static LIVE: AtomicUsize = AtomicUsize::new(0);
    static PEAK: AtomicUsize = AtomicUsize::new(0);

    /// Forwards to the system allocator and counts live bytes.
    #[derive(Debug)]
    pub struct Counting;

    // SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
            // SAFETY: the caller's contract is System's.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            // SAFETY: the caller's contract is System's.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if new_size >= layout.size() {
                let live = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                    - layout.size();
                PEAK.fetch_max(live, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
            // SAFETY: the caller's contract is System's.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    /// Runs `f` and returns its result with the peak bytes allocated beyond what was live
    /// before it (meaningful only when this allocator is the global one).
    pub fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let before = LIVE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let out = f();
        (out, PEAK.load(Ordering::Relaxed).saturating_sub(before))
    }
}

/// The log-sum-exp of every (layer, head, row) over its visible keys, in f64 (the shared
/// oracle of the `qk` target): `q` is `[layers][q_heads][N][d]`, `k` is
/// `[layers][kv_heads][N][d]`, query `row` sees key `i <= row` with `row - i < window` (if
/// any) and `valid[i]`; 0 for a row that sees nothing. Also returns, per (layer, head, row),
/// the largest `Σ_j |q_j k_j| · scale` over the visible keys (a bound on the logits, to tell
/// rows whose logits may overflow). With `softcap`, each logit `s` is `cap · tanh(s / cap)`
/// (Gemma 2) before the log-sum-exp.
#[allow(clippy::too_many_arguments)]
pub fn qk_lse(
    q: &[f64],
    k: &[f64],
    (layers, q_heads, kv_heads): (usize, usize, usize),
    n: usize,
    d: usize,
    (scale, softcap): (f64, Option<f64>),
    window: Option<usize>,
    valid: &[bool],
) -> (Vec<f64>, Vec<f64>) {
    let group = q_heads / kv_heads;
    let mut lse = vec![0.0; layers * q_heads * n];
    let mut bound = vec![0.0f64; layers * q_heads * n];
    for l in 0..layers {
        for h in 0..q_heads {
            for row in 0..n {
                let mut s = Vec::new();
                let at = (l * q_heads + h) * n + row;
                for i in 0..=row {
                    if window.is_some_and(|w| row - i >= w) || !valid[i] {
                        continue;
                    }
                    let qr = &q[at * d..][..d];
                    let kr = &k[((l * kv_heads + h / group) * n + i) * d..][..d];
                    let x = qr.iter().zip(kr).map(|(a, b)| a * b).sum::<f64>() * scale;
                    s.push(softcap.map_or(x, |cap| cap * (x / cap).tanh()));
                    let b = qr.iter().zip(kr).map(|(a, b)| (a * b).abs()).sum::<f64>() * scale;
                    bound[at] = bound[at].max(b);
                }
                if s.is_empty() {
                    continue;
                }
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                lse[at] = m + s.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            }
        }
    }
    (lse, bound)
}
