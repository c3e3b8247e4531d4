//! `flowtracer score` on generated files, against [method §12](docs/method.md#s12)'s numbers and flowtracer-core.

use flowtracer_core::aggregate::{LayerSelection, Layout, aggregate};
use flowtracer_core::backbone::{Backbone, BackboneConfig, backbone};
use flowtracer_core::shaping::{ShapingConfig, token_weights};
use flowtracer_core::{Sequence, Spans, Trace, trace};
use serde_json::Value;

use super::support::{
    Dtype, WORKED_EXAMPLE, arg, assert_close, assert_dir_holds, random_attention, read_json,
    run_json, temp_dir, usizes, write_npy, write_safetensors,
};

/// Tolerance for the CLI against the core on the same f64 input: the same code runs, so
/// only JSON's shortest round-trip printing separates them (exact in practice).
const SAME: f64 = 1e-12;

/// What flowtracer-core computes for `abar` with the default configuration.
fn core_scores(
    abar: &[f64],
    n: usize,
    q: core::ops::Range<usize>,
    a: core::ops::Range<usize>,
    r: core::ops::Range<usize>,
    shaping: &ShapingConfig,
    bb: &BackboneConfig,
) -> (Trace<f64>, Vec<f64>, Backbone) {
    let seq = Sequence::dense(abar, Spans::new(q, a).with_response(r.clone())).unwrap();
    assert_eq!(seq.n(), n);
    let t = trace(&seq).unwrap();
    let w = token_weights(t.throughput(), &r.into(), shaping).unwrap();
    let b = backbone(&seq, &t, bb).unwrap();
    (t, w, b)
}

/// Asserts the JSON document equals the core's numbers.
fn assert_matches_core(json: &Value, t: &Trace<f64>, w: &[f64], b: &Backbone, tol: f64) {
    assert_eq!(json["n"].as_u64().unwrap() as usize, t.n());
    assert_close("reach", &json["reach"], t.reach(), tol);
    assert_close("flow", &json["flow"], t.flow(), tol);
    assert_close("throughput", &json["throughput"], t.throughput(), tol);
    assert_close("weights", &json["weights"], w, tol);
    let bb = &json["backbone"];
    assert_eq!(usizes(&bb["path"]), b.path);
    assert_eq!(usizes(&bb["hubs"]), b.hubs);
    assert_eq!(usizes(&bb["checkpoints"]), b.checkpoints);
    let edges = bb["edges"].as_array().unwrap();
    assert_eq!(edges.len(), b.edges.len());
    for (e, want) in edges.iter().zip(&b.edges) {
        let e = e.as_array().unwrap();
        assert_eq!(e.len(), 3, "edges are [i, k, phi]");
        assert_eq!(e[0].as_u64().unwrap() as usize, want.from);
        assert_eq!(e[1].as_u64().unwrap() as usize, want.to);
        assert!((e[2].as_f64().unwrap() - want.flow).abs() <= tol);
    }
    assert!((bb["path_probability"].as_f64().unwrap() - b.path_probability).abs() <= tol);
    assert!((json["metrics"]["answer_mass"].as_f64().unwrap() - t.answer_mass()).abs() <= tol);
}

#[test]
fn worked_example_matches_the_spec_and_the_core() {
    let dir = temp_dir("worked");
    let file = dir.join("example.npy");
    write_npy(&file, &[5, 5], &WORKED_EXAMPLE, Dtype::F64);
    let json = run_json(&[
        "score",
        "--attention",
        arg(&file),
        "--question",
        "0..2",
        "--answer",
        "4..5",
        "--response",
        "2..5",
    ]);
    // [Method §12](docs/method.md#s12), exact values.
    let spec_f = [
        0.5,
        734.0 / 1033.0,
        20895.0 / 29957.0,
        6791.0 / 89871.0,
        1.0,
    ];
    assert_close("flow", &json["flow"], &spec_f, 1e-12);
    assert_close(
        "reach",
        &json["reach"],
        &[0.5165, 0.435, 0.63, 0.1, 1.0],
        1e-12,
    );
    let tau: Vec<f64> = spec_f.iter().map(|f| 2.0 * f).collect();
    assert_close("throughput", &json["throughput"], &tau, 1e-12);
    assert_close("weights", &json["weights"], &[1.0, 1.0, 1.5, 1.0, 1.5], 0.0);
    assert_eq!(usizes(&json["backbone"]["path"]), [1, 2, 4]);
    assert!((json["backbone"]["path_probability"].as_f64().unwrap() - 10.0 / 29.0).abs() < 1e-12);
    let edges: Vec<(usize, usize, f64)> = json["backbone"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e[0].as_u64().unwrap() as usize,
                e[1].as_u64().unwrap() as usize,
                e[2].as_f64().unwrap(),
            )
        })
        .collect();
    let want = [
        (2, 4, 0.6643),
        (1, 2, 0.5145),
        (0, 1, 0.2106),
        (0, 2, 0.1830),
        (1, 4, 0.1633),
    ];
    assert_eq!(edges.len(), want.len());
    for ((i, k, phi), (wi, wk, wphi)) in edges.iter().zip(want) {
        assert_eq!((*i, *k), (wi, wk));
        assert!((phi - wphi).abs() < 5e-5, "phi({i}->{k}) = {phi}");
    }
    assert!((json["backbone"]["total_edge_flow"].as_f64().unwrap() - 1.9836).abs() < 5e-5);
    assert_eq!(usizes(&json["backbone"]["hubs"]), [2, 4]);
    assert_eq!(json["layers"], Value::Null);
    assert_eq!(usizes(&json["question"]), [0, 2]);
    assert_eq!(usizes(&json["response"]), [2, 5]);
    assert_eq!(json["metrics"]["num_sources"], 2);
    assert_eq!(json["metrics"]["num_live"], 5);

    let (t, w, b) = core_scores(
        &WORKED_EXAMPLE,
        5,
        0..2,
        4..5,
        2..5,
        &ShapingConfig::default(),
        &BackboneConfig::default(),
    );
    assert_matches_core(&json, &t, &w, &b, SAME);
}

#[test]
fn response_defaults_to_question_end_through_n() {
    let dir = temp_dir("default-response");
    let file = dir.join("example.npy");
    write_npy(&file, &[5, 5], &WORKED_EXAMPLE, Dtype::F64);
    let json = run_json(&[
        "score",
        "--attention",
        arg(&file),
        "--question",
        "0..2",
        "--answer",
        "4..5",
    ]);
    assert_eq!(usizes(&json["response"]), [2, 5]);
    assert_close("weights", &json["weights"], &[1.0, 1.0, 1.5, 1.0, 1.5], 0.0);
}

#[test]
fn four_d_f32_npy_averages_the_selected_layers_like_the_core() {
    let (l, h, n) = (6, 3, 12);
    let values = random_attention(l, h, n, 7);
    // The CLI computes in f64 from the f32 values it reads.
    let widened: Vec<f64> = values.iter().map(|&v| f64::from(v as f32)).collect();
    let dir = temp_dir("4d");
    let file = dir.join("attn.npy");
    write_npy(&file, &[l, h, n, n], &values, Dtype::F32);
    for (spec, selection, layers) in [
        (None, LayerSelection::Middle, vec![2, 3]),
        (Some("middle"), LayerSelection::Middle, vec![2, 3]),
        (Some("all"), LayerSelection::All, (0..6).collect()),
        (Some("1..4"), LayerSelection::Range(1..4), vec![1, 2, 3]),
        (
            Some("5,0,3"),
            LayerSelection::List(vec![5, 0, 3]),
            vec![5, 0, 3],
        ),
    ] {
        let mut args = vec![
            "score",
            "--attention",
            arg(&file),
            "--question",
            "0..4",
            "--answer",
            "10..12",
        ];
        if let Some(spec) = spec {
            args.extend(["--layers", spec]);
        }
        let json = run_json(&args);
        assert_eq!(usizes(&json["layers"]), layers, "{spec:?}");
        let abar = aggregate(&widened, l, h, n, Layout::Dense, &selection).unwrap();
        let (t, w, b) = core_scores(
            &abar,
            n,
            0..4,
            10..12,
            4..12,
            &ShapingConfig::default(),
            &BackboneConfig::default(),
        );
        assert_matches_core(&json, &t, &w, &b, SAME);
    }
}

#[test]
fn heads_npy_is_the_head_mean() {
    let (h, n) = (4, 9);
    let values = random_attention(1, h, n, 11);
    let dir = temp_dir("3d");
    let file = dir.join("attn.npy");
    write_npy(&file, &[h, n, n], &values, Dtype::F64);
    let json = run_json(&[
        "score",
        "--attention",
        arg(&file),
        "--question",
        "1..3",
        "--answer",
        "7..8",
        "--response",
        "3..9",
    ]);
    assert_eq!(json["layers"], Value::Null);
    let abar = aggregate(&values, 1, h, n, Layout::Dense, &LayerSelection::All).unwrap();
    let (t, w, b) = core_scores(
        &abar,
        n,
        1..3,
        7..8,
        3..9,
        &ShapingConfig::default(),
        &BackboneConfig::default(),
    );
    assert_matches_core(&json, &t, &w, &b, SAME);
}

#[test]
fn safetensors_single_and_per_layer_tensors_agree_with_npy() {
    let (l, h, n) = (5, 2, 10);
    let values = random_attention(l, h, n, 3);
    let layer = |i: usize| &values[i * h * n * n..(i + 1) * h * n * n];
    let dir = temp_dir("safetensors");
    let npy = dir.join("attn.npy");
    write_npy(&npy, &[l, h, n, n], &values, Dtype::F64);
    let spans = ["--question", "0..3", "--answer", "8..10", "--layers", "all"];
    let mut reference_args = vec!["score", "--attention", arg(&npy)];
    reference_args.extend(spans);
    let reference = run_json(&reference_args);

    // One [L,H,N,N] tensor among others, chosen by --tensor.
    let single = dir.join("single.safetensors");
    let ids = [1.0, 2.0];
    write_safetensors(
        &single,
        &[
            ("input_ids", vec![2], &ids[..]),
            ("attentions", vec![l, h, n, n], &values[..]),
        ],
        Dtype::F64,
    );
    let mut args = vec![
        "score",
        "--attention",
        arg(&single),
        "--tensor",
        "attentions",
    ];
    args.extend(spans);
    assert_eq!(run_json(&args), reference);

    // Per-layer tensors stored out of order; ordered by the number in the name (10 > 2).
    let per_layer = dir.join("layers.safetensors");
    let names = [
        "model.layers.0.attn",
        "model.layers.2.attn",
        "model.layers.3.attn",
        "model.layers.10.attn",
        "model.layers.11.attn",
    ];
    let shape = vec![1, h, n, n];
    write_safetensors(
        &per_layer,
        &[
            (names[3], shape.clone(), layer(3)),
            (names[0], shape.clone(), layer(0)),
            (names[4], shape.clone(), layer(4)),
            (names[2], shape.clone(), layer(2)),
            (names[1], shape.clone(), layer(1)),
        ],
        Dtype::F64,
    );
    let mut args = vec!["score", "--attention", arg(&per_layer)];
    args.extend(spans);
    assert_eq!(run_json(&args), reference);

    // Repeated --tensor gives the layer order explicitly; the default is the middle band.
    let mut args = vec!["score", "--attention", arg(&per_layer)];
    for name in names {
        args.extend(["--tensor", name]);
    }
    args.extend(&spans[..4]);
    let json = run_json(&args);
    assert_eq!(usizes(&json["layers"]), [1, 2]);
    let abar = aggregate(&values, l, h, n, Layout::Dense, &LayerSelection::Middle).unwrap();
    let (t, w, b) = core_scores(
        &abar,
        n,
        0..3,
        8..10,
        3..10,
        &ShapingConfig::default(),
        &BackboneConfig::default(),
    );
    assert_matches_core(&json, &t, &w, &b, SAME);

    // A single-tensor f32 file of one [N, N] matrix needs no --tensor.
    let matrix = dir.join("matrix.safetensors");
    write_safetensors(
        &matrix,
        &[("a", vec![5, 5], &WORKED_EXAMPLE[..])],
        Dtype::F32,
    );
    let json = run_json(&[
        "score",
        "--attention",
        arg(&matrix),
        "--question",
        "0..2",
        "--answer",
        "4..5",
    ]);
    let widened: Vec<f64> = WORKED_EXAMPLE
        .iter()
        .map(|&v| f64::from(v as f32))
        .collect();
    let (t, w, b) = core_scores(
        &widened,
        5,
        0..2,
        4..5,
        2..5,
        &ShapingConfig::default(),
        &BackboneConfig::default(),
    );
    assert_matches_core(&json, &t, &w, &b, SAME);
}

#[test]
fn out_is_written_atomically_and_equals_stdout() {
    let dir = temp_dir("out");
    let file = dir.join("example.npy");
    write_npy(&file, &[5, 5], &WORKED_EXAMPLE, Dtype::F64);
    let out = dir.join("scores.json");
    let args = [
        "score",
        "--attention",
        arg(&file),
        "--question",
        "0..2",
        "--answer",
        "4..5",
    ];
    let stdout = run_json(&args);
    let mut with_out = args.to_vec();
    with_out.extend(["--out", arg(&out)]);
    let result = super::support::run(&with_out);
    assert!(result.status.success());
    assert!(result.stdout.is_empty(), "nothing on stdout with --out");
    let written = read_json(&out);
    assert_eq!(written, stdout);
    assert_dir_holds(&dir, &["example.npy", "scores.json"]);
    // Overwriting an existing file works too.
    assert!(super::support::run(&with_out).status.success());
    assert_dir_holds(&dir, &["example.npy", "scores.json"]);
}

#[test]
fn config_file_sets_the_options() {
    let (l, h, n) = (3, 2, 20);
    let values = random_attention(l, h, n, 5);
    let dir = temp_dir("config");
    let file = dir.join("attn.npy");
    write_npy(&file, &[l, h, n, n], &values, Dtype::F64);
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        r#"{"rho": 0.2, "gamma_flow": 3.0, "coverage": 0.5, "checkpoint_threshold": 0.3}"#,
    )
    .unwrap();
    let json = run_json(&[
        "score",
        "--attention",
        arg(&file),
        "--question",
        "0..5",
        "--answer",
        "18..20",
        "--response",
        "5..20",
        "--config",
        arg(&config),
    ]);
    let abar = aggregate(&values, l, h, n, Layout::Dense, &LayerSelection::Middle).unwrap();
    let shaping = ShapingConfig::default().with_rho(0.2).with_gamma_flow(3.0);
    let bb = BackboneConfig::default()
        .with_rho(0.2)
        .with_coverage(0.5)
        .with_checkpoint_threshold(0.3);
    let (t, w, b) = core_scores(&abar, n, 0..5, 18..20, 5..20, &shaping, &bb);
    assert_matches_core(&json, &t, &w, &b, SAME);
    // ceil(0.2 * 15) = 3 tokens get weight 3.
    let weights = json["weights"].as_array().unwrap();
    assert_eq!(
        weights.iter().filter(|w| w.as_f64() == Some(3.0)).count(),
        3
    );
}
