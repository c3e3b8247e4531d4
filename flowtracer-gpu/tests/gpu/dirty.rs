//! Dirty-buffer pass: outputs and scratch prefilled with garbage give the same result.

use flowtracer_core::TraceConfig;
use flowtracer_gpu::{DeviceBuffer, GpuOptions, TraceInput, Workspace, trace_batch_with_workspace};

use crate::common::{device, matrix};

#[test]
fn garbage_in_the_workspace_changes_nothing() {
    let Some(client) = device() else { return };
    let raw: Vec<u8> = (0..211u32).map(|i| (i * 53 % 13) as u8).collect();
    let (n1, n2) = (70, 33);
    let mut data = matrix(n1, &raw);
    data.extend(matrix(n2, &raw[7..]));
    let a = DeviceBuffer::from_f32(&client, &data);
    let inputs = TraceInput::ragged([(n1, 0..10, 60..65), (n2, 0..5, 30..33)]);
    let config = TraceConfig::default();
    let options = GpuOptions::default().with_block(16);
    let mut clean = Workspace::filled(&client, n1 + n2, 2, 0.0);
    let expected = trace_batch_with_workspace(&client, &a, &inputs, &config, &options, &mut clean)
        .unwrap()
        .read_all(&client);
    for garbage in [f32::NAN, -1e30, 7.0, f32::INFINITY] {
        let mut dirty = Workspace::filled(&client, n1 + n2, 2, garbage);
        let got = trace_batch_with_workspace(&client, &a, &inputs, &config, &options, &mut dirty)
            .unwrap()
            .read_all(&client);
        assert_eq!(got, expected, "garbage {garbage}");
    }
    // Reusing a workspace that holds a previous, different result also changes nothing.
    let other = TraceInput::ragged([(n1, 0..3, 10..12), (n2, 0..1, 2..3)]);
    trace_batch_with_workspace(&client, &a, &other, &config, &options, &mut clean).unwrap();
    let again = trace_batch_with_workspace(&client, &a, &inputs, &config, &options, &mut clean)
        .unwrap()
        .read_all(&client);
    assert_eq!(again, expected);
}
