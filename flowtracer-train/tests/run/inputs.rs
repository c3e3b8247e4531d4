//! Issue 14 item 15: an input that is not a regular file (`/dev/zero`, a FIFO, a directory)
//! is refused before it is read, with exit 2 and one line; never read until memory runs out.

use super::support::{arg, assert_exit, flowtracer, temp_dir, train};

#[test]
fn non_regular_inputs_are_refused() {
    let dir = temp_dir("inputs");
    let fifo = dir.join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let tokens = dir.join("tokens.json");
    std::fs::write(&tokens, "[]").unwrap();
    for input in [std::path::Path::new("/dev/zero"), &fifo, &dir] {
        let spans = ["--question", "0..2", "--answer", "4..5"];
        let mut score = vec!["score", "--attention", arg(input)];
        score.extend(spans);
        assert_exit(
            &flowtracer(&score, &[]),
            2,
            &["--attention", "not a regular file"],
        );
        let mut qk = vec!["score", "--qk", arg(input)];
        qk.extend(spans);
        assert_exit(&flowtracer(&qk, &[]), 2, &["--qk", "not a regular file"]);
        let mut config = vec!["score", "--attention", arg(&tokens), "--config", arg(input)];
        config.extend(spans);
        assert_exit(
            &flowtracer(&config, &[]),
            2,
            &["--config", "not a regular file"],
        );
        let mut explain = vec![
            "explain",
            "--attention",
            arg(&tokens),
            "--tokens",
            arg(input),
        ];
        explain.extend(spans);
        explain.extend(["--out", "unused.html"]);
        assert_exit(
            &flowtracer(&explain, &[]),
            2,
            &["--tokens", "not a regular file"],
        );
        let out = temp_dir("inputs-init");
        assert_exit(
            &train(&out, 1, &["--init", arg(input)]),
            2,
            &["--init", "not a regular file"],
        );
    }
}
