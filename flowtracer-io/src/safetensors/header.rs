//! The JSON header of a safetensors file, through `serde_json`, without building a JSON tree.
//!
//! The header is read twice:
//!
//! 1. the whole header's syntax is checked and the tensor entries are counted, with every
//!    value skipped ([`IgnoredAny`] skips nested values iteratively, allocating nothing);
//! 2. the entries are read in header order, each checked against the file as soon as it is
//!    read, into a vector allocated once with the exact count. `__metadata__` is skipped
//!    again: it must be an object, and nothing of it is stored.
//!
//! A visitor that finds a problem puts the typed [`Error`] in a slot and aborts `serde_json`;
//! any other `serde_json` error is a [`Error::BadHeader`] with `serde_json`'s one-line message.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor,
};

use super::{MAX_JSON_DEPTH, TensorInfo, st_bad};
use crate::array::{element_count, to_usize_shape};
use crate::{Error, MAX_RANK};

/// The tensor entries of `header` (the JSON text of a file whose data buffer starts at byte
/// `header_end` and holds `buffer_len` bytes), in header order, each checked against the
/// file; names are not yet checked for repeats.
pub(super) fn entries(
    header: &[u8],
    header_end: usize,
    buffer_len: usize,
) -> Result<Vec<TensorInfo>, Error> {
    if nested_too_deeply(header) {
        return Err(st_bad("JSON nested too deeply"));
    }
    match header
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        None => return Err(st_bad("unexpected end of JSON")),
        Some(b'{') => {}
        Some(_) => return Err(st_bad("header is not a JSON object")),
    }
    // Pass 1: the syntax of the whole header, and the number of tensors.
    let count = run(header, |de, _| de.deserialize_map(CountEntries))?;
    // Pass 2: the entries, in header order, into an exact allocation.
    let mut tensors = Vec::with_capacity(count);
    run(header, |de, slot| {
        de.deserialize_map(Entries {
            slot,
            tensors: &mut tensors,
            header_end,
            buffer_len,
        })
    })?;
    Ok(tensors)
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

/// Whether more than [`MAX_JSON_DEPTH`] arrays and objects are open at some point of the
/// header (brackets inside strings do not count). One pass, no allocation; malformed JSON is
/// left to the parser.
pub(super) fn nested_too_deeply(header: &[u8]) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in header {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

type JsonDe<'h> = serde_json::Deserializer<serde_json::de::SliceRead<'h>>;

/// Runs one pass of `serde_json` over the whole header. A visitor that finds a problem of
/// its own puts the typed error in the slot and aborts; any other `serde_json` error is a
/// [`Error::BadHeader`] with `serde_json`'s one-line message.
fn run<'h, T>(
    header: &'h [u8],
    pass: impl FnOnce(&mut JsonDe<'h>, &mut Option<Error>) -> Result<T, serde_json::Error>,
) -> Result<T, Error> {
    let mut slot = None;
    let mut de = serde_json::Deserializer::from_slice(header);
    let value = match pass(&mut de, &mut slot) {
        Ok(value) => value,
        Err(e) => {
            return Err(slot.unwrap_or_else(|| {
                if e.is_eof() {
                    st_bad("unexpected end of JSON")
                } else {
                    st_bad(&e.to_string())
                }
            }));
        }
    };
    de.end()
        .map_err(|_| st_bad("unexpected text after the JSON object"))?;
    Ok(value)
}

/// Puts `error` in the slot unless an inner visitor already did, and returns the error that
/// aborts `serde_json`.
fn fail<E: de::Error>(slot: &mut Option<Error>, error: impl FnOnce() -> Error, abort: E) -> E {
    if slot.is_none() {
        *slot = Some(error());
    }
    abort
}

/// A top-level key: `__metadata__` or a tensor name.
enum Key {
    Metadata,
    Tensor(String),
}

/// Reads a top-level key, allocating only for tensor names (`count` only tells them apart).
struct KeySeed {
    count_only: bool,
}

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(match v {
            "__metadata__" => Key::Metadata,
            _ if self.count_only => Key::Tensor(String::new()),
            _ => Key::Tensor(v.to_owned()),
        })
    }
}

/// Pass 1: counts the tensor entries; every value is skipped.
struct CountEntries;

impl<'de> Visitor<'de> for CountEntries {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let mut count = 0usize;
        while let Some(key) = map.next_key_seed(KeySeed { count_only: true })? {
            map.next_value::<IgnoredAny>()?;
            count += usize::from(matches!(key, Key::Tensor(_)));
        }
        Ok(count)
    }
}

/// Pass 2: every entry, checked against the file and appended in header order.
struct Entries<'s> {
    slot: &'s mut Option<Error>,
    tensors: &'s mut Vec<TensorInfo>,
    header_end: usize,
    buffer_len: usize,
}

impl<'de> Visitor<'de> for Entries<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(KeySeed { count_only: false })? {
            let name = match key {
                Key::Metadata => {
                    map.next_value_seed(Metadata).map_err(|e| {
                        fail(self.slot, || st_bad("__metadata__ is not an object"), e)
                    })?;
                    continue;
                }
                Key::Tensor(name) => name,
            };
            let entry = map
                .next_value_seed(Entry {
                    name: &name,
                    slot: &mut *self.slot,
                })
                .map_err(|e| {
                    fail(
                        self.slot,
                        || st_bad(&format!("entry {name:?} is not an object")),
                        e,
                    )
                })?;
            match check_entry(name, entry, self.header_end, self.buffer_len) {
                Ok(info) => self.tensors.push(info),
                Err(error) => {
                    *self.slot = Some(error);
                    return Err(de::Error::custom("bad entry"));
                }
            }
        }
        Ok(())
    }
}

/// The checks of one entry against the file, in the order the entry's fields are used.
fn check_entry(
    name: String,
    entry: RawEntry,
    header_end: usize,
    buffer_len: usize,
) -> Result<TensorInfo, Error> {
    let RawEntry {
        dtype,
        dims,
        rank,
        offsets: [begin, end],
    } = entry;
    let shape = to_usize_shape(&dims[..rank])?;
    if begin > end {
        return Err(Error::BadOffsets {
            name,
            reason: format!("begin {begin} is after end {end}"),
        });
    }
    if end > buffer_len as u64 {
        return Err(Error::Truncated {
            what: format!("tensor {name:?}"),
            needed: end,
            available: buffer_len as u64,
        });
    }
    let count = element_count(&shape)?;
    if let Some(size) = st_dtype_size(&dtype) {
        let expected = (count as u64)
            .checked_mul(size)
            .ok_or_else(|| Error::ShapeOverflow {
                shape: shape.iter().map(|&d| d as u64).collect(),
            })?;
        if expected != end - begin {
            return Err(Error::SizeMismatch {
                name,
                expected,
                actual: end - begin,
            });
        }
    }
    // end <= buffer_len, so both fit in usize.
    let bytes = header_end + begin as usize..header_end + end as usize;
    Ok(TensorInfo {
        name,
        dtype,
        shape,
        bytes,
    })
}

/// `__metadata__`: any object; its keys and values are skipped, never stored.
struct Metadata;

impl<'de> DeserializeSeed<'de> for Metadata {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Metadata {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

/// One tensor entry as written, before it is checked against the file.
struct RawEntry {
    dtype: String,
    dims: [u64; MAX_RANK],
    rank: usize,
    offsets: [u64; 2],
}

/// A tensor entry: exactly the keys `dtype`, `shape` and `data_offsets`, each once.
struct Entry<'s> {
    name: &'s str,
    slot: &'s mut Option<Error>,
}

impl<'de> DeserializeSeed<'de> for Entry<'_> {
    type Value = RawEntry;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<RawEntry, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Entry<'_> {
    type Value = RawEntry;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEntry, A::Error> {
        let Entry { name, slot } = self;
        let bad = |reason: &str| st_bad(&format!("tensor {name:?} {reason}"));
        let (mut dtype, mut shape, mut offsets) = (None, None, None);
        while let Some(field) = map.next_key::<Field>()? {
            let repeated = match &field {
                Field::Dtype => dtype.is_some(),
                Field::Shape => shape.is_some(),
                Field::Offsets => offsets.is_some(),
                Field::Other(key) => {
                    let error = bad(&format!("has an unexpected key {key:?}"));
                    return Err(fail(slot, || error, de::Error::custom("bad key")));
                }
            };
            if repeated {
                let error = bad(&format!("repeats key {:?}", field.key()));
                return Err(fail(slot, || error, de::Error::custom("bad key")));
            }
            match field {
                Field::Dtype => {
                    let v = map
                        .next_value_seed(Text)
                        .map_err(|e| fail(slot, || bad("has no string dtype"), e))?;
                    dtype = Some(v);
                }
                Field::Shape => {
                    let v = map
                        .next_value_seed(Dims { max: MAX_RANK })
                        .map_err(|e| fail(slot, || bad("has a bad shape"), e))?;
                    shape = Some(v);
                }
                Field::Offsets => {
                    let v = map
                        .next_value_seed(Dims { max: 2 })
                        .map_err(|e| fail(slot, || bad("has bad data_offsets"), e))?;
                    offsets = Some(v);
                }
                Field::Other(_) => {}
            }
        }
        let mut missing =
            |reason: &str| fail(slot, || bad(reason), de::Error::custom("missing key"));
        let Some(dtype) = dtype else {
            return Err(missing("has no string dtype"));
        };
        let Some((dims, rank)) = shape else {
            return Err(missing("has a bad shape"));
        };
        let Some(([begin, end, ..], 2)) = offsets else {
            return Err(missing("has bad data_offsets"));
        };
        Ok(RawEntry {
            dtype,
            dims,
            rank,
            offsets: [begin, end],
        })
    }
}

/// A key of a tensor entry.
enum Field {
    Dtype,
    Shape,
    Offsets,
    Other(String),
}

impl Field {
    fn key(&self) -> &str {
        match self {
            Field::Dtype => "dtype",
            Field::Shape => "shape",
            Field::Offsets => "data_offsets",
            Field::Other(key) => key,
        }
    }
}

impl<'de> de::Deserialize<'de> for Field {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Field, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
                Ok(match v {
                    "dtype" => Field::Dtype,
                    "shape" => Field::Shape,
                    "data_offsets" => Field::Offsets,
                    other => Field::Other(other.to_owned()),
                })
            }
        }
        d.deserialize_str(FieldVisitor)
    }
}

/// A JSON string, owned.
struct Text;

impl<'de> DeserializeSeed<'de> for Text {
    type Value = String;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for Text {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
}

/// An array of at most `max` unsigned integers written with digits only, into a fixed
/// array (no allocation, so an array of a million numbers is refused at the 33rd).
struct Dims {
    max: usize,
}

impl<'de> DeserializeSeed<'de> for Dims {
    type Value = ([u64; MAX_RANK], usize);
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Dims {
    type Value = ([u64; MAX_RANK], usize);
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array of at most {} unsigned integers", self.max)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut dims = [0u64; MAX_RANK];
        let mut len = 0;
        while let Some(d) = seq.next_element_seed(Digits)? {
            if len == self.max {
                return Err(de::Error::invalid_length(len + 1, &self));
            }
            dims[len] = d;
            len += 1;
        }
        Ok((dims, len))
    }
}

/// An unsigned integer that fits in `u64`, written with digits only (no sign, fraction or
/// exponent).
struct Digits;

impl<'de> DeserializeSeed<'de> for Digits {
    type Value = u64;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_u64(self)
    }
}

impl Visitor<'_> for Digits {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an unsigned integer")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }
}
