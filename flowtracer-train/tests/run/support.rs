//! Running `flowtracer train` on a tiny model in a fresh directory.

use core::sync::atomic::{AtomicUsize, Ordering};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Knobs of a run that takes well under a second per step in a debug build.
pub(crate) const TINY: &[&str] = &[
    "--warmup-steps",
    "2",
    "--warmup-batch",
    "2",
    "--prompts-per-step",
    "1",
    "--num-generations",
    "2",
    "--eval-size",
    "2",
    "--eval-curve-size",
    "1",
    "--d-model",
    "16",
    "--layers",
    "2",
    "--heads",
    "2",
    "--max-completion-length",
    "24",
    "--checkpoint-every",
    "1",
    "--quiet",
];

/// A fresh, empty directory for one test under the target directory.
pub(crate) fn temp_dir(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "run-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A path as a `&str` argument.
pub(crate) fn arg(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Runs the binary with `args` and the environment `env`.
///
/// `FLOWTRACER_TEST_BIN=PATH` runs another build instead (how each test here was checked to
/// fail on the code before issue 14's fixes).
pub(crate) fn flowtracer(args: &[&str], env: &[(&str, &str)]) -> Output {
    let bin = std::env::var_os("FLOWTRACER_TEST_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_flowtracer").into());
    let mut cmd = Command::new(bin);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the flowtracer binary runs")
}

/// `flowtracer train` with `--out dir --steps steps`, `extra`, and the tiny knobs that
/// `extra` does not give.
pub(crate) fn train(dir: &Path, steps: usize, extra: &[&str]) -> Output {
    train_env(dir, steps, extra, &[])
}

/// [`train`] with environment variables.
pub(crate) fn train_env(dir: &Path, steps: usize, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let steps = steps.to_string();
    let mut args = vec!["train", "--out", arg(dir), "--steps", &steps];
    // The tiny knobs, less those `extra` gives.
    let mut tiny = TINY.iter().peekable();
    while let Some(&a) = tiny.next() {
        let value = tiny.next_if(|v| !v.starts_with("--")).copied();
        if !extra.contains(&a) {
            args.push(a);
            args.extend(value);
        }
    }
    args.extend_from_slice(extra);
    flowtracer(&args, env)
}

/// Standard error as text.
pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the run exited 0.
#[track_caller]
pub(crate) fn assert_ok(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "expected success; stderr: {}",
        stderr(out)
    );
}

/// Asserts the run exited with `code` and one line on stderr containing every needle;
/// returns that line.
#[track_caller]
pub(crate) fn assert_exit(out: &Output, code: i32, needles: &[&str]) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {err:?}");
    for n in needles {
        assert!(
            lines[0].contains(n),
            "stderr {:?} should contain {n:?}",
            lines[0]
        );
    }
    lines[0].to_owned()
}

/// The names in `dir`, sorted.
pub(crate) fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The `step` of every line of `metrics.jsonl`.
pub(crate) fn metric_steps(dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["step"].as_u64().unwrap()
        })
        .collect()
}

/// Copies a directory (one level of files).
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Writes the worked example of method §12 (dense 5 x 5 attention, f64) as a `.npy` file;
/// score it with `--question 0..2 --answer 4..5`.
pub(crate) fn worked_example_npy(path: &Path) {
    let values: [f64; 25] = [
        1.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.3, 0.5, 0.2, 0.0, 0.0, 0.1, 0.2, 0.3,
        0.4, 0.0, 0.1, 0.1, 0.6, 0.1, 0.1,
    ];
    let mut header = "{'descr': '<f8', 'fortran_order': False, 'shape': (5, 5), }".to_owned();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&u16::try_from(header.len()).unwrap().to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(path, bytes).unwrap();
}
