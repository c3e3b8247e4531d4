//! Issue 14 items 10 and 12: a resumed run never rewrites completed history. The lines of
//! `metrics.jsonl` up to the checkpoint stay byte-identical, floats in `state.json` round-trip
//! exactly, and `summary.json` keeps the warm-up accuracy.

use super::support::{assert_ok, metric_steps, temp_dir, train};

/// The text of `"key": value` in a `state.json`.
fn state_line(dir: &std::path::Path, step: usize, key: &str) -> String {
    let path = dir.join(format!("checkpoint-{step:06}/state.json"));
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .find(|l| l.trim_start().starts_with(&format!("\"{key}\"")))
        .unwrap()
        .trim()
        .to_owned()
}

/// Completed lines are kept byte for byte, whatever their formatting; a line past the
/// checkpoint (written before a kill) and a partial last line are dropped.
#[test]
fn resume_keeps_completed_metrics_lines_byte_identical() {
    let dir = temp_dir("history-metrics");
    assert_ok(&train(&dir, 2, &[]));
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    // Line 1 as another writer might format it: the same values, other bytes.
    let first = text
        .lines()
        .next()
        .unwrap()
        .replacen("\"step\":1,", "\"step\": 1, ", 1);
    let second = text.lines().nth(1).unwrap();
    let kept = format!("{first}\n{second}\n");
    let third = second.replacen("\"step\":2,", "\"step\":3,", 1);
    std::fs::write(&path, format!("{kept}{third}\n{{\"step\":4,\"rew")).unwrap();
    assert_ok(&train(&dir, 3, &["--resume"]));
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(
        after.starts_with(&kept),
        "completed lines rewritten:\n{after}"
    );
    assert_eq!(metric_steps(&dir), [1, 2, 3]);
    assert_ne!(
        after.lines().nth(2).unwrap(),
        third,
        "line 3 is the resumed step's"
    );
}

/// A float whose shortest decimal form serde_json's fast parser reads 1 ULP off: after a
/// resume it is written back with the same digits.
#[test]
fn floats_round_trip_exactly_through_state_json() {
    let dir = temp_dir("history-floats");
    let lr = "0.00047762358415044773";
    assert_ok(&train(&dir, 1, &["--lr", lr]));
    let before = state_line(&dir, 1, "lr");
    assert_eq!(before, format!("\"lr\": {lr},"));
    assert_ok(&train(&dir, 2, &["--resume"]));
    assert_eq!(state_line(&dir, 2, "lr"), before);
}

/// `summary.json` of a resumed run keeps the warm-up accuracy of the run.
#[test]
fn a_resumed_summary_keeps_the_warm_up_accuracy() {
    let dir = temp_dir("history-summary");
    assert_ok(&train(&dir, 1, &[]));
    let read = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap()
    };
    let warm = read()["warmup_accuracy"].clone();
    assert!(warm.is_array(), "{warm}");
    assert_ok(&train(&dir, 2, &["--resume"]));
    assert_eq!(read()["warmup_accuracy"], warm);
    assert_eq!(read()["steps"], 2);
}
