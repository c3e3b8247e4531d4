//! Token weights, shaped advantages and aggregation against the core.

use flowtracer_core::aggregate::{LayerSelection, Layout};
use flowtracer_core::shaping::{ApplyTo, Select, ShapingConfig};
use flowtracer_gpu::{
    DeviceBuffer, GpuOptions, ShapingInput, aggregate, shape_advantage, token_weights,
};
use proptest::prelude::*;
use proptest::test_runner::Config;

use crate::common::{assert_close, cases, device, widen};

/// Scores with many ties and zeros; the same f32 scores go to both sides, so the
/// selection must be identical, not merely close.
#[test]
fn token_weights_match_core() {
    let Some(client) = device() else { return };
    proptest!(Config::with_cases(cases(16)), |(
        scores in proptest::collection::vec(prop::sample::select(vec![0.0f32, 0.0, 0.25, 0.5, 0.5, 1.0, 2.0, 3.5]), 1..120),
        start_frac in 0.0f64..1.0,
        rho in prop::sample::select(vec![0.0, 0.2, 0.4, 0.6, 1.0]),
        bottom in any::<bool>(),
        normalize in any::<bool>(),
        mix in prop::sample::select(vec![0.0, 0.5, 1.0]),
    )| {
        let n = scores.len();
        let start = ((n as f64 * start_frac) as usize).min(n - 1);
        let config = ShapingConfig::default()
            .with_rho(rho)
            .with_select(if bottom { Select::Bottom } else { Select::Top })
            .with_normalize_mean(normalize)
            .with_mix(mix);
        let cpu = flowtracer_core::shaping::token_weights(&scores, &(start..n).into(), &config).unwrap();
        let buf = DeviceBuffer::from_f32(&client, &scores);
        let inputs = [ShapingInput { n, offset: 0, response: start..n, scored: true }];
        let gpu = token_weights(&client, &buf, &inputs, &config, &GpuOptions::default()).unwrap();
        let got = gpu.weights.read_f32(&client);
        if normalize {
            assert_close("w", &got, &widen(&cpu));
        } else {
            prop_assert_eq!(got, cpu);
        }
    });
}

#[test]
fn worked_example_weights_and_advantages() {
    let Some(client) = device() else { return };
    let tau = [1.0f32, 1.4211, 1.395, 0.1511, 2.0];
    let scores = DeviceBuffer::from_f32(&client, &[&tau[..], &tau[..]].concat());
    let inputs = [
        ShapingInput {
            n: 5,
            offset: 0,
            response: 2..5,
            scored: true,
        },
        ShapingInput {
            n: 5,
            offset: 5,
            response: 2..5,
            scored: false,
        },
    ];
    let config = ShapingConfig::default();
    let w = token_weights(&client, &scores, &inputs, &config, &GpuOptions::default()).unwrap();
    assert_eq!(
        w.weights.read_f32(&client),
        [1.0, 1.0, 1.5, 1.0, 1.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    );
    let both = shape_advantage(
        &client,
        &w.weights,
        &inputs,
        &[-2.0, 3.0],
        &config,
        &GpuOptions::default(),
    )
    .unwrap();
    assert_eq!(
        both.read_f32(&client),
        [-2.0, -2.0, -3.0, -2.0, -3.0, 3.0, 3.0, 3.0, 3.0, 3.0]
    );
    let nonneg = config.with_apply_to(ApplyTo::NonnegativeOnly);
    let adv = shape_advantage(
        &client,
        &w.weights,
        &inputs,
        &[-2.0, 3.0],
        &nonneg,
        &GpuOptions::default(),
    )
    .unwrap();
    assert_eq!(
        adv.read_f32(&client),
        [-2.0; 5].into_iter().chain([3.0; 5]).collect::<Vec<_>>()
    );
}

#[test]
fn aggregate_matches_core() {
    let Some(client) = device() else { return };
    let (layers, heads) = (7, 3);
    for (n, layout) in [
        (1, Layout::Dense),
        (9, Layout::Dense),
        (13, Layout::Packed),
        (70, Layout::Dense),
    ] {
        let len = layout.matrix_len(n) * heads * layers;
        let data: Vec<f32> = (0..len)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
            .collect();
        for selection in [
            LayerSelection::Middle,
            LayerSelection::All,
            LayerSelection::Spaced(2),
        ] {
            let cpu = flowtracer_core::aggregate::aggregate(
                &widen(&data),
                layers,
                heads,
                n,
                layout,
                &selection,
            )
            .unwrap();
            let buf = DeviceBuffer::from_f32(&client, &data);
            let gpu = aggregate(
                &client,
                &buf,
                layers,
                heads,
                n,
                layout,
                &selection,
                &GpuOptions::default(),
            )
            .unwrap();
            assert_close("Ā", &gpu.read_f32(&client), &cpu);
        }
    }
}

#[test]
fn aggregate_defects_match_core() {
    let Some(client) = device() else { return };
    let (layers, heads, n) = (6, 2, 12);
    let per_layer = heads * n * n;
    let mut data = vec![0.01f32; layers * per_layer];
    data[3 * per_layer + n * n + 5 * n + 2] = -0.5; // layer 3, head 1
    data[2 * per_layer + 7 * n + 8] = f32::NAN; // above the diagonal: ignored
    data[4 * per_layer + 9 * n + 1] = -0.25;
    let all = LayerSelection::All;
    let cpu = flowtracer_core::aggregate::aggregate(&data, layers, heads, n, Layout::Dense, &all)
        .unwrap_err();
    let buf = DeviceBuffer::from_f32(&client, &data);
    let gpu = aggregate(
        &client,
        &buf,
        layers,
        heads,
        n,
        Layout::Dense,
        &all,
        &GpuOptions::default(),
    )
    .unwrap_err();
    assert_eq!(cpu, gpu);
    data[5 * per_layer + 3 * n] = f32::INFINITY;
    let cpu = flowtracer_core::aggregate::aggregate(&data, layers, heads, n, Layout::Dense, &all)
        .unwrap_err();
    let buf = DeviceBuffer::from_f32(&client, &data);
    let gpu = aggregate(
        &client,
        &buf,
        layers,
        heads,
        n,
        Layout::Dense,
        &all,
        &GpuOptions::default(),
    )
    .unwrap_err();
    assert_eq!(cpu, gpu);
}
