//! The grid limit: wgpu launches at most 65535 cubes per grid dimension. `Ā` of `N = 4096`
//! (`Σ n² = 2^24` entries, 65536 cubes of 256) and a batch of `2^16` tokens with one unit
//! per cube used to panic inside wgpu ("dispatch group size ... must be less or equal to
//! 65535"); the element-wise launches now fold into y. Beyond what a grid or one device
//! allocation holds, the entry points return typed errors.

use flowtracer_core::aggregate::Layout;
use flowtracer_core::{Error, TraceConfig};
use flowtracer_gpu::{
    DeviceBuffer, GpuOptions, LayerAccumulator, LayerInput, TraceInput, trace_batch,
};

use crate::common::{assert_close, core_trace, device};

const N: usize = 4096;

/// Layer 0: uniform causal rows (`1 / (k + 1)`); layer 1: all of each row's mass on token 0.
fn layers() -> [Vec<f32>; 2] {
    let mut uniform = vec![0.0f32; N * N];
    let mut first = vec![0.0f32; N * N];
    for k in 0..N {
        uniform[k * N..=k * N + k].fill(1.0 / (k + 1) as f32);
        first[k * N] = 1.0;
    }
    [uniform, first]
}

/// Aggregates the two layers at `N = 4096` on the device (it panicked at the first launch
/// before) and traces the result, checked against the exact mean and the core's trace.
#[test]
fn aggregate_and_trace_at_n_4096() {
    let Some(client) = device() else { return };
    let options = GpuOptions::default();
    let [uniform, first] = layers();
    let mut acc = LayerAccumulator::new(
        &client,
        1,
        Layout::Dense,
        LayerInput::ragged(1, &[N], Layout::Dense),
        &options,
    )
    .unwrap();
    for (l, layer) in [&uniform, &first].into_iter().enumerate() {
        acc.add_layer(&client, l, &DeviceBuffer::from_f32(&client, layer), 0)
            .unwrap();
    }
    drop((uniform, first));
    let out = acc.finish(&client).unwrap();
    assert_eq!(out.results, [Ok(())]);
    let scale = out
        .plan
        .of(flowtracer_gpu::Kernel::AggregateScale)
        .next()
        .unwrap();
    assert_eq!(scale.cubes, (65535, 2, 1), "the scale launch folds into y");
    let mean = out.attention.read_f32(&client);
    // The exact mean, in f64: (1 / (k + 1) + [i == 0]) / 2 on and below the diagonal.
    let exact: Vec<f64> = (0..N * N)
        .map(|p| {
            let (k, i) = (p / N, p % N);
            if i > k {
                0.0
            } else {
                (1.0 / (k + 1) as f64 + f64::from(u8::from(i == 0))) / 2.0
            }
        })
        .collect();
    assert_close("Ā", &mean, &exact);

    let config = TraceConfig::default();
    let (question, answer) = (0..8, N - 16..N);
    let reference = core_trace(&exact, question.clone(), answer.clone(), config).unwrap();
    let input = out.trace_input(0, N, question.clone(), answer.clone());
    // One unit per cube: the reach and throughput launches over the batch's tokens need
    // 16 x 4096 = 2^16 cubes, one more than a grid dimension holds.
    let batch = vec![input; 16];
    let ones = GpuOptions::default().with_units(1);
    let traced = trace_batch(&client, &out.attention, &batch, &config, &ones).unwrap();
    let zero = traced
        .plan()
        .of(flowtracer_gpu::Kernel::ReachZero)
        .next()
        .unwrap();
    assert_eq!(zero.cubes, (65535, 2, 1));
    for (b, host) in traced.read_all(&client).into_iter().enumerate() {
        let host = host.unwrap();
        assert_close(&format!("reach {b}"), &host.reach, reference.reach());
        assert_close(&format!("flow {b}"), &host.flow, reference.flow());
        assert_close(
            &format!("throughput {b}"),
            &host.throughput,
            reference.throughput(),
        );
    }
}

/// More sequences than a grid dimension holds is `InvalidConfig` (field `"batch"`) from
/// `trace_batch` and `LayerAccumulator::new`, not a panic in wgpu; exactly the limit is
/// accepted by `new` (running it is left out: 65535 cubes per launch are slow on lavapipe).
#[test]
fn batches_beyond_the_grid_limit_are_errors() {
    let Some(client) = device() else { return };
    let limit = GpuOptions::default().fit(&client).grid() as usize;
    let one = DeviceBuffer::from_f32(&client, &[1.0]);
    let inputs = vec![TraceInput::dense(1, 0..1, 0..1); limit + 1];
    let e = trace_batch(
        &client,
        &one,
        &inputs,
        &TraceConfig::default(),
        &GpuOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::InvalidConfig { field: "batch", .. }),
        "{e:?}"
    );
    let opts = GpuOptions::default();
    for (seqs, ok) in [(limit + 1, false), (limit, true)] {
        let r = LayerAccumulator::new(
            &client,
            1,
            Layout::Dense,
            LayerInput::ragged(1, &vec![1; seqs], Layout::Dense),
            &opts,
        );
        match r {
            Ok(_) => assert!(ok, "{seqs} sequences accepted"),
            Err(e) => {
                assert!(!ok, "{seqs} sequences: {e:?}");
                assert!(
                    matches!(e, Error::InvalidConfig { field: "batch", .. }),
                    "{e:?}"
                );
            }
        }
    }
}

/// `Ā` larger than one device allocation (cubecl's `max_page_size`) is `OutOfMemory` from
/// `LayerAccumulator::new`, as from the Q/K accumulator; one token less is accepted.
#[test]
fn aggregate_beyond_one_device_allocation_is_out_of_memory() {
    let Some(client) = device() else { return };
    let page = client.properties().memory.max_page_size;
    let mut n = ((page / 4) as f64).sqrt() as usize;
    while 4 * (n as u64) * (n as u64) <= page {
        n += 1;
    }
    assert!(
        n <= flowtracer_gpu::MAX_N,
        "{page} bytes per buffer: no n <= MAX_N exceeds it"
    );
    let opts = GpuOptions::default();
    let new = |n: usize| {
        LayerAccumulator::new(
            &client,
            1,
            Layout::Dense,
            LayerInput::ragged(1, &[n], Layout::Dense),
            &opts,
        )
    };
    assert_eq!(
        new(n).unwrap_err(),
        Error::OutOfMemory {
            what: "the aggregated attention (N x N)",
            bytes: 4 * n * n
        }
    );
    new(n - 1).unwrap();
}
