//! Issue 14 item 14: an advisory lock on the run directory; a second process refuses.

use std::fs::OpenOptions;

use super::support::{
    arg, assert_exit, assert_ok, flowtracer, listing, metric_steps, temp_dir, train,
    worked_example_npy,
};

/// While another process holds `DIR/.lock`, `train` (fresh or `--resume`) refuses with
/// exit 2 and touches nothing; once it is released, the run proceeds.
#[test]
fn a_second_process_on_one_run_directory_refuses() {
    let dir = temp_dir("lock");
    assert_ok(&train(&dir, 1, &[]));
    let holder = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .unwrap();
    holder.lock().unwrap();
    let before = listing(&dir);
    let metrics = std::fs::read(dir.join("metrics.jsonl")).unwrap();
    for extra in [&["--resume"][..], &["--overwrite"][..]] {
        assert_exit(
            &train(&dir, 2, extra),
            2,
            &[
                ".lock",
                "another flowtracer process is using this directory",
            ],
        );
        assert_eq!(listing(&dir), before);
        assert_eq!(std::fs::read(dir.join("metrics.jsonl")).unwrap(), metrics);
    }
    holder.unlock().unwrap();
    assert_ok(&train(&dir, 2, &["--resume"]));
    assert_eq!(metric_steps(&dir), [1, 2]);
}

/// Temporary files a killed run left (`.NAME.tmp-PID-K`, `.checkpoint-NNNNNN.tmp/`) are
/// removed by the next run.
#[test]
fn the_next_run_removes_what_a_kill_left() {
    let dir = temp_dir("leftovers");
    assert_ok(&train(&dir, 1, &[]));
    std::fs::write(dir.join(".latest.tmp-99999-0"), b"checkpoint-000002").unwrap();
    std::fs::write(dir.join(".metrics.jsonl.tmp-99999-1"), b"{").unwrap();
    std::fs::create_dir(dir.join(".checkpoint-000002.tmp")).unwrap();
    std::fs::write(
        dir.join(".checkpoint-000002.tmp/.model.bpk.tmp-99999-2"),
        b"x",
    )
    .unwrap();
    assert_ok(&train(&dir, 2, &["--resume"]));
    let names = listing(&dir);
    assert!(
        names.iter().all(|n| !n.contains(".tmp")),
        "temporaries left: {names:?}"
    );
}

/// A temporary of `score --out` that a killed process left (`.out.json.tmp-PID-K`, its
/// process gone) is removed by the next write of that file; one of a live process stays.
#[test]
fn a_killed_writer_temporary_is_removed_by_the_next_write() {
    let dir = temp_dir("dead-temporary");
    let attention = dir.join("a.npy");
    worked_example_npy(&attention);
    // No process has this id (Linux ids stay below 2^22).
    let dead = dir.join(".out.json.tmp-999999999-0");
    std::fs::write(&dead, b"{\"partial").unwrap();
    let live = dir.join(format!(".out.json.tmp-{}-0", std::process::id()));
    std::fs::write(&live, b"{").unwrap();
    let out = dir.join("out.json");
    let args = [
        "score",
        "--attention",
        arg(&attention),
        "--question",
        "0..2",
        "--answer",
        "4..5",
        "--out",
        arg(&out),
    ];
    assert_ok(&flowtracer(&args, &[]));
    assert!(out.exists());
    assert!(!dead.exists(), "{:?}", listing(&dir));
    assert!(live.exists(), "a live writer's temporary stays");
}
