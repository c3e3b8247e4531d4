//! The GPU Q/K kernels reject bad input exactly as the core's Q/K stage does (variant,
//! position, order of method §15), and a dirty workspace changes nothing.

use flowtracer_core::qk::QkConfig;
use flowtracer_core::{Error, Position, QkTensor, Spans};
use flowtracer_gpu::{
    DeviceBuffer, GpuOptions, QkAccumulator, QkDeviceLayer, QkSequence, QkWorkspace, TOLERANCE,
    attention_from_qk,
};

use super::device;
use super::qk::Case;

/// Both paths' results on the same values; asserts that both fail with the same error and
/// returns it.
#[track_caller]
fn same_error(c: &Case, q: &[f32], k: &[f32], lse: Option<&[f32]>) -> Error {
    let client = device().expect("device");
    let core = c.core(q, k, lse).expect_err("core accepted");
    let gpu = c.gpu(&client, q, k, lse).expect_err("gpu accepted");
    match (&core, &gpu) {
        (
            Error::LseMismatch {
                layer,
                head,
                row,
                mass,
                tolerance,
            },
            Error::LseMismatch {
                layer: l2,
                head: h2,
                row: r2,
                mass: m2,
                tolerance: t2,
            },
        ) => {
            assert_eq!((layer, head, row, tolerance), (l2, h2, r2, t2), "{c:?}");
            // The core sums the mass in f64, the device in f32.
            assert!(TOLERANCE.close(*m2, *mass), "{c:?}: mass {m2} vs {mass}");
        }
        _ => assert_eq!(core, gpu, "{c:?}"),
    }
    gpu
}

/// NaN in `Q` and in `K`: the lowest layer wins; within a layer `Q` before `K` before the
/// LSE; flat order within a tensor; positions are the tensor's own (head of `K` is a key
/// head).
#[test]
fn non_finite_order_q_k_lse_and_lowest_layer() {
    let Some(_client) = device() else { return };
    let c = Case {
        layers: 3,
        with_lse: true,
        ..Case::new(4, 2, 19, 6)
    };
    let (q0, k0) = (c.q(), c.k());
    let lse0 = c.lse(&q0, &k0);
    let s = c.shape();
    let qi = |l: usize, h: usize, r: usize, j: usize| l * s.q_len() + (h * c.n + r) * c.d + j;
    let ki = |l: usize, h: usize, r: usize, j: usize| l * s.k_len() + (h * c.n + r) * c.d + j;
    // Q in layer 2, K in layer 1: K wins (lower layer).
    let (mut q, mut k, mut lse) = (q0.clone(), k0.clone(), lse0.clone());
    q[qi(2, 0, 0, 0)] = f32::NAN;
    k[ki(1, 1, 7, 3)] = f32::INFINITY;
    k[ki(1, 1, 9, 0)] = f32::NAN;
    // The expected error, pinned (not only the core's): `at(tensor, layer, head, row, col)`.
    let at = |tensor, layer, head, row, col| Error::NonFiniteInput {
        tensor,
        position: Position {
            layer: Some(layer),
            head: Some(head),
            row,
            col,
        },
    };
    let e = same_error(&c, &q, &k, Some(&lse));
    assert_eq!(e, at(QkTensor::Key, 1, 1, 7, 3));
    // Q and K in the same layer: Q wins, at its first flat position.
    q[qi(1, 3, 18, 5)] = f32::NEG_INFINITY;
    q[qi(1, 3, 2, 1)] = f32::NAN;
    assert_eq!(
        same_error(&c, &q, &k, Some(&lse)),
        at(QkTensor::Query, 1, 3, 2, 1)
    );
    // The LSE comes after Q and K of its layer, before a bad row of any layer.
    let (q, k) = (q0.clone(), k0.clone());
    lse[s.lse_len() + 4 * c.n / 2] = f32::NAN;
    lse[2 * s.lse_len() + 3] = 1e6;
    assert_eq!(
        same_error(&c, &q, &k, Some(&lse)),
        at(QkTensor::LogSumExp, 1, 2, 0, 0)
    );
    // Alone, that bad row of layer 2 is an LseMismatch.
    let mut only_row = lse0.clone();
    only_row[2 * s.lse_len() + 3] = 1e6;
    let e = same_error(&c, &q, &k, Some(&only_row));
    assert!(
        matches!(
            e,
            Error::LseMismatch {
                layer: 2,
                head: 0,
                row: 3,
                ..
            }
        ),
        "{e:?}"
    );
}

/// A saved log-sum-exp that does not belong: the first bad row by (layer, head, row), with
/// its mass, on both paths.
#[test]
fn lse_mismatch_first_row() {
    let c = Case {
        layers: 2,
        with_lse: true,
        ..Case::new(4, 2, 23, 8)
    };
    let (q, k) = (c.q(), c.k());
    let lse0 = c.lse(&q, &k);
    let s = c.shape();
    let at = |l: usize, h: usize, r: usize| l * s.lse_len() + h * c.n + r;
    let mut lse = lse0.clone();
    lse[at(1, 0, 2)] += 0.5; // mass e^-0.5
    lse[at(1, 2, 20)] -= 0.5;
    lse[at(0, 3, 22)] -= 0.01; // mass e^0.01: layer 0 wins
    let e = same_error(&c, &q, &k, Some(&lse));
    assert!(
        matches!(e, Error::LseMismatch { layer: 0, head: 3, row: 22, mass, .. } if mass > 1.0),
        "{e:?}"
    );
}

/// The exact boundary of the row check: a row with one key (row 0) and the log-sum-exp
/// equal to its logit has mass `exp(0) = 1` exactly on both paths, so row tolerance 0
/// accepts it; the next f32 above the logit is refused. Exact because the logit is: `Q` and
/// `K` hold small integers (`q·k = 20` in any summation order) and the scale is 1, so the
/// device's and the core's logit are both 20.0, the row's maximum is that logit, and
/// `logit - lse` is `0` or `-ulp(20) = -2^-19` (Sterbenz, exact); both exponentials (the
/// core's `exp_f32`, WGSL's `exp`) return 1 at 0 and `1 - 1.9e-6` (far more than their
/// error of a few f32 ulps from 1) at `-2^-19`.
#[test]
fn lse_mismatch_boundary_is_exact() {
    let Some(client) = device() else { return };
    let c = Case {
        layers: 1,
        with_lse: true,
        scale: Some(1.0),
        row_tolerance: Some(0.0),
        ..Case::new(1, 1, 1, 4)
    };
    let (q, k) = ([2.0f32, 3.0, 0.5, 1.0], [4.0f32, 1.0, 2.0, 8.0]);
    let logit = 20.0f32;
    c.core(&q, &k, Some(&[logit])).unwrap();
    c.gpu(&client, &q, &k, Some(&[logit])).unwrap();
    let above = logit.next_up();
    let e = same_error(&c, &q, &k, Some(&[above]));
    let expected = (-f64::from(above - logit)).exp(); // 1 - 2^-19, to the f32 exp's error
    assert!(
        matches!(e, Error::LseMismatch { layer: 0, head: 0, row: 0, mass, tolerance: 0.0 }
            if mass < 1.0 && (mass - expected).abs() < 1e-7),
        "{e:?}"
    );
    // With a tolerance of 4e-6 (about twice the shortfall of 1.9e-6) the same LSE passes on
    // both paths: the refusal above is the tolerance's, not some other check's.
    let wide = Case {
        row_tolerance: Some(4e-6),
        ..c.clone()
    };
    wide.core(&q, &k, Some(&[above])).unwrap();
    wide.gpu(&client, &q, &k, Some(&[above])).unwrap();
}

/// `q·k` that overflows f32: `LogitsOverflow` at the first (layer, head, row), on both
/// paths; a padding key's overflowing logit is never used.
#[test]
fn logits_overflow_and_padding_key() {
    let Some(client) = device() else { return };
    let c = Case {
        layers: 2,
        ..Case::new(2, 1, 12, 4)
    };
    let (mut q, mut k) = (c.q(), c.k());
    let s = c.shape();
    // Key 3 of layer 1 huge; query rows 3.. of layer 1 head 1 huge: rows >= 3 overflow.
    for j in 0..c.d {
        k[s.k_len() + 3 * c.d + j] = 1e30;
        q[s.q_len() + (c.n + 5) * c.d + j] = 1e30;
    }
    let e = same_error(&c, &q, &k, None);
    assert!(matches!(e, Error::LogitsOverflow { layer: 1, .. }), "{e:?}");
    // The same key masked out: no error on either path, equal Ā.
    let masked = Case {
        pad: Some(4),
        ..c.clone()
    };
    let core = masked.core(&q, &k, None).unwrap();
    let gpu = masked.gpu(&client, &q, &k, None).unwrap();
    for (i, (&g, &r)) in gpu.iter().zip(&core).enumerate() {
        assert!(TOLERANCE.close(f64::from(g), r), "Ā[{i}] {g} vs {r}");
    }
}

/// Shape, configuration, mask and span errors: the core's, in the core's order.
#[test]
fn shape_config_and_span_errors_match_the_core() {
    let Some(client) = device() else { return };
    let base = Case::new(4, 2, 6, 3);
    let (q, k) = (base.q(), base.k());
    let bad_cases = [
        Case::new(4, 3, 6, 3), // heads not grouped
        Case {
            window: Some(0),
            ..base.clone()
        },
        Case {
            scale: Some(-1.0),
            ..base.clone()
        },
        Case {
            softcap: Some(0.0),
            ..base.clone()
        },
    ];
    for c in &bad_cases {
        let (cq, ck) = (c.q(), c.k());
        same_error(c, &cq, &ck, None);
    }
    // Spans outside the sequence are reported after shapes and config.
    let s = base.shape();
    let qb = DeviceBuffer::from_f32(&client, &q[..s.q_len()]);
    let kb = DeviceBuffer::from_f32(&client, &k[..s.k_len()]);
    let layer = QkDeviceLayer {
        index: 0,
        q: &qb,
        k: &kb,
        lse: None,
    };
    let cfg = QkConfig::default();
    let opts = GpuOptions::default();
    let spans = Spans::new(0..1, 5..9);
    let e = attention_from_qk(&client, &[layer], s, &cfg, None, &spans, &opts).unwrap_err();
    assert!(matches!(e, Error::SpanOutOfRange { .. }), "{e:?}");
    let e = attention_from_qk(&client, &[], s, &cfg, None, &spans, &opts).unwrap_err();
    assert_eq!(e, Error::ZeroDimension { what: "layers" });
    let mask = [true; 5];
    let e = attention_from_qk(&client, &[layer], s, &cfg, Some(&mask), &spans, &opts).unwrap_err();
    assert_eq!(
        e,
        Error::ShapeMismatch {
            what: "key mask",
            expected: 6,
            actual: 5
        }
    );
    let short = DeviceBuffer::from_f32(&client, &k[..s.k_len() - 2]);
    let layer = QkDeviceLayer {
        index: 0,
        q: &qb,
        k: &short,
        lse: None,
    };
    let e = attention_from_qk(
        &client,
        &[layer],
        s,
        &cfg,
        None,
        &Spans::new(0..1, 5..6),
        &opts,
    )
    .unwrap_err();
    assert_eq!(
        e,
        Error::ShapeMismatch {
            what: "keys",
            expected: s.k_len(),
            actual: s.k_len() - 2
        }
    );
}

/// Workspace buffers prefilled with garbage, or holding a previous different result, give
/// bit-identical `Ā` (the first layer writes every entry, above the diagonal included).
#[test]
fn dirty_workspace_changes_nothing() {
    let Some(client) = device() else { return };
    let (hq, hkv, d) = (4usize, 2usize, 8usize);
    let lengths = [19usize, 6];
    let cases: Vec<Case> = lengths.iter().map(|&n| Case::new(hq, hkv, n, d)).collect();
    let q: Vec<f32> = cases
        .iter()
        .flat_map(|c| c.q()[..c.shape().q_len()].to_vec())
        .collect();
    let k: Vec<f32> = cases
        .iter()
        .flat_map(|c| c.k()[..c.shape().k_len()].to_vec())
        .collect();
    let (qb, kb) = (
        DeviceBuffer::from_f32(&client, &q),
        DeviceBuffer::from_f32(&client, &k),
    );
    let layer = QkDeviceLayer {
        index: 0,
        q: &qb,
        k: &kb,
        lse: None,
    };
    let cfg = QkConfig::default().with_window(7);
    let run = |ws: &mut QkWorkspace| {
        let seqs = QkSequence::ragged(hq, hkv, d, &lengths);
        let mut acc = QkAccumulator::new_with_workspace(
            &client,
            (hq, hkv, d),
            &cfg,
            seqs,
            &GpuOptions::default(),
            ws,
        )
        .unwrap();
        acc.add_layer(&client, &layer).unwrap();
        acc.add_layer(&client, &QkDeviceLayer { index: 1, ..layer })
            .unwrap();
        acc.finish(&client).unwrap().attention.read_f32(&client)
    };
    let cells: usize = lengths.iter().map(|n| n * n).sum();
    let rows: usize = lengths.iter().map(|n| hq * n).sum();
    let clean = run(&mut QkWorkspace::filled(&client, cells, rows, 0.0));
    for garbage in [f32::NAN, -1e30, 7.0, f32::INFINITY] {
        let got = run(&mut QkWorkspace::filled(&client, cells, rows, garbage));
        let same = got
            .iter()
            .zip(&clean)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "garbage {garbage} changed Ā");
    }
    // Reuse after a different result (no window) left in the same buffers.
    let mut ws = QkWorkspace::new(&client);
    let first = run(&mut ws);
    let seqs = QkSequence::ragged(hq, hkv, d, &lengths);
    let mut acc = QkAccumulator::new_with_workspace(
        &client,
        (hq, hkv, d),
        &QkConfig::default(),
        seqs,
        &GpuOptions::default(),
        &mut ws,
    )
    .unwrap();
    acc.add_layer(&client, &layer).unwrap();
    acc.finish(&client).unwrap();
    let again = run(&mut ws);
    assert!(
        first
            .iter()
            .chain(&again)
            .zip(clean.iter().chain(&clean))
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
    // Above the diagonal and outside the window: exactly 0.
    let n = lengths[0];
    for row in 0..n {
        for key in 0..n {
            if key > row || key + 7 <= row {
                assert_eq!(clean[row * n + key], 0.0, "({row}, {key})");
            }
        }
    }
}

/// One grid dimension holds at most `max_cube_count` cubes (65535 on wgpu): the Q/K
/// launches put the sequences along one axis and the query heads along another, so a batch
/// of more sequences, or more query heads, is an `InvalidConfig` from `new`, not a panic
/// inside the device at `add_layer`; exactly the limit is accepted.
#[test]
fn batch_and_heads_beyond_the_grid_limit_are_errors() {
    let Some(client) = device() else { return };
    let max = client.properties().hardware.max_cube_count;
    let limit = max.1.min(max.2) as usize;
    let opts = GpuOptions::default();
    let cfg = QkConfig::default();
    for (seqs, heads) in [(limit + 1, 1), (1, limit + 1)] {
        let e = QkAccumulator::new(
            &client,
            (heads, 1, 1),
            &cfg,
            QkSequence::ragged(heads, 1, 1, &vec![1; seqs]),
            &opts,
        )
        .unwrap_err();
        assert!(
            matches!(e, Error::InvalidConfig { field: "batch", .. }),
            "{seqs} sequences, {heads} heads: {e:?}"
        );
    }
    // At the limit: accepted (launching 65535 cubes of 256 units thrice takes a minute on
    // lavapipe, so the run itself is left to the N = 4096 test's folded grid).
    for (seqs, heads) in [(limit, 1), (1, limit)] {
        QkAccumulator::new(
            &client,
            (heads, 1, 1),
            &cfg,
            QkSequence::ragged(heads, 1, 1, &vec![1; seqs]),
            &opts,
        )
        .unwrap();
    }
}

/// `Ā` larger than one device allocation may be (cubecl's `max_page_size`: the binding
/// limit of wgpu) is `OutOfMemory` from `new`, as the core reports an `N²` it cannot
/// allocate, not a panic when the kernels first touch the buffer.
#[test]
fn attention_beyond_one_device_allocation_is_out_of_memory() {
    let Some(client) = device() else { return };
    let page = client.properties().memory.max_page_size;
    // The smallest n whose Ā (4 n² bytes) exceeds one page.
    let mut n = ((page / 4) as f64).sqrt() as usize;
    while 4 * (n as u64) * (n as u64) <= page {
        n += 1;
    }
    assert!(
        n <= flowtracer_gpu::MAX_N,
        "this device allows {page} bytes in one buffer: no n <= MAX_N exceeds it"
    );
    let opts = GpuOptions::default();
    let cfg = QkConfig::default();
    let e = QkAccumulator::new(
        &client,
        (1, 1, 1),
        &cfg,
        QkSequence::ragged(1, 1, 1, &[n]),
        &opts,
    )
    .unwrap_err();
    assert_eq!(
        e,
        Error::OutOfMemory {
            what: "the aggregated attention (N x N)",
            bytes: 4 * n * n
        }
    );
    // One token less fits (nothing is allocated until the first layer).
    QkAccumulator::new(
        &client,
        (1, 1, 1),
        &cfg,
        QkSequence::ragged(1, 1, 1, &[n - 1]),
        &opts,
    )
    .unwrap();
}

/// A wrong layout is refused instead of reading a neighbour's rows: `QkSequence::padded`
/// with `start + n` past its slot (`InvalidConfig`, field `start`; exactly `t` accepted),
/// and `QkAccumulator::new` for a `Q` or `K` view whose rows or heads overlap
/// (`InvalidConfig` naming the view: `q` or `k`; a log-sum-exp view, `lse`, at the first
/// layer that passes one), while the head-major and token-major (varlen) layouts pass.
#[test]
fn layouts_that_overlap_are_errors() {
    let (hq, hkv, d, n) = (4, 2, 8, 5);
    let t = 16;
    assert!(QkSequence::padded(2, (hq, hkv, d), t, 3, 13).is_ok());
    for (start, len) in [(4, 13), (0, t + 1), (usize::MAX, 2)] {
        let e = QkSequence::padded(2, (hq, hkv, d), t, start, len).unwrap_err();
        assert!(
            matches!(e, Error::InvalidConfig { field: "start", .. }),
            "start {start}, n {len}: {e:?}"
        );
    }
    let Some(client) = device() else { return };
    let (cfg, opts) = (QkConfig::default(), GpuOptions::default());
    let new = |s: &QkSequence| {
        QkAccumulator::new(&client, (hq, hkv, d), &cfg, vec![s.clone()], &opts).map(|_| ())
    };
    let field = |s: &QkSequence| match new(s) {
        Err(Error::InvalidConfig { field, .. }) => field,
        other => panic!("{s:?}: {other:?}"),
    };
    let head_major = QkSequence::ragged(hq, hkv, d, &[n]).remove(0);
    let token_major = QkSequence::varlen(&[0, n], (hq, hkv, d), hq * n * d, hkv * n * d, None)
        .unwrap()
        .remove(0);
    assert_eq!(new(&head_major), Ok(()));
    assert_eq!(new(&token_major), Ok(()));
    // Rows of Q one value closer than a row is wide.
    let mut s = head_major.clone();
    s.q.row_stride = d - 1;
    assert_eq!(field(&s), "q");
    // Heads of K one row closer than a head's rows.
    let mut s = head_major.clone();
    s.k.head_stride = (n - 1) * d;
    assert_eq!(field(&s), "k");
    // Heads of the log-sum-exp one row closer than n: its view is read (and checked) only
    // for a layer that passes a log-sum-exp (the trainer's sequences leave it default).
    let mut s = head_major.clone();
    s.lse.head_stride = n - 1;
    let acc = QkAccumulator::new(&client, (hq, hkv, d), &cfg, vec![s], &opts).unwrap();
    let (q, k, lse) = (
        DeviceBuffer::from_f32(&client, &vec![0.0; hq * n * d]),
        DeviceBuffer::from_f32(&client, &vec![0.0; hkv * n * d]),
        DeviceBuffer::from_f32(&client, &vec![0.0; hq * n]),
    );
    let mut layer = QkDeviceLayer {
        index: 0,
        q: &q,
        k: &k,
        lse: None,
    };
    assert_eq!(acc.check_layer(&layer), Ok(()));
    layer.lse = Some(&lse);
    assert!(
        matches!(
            acc.check_layer(&layer),
            Err(Error::InvalidConfig { field: "lse", .. })
        ),
        "{:?}",
        acc.check_layer(&layer)
    );
    // Token-major K whose heads overlap inside a row.
    let mut s = token_major.clone();
    s.k.head_stride = d - 1;
    assert_eq!(field(&s), "k");
    // Token-major Q whose rows are closer than the row's H_q heads.
    let mut s = token_major;
    s.q.row_stride = hq * d - 1;
    assert_eq!(field(&s), "q");
}
