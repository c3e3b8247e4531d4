//! Issue 14 items 2 and 11: knobs on `--resume`, defined per knob. Shape knobs (and the
//! other knobs fixed for a run) are an error that leaves the checkpoint as it was; knobs that
//! may change are applied and said on stderr; schedule knobs such as `--steps` are used.

use super::support::{arg, assert_exit, assert_ok, flowtracer, listing, stderr, temp_dir, train};

fn state(dir: &std::path::Path, step: usize) -> serde_json::Value {
    let path = dir.join(format!("checkpoint-{step:06}/state.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Other shape knobs on resume: exit 2 naming the knob; nothing rotated or rewritten.
#[test]
fn resume_with_other_shape_knobs_is_an_error() {
    let dir = temp_dir("knobs-shape");
    assert_ok(&train(&dir, 2, &[]));
    let before = listing(&dir);
    let model = std::fs::read(dir.join("checkpoint-000002/model.bpk")).unwrap();
    for (flag, value, theirs) in [
        ("--d-model", "32", "16"),
        ("--layers", "3", "2"),
        ("--heads", "4", "2"),
        ("--difficulty", "2", "1"),
        ("--seed", "7", "0"),
        ("--credit", "uniform", "flowtracer"),
        ("--beta", "0.1", "0"),
        ("--num-generations", "4", "2"),
        ("--eval-size", "3", "2"),
        ("--warmup-steps", "5", "2"),
    ] {
        let mut extra = vec!["--resume", flag, value];
        if flag == "--difficulty" {
            // Level 2's canonical response (28 tokens) needs a longer completion than 24.
            extra.extend(["--max-completion-length", "40"]);
        }
        let out = train(&dir, 3, &extra);
        assert_exit(&out, 2, &[flag, value, theirs, "checkpoint-000002"]);
        assert_eq!(listing(&dir), before, "{flag}");
    }
    assert_eq!(
        std::fs::read(dir.join("checkpoint-000002/model.bpk")).unwrap(),
        model
    );
}

/// Resuming without the shape knobs (so the command line's defaults differ from the
/// checkpoint) keeps the checkpoint's shape: the next checkpoint loads again.
#[test]
fn resume_without_shape_knobs_keeps_the_checkpoint_shape() {
    let dir = temp_dir("knobs-default-shape");
    assert_ok(&train(&dir, 1, &[]));
    let out = arg(&dir);
    let plain = [
        "train",
        "--out",
        out,
        "--resume",
        "--quiet",
        "--checkpoint-every",
        "1",
    ];
    for steps in ["2", "3"] {
        let mut args = plain.to_vec();
        args.extend(["--steps", steps]);
        assert_ok(&flowtracer(&args, &[]));
    }
    let s = state(&dir, 3);
    assert_eq!(s["model"]["d_model"], 16);
    assert_eq!(s["model"]["n_layers"], 2);
    assert_eq!(s["model"]["n_heads"], 2);
    assert_eq!(s["config"]["num_generations"], 2);
}

/// Knobs that may change are applied from the next step and said on stderr; `--steps`
/// extends the run.
#[test]
fn resume_applies_and_logs_the_knobs_that_may_change() {
    let dir = temp_dir("knobs-applied");
    assert_ok(&train(&dir, 1, &[]));
    let out = train(
        &dir,
        2,
        &[
            "--resume",
            "--lr",
            "0.002",
            "--temperature",
            "0.5",
            "--rho",
            "0.25",
        ],
    );
    assert_ok(&out);
    let err = stderr(&out);
    for needle in [
        "--lr 0.002",
        "--temperature 0.5",
        "--rho 0.25",
        "from step 2",
    ] {
        assert!(err.contains(needle), "{needle:?} in {err}");
    }
    let s = state(&dir, 2);
    assert_eq!(s["config"]["lr"], 0.002);
    assert_eq!(s["config"]["temperature"], 0.5);
    assert_eq!(s["config"]["credit"]["rho"], 0.25);
    // The same values again: nothing to say.
    let out = train(
        &dir,
        3,
        &[
            "--resume",
            "--lr",
            "0.002",
            "--temperature",
            "0.5",
            "--rho",
            "0.25",
        ],
    );
    assert_ok(&out);
    assert!(!stderr(&out).contains("replaces"), "{}", stderr(&out));
}
