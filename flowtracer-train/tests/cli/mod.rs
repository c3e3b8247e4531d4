//! Tests of the `flowtracer score` and `flowtracer explain` commands, run as a binary on
//! files the tests write.

mod bad_input;
mod explain;
mod score;
mod support;
