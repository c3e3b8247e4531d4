//! Shared helpers: the device client, the generators and the one f32 tolerance
//! ([`flowtracer_gpu::TOLERANCE`]).

use cubecl::client::Client;
use flowtracer_core::{Config, Error, FlowFloat, Sequence, Spans, Trace, TraceConfig, Tracer};
use flowtracer_gpu::{TOLERANCE, Tolerance};

/// The wgpu client, built afresh (cheap after the first call: cubecl keeps one runtime).
fn try_client() -> Option<Client> {
    std::panic::catch_unwind(|| {
        let client = cubecl::Device::Wgpu(Default::default()).client();
        // Touch the device so that a missing adapter shows here.
        let _ = client.properties().hardware.max_units_per_cube;
        client
    })
    .ok()
}

/// The wgpu client for a device test, or `None` when the test must skip.
///
/// Without an adapter this **fails** the test with a message saying what to install,
/// unless [`ALLOW_NO_GPU`](crate::ALLOW_NO_GPU) is set to `1`: then it prints `SKIPPED:`
/// with the reason (once per run) and returns `None`, and the test returns without
/// checking anything. CI never sets it, and fails if its log shows `SKIPPED`.
pub(crate) fn device() -> Option<Client> {
    if let Some(client) = try_client() {
        return Some(client);
    }
    if crate::allow_no_gpu() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            crate::skipped(&format!(
                "flowtracer-gpu device tests: no wgpu adapter, and {}=1 allows skipping",
                crate::ALLOW_NO_GPU
            ));
        });
        return None;
    }
    panic!(
        "no wgpu adapter available: the GPU tests need a Vulkan driver; on a CPU-only \
         machine install Mesa's lavapipe (`apt-get install -y mesa-vulkan-drivers \
         libvulkan1`) and set XDG_RUNTIME_DIR=/tmp (or set {}=1 to skip these tests)",
        crate::ALLOW_NO_GPU
    )
}

/// Asserts [`TOLERANCE`] element by element (`|gpu - reference| <= abs + rel * |reference|`,
/// against the core's f64 result), naming the first mismatch.
#[track_caller]
pub(crate) fn assert_close(what: &str, gpu: &[f32], reference: &[f64]) {
    assert_eq!(gpu.len(), reference.len(), "{what}: lengths differ");
    let Tolerance { abs, rel } = TOLERANCE;
    for (i, (&g, &r)) in gpu.iter().zip(reference).enumerate() {
        assert!(
            TOLERANCE.close(f64::from(g), r),
            "{what}[{i}]: gpu {g} vs reference {r} (tolerance {abs} + {rel} * |ref|)"
        );
    }
}

use proptest::prelude::*;

/// One generated sequence: dense row-major `n x n` causal row-stochastic `Ā` (f32) and its
/// spans.
#[derive(Debug, Clone)]
pub(crate) struct Case {
    pub(crate) n: usize,
    pub(crate) attention: Vec<f32>,
    pub(crate) question: core::ops::Range<usize>,
    pub(crate) answer: core::ops::Range<usize>,
}

/// Builds a valid-by-construction matrix from raw weights: row `k` gets `raw[k*(k+1)/2..]`
/// (entries in `0..=9`, so exact zeros occur and some tokens are dead), normalised to sum
/// 1 (a zero row puts its mass on the diagonal).
pub(crate) fn matrix(n: usize, raw: &[u8]) -> Vec<f32> {
    let mut a = vec![0.0f32; n * n];
    let mut it = raw.iter().cycle();
    for k in 0..n {
        let row: Vec<f64> = (0..=k)
            .map(|_| f64::from(*it.next().unwrap_or(&1) % 10))
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

/// Sequences of 1 to `max_n` tokens with spans anywhere (including invalid ones for
/// `n = 1`, which both sides must reject the same way).
pub(crate) fn case(max_n: usize) -> impl Strategy<Value = Case> {
    (1..=max_n)
        .prop_flat_map(|n| {
            (
                Just(n),
                proptest::collection::vec(any::<u8>(), 64..256),
                1..=n.max(2) - 1,
                0..n.max(1),
                1..=n.max(1),
            )
        })
        .prop_map(|(n, raw, q_end, a_off, a_len)| {
            let q_end = q_end.min(n);
            let a_start = (q_end + a_off % (n - q_end + 1)).min(n);
            let a_end = (a_start + a_len).min(n).max(a_start);
            Case {
                n,
                attention: matrix(n, &raw),
                question: 0..q_end,
                answer: a_start..a_end,
            }
        })
}

/// Number of proptest cases: `PROPTEST_CASES` if set, else `default` (lavapipe is slow).
pub(crate) fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the GPU is checked against: the core's trace of dense `attention` (its `N` from the
/// length) with these spans and this configuration, errors included (building the
/// [`Sequence`] checks the shape and the spans, tracing checks the data).
pub(crate) fn core_trace<F: FlowFloat>(
    attention: &[F],
    question: core::ops::Range<usize>,
    answer: core::ops::Range<usize>,
    config: TraceConfig,
) -> Result<Trace<F>, Error> {
    let seq = Sequence::dense(attention, Spans::new(question, answer))?;
    Tracer::new(Config::default().with_trace(config))?.trace(&seq)
}

/// Widens f32 data to f64 for the core's f64 reference.
pub(crate) fn widen(a: &[f32]) -> Vec<f64> {
    a.iter().map(|&x| f64::from(x)).collect()
}
