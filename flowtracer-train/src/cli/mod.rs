//! The subcommands of the `flowtracer` binary.
//!
//! `demo`, `train` and `compare` run the trainer; `causal` runs the causal test of credit on a
//! saved model; `score` and `explain` score attention
//! dumps from other models. Every subcommand returns a [`CliError`], which carries the exit
//! code the binary returns (1: a run failed, 2: bad input).

mod attention;
pub mod causal;
pub mod compare;
pub mod demo;
mod error;
pub mod explain;
pub mod knobs;
pub mod pilot;
mod qk;
mod runs;
pub mod score;
pub mod train;

pub use error::{CliError, ExitCode};
