//! `flowtracer explain`: the page is self-contained, and renders in headless Chromium with
//! every response token present and the hubs marked.

use core::time::Duration;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;

use super::support::{
    Dtype, WORKED_EXAMPLE, arg, assert_dir_holds, random_attention, run, run_json, temp_dir,
    usizes, write_npy,
};

/// A small arithmetic exchange: prompt (question at 2..13), response 13..N, answer "42".
const TOKENS: [&str; 40] = [
    "<|user|>",
    "\n",
    "Tom",
    " has",
    " 17",
    " apples",
    " and",
    " buys",
    " 25",
    " more",
    ".",
    " How",
    " many?",
    "<|assistant|>",
    "\n",
    "He",
    " starts",
    " with",
    " 17",
    ".",
    " Buying",
    " 25",
    " more",
    " gives",
    " 17",
    " +",
    " 25",
    ".",
    " 17",
    " +",
    " 25",
    " =",
    " 42",
    ".",
    " Answer",
    ":",
    " \\boxed{",
    "42",
    "}",
    "<&>",
];

/// Writes the example's attention and tokens; returns (attention, tokens) paths.
fn example(dir: &Path) -> (PathBuf, PathBuf) {
    let n = TOKENS.len();
    let (l, h) = (6, 4);
    let mut values = random_attention(l, h, n, 2024);
    // Make the answer lean on the "+ 25 =" tokens and those on the question numbers, so
    // the page shows a recognisable backbone.
    let boost = |values: &mut Vec<f64>, k: usize, i: usize, amount: f64| {
        for m in 0..l * h {
            let row = &mut values[(m * n + k) * n..(m * n + k) * n + n];
            row[i] += amount;
            let sum: f64 = row[..=k].iter().sum();
            for v in &mut row[..=k] {
                *v /= sum;
            }
        }
    };
    for (k, i, a) in [
        (37, 32, 2.0),
        (37, 30, 0.8),
        (32, 31, 1.0),
        (32, 26, 1.0),
        (30, 8, 1.0),
        (28, 4, 1.0),
        (26, 8, 1.0),
        (24, 4, 1.0),
        (31, 28, 0.5),
        (21, 8, 1.5),
        (18, 4, 1.5),
    ] {
        boost(&mut values, k, i, a);
    }
    let attention = dir.join("attn.npy");
    write_npy(&attention, &[l, h, n, n], &values, Dtype::F32);
    let tokens = dir.join("tokens.json");
    std::fs::write(&tokens, serde_json::to_string(&TOKENS[..]).unwrap()).unwrap();
    (attention, tokens)
}

const SPANS: [&str; 6] = [
    "--question",
    "2..13",
    "--answer",
    "37..38",
    "--response",
    "13..40",
];

fn explain(dir: &Path) -> (PathBuf, Value) {
    let (attention, tokens) = example(dir);
    let out = dir.join("explain.html");
    let mut args = vec![
        "explain",
        "--attention",
        arg(&attention),
        "--tokens",
        arg(&tokens),
    ];
    args.extend(SPANS);
    args.extend(["--out", arg(&out), "--title", "apples: 17 + 25"]);
    let result = run(&args);
    assert!(
        result.status.success(),
        "explain failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    let mut score = vec!["score", "--attention", arg(&attention)];
    score.extend(SPANS);
    (out, run_json(&score))
}

#[test]
fn page_is_self_contained_and_marks_every_token() {
    let dir = temp_dir("explain-static");
    let (out, scores) = explain(&dir);
    assert_dir_holds(&dir, &["attn.npy", "explain.html", "tokens.json"]);
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    for forbidden in [
        "<script", "<link", "src=", "href=", "url(", "@import", "<iframe",
    ] {
        assert!(
            !html.contains(forbidden),
            "the page must load nothing: {forbidden}"
        );
    }
    // The only URL is the SVG namespace, which is never fetched.
    assert_eq!(html.matches("http").count(), 1);
    assert!(html.contains("xmlns=\"http://www.w3.org/2000/svg\""));
    // Token text is escaped.
    assert!(html.contains(">&lt;&amp;&gt;</span>"));
    let hubs = usizes(&scores["backbone"]["hubs"]);
    for k in 0..TOKENS.len() {
        let (tag, _) = token_span(&html, k).unwrap_or_else(|| panic!("token {k} is on the page"));
        assert_eq!(
            classes(&tag).contains(&"hub"),
            hubs.contains(&k),
            "hub marking of {k}"
        );
    }
    let edges = scores["backbone"]["edges"].as_array().unwrap().len();
    assert_eq!(html.matches("<path class=\"edge\"").count(), edges);
}

#[test]
fn worked_example_page() {
    let dir = temp_dir("explain-worked");
    let attention = dir.join("attn.npy");
    write_npy(&attention, &[5, 5], &WORKED_EXAMPLE, Dtype::F64);
    let tokens = dir.join("tokens.json");
    std::fs::write(&tokens, r#"["2+3", "?", "so", "=", "5"]"#).unwrap();
    let out = dir.join("page.html");
    let result = run(&[
        "explain",
        "--attention",
        arg(&attention),
        "--tokens",
        arg(&tokens),
        "--question",
        "0..2",
        "--answer",
        "4..5",
        "--out",
        arg(&out),
    ]);
    assert!(result.status.success());
    let html = std::fs::read_to_string(&out).unwrap();
    // Hubs 2 and 4; checkpoints 0, 1, 2, 4; path 1 -> 2 -> 4.
    assert!(
        html.contains(r#"class="tok resp hub ckpt path hot" data-i="2""#),
        "{html}"
    );
    assert!(html.contains(r#"class="tok resp ans hub ckpt path hot" data-i="4""#));
    assert!(html.contains(r#"class="tok prompt q ckpt path" data-i="1""#));
    assert!(html.contains("weight=1.5000"));
    assert_eq!(html.matches("<path class=\"edge\"").count(), 5);
}

/// Runs Chromium headless with `args`, failing the test after 90 s.
fn chromium(profile: &Path, args: &[&str]) -> std::process::Output {
    const CHROMIUM: &str = "/usr/bin/chromium";
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: this test renders the explain page in headless Chromium; \
         install it with `apt-get update && apt-get install -y chromium` (the README's test \
         script does)"
    );
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--mute-audio",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// The opening tag and text of the `<span>` with `data-i="k"` in a DOM dump.
fn token_span(dom: &str, k: usize) -> Option<(String, String)> {
    let marker = format!("data-i=\"{k}\"");
    let at = dom.find(&marker)?;
    let open = dom[..at].rfind("<span")?;
    let close = at + dom[at..].find('>')?;
    let end = close + dom[close..].find("</span>")?;
    Some((dom[open..=close].to_owned(), unescape(&dom[close + 1..end])))
}

/// The classes of an opening tag.
fn classes(tag: &str) -> Vec<&str> {
    let start = tag.find("class=\"").expect("the tag has a class") + 7;
    let end = start + tag[start..].find('"').unwrap();
    tag[start..end].split_whitespace().collect()
}

#[test]
fn page_renders_in_headless_chromium() {
    let dir = temp_dir("explain-chromium");
    let (page, scores) = explain(&dir);
    let profile = dir.join("chromium-profile");
    let url = format!("file://{}", page.display());

    let dom = chromium(&profile, &["--dump-dom", &url]);
    let dom = String::from_utf8(dom.stdout).expect("the DOM is UTF-8");
    assert!(dom.contains("<svg"), "the SVG is in the DOM");
    let hubs = usizes(&scores["backbone"]["hubs"]);
    let checkpoints = usizes(&scores["backbone"]["checkpoints"]);
    assert!(!hubs.is_empty());
    for (k, token) in TOKENS.iter().enumerate().skip(13) {
        let (tag, text) =
            token_span(&dom, k).unwrap_or_else(|| panic!("response token {k} is in the DOM"));
        assert_eq!(text, *token, "token {k} text");
        let class = classes(&tag);
        assert!(
            class.starts_with(&["tok", "resp"]),
            "token {k} is a response token: {tag}"
        );
        assert!(
            tag.contains("title=\"#"),
            "token {k} has a hover title: {tag}"
        );
        assert_eq!(
            class.contains(&"hub"),
            hubs.contains(&k),
            "hub marking of {k}: {tag}"
        );
        assert_eq!(
            class.contains(&"ckpt"),
            checkpoints.contains(&k),
            "checkpoint marking of {k}: {tag}"
        );
        let weight = scores["weights"][k].as_f64().unwrap();
        assert!(
            tag.contains(&format!("data-w=\"{weight:.4}\"")),
            "weight of {k}: {tag}"
        );
    }

    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is target/tmp")
        .to_path_buf();
    let shot = target.join("explain.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &profile,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,800",
            &url,
        ],
    );
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
    println!("explain screenshot: {}", shot.display());
    let _ = std::fs::remove_dir_all(&profile);
}
