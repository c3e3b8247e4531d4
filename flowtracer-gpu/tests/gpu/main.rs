//! GPU kernels against flowtracer-core, on whatever wgpu adapter the machine has (lavapipe
//! on CPU-only machines). One test binary; the modules are the topics.
//!
//! A machine without a wgpu adapter fails every test with a message saying what to
//! install (see `common::client`); nothing is skipped silently.

mod bad_input;
mod batched;
mod common;
mod conformance;
mod dirty;
mod plan;
mod shaping;
mod worked_example;
