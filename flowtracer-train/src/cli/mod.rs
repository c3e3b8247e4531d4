//! The subcommands of the `flowtracer` binary.
//!
//! `demo`, `train` and `compare` run the trainer; `score` and `explain` score attention
//! dumps from other models.

pub mod compare;
pub mod demo;
pub mod explain;
pub mod knobs;
pub mod score;
pub mod train;
