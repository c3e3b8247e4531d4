//! `flowtracer score --qk`: end to end against `Ā` from the f64 oracle
//! (`reference::attention_from_qk`, not the stage under test) scored through the existing
//! `--attention` path; one N = 3 case by hand; bad files.

use std::path::Path;

use flowtracer_core::reference::attention_from_qk;

use super::support::*;

/// f32 arithmetic against the f64 oracle: `|x - y| <= ABS + REL |y|` (the core's f32
/// tolerance).
const ABS: f64 = 1e-5;
const REL: f64 = 1e-4;

/// Writes a safetensors file of `(name, dtype, shape, f64 values)` with `__metadata__`.
fn write_qk(path: &Path, meta: &[(&str, &str)], tensors: &[(String, &str, Vec<usize>, Vec<f64>)]) {
    let mut header = String::from("{\"__metadata__\":{\"format\":\"pt\"");
    for (k, v) in meta {
        header.push_str(&format!(",\"{k}\":\"{v}\""));
    }
    header.push('}');
    let mut buffer = Vec::new();
    for (name, dtype, shape, values) in tensors {
        let bytes: Vec<u8> = match *dtype {
            "F32" => values
                .iter()
                .flat_map(|&v| (v as f32).to_le_bytes())
                .collect(),
            "F64" => values.iter().flat_map(|&v| v.to_le_bytes()).collect(),
            "BF16" => values
                .iter()
                .flat_map(|&v| (((v as f32).to_bits() >> 16) as u16).to_le_bytes())
                .collect(),
            "F16" => values
                .iter()
                .flat_map(|&v| f16_bits(v as f32).to_le_bytes())
                .collect(),
            _ => unreachable!(),
        };
        let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
        header.push_str(&format!(
            ",\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            dims.join(","),
            buffer.len(),
            buffer.len() + bytes.len()
        ));
        buffer.extend_from_slice(&bytes);
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&buffer);
    std::fs::write(path, out).unwrap();
}

/// IEEE half bits of an f32 that half represents exactly (normal or zero).
fn f16_bits(x: f32) -> u16 {
    if x == 0.0 {
        return if x.is_sign_negative() { 0x8000 } else { 0 };
    }
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    assert!(
        (1..31).contains(&exp) && b & 0x1fff == 0,
        "{x} is not exact in f16"
    );
    sign | ((exp as u16) << 10) | ((b >> 13) & 0x3ff) as u16
}

/// Values `m / 16`, `|m| <= 24`: exact in f16, bf16 and f32.
fn values(len: usize, seed: u64) -> Vec<f64> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 33) % 49) as f64 / 16.0 - 1.5
        })
        .collect()
}

/// The log-sum-exp of every (head, row) of one layer, f64, causal with a window.
#[allow(clippy::too_many_arguments)]
fn lse(
    q: &[f64],
    k: &[f64],
    hq: usize,
    hkv: usize,
    n: usize,
    d: usize,
    scale: f64,
    w: usize,
) -> Vec<f64> {
    let mut out = Vec::new();
    for h in 0..hq {
        let g = h / (hq / hkv);
        for row in 0..n {
            let s: Vec<f64> = (row.saturating_sub(w - 1)..=row)
                .map(|i| {
                    (0..d)
                        .map(|j| q[(h * n + row) * d + j] * k[(g * n + i) * d + j])
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            out.push(m + s.iter().map(|x| (x - m).exp()).sum::<f64>().ln());
        }
    }
    out
}

fn assert_scores_close(got: &serde_json::Value, want: &serde_json::Value) {
    for field in ["reach", "flow", "throughput", "weights"] {
        let (g, w) = (
            got[field].as_array().unwrap(),
            want[field].as_array().unwrap(),
        );
        assert_eq!(g.len(), w.len(), "{field}");
        for (i, (x, y)) in g.iter().zip(w).enumerate() {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(
                (x - y).abs() <= ABS + REL * y.abs(),
                "{field}[{i}]: {x} vs {y}"
            );
        }
    }
    for field in ["n", "question", "answer", "response"] {
        assert_eq!(got[field], want[field], "{field}");
    }
    assert_eq!(got["backbone"]["hubs"], want["backbone"]["hubs"]);
    assert_eq!(got["backbone"]["path"], want["backbone"]["path"]);
}

#[test]
fn qk_scores_like_the_oracle_attention_through_the_dense_path() {
    let (hq, hkv, n, d, w) = (4, 2, 12, 8, 9);
    let scale = 0.3;
    let dir = temp_dir("qk");
    // A 6-layer model; the file holds layers 1, 2, 3; the middle band is 2..4.
    let layer_q: Vec<Vec<f64>> = (0..4).map(|l| values(hq * n * d, 10 + l)).collect();
    let layer_k: Vec<Vec<f64>> = (0..4).map(|l| values(hkv * n * d, 20 + l)).collect();
    let spans = ["--question", "0..3", "--answer", "10..12"];
    for (dtype, with_lse) in [
        ("F32", true),
        ("F32", false),
        ("F16", false),
        ("BF16", true),
        ("F64", false),
    ] {
        let mut tensors = Vec::new();
        for l in 1..4 {
            tensors.push((format!("q.{l}"), dtype, vec![hq, n, d], layer_q[l].clone()));
            tensors.push((
                format!("k.{l}"),
                dtype,
                vec![1, hkv, n, d],
                layer_k[l].clone(),
            ));
            if with_lse {
                let x = lse(&layer_q[l], &layer_k[l], hq, hkv, n, d, scale, w);
                tensors.push((format!("lse.{l}"), "F32", vec![hq, n], x));
            }
        }
        let file = dir.join(format!("qk-{dtype}-{with_lse}.safetensors"));
        write_qk(
            &file,
            &[("num_layers", "6"), ("scale", "0.3"), ("window", "9")],
            &tensors,
        );
        // The oracle on the same values (exact in every dtype used), layers 2 and 3.
        let q: Vec<f64> = [&layer_q[2][..], &layer_q[3][..]].concat();
        let k: Vec<f64> = [&layer_k[2][..], &layer_k[3][..]].concat();
        let l32: Vec<f64> = [2, 3]
            .iter()
            .flat_map(|&l| lse(&layer_q[l], &layer_k[l], hq, hkv, n, d, scale, w))
            .map(|x| f64::from(x as f32))
            .collect();
        let a = attention_from_qk(
            &q,
            &k,
            with_lse.then_some(&l32[..]),
            (2, hq, hkv),
            n,
            d,
            scale,
            Some(w),
            None,
        );
        let npy = dir.join(format!("abar-{dtype}-{with_lse}.npy"));
        write_npy(&npy, &[n, n], &a, Dtype::F64);
        let mut args = vec!["score", "--attention", arg(&npy)];
        args.extend(spans);
        let want = run_json(&args);
        let mut args = vec!["score", "--qk", arg(&file)];
        args.extend(spans);
        let got = run_json(&args);
        assert_scores_close(&got, &want);
        assert_eq!(got["layers"], serde_json::json!([2, 3]), "{dtype}");
        // `--layers` by model layer number.
        let mut args = vec!["score", "--qk", arg(&file), "--layers", "1,3"];
        args.extend(spans);
        assert_eq!(run_json(&args)["layers"], serde_json::json!([1, 3]));
    }
}

/// One head, d = 1, scale 1, N = 3: keys `0, ln 2, ln 3` give `Ā` rows `[1]`,
/// `[1/3, 2/3]`, `[1/6, 2/6, 3/6]`; with `Q = {0}`, `A = {2}`: `h = [5/18, 1/3, 1]`,
/// `f = [1, 2/5, 1]`.
#[test]
fn qk_n3_by_hand() {
    let dir = temp_dir("qk-n3");
    let file = dir.join("n3.safetensors");
    let tensors = vec![
        (String::from("q.0"), "F64", vec![1, 3, 1], vec![1.0; 3]),
        (
            String::from("k.0"),
            "F64",
            vec![1, 3, 1],
            vec![0.0, 2f64.ln(), 3f64.ln()],
        ),
    ];
    write_qk(&file, &[("scale", "1")], &tensors);
    let got = run_json(&[
        "score",
        "--qk",
        arg(&file),
        "--question",
        "0..1",
        "--answer",
        "2..3",
    ]);
    let close = |field: &str, want: [f64; 3]| {
        for (x, y) in got[field].as_array().unwrap().iter().zip(want) {
            assert!(
                (x.as_f64().unwrap() - y).abs() < 1e-12,
                "{field}: {x} vs {y}"
            );
        }
    };
    close("reach", [5.0 / 18.0, 1.0 / 3.0, 1.0]);
    close("flow", [1.0, 0.4, 1.0]);
    assert_eq!(got["layers"], serde_json::json!([0]));
}

#[test]
fn qk_bad_files() {
    let dir = temp_dir("qk-bad");
    let (hq, hkv, n, d) = (2, 1, 4, 2);
    let q = values(hq * n * d, 1);
    let k = values(hkv * n * d, 2);
    let file = dir.join("qk.safetensors");
    let spans = ["--question", "0..1", "--answer", "3..4"];
    let with = |extra: &[&str], path: &Path| {
        let mut a = vec!["score", "--qk", arg(path)];
        a.extend(spans);
        a.extend(extra);
        a.into_iter().map(str::to_owned).collect::<Vec<String>>()
    };
    let fails = |args: Vec<String>, needles: &[&str]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_fails(&args, needles);
    };
    write_qk(
        &file,
        &[("num_layers", "4")],
        &[
            (String::from("q.2"), "F32", vec![hq, n, d], q.clone()),
            (String::from("k.2"), "F32", vec![hkv, n, d], k.clone()),
        ],
    );
    // The middle band of 4 layers is 1..2: layer 1 is not in the file.
    fails(with(&[], &file), &["layer 1", "no q.1"]);
    assert_eq!(
        run_json(
            &with(&["--layers", "2"], &file)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        )["layers"],
        serde_json::json!([2])
    );
    fails(with(&["--layers", "4"], &file), &["layer out of range"]);
    // Spans are checked before the data.
    let mut args = vec![
        "score",
        "--qk",
        arg(&file),
        "--question",
        "0..1",
        "--answer",
        "4..5",
    ];
    args.extend(["--layers", "2"]);
    assert_fails(&args, &["answer span 4..5 is out of range"]);
    // An LSE that does not belong (one row shifted by 1).
    let mut l = lse(&q, &k, hq, hkv, n, d, 1.0 / (d as f64).sqrt(), n);
    l[5] += 1.0;
    let bad_lse = dir.join("lse.safetensors");
    write_qk(
        &bad_lse,
        &[],
        &[
            (String::from("q.0"), "F32", vec![hq, n, d], q.clone()),
            (String::from("k.0"), "F32", vec![hkv, n, d], k.clone()),
            (String::from("lse.0"), "F32", vec![hq, n], l),
        ],
    );
    fails(
        with(&[], &bad_lse),
        &["layer 0, head 1, row 1", "does not belong"],
    );
    // H_q not a multiple of H_kv; unsupported metadata; a NaN.
    let odd = dir.join("odd.safetensors");
    write_qk(
        &odd,
        &[],
        &[
            (
                String::from("q.0"),
                "F32",
                vec![3, n, d],
                values(3 * n * d, 3),
            ),
            (
                String::from("k.0"),
                "F32",
                vec![2, n, d],
                values(2 * n * d, 4),
            ),
        ],
    );
    fails(
        with(&[], &odd),
        &["3 query heads do not split evenly over 2"],
    );
    let window0 = dir.join("w0.safetensors");
    write_qk(
        &window0,
        &[("window", "0")],
        &[
            (String::from("q.0"), "F32", vec![hq, n, d], q.clone()),
            (String::from("k.0"), "F32", vec![hkv, n, d], k.clone()),
        ],
    );
    fails(with(&[], &window0), &["invalid window"]);
    let mut qn = q.clone();
    qn[5] = f64::NAN;
    let nan = dir.join("nan.safetensors");
    write_qk(
        &nan,
        &[],
        &[
            (String::from("q.0"), "F32", vec![hq, n, d], qn),
            (String::from("k.0"), "F32", vec![hkv, n, d], k.clone()),
        ],
    );
    fails(
        with(&[], &nan),
        &["non-finite query value at layer 0, head 0, row 2, column 1"],
    );
}

/// `flowtracer explain --qk`: the same input, rendered; the token-count check names the
/// `--qk` file.
#[test]
fn qk_explain() {
    let dir = temp_dir("qk-explain");
    let file = dir.join("n3.safetensors");
    let tensors = vec![
        (String::from("q.0"), "F32", vec![1, 3, 1], vec![1.0; 3]),
        (
            String::from("k.0"),
            "F32",
            vec![1, 3, 1],
            vec![0.0, 0.5, 1.0],
        ),
    ];
    write_qk(&file, &[], &tensors);
    let tokens = dir.join("tokens.json");
    std::fs::write(&tokens, r#"["a", "b", "c"]"#).unwrap();
    let html = dir.join("out.html");
    let out = run(&[
        "explain",
        "--qk",
        arg(&file),
        "--tokens",
        arg(&tokens),
        "--question",
        "0..1",
        "--answer",
        "2..3",
        "--out",
        arg(&html),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read_to_string(&html).unwrap().contains("<html"));
    std::fs::write(&tokens, r#"["a", "b"]"#).unwrap();
    assert_fails(
        &[
            "explain",
            "--qk",
            arg(&file),
            "--tokens",
            arg(&tokens),
            "--question",
            "0..1",
            "--answer",
            "2..3",
            "--out",
            arg(&dir.join("out2.html")),
        ],
        &["n3.safetensors", "3 tokens"],
    );
}

/// `__metadata__` `softcap` (Gemma 2): scored like the capped oracle's `Ā` through
/// `--attention`.
#[test]
fn qk_softcap_metadata() {
    let (hq, hkv, n, d) = (2, 1, 8, 4);
    let dir = temp_dir("qk-softcap");
    let (q, k) = (values(hq * n * d, 5), values(hkv * n * d, 6));
    let file = dir.join("capped.safetensors");
    write_qk(
        &file,
        &[("softcap", "1.5")],
        &[
            (String::from("q.0"), "F32", vec![hq, n, d], q.clone()),
            (String::from("k.0"), "F32", vec![hkv, n, d], k.clone()),
        ],
    );
    let a = flowtracer_core::reference::attention_from_qk_capped(
        &q,
        &k,
        None,
        (1, hq, hkv),
        n,
        d,
        (1.0 / (d as f64).sqrt(), Some(1.5)),
        None,
        None,
    );
    let npy = dir.join("abar.npy");
    write_npy(&npy, &[n, n], &a, Dtype::F64);
    let spans = ["--question", "0..2", "--answer", "6..8"];
    let mut args = vec!["score", "--attention", arg(&npy)];
    args.extend(spans);
    let want = run_json(&args);
    let mut args = vec!["score", "--qk", arg(&file)];
    args.extend(spans);
    assert_scores_close(&run_json(&args), &want);
}
