//! flowtracer-train: a Burn GRPO trainer with FlowTracer credit assignment.
//!
//! The crate is the reference consumer of `flowtracer-core`: a small decoder-only transformer
//! ([`model`]) is warmed up by supervised learning ([`sft`]) on a built-in verifiable task
//! ([`task`]), then trained with GRPO ([`grpo`]) where each token's advantage is shaped by a
//! credit method ([`credit`]): FlowTracer, uniform (plain GRPO) or a point-wise baseline.
//! All GRPO math (group advantages, clipping, KL, loss aggregation) and all shaping come from
//! `flowtracer-core`; this crate only moves tensors between burn and the core's slices.
//!
//! The attention that FlowTracer scores is captured in the no-grad forward pass that computes
//! the old log-probabilities, averaged over heads on the device; no extra forward pass is paid.
//! The core returns `d loss / d logp` per token; the trainer backpropagates
//! `sum(coef * logp)`, whose gradient is the exact GRPO gradient.
#![forbid(unsafe_code)]

extern crate alloc;

pub mod answer;
pub mod checkpoint;
pub mod cli;
pub mod credit;
pub mod grpo;
pub mod model;
pub mod plot;
pub mod render;
pub mod rng;
pub mod run;
pub mod sampling;
pub mod sft;
pub mod task;
pub mod tokenizer;
