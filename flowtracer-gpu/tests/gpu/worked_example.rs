//! The exact worked example of [method §12](docs/method.md#s12).

use flowtracer_core::TraceConfig;
use flowtracer_gpu::{DeviceBuffer, GpuOptions, trace};

use crate::common::{assert_close, device};

/// Ā of [method §12](docs/method.md#s12), dense row-major 5 x 5.
pub(crate) fn example() -> Vec<f32> {
    let rows: [&[f32]; 5] = [
        &[1.0],
        &[0.5, 0.5],
        &[0.3, 0.5, 0.2],
        &[0.1, 0.2, 0.3, 0.4],
        &[0.1, 0.1, 0.6, 0.1, 0.1],
    ];
    let mut a = vec![0.0f32; 25];
    for (k, row) in rows.iter().enumerate() {
        a[k * 5..k * 5 + row.len()].copy_from_slice(row);
    }
    a
}

#[test]
fn worked_example_matches_spec() {
    let Some(client) = device() else { return };
    let a = DeviceBuffer::from_f32(&client, &example());
    for block in [1, 2, 4, 64] {
        let options = GpuOptions::default().with_block(block);
        let t = trace(
            &client,
            &a,
            5,
            0..2,
            4..5,
            &TraceConfig::default(),
            &options,
        )
        .unwrap();
        let host = t.read(&client, 0).unwrap();
        let f = [
            0.5,
            734.0 / 1033.0,
            20895.0 / 29957.0,
            6791.0 / 89871.0,
            1.0,
        ];
        assert_close("h", &host.reach, &[0.5165, 0.435, 0.63, 0.1, 1.0]);
        assert_close("f", &host.flow, &f);
        assert_close("tau", &host.throughput, &f.map(|x| 2.0 * x));
        assert_eq!(host.num_sources, 2);
    }
}
