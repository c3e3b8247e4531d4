//! FlowTracer: token-level credit assignment for reinforcement learning on language models.
//!
//! GRPO gives every token of a response the same advantage. FlowTracer (arXiv 2606.10646)
//! reads the model's own attention as a graph, keeps the influence that reaches the answer,
//! conserves it, injects unit flow at the question, and scores every token by the flow that
//! passes through it; the top 40% of response tokens by flow get 1.5x the advantage.
//!
//! The pipeline, one module per stage: [`qk`] (for models that run FlashAttention: `Ā`
//! straight from post-RoPE queries and keys, no per-head `N x N`) or [`aggregate`] (from
//! attention probabilities) → [`sequence`] (the validated input: `Ā` and its spans) →
//! reach → [`flow`] → [`backbone`] → [`shaping`] → [`grpo`], with [`baselines`] for the
//! point-wise alternatives, [`reference`](mod@reference) for the naive
//! oracles the tests check every fast path against, [`vocabulary`] for the option names and
//! metric names every crate shares, and [`Tracer`] as the front door (with [`trace()`] for
//! the default configuration). The method itself is in
//! [`docs/method.md`](https://example.invalid/flowtracer/docs/method.md) of the repository.
//!
//! # Example
//!
//! ```
//! use flowtracer_core::{Config, Sequence, Spans, Tracer};
//!
//! // Aggregated attention Ā of 5 tokens (row k = query k over keys 0..=k): method §12.
//! let a: [f32; 25] = [
//!     1.0, 0.0, 0.0, 0.0, 0.0,
//!     0.5, 0.5, 0.0, 0.0, 0.0,
//!     0.3, 0.5, 0.2, 0.0, 0.0,
//!     0.1, 0.2, 0.3, 0.4, 0.0,
//!     0.1, 0.1, 0.6, 0.1, 0.1,
//! ];
//! let mut tracer = Tracer::new(Config::default())?;
//! let t = tracer.trace(&Sequence::dense(&a, Spans::new(0..2, 4..5))?)?;
//! assert_eq!(tracer.token_weights(&t), [1.0, 1.0, 1.5, 1.0, 1.5]);
//! # Ok::<(), flowtracer_core::Error>(())
//! ```
//!
//! # Numerical conventions
//!
//! - **Edge direction.** Tokens are nodes; `Ā[k][i]` (query `k` attends key `i <= k`) is
//!   the capacity of the edge `i -> k`, forward in time. The diagonal is not an edge.
//! - **Layout.** `Ā` is dense row-major `N x N` (row = query; entries above the diagonal
//!   are ignored and never read) or packed lower-triangular rows ([`aggregate::Layout`]);
//!   per-layer input is `[layers][heads][N][N]` of either.
//! - **Normalisation.** Nothing is renormalised: rows of `Ā` may sum to less than 1
//!   (truncated or sparse attention) and at most `1 + row_tolerance` (default `1e-3`).
//!   The conserved kernel `W'` is normalised implicitly through the reach `h`.
//! - **Precision.** `F` (`f32` or `f64`) is the storage type. Reach, flow, row masses and
//!   all GRPO sums are accumulated in f64, whatever `F` is; liveness is `h > 0` exactly.
//! - **NaN policy.** Non-finite or negative attention is an error naming its first position
//!   (lowest flat index); it is never propagated into results. Checks run in the order of
//!   [method §13](docs/method.md#s13) ([`validate`]), identically on CPU and GPU.
//! - **Q/K input.** [`qk`] forms `Ā` from post-RoPE queries and keys in safe register tiles
//!   and its own vectorisable `exp` (error bound stated there) rather than through a GEMM
//!   crate: `gemm`/`matrixmultiply` are `unsafe fn` and need std for AVX/FMA detection, and
//!   the core stays `forbid(unsafe_code)` and no_std; see that module for the trade-off.
//! - **Panics.** None on any input data. Functions that take caller-sized buffers panic on
//!   a wrong buffer length, as documented under `# Panics`.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod aggregate;
pub mod backbone;
pub mod baselines;
mod error;
mod float;
pub mod flow;
pub mod grpo;
mod kernels;
pub mod qk;
mod reach;
pub mod reference;
mod rows;
pub mod sequence;
pub mod shaping;
pub mod trace;
pub mod validate;
pub mod vocabulary;

pub use error::{Error, Position, QkTensor, Span, Stage};
pub use float::FlowFloat;
pub use reach::AnswerMode;
pub use sequence::{LayerShape, Sequence, Spans, Tokens};
pub use trace::{Config, Trace, TraceConfig, Tracer, trace};

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The book's Rust chapter, compiled and run as doctests.
#[doc = include_str!("../../docs/core.md")]
#[cfg(doctest)]
pub struct BookCoreDoctests;
