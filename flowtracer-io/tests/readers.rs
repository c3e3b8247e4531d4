//! The `.npy` and `.safetensors` readers on valid and bad files.
//!
//! The files are produced by small writers in this module, written from the format
//! descriptions independently of the readers.

use flowtracer_io::{Array, Data, Error, SafeTensors, read_npy, read_safetensors};

/// Writes a `.npy` file the way `numpy.save` does: header padded with spaces to a multiple of
/// 64 bytes and ended by a newline.
fn npy(version: u8, descr: &str, fortran: bool, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let shape_text = match shape {
        [] => "()".to_owned(),
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let fortran = if fortran { "True" } else { "False" };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape_text}, }}");
    let len_size = if version == 1 { 2 } else { 4 };
    while (10 + len_size - 2 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY".to_vec();
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&u16::try_from(header.len()).unwrap().to_le_bytes());
    } else {
        out.extend_from_slice(&u32::try_from(header.len()).unwrap().to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn f32_le(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn f64_le(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// One safetensors entry: name, dtype, shape, raw bytes.
type Entry<'a> = (&'a str, &'a str, &'a [usize], Vec<u8>);

/// Writes a safetensors file with the tensors stored in the given order.
fn safetensors(entries: &[Entry<'_>], metadata: bool) -> Vec<u8> {
    let mut header = String::from("{");
    if metadata {
        header.push_str(r#""__metadata__":{"format":"pt"},"#);
    }
    let mut offset = 0;
    let mut buffer = Vec::new();
    for (index, (name, dtype, shape, bytes)) in entries.iter().enumerate() {
        if index > 0 {
            header.push(',');
        }
        let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
        header.push_str(&format!(
            r#""{name}":{{"dtype":"{dtype}","shape":[{}],"data_offsets":[{offset},{}]}}"#,
            dims.join(","),
            offset + bytes.len()
        ));
        offset += bytes.len();
        buffer.extend_from_slice(bytes);
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    raw_safetensors(&header, &buffer)
}

pub(crate) fn raw_safetensors(header: &str, buffer: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(buffer);
    out
}

// ----- .npy: valid files -----

#[test]
fn npy_f32_and_f64_in_every_version() {
    let values = [1.0, 0.0, 0.25, 0.75, -3.5, f64::from(f32::MIN_POSITIVE)];
    for version in [1, 2, 3] {
        let file = npy(version, "<f8", false, &[2, 3], &f64_le(&values));
        let array = read_npy(&file).unwrap();
        assert_eq!(array.shape, [2, 3]);
        assert_eq!(array.data, Data::F64(values.to_vec()));

        let values32: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        let file = npy(version, "<f4", false, &[3, 2], &f32_le(&values32));
        let array = read_npy(&file).unwrap();
        assert_eq!(array.shape, [3, 2]);
        assert_eq!(array.rank(), 2);
        assert_eq!(array.data, Data::F32(values32));
    }
}

#[test]
fn npy_big_endian() {
    let values = [0.5f64, -2.0, 7.25];
    let be: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
    let array = read_npy(&npy(1, ">f8", false, &[3], &be)).unwrap();
    assert_eq!(array.data, Data::F64(values.to_vec()));

    let values = [0.5f32, -2.0];
    let be: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
    let array = read_npy(&npy(1, ">f4", false, &[2], &be)).unwrap();
    assert_eq!(array.data, Data::F32(values.to_vec()));
}

#[test]
fn npy_fortran_order_is_returned_in_c_order() {
    // C-order [[[0,1,2],[3,4,5]],[[6,7,8],[9,10,11]]] of shape (2,2,3) stored column-major:
    // element (i,j,k) at offset i + 2 j + 4 k.
    let shape = [2usize, 2, 3];
    let mut column_major = vec![0.0f64; 12];
    for i in 0..2 {
        for j in 0..2 {
            for k in 0..3 {
                column_major[i + 2 * j + 4 * k] = (i * 6 + j * 3 + k) as f64;
            }
        }
    }
    let array = read_npy(&npy(1, "<f8", true, &shape, &f64_le(&column_major))).unwrap();
    assert_eq!(array.shape, shape);
    assert_eq!(array.data, Data::F64((0..12).map(f64::from).collect()));
}

#[test]
fn npy_float16_is_widened_exactly() {
    // 1.0, -2.0, 0.5, smallest subnormal 2^-24, infinity, 65504 (max), 0.
    let bits: [u16; 7] = [0x3c00, 0xc000, 0x3800, 0x0001, 0x7c00, 0x7bff, 0x0000];
    let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    let array = read_npy(&npy(1, "<f2", false, &[7], &bytes)).unwrap();
    let expected = vec![1.0, -2.0, 0.5, 2f32.powi(-24), f32::INFINITY, 65504.0, 0.0];
    assert_eq!(array.data, Data::F32(expected));
    // NaN stays NaN.
    let array = read_npy(&npy(1, "<f2", false, &[1], &0x7e00u16.to_le_bytes())).unwrap();
    let Data::F32(v) = array.data else {
        panic!("f16 decodes to F32")
    };
    assert!(v[0].is_nan());
}

#[test]
fn npy_scalar_and_empty_arrays() {
    let array = read_npy(&npy(1, "<f8", false, &[], &f64_le(&[4.0]))).unwrap();
    assert_eq!(array.shape, Vec::<usize>::new());
    assert_eq!(array.data, Data::F64(vec![4.0]));

    let array = read_npy(&npy(1, "<f4", false, &[0, 5], &[])).unwrap();
    assert_eq!(array.shape, [0, 5]);
    assert!(array.data.is_empty());
}

#[test]
fn npy_header_variants_numpy_may_write() {
    // Key order, double quotes, Python 2 longs, no trailing comma.
    let header = r#"{"shape": (2L,), "fortran_order": False, "descr": "<f8"}"#;
    let mut file = b"\x93NUMPY\x01\x00".to_vec();
    file.extend_from_slice(&(header.len() as u16).to_le_bytes());
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&f64_le(&[1.0, 2.0]));
    assert_eq!(read_npy(&file).unwrap().data, Data::F64(vec![1.0, 2.0]));
}

#[test]
fn data_into_f64_is_exact() {
    assert_eq!(
        Data::F32(vec![0.1, 2.0]).into_f64(),
        [f64::from(0.1f32), 2.0]
    );
    assert_eq!(Data::F64(vec![0.1]).into_f64(), [0.1]);
}

// ----- .npy: bad input -----

#[test]
fn npy_bad_magic_and_version() {
    assert_eq!(read_npy(b""), Err(Error::BadMagic { format: "npy" }));
    assert_eq!(
        read_npy(b"\x93NUMPZ\x01\x00"),
        Err(Error::BadMagic { format: "npy" })
    );
    let mut file = npy(1, "<f8", false, &[1], &f64_le(&[1.0]));
    file[6] = 4;
    assert_eq!(
        read_npy(&file),
        Err(Error::UnsupportedVersion { major: 4, minor: 0 })
    );
}

#[test]
fn npy_truncated_data_names_the_sizes() {
    let file = npy(1, "<f8", false, &[2, 2], &f64_le(&[1.0, 0.0, 0.5]));
    let err = read_npy(&file).unwrap_err();
    assert_eq!(
        err,
        Error::Truncated {
            what: "data".to_owned(),
            needed: 32,
            available: 24
        }
    );
    assert_eq!(
        err.to_string(),
        "truncated file: data needs 32 bytes but only 24 are present"
    );
}

#[test]
fn npy_truncated_header() {
    let file = npy(1, "<f8", false, &[1], &f64_le(&[1.0]));
    let err = read_npy(&file[..20]).unwrap_err();
    assert!(
        matches!(&err, Error::Truncated { what, .. } if what == "header"),
        "{err:?}"
    );
}

#[test]
fn npy_trailing_bytes() {
    let mut file = npy(1, "<f8", false, &[1], &f64_le(&[1.0]));
    file.push(0);
    let err = read_npy(&file).unwrap_err();
    assert!(matches!(err, Error::TrailingBytes { .. }), "{err:?}");
    assert!(err.to_string().contains("1 unexpected bytes"), "{err}");
}

#[test]
fn npy_wrong_dtype_is_named() {
    let file = npy(1, "<i8", false, &[1], &1i64.to_le_bytes());
    let err = read_npy(&file).unwrap_err();
    assert_eq!(
        err,
        Error::UnsupportedDtype {
            dtype: "<i8".to_owned()
        }
    );
    assert_eq!(
        err.to_string(),
        "unsupported dtype \"<i8\": expected a float type (float16, bfloat16, float32 or float64)"
    );
    // A structured dtype.
    let header = "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }";
    let mut file = b"\x93NUMPY\x01\x00".to_vec();
    file.extend_from_slice(&(header.len() as u16).to_le_bytes());
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&1.0f32.to_le_bytes());
    assert_eq!(
        read_npy(&file),
        Err(Error::UnsupportedDtype {
            dtype: "[('a', '<f4')]".to_owned()
        })
    );
}

#[test]
fn npy_huge_shape_is_rejected_without_allocating() {
    // A tiny file claiming 2^62 elements: the reader must compare with the bytes present
    // instead of allocating (an allocation this large would abort the test process).
    let file = npy(1, "<f8", false, &[1 << 31, 1 << 31], &[]);
    assert!(matches!(read_npy(&file), Err(Error::ShapeOverflow { .. })));
    let file = npy(1, "<f8", false, &[1 << 20, 1 << 20], &[]);
    assert_eq!(
        read_npy(&file),
        Err(Error::Truncated {
            what: "data".to_owned(),
            needed: 8 << 40,
            available: 0
        })
    );
    let file = npy(1, "<f8", false, &[usize::MAX, 2], &[]);
    assert!(matches!(read_npy(&file), Err(Error::ShapeOverflow { .. })));
}

#[test]
fn npy_bad_headers() {
    let cases = [
        (
            "{'descr': '<f8', 'fortran_order': False}",
            "missing key 'shape'",
        ),
        (
            "{'fortran_order': False, 'shape': (1,)}",
            "missing key 'descr'",
        ),
        (
            "{'descr': '<f8', 'shape': (1,)}",
            "missing key 'fortran_order'",
        ),
        (
            "{'descr': '<f8', 'fortran_order': 0, 'shape': (1,)}",
            "unrecognised value",
        ),
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (-1,)}",
            "shape entry is not a non-negative integer",
        ),
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), 'x': 1}",
            "unexpected key \"x\"",
        ),
        (
            "{'descr': '<f8', 'descr': '<f8', 'fortran_order': False, 'shape': (1,)}",
            "duplicate key \"descr\"",
        ),
        ("['descr']", "expected a dict starting with '{'"),
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (1,)} x",
            "unexpected text after the dict",
        ),
    ];
    for (header, reason) in cases {
        let mut file = b"\x93NUMPY\x01\x00".to_vec();
        file.extend_from_slice(&(header.len() as u16).to_le_bytes());
        file.extend_from_slice(header.as_bytes());
        file.extend_from_slice(&f64_le(&[1.0]));
        assert_eq!(
            read_npy(&file),
            Err(Error::BadHeader {
                format: "npy",
                reason: reason.to_owned()
            }),
            "{header}"
        );
    }
}

#[test]
fn npy_every_prefix_and_every_byte_flip_is_handled() {
    let file = npy(
        1,
        "<f4",
        true,
        &[2, 3],
        &f32_le(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
    );
    assert!(read_npy(&file).is_ok());
    for end in 0..file.len() {
        assert!(read_npy(&file[..end]).is_err(), "prefix of {end} bytes");
    }
    let mut mutated = file.clone();
    for at in 0..file.len() {
        for byte in 0..=255u8 {
            mutated[at] = byte;
            // Must not panic; if it parses, the data matches the shape.
            if let Ok(Array { shape, data }) = read_npy(&mutated) {
                assert_eq!(shape.iter().product::<usize>(), data.len());
            }
        }
        mutated[at] = file[at];
    }
}

// ----- .safetensors: valid files -----

#[test]
fn safetensors_all_float_dtypes() {
    let f16: Vec<u8> = [0x3c00u16, 0x3800]
        .iter()
        .flat_map(|b| b.to_le_bytes())
        .collect();
    let bf16: Vec<u8> = [0x3f80u16, 0xc000]
        .iter()
        .flat_map(|b| b.to_le_bytes())
        .collect();
    let file = safetensors(
        &[
            (
                "layers.0.attn",
                "F32",
                &[1, 2, 2],
                f32_le(&[1.0, 0.0, 0.5, 0.5]),
            ),
            ("double", "F64", &[2], f64_le(&[0.25, 0.75])),
            ("half", "F16", &[2], f16),
            ("brain", "BF16", &[2], bf16),
        ],
        true,
    );
    let tensors = read_safetensors(&file).unwrap();
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["layers.0.attn", "double", "half", "brain"]);
    assert_eq!(tensors[0].1.shape, [1, 2, 2]);
    assert_eq!(tensors[0].1.data, Data::F32(vec![1.0, 0.0, 0.5, 0.5]));
    assert_eq!(tensors[1].1.data, Data::F64(vec![0.25, 0.75]));
    assert_eq!(tensors[2].1.data, Data::F32(vec![1.0, 0.5]));
    assert_eq!(tensors[3].1.data, Data::F32(vec![1.0, -2.0]));
}

#[test]
fn safetensors_index_and_selective_read() {
    let file = safetensors(
        &[
            (
                "ids",
                "I64",
                &[2],
                [1i64, 2].iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            ("attn", "F64", &[1, 1], f64_le(&[1.0])),
        ],
        false,
    );
    let parsed = SafeTensors::parse(&file).unwrap();
    assert_eq!(parsed.tensors().len(), 2);
    assert_eq!(parsed.tensors()[0].dtype, "I64");
    assert_eq!(parsed.tensors()[1].shape, [1, 1]);
    assert_eq!(parsed.read("attn").unwrap().data, Data::F64(vec![1.0]));
    assert_eq!(
        parsed.read("ids"),
        Err(Error::UnsupportedDtype {
            dtype: "I64".to_owned()
        })
    );
    assert_eq!(
        parsed.read("nope"),
        Err(Error::TensorNotFound {
            name: "nope".to_owned()
        })
    );
    // The all-tensors reader fails on the integer tensor.
    assert!(matches!(
        read_safetensors(&file),
        Err(Error::UnsupportedDtype { .. })
    ));
}

#[test]
fn safetensors_tensors_stored_out_of_header_order_and_escaped_names() {
    // Header lists b first but its bytes come second.
    let header = r#"{"b\u00e9":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"a\n":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut buffer = f32_le(&[1.0]);
    buffer.extend(f32_le(&[2.0]));
    let tensors = read_safetensors(&raw_safetensors(header, &buffer)).unwrap();
    assert_eq!(tensors[0].0, "b\u{e9}");
    assert_eq!(tensors[0].1.data, Data::F32(vec![2.0]));
    assert_eq!(tensors[1].0, "a\n");
}

#[test]
fn safetensors_empty_file_has_no_tensors() {
    assert_eq!(
        read_safetensors(&raw_safetensors("{}", &[])).unwrap(),
        vec![]
    );
}

// ----- .safetensors: bad input -----

#[test]
fn safetensors_truncated_header_and_data() {
    assert_eq!(
        read_safetensors(b"\x10\x00"),
        Err(Error::BadMagic {
            format: "safetensors"
        })
    );
    // Header length far beyond the file: no allocation, a clear error.
    let mut file = u64::MAX.to_le_bytes().to_vec();
    file.extend_from_slice(b"{}");
    assert_eq!(
        read_safetensors(&file),
        Err(Error::Truncated {
            what: "header".to_owned(),
            needed: u64::MAX,
            available: 2
        })
    );
    let file = safetensors(
        &[("attn", "F32", &[2, 2], f32_le(&[1.0, 0.0, 0.5, 0.5]))],
        false,
    );
    let err = read_safetensors(&file[..file.len() - 3]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "truncated file: tensor \"attn\" needs 16 bytes but only 13 are present"
    );
}

#[test]
fn safetensors_offsets_must_tile_the_buffer() {
    let two = f32_le(&[1.0, 2.0]);
    let gap = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    assert!(matches!(
        read_safetensors(&raw_safetensors(gap, &two)),
        Err(Error::BadOffsets { ref reason, .. }) if reason.contains("gap")
    ));
    let overlap = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    assert!(matches!(
        read_safetensors(&raw_safetensors(overlap, &two)),
        Err(Error::BadOffsets { ref reason, .. }) if reason.contains("overlaps")
    ));
    let short = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    assert_eq!(
        read_safetensors(&raw_safetensors(short, &two)),
        Err(Error::TrailingBytes {
            expected: 8 + short.len() as u64 + 4,
            actual: 8 + short.len() as u64 + 8
        })
    );
    let mismatch = r#"{"a":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}}"#;
    assert_eq!(
        read_safetensors(&raw_safetensors(mismatch, &two)),
        Err(Error::SizeMismatch {
            name: "a".to_owned(),
            expected: 16,
            actual: 8
        })
    );
    let reversed = r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}"#;
    assert!(matches!(
        read_safetensors(&raw_safetensors(reversed, &two)),
        Err(Error::BadOffsets { .. })
    ));
}

#[test]
fn safetensors_bad_headers() {
    let cases = [
        ("[]", "header is not a JSON object"),
        ("{", "unexpected end of JSON"),
        (r#"{"a":1}"#, "entry \"a\" is not an object"),
        (
            r#"{"a":{"dtype":"F32","shape":[1]}}"#,
            "tensor \"a\" has bad data_offsets",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}}"#,
            "tensor \"a\" has a bad shape",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,0]}}"#,
            "tensor \"a\" has a bad shape",
        ),
        (
            r#"{"a":{"dtype":5,"shape":[1],"data_offsets":[0,0]}}"#,
            "tensor \"a\" has no string dtype",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[],"data_offsets":[0,4],"x":null}}"#,
            "tensor \"a\" has an unexpected key \"x\"",
        ),
        (r#"{"__metadata__":[]}"#, "__metadata__ is not an object"),
        (r#"{} x"#, "unexpected text after the JSON object"),
        (
            r#"{"a":{"dtype":"F32","dtype":"F32","shape":[0],"data_offsets":[0,0]}}"#,
            "tensor \"a\" repeats key \"dtype\"",
        ),
        (
            r#"{"a":{"shape":[0],"data_offsets":[0,0]}}"#,
            "tensor \"a\" has no string dtype",
        ),
        (
            r#"{"a":{"dtype":"F32","data_offsets":[0,0]}}"#,
            "tensor \"a\" has a bad shape",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[1e400],"data_offsets":[0,0]}}"#,
            "tensor \"a\" has a bad shape",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0,0]}}"#,
            "tensor \"a\" has bad data_offsets",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[0]}}"#,
            "tensor \"a\" has bad data_offsets",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[-0,0]}}"#,
            "tensor \"a\" has bad data_offsets",
        ),
        (
            r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,18446744073709551616]}}"#,
            "tensor \"a\" has bad data_offsets",
        ),
    ];
    for (header, reason) in cases {
        assert_eq!(
            read_safetensors(&raw_safetensors(header, &[])),
            Err(Error::BadHeader {
                format: "safetensors",
                reason: reason.to_owned()
            }),
            "{header}"
        );
    }
    let dup = r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}"#;
    assert!(matches!(
        read_safetensors(&raw_safetensors(dup, &[])),
        Err(Error::BadHeader { ref reason, .. }) if reason.contains("duplicate")
    ));
    // JSON syntax errors carry serde_json's one-line message.
    assert!(matches!(
        read_safetensors(&raw_safetensors("{\"a\u{1}\":{}}", &[])),
        Err(Error::BadHeader { ref reason, .. }) if reason.starts_with("control character")
    ));
    let mut bad_utf8 = 2u64.to_le_bytes().to_vec();
    bad_utf8.extend_from_slice(&[0xff, 0xfe]);
    assert!(matches!(
        read_safetensors(&bad_utf8),
        Err(Error::BadHeader { ref reason, .. }) if reason.contains("UTF-8")
    ));
}

#[test]
fn safetensors_deep_nesting_is_rejected_not_a_stack_overflow() {
    let deep = format!(
        "{{\"__metadata__\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert_eq!(
        read_safetensors(&raw_safetensors(&deep, &[])),
        Err(Error::BadHeader {
            format: "safetensors",
            reason: "JSON nested too deeply".to_owned()
        })
    );
}

#[test]
fn safetensors_every_prefix_and_every_byte_flip_is_handled() {
    let file = safetensors(
        &[
            ("a", "F32", &[2], f32_le(&[1.0, 2.0])),
            ("b", "BF16", &[1], 0x3f80u16.to_le_bytes().to_vec()),
        ],
        true,
    );
    assert!(read_safetensors(&file).is_ok());
    for end in 0..file.len() {
        assert!(
            read_safetensors(&file[..end]).is_err(),
            "prefix of {end} bytes"
        );
    }
    let mut mutated = file.clone();
    for at in 0..file.len() {
        for byte in 0..=255u8 {
            mutated[at] = byte;
            if let Ok(tensors) = read_safetensors(&mutated) {
                for (_, Array { shape, data }) in tensors {
                    assert_eq!(shape.iter().product::<usize>(), data.len());
                }
            }
        }
        mutated[at] = file[at];
    }
}

#[test]
fn safetensors_nesting_depth_boundary() {
    // The root object and `__metadata__` are two levels; then `k` arrays.
    let nested = |k: usize| {
        format!(
            "{{\"__metadata__\":{{\"x\":{}{}}}}}",
            "[".repeat(k),
            "]".repeat(k)
        )
    };
    let limit = flowtracer_io::MAX_JSON_DEPTH;
    assert_eq!(
        read_safetensors(&raw_safetensors(&nested(limit - 2), &[])),
        Ok(vec![])
    );
    assert_eq!(
        read_safetensors(&raw_safetensors(&nested(limit - 1), &[])),
        Err(Error::BadHeader {
            format: "safetensors",
            reason: "JSON nested too deeply".to_owned()
        })
    );
}

#[test]
fn safetensors_metadata_may_hold_any_json_values() {
    let header = r#"{"__metadata__":{"format":"pt","n":1e400,"list":[1,-2.5,true,null,{"k":"v"}],"k\u00e9":{}},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let tensors = read_safetensors(&raw_safetensors(header, &f32_le(&[0.5]))).unwrap();
    assert_eq!(tensors.len(), 1);
    assert_eq!(tensors[0].1.data, Data::F32(vec![0.5]));
}

#[test]
fn safetensors_duplicate_reported_at_the_first_repeat_in_header_order() {
    let entry =
        |name: &str| format!(r#""{name}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}"#);
    let header = format!(
        "{{{},{},{},{}}}",
        entry("b"),
        entry("a"),
        entry("b"),
        entry("a")
    );
    assert_eq!(
        read_safetensors(&raw_safetensors(&header, &[])),
        Err(Error::BadHeader {
            format: "safetensors",
            reason: "duplicate tensor \"b\"".to_owned()
        })
    );
    // An escaped spelling of the same name is the same name.
    let header = format!("{{{},{}}}", entry("a"), entry("\\u0061"));
    assert!(matches!(
        read_safetensors(&raw_safetensors(&header, &[])),
        Err(Error::BadHeader { ref reason, .. }) if reason == "duplicate tensor \"a\""
    ));
}

#[test]
fn safetensors_rank_boundary() {
    let shape = |rank: usize| vec!["1"; rank].join(",");
    let header = |rank: usize| {
        format!(
            r#"{{"a":{{"dtype":"F32","shape":[{}],"data_offsets":[0,4]}}}}"#,
            shape(rank)
        )
    };
    let max = flowtracer_io::MAX_RANK;
    let ok = read_safetensors(&raw_safetensors(&header(max), &f32_le(&[1.0]))).unwrap();
    assert_eq!(ok[0].1.shape, vec![1; max]);
    assert_eq!(
        read_safetensors(&raw_safetensors(&header(max + 1), &f32_le(&[1.0]))),
        Err(Error::BadHeader {
            format: "safetensors",
            reason: "tensor \"a\" has a bad shape".to_owned()
        })
    );
}

#[test]
fn safetensors_lookup_by_name() {
    let file = safetensors(
        &[
            ("layers.10", "F32", &[1], f32_le(&[10.0])),
            ("layers.2", "F32", &[1], f32_le(&[2.0])),
            ("layers.1", "F64", &[1], f64_le(&[1.0])),
        ],
        true,
    );
    let parsed = SafeTensors::parse(&file).unwrap();
    let names: Vec<&str> = parsed.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["layers.10", "layers.2", "layers.1"]);
    assert_eq!(parsed.get("layers.1").unwrap().dtype, "F64");
    assert_eq!(parsed.get("layers.2").unwrap().shape, [1]);
    assert!(parsed.get("layers.3").is_none());
    assert_eq!(
        parsed.read("layers.10").unwrap().data,
        Data::F32(vec![10.0])
    );
}

/// A view decodes any run of elements exactly as the whole read widens them, for every
/// dtype and byte order; a Fortran-order view says it cannot be read by runs.
#[test]
fn views_decode_runs_like_the_whole_read() {
    let values = [1.0f32, -0.5, 0.25, 3.0e-8, 65504.0, 0.1];
    let halves: Vec<u8> = [0x3C00u16, 0xB800, 0x3400, 0x0001, 0x7BFF, 0x2E66]
        .iter()
        .flat_map(|h| h.to_le_bytes())
        .collect();
    let big: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
    let wide: Vec<f64> = values.iter().map(|&v| f64::from(v) / 3.0).collect();
    for file in [
        npy(1, "<f4", false, &[2, 3], &f32_le(&values)),
        npy(1, ">f4", false, &[2, 3], &big),
        npy(1, "<f2", false, &[2, 3], &halves),
        npy(2, "<f8", false, &[2, 3], &f64_le(&wide)),
    ] {
        let view = flowtracer_io::view_npy(&file).unwrap();
        assert!(view.is_c_order());
        let whole = read_npy(&file).unwrap().data.into_f64();
        for start in 0..6 {
            for len in 0..=6 - start {
                let mut out = vec![f64::NAN; len];
                view.decode_f64_into(start, &mut out);
                assert_eq!(out, whole[start..start + len], "run {start}+{len}");
            }
        }
    }
    let fortran = npy(1, "<f4", true, &[2, 3], &f32_le(&values));
    let view = flowtracer_io::view_npy(&fortran).unwrap();
    assert!(!view.is_c_order());
    assert_eq!(view.decode(), read_npy(&fortran).unwrap());
    let one_axis = npy(1, "<f4", true, &[6], &f32_le(&values));
    assert!(flowtracer_io::view_npy(&one_axis).unwrap().is_c_order());
}
