//! The exact worked example of method §12, in f64 (1e-12) and f32 (1e-6).

use flowtracer_core::backbone::{BackboneConfig, backbone};
use flowtracer_core::shaping::{ShapingConfig, token_weights};
use flowtracer_core::{Config, Sequence, Spans, Tracer, trace};

use crate::common::{EXAMPLE, to_f32, widen};

const H: [f64; 5] = [0.5165, 0.435, 0.63, 0.1, 1.0];
const F: [f64; 5] = [
    0.5,
    734.0 / 1033.0,
    20895.0 / 29957.0,
    6791.0 / 89871.0,
    1.0,
];

/// The example as a sequence: question 0..2, answer 4, response 2..5 (the default).
fn example() -> Sequence<'static, f64> {
    Sequence::dense(&EXAMPLE, Spans::new(0..2, 4..5)).unwrap()
}

fn check(h: &[f64], f: &[f64], tau: &[f64], w: &[f64], tol: f64) {
    for k in 0..5 {
        assert!((h[k] - H[k]).abs() <= tol, "h[{k}] = {}", h[k]);
        assert!((f[k] - F[k]).abs() <= tol, "f[{k}] = {}", f[k]);
        assert!(
            (tau[k] - 2.0 * F[k]).abs() <= 2.0 * tol,
            "tau[{k}] = {}",
            tau[k]
        );
    }
    assert_eq!(w, [1.0, 1.0, 1.5, 1.0, 1.5]);
}

#[test]
fn f64_to_1e12() {
    let t = trace(&example()).unwrap();
    let w = token_weights(t.throughput(), &(2..5).into(), &ShapingConfig::default()).unwrap();
    check(t.reach(), t.flow(), t.throughput(), &w, 1e-12);
    assert_eq!(t.num_sources(), 2);
    assert!((t.answer_mass() - 1.0).abs() < 1e-12);
    // The tracer's weights (over the default response 2..5) are the same.
    assert_eq!(Tracer::new(Config::default()).unwrap().token_weights(&t), w);
}

#[test]
fn f32_to_1e6() {
    let a = to_f32(&EXAMPLE);
    let t = trace(&Sequence::dense(&a, Spans::new(0..2, 4..5)).unwrap()).unwrap();
    let w = Tracer::new(Config::default()).unwrap().token_weights(&t);
    check(
        &widen(t.reach()),
        &widen(t.flow()),
        &widen(t.throughput()),
        &widen(&w),
        1e-6,
    );
}

#[test]
fn backbone_of_the_example() {
    let seq = example();
    let t = trace(&seq).unwrap();
    let b = backbone(&seq, &t, &BackboneConfig::default()).unwrap();
    assert_eq!(b.path, [1, 2, 4]);
    assert!((b.path_probability - 10.0 / 29.0).abs() < 1e-12);
    let edges: Vec<(usize, usize)> = b.edges.iter().map(|e| (e.from, e.to)).collect();
    assert_eq!(edges, [(2, 4), (1, 2), (0, 1), (0, 2), (1, 4)]);
    let phi = [0.6643, 0.5145, 0.2106, 0.1830, 0.1633];
    for (e, p) in b.edges.iter().zip(phi) {
        assert!(
            (e.flow - p).abs() < 5e-5,
            "phi {} -> {} = {}",
            e.from,
            e.to,
            e.flow
        );
    }
    assert!((b.total_edge_flow - 1.9836).abs() < 5e-5);
    assert_eq!(b.hubs, [2, 4]);
    // f = (0.5, 0.71, 0.70, 0.08, 1): all but token 3 carry at least half the flow.
    assert_eq!(b.checkpoints, [0, 1, 2, 4]);
}

#[test]
fn backbone_in_f32_matches() {
    let a = to_f32(&EXAMPLE);
    let seq = Sequence::dense(&a, Spans::new(0..2, 4..5)).unwrap();
    let t = trace(&seq).unwrap();
    let b = backbone(&seq, &t, &BackboneConfig::default()).unwrap();
    assert_eq!(b.path, [1, 2, 4]);
    assert!((b.path_probability - 10.0 / 29.0).abs() < 1e-6);
    assert_eq!(b.edges.len(), 5);
}
