//! Readers for NumPy `.npy` and `.safetensors` files that parse from bytes, with `alloc` only.
//!
//! These readers are how attention dumps from Python reach FlowTracer (`flowtracer score`
//! reads them), and they are written to be fed arbitrary bytes:
//!
//! - they never panic;
//! - they never allocate more than the input implies: every length and shape in a header is
//!   checked against the bytes actually present *before* anything is allocated for it, so a
//!   ten-byte file that claims a 2^60-element array is rejected without allocating. The
//!   decoded data of a file takes at most twice its size in bytes (16-bit floats are widened
//!   to `f32`), and parsing a header allocates at most a small multiple of the header's size;
//! - every failure is an [`IoError`] whose [`Display`](core::fmt::Display) is one line
//!   naming the problem (truncated, wrong dtype, bad header, ...).
//!
//! Floating-point data only: `f32` and `f64` are returned as they are; 16-bit floats
//! (`.npy` `<f2`, safetensors `F16` and `BF16`) are widened exactly to `f32`. Every other dtype
//! is an [`IoError::UnsupportedDtype`].
//!
//! # Formats
//!
//! - `.npy` versions 1.0, 2.0 and 3.0: magic `\x93NUMPY`, a little-endian header length, a
//!   Python dict literal with `descr`, `fortran_order` and `shape`, then the raw data.
//!   Little- and big-endian data are accepted; Fortran-order arrays are returned in C
//!   (row-major) order. The data must have exactly the size the header implies.
//! - `.safetensors`: an 8-byte little-endian header length, a JSON header mapping tensor names
//!   to `dtype`, `shape` and `data_offsets` (plus an optional `__metadata__` object), then the
//!   data buffer. As in the reference implementation, the tensors' byte ranges must tile the
//!   buffer exactly, in some order, with no gap, overlap or trailing bytes.
//!
//! # Examples
//!
//! ```
//! use flowtracer_core::io::{read_npy, Data};
//!
//! // A 2 x 2 float64 array, written by hand.
//! let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }";
//! let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
//! bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
//! bytes.extend_from_slice(header.as_bytes());
//! for v in [1.0f64, 0.0, 0.5, 0.5] {
//!     bytes.extend_from_slice(&v.to_le_bytes());
//! }
//! let array = read_npy(&bytes)?;
//! assert_eq!(array.shape, [2, 2]);
//! assert_eq!(array.data, Data::F64(vec![1.0, 0.0, 0.5, 0.5]));
//! # Ok::<(), flowtracer_core::io::IoError>(())
//! ```

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

/// The maximum nesting depth of a safetensors JSON header (deeper input is rejected, so
/// that hostile input cannot exhaust the stack).
pub const MAX_JSON_DEPTH: usize = 64;

/// The maximum rank of an array (more dimensions are rejected as a bad header).
pub const MAX_RANK: usize = 32;

/// The elements of a decoded array, in C (row-major) order.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// 32-bit floats (also 16-bit floats, widened exactly).
    F32(Vec<f32>),
    /// 64-bit floats.
    F64(Vec<f64>),
}

impl Data {
    /// The number of elements.
    #[must_use]
    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as `f64` (exact for both variants).
    ///
    /// # Complexity
    ///
    /// O(len) time; allocates a new vector only for [`Data::F32`].
    #[must_use]
    pub fn into_f64(self) -> Vec<f64> {
        match self {
            Data::F32(v) => v.into_iter().map(f64::from).collect(),
            Data::F64(v) => v,
        }
    }
}

/// A decoded n-dimensional array of floats.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    /// The dimensions, outermost first (an empty shape is a scalar with one element).
    pub shape: Vec<usize>,
    /// The elements in C order; `data.len()` is the product of `shape`.
    pub data: Data,
}

impl Array {
    /// The number of dimensions.
    #[must_use]
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
}

/// Why a file could not be read. Each `Display` is one line naming the problem.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IoError {
    /// The bytes do not start with the format's magic string (`.npy`) or are too short to
    /// hold the fixed-size preamble.
    BadMagic {
        /// The format that was expected, `"npy"` or `"safetensors"`.
        format: &'static str,
    },
    /// A `.npy` format version this reader does not know.
    UnsupportedVersion {
        /// Major version byte.
        major: u8,
        /// Minor version byte.
        minor: u8,
    },
    /// The file ends before a part that its header declares.
    Truncated {
        /// The part that is cut off (`"header"`, `"data"`, or a tensor name).
        what: String,
        /// The number of bytes that part needs.
        needed: u64,
        /// The number of bytes present for it.
        available: u64,
    },
    /// The file has bytes after the last part its header declares.
    TrailingBytes {
        /// The number of bytes the header accounts for.
        expected: u64,
        /// The number of bytes present.
        actual: u64,
    },
    /// The header could not be parsed or is inconsistent.
    BadHeader {
        /// The format, `"npy"` or `"safetensors"`.
        format: &'static str,
        /// What is wrong, in a few words.
        reason: String,
    },
    /// The element type is not a floating-point type this reader decodes.
    UnsupportedDtype {
        /// The dtype as written in the file (for example `<i8` or `I64`).
        dtype: String,
    },
    /// The product of the shape does not fit in memory addresses.
    ShapeOverflow {
        /// The shape as written.
        shape: Vec<u64>,
    },
    /// A safetensors tensor's byte range does not match its dtype and shape.
    SizeMismatch {
        /// The tensor.
        name: String,
        /// Bytes implied by dtype and shape.
        expected: u64,
        /// Bytes in its `data_offsets` range.
        actual: u64,
    },
    /// The safetensors tensors' byte ranges leave a gap, overlap, or run past the buffer.
    BadOffsets {
        /// The tensor at which the problem was found.
        name: String,
        /// What is wrong, in a few words.
        reason: String,
    },
    /// No tensor of that name in a safetensors file.
    TensorNotFound {
        /// The requested name.
        name: String,
    },
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoError::BadMagic { format } => write!(f, "not a .{format} file (bad magic bytes)"),
            IoError::UnsupportedVersion { major, minor } => {
                write!(f, "unsupported .npy format version {major}.{minor}")
            }
            IoError::Truncated {
                what,
                needed,
                available,
            } => write!(
                f,
                "truncated file: {what} needs {needed} bytes but only {available} are present"
            ),
            IoError::TrailingBytes { expected, actual } => write!(
                f,
                "corrupt file: {} unexpected bytes after the data (header accounts for {expected} of {actual})",
                actual.saturating_sub(*expected)
            ),
            IoError::BadHeader { format, reason } => {
                write!(f, "bad .{format} header: {reason}")
            }
            IoError::UnsupportedDtype { dtype } => write!(
                f,
                "unsupported dtype {dtype:?}: expected a float type (float32 or float64)"
            ),
            IoError::ShapeOverflow { shape } => {
                write!(f, "shape {shape:?} has more elements than can be addressed")
            }
            IoError::SizeMismatch {
                name,
                expected,
                actual,
            } => write!(
                f,
                "tensor {name:?}: dtype and shape imply {expected} bytes but data_offsets span {actual}"
            ),
            IoError::BadOffsets { name, reason } => {
                write!(f, "bad data_offsets at tensor {name:?}: {reason}")
            }
            IoError::TensorNotFound { name } => write!(f, "no tensor named {name:?} in the file"),
        }
    }
}

impl core::error::Error for IoError {}

/// Element types and their decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Float {
    F16,
    BF16,
    F32,
    F64,
}

impl Float {
    fn size(self) -> usize {
        match self {
            Float::F16 | Float::BF16 => 2,
            Float::F32 => 4,
            Float::F64 => 8,
        }
    }
}

/// Decodes `count` elements from `bytes` (whose length the caller checked to be exactly
/// `count * ty.size()`).
fn decode(bytes: &[u8], ty: Float, big_endian: bool) -> Data {
    fn arr<const K: usize>(chunk: &[u8], big_endian: bool) -> [u8; K] {
        let mut a = [0u8; K];
        a.copy_from_slice(chunk);
        if big_endian {
            a.reverse();
        }
        a
    }
    match ty {
        Float::F16 => Data::F32(
            bytes
                .chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes(arr(c, big_endian))))
                .collect(),
        ),
        Float::BF16 => Data::F32(
            bytes
                .chunks_exact(2)
                .map(|c| f32::from_bits(u32::from(u16::from_le_bytes(arr(c, big_endian))) << 16))
                .collect(),
        ),
        Float::F32 => Data::F32(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(arr(c, big_endian)))
                .collect(),
        ),
        Float::F64 => Data::F64(
            bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(arr(c, big_endian)))
                .collect(),
        ),
    }
}

/// IEEE 754 binary16 to binary32, exactly (NaN payloads kept, subnormals normalised).
fn f16_to_f32(h: u16) -> f32 {
    let negative = h & 0x8000 != 0;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let sign = if negative { 0x8000_0000u32 } else { 0 };
    let bits = match exp {
        0 if man == 0 => sign,
        0 => {
            // Subnormal: man * 2^-24, exact in f32.
            let v = (man as f32) * (1.0 / 16_777_216.0);
            return if negative { -v } else { v };
        }
        0x1f => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// The number of elements of `shape`, or an error if it overflows `usize`.
fn element_count(shape: &[usize]) -> Result<usize, IoError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| IoError::ShapeOverflow {
            shape: shape.iter().map(|&d| d as u64).collect(),
        })
}

// ---------------------------------------------------------------------------------------
// .npy
// ---------------------------------------------------------------------------------------

/// Reads a `.npy` file of float16, float32 or float64 from its bytes.
///
/// # Errors
///
/// [`IoError::BadMagic`] if the bytes do not start with `\x93NUMPY`,
/// [`IoError::UnsupportedVersion`], [`IoError::Truncated`] if the header or the data is cut
/// off, [`IoError::TrailingBytes`], [`IoError::BadHeader`] for a header that is not a dict
/// with `descr`, `fortran_order` and `shape`, [`IoError::UnsupportedDtype`] for any dtype
/// other than `<f2`, `<f4`, `<f8` (or their big-endian `>` forms), and
/// [`IoError::ShapeOverflow`].
///
/// # Complexity
///
/// O(header + data) time. Allocates the decoded data (at most twice the file size) and,
/// for Fortran-order input, one more array of the same size for the reordering.
///
/// # Examples
///
/// ```
/// use flowtracer_core::io::{read_npy, IoError};
///
/// assert_eq!(read_npy(b"PK\x03\x04"), Err(IoError::BadMagic { format: "npy" }));
/// ```
pub fn read_npy(bytes: &[u8]) -> Result<Array, IoError> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    if bytes.len() < MAGIC.len() + 2 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(IoError::BadMagic { format: "npy" });
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let len_size = match major {
        1 => 2usize,
        2 | 3 => 4,
        _ => return Err(IoError::UnsupportedVersion { major, minor }),
    };
    let rest = &bytes[8..];
    if rest.len() < len_size {
        return Err(IoError::Truncated {
            what: "header length".to_owned(),
            needed: len_size as u64,
            available: rest.len() as u64,
        });
    }
    let header_len = if len_size == 2 {
        usize::from(u16::from_le_bytes([rest[0], rest[1]]))
    } else {
        let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        usize::try_from(n).unwrap_or(usize::MAX)
    };
    let rest = &rest[len_size..];
    if rest.len() < header_len {
        return Err(IoError::Truncated {
            what: "header".to_owned(),
            needed: header_len as u64,
            available: rest.len() as u64,
        });
    }
    let (header, data) = rest.split_at(header_len);
    let header = if major == 3 {
        core::str::from_utf8(header).map_err(|_| npy_bad("header is not valid UTF-8"))?
    } else {
        // Latin-1; every byte we accept in a header is ASCII.
        if !header.is_ascii() {
            return Err(npy_bad("header has non-ASCII bytes"));
        }
        core::str::from_utf8(header).map_err(|_| npy_bad("header is not ASCII"))?
    };
    let header = parse_npy_header(header)?;
    let count = element_count(&header.shape)?;
    let needed = count
        .checked_mul(header.ty.size())
        .ok_or_else(|| IoError::ShapeOverflow {
            shape: header.shape.iter().map(|&d| d as u64).collect(),
        })?;
    if data.len() < needed {
        return Err(IoError::Truncated {
            what: "data".to_owned(),
            needed: needed as u64,
            available: data.len() as u64,
        });
    }
    if data.len() > needed {
        return Err(IoError::TrailingBytes {
            expected: (bytes.len() - data.len() + needed) as u64,
            actual: bytes.len() as u64,
        });
    }
    let mut decoded = decode(data, header.ty, header.big_endian);
    if header.fortran_order && header.shape.len() > 1 {
        decoded = match decoded {
            Data::F32(v) => Data::F32(fortran_to_c(&v, &header.shape)),
            Data::F64(v) => Data::F64(fortran_to_c(&v, &header.shape)),
        };
    }
    Ok(Array {
        shape: header.shape,
        data: decoded,
    })
}

fn npy_bad(reason: &str) -> IoError {
    IoError::BadHeader {
        format: "npy",
        reason: reason.to_owned(),
    }
}

/// Reorders a column-major array into row-major order.
fn fortran_to_c<T: Copy>(src: &[T], shape: &[usize]) -> Vec<T> {
    let rank = shape.len();
    if src.is_empty() {
        return Vec::new();
    }
    // Column-major strides: axis 0 varies fastest. All products are <= src.len().
    let mut strides = [0usize; MAX_RANK];
    let mut stride = 1usize;
    for (s, &d) in strides.iter_mut().zip(shape) {
        *s = stride;
        stride *= d;
    }
    let mut index = [0usize; MAX_RANK];
    let mut offset = 0usize;
    let mut out = Vec::with_capacity(src.len());
    for _ in 0..src.len() {
        out.push(src[offset]);
        // Advance the row-major multi-index (last axis fastest), tracking the offset.
        let mut axis = rank;
        while axis > 0 {
            axis -= 1;
            index[axis] += 1;
            offset += strides[axis];
            if index[axis] < shape[axis] {
                break;
            }
            offset -= strides[axis] * shape[axis];
            index[axis] = 0;
        }
    }
    out
}

struct NpyHeader {
    ty: Float,
    big_endian: bool,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// A value of the header dict.
enum PyValue {
    Str(String),
    Bool(bool),
    Tuple(Vec<u64>),
    /// Anything else (lists for structured dtypes, numbers, ...), kept as its source text.
    Other(String),
}

fn parse_npy_header(text: &str) -> Result<NpyHeader, IoError> {
    let mut p = Cursor {
        s: text.as_bytes(),
        i: 0,
    };
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    p.ws();
    if !p.eat(b'{') {
        return Err(npy_bad("expected a dict starting with '{'"));
    }
    loop {
        p.ws();
        if p.eat(b'}') {
            break;
        }
        let key = match p.peek() {
            Some(q @ (b'\'' | b'"')) => p.py_str(q).ok_or_else(|| npy_bad("bad key string"))?,
            _ => return Err(npy_bad("expected a quoted key")),
        };
        p.ws();
        if !p.eat(b':') {
            return Err(npy_bad("expected ':' after a key"));
        }
        p.ws();
        let slot = match key.as_str() {
            "descr" => &mut descr,
            "fortran_order" => &mut fortran,
            "shape" => &mut shape,
            _ => return Err(npy_bad(&format!("unexpected key {key:?}"))),
        };
        if slot.replace(p.py_value()?).is_some() {
            return Err(npy_bad(&format!("duplicate key {key:?}")));
        }
        p.ws();
        if p.eat(b',') {
            continue;
        }
        p.ws();
        if p.eat(b'}') {
            break;
        }
        return Err(npy_bad("expected ',' or '}' after a value"));
    }
    p.ws();
    if p.i != p.s.len() {
        return Err(npy_bad("unexpected text after the dict"));
    }
    let (ty, big_endian) = match descr {
        None => return Err(npy_bad("missing key 'descr'")),
        Some(PyValue::Str(d)) => match d.as_str() {
            "<f2" => (Float::F16, false),
            ">f2" => (Float::F16, true),
            "<f4" => (Float::F32, false),
            ">f4" => (Float::F32, true),
            "<f8" => (Float::F64, false),
            ">f8" => (Float::F64, true),
            _ => return Err(IoError::UnsupportedDtype { dtype: d }),
        },
        Some(PyValue::Other(d)) => return Err(IoError::UnsupportedDtype { dtype: d }),
        Some(_) => return Err(npy_bad("'descr' is not a dtype string")),
    };
    let fortran_order = match fortran {
        None => return Err(npy_bad("missing key 'fortran_order'")),
        Some(PyValue::Bool(b)) => b,
        Some(_) => return Err(npy_bad("'fortran_order' is not True or False")),
    };
    let shape = match shape {
        None => return Err(npy_bad("missing key 'shape'")),
        Some(PyValue::Tuple(dims)) => dims,
        Some(_) => return Err(npy_bad("'shape' is not a tuple of integers")),
    };
    let shape = to_usize_shape(&shape)?;
    Ok(NpyHeader {
        ty,
        big_endian,
        fortran_order,
        shape,
    })
}

fn to_usize_shape(dims: &[u64]) -> Result<Vec<usize>, IoError> {
    dims.iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| IoError::ShapeOverflow {
            shape: dims.to_vec(),
        })
}

/// A byte cursor shared by the two header parsers.
struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, w: &[u8]) -> bool {
        if self.s[self.i..].starts_with(w) {
            self.i += w.len();
            true
        } else {
            false
        }
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// A Python string literal without escapes other than `\\` and the quote.
    fn py_str(&mut self, quote: u8) -> Option<String> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.peek()? {
                b'\\' => {
                    self.i += 1;
                    out.push(self.peek()?);
                    self.i += 1;
                }
                c if c == quote => {
                    self.i += 1;
                    return String::from_utf8(out).ok();
                }
                c => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }

    /// An unsigned decimal integer, optionally followed by Python 2's `L`.
    fn py_int(&mut self) -> Option<u64> {
        let start = self.i;
        let mut v = 0u64;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            self.i += 1;
        }
        if self.i == start {
            return None;
        }
        self.eat(b'L');
        Some(v)
    }

    fn py_value(&mut self) -> Result<PyValue, IoError> {
        match self.peek() {
            Some(q @ (b'\'' | b'"')) => self
                .py_str(q)
                .map(PyValue::Str)
                .ok_or_else(|| npy_bad("unterminated string")),
            Some(b'(') => {
                self.i += 1;
                let mut dims = Vec::new();
                loop {
                    self.ws();
                    if self.eat(b')') {
                        return Ok(PyValue::Tuple(dims));
                    }
                    if dims.len() == MAX_RANK {
                        return Err(npy_bad("too many dimensions"));
                    }
                    let d = self
                        .py_int()
                        .ok_or_else(|| npy_bad("shape entry is not a non-negative integer"))?;
                    dims.push(d);
                    self.ws();
                    if !self.eat(b',') {
                        self.ws();
                        if self.eat(b')') {
                            return Ok(PyValue::Tuple(dims));
                        }
                        return Err(npy_bad("expected ',' or ')' in the shape"));
                    }
                }
            }
            _ if self.eat_word(b"True") => Ok(PyValue::Bool(true)),
            _ if self.eat_word(b"False") => Ok(PyValue::Bool(false)),
            Some(b'[') => {
                // A structured dtype: skip the balanced brackets, strings included.
                let start = self.i;
                let mut depth = 0usize;
                loop {
                    match self.peek() {
                        None => return Err(npy_bad("unbalanced brackets")),
                        Some(b'[' | b'(') => {
                            depth += 1;
                            self.i += 1;
                        }
                        Some(b']' | b')') => {
                            depth -= 1;
                            self.i += 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        Some(q @ (b'\'' | b'"')) => {
                            self.py_str(q)
                                .ok_or_else(|| npy_bad("unterminated string"))?;
                        }
                        Some(_) => self.i += 1,
                    }
                }
                let text = core::str::from_utf8(&self.s[start..self.i]).unwrap_or("[...]");
                Ok(PyValue::Other(text.to_owned()))
            }
            _ => Err(npy_bad("unrecognised value")),
        }
    }
}

// ---------------------------------------------------------------------------------------
// .safetensors
// ---------------------------------------------------------------------------------------

/// One tensor's entry in a safetensors header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name.
    pub name: String,
    /// The dtype as written (`"F32"`, `"BF16"`, `"I64"`, ...).
    pub dtype: String,
    /// The dimensions, outermost first.
    pub shape: Vec<usize>,
    /// The tensor's bytes, as a range into the whole file.
    pub bytes: Range<usize>,
}

/// A parsed safetensors file: its header, and its bytes borrowed for decoding tensors on
/// demand.
#[derive(Clone, Debug)]
pub struct SafeTensors<'a> {
    bytes: &'a [u8],
    tensors: Vec<TensorInfo>,
}

impl<'a> SafeTensors<'a> {
    /// Parses and validates the header of a safetensors file.
    ///
    /// Checks every tensor's dtype size, shape and byte range against the file before
    /// anything else is done, so that [`read`](Self::read) only decodes.
    ///
    /// # Errors
    ///
    /// [`IoError::BadMagic`] if the file is shorter than 8 bytes, [`IoError::Truncated`] if
    /// the header is cut off, [`IoError::BadHeader`] for a header that is not the expected
    /// JSON, [`IoError::ShapeOverflow`], [`IoError::SizeMismatch`] and
    /// [`IoError::BadOffsets`] (which also reports a data buffer that is cut off).
    ///
    /// # Complexity
    ///
    /// O(header + T log T) time for T tensors; allocates O(header) memory.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, IoError> {
        if bytes.len() < 8 {
            return Err(IoError::BadMagic {
                format: "safetensors",
            });
        }
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(&bytes[..8]);
        let header_len = u64::from_le_bytes(len8);
        let available = (bytes.len() - 8) as u64;
        if header_len > available {
            return Err(IoError::Truncated {
                what: "header".to_owned(),
                needed: header_len,
                available,
            });
        }
        // header_len <= bytes.len(), so it fits in usize.
        let header_end = 8 + header_len as usize;
        let header = &bytes[8..header_end];
        let text = core::str::from_utf8(header).map_err(|_| st_bad("header is not UTF-8"))?;
        let mut p = Cursor {
            s: text.as_bytes(),
            i: 0,
        };
        p.ws();
        let root = p.json(0)?;
        p.ws();
        if p.i != p.s.len() {
            return Err(st_bad("unexpected text after the JSON object"));
        }
        let Json::Obj(entries) = root else {
            return Err(st_bad("header is not a JSON object"));
        };
        let buffer_len = bytes.len() - header_end;
        let mut tensors = Vec::with_capacity(entries.len());
        for (name, value) in entries {
            if name == "__metadata__" {
                if !matches!(value, Json::Obj(_)) {
                    return Err(st_bad("__metadata__ is not an object"));
                }
                continue;
            }
            if tensors.iter().any(|t: &TensorInfo| t.name == name) {
                return Err(st_bad(&format!("duplicate tensor {name:?}")));
            }
            let Json::Obj(fields) = value else {
                return Err(st_bad(&format!("entry {name:?} is not an object")));
            };
            let (mut dtype, mut shape, mut offsets) = (None, None, None);
            for (key, v) in fields {
                let slot = match key.as_str() {
                    "dtype" => &mut dtype,
                    "shape" => &mut shape,
                    "data_offsets" => &mut offsets,
                    _ => {
                        return Err(st_bad(&format!(
                            "tensor {name:?} has an unexpected key {key:?}"
                        )));
                    }
                };
                if slot.replace(v).is_some() {
                    return Err(st_bad(&format!("tensor {name:?} repeats key {key:?}")));
                }
            }
            let Some(Json::Str(dtype)) = dtype else {
                return Err(st_bad(&format!("tensor {name:?} has no string dtype")));
            };
            let shape = match shape {
                Some(Json::Arr(dims)) if dims.len() <= MAX_RANK => dims
                    .iter()
                    .map(|d| d.as_u64(header))
                    .collect::<Option<Vec<u64>>>()
                    .ok_or_else(|| st_bad(&format!("tensor {name:?} has a bad shape")))?,
                _ => return Err(st_bad(&format!("tensor {name:?} has a bad shape"))),
            };
            let shape = to_usize_shape(&shape)?;
            let (begin, end) = match offsets {
                Some(Json::Arr(o)) if o.len() == 2 => {
                    match (o[0].as_u64(header), o[1].as_u64(header)) {
                        (Some(b), Some(e)) => (b, e),
                        _ => return Err(st_bad(&format!("tensor {name:?} has bad data_offsets"))),
                    }
                }
                _ => return Err(st_bad(&format!("tensor {name:?} has bad data_offsets"))),
            };
            if begin > end {
                return Err(IoError::BadOffsets {
                    name,
                    reason: format!("begin {begin} is after end {end}"),
                });
            }
            if end > buffer_len as u64 {
                return Err(IoError::Truncated {
                    what: format!("tensor {name:?}"),
                    needed: end,
                    available: buffer_len as u64,
                });
            }
            let count = element_count(&shape)?;
            if let Some(size) = st_dtype_size(&dtype) {
                let expected =
                    (count as u64)
                        .checked_mul(size)
                        .ok_or_else(|| IoError::ShapeOverflow {
                            shape: shape.iter().map(|&d| d as u64).collect(),
                        })?;
                if expected != end - begin {
                    return Err(IoError::SizeMismatch {
                        name,
                        expected,
                        actual: end - begin,
                    });
                }
            }
            // end <= buffer_len, so both fit in usize.
            let bytes = header_end + begin as usize..header_end + end as usize;
            tensors.push(TensorInfo {
                name,
                dtype,
                shape,
                bytes,
            });
        }
        // The byte ranges must tile the buffer exactly.
        let mut order: Vec<usize> = (0..tensors.len()).collect();
        order.sort_by_key(|&t| (tensors[t].bytes.start, tensors[t].bytes.end));
        let mut cursor = header_end;
        for &t in &order {
            let info = &tensors[t];
            if info.bytes.start != cursor {
                let reason = if info.bytes.start < cursor {
                    "overlaps the previous tensor"
                } else {
                    "leaves a gap after the previous tensor"
                };
                return Err(IoError::BadOffsets {
                    name: info.name.clone(),
                    reason: reason.to_owned(),
                });
            }
            cursor = info.bytes.end;
        }
        if cursor != bytes.len() {
            return Err(IoError::TrailingBytes {
                expected: cursor as u64,
                actual: bytes.len() as u64,
            });
        }
        Ok(SafeTensors { bytes, tensors })
    }

    /// The tensors, in the order of the header.
    #[must_use]
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Decodes the tensor called `name`.
    ///
    /// # Errors
    ///
    /// [`IoError::TensorNotFound`], or [`IoError::UnsupportedDtype`] unless its dtype is
    /// `F64`, `F32`, `F16` or `BF16` (16-bit floats are widened to `f32`).
    ///
    /// # Complexity
    ///
    /// O(T + elements) time; allocates the decoded data only.
    pub fn read(&self, name: &str) -> Result<Array, IoError> {
        let info = self
            .tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| IoError::TensorNotFound {
                name: name.to_owned(),
            })?;
        let ty = match info.dtype.as_str() {
            "F64" => Float::F64,
            "F32" => Float::F32,
            "F16" => Float::F16,
            "BF16" => Float::BF16,
            _ => {
                return Err(IoError::UnsupportedDtype {
                    dtype: info.dtype.clone(),
                });
            }
        };
        Ok(Array {
            shape: info.shape.clone(),
            data: decode(&self.bytes[info.bytes.clone()], ty, false),
        })
    }
}

/// Reads every tensor of a safetensors file, in the order of its header.
///
/// # Errors
///
/// Those of [`SafeTensors::parse`] and [`SafeTensors::read`]: one tensor of a non-float
/// dtype fails the whole call (use [`SafeTensors`] to pick tensors).
///
/// # Complexity
///
/// O(file size) time; allocates the decoded data (at most twice the file size).
///
/// # Examples
///
/// ```
/// use flowtracer_core::io::{read_safetensors, Data};
///
/// let header = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
/// let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
/// bytes.extend_from_slice(header);
/// bytes.extend_from_slice(&1.0f32.to_le_bytes());
/// bytes.extend_from_slice(&0.5f32.to_le_bytes());
/// let tensors = read_safetensors(&bytes)?;
/// assert_eq!(tensors[0].0, "a");
/// assert_eq!(tensors[0].1.data, Data::F32(vec![1.0, 0.5]));
/// # Ok::<(), flowtracer_core::io::IoError>(())
/// ```
pub fn read_safetensors(bytes: &[u8]) -> Result<Vec<(String, Array)>, IoError> {
    let file = SafeTensors::parse(bytes)?;
    file.tensors()
        .iter()
        .map(|t| Ok((t.name.clone(), file.read(&t.name)?)))
        .collect()
}

fn st_bad(reason: &str) -> IoError {
    IoError::BadHeader {
        format: "safetensors",
        reason: reason.to_owned(),
    }
}

/// Bytes per element of the safetensors dtypes (None for dtypes this reader does not know).
fn st_dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" | "C64" => 8,
        _ => return None,
    })
}

/// A JSON value, as far as a safetensors header needs one.
enum Json {
    Null,
    Bool,
    /// A number, kept as its byte range in the header.
    Num(Range<usize>),
    Str(String),
    Arr(Vec<Json>),
    /// Members in source order.
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// The value as an unsigned integer, if it is one written with digits only.
    fn as_u64(&self, header: &[u8]) -> Option<u64> {
        let Json::Num(range) = self else { return None };
        let digits = header.get(range.clone())?;
        if digits.is_empty() {
            return None;
        }
        digits.iter().try_fold(0u64, |v, &c| {
            if c.is_ascii_digit() {
                v.checked_mul(10)?.checked_add(u64::from(c - b'0'))
            } else {
                None
            }
        })
    }
}

impl Cursor<'_> {
    fn json(&mut self, depth: usize) -> Result<Json, IoError> {
        if depth > MAX_JSON_DEPTH {
            return Err(st_bad("JSON nested too deeply"));
        }
        match self.peek() {
            None => Err(st_bad("unexpected end of JSON")),
            Some(b'{') => {
                self.i += 1;
                let mut members = Vec::new();
                self.ws();
                if self.eat(b'}') {
                    return Ok(Json::Obj(members));
                }
                loop {
                    self.ws();
                    match self.peek() {
                        Some(b'"') => {}
                        None => return Err(st_bad("unexpected end of JSON")),
                        Some(_) => return Err(st_bad("expected a string key")),
                    }
                    let key = self.json_str()?;
                    self.ws();
                    if !self.eat(b':') {
                        return Err(st_bad("expected ':' after a key"));
                    }
                    self.ws();
                    let value = self.json(depth + 1)?;
                    members.push((key, value));
                    self.ws();
                    if self.eat(b',') {
                        continue;
                    }
                    if self.eat(b'}') {
                        return Ok(Json::Obj(members));
                    }
                    return Err(st_bad("expected ',' or '}' in an object"));
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.eat(b']') {
                    return Ok(Json::Arr(items));
                }
                loop {
                    self.ws();
                    items.push(self.json(depth + 1)?);
                    self.ws();
                    if self.eat(b',') {
                        continue;
                    }
                    if self.eat(b']') {
                        return Ok(Json::Arr(items));
                    }
                    return Err(st_bad("expected ',' or ']' in an array"));
                }
            }
            Some(b'"') => self.json_str().map(Json::Str),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.i;
                self.eat(b'-');
                let digits = |c: &mut Self| {
                    let s = c.i;
                    while matches!(c.peek(), Some(b'0'..=b'9')) {
                        c.i += 1;
                    }
                    c.i > s
                };
                if !digits(self) {
                    return Err(st_bad("bad number"));
                }
                if self.eat(b'.') && !digits(self) {
                    return Err(st_bad("bad number"));
                }
                if matches!(self.peek(), Some(b'e' | b'E')) {
                    self.i += 1;
                    if !self.eat(b'+') {
                        self.eat(b'-');
                    }
                    if !digits(self) {
                        return Err(st_bad("bad number"));
                    }
                }
                Ok(Json::Num(start..self.i))
            }
            Some(_) if self.eat_word(b"true") || self.eat_word(b"false") => Ok(Json::Bool),
            Some(_) if self.eat_word(b"null") => Ok(Json::Null),
            Some(_) => Err(st_bad("unexpected character in JSON")),
        }
    }

    /// A JSON string starting at the opening quote.
    fn json_str(&mut self) -> Result<String, IoError> {
        self.i += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(st_bad("unterminated string"));
            };
            match c {
                b'"' => {
                    self.i += 1;
                    return Ok(out);
                }
                b'\\' => {
                    self.i += 1;
                    let esc = self.peek().ok_or_else(|| st_bad("unterminated string"))?;
                    self.i += 1;
                    let ch = match esc {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xd800..0xdc00).contains(&hi) {
                                if !(self.eat(b'\\') && self.eat(b'u')) {
                                    return Err(st_bad("unpaired surrogate in string"));
                                }
                                let lo = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&lo) {
                                    return Err(st_bad("unpaired surrogate in string"));
                                }
                                0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                            } else {
                                hi
                            };
                            char::from_u32(code)
                                .ok_or_else(|| st_bad("bad \\u escape in string"))?
                        }
                        _ => return Err(st_bad("bad escape in string")),
                    };
                    out.push(ch);
                }
                0..=0x1f => return Err(st_bad("control character in string")),
                _ => {
                    // Copy the run up to the next quote, backslash or control byte: all
                    // ASCII, so the run ends on a character boundary of the UTF-8 header.
                    let start = self.i;
                    while matches!(self.peek(), Some(c) if c != b'"' && c != b'\\' && c >= 0x20) {
                        self.i += 1;
                    }
                    let run = core::str::from_utf8(&self.s[start..self.i])
                        .map_err(|_| st_bad("header is not UTF-8"))?;
                    out.push_str(run);
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, IoError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = self
                .peek()
                .and_then(|c| char::from(c).to_digit(16))
                .ok_or_else(|| st_bad("bad \\u escape in string"))?;
            v = v * 16 + d;
            self.i += 1;
        }
        Ok(v)
    }
}
