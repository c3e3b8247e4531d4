//! Every bad input to `flowtracer score` / `explain`: one line naming the problem, exit
//! code 2, and no output file (nor temporary file) left behind.

use std::path::{Path, PathBuf};

use super::support::{
    Dtype, WORKED_EXAMPLE, arg, assert_dir_holds, assert_fails, npy_bytes, npy_raw,
    random_attention, temp_dir, write_npy, write_safetensors, write_safetensors_raw,
};

/// A directory holding `attn.npy` (the worked example) and `tokens.json` (five tokens).
struct Case {
    dir: PathBuf,
    attention: PathBuf,
    tokens: PathBuf,
    out_json: PathBuf,
    out_html: PathBuf,
}

impl Case {
    fn new(name: &str) -> Self {
        let dir = temp_dir(name);
        let attention = dir.join("attn.npy");
        write_npy(&attention, &[5, 5], &WORKED_EXAMPLE, Dtype::F64);
        let tokens = dir.join("tokens.json");
        std::fs::write(&tokens, r#"["2+3", "?", "so", "=", "5"]"#).unwrap();
        Self {
            out_json: dir.join("out.json"),
            out_html: dir.join("out.html"),
            dir,
            attention,
            tokens,
        }
    }

    /// Runs `score` and `explain` with `file` and `extra` arguments (plus
    /// `--question 0..2 --answer 4..5` unless `extra` gives them) and asserts both fail
    /// with a message containing `needles` and leave no output.
    fn fails(&self, file: &Path, extra: &[&str], needles: &[&str]) {
        let before = self.listing();
        let mut common = vec!["--attention", arg(file)];
        for (flag, default) in [("--question", "0..2"), ("--answer", "4..5")] {
            if !extra.contains(&flag) {
                common.extend([flag, default]);
            }
        }
        common.extend(extra);
        let mut score = vec!["score"];
        score.extend(&common);
        score.extend(["--out", arg(&self.out_json)]);
        assert_fails(&score, needles);

        let mut explain = vec!["explain", "--tokens", arg(&self.tokens)];
        explain.extend(&common);
        explain.extend(["--out", arg(&self.out_html)]);
        assert_fails(&explain, needles);

        let names: Vec<&str> = before.iter().map(String::as_str).collect();
        assert_dir_holds(&self.dir, &names);
        assert!(!self.out_json.exists() && !self.out_html.exists());
    }

    fn listing(&self) -> Vec<String> {
        std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

#[test]
fn missing_file() {
    let case = Case::new("missing");
    let missing = case.dir.join("nope.npy");
    case.fails(
        &missing,
        &[],
        &["cannot read --attention", "nope.npy", "No such file"],
    );
}

#[test]
fn truncated_npy() {
    let case = Case::new("truncated-npy");
    let bytes = npy_bytes(&[5, 5], &WORKED_EXAMPLE, Dtype::F64);
    let file = case.file("cut.npy", &bytes[..bytes.len() - 12]);
    case.fails(
        &file,
        &[],
        &[
            "cut.npy",
            "truncated file: data needs 200 bytes but only 188 are present",
        ],
    );
    let file = case.file("header.npy", &bytes[..30]);
    case.fails(&file, &[], &["header.npy", "truncated file: header needs"]);
}

#[test]
fn unreadable_files() {
    let case = Case::new("unreadable");
    let file = case.file("text.npy", b"this is not an array\n");
    case.fails(&file, &[], &["text.npy", "not a .npy file"]);
    let file = case.file("text.bin", b"{\"hello\": \"world\"}");
    case.fails(&file, &[], &["text.bin", "truncated file: header needs"]);
    let file = case.file("bad-header.npy", &npy_raw("<f8", &[5, 5], &[])[..40]);
    case.fails(&file, &[], &["bad-header.npy", "truncated"]);
    let mut bad = npy_bytes(&[5, 5], &WORKED_EXAMPLE, Dtype::F64);
    bad[10] = b'[';
    let file = case.file("bad-dict.npy", &bad);
    case.fails(&file, &[], &["bad-dict.npy", "bad .npy header"]);
    let dir = case.dir.join("a-directory.npy");
    std::fs::create_dir(&dir).unwrap();
    case.fails(&dir, &[], &["cannot read --attention", "a-directory.npy"]);
    std::fs::remove_dir(&dir).unwrap();
}

#[test]
fn truncated_safetensors() {
    let case = Case::new("truncated-st");
    let full = case.dir.join("full.safetensors");
    write_safetensors(
        &full,
        &[("attn", vec![5, 5], &WORKED_EXAMPLE[..])],
        Dtype::F32,
    );
    let bytes = std::fs::read(&full).unwrap();
    std::fs::remove_file(&full).unwrap();
    let file = case.file("cut.safetensors", &bytes[..bytes.len() - 4]);
    case.fails(
        &file,
        &[],
        &[
            "cut.safetensors",
            "truncated file: tensor \"attn\" needs 100 bytes but only 96 are present",
        ],
    );
    let file = case.file("short.safetensors", &bytes[..5]);
    case.fails(
        &file,
        &[],
        &["short.safetensors", "not a .safetensors file"],
    );
    let file = case.file("head.safetensors", &bytes[..20]);
    case.fails(
        &file,
        &[],
        &["head.safetensors", "truncated file: header needs"],
    );
}

#[test]
fn wrong_dtype() {
    let case = Case::new("dtype");
    let ints: Vec<u8> = (0..25i64).flat_map(|v| v.to_le_bytes()).collect();
    let file = case.file("ints.npy", &npy_raw("<i8", &[5, 5], &ints));
    case.fails(
        &file,
        &[],
        &[
            "ints.npy",
            "unsupported dtype \"<i8\": expected a float type",
        ],
    );
    let st = case.dir.join("ints.safetensors");
    write_safetensors_raw(&st, &[("attn", "I64", vec![5, 5], ints.clone())]);
    case.fails(&st, &[], &["ints.safetensors", "unsupported dtype \"I64\""]);
    let layers = case.dir.join("layers.safetensors");
    let floats: Vec<u8> = WORKED_EXAMPLE
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    write_safetensors_raw(
        &layers,
        &[
            ("layer.0", "F64", vec![5, 5], floats),
            ("layer.1", "I64", vec![5, 5], ints),
        ],
    );
    case.fails(
        &layers,
        &[],
        &["layers.safetensors", "unsupported dtype \"I64\""],
    );
}

#[test]
fn wrong_rank_and_shape() {
    let case = Case::new("rank");
    let file = case.dir.join("rank5.npy");
    write_npy(&file, &[1, 1, 1, 5, 5], &WORKED_EXAMPLE, Dtype::F64);
    case.fails(
        &file,
        &[],
        &[
            "rank5.npy",
            "shape [1, 1, 1, 5, 5] (rank 5)",
            "expected [N,N], [H,N,N] or [L,H,N,N]",
        ],
    );
    let file = case.dir.join("rank1.npy");
    write_npy(&file, &[25], &WORKED_EXAMPLE, Dtype::F64);
    case.fails(&file, &[], &["rank1.npy", "(rank 1)"]);
    let file = case.dir.join("oblong.npy");
    write_npy(&file, &[5, 5, 1], &WORKED_EXAMPLE, Dtype::F64);
    case.fails(&file, &[], &["oblong.npy", "must be square", "[5, 5, 1]"]);
    let file = case.dir.join("empty.npy");
    write_npy(&file, &[0, 0], &[], Dtype::F64);
    case.fails(&file, &[], &["empty.npy", "no tokens"]);
    let file = case.dir.join("noheads.npy");
    write_npy(&file, &[0, 5, 5], &[], Dtype::F64);
    case.fails(&file, &[], &["noheads.npy", "no heads"]);
}

#[test]
fn token_count_mismatch() {
    let case = Case::new("tokens");
    let tokens = case.file("four.json", br#"["a", "b", "c", "d"]"#);
    let before: Vec<String> = case.listing();
    assert_fails(
        &[
            "explain",
            "--attention",
            arg(&case.attention),
            "--question",
            "0..2",
            "--answer",
            "4..5",
            "--tokens",
            arg(&tokens),
            "--out",
            arg(&case.out_html),
        ],
        &[
            "--tokens",
            "four.json",
            "has 4 tokens, but the attention",
            "is over 5 tokens",
        ],
    );
    let bad = case.file("bad.json", br#"["a", 2]"#);
    assert_fails(
        &[
            "explain",
            "--attention",
            arg(&case.attention),
            "--question",
            "0..2",
            "--answer",
            "4..5",
            "--tokens",
            arg(&bad),
            "--out",
            arg(&case.out_html),
        ],
        &["bad --tokens", "expected a JSON list of strings"],
    );
    let mut names: Vec<&str> = before.iter().map(String::as_str).collect();
    names.push("bad.json");
    assert_dir_holds(&case.dir, &names);
}

#[test]
fn nan_negative_and_overfull_attention() {
    let case = Case::new("nan");
    let mut values = WORKED_EXAMPLE;
    values[3 * 5 + 1] = f64::NAN;
    let file = case.dir.join("nan.npy");
    write_npy(&file, &[5, 5], &values, Dtype::F32);
    case.fails(&file, &[], &["non-finite attention at row 3, column 1"]);

    // In a [L,H,N,N] dump the position names the layer and head.
    let (l, h, n) = (3, 2, 5);
    let mut values = random_attention(l, h, n, 1);
    values[((l / 2 * h + 1) * n + 4) * n + 2] = f64::NAN;
    let file = case.dir.join("nan4d.npy");
    write_npy(&file, &[l, h, n, n], &values, Dtype::F64);
    case.fails(
        &file,
        &[],
        &["non-finite attention at layer 1, head 1, row 4, column 2"],
    );

    let mut values = WORKED_EXAMPLE;
    values[2 * 5 + 1] = -0.5;
    let file = case.dir.join("negative.npy");
    write_npy(&file, &[5, 5], &values, Dtype::F64);
    case.fails(&file, &[], &["negative attention -0.5 at row 2, column 1"]);

    let mut values = WORKED_EXAMPLE;
    values[2 * 5 + 2] = 0.9;
    let file = case.dir.join("overfull.npy");
    write_npy(&file, &[5, 5], &values, Dtype::F64);
    case.fails(&file, &[], &["attention row 2 sums to"]);
}

#[test]
fn no_source_mass() {
    let case = Case::new("nosource");
    let mut values = WORKED_EXAMPLE;
    // The answer attends only to itself and token 3, which attends only to itself.
    values[3 * 5..4 * 5].copy_from_slice(&[0.0, 0.0, 0.0, 1.0, 0.0]);
    values[4 * 5..5 * 5].copy_from_slice(&[0.0, 0.0, 0.0, 0.5, 0.5]);
    let file = case.dir.join("isolated.npy");
    write_npy(&file, &[5, 5], &values, Dtype::F64);
    case.fails(&file, &[], &["no question token reaches the answer"]);
}

#[test]
fn ranges_out_of_bounds_or_malformed() {
    let case = Case::new("ranges");
    let a = case.attention.clone();
    case.fails(
        &a,
        &["--answer", "4..9"],
        &["the answer span 4..9 is out of range for a sequence of 5 tokens"],
    );
    case.fails(
        &a,
        &["--question", "0..6"],
        &["the question span 0..6 is out of range"],
    );
    case.fails(
        &a,
        &["--response", "2..7"],
        &["the response span 2..7 is out of range"],
    );
    case.fails(
        &a,
        &["--response", "2..4"],
        &["the response span 2..4 does not contain the answer span 4..5"],
    );
    case.fails(
        &a,
        &["--question", "0..3", "--answer", "2..5"],
        &["the answer span 2..5 starts before the question span 0..3 ends"],
    );
    case.fails(&a, &["--answer", "4..4"], &["the answer span is empty"]);
    case.fails(
        &a,
        &["--answer", "4-5"],
        &["invalid --answer \"4-5\": expected a half-open range A..B"],
    );
    case.fails(
        &a,
        &["--question", "2..0"],
        &["invalid --question \"2..0\": the start is after the end"],
    );
    case.fails(&a, &["--answer", "-1..5"], &["invalid --answer"]);
}

#[test]
fn bad_layers_tensors_and_config() {
    let case = Case::new("options");
    let a = case.attention.clone();
    case.fails(
        &a,
        &["--layers", "0..2"],
        &["--layers needs attention with a layer axis"],
    );
    case.fails(
        &a,
        &["--tensor", "attn"],
        &["--tensor applies to .safetensors files"],
    );

    let values = random_attention(3, 1, 5, 2);
    let four = case.dir.join("four.npy");
    write_npy(&four, &[3, 1, 5, 5], &values, Dtype::F64);
    case.fails(
        &four,
        &["--layers", "1..7"],
        &["invalid layer selection: layer range ends past the last layer"],
    );
    case.fails(
        &four,
        &["--layers", "middle-ish"],
        &["invalid --layers \"middle-ish\""],
    );
    case.fails(&four, &["--layers", "2,2"], &["layer listed twice"]);

    let st = case.dir.join("two.safetensors");
    write_safetensors(
        &st,
        &[
            ("attn", vec![5, 5], &WORKED_EXAMPLE[..]),
            ("other", vec![5, 5], &WORKED_EXAMPLE[..]),
        ],
        Dtype::F64,
    );
    case.fails(
        &st,
        &["--tensor", "missing"],
        &["no tensor named \"missing\""],
    );
    case.fails(&st, &[], &["\"attn\" has no layer number", "--tensor"]);
    let mixed = case.dir.join("mixed.safetensors");
    write_safetensors(
        &mixed,
        &[
            ("layer.0", vec![5, 5], &WORKED_EXAMPLE[..]),
            ("layer.1", vec![1, 5, 5], &WORKED_EXAMPLE[..]),
            ("layer.2", vec![25], &WORKED_EXAMPLE[..]),
        ],
        Dtype::F64,
    );
    case.fails(
        &mixed,
        &[],
        &["per-layer tensor \"layer.2\" has shape [25]"],
    );

    let config = case.file("config.json", br#"{"rho": 0.4, "gama_flow": 2}"#);
    case.fails(
        &a,
        &["--config", arg(&config)],
        &["bad --config", "unknown field `gama_flow`"],
    );
    let config = case.file("rho.json", br#"{"rho": 1.5}"#);
    case.fails(
        &a,
        &["--config", arg(&config)],
        &["invalid rho: must lie in [0, 1]"],
    );
    let config = case.file("mode.json", br#"{"answer_mode": "sideways"}"#);
    case.fails(
        &a,
        &["--config", arg(&config)],
        &["bad --config", "sideways"],
    );
    let missing = case.dir.join("missing.json");
    case.fails(
        &a,
        &["--config", arg(&missing)],
        &["cannot read --config", "missing.json"],
    );
}

#[test]
fn unwritable_out_leaves_nothing() {
    let case = Case::new("unwritable");
    let out = case.dir.join("no-such-dir").join("out.json");
    assert_fails(
        &[
            "score",
            "--attention",
            arg(&case.attention),
            "--question",
            "0..2",
            "--answer",
            "4..5",
            "--out",
            arg(&out),
        ],
        &["cannot write --out", "out.json"],
    );
    assert_dir_holds(&case.dir, &["attn.npy", "tokens.json"]);
}
