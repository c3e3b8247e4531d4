//! A batch (ragged or padded) gives the same numbers as tracing each sequence alone.

use flowtracer_core::TraceConfig;
use flowtracer_gpu::{DeviceBuffer, GpuOptions, TraceInput, trace, trace_batch};

use crate::common::{device, matrix};

/// Length, question, answer, dense matrix.
type Seq = (
    usize,
    core::ops::Range<usize>,
    core::ops::Range<usize>,
    Vec<f32>,
);

fn sequences() -> Vec<Seq> {
    let raw: Vec<u8> = (0..257u32).map(|i| (i * 29 % 17) as u8).collect();
    [
        (5, 0..2, 4..5),
        (1, 0..1, 0..1),
        (90, 0..12, 80..86),
        (17, 0..4, 16..17),
        (40, 0..1, 39..40),
    ]
    .into_iter()
    .enumerate()
    .map(|(s, (n, q, a))| (n, q, a, matrix(n, &raw[s..])))
    .collect()
}

#[test]
fn ragged_batch_equals_one_by_one() {
    let Some(client) = device() else { return };
    let seqs = sequences();
    let data: Vec<f32> = seqs.iter().flat_map(|s| s.3.clone()).collect();
    let a = DeviceBuffer::from_f32(&client, &data);
    let inputs = TraceInput::ragged(seqs.iter().map(|s| (s.0, s.1.clone(), s.2.clone())));
    let options = GpuOptions::default().with_block(16);
    let config = TraceConfig::default();
    let batch = trace_batch(&client, &a, &inputs, &config, &options).unwrap();
    let all = batch.read_all(&client);
    for (b, (n, q, ans, m)) in seqs.iter().enumerate() {
        let one = trace(
            &client,
            &DeviceBuffer::from_f32(&client, m),
            *n,
            q.clone(),
            ans.clone(),
            &config,
            &options,
        )
        .and_then(|t| t.read(&client, 0));
        assert_eq!(all[b], one, "sequence {b}");
    }
    // The invalid sequence (n = 1: no room for an answer after the question) fails alone.
    assert!(all[1].is_err());
    assert!(all.iter().filter(|r| r.is_ok()).count() == 4);
}

#[test]
fn padded_batch_equals_one_by_one() {
    let Some(client) = device() else { return };
    let seqs = sequences();
    let t = 96;
    let starts = [3, 0, 6, 50, 10];
    let mut data = vec![0.5f32; seqs.len() * t * t];
    let mut inputs = Vec::new();
    for (b, ((n, q, ans, m), &start)) in seqs.iter().zip(&starts).enumerate() {
        for k in 0..*n {
            for i in 0..*n {
                data[b * t * t + (start + k) * t + start + i] = m[k * n + i];
            }
        }
        inputs.push(TraceInput::padded(b, t, start, *n, q.clone(), ans.clone()));
    }
    let a = DeviceBuffer::from_f32(&client, &data);
    let options = GpuOptions::default().with_block(32);
    let config = TraceConfig::default();
    let all = trace_batch(&client, &a, &inputs, &config, &options)
        .unwrap()
        .read_all(&client);
    for (b, (n, q, ans, m)) in seqs.iter().enumerate() {
        let one = trace(
            &client,
            &DeviceBuffer::from_f32(&client, m),
            *n,
            q.clone(),
            ans.clone(),
            &config,
            &options,
        )
        .and_then(|t| t.read(&client, 0));
        assert_eq!(all[b], one, "sequence {b}");
    }
}
