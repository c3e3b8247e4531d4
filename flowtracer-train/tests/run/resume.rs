//! Issue 14 item 1: `--resume` never starts over and never deletes a complete checkpoint; a
//! fresh run into a directory holding checkpoints refuses unless `--overwrite`.

use super::support::{
    assert_exit, assert_ok, copy_dir, listing, metric_steps, stderr, temp_dir, train,
};

/// A run of two steps (checkpoint every step): `checkpoint-000002` and `latest`.
fn two_steps(name: &str) -> std::path::PathBuf {
    let dir = temp_dir(name);
    assert_ok(&train(&dir, 2, &[]));
    assert!(dir.join("checkpoint-000002/state.json").exists());
    dir
}

/// A damaged `latest` with one complete checkpoint: resumed from it, said on stderr, no
/// warm-up, completed metrics kept.
#[test]
fn resume_with_a_damaged_latest_falls_back_to_the_only_checkpoint() {
    for (case, latest) in [
        ("garbage", Some(&b"\x00\xffgarbage"[..])),
        ("empty", Some(&b""[..])),
        ("missing-dir", Some(&b"checkpoint-000009"[..])),
        ("a-directory", Some(&b".."[..])),
        ("missing", None),
    ] {
        let dir = two_steps(&format!("fallback-{case}"));
        match latest {
            Some(bytes) => std::fs::write(dir.join("latest"), bytes).unwrap(),
            None => std::fs::remove_file(dir.join("latest")).unwrap(),
        }
        let out = train(&dir, 3, &["--resume"]);
        assert_ok(&out);
        let err = stderr(&out);
        assert!(
            err.contains("latest") && err.contains("checkpoint-000002"),
            "{case}: the fallback is said on stderr: {err}"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !stdout.contains("warm-up accuracy"),
            "{case}: no warm-up: {stdout}"
        );
        assert_eq!(metric_steps(&dir), [1, 2, 3], "{case}");
        assert!(dir.join("checkpoint-000003/state.json").exists(), "{case}");
    }
}

/// A damaged checkpoint with nothing to fall back to: exit 2 naming the file; the
/// directory is left as it was (nothing deleted, no warm-up).
#[test]
fn resume_from_a_damaged_checkpoint_is_an_error_naming_the_file() {
    for (case, damage) in [
        ("no-state", "state.json"),
        ("no-model", "model.bpk"),
        ("no-optim", "optim.bpk"),
    ] {
        let dir = two_steps(&format!("damaged-{case}"));
        std::fs::remove_file(dir.join("checkpoint-000002").join(damage)).unwrap();
        let before = listing(&dir);
        let metrics = std::fs::read(dir.join("metrics.jsonl")).unwrap();
        let out = train(&dir, 3, &["--resume"]);
        assert_exit(&out, 2, &["checkpoint-000002", damage]);
        assert_eq!(listing(&dir), before, "{case}: nothing deleted or added");
        assert_eq!(std::fs::read(dir.join("metrics.jsonl")).unwrap(), metrics);
    }
    // A garbage state.json.
    let dir = two_steps("damaged-garbage-state");
    std::fs::write(dir.join("checkpoint-000002/state.json"), b"{\"step\": [").unwrap();
    assert_exit(
        &train(&dir, 3, &["--resume"]),
        2,
        &["checkpoint-000002/state.json"],
    );
    assert!(dir.join("checkpoint-000002/model.bpk").exists());
}

/// Two complete checkpoints and no readable `latest`: ambiguous, so exit 2 naming both.
#[test]
fn resume_with_an_ambiguous_fallback_is_an_error() {
    let dir = two_steps("ambiguous");
    copy_dir(
        &dir.join("checkpoint-000002"),
        &dir.join("checkpoint-000001"),
    );
    std::fs::write(dir.join("latest"), b"nonsense").unwrap();
    let before = listing(&dir);
    assert_exit(
        &train(&dir, 3, &["--resume"]),
        2,
        &["latest", "checkpoint-000001", "checkpoint-000002"],
    );
    assert_eq!(listing(&dir), before);
}

/// A fresh run into a directory holding checkpoints refuses; `--overwrite` starts over.
#[test]
fn a_fresh_run_over_checkpoints_refuses_without_overwrite() {
    let dir = two_steps("fresh-over");
    let before = listing(&dir);
    let model = std::fs::read(dir.join("checkpoint-000002/model.bpk")).unwrap();
    assert_exit(
        &train(&dir, 1, &[]),
        2,
        &["checkpoint", "--resume", "--overwrite"],
    );
    assert_eq!(listing(&dir), before);
    assert_eq!(
        std::fs::read(dir.join("checkpoint-000002/model.bpk")).unwrap(),
        model
    );
    assert_ok(&train(&dir, 1, &["--overwrite"]));
    assert_eq!(metric_steps(&dir), [1]);
    assert!(dir.join("checkpoint-000001/state.json").exists());
    assert!(!dir.join("checkpoint-000002").exists());
}

/// `--resume` where there is nothing to resume starts a fresh run and says so.
#[test]
fn resume_in_an_empty_directory_starts_fresh_and_says_so() {
    let dir = temp_dir("resume-empty");
    let out = train(&dir, 1, &["--resume"]);
    assert_ok(&out);
    assert!(
        stderr(&out).contains("starting a fresh run"),
        "{}",
        stderr(&out)
    );
    assert_eq!(metric_steps(&dir), [1]);
}
