//! Helpers for running the `flowtracer` binary on files the tests write.

use core::sync::atomic::{AtomicUsize, Ordering};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Aggregated attention of [method §12](docs/method.md#s12) (row k = query k over keys 0..=k), dense 5 x 5.
pub(crate) const WORKED_EXAMPLE: [f64; 25] = [
    1.0, 0.0, 0.0, 0.0, 0.0, //
    0.5, 0.5, 0.0, 0.0, 0.0, //
    0.3, 0.5, 0.2, 0.0, 0.0, //
    0.1, 0.2, 0.3, 0.4, 0.0, //
    0.1, 0.1, 0.6, 0.1, 0.1, //
];

/// A fresh, empty directory for one test under the target directory.
pub(crate) fn temp_dir(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "cli-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the binary with `args`.
pub(crate) fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flowtracer"))
        .args(args)
        .output()
        .expect("the flowtracer binary runs")
}

/// Runs the binary, asserts success, and parses its standard output as JSON.
pub(crate) fn run_json(args: &[&str]) -> serde_json::Value {
    let out = run(args);
    assert!(
        out.status.success(),
        "flowtracer {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

/// Reads a JSON file the binary wrote.
pub(crate) fn read_json(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Asserts the binary failed with exit code 2 and one line on stderr containing every
/// string of `needles`; returns that line.
pub(crate) fn assert_fails(args: &[&str], needles: &[&str]) -> String {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "flowtracer {args:?} should exit with 2; stderr: {stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing on stdout on error");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {stderr:?}");
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "stderr {:?} should contain {needle:?}",
            lines[0]
        );
    }
    lines[0].to_owned()
}

/// Asserts `dir` holds exactly the files named in `expected` (no output, no temp file).
pub(crate) fn assert_dir_holds(dir: &Path, expected: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    expected.sort();
    assert_eq!(names, expected, "files in {}", dir.display());
}

/// A path as a `&str` argument.
pub(crate) fn arg(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Element types the writers support.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Dtype {
    F32,
    F64,
}

fn encode(values: &[f64], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values
            .iter()
            .flat_map(|&v| (v as f32).to_le_bytes())
            .collect(),
        Dtype::F64 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// The bytes of a `.npy` file (version 1.0, C order) written as `numpy.save` does.
pub(crate) fn npy_bytes(shape: &[usize], values: &[f64], dtype: Dtype) -> Vec<u8> {
    let descr = match dtype {
        Dtype::F32 => "<f4",
        Dtype::F64 => "<f8",
    };
    npy_raw(descr, shape, &encode(values, dtype))
}

/// The bytes of a `.npy` file with any descr and raw data.
pub(crate) fn npy_raw(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    let shape_text = if shape.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&u16::try_from(header.len()).unwrap().to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Writes a `.npy` file.
pub(crate) fn write_npy(path: &Path, shape: &[usize], values: &[f64], dtype: Dtype) {
    std::fs::write(path, npy_bytes(shape, values, dtype)).unwrap();
}

/// Writes a `.safetensors` file of `(name, dtype string, shape, raw bytes)` tensors.
pub(crate) fn write_safetensors_raw(path: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) {
    let mut header = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    let mut buffer = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
        header.push_str(&format!(
            ",\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            dims.join(","),
            buffer.len(),
            buffer.len() + bytes.len()
        ));
        buffer.extend_from_slice(bytes);
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&buffer);
    std::fs::write(path, out).unwrap();
}

/// Writes a `.safetensors` file of float tensors.
pub(crate) fn write_safetensors(path: &Path, tensors: &[(&str, Vec<usize>, &[f64])], dtype: Dtype) {
    let name = match dtype {
        Dtype::F32 => "F32",
        Dtype::F64 => "F64",
    };
    let raw: Vec<(&str, &str, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| (*n, name, s.clone(), encode(v, dtype)))
        .collect();
    write_safetensors_raw(path, &raw);
}

/// Deterministic causal, row-stochastic attention `[layers][heads][n][n]` (SplitMix64).
pub(crate) fn random_attention(layers: usize, heads: usize, n: usize, seed: u64) -> Vec<f64> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut out = vec![0.0; layers * heads * n * n];
    for m in 0..layers * heads {
        for k in 0..n {
            let row = &mut out[(m * n + k) * n..(m * n + k) * n + n];
            let mut sum = 0.0;
            for v in &mut row[..=k] {
                // Skewed weights so that some edges dominate.
                *v = next().powi(3) + 1e-3;
                sum += *v;
            }
            for v in &mut row[..=k] {
                *v /= sum;
            }
        }
    }
    out
}

/// Asserts two JSON number arrays equal `expected` within `tol` (relative + absolute).
pub(crate) fn assert_close(what: &str, actual: &serde_json::Value, expected: &[f64], tol: f64) {
    let actual: Vec<f64> = actual
        .as_array()
        .unwrap_or_else(|| panic!("{what} is an array"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tol * (1.0 + e.abs()),
            "{what}[{i}]: {a} vs {e}"
        );
    }
}

/// A JSON array of unsigned integers.
pub(crate) fn usizes(value: &serde_json::Value) -> Vec<usize> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| usize::try_from(v.as_u64().unwrap()).unwrap())
        .collect()
}
