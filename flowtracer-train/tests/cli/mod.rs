//! Tests of the `flowtracer score`, `explain` and `compare --report-only` commands, run as a
//! binary on files the tests write.

mod bad_input;
mod causal;
mod compare;
mod explain;
mod qk;
mod score;
mod support;
