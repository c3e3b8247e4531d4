//! The `.safetensors` reader: the header's entries (read by [`header`]), then a sort by name
//! to find repeated names (`serde_json`'s own maps would keep the last of two) and a sort by
//! offset to check that the byte ranges tile the buffer: O(header + T log T) for T tensors.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cmp::Ordering;
use core::ops::Range;

use crate::Error;
use crate::array::{Array, Float, RawArray, decode};

mod header;

/// The maximum nesting depth of a safetensors JSON header: at most this many arrays and
/// objects may be open at once, the root object included. Deeper input is rejected before
/// it is parsed.
pub const MAX_JSON_DEPTH: usize = 64;

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
    /// In header order.
    tensors: Vec<TensorInfo>,
    /// Indices into `tensors`, sorted by name (names are unique): lookups by binary search.
    by_name: Vec<usize>,
}

impl<'a> SafeTensors<'a> {
    /// Parses and validates the header of a safetensors file.
    ///
    /// Checks every tensor's dtype size, shape and byte range against the file before
    /// anything else is done, so that [`read`](Self::read) only decodes. Problems are
    /// reported in this order: the header's length, UTF-8 and nesting depth; its JSON
    /// syntax (anywhere in the header); each entry in header order (its keys and their
    /// types, then shape, offsets and size against the file); a repeated tensor name (the
    /// first entry whose name an earlier entry already has); the tiling of the data buffer.
    ///
    /// # Errors
    ///
    /// [`Error::BadMagic`] if the file is shorter than 8 bytes, [`Error::Truncated`] if
    /// the header or a tensor's bytes are cut off, [`Error::BadHeader`] for a header that is
    /// not the expected JSON (nested deeper than [`MAX_JSON_DEPTH`], a shape of more than
    /// [`MAX_RANK`](crate::MAX_RANK) dimensions, a tensor name given twice),
    /// [`Error::ShapeOverflow`], [`Error::SizeMismatch`], [`Error::BadOffsets`] and
    /// [`Error::TrailingBytes`].
    ///
    /// # Complexity
    ///
    /// O(header + T log T) time for T tensors (two sorts of T indices; no pairwise
    /// comparison). Allocates per tensor its [`TensorInfo`], its name, dtype and shape,
    /// and two indices: at most 4× the header's size, since every tensor entry takes at
    /// least 47 bytes of header. `__metadata__` values are skipped without allocating.
    ///
    /// # Examples
    ///
    /// ```
    /// use flowtracer_io::{Data, SafeTensors};
    ///
    /// let header = br#"{"__metadata__":{"format":"pt"},"b":{"dtype":"F64","shape":[],"data_offsets":[0,8]}}"#;
    /// let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    /// bytes.extend_from_slice(header);
    /// bytes.extend_from_slice(&0.25f64.to_le_bytes());
    /// let file = SafeTensors::parse(&bytes)?;
    /// assert_eq!(file.get("b").map(|t| t.dtype.as_str()), Some("F64"));
    /// assert_eq!(file.read("b")?.data, Data::F64(vec![0.25]));
    /// # Ok::<(), flowtracer_io::Error>(())
    /// ```
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        if bytes.len() < 8 {
            return Err(Error::BadMagic {
                format: "safetensors",
            });
        }
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(&bytes[..8]);
        let header_len = u64::from_le_bytes(len8);
        let available = (bytes.len() - 8) as u64;
        if header_len > available {
            return Err(Error::Truncated {
                what: "header".to_owned(),
                needed: header_len,
                available,
            });
        }
        // header_len <= bytes.len(), so it fits in usize.
        let header_end = 8 + header_len as usize;
        let header = &bytes[8..header_end];
        core::str::from_utf8(header).map_err(|_| st_bad("header is not UTF-8"))?;
        let tensors = header::entries(header, header_end, bytes.len() - header_end)?;
        // A name given twice: sort by name, compare neighbours.
        let mut by_name: Vec<usize> = (0..tensors.len()).collect();
        by_name.sort_unstable_by(|&a, &b| {
            compare_names(&tensors[a].name, &tensors[b].name).then(a.cmp(&b))
        });
        let repeated = by_name
            .windows(2)
            .filter(|w| compare_names(&tensors[w[0]].name, &tensors[w[1]].name).is_eq())
            .map(|w| w[1])
            .min();
        if let Some(t) = repeated {
            return Err(st_bad(&format!("duplicate tensor {:?}", tensors[t].name)));
        }
        // The byte ranges must tile the buffer exactly.
        let mut order: Vec<usize> = (0..tensors.len()).collect();
        order.sort_unstable_by_key(|&t| (tensors[t].bytes.start, tensors[t].bytes.end, t));
        let mut cursor = header_end;
        for &t in &order {
            let info = &tensors[t];
            if info.bytes.start != cursor {
                let reason = if info.bytes.start < cursor {
                    "overlaps the previous tensor"
                } else {
                    "leaves a gap after the previous tensor"
                };
                return Err(Error::BadOffsets {
                    name: info.name.clone(),
                    reason: reason.to_owned(),
                });
            }
            cursor = info.bytes.end;
        }
        if cursor != bytes.len() {
            return Err(Error::TrailingBytes {
                expected: cursor as u64,
                actual: bytes.len() as u64,
            });
        }
        Ok(SafeTensors {
            bytes,
            tensors,
            by_name,
        })
    }

    /// The tensors, in the order of the header.
    #[must_use]
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The entry of the tensor called `name`, if there is one.
    ///
    /// # Complexity
    ///
    /// O(log T) name comparisons for T tensors; no allocation.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        let at = self
            .by_name
            .binary_search_by(|&t| compare_names(&self.tensors[t].name, name))
            .ok()?;
        Some(&self.tensors[self.by_name[at]])
    }

    /// Decodes the tensor called `name`.
    ///
    /// # Errors
    ///
    /// [`Error::TensorNotFound`], or [`Error::UnsupportedDtype`] unless its dtype is
    /// `F64`, `F32`, `F16` or `BF16` (16-bit floats are widened to `f32`).
    ///
    /// # Complexity
    ///
    /// O(log T + elements) time; allocates the decoded data only.
    pub fn read(&self, name: &str) -> Result<Array, Error> {
        Ok(self.view(name)?.decode())
    }

    /// The tensor called `name`, checked like [`read`](Self::read) (the same errors) but not
    /// decoded: the returned view decodes any run of its elements on demand.
    ///
    /// # Errors
    ///
    /// Those of [`read`](Self::read).
    ///
    /// # Complexity
    ///
    /// O(log T) time; allocates the shape only.
    pub fn view(&self, name: &str) -> Result<RawArray<'a>, Error> {
        let info = self.get(name).ok_or_else(|| Error::TensorNotFound {
            name: name.to_owned(),
        })?;
        Ok(RawArray::new(
            info.shape.clone(),
            &self.bytes[info.bytes.clone()],
            float_type(&info.dtype)?,
            false,
            false,
        ))
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
/// O(file size + T log T) time; allocates the decoded data (at most twice the data's
/// size) besides the header's entries, whose names and shapes move into the result.
///
/// # Examples
///
/// ```
/// use flowtracer_io::{read_safetensors, Data};
///
/// let header = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
/// let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
/// bytes.extend_from_slice(header);
/// bytes.extend_from_slice(&1.0f32.to_le_bytes());
/// bytes.extend_from_slice(&0.5f32.to_le_bytes());
/// let tensors = read_safetensors(&bytes)?;
/// assert_eq!(tensors[0].0, "a");
/// assert_eq!(tensors[0].1.data, Data::F32(vec![1.0, 0.5]));
/// # Ok::<(), flowtracer_io::Error>(())
/// ```
pub fn read_safetensors(bytes: &[u8]) -> Result<Vec<(String, Array)>, Error> {
    let SafeTensors {
        tensors, by_name, ..
    } = SafeTensors::parse(bytes)?;
    drop(by_name);
    let mut out = Vec::with_capacity(tensors.len());
    for info in tensors {
        let data = decode(&bytes[info.bytes.clone()], float_type(&info.dtype)?, false);
        out.push((
            info.name,
            Array {
                shape: info.shape,
                data,
            },
        ));
    }
    Ok(out)
}

fn float_type(dtype: &str) -> Result<Float, Error> {
    match dtype {
        "F64" => Ok(Float::F64),
        "F32" => Ok(Float::F32),
        "F16" => Ok(Float::F16),
        "BF16" => Ok(Float::BF16),
        _ => Err(Error::UnsupportedDtype {
            dtype: dtype.to_owned(),
        }),
    }
}

fn st_bad(reason: &str) -> Error {
    Error::BadHeader {
        format: "safetensors",
        reason: reason.to_owned(),
    }
}

/// The one comparison of tensor names (the unit tests count its calls).
fn compare_names(a: &str, b: &str) -> Ordering {
    #[cfg(test)]
    tests::NAME_COMPARISONS.with(|c| c.set(c.get() + 1));
    a.cmp(b)
}

#[cfg(test)]
mod tests {
    use super::header::nested_too_deeply;
    use super::*;
    use core::cell::Cell;
    use std::println;

    std::thread_local! {
        /// Calls of `compare_names` on this thread.
        pub(super) static NAME_COMPARISONS: Cell<u64> = const { Cell::new(0) };
    }

    /// A file of `t` zero-size tensors with distinct names.
    fn zero_size_tensors(t: usize) -> Vec<u8> {
        let mut header = String::from("{");
        for i in 0..t {
            if i > 0 {
                header.push(',');
            }
            header.push_str(&format!(
                r#""layers.{i}.attn":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}"#
            ));
        }
        header.push('}');
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes
    }

    fn comparisons(f: impl FnOnce()) -> u64 {
        NAME_COMPARISONS.with(|c| c.set(0));
        f();
        NAME_COMPARISONS.with(Cell::get)
    }

    /// Issue 14, item 5: the duplicate-name check compared every pair of names (T²/2
    /// comparisons; 160,000 tensors took 70 s). Counted, not timed: quadrupling T must
    /// multiply the work by about 4·log(4T)/log(T), not 16.
    #[test]
    fn duplicate_check_and_lookups_take_t_log_t_name_comparisons() {
        let t = 4_000;
        let (small, large) = (zero_size_tensors(t), zero_size_tensors(4 * t));
        let c_small = comparisons(|| {
            SafeTensors::parse(&small).unwrap();
        });
        let c_large = comparisons(|| {
            SafeTensors::parse(&large).unwrap();
        });
        let ratio = c_large as f64 / c_small as f64;
        println!(
            "parse: T = {t}: {c_small} name comparisons; 4T = {}: {c_large} (x{ratio:.2})",
            4 * t
        );
        let log2 = |n: usize| (n as f64).log2();
        assert!(
            c_small as f64 <= 3.0 * t as f64 * log2(t),
            "{c_small} comparisons for {t} tensors"
        );
        assert!(
            ratio < 6.0,
            "4x the tensors took {ratio:.1}x the comparisons"
        );

        // Looking every tensor up by name (the CLI reads per-layer tensors by name).
        let file = SafeTensors::parse(&large).unwrap();
        let lookups = comparisons(|| {
            for info in file.tensors() {
                assert!(file.get(&info.name).is_some());
            }
            assert!(file.read("nope").is_err());
        });
        println!(
            "get: 4T = {} lookups: {lookups} name comparisons",
            4 * t + 1
        );
        assert!(
            lookups as f64 <= (4 * t + 1) as f64 * (log2(4 * t) + 2.0),
            "{lookups} comparisons for {} lookups",
            4 * t + 1
        );
    }

    #[test]
    fn nesting_depth_boundary() {
        let nested = |depth: usize| {
            let mut s = "[".repeat(depth);
            s.push_str(&"]".repeat(depth));
            s
        };
        assert!(!nested_too_deeply(nested(MAX_JSON_DEPTH).as_bytes()));
        assert!(nested_too_deeply(nested(MAX_JSON_DEPTH + 1).as_bytes()));
        // Brackets inside strings, escaped quotes included, do not count.
        let quoted = format!(r#"{{"a\"{}":1}}"#, "[".repeat(100));
        assert!(!nested_too_deeply(quoted.as_bytes()));
    }
}
