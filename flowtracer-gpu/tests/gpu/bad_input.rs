//! Bad input: the GPU reports the same `Error` variant and position as the core.

use flowtracer_core::validate::check_matrix_shape;
use flowtracer_core::{Error, TraceConfig};
use flowtracer_gpu::{DeviceBuffer, GpuOptions, trace};

use cubecl::client::Client;

use crate::common::{core_trace, device, matrix};

fn both(
    client: &Client,
    a: &[f32],
    n: usize,
    q: core::ops::Range<usize>,
    ans: core::ops::Range<usize>,
) -> (Error, Error) {
    let cpu = core_trace(a, q.clone(), ans.clone(), TraceConfig::default()).unwrap_err();
    let buf = DeviceBuffer::from_f32(client, a);
    let gpu = trace(
        client,
        &buf,
        n,
        q,
        ans,
        &TraceConfig::default(),
        &GpuOptions::default().with_block(16),
    )
    .unwrap_err();
    (cpu, gpu)
}

/// Equal, except that a row mass is compared to 1e-6 (the summation orders differ).
fn assert_same(cpu: &Error, gpu: &Error) {
    match (cpu, gpu) {
        (
            Error::RowMassExceeded {
                row: r1,
                mass: m1,
                tolerance: t1,
            },
            Error::RowMassExceeded {
                row: r2,
                mass: m2,
                tolerance: t2,
            },
        ) => {
            assert_eq!((r1, t1), (r2, t2));
            assert!((m1 - m2).abs() < 1e-6, "{m1} vs {m2}");
        }
        _ => assert_eq!(cpu, gpu),
    }
}

/// A change that makes a valid matrix invalid.
type Defect<'a> = Box<dyn Fn(&mut Vec<f32>) + 'a>;

fn base(n: usize) -> Vec<f32> {
    let raw: Vec<u8> = (0..101u32).map(|i| (i * 7 % 10) as u8).collect();
    matrix(n, &raw)
}

#[test]
fn data_defects_match_the_core() {
    let Some(client) = device() else { return };
    let n = 40;
    let cases: Vec<(&str, Defect<'_>)> = vec![
        ("nan", Box::new(|a| a[30 * n + 7] = f32::NAN)),
        ("inf", Box::new(|a| a[12 * n + 12] = f32::INFINITY)),
        (
            "nan after negative",
            Box::new(|a| {
                a[3 * n + 1] = -0.5;
                a[35 * n + 2] = f32::NAN;
            }),
        ),
        (
            "two negatives",
            Box::new(|a| {
                a[20 * n + 19] = -1e-3;
                a[20 * n + 3] = -2.0;
                a[25 * n] = -1.0;
            }),
        ),
        (
            "heavy rows",
            Box::new(|a| {
                a[33 * n + 5] += 0.5;
                a[17 * n + 17] += 0.01;
            }),
        ),
        (
            "negative beats heavy",
            Box::new(|a| {
                a[2 * n] += 0.5;
                a[39 * n + 39] = -0.25;
            }),
        ),
        (
            "above the diagonal is ignored",
            Box::new(|a| {
                a[5 * n + 6] = f32::NAN;
                a[6 * n + 39] = -1.0;
                a[8 * n + 1] = -1.0;
            }),
        ),
    ];
    for (name, defect) in cases {
        let mut a = base(n);
        defect(&mut a);
        let (cpu, gpu) = both(&client, &a, n, 0..5, 30..35);
        assert!(
            matches!(
                cpu,
                Error::NonFinite { .. } | Error::Negative { .. } | Error::RowMassExceeded { .. }
            ),
            "{name}: {cpu:?}"
        );
        assert_same(&cpu, &gpu);
    }
}

#[test]
fn shape_span_and_source_errors_match_the_core() {
    let Some(client) = device() else { return };
    let n = 10;
    let a = base(n);
    for (q, ans) in [(0..0, 5..6), (0..3, 5..11), (0..6, 5..7), (0..3, 7..7)] {
        let (cpu, gpu) = both(&client, &a, n, q, ans);
        assert_same(&cpu, &gpu);
    }
    // Wrong length. The core takes `N` from the length, so 99 values are no dense matrix
    // at all; the GPU, given `N = 10`, reports the core's own shape check.
    let (cpu, gpu) = both(&client, &a[..99], n, 0..3, 5..6);
    assert!(matches!(cpu, Error::NotSquare { len: 99, .. }), "{cpu:?}");
    assert_same(&check_matrix_shape(99, n).unwrap_err(), &gpu);
    // No source mass: the question tokens attend nowhere that reaches the answer.
    let mut iso = vec![0.0f32; n * n];
    for k in 0..n {
        iso[k * n + k] = 1.0;
    }
    let (cpu, gpu) = both(&client, &iso, n, 0..3, 5..6);
    assert_eq!(cpu, Error::NoSourceMass);
    assert_same(&cpu, &gpu);
}
