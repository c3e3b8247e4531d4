//! The one numeric bound of the crate: [`FlowFloat`], implemented for `f32` and `f64`.

use core::fmt::{Debug, Display};
use core::iter::Sum;
use num_traits::{AsPrimitive, Float};

/// The floating-point types the algorithm runs on (`f32` and `f64`).
///
/// Blanket-implemented for every [`Float`] that converts to and from `f64` with `as`
/// semantics, so it never needs to be implemented by hand. Accumulations that decide
/// liveness or conservation (reach, flow, row masses) are carried out in `f64` whatever `F`
/// is; `F` is the storage type of inputs and outputs.
pub trait FlowFloat:
    Float + AsPrimitive<f64> + Debug + Display + Default + Sum + Send + Sync + 'static
{
    /// Converts from `f64` with `as` semantics (round to nearest; overflow gives infinity).
    fn from_f64_lossy(value: f64) -> Self;

    /// Converts to `f64` exactly (`f32` widens without loss).
    #[inline(always)]
    fn widen(self) -> f64 {
        self.as_()
    }
}

impl<T> FlowFloat for T
where
    T: Float + AsPrimitive<f64> + Debug + Display + Default + Sum + Send + Sync + 'static,
    f64: AsPrimitive<T>,
{
    #[inline(always)]
    fn from_f64_lossy(value: f64) -> Self {
        value.as_()
    }
}
