//! The one error type of both readers.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Why a file could not be read. Each `Display` is one line naming the problem.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
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

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadMagic { format } => write!(f, "not a .{format} file (bad magic bytes)"),
            Error::UnsupportedVersion { major, minor } => {
                write!(f, "unsupported .npy format version {major}.{minor}")
            }
            Error::Truncated {
                what,
                needed,
                available,
            } => write!(
                f,
                "truncated file: {what} needs {needed} bytes but only {available} are present"
            ),
            Error::TrailingBytes { expected, actual } => write!(
                f,
                "corrupt file: {} unexpected bytes after the data (header accounts for {expected} of {actual})",
                actual.saturating_sub(*expected)
            ),
            Error::BadHeader { format, reason } => {
                write!(f, "bad .{format} header: {reason}")
            }
            Error::UnsupportedDtype { dtype } => write!(
                f,
                "unsupported dtype {dtype:?}: expected a float type (float16, bfloat16, float32 or float64)"
            ),
            Error::ShapeOverflow { shape } => {
                write!(f, "shape {shape:?} has more elements than can be addressed")
            }
            Error::SizeMismatch {
                name,
                expected,
                actual,
            } => write!(
                f,
                "tensor {name:?}: dtype and shape imply {expected} bytes but data_offsets span {actual}"
            ),
            Error::BadOffsets { name, reason } => {
                write!(f, "bad data_offsets at tensor {name:?}: {reason}")
            }
            Error::TensorNotFound { name } => write!(f, "no tensor named {name:?} in the file"),
        }
    }
}

impl core::error::Error for Error {}
