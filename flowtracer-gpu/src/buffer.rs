//! [`DeviceBuffer`]: a device allocation of 32-bit elements with its length.

use alloc::vec::Vec;

use cubecl::prelude::*;
use cubecl::server::Handle;

/// A device buffer of `len` 32-bit elements (`f32` or `u32`), with its cubecl [`Handle`].
///
/// The invariant every kernel launch relies on: the allocation behind `handle` holds at
/// least `len * 4` bytes.
#[derive(Debug, Clone)]
pub struct DeviceBuffer {
    handle: Handle,
    len: usize,
}

impl DeviceBuffer {
    /// Uploads `data`.
    pub fn from_f32(client: &Client, data: &[f32]) -> Self {
        Self {
            handle: client.create_from_slice(f32::as_bytes(data)),
            len: data.len(),
        }
    }

    /// Uploads `data`.
    pub fn from_u32(client: &Client, data: &[u32]) -> Self {
        Self {
            handle: client.create_from_slice(u32::as_bytes(data)),
            len: data.len(),
        }
    }

    /// Allocates `len` elements with unspecified contents.
    pub fn uninit(client: &Client, len: usize) -> Self {
        // A zero-sized allocation is not portable; keep one element.
        let bytes = len.max(1) * core::mem::size_of::<f32>();
        Self {
            handle: client.empty(bytes),
            len,
        }
    }

    /// Wraps an existing handle holding `len` 32-bit elements.
    ///
    /// # Panics
    ///
    /// If the handle holds fewer than `len * 4` bytes.
    pub fn from_handle(handle: Handle, len: usize) -> Self {
        let bytes = handle.size_in_used();
        assert!(
            (len as u64) * 4 <= bytes,
            "handle holds {bytes} bytes, fewer than {len} 32-bit elements"
        );
        Self { handle, len }
    }

    /// The cubecl handle.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads the buffer back as `f32` (blocks until the device is done with it).
    pub fn read_f32(&self, client: &Client) -> Vec<f32> {
        self.read_range_f32(client, 0..self.len)
    }

    /// Reads the buffer back as `u32` (blocks until the device is done with it).
    pub fn read_u32(&self, client: &Client) -> Vec<u32> {
        if self.len == 0 {
            return Vec::new();
        }
        let bytes = client.read_one_unchecked(self.handle.clone());
        u32::from_bytes(&bytes)[..self.len].to_vec()
    }

    /// Reads elements `range` back as `f32` (blocks until the device is done with them).
    ///
    /// # Panics
    ///
    /// If `range` is not inside `0..len`.
    pub fn read_range_f32(&self, client: &Client, range: core::ops::Range<usize>) -> Vec<f32> {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "range out of bounds"
        );
        if range.is_empty() {
            return Vec::new();
        }
        let used = self.handle.size_in_used();
        let start = range.start as u64 * 4;
        let end_gap = used - range.end as u64 * 4;
        let handle = self.handle.clone().offset_start(start).offset_end(end_gap);
        let bytes = client.read_one_unchecked(handle);
        f32::from_bytes(&bytes)[..range.len()].to_vec()
    }

    /// The kernel argument for this buffer.
    pub(crate) fn arg(&self) -> BufferArg {
        // SAFETY: the struct invariant: the allocation holds `len` 32-bit elements.
        unsafe { BufferArg::from_raw_parts(self.handle.clone(), self.len) }
    }
}
