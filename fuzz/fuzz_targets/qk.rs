//! The Q/K stage (method §15) over arbitrary shapes, windows, padding, planted non-finite
//! values and log-sum-exps that may not belong, in f32 and f64: the error is the one the
//! validation order of [method §15](docs/method.md#s15) names, and a valid input's `Ā`
//! matches `reference::attention_from_qk` (and traces without a panic). Mode (b)
//! (`Tracer::trace_qk`, rows recomputed inside the passes) runs on the same input and must
//! give exactly mode (a)'s trace, or exactly its error: bit for bit what was just checked
//! against the oracle.
#![no_main]

use core::fmt;

use arbitrary::Arbitrary;
use flowtracer_core::qk::{QkConfig, QkLayer, QkSequence, QkShape, sequence_from_qk};
use flowtracer_core::{Error, FlowFloat, Position, QkTensor, Sequence, Spans, Trace, Tracer, reference, trace};
use flowtracer_fuzz::{Special, close, qk_lse};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary)]
struct Input {
    layers: u8,
    q_heads: u8,
    kv_heads: u8,
    n: u8,
    d: u8,
    window: Option<u8>,
    pad: Option<u8>,
    scale: Option<u8>,
    f32_mode: bool,
    with_lse: bool,
    span_out_of_range: bool,
    /// Layer order as given (a rotation).
    rotate: u8,
    values: Vec<u8>,
    /// Planted into Q (0), K (1) or the LSE (2) of a layer, at a flat index.
    defects: Vec<(u8, u8, u16, Special)>,
    /// Added to the LSE of one (layer, head, row): `(x - 128) / 16`.
    lse_shift: Option<(u16, u8)>,
    /// Shortens one buffer of one layer by one value.
    trim: Option<(u8, u8)>,
    /// Gemma 2's logit soft-capping, `(x + 1) / 8` (last, so that the committed regressions
    /// decode to the cases they were).
    softcap: Option<u8>,
}

struct Case {
    layers: usize,
    shape: QkShape,
    order: Vec<usize>,
    q: Vec<Vec<f64>>,
    k: Vec<Vec<f64>>,
    lse: Option<Vec<Vec<f64>>>,
    config: QkConfig,
    scale: f64,
    softcap: Option<f64>,
    window: Option<usize>,
    mask: Option<Vec<bool>>,
    spans: Spans,
    f32_mode: bool,
}

impl Input {
    fn case(&self) -> Case {
        let layers = usize::from(self.layers % 3);
        let (q_heads, kv_heads) = (usize::from(self.q_heads % 5), usize::from(self.kv_heads % 3));
        let n = usize::from(self.n % 11);
        let d = usize::from(self.d % 5);
        let shape = QkShape::new(q_heads, kv_heads, n, d);
        let round = |x: f64| if self.f32_mode { f64::from(x as f32) } else { x };
        let mut next = 0usize;
        let mut value = || {
            next += 1;
            let b = if self.values.is_empty() { 100 } else { self.values[next % self.values.len()] };
            round((f64::from(b) - 128.0) / 32.0)
        };
        let mut q: Vec<Vec<f64>> = (0..layers).map(|_| (0..shape.q_len()).map(|_| value()).collect()).collect();
        let mut k: Vec<Vec<f64>> = (0..layers).map(|_| (0..shape.k_len()).map(|_| value()).collect()).collect();
        let window = self.window.map(|w| usize::from(w % 12));
        let scale = self.scale.map_or_else(|| 1.0 / (d.max(1) as f64).sqrt(), |s| (f64::from(s) + 1.0) / 64.0);
        let mut config = QkConfig::default();
        if let Some(w) = window {
            config = config.with_window(w);
        }
        if self.scale.is_some() {
            config = config.with_scale(scale);
        }
        let softcap = self.softcap.map(|c| (f64::from(c) + 1.0) / 8.0);
        if let Some(cap) = softcap {
            config = config.with_logit_softcap(cap);
        }
        let mask = self.pad.map(|p| (0..n).map(|i| i >= usize::from(p % 4)).collect::<Vec<bool>>());
        let valid = mask.clone().unwrap_or_else(|| vec![true; n]);
        let mut lse: Option<Vec<Vec<f64>>> = None;
        if self.with_lse && kv_heads > 0 && q_heads % kv_heads == 0 && q_heads > 0 && d > 0 {
            let flat_q: Vec<f64> = q.concat();
            let flat_k: Vec<f64> = k.concat();
            let (mut l, _) = qk_lse(&flat_q, &flat_k, (layers, q_heads, kv_heads), n, d, (scale, softcap), window.filter(|&w| w > 0), &valid);
            if let Some((at, x)) = self.lse_shift
                && !l.is_empty()
            {
                let len = l.len();
                l[usize::from(at) % len] += (f64::from(x) - 128.0) / 16.0;
            }
            let l: Vec<f64> = l.iter().map(|&x| f64::from(x as f32)).collect();
            lse = Some(l.chunks(shape.lse_len().max(1)).map(<[f64]>::to_vec).collect());
            if shape.lse_len() == 0 {
                lse = Some(vec![Vec::new(); layers]);
            }
        } else if self.with_lse {
            lse = Some(vec![vec![0.0; shape.lse_len()]; layers]);
        }
        for &(layer, which, at, s) in &self.defects {
            if layers == 0 {
                break;
            }
            let layer = usize::from(layer) % layers;
            let buf = match which % 3 {
                0 => &mut q[layer],
                1 => &mut k[layer],
                _ => match lse.as_mut() {
                    Some(l) => &mut l[layer],
                    None => continue,
                },
            };
            if !buf.is_empty() {
                let len = buf.len();
                // Rounded as the buffer will be (the LSE is f32 whatever the mode).
                let x = s.value(self.f32_mode || which % 3 == 2);
                buf[usize::from(at) % len] = if self.f32_mode || which % 3 == 2 { f64::from(x as f32) } else { x };
            }
        }
        if let Some((layer, which)) = self.trim
            && layers > 0
        {
            let layer = usize::from(layer) % layers;
            let buf = match which % 3 {
                0 => Some(&mut q[layer]),
                1 => Some(&mut k[layer]),
                _ => lse.as_mut().map(|l| &mut l[layer]),
            };
            if let Some(b) = buf {
                b.pop();
            }
        }
        let mut order: Vec<usize> = (0..layers).collect();
        if layers > 0 {
            order.rotate_left(usize::from(self.rotate) % layers);
        }
        let spans = if self.span_out_of_range {
            Spans::new(0..1, n..n + 1)
        } else {
            Spans::new(0..1, n.saturating_sub(1)..n)
        };
        Case { layers, shape, order, q, k, lse, config, scale, softcap, window, mask, spans, f32_mode: self.f32_mode }
    }
}

impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.case();
        writeln!(f, "// Reproduction (layers in the order given, f32 mode: {}):", c.f32_mode)?;
        writeln!(f, "let shape = flowtracer_core::qk::{:?};", c.shape)?;
        writeln!(f, "let config = {:?};", c.config)?;
        writeln!(f, "let mask: Option<Vec<bool>> = {:?};", c.mask)?;
        writeln!(f, "let spans = {:?};", c.spans)?;
        for &l in &c.order {
            writeln!(f, "let q{l}: Vec<f64> = vec!{:?};", c.q[l])?;
            writeln!(f, "let k{l}: Vec<f64> = vec!{:?};", c.k[l])?;
            if let Some(lse) = &c.lse {
                writeln!(f, "let lse{l}: Vec<f32> = vec!{:?};", lse[l].iter().map(|&x| x as f32).collect::<Vec<_>>())?;
            }
        }
        Ok(())
    }
}

/// The error method §15 names for this case, if any, before the row checks.
fn expected_early(c: &Case) -> Option<Error> {
    let s = c.shape;
    if let Err(e) = s.check() {
        return Some(e);
    }
    if c.layers == 0 {
        return Some(Error::ZeroDimension { what: "layers" });
    }
    if let Err(e) = c.config.validate() {
        return Some(e);
    }
    for &l in &c.order {
        for (what, expected, actual) in [
            ("queries", s.q_len(), Some(c.q[l].len())),
            ("keys", s.k_len(), Some(c.k[l].len())),
            ("log-sum-exp", s.lse_len(), c.lse.as_ref().map(|x| x[l].len())),
        ] {
            if let Some(actual) = actual
                && actual != expected
            {
                return Some(Error::ShapeMismatch { what, expected, actual });
            }
        }
    }
    if let Err(e) = flowtracer_core::validate::check_spans(s.n, &c.spans) {
        return Some(e);
    }
    for l in 0..c.layers {
        let tensors: [(QkTensor, &[f64], usize); 3] = [
            (QkTensor::Query, &c.q[l], s.d),
            (QkTensor::Key, &c.k[l], s.d),
            (QkTensor::LogSumExp, c.lse.as_ref().map_or(&[][..], |x| &x[l][..]), 1),
        ];
        for (tensor, buf, width) in tensors {
            if let Some(i) = buf.iter().position(|x| !x.is_finite()) {
                let position = Position { layer: Some(l), head: Some(i / (s.n * width)), row: (i / width) % s.n, col: i % width };
                return Some(Error::NonFiniteInput { tensor, position });
            }
        }
    }
    None
}

/// Mode (a)'s `Ā`, and mode (b)'s trace of the same input.
#[allow(clippy::type_complexity)]
fn run<T: flowtracer_core::qk::QkInput, F: FlowFloat>(c: &Case, conv: impl Fn(f64) -> T) -> (Result<Sequence<'static, F>, Error>, Result<Trace<F>, Error>) {
    let q: Vec<Vec<T>> = c.q.iter().map(|v| v.iter().map(|&x| conv(x)).collect()).collect();
    let k: Vec<Vec<T>> = c.k.iter().map(|v| v.iter().map(|&x| conv(x)).collect()).collect();
    let lse: Option<Vec<Vec<f32>>> = c.lse.as_ref().map(|l| l.iter().map(|v| v.iter().map(|&x| x as f32).collect()).collect());
    let layers: Vec<QkLayer<'_, T>> = c
        .order
        .iter()
        .map(|&l| {
            let layer = QkLayer::new(l, &q[l][..], &k[l][..]);
            match &lse {
                Some(x) => layer.with_lse(&x[l]),
                None => layer,
            }
        })
        .collect();
    let a = sequence_from_qk(&layers, c.shape, &c.config, c.mask.as_deref(), c.spans.clone());
    let b = QkSequence::new(&layers, c.shape, &c.config, c.mask.as_deref(), c.spans.clone()).and_then(|seq| Tracer::default().trace_qk(&seq));
    (a, b)
}

/// Mode (b) equals mode (a) traced: the same trace, or the same first error.
fn check_stream<F: FlowFloat>(a: &Result<Sequence<'static, F>, Error>, b: Result<Trace<F>, Error>) {
    let traced_a = a.clone().and_then(|seq| trace(&seq));
    assert_eq!(b, traced_a, "mode (b) differs from mode (a)");
}

fn check<F: FlowFloat>(c: &Case, got: Result<Sequence<'static, F>, Error>, (abs, rel): (f64, f64)) {
    if let Some(e) = expected_early(c) {
        assert_eq!(got.err(), Some(e));
        return;
    }
    let s = c.shape;
    let valid = c.mask.clone().unwrap_or_else(|| vec![true; s.n]);
    let (true_lse, bound) = qk_lse(&c.q.concat(), &c.k.concat(), (c.layers, s.q_heads, s.kv_heads), s.n, s.d, (c.scale, c.softcap), c.window, &valid);
    // Rows in (layer, head, row) order: good, bad (an LSE clearly off) or uncertain
    // (logits that may overflow, or a mass near the tolerance).
    let limit = if c.f32_mode { 1e36 } else { 1e300 };
    // A bound on the rounding error of one logit in the arithmetic type: d products and
    // sums, then the scale and the shift, each within eps of the largest term.
    let eps = if c.f32_mode { f64::from(f32::EPSILON) } else { f64::EPSILON };
    // Soft-capping adds its tanh's rounding, a few cap · eps.
    let cap_error = c.softcap.map_or(0.0, |cap| 8.0 * cap * eps);
    let logit_error = |at: usize| (s.d as f64 + 3.0) * eps * bound[at] + cap_error;
    let tol = c.config.row_tolerance;
    let mut first_uncertain = None;
    let mut first_bad = None;
    for at in 0..true_lse.len() {
        if bound[at] > limit {
            first_uncertain.get_or_insert(at);
            continue;
        }
        if let Some(lse) = &c.lse {
            let (l, r) = (at / s.lse_len(), at % s.lse_len());
            let row = r % s.n;
            let lo = c.window.map_or(0, |w| (row + 1).saturating_sub(w));
            if !(lo..=row).any(|i| valid[i]) {
                continue;
            }
            let mass = (true_lse[at] - lse[l][r]).exp();
            let dev = (mass - 1.0).abs();
            // The stage's mass is off by up to about 2 · logit error, relative.
            let slack = 2.0 * logit_error(at) * mass.clamp(1.0, 1e300) + 1e-5;
            if dev > 2.0 * tol + slack {
                first_bad.get_or_insert(at);
            } else if dev + slack > tol / 2.0 {
                first_uncertain.get_or_insert(at);
            }
        }
    }
    let row_of = |e: &Error| match *e {
        Error::LogitsOverflow { layer, head, row } | Error::LseMismatch { layer, head, row, .. } => Some((layer * s.q_heads + head) * s.n + row),
        _ => None,
    };
    match (first_uncertain, first_bad) {
        (None, Some(b)) | (Some(_), Some(b)) if first_uncertain.is_none_or(|u| b < u) => {
            let e = got.expect_err("an LSE that does not belong was accepted");
            assert!(matches!(e, Error::LseMismatch { .. }), "{e:?}");
            assert_eq!(row_of(&e), Some(b), "{e:?}");
        }
        (Some(u), _) => {
            if let Err(e) = &got {
                let at = row_of(e).unwrap_or_else(|| panic!("unexpected {e:?}"));
                assert!(at >= u, "{e:?} before the first uncertain row {u}");
                assert!(first_bad.is_none_or(|b| at <= b), "{e:?} after the first bad row");
            } else {
                assert!(first_bad.is_none(), "a bad row was accepted");
            }
        }
        _ => {
            let seq = got.expect("valid input rejected");
            let flat_lse = c.lse.as_ref().map(|l| l.concat().iter().map(|&x| f64::from(x as f32)).collect::<Vec<f64>>());
            let want = reference::attention_from_qk_capped(&c.q.concat(), &c.k.concat(), flat_lse.as_deref(), (c.layers, s.q_heads, s.kv_heads), s.n, s.d, (c.scale, c.softcap), c.window, c.mask.as_deref());
            // A probability exp(l - lse) whose logit and log-sum-exp are each off by at most
            // e moves by a factor within exp(±2e): relative error at most expm1(2e) (about 2e
            // when e is small; unbounded when cancellation in q·k of huge values makes e
            // large, as no arithmetic of that type avoids). Ā is a mean of such
            // probabilities, so each entry moves by at most expm1(2 · the largest logit
            // error) relative, on top of the stated tolerance. Where that bound overflows,
            // only what holds whatever the rounding is checked: a finite entry in [0, 1].
            let cond = (2.0 * (0..bound.len()).map(logit_error).fold(0.0, f64::max)).exp_m1();
            for (j, (x, y)) in seq.attention().iter().zip(&want).enumerate() {
                let x = x.widen();
                if cond.is_finite() {
                    assert!(close(x, *y, abs, rel + cond), "Ā[{j}] {x} vs oracle {y} (logit error {cond:e})");
                } else {
                    assert!((0.0..=1.0 + abs).contains(&x), "Ā[{j}] {x} outside [0, 1]");
                }
            }
            // Tracing it never panics (an error is fine: no source mass, a heavy row).
            let _ = trace(&seq);
        }
    }
}

fuzz_target!(|input: Input| {
    let c = input.case();
    if c.f32_mode {
        let (a, b) = run::<f32, f32>(&c, |x| x as f32);
        check_stream(&a, b);
        check(&c, a, (1e-5, 1e-4));
    } else {
        let (a, b) = run::<f64, f64>(&c, |x| x);
        check_stream(&a, b);
        check(&c, a, (1e-10, 1e-10));
    }
});
