//! Issue 14, crash safety by fault injection (not by timing): with the cargo feature
//! `fault-injection` (enabled by `cargo test-all`), `FLOWTRACER_FAULT_AT=k` aborts the
//! process just before the k-th write, fsync, rename or removal of a checkpoint save. For
//! every k, the kill leaves `latest` naming a complete checkpoint (the previous or the new),
//! and `--resume` then finishes the run with nothing lost: the same final model as an
//! uninterrupted run, the completed metrics lines unchanged, no temporaries left.

use std::path::Path;

use burn::tensor::Device;
use flowtracer_train::checkpoint::{self, Resume};
use flowtracer_train::model::param_values;

use super::support::{assert_ok, listing, temp_dir, train, train_env};

/// Copies a directory tree.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// The parameters of a checkpoint (the `.bpk` bytes also hold per-process parameter ids).
fn parameters(checkpoint: &Path) -> Vec<f32> {
    let (trainer, _) = checkpoint::load(checkpoint, Default::default(), Device::flex()).unwrap();
    param_values(&trainer.model)
}

#[test]
fn a_kill_at_every_step_of_a_checkpoint_save_loses_nothing() {
    if !cfg!(feature = "fault-injection") {
        println!(
            "SKIPPED: the crash-safety test needs the fault-injection feature (cargo test-all)"
        );
        return;
    }
    // The uninterrupted run, and a run stopped cleanly after step 1.
    let straight = temp_dir("crash-straight");
    assert_ok(&train(&straight, 2, &[]));
    let final_model = parameters(&straight.join("checkpoint-000002"));
    let after_one = temp_dir("crash-one");
    assert_ok(&train(&after_one, 1, &[]));
    let line_one = std::fs::read(after_one.join("metrics.jsonl")).unwrap();

    let mut k = 1;
    loop {
        let dir = temp_dir(&format!("crash-{k}"));
        std::fs::remove_dir(&dir).unwrap();
        copy_tree(&after_one, &dir);
        let at = k.to_string();
        let out = train_env(&dir, 2, &["--resume"], &[("FLOWTRACER_FAULT_AT", &at)]);
        if out.status.success() {
            // k is past the last point of the save: every point was tried.
            assert!(k > 10, "only {} fault points in a checkpoint save", k - 1);
            println!(
                "{} fault points in a checkpoint save, each killed and resumed",
                k - 1
            );
            break;
        }
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt as _;
            assert_eq!(out.status.signal(), Some(6), "k = {k}: killed by SIGABRT");
        }
        assert_eq!(out.status.code(), None, "k = {k}");
        // The kill left `latest` naming a complete checkpoint, the previous or the new.
        match checkpoint::resume_point(&dir) {
            Ok(Resume::Latest(p))
                if p == dir.join("checkpoint-000001") || p == dir.join("checkpoint-000002") => {}
            other => panic!("k = {k}: after the kill, {other:?}"),
        }
        assert_ok(&train(&dir, 2, &["--resume"]));
        assert_eq!(
            std::fs::read(dir.join("latest")).unwrap(),
            b"checkpoint-000002",
            "k = {k}"
        );
        assert!(
            parameters(&dir.join("checkpoint-000002")) == final_model,
            "k = {k}: the resumed run ends where the uninterrupted one does"
        );
        let metrics = std::fs::read(dir.join("metrics.jsonl")).unwrap();
        assert!(
            metrics.starts_with(&line_one),
            "k = {k}: step 1's line unchanged"
        );
        assert_eq!(
            metrics.iter().filter(|&&b| b == b'\n').count(),
            2,
            "k = {k}"
        );
        assert_eq!(
            listing(&dir),
            [
                ".lock",
                "checkpoint-000002",
                "latest",
                "metrics.jsonl",
                "summary.json",
                "warmup.bpk"
            ],
            "k = {k}: nothing stale, no temporaries"
        );
        let _ = std::fs::remove_dir_all(&dir);
        k += 1;
    }
}
