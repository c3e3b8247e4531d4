//! `flowtracer causal` on a tiny saved model: its report files, and its bad inputs.

use super::support::{assert_fails, read_json, run, temp_dir};

const SHAPE: [&str; 6] = ["--d-model", "16", "--heads", "2", "--layers", "3"];

/// A tiny warmed-up chained-arithmetic model, saved by `train` as `warmup.bpk`.
fn tiny_model(name: &str) -> std::path::PathBuf {
    let dir = temp_dir(name);
    let out = dir.join("run");
    let mut args = vec![
        "train",
        "--warmup-steps",
        "2",
        "--warmup-batch",
        "4",
        "--steps",
        "0",
        "--eval-size",
        "8",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(SHAPE);
    let res = run(&args);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    out.join("warmup.bpk")
}

#[test]
fn causal_writes_its_table_json_and_chart() {
    let model = tiny_model("causal-ok");
    let out = model.parent().unwrap().join("causal");
    let mut args = vec![
        "causal",
        "--model",
        model.to_str().unwrap(),
        "--problems",
        "6",
        "--random-draws",
        "2",
        "--methods",
        "flowtracer,random,bottom_flow",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(SHAPE);
    let res = run(&args);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let json = read_json(&out.join("causal.json"));
    let r = &json["result"];
    assert_eq!(r["problems"], 6);
    let tested = r["tested"].as_u64().unwrap();
    let rows = r["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|x| x["method"].as_str().unwrap()).collect();
    assert_eq!(names, ["flowtracer", "random", "bottom_flow"]);
    for row in rows {
        let draws = row["draws"].as_u64().unwrap();
        assert_eq!(draws, if row["method"] == "random" { 2 } else { 1 });
        let (trials, unscored) = (
            row["trials"].as_u64().unwrap(),
            row["unscored"].as_u64().unwrap(),
        );
        assert_eq!(trials + unscored * draws, tested * draws, "{row}");
    }
    let md = std::fs::read_to_string(out.join("causal.md")).unwrap();
    assert!(
        md.contains("| method | trials | masked tokens | answer changed % [95% CI] |"),
        "{md}"
    );
    assert!(md.contains("| bottom_flow |"), "{md}");
    let svg = std::fs::read_to_string(out.join("causal.svg")).unwrap();
    assert!(svg.contains("answer changed") && svg.contains("bottom_flow"));
}

#[test]
fn causal_bad_inputs_are_refused() {
    let model = tiny_model("causal-bad");
    let m = model.to_str().unwrap();
    let with_shape = |extra: &[&'static str]| {
        let mut a: Vec<&str> = vec!["causal", "--model", m, "--quiet"];
        a.extend(SHAPE);
        a.extend(extra);
        a
    };
    assert_fails(
        &with_shape(&["--problems", "0"]),
        &["--problems must be in 1..="],
    );
    assert_fails(&with_shape(&["--fraction", "0"]), &["--fraction"]);
    assert_fails(&with_shape(&["--random-draws", "0"]), &["--random-draws"]);
    assert_fails(
        &with_shape(&["--methods", "flowtracer,uniform"]),
        &["not uniform"],
    );
    assert_fails(
        &["causal", "--model", "/nonexistent/model.bpk", "--quiet"],
        &["/nonexistent/model.bpk"],
    );
    // Another shape, or another task's vocabulary, than the file's.
    assert_fails(
        &["causal", "--model", m, "--quiet"],
        &["warmup.bpk", "does not fit", "31 tokens, width 64"],
    );
    assert_fails(
        &with_shape(&["--task", "countdown"]),
        &["warmup.bpk", "does not fit", "24 tokens, width 16"],
    );
}
