//! Memory bounds of the readers on hostile headers, measured with the counting allocator of
//! `lib.rs`: a whole `read_safetensors` call peaks at most at 4× the file size + 64 KiB
//! (`docs/robustness.md`), and `__metadata__` costs nothing however many values it holds.

use flowtracer_io::{SafeTensors, read_safetensors};

use crate::alloc_count::peak_during;
use crate::readers::raw_safetensors;

const SLACK: usize = 64 * 1024;

/// Parses `file` fully, prints the peak heap as a multiple of the file size, asserts the
/// documented bound, and returns the peak.
fn peak_of(what: &str, file: &[u8]) -> usize {
    let (result, peak) = peak_during(|| read_safetensors(file));
    let tensors = result.unwrap_or_else(|e| panic!("{what}: {e}"));
    drop(tensors);
    println!(
        "{what}: {} bytes, peak heap {peak} bytes ({:.2}x the file)",
        file.len(),
        peak as f64 / file.len() as f64
    );
    assert!(
        peak <= 4 * file.len() + SLACK,
        "{what}: peak {peak} bytes for a {}-byte file",
        file.len()
    );
    peak
}

fn metadata_file(values: &str) -> Vec<u8> {
    raw_safetensors(&format!(r#"{{"__metadata__":{values}}}"#), &[])
}

/// Issue 14, item 8: a `__metadata__` of millions of tiny values peaked at 12–19× the file
/// (each value became a node of a JSON tree). Now the values are skipped, not stored.
#[test]
fn metadata_of_a_million_tiny_values_is_not_stored() {
    let n = 1_000_000;
    let list = metadata_file(&format!(r#"{{"v":[{}0]}}"#, "0,".repeat(n - 1)));
    let keys: Vec<String> = (0..n).map(|i| format!(r#""{i}":0"#)).collect();
    let object = metadata_file(&format!("{{{}}}", keys.join(",")));
    let strings = metadata_file(&format!(r#"{{"s":[{}""]}}"#, r#""","#.repeat(n - 1)));
    let nested = metadata_file(&format!(r#"{{"n":[{}[]]}}"#, "[[[[[]]]]],".repeat(n / 10)));
    for (what, file) in [
        ("1e6 numbers in a list", &list),
        ("1e6 keys", &object),
        ("1e6 empty strings", &strings),
        ("nested empty lists", &nested),
    ] {
        let peak = peak_of(what, file);
        assert!(peak <= SLACK, "{what}: metadata allocated {peak} bytes");
    }
}

/// Many small tensor entries: each becomes a `TensorInfo` (and an output pair), which must
/// stay within the bound for the smallest entries the format allows.
#[test]
fn many_tiny_tensor_entries_stay_within_four_times_the_file() {
    let entries = |count: usize, shape: &str| {
        let body: Vec<String> = (0..count)
            .map(|i| format!(r#""{i}":{{"dtype":"F32","shape":[{shape}],"data_offsets":[0,0]}}"#))
            .collect();
        raw_safetensors(&format!("{{{}}}", body.join(",")), &[])
    };
    peak_of("1e5 rank-1 entries", &entries(100_000, "0"));
    let rank32 = vec!["0"; flowtracer_io::MAX_RANK].join(",");
    peak_of("2e4 rank-32 entries", &entries(20_000, &rank32));
    // One name of 500,000 escaped characters.
    let name = "\\n".repeat(500_000);
    let one = raw_safetensors(
        &format!(r#"{{"{name}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}}}"#),
        &[],
    );
    peak_of("one long escaped name", &one);
}

/// `SafeTensors::parse` alone (what `flowtracer score` keeps while it reads per-layer
/// tensors) stays within 4× the header, with the smallest entries the format allows (an
/// empty dtype of unknown size, rank 0) and with the largest shapes.
#[test]
fn parse_alone_stays_within_four_times_the_header() {
    let rank32 = vec!["0"; flowtracer_io::MAX_RANK].join(",");
    for (count, shape) in [(100_000, ""), (20_000, rank32.as_str())] {
        let body: Vec<String> = (0..count)
            .map(|i| format!(r#""{i}":{{"dtype":"","shape":[{shape}],"data_offsets":[0,0]}}"#))
            .collect();
        let file = raw_safetensors(&format!("{{{}}}", body.join(",")), &[]);
        let (parsed, peak) = peak_during(|| SafeTensors::parse(&file).map(|f| f.tensors().len()));
        assert_eq!(parsed, Ok(count));
        let header = file.len() - 8;
        println!(
            "parse, {count} entries of rank {}: header {header} bytes, peak {peak} bytes ({:.2}x)",
            shape.split(',').filter(|d| !d.is_empty()).count(),
            peak as f64 / header as f64
        );
        assert!(peak <= 4 * header + SLACK, "peak {peak}");
    }
}
