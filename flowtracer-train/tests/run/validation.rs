//! Issue 14 items 4, 6, 7, 9 and 13: one validation of every knob, whatever its source (the
//! command line or a checkpoint's `state.json`), before any work: exit 2, one line naming the
//! knob and what it may be; sizes bounded.

use super::support::{
    arg, assert_exit, assert_ok, flowtracer, listing, temp_dir, train, worked_example_npy,
};

/// A bad knob on the command line: exit 2 before the warm-up (no `warmup.bpk`), one line
/// with every needle.
#[track_caller]
fn rejected(extra: &[&str], needles: &[&str]) {
    let dir = temp_dir("knob");
    let out = train(&dir, 2, extra);
    assert_exit(&out, 2, needles);
    assert!(out.stdout.is_empty(), "{extra:?}: nothing ran");
    assert!(
        listing(&dir).iter().all(|n| n != "warmup.bpk"),
        "{extra:?}: no warm-up"
    );
}

/// Item 6: the loss knobs are checked with the others, before the warm-up.
#[test]
fn loss_knobs_are_checked_before_the_warm_up() {
    rejected(&["--beta=-1"], &["--beta", "-1", ">= 0"]);
    rejected(&["--beta", "NaN"], &["--beta", "NaN"]);
    rejected(&["--epsilon=-0.1"], &["--epsilon", "-0.1", ">= 0"]);
    rejected(&["--epsilon-high", "inf"], &["--epsilon-high", "inf"]);
}

/// Item 7: sizes are bounded (the message says the bound) instead of aborting.
#[test]
fn huge_sizes_are_rejected_with_the_bound() {
    rejected(
        &["--num-generations", "1000000000000"],
        &["--num-generations", "1000000000000", "2..=1024"],
    );
    rejected(
        &["--prompts-per-step", "1000000000000"],
        &["--prompts-per-step", "1..=4096"],
    );
    rejected(
        &["--warmup-batch", "1000000000000"],
        &["--warmup-batch", "1..=16384"],
    );
    rejected(&["--layers", "1000000000"], &["--layers", "1..=64"]);
    rejected(
        &["--eval-size", "1000000000000"],
        &["--eval-size", "0..=100000"],
    );
    rejected(
        &["--d-model", "1000000000", "--heads", "1"],
        &["--d-model", "1..=4096"],
    );
    // Each within its own range, together beyond the memory bound.
    rejected(
        &["--d-model", "4096", "--heads", "64", "--layers", "64"],
        &["GiB", "16 GiB"],
    );
}

/// Item 13: `--difficulty` outside 1..=4 is an error, not clamped.
#[test]
fn difficulty_out_of_range_is_rejected() {
    rejected(&["--difficulty", "0"], &["--difficulty", "0", "1..=4"]);
    rejected(&["--difficulty", "99"], &["--difficulty", "99", "1..=4"]);
}

/// Item 4: a corrupt `state.json` is an error naming it and the knob (exit 2), never a
/// panic or an abort; the checkpoint is left as it was.
#[test]
fn a_corrupt_state_json_is_rejected_by_the_same_validation() {
    let dir = temp_dir("state");
    assert_ok(&train(&dir, 1, &[]));
    let path = dir.join("checkpoint-000001/state.json");
    let good = std::fs::read_to_string(&path).unwrap();
    let value: serde_json::Value = serde_json::from_str(&good).unwrap();
    for (pointer, bad, needle) in [
        ("/model/n_heads", serde_json::json!(3), "--heads"),
        ("/model/n_heads", serde_json::json!(0), "--heads"),
        (
            "/config/max_completion_length",
            serde_json::json!(1_000_000_000u64),
            "--max-completion-length",
        ),
        (
            "/config/prompts_per_step",
            serde_json::json!(1_000_000_000_000u64),
            "--prompts-per-step",
        ),
        ("/config/beta", serde_json::json!(-1.0), "--beta"),
        ("/model/vocab_size", serde_json::json!(7), "vocab_size"),
    ] {
        let mut v = value.clone();
        *v.pointer_mut(pointer).unwrap() = bad;
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let before = listing(&dir);
        let out = train(&dir, 2, &["--resume"]);
        assert_exit(&out, 2, &["checkpoint-000001/state.json", needle]);
        assert_eq!(listing(&dir), before, "{pointer}");
    }
    // A JSON array is not read by position.
    let fields: Vec<&serde_json::Value> = value.as_object().unwrap().values().collect();
    std::fs::write(&path, serde_json::to_vec(&fields).unwrap()).unwrap();
    assert_exit(
        &train(&dir, 2, &["--resume"]),
        2,
        &["checkpoint-000001/state.json", "expected a map"],
    );
    std::fs::write(&path, good).unwrap();
    assert_ok(&train(&dir, 2, &["--resume"]));
}

/// Item 9: a `--config` of `flowtracer score` must be a JSON object; an array is not read
/// by position (`[1, 2]` was rho = 1, gamma = 2).
#[test]
fn a_score_config_must_be_a_json_object() {
    let dir = temp_dir("config");
    let attention = dir.join("a.npy");
    worked_example_npy(&attention);
    let config = dir.join("config.json");
    let args = |config: &std::path::Path| {
        flowtracer(
            &[
                "score",
                "--attention",
                arg(&attention),
                "--question",
                "0..2",
                "--answer",
                "4..5",
                "--config",
                arg(config),
            ],
            &[],
        )
    };
    for text in ["[1, 2]", "[0.5]", "3", "\"rho\"", "null"] {
        std::fs::write(&config, text).unwrap();
        assert_exit(
            &args(&config),
            2,
            &["bad --config", "config.json", "expected a map"],
        );
    }
    std::fs::write(&config, r#"{"rho": 0.5}"#).unwrap();
    assert_ok(&args(&config));
}
