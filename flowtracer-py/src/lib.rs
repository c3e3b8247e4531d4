//! The `flowtracer` Python package: the core's front door ([`Sequence`](flowtracer_core::Sequence) and [`Tracer`](flowtracer_core::Tracer)) for
//! numpy arrays.
//!
//! The extension module is `flowtracer._native`; `python/flowtracer/__init__.py` gives each
//! entry point a Python signature and a doctested docstring and calls into this module. What
//! this crate adds to the core, and nothing more:
//!
//! - **input**: numpy arrays (or anything `numpy.asarray` takes) of float32 or float64 are read
//!   in place when C-contiguous (zero-copy, through `PyReadonlyArray`) and copied in C order
//!   otherwise; every other dtype is an error naming it. Spans are `(start, stop)` tuples,
//!   `range`s (step 1) or ascending integer sequences, turned into [`Tokens`](flowtracer_core::Tokens);
//! - **options**: keyword options by the core's field names, starting from the core's
//!   defaults (`Config::default()`, `LayerSelection::default()`, `BackboneConfig::default()`),
//!   enum values parsed by the core's `FromStr`; an unknown option is the core's
//!   [`flowtracer_core::Error::UnknownName`] listing the allowed ones;
//! - **batches**: a list of sequences, a padded `[B, ...]` array with a `(B, N)` attention mask
//!   (left or right padding), or one buffer cut by `cu_seqlens`, traced by
//!   [`Tracer::trace_batch`](flowtracer_core::Tracer::trace_batch) (parallel: the core's `parallel` feature) into `(B, T)` weights
//!   aligned to completion tokens;
//! - **errors**: every [`Error`](flowtracer_core::Error) becomes `flowtracer.Error` (a `ValueError`) with `kind` (the
//!   variant's name) and the error's fields as attributes;
//! - **queries and keys**: `score_qk` and the layer-at-a-time `QkAccumulator` on the core's
//!   Q/K stage ([`flowtracer_core::qk`], method §15), from float32, float64, float16 or
//!   bfloat16 (its 16-bit words, reinterpreted as `half::bf16` in place) arrays;
//! - the GIL is released (`Python::detach`) around every computation.

extern crate alloc;

mod batch;
mod error;
mod input;
mod options;
mod qk;
mod qk_input;
mod single;
mod testing;

use flowtracer_core::vocabulary::metrics;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::error::{ERROR_ATTRIBUTES, Error};
use crate::options::{BACKBONE_ALLOWED, QK_SCORING_ALLOWED, SCORING_ALLOWED, SHAPE_ALLOWED};
use crate::single::PyTrace;

/// The extension module `flowtracer._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("Error", py.get_type::<Error>())?;
    m.add("METRICS", PyTuple::new(py, metrics::ALL)?)?;
    m.add("ERROR_ATTRIBUTES", PyTuple::new(py, ERROR_ATTRIBUTES)?)?;
    m.add("SCORING_OPTIONS", PyTuple::new(py, SCORING_ALLOWED)?)?;
    m.add("SHAPING_OPTIONS", PyTuple::new(py, SHAPE_ALLOWED)?)?;
    m.add("BACKBONE_OPTIONS", PyTuple::new(py, BACKBONE_ALLOWED)?)?;
    m.add("QK_SCORING_OPTIONS", PyTuple::new(py, QK_SCORING_ALLOWED)?)?;
    m.add_class::<PyTrace>()?;
    m.add_class::<qk::PyQkAccumulator>()?;
    m.add_function(wrap_pyfunction!(options::defaults, m)?)?;
    m.add_function(wrap_pyfunction!(options::choices, m)?)?;
    m.add_function(wrap_pyfunction!(options::select_layers, m)?)?;
    m.add_function(wrap_pyfunction!(single::trace, m)?)?;
    m.add_function(wrap_pyfunction!(single::shape_advantages, m)?)?;
    m.add_function(wrap_pyfunction!(batch::score_batch, m)?)?;
    m.add_function(wrap_pyfunction!(qk::score_qk, m)?)?;
    m.add_function(wrap_pyfunction!(options::qk_defaults, m)?)?;
    m.add_function(wrap_pyfunction!(testing::_qk_data_ptr, m)?)?;
    m.add_function(wrap_pyfunction!(testing::_data_ptr, m)?)?;
    m.add_function(wrap_pyfunction!(testing::_batch_data_ptrs, m)?)?;
    m.add_function(wrap_pyfunction!(testing::_core_trace_f64, m)?)?;
    m.add_function(wrap_pyfunction!(testing::_reference_trace_f64, m)?)?;
    m.add_function(wrap_pyfunction!(testing::_core_shape_advantages_f64, m)?)?;
    m.add_function(wrap_pyfunction!(testing::_busy, m)?)?;
    m.add_function(wrap_pyfunction!(testing::_threads, m)?)?;
    m.add_function(wrap_pyfunction!(testing::_core_qk_f64, m)?)?;
    m.add_function(wrap_pyfunction!(testing::_reference_qk_f64, m)?)?;
    m.add_function(wrap_pyfunction!(testing::_core_batch_seconds, m)?)?;
    Ok(())
}
