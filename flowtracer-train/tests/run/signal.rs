//! Issue 14 item 16: a task that can never be rewarded. A completion length below the
//! task's canonical response is rejected; the default follows the task; a run whose groups
//! have no reward variance for many steps in a row says so.

use super::support::{arg, assert_exit, assert_ok, flowtracer, stderr, temp_dir, train};

/// `--difficulty 3` (canonical response 44 tokens with EOS) and `--max-completion-length
/// 40`: every completion would be truncated and unrewarded, so the knob is rejected.
#[test]
fn a_completion_length_below_the_canonical_response_is_rejected() {
    let dir = temp_dir("signal-length");
    let out = train(
        &dir,
        1,
        &["--difficulty", "3", "--max-completion-length", "40"],
    );
    assert_exit(
        &out,
        2,
        &["--max-completion-length", "at least 44", "got 40"],
    );
    // Level 1's canonical response has 20 tokens: 20 passes, 19 does not.
    assert_ok(&train(&dir, 1, &["--max-completion-length", "20"]));
    let dir = temp_dir("signal-length-19");
    assert_exit(
        &train(&dir, 1, &["--max-completion-length", "19"]),
        2,
        &["at least 20"],
    );
}

/// Without `--max-completion-length`, the default covers the task's canonical response.
#[test]
fn the_default_completion_length_follows_the_task() {
    let dir = temp_dir("signal-default");
    let out = flowtracer(
        &[
            "train",
            "--out",
            arg(&dir),
            "--difficulty",
            "3",
            "--steps",
            "1",
            "--warmup-steps",
            "1",
            "--warmup-batch",
            "2",
            "--prompts-per-step",
            "1",
            "--num-generations",
            "2",
            "--eval-size",
            "1",
            "--eval-curve-size",
            "1",
            "--d-model",
            "16",
            "--layers",
            "2",
            "--heads",
            "2",
            "--checkpoint-every",
            "1",
            "--quiet",
        ],
        &[],
    );
    assert_ok(&out);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("checkpoint-000001/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["config"]["max_completion_length"], 44);
}

/// An untrained tiny model is never rewarded: after 20 steps without reward variance in any
/// group the run warns on stderr (once), and goes on.
#[test]
fn many_steps_without_reward_variance_are_warned_about() {
    let dir = temp_dir("signal-warn");
    let out = train(&dir, 21, &["--checkpoint-every", "0"]);
    assert_ok(&out);
    let err = stderr(&out);
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    for needle in ["no reward variance", "20 steps in a row", "zero_std_frac"] {
        assert!(
            warnings[0].contains(needle),
            "{needle:?} in {}",
            warnings[0]
        );
    }
}
