//! Decoded arrays, element types and shape arithmetic shared by both readers.

use alloc::vec::Vec;

use crate::Error;

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

/// An array whose header and size are checked but whose elements are not decoded yet: any
/// run of its elements (in C order) is decoded on demand, widened to `f64`, into a buffer
/// the caller provides. What [`read_npy`](crate::read_npy) and
/// [`SafeTensors::read`](crate::SafeTensors::read) return is this view, decoded whole.
#[derive(Clone, Debug)]
pub struct RawArray<'a> {
    /// The dimensions, outermost first.
    pub shape: Vec<usize>,
    data: &'a [u8],
    ty: Float,
    big_endian: bool,
    fortran_order: bool,
}

impl<'a> RawArray<'a> {
    pub(crate) fn new(
        shape: Vec<usize>,
        data: &'a [u8],
        ty: Float,
        big_endian: bool,
        fortran_order: bool,
    ) -> Self {
        // A Fortran-order array of rank 0 or 1 is stored as in C order.
        let fortran_order = fortran_order && shape.len() > 1;
        Self {
            shape,
            data,
            ty,
            big_endian,
            fortran_order,
        }
    }

    /// The number of elements.
    #[must_use]
    pub fn len(&self) -> usize {
        self.data.len() / self.ty.size()
    }

    /// Whether there are no elements.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Whether the elements are stored in C (row-major) order, so that
    /// [`decode_f64_into`](Self::decode_f64_into) can read any run of them (a Fortran-order
    /// `.npy` of rank 2 or more is not).
    #[must_use]
    pub fn is_c_order(&self) -> bool {
        !self.fortran_order
    }

    /// Decodes the elements `start .. start + out.len()` (C order) into `out`, widened to
    /// `f64` exactly, as [`Data::into_f64`] would give them.
    ///
    /// # Panics
    ///
    /// If the array is not in C order ([`is_c_order`](Self::is_c_order)) or the run ends
    /// past the last element: caller bugs.
    ///
    /// # Complexity
    ///
    /// O(`out.len()`) time; no allocation.
    pub fn decode_f64_into(&self, start: usize, out: &mut [f64]) {
        assert!(self.is_c_order(), "decode_f64_into needs C order");
        let size = self.ty.size();
        let end = start.checked_add(out.len()).expect("run in range");
        let bytes = &self.data[start * size..end * size];
        let be = self.big_endian;
        match self.ty {
            Float::F16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f64::from(f16_to_f32(u16::from_le_bytes(ordered(c, be))));
                }
            }
            Float::BF16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    let bits = u32::from(u16::from_le_bytes(ordered(c, be))) << 16;
                    *o = f64::from(f32::from_bits(bits));
                }
            }
            Float::F32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f64::from(f32::from_le_bytes(ordered(c, be)));
                }
            }
            Float::F64 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                    *o = f64::from_le_bytes(ordered(c, be));
                }
            }
        }
    }

    /// Decodes every element (reordering a Fortran-order array into C order).
    ///
    /// # Complexity
    ///
    /// O(len) time; allocates the decoded data (and, for Fortran order, one more copy).
    #[must_use]
    pub fn decode(&self) -> Array {
        let mut data = decode(self.data, self.ty, self.big_endian);
        if self.fortran_order {
            data = match data {
                Data::F32(v) => Data::F32(crate::npy::fortran_to_c(&v, &self.shape)),
                Data::F64(v) => Data::F64(crate::npy::fortran_to_c(&v, &self.shape)),
            };
        }
        Array {
            shape: self.shape.clone(),
            data,
        }
    }
}

/// The `K` bytes of `chunk` in little-endian order.
fn ordered<const K: usize>(chunk: &[u8], big_endian: bool) -> [u8; K] {
    let mut a = [0u8; K];
    a.copy_from_slice(chunk);
    if big_endian {
        a.reverse();
    }
    a
}

/// Element types and their decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Float {
    F16,
    BF16,
    F32,
    F64,
}

impl Float {
    pub(crate) fn size(self) -> usize {
        match self {
            Float::F16 | Float::BF16 => 2,
            Float::F32 => 4,
            Float::F64 => 8,
        }
    }
}

/// Decodes `count` elements from `bytes` (whose length the caller checked to be exactly
/// `count * ty.size()`).
pub(crate) fn decode(bytes: &[u8], ty: Float, big_endian: bool) -> Data {
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
pub(crate) fn element_count(shape: &[usize]) -> Result<usize, Error> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::ShapeOverflow {
            shape: shape.iter().map(|&d| d as u64).collect(),
        })
}

pub(crate) fn to_usize_shape(dims: &[u64]) -> Result<Vec<usize>, Error> {
    dims.iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| Error::ShapeOverflow {
            shape: dims.to_vec(),
        })
}
