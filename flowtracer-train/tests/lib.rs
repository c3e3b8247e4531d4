//! Integration tests of flowtracer-train (one binary, debug build, tiny model).

mod answer;
mod causal;
mod cli;
mod common;
mod grpo;
mod resume;
mod run;
