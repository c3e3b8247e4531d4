//! The one tolerance between the device's f32 results and the core's f64 results.

/// An absolute-plus-relative tolerance: `x` is close to `reference` when
/// `|x - reference| <= abs + rel * |reference|` (never for a NaN on either side).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// The absolute part.
    pub abs: f64,
    /// The relative part, a fraction of `|reference|`.
    pub rel: f64,
}

impl Tolerance {
    /// Whether `|x - reference| <= abs + rel * |reference|`.
    ///
    /// # Examples
    ///
    /// ```
    /// use flowtracer_gpu::TOLERANCE;
    /// assert!(TOLERANCE.close(1.00009, 1.0));
    /// assert!(!TOLERANCE.close(1.0002, 1.0));
    /// assert!(!TOLERANCE.close(f64::NAN, 1.0));
    /// ```
    pub fn close(self, x: f64, reference: f64) -> bool {
        (x - reference).abs() <= self.abs + self.rel * reference.abs()
    }
}

/// How far this crate's f32 reach, flow, throughput and aggregated `Ā` (from attention
/// probabilities, or from queries and keys by [`crate::qk`]) may lie from `flowtracer_core`'s
/// f64 results on the same (f32) inputs, for sequences of up to a few hundred tokens:
/// `|x - reference| <= 1e-5 + 1e-4 * |reference|`. For `Ā` from queries and keys the
/// reference is the core's naive oracle `reference::attention_from_qk_capped` (tested with
/// `|q|, |k| <= 2`, `d <= 128`).
///
/// Stated once: the device tests (`tests/gpu`) and the cross-crate conformance suite
/// (`tests/tests/gpu.rs` and its `gpu/qk*.rs` modules, which also hold the core's own f32
/// path to it) check against this value.
pub const TOLERANCE: Tolerance = Tolerance {
    abs: 1e-5,
    rel: 1e-4,
};
