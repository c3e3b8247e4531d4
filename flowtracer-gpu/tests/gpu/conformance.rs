//! GPU against flowtracer-core (f64, on the same f32 inputs) on generated inputs.

use flowtracer_core::{AnswerMode, TraceConfig};
use flowtracer_gpu::{DeviceBuffer, GpuOptions, trace};
use proptest::prelude::*;
use proptest::test_runner::Config;

use cubecl::client::Client;

use crate::common::{Case, assert_close, case, cases, core_trace, device, widen};

/// Compares one case under one configuration (the core's, on both sides); returns whether it
/// was traced (both sides succeeded).
fn check(client: &Client, c: &Case, mode: AnswerMode, threshold: f32, block: u32) -> bool {
    let config = TraceConfig::default()
        .with_answer_mode(mode)
        .with_edge_threshold(f64::from(threshold));
    let cpu = core_trace(
        &widen(&c.attention),
        c.question.clone(),
        c.answer.clone(),
        config,
    );
    let a = DeviceBuffer::from_f32(client, &c.attention);
    let gpu = trace(
        client,
        &a,
        c.n,
        c.question.clone(),
        c.answer.clone(),
        &config,
        &GpuOptions::default().with_block(block),
    );
    match (cpu, gpu) {
        (Ok(cpu), Ok(gpu)) => {
            let host = gpu.read(client, 0).unwrap();
            assert_eq!(host.num_sources, cpu.num_sources(), "num_sources");
            assert_close("h", &host.reach, cpu.reach());
            assert_close("f", &host.flow, cpu.flow());
            assert_close("tau", &host.throughput, cpu.throughput());
            // Liveness is exact: the same tokens are live on both sides.
            for (k, (&g, &r)) in host.reach.iter().zip(cpu.reach()).enumerate() {
                assert_eq!(g > 0.0, r > 0.0, "liveness of token {k}");
            }
            assert!(
                (host.answer_mass - 1.0).abs() < 1e-3,
                "answer mass {}",
                host.answer_mass
            );
            true
        }
        (Err(e), Err(g)) => {
            assert_eq!(e, g);
            false
        }
        (cpu, gpu) => panic!(
            "core says {:?}, gpu says {:?}",
            cpu.map(|_| ()),
            gpu.map(|_| ())
        ),
    }
}

// The client is taken before the runner starts, so a missing adapter fails (or skips) once,
// instead of failing inside proptest and being saved as a regression case.

#[test]
fn absorbing_matches_core() {
    let Some(client) = device() else { return };
    proptest!(Config::with_cases(cases(24)), |(c in case(300), block in prop::sample::select(vec![16u32, 64]))| {
        check(&client, &c, AnswerMode::Absorbing, 0.0, block);
    });
}

#[test]
fn relay_matches_core() {
    let Some(client) = device() else { return };
    proptest!(Config::with_cases(cases(24)), |(c in case(200), block in prop::sample::select(vec![8u32, 32]))| {
        check(&client, &c, AnswerMode::Relay, 0.0, block);
    });
}

#[test]
fn edge_threshold_matches_core() {
    let Some(client) = device() else { return };
    proptest!(Config::with_cases(cases(24)), |(c in case(150))| {
        check(&client, &c, AnswerMode::Absorbing, 0.05, 32);
    });
}

#[test]
fn sizes_crossing_block_boundaries() {
    let Some(client) = device() else { return };
    for n in [2, 15, 16, 17, 63, 64, 65, 128, 129, 257] {
        let raw: Vec<u8> = (0..97u32).map(|i| (i * 37 % 11) as u8).collect();
        let c = Case {
            n,
            attention: crate::common::matrix(n, &raw),
            question: 0..(n / 3).max(1),
            answer: (n - 1 - n / 5).max((n / 3).max(1))..n,
        };
        assert!(
            check(&client, &c, AnswerMode::Absorbing, 0.0, 16),
            "n = {n} was not traced"
        );
        assert!(
            check(&client, &c, AnswerMode::Relay, 0.0, 64),
            "n = {n} was not traced"
        );
    }
}
