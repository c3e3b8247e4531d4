//! `flowtracer train` as a user runs it: resume, divergence, knobs, concurrency and
//! durability, each a regression test of issue 14 (the binary, debug build, a tiny model).

mod concurrency;
mod crash;
mod divergence;
mod history;
mod inputs;
mod knobs;
mod resume;
mod signal;
mod support;
mod validation;
