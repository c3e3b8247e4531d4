//! Issue 14 item 3: nothing non-finite is ever saved, the last finite checkpoint is never
//! rotated away, and the divergence message is true.

use burn::tensor::Device;
use flowtracer_train::checkpoint;
use flowtracer_train::model::param_values;

use super::support::{assert_exit, assert_ok, listing, temp_dir, train};

/// Every checkpoint in `dir` loads and holds finite parameters.
fn assert_checkpoints_finite(dir: &std::path::Path) {
    for path in checkpoint::checkpoints(dir) {
        let (trainer, _) = checkpoint::load(&path, Default::default(), Device::flex())
            .unwrap_or_else(|e| panic!("{} loads: {e}", path.display()));
        assert!(
            param_values(&trainer.model).iter().all(|x| x.is_finite()),
            "{} holds non-finite parameters",
            path.display()
        );
    }
}

/// `--lr 1e39` from the start: the first update makes the parameters non-finite; no
/// checkpoint is written and the message says so (exit 1).
#[test]
fn a_diverging_run_saves_nothing_non_finite() {
    let dir = temp_dir("diverge-fresh");
    let out = train(&dir, 3, &["--lr", "1e39"]);
    assert_exit(
        &out,
        1,
        &["diverged at step 1", "no checkpoint was written"],
    );
    assert_checkpoints_finite(&dir);
    assert!(
        checkpoint::checkpoints(&dir).is_empty(),
        "{:?}",
        listing(&dir)
    );
}

/// A NaN planted in the Adam state of the only checkpoint: resuming refuses it (exit 2,
/// naming `optim.bpk`), and the checkpoint is still there.
#[test]
fn a_non_finite_optimizer_state_is_refused_on_resume() {
    let dir = temp_dir("diverge-adam");
    assert_ok(&train(&dir, 2, &[]));
    let optim = dir.join("checkpoint-000002/optim.bpk");
    let mut bytes = std::fs::read(&optim).unwrap();
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&optim, &bytes).unwrap();
    let before = listing(&dir);
    assert_exit(
        &train(&dir, 4, &["--resume"]),
        2,
        &["checkpoint-000002/optim.bpk", "non-finite"],
    );
    assert_eq!(listing(&dir), before);
    assert_eq!(std::fs::read(&optim).unwrap(), bytes);
}

/// Diverging after a resume (`--lr 1e39` applied from step 3): the message names the last
/// checkpoint, which is still there, finite and loadable; `latest` still names it.
#[test]
fn a_diverging_resume_keeps_the_last_finite_checkpoint() {
    let dir = temp_dir("diverge-resume");
    assert_ok(&train(&dir, 2, &[]));
    let model = std::fs::read(dir.join("checkpoint-000002/model.bpk")).unwrap();
    let out = train(&dir, 5, &["--resume", "--lr", "1e39"]);
    let err = super::support::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap();
    for needle in ["diverged at step 3", "checkpoint-000002 (step 2)", "finite"] {
        assert!(last.contains(needle), "{needle:?} in {last}");
    }
    assert_eq!(
        checkpoint::checkpoints(&dir),
        [dir.join("checkpoint-000002")]
    );
    assert_eq!(
        std::fs::read(dir.join("latest")).unwrap(),
        b"checkpoint-000002"
    );
    assert_eq!(
        std::fs::read(dir.join("checkpoint-000002/model.bpk")).unwrap(),
        model
    );
    assert_checkpoints_finite(&dir);
}
