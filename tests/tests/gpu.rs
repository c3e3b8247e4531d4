//! Core f64 vs core f32 vs GPU kernels on the same inputs (feature `gpu`).
//!
//! Tolerance: [`flowtracer_gpu::TOLERANCE`] (`|x - reference| <= 1e-5 + 1e-4 * |reference|`,
//! stated once in flowtracer-gpu) against the core's f64 result, for both the core's f32 path
//! and the GPU.
//!
//! Nothing is skipped silently: without the `gpu` feature (a plain `cargo test`) one test
//! prints `SKIPPED:` with the reason; with it but no wgpu adapter the test **fails**, unless
//! `FLOWTRACER_ALLOW_NO_GPU=1` turns that into a `SKIPPED:` line. CI runs `cargo test-all`
//! (the alias in `.cargo/config.toml`) and fails if its log contains `SKIPPED`.

#[cfg(feature = "gpu")]
use flowtracer_core::{AnswerMode, Config, Sequence, Spans, TraceConfig, Tracer};
#[cfg(feature = "gpu")]
use flowtracer_gpu::{DeviceBuffer, GpuOptions, TOLERANCE, TraceInput, trace_batch};

/// Prints `SKIPPED: reason` straight to the process's stderr, past the test harness's
/// output capture, so that it shows in the log of a passing run.
fn skipped(reason: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {reason}");
}

#[cfg(not(feature = "gpu"))]
#[test]
fn core_and_gpu_conformance_needs_the_gpu_feature() {
    skipped(
        "flowtracer-conformance built without the gpu feature: core f64 vs core f32 vs GPU \
         did not run; run `cargo test-all` or `cargo test -p flowtracer-conformance \
         --features gpu`",
    );
}

/// The wgpu client, or `None` (after printing `SKIPPED:`) when there is no adapter and
/// `FLOWTRACER_ALLOW_NO_GPU=1`. Without an adapter and without that variable, panics.
#[cfg(feature = "gpu")]
fn device() -> Option<flowtracer_gpu::cubecl::client::Client> {
    let got = std::panic::catch_unwind(|| {
        let c = flowtracer_gpu::cubecl::Device::Wgpu(Default::default()).client();
        let _ = c.properties().hardware.max_units_per_cube;
        c
    });
    if let Ok(client) = got {
        return Some(client);
    }
    if std::env::var_os("FLOWTRACER_ALLOW_NO_GPU").is_some_and(|v| v == "1") {
        skipped(
            "flowtracer-conformance GPU test: no wgpu adapter, and FLOWTRACER_ALLOW_NO_GPU=1 \
             allows skipping",
        );
        return None;
    }
    panic!(
        "no wgpu adapter: install mesa-vulkan-drivers libvulkan1 (lavapipe) and set \
         XDG_RUNTIME_DIR=/tmp (or set FLOWTRACER_ALLOW_NO_GPU=1 to skip this test)"
    )
}

/// A causal row-stochastic matrix from a small deterministic pattern.
#[cfg(feature = "gpu")]
fn matrix(n: usize, seed: usize) -> Vec<f32> {
    let mut a = vec![0.0f32; n * n];
    for k in 0..n {
        let row: Vec<f64> = (0..=k)
            .map(|i| ((i * 31 + k * 17 + seed) % 7) as f64)
            .collect();
        let sum: f64 = row.iter().sum();
        for (i, w) in row.iter().enumerate() {
            a[k * n + i] = if sum == 0.0 {
                f32::from(u8::from(i == k))
            } else {
                (w / sum) as f32
            };
        }
    }
    a
}

#[cfg(feature = "gpu")]
#[test]
fn core_f64_core_f32_and_gpu_agree() {
    let Some(client) = device() else { return };
    let specs = [
        (5usize, 0..2, 4..5),
        (64, 0..8, 60..64),
        (130, 0..20, 100..110),
        (257, 0..30, 250..257),
    ];
    for mode in [AnswerMode::Absorbing, AnswerMode::Relay] {
        let mats: Vec<Vec<f32>> = specs
            .iter()
            .enumerate()
            .map(|(s, (n, _, _))| matrix(*n, s))
            .collect();
        let data: Vec<f32> = mats.concat();
        let inputs = TraceInput::ragged(specs.iter().cloned());
        let config = TraceConfig::default().with_answer_mode(mode);
        let mut tracer = Tracer::new(Config::default().with_trace(config)).unwrap();
        let buf = DeviceBuffer::from_f32(&client, &data);
        let gpu = trace_batch(
            &client,
            &buf,
            &inputs,
            &config,
            &GpuOptions::default().with_block(32),
        )
        .unwrap()
        .read_all(&client);
        for (b, ((n, q, a), m)) in specs.iter().zip(&mats).enumerate() {
            let wide: Vec<f64> = m.iter().map(|&x| f64::from(x)).collect();
            let spans = Spans::new(q.clone(), a.clone());
            let c64 = tracer
                .trace(&Sequence::dense(&wide, spans.clone()).unwrap())
                .unwrap();
            let c32 = tracer.trace(&Sequence::dense(m, spans).unwrap()).unwrap();
            assert_eq!((c64.n(), c32.n()), (*n, *n));
            let g = gpu[b].as_ref().unwrap();
            for k in 0..*n {
                for (what, r, x32, xg) in [
                    ("h", c64.reach()[k], c32.reach()[k], g.reach[k]),
                    ("f", c64.flow()[k], c32.flow()[k], g.flow[k]),
                    (
                        "tau",
                        c64.throughput()[k],
                        c32.throughput()[k],
                        g.throughput[k],
                    ),
                ] {
                    assert!(
                        TOLERANCE.close(f64::from(x32), r),
                        "{mode:?} seq {b} {what}[{k}]: core f32 {x32} vs f64 {r}"
                    );
                    assert!(
                        TOLERANCE.close(f64::from(xg), r),
                        "{mode:?} seq {b} {what}[{k}]: gpu {xg} vs f64 {r}"
                    );
                }
            }
        }
    }
}

/// The Q/K kernels against the core's Q/K stage and its oracle.
#[cfg(feature = "gpu")]
#[path = "gpu/qk.rs"]
mod qk;
/// The Q/K kernels' errors against the core's: variant, position, order.
#[cfg(feature = "gpu")]
#[path = "gpu/qk_errors.rs"]
mod qk_errors;
