//! A `#![no_std]` library with its own `#[panic_handler]`. If anything in the dependency
//! graph of `flowtracer-core` or `flowtracer-io` links `std`, the handler clashes with std's
//! and the build fails with E0152 (duplicate lang item `panic_impl`). A host build with
//! `--no-default-features` cannot prove this; this crate can.
#![no_std]

extern crate alloc;

use alloc::vec::Vec;
use core::ops::Range;

/// The panic handler that would clash with std's.
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

/// Uses the core's front door so the whole algorithm is linked, not just declared.
pub fn score(attention: &[f32], question: Range<usize>, answer: Range<usize>) -> Vec<f32> {
    use flowtracer_core::{Config, Sequence, Spans, Tracer};
    let weights = || -> Result<Vec<f32>, flowtracer_core::Error> {
        let mut tracer = Tracer::new(Config::default())?;
        let t = tracer.trace(&Sequence::dense(attention, Spans::new(question, answer))?)?;
        Ok(tracer.token_weights(&t))
    };
    weights().unwrap_or_default()
}

/// Uses both byte readers of flowtracer-io (serde_json with `alloc` only included).
pub fn parse(bytes: &[u8]) -> usize {
    let npy = flowtracer_io::read_npy(bytes).map(|a| a.data.len()).unwrap_or(0);
    let st = flowtracer_io::read_safetensors(bytes).map(|t| t.len()).unwrap_or(0);
    npy + st
}

/// Uses the Q/K stage (and so the `half` crate, which must not link std either).
pub fn from_qk(q: &[f32], k: &[f32], n: usize, d: usize) -> Vec<f32> {
    use flowtracer_core::qk::{QkConfig, QkLayer, QkShape, sequence_from_qk};
    use flowtracer_core::{Sequence, Spans};
    let seq: Result<Sequence<'static, f32>, _> = sequence_from_qk(
        &[QkLayer::new(0, q, k)],
        QkShape::new(1, 1, n, d),
        &QkConfig::default(),
        None,
        Spans::new(0..1, n.saturating_sub(1)..n),
    );
    seq.map(|s| s.attention().to_vec()).unwrap_or_default()
}
