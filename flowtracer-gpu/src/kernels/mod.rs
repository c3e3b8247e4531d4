//! The kernels, one file per pass. Each file holds private `#[cube(launch_unchecked)]`
//! kernels and their `pub(crate)` launch wrappers; nothing here validates input (the
//! public entry points do, with the core's validators).

pub(crate) mod aggregate;
pub(crate) mod check;
pub(crate) mod flow;
pub(crate) mod qk;
pub(crate) mod reach;
pub(crate) mod seq_meta;
pub(crate) mod shaping;
pub(crate) mod throughput;
