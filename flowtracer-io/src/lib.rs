//! Readers for NumPy `.npy` and `.safetensors` files that parse from bytes, with `alloc` only.
//!
//! These readers are how attention dumps from Python reach FlowTracer (`flowtracer score`
//! reads them), and they are written to be fed arbitrary bytes:
//!
//! - they never panic;
//! - they never allocate more than the input implies: every length and shape in a header is
//!   checked against the bytes actually present *before* anything is allocated for it, so a
//!   ten-byte file that claims a 2^60-element array is rejected without allocating;
//! - memory is bounded by the file: the decoded data takes at most twice the bytes it
//!   decodes (16-bit floats are widened to `f32`), a safetensors header at most four times
//!   its own size (its `__metadata__` is checked but never stored), and a whole call to
//!   [`read_npy`] or [`read_safetensors`] peaks at most at 2× or 4× the file size plus
//!   64 KiB (the fuzz targets assert this with a counting allocator);
//! - a safetensors header with T tensors is checked in O(header + T log T) time (duplicate
//!   names by a sort, not by comparing every pair);
//! - every failure is an [`Error`] whose [`Display`](core::fmt::Display) is one line
//!   naming the problem (truncated, wrong dtype, bad header, ...).
//!
//! Floating-point data only: `f32` and `f64` are returned as they are; 16-bit floats
//! (`.npy` `<f2`, safetensors `F16` and `BF16`) are widened exactly to `f32`. Every other dtype
//! is an [`Error::UnsupportedDtype`].
//!
//! This crate has no dependency on `flowtracer-core` (nor burn or cubecl): the fuzz targets
//! build it alone, and the core stays free of file formats.
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
//!   buffer exactly, in some order, with no gap, overlap or trailing bytes. Unlike it, a name
//!   given twice is an error, and `__metadata__` may hold any JSON values.
//!
//! # Why these parsers, and not the maintained crates
//!
//! - **JSON**: the safetensors header is parsed by [`serde_json`] (no_std, `alloc`), with
//!   visitors that stream the top-level entries in order (so a repeated tensor name is seen,
//!   not overwritten as in `serde_json::Value`'s map), skip `__metadata__` values without
//!   storing them, and read shapes into a fixed `[u64; MAX_RANK]`.
//! - **The `safetensors` crate (0.8)** is not used: it deserialises the header into a
//!   `HashMap`, which keeps the last of two entries with the same name and so accepts a
//!   duplicate silently; it requires `__metadata__` to map strings to strings (files this
//!   reader accepts today would be refused); and its errors do not name the tensor and sizes
//!   that the CLI prints.
//! - **`.npy`**: `npyz` (0.9) and `ndarray-npy` (0.10) read through `std::io::Read` (this
//!   crate is no_std), allocate a buffer of the header length the file *claims* before
//!   reading it (a 12-byte file claiming a 4 GiB header allocates 4 GiB), and parse the dict
//!   with `py_literal` into a general value tree with big integers. The dict has three keys
//!   and the hand-written parser here (about 200 lines) bounds the rank and every length
//!   first; it is fuzzed with a counting allocator.
//!
//! # Examples
//!
//! ```
//! use flowtracer_io::{read_npy, Data};
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
//! # Ok::<(), flowtracer_io::Error>(())
//! ```
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
// The work-counting unit tests use a thread-local counter.
#[cfg(test)]
extern crate std;

mod array;
mod error;
mod npy;
mod safetensors;

pub use array::{Array, Data, MAX_RANK, RawArray};
pub use error::Error;
pub use npy::{read_npy, view_npy};
pub use safetensors::{MAX_JSON_DEPTH, SafeTensors, TensorInfo, read_safetensors};
