//! flowtracer-train: a Burn GRPO trainer with FlowTracer credit assignment.
//!
//! The crate is the reference consumer of `flowtracer-core`: a small decoder-only transformer
//! ([`model`]) is warmed up by supervised learning ([`sft`]) on a built-in verifiable task
//! ([`task`]), then trained with GRPO ([`trainer`], knobs in [`config`]) where each token's
//! advantage is shaped by a credit method ([`credit`]): FlowTracer, uniform (plain GRPO) or a
//! point-wise baseline. All GRPO math (group advantages, clipping, KL, loss aggregation) and
//! all shaping come from `flowtracer-core`; this crate only moves tensors between burn and the
//! core's slices. The option enums (credit method, loss type, reward scaling), their defaults,
//! the `flow/*` metric names ([`metrics`]) and the random generator (`SplitMix64`) are the
//! core's too.
//!
//! The attention that FlowTracer scores is captured in the no-grad forward pass that computes
//! the old log-probabilities, averaged over heads on the device; no extra forward pass is paid.
//! The core returns `d loss / d logp` per token; the trainer backpropagates
//! `sum(coef * logp)`, whose gradient is the exact GRPO gradient.
//!
//! Every file the trainer and the CLI write goes through [`atomic::write_atomic`].
#![forbid(unsafe_code)]

extern crate alloc;

pub mod answer;
pub mod atomic;
pub mod causal;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod countdown;
pub mod credit;
pub mod error;
mod fault;
#[cfg(feature = "wgpu")]
pub mod gpu_credit;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod render;
pub mod rollout;
pub mod run;
pub mod sampling;
pub mod sft;
pub mod task;
pub mod tokenizer;
pub mod trainer;
