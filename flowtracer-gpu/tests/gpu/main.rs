//! GPU kernels against flowtracer-core, on whatever wgpu adapter the machine has (lavapipe
//! on CPU-only machines). One test binary; the modules are the topics.
//!
//! Nothing is skipped silently:
//!
//! - built without the `wgpu` feature (a plain `cargo test`), only the launch-plan tests
//!   run, and `device_tests_need_the_wgpu_feature` prints `SKIPPED:` with the reason;
//! - with the feature but no wgpu adapter, every device test **fails** with a message
//!   saying what to install (see `common::device`), unless [`ALLOW_NO_GPU`] is set to `1`,
//!   which turns the failures into one `SKIPPED:` line.
//!
//! `cargo test-all` (the alias in `.cargo/config.toml`) builds with the feature; CI fails
//! if its test log contains `SKIPPED`.

#[cfg(feature = "wgpu")]
mod bad_input;
#[cfg(feature = "wgpu")]
mod batched;
#[cfg(feature = "wgpu")]
mod common;
#[cfg(feature = "wgpu")]
mod conformance;
#[cfg(feature = "wgpu")]
mod dirty;
#[cfg(feature = "wgpu")]
mod grid;
mod plan;
#[cfg(feature = "wgpu")]
mod shaping;
#[cfg(feature = "wgpu")]
mod worked_example;

/// Set to `1` to let the device tests skip, instead of fail, on a machine without a wgpu
/// adapter.
#[cfg(feature = "wgpu")]
pub(crate) const ALLOW_NO_GPU: &str = "FLOWTRACER_ALLOW_NO_GPU";

/// Whether [`ALLOW_NO_GPU`] is set to `1`.
#[cfg(feature = "wgpu")]
pub(crate) fn allow_no_gpu() -> bool {
    std::env::var_os(ALLOW_NO_GPU).is_some_and(|v| v == "1")
}

/// Prints `SKIPPED: reason` straight to the process's stderr, past the test harness's
/// output capture, so that it shows in the log of a passing run.
pub(crate) fn skipped(reason: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {reason}");
}

#[cfg(not(feature = "wgpu"))]
#[test]
fn device_tests_need_the_wgpu_feature() {
    skipped(
        "flowtracer-gpu built without the wgpu feature: its device tests (kernels against \
         the core) did not run; run `cargo test-all` or `cargo test -p flowtracer-gpu \
         --features wgpu`",
    );
}
