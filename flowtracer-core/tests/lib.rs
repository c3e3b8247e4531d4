//! The one integration-test binary of flowtracer-core (one binary links once; mod files
//! keep it organised).

mod common;
mod errors;
mod front_door;
mod grpo;
mod properties;
mod qk;
mod qk_errors;
mod qk_stream;
mod regressions;
mod stages;
mod worked_example;
