//! The `.npy` reader and its Python-literal header parser.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::Error;
use crate::MAX_RANK;
use crate::array::{Array, Float, RawArray, element_count, to_usize_shape};

/// Reads a `.npy` file of float16, float32 or float64 from its bytes.
///
/// # Errors
///
/// [`Error::BadMagic`] if the bytes do not start with `\x93NUMPY`,
/// [`Error::UnsupportedVersion`], [`Error::Truncated`] if the header or the data is cut
/// off, [`Error::TrailingBytes`], [`Error::BadHeader`] for a header that is not a dict
/// with `descr`, `fortran_order` and `shape`, [`Error::UnsupportedDtype`] for any dtype
/// other than `<f2`, `<f4`, `<f8` (or their big-endian `>` forms), and
/// [`Error::ShapeOverflow`].
///
/// # Complexity
///
/// O(header + data) time. Allocates the decoded data (at most twice the file size) and,
/// for Fortran-order input, one more array of the same size for the reordering.
///
/// # Examples
///
/// ```
/// use flowtracer_io::{read_npy, Error};
///
/// assert_eq!(read_npy(b"PK\x03\x04"), Err(Error::BadMagic { format: "npy" }));
/// ```
pub fn read_npy(bytes: &[u8]) -> Result<Array, Error> {
    Ok(view_npy(bytes)?.decode())
}

/// Checks a `.npy` file like [`read_npy`] (the same errors, in the same order) without
/// decoding its data: the returned view decodes on demand.
///
/// # Errors
///
/// Those of [`read_npy`].
///
/// # Complexity
///
/// O(header) time; allocates the shape only.
///
/// # Examples
///
/// ```
/// use flowtracer_io::{read_npy, view_npy};
///
/// let mut file = b"\x93NUMPY\x01\x00".to_vec();
/// let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
/// let header = format!("{header:<63}\n");
/// file.extend_from_slice(&(header.len() as u16).to_le_bytes());
/// file.extend_from_slice(header.as_bytes());
/// file.extend([1.0f32, 0.5].iter().flat_map(|v| v.to_le_bytes()));
/// let view = view_npy(&file)?;
/// let mut second = [0.0];
/// view.decode_f64_into(1, &mut second);
/// assert_eq!(second, [0.5]);
/// assert_eq!(view.decode(), read_npy(&file)?);
/// # Ok::<(), flowtracer_io::Error>(())
/// ```
pub fn view_npy(bytes: &[u8]) -> Result<RawArray<'_>, Error> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    if bytes.len() < MAGIC.len() + 2 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(Error::BadMagic { format: "npy" });
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let len_size = match major {
        1 => 2usize,
        2 | 3 => 4,
        _ => return Err(Error::UnsupportedVersion { major, minor }),
    };
    let rest = &bytes[8..];
    if rest.len() < len_size {
        return Err(Error::Truncated {
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
        return Err(Error::Truncated {
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
        .ok_or_else(|| Error::ShapeOverflow {
            shape: header.shape.iter().map(|&d| d as u64).collect(),
        })?;
    if data.len() < needed {
        return Err(Error::Truncated {
            what: "data".to_owned(),
            needed: needed as u64,
            available: data.len() as u64,
        });
    }
    if data.len() > needed {
        return Err(Error::TrailingBytes {
            expected: (bytes.len() - data.len() + needed) as u64,
            actual: bytes.len() as u64,
        });
    }
    Ok(RawArray::new(
        header.shape,
        data,
        header.ty,
        header.big_endian,
        header.fortran_order,
    ))
}

fn npy_bad(reason: &str) -> Error {
    Error::BadHeader {
        format: "npy",
        reason: reason.to_owned(),
    }
}

/// Reorders a column-major array into row-major order.
pub(crate) fn fortran_to_c<T: Copy>(src: &[T], shape: &[usize]) -> Vec<T> {
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

fn parse_npy_header(text: &str) -> Result<NpyHeader, Error> {
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
            _ => return Err(Error::UnsupportedDtype { dtype: d }),
        },
        Some(PyValue::Other(d)) => return Err(Error::UnsupportedDtype { dtype: d }),
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

/// A byte cursor over the header text.
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

    fn py_value(&mut self) -> Result<PyValue, Error> {
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
