//! Times Q/K → token weights on the device for a batch of sequences, split into forming `Ā`
//! (`QkAccumulator`: `qk_scan`, `qk_stats`, `qk_mean` per layer), the two passes
//! (`trace_batch`: check, reach, flow, throughput) and the token weights, and prints one
//! JSON object.
//!
//! Default shape: a Qwen3-8B middle band (12 layers, `H_q = 32`, `H_kv = 8`, `d = 128`),
//! batch 4, `N` in 1024, 4096, 8192. Each figure is the median of `--reps` timed runs after
//! one untimed warm-up (shader compilation); each phase ends with a blocking read, so its
//! time includes the device work and one host round trip.
//!
//! ```text
//! cargo run --release -p flowtracer-gpu --features wgpu --example bench_qk_gpu -- \
//!     [--n 1024,4096,8192] [--batch 4] [--layers 12] [--heads 32,8] [--d 128] [--reps 3]
//! ```
//!
//! On lavapipe (a CPU driver) this measures nothing about GPUs; use small sizes there
//! (`--n 64 --layers 2 --heads 4,2 --d 16 --reps 1`) as a smoke test.

use std::time::Instant;

use flowtracer_core::TraceConfig;
use flowtracer_core::qk::QkConfig;
use flowtracer_core::shaping::ShapingConfig;
use flowtracer_gpu::{
    DeviceBuffer, GpuOptions, QkAccumulator, QkDeviceLayer, QkSequence, ShapingInput, TraceInput,
    token_weights, trace_batch,
};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn list(args: &[String], name: &str, default: &[usize]) -> Vec<usize> {
    arg(args, name).map_or_else(
        || default.to_vec(),
        |v| {
            v.split(',')
                .map(|x| {
                    x.trim()
                        .parse()
                        .unwrap_or_else(|_| panic!("{name}: bad number {x}"))
                })
                .collect()
        },
    )
}

/// `len` values in `[-1, 1]` from a fixed integer hash.
fn values(seed: u64, len: usize) -> Vec<f32> {
    (0..len as u64)
        .map(|i| {
            let mut x = (seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_add(1);
            x = (x ^ (x >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x ^= x >> 27;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ns = list(&args, "--n", &[1024, 4096, 8192]);
    let batch = list(&args, "--batch", &[4])[0];
    let layers = list(&args, "--layers", &[12])[0];
    let heads = list(&args, "--heads", &[32, 8]);
    let (hq, hkv) = (heads[0], heads[1]);
    let d = list(&args, "--d", &[128])[0];
    let reps = list(&args, "--reps", &[3])[0].max(1);

    let client = cubecl::Device::Wgpu(Default::default()).client();
    let hw = &client.properties().hardware;
    let device = format!(
        "wgpu ({}), max_units_per_cube {}, max_shared_memory {}",
        client.name(),
        hw.max_units_per_cube,
        hw.max_shared_memory_size
    );
    let options = GpuOptions::default();
    let mut rows = Vec::new();
    for &n in &ns {
        let q = DeviceBuffer::from_f32(&client, &values(1, batch * hq * n * d));
        let k = DeviceBuffer::from_f32(&client, &values(2, batch * hkv * n * d));
        let seqs: Vec<QkSequence> = (0..batch)
            .map(|b| QkSequence::padded(b, (hq, hkv, d), n, 0, n).expect("a full slot"))
            .collect();
        let (mut form, mut passes, mut weights) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 0..=reps {
            let t0 = Instant::now();
            let mut acc = QkAccumulator::new(
                &client,
                (hq, hkv, d),
                &QkConfig::default(),
                seqs.clone(),
                &options,
            )
            .expect("accumulator");
            for l in 0..layers {
                let layer = QkDeviceLayer {
                    index: l,
                    q: &q,
                    k: &k,
                    lse: None,
                };
                acc.add_layer(&client, &layer).expect("layer");
            }
            let a = acc.finish(&client).expect("finish");
            for r in &a.results {
                r.clone().expect("data");
            }
            let _ = a.attention.read_range_f32(&client, 0..1);
            let t1 = Instant::now();
            let question = 0..(n / 8).max(1);
            let answer = n.saturating_sub(16).max(question.end)..n;
            let inputs: Vec<TraceInput> = (0..batch)
                .map(|b| a.trace_input(b, n, question.clone(), answer.clone()))
                .collect();
            let t = trace_batch(
                &client,
                &a.attention,
                &inputs,
                &TraceConfig::default(),
                &options,
            )
            .expect("trace");
            for b in 0..batch {
                t.result(b).expect("trace data");
            }
            let _ = t.throughput().read_range_f32(&client, 0..1);
            let t2 = Instant::now();
            let shaping: Vec<ShapingInput> = (0..batch)
                .map(|b| ShapingInput {
                    n,
                    offset: t.range(b).start,
                    response: question.end..n,
                    scored: true,
                })
                .collect();
            let w = token_weights(
                &client,
                t.throughput(),
                &shaping,
                &ShapingConfig::default(),
                &options,
            )
            .expect("weights");
            let host = w.weights.read_f32(&client);
            assert_eq!(host.len(), batch * n);
            let t3 = Instant::now();
            if rep > 0 {
                form.push((t1 - t0).as_secs_f64() * 1e3);
                passes.push((t2 - t1).as_secs_f64() * 1e3);
                weights.push((t3 - t2).as_secs_f64() * 1e3);
            }
        }
        let (f, p, w) = (median(form), median(passes), median(weights));
        // Causal Q·Kᵀ multiply-adds of one pass, counted on the full triangle (as a dense
        // FlashAttention count would): L · H_q · N(N+1)/2 · d · 2 flops per sequence.
        let qk_flops = (layers * hq * d) as f64 * (n * (n + 1) / 2) as f64 * 2.0;
        rows.push(format!(
            "{{\"n\": {n}, \"batch\": {batch}, \"form_ms\": {f:.3}, \"passes_ms\": {p:.3}, \
             \"weights_ms\": {w:.3}, \"total_ms\": {:.3}, \"per_seq_ms\": {:.3}, \
             \"form_per_seq_ms\": {:.3}, \"passes_per_seq_ms\": {:.3}, \
             \"qk_tflops_one_pass\": {qk:.4}, \"qk_tflops_executed\": {ex:.4}}}",
            f + p + w,
            (f + p + w) / batch as f64,
            f / batch as f64,
            p / batch as f64,
            qk = qk_flops * batch as f64 / (f * 1e-3) / 1e12,
            ex = 2.0 * qk_flops * batch as f64 / (f * 1e-3) / 1e12,
        ));
    }
    println!(
        "{{\"bench\": \"bench_qk_gpu\", \"device\": \"{device}\", \"layers\": {layers}, \
         \"q_heads\": {hq}, \"kv_heads\": {hkv}, \"d\": {d}, \"reps\": {reps}, \
         \"rows\": [{}]}}",
        rows.join(", ")
    );
}
