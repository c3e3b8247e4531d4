//! The forward pass that keeps the post-position queries and keys of chosen layers instead of
//! their attention probabilities: what [`crate::gpu_credit`] hands to flowtracer-gpu's Q/K
//! kernels.

use burn::tensor::{Device, Tensor};

use super::{Batch, ForwardOutput, Transformer, int_tensor};

impl Transformer {
    /// [`forward_batch`](Self::forward_batch) without the attention capture, returning for
    /// each layer of `capture` (in that order) its queries and keys side by side, `[B, T, 2d]`:
    /// column `h · d_head + j` of the first `d` columns is `Q[b][h][t][j]`, of the last `d`
    /// columns `K[b][h][t][j]` (the model has as many key heads as query heads, no rotary
    /// positions: the projections are what its softmax reads, scaled by `1 / sqrt(d_head)`).
    ///
    /// The logits are those of [`forward_batch`](Self::forward_batch) (the same blocks run on
    /// the same input; the captured projection is computed once more from the block's input).
    ///
    /// # Panics
    ///
    /// As [`forward_batch`](Self::forward_batch).
    pub fn forward_batch_qk(
        &self,
        batch: &Batch,
        capture: &[usize],
        device: &Device,
    ) -> (ForwardOutput, Vec<Tensor<3>>) {
        assert!(batch.len <= self.max_len, "sequence longer than max_len");
        for &l in capture {
            assert!(l < self.blocks.len(), "captured layer {l} out of range");
        }
        let tokens = int_tensor(
            batch.tokens.iter().map(|&t| i64::from(t)).collect(),
            batch.batch,
            batch.len,
            device,
        );
        let pos = int_tensor(batch.positions(), batch.batch, batch.len, device);
        let bias = batch.mask_bias(device);
        let mut x = self.tok.forward(tokens) + self.pos.forward(pos);
        let mut captured: Vec<(usize, Tensor<3>)> = Vec::new();
        for (l, block) in self.blocks.iter().enumerate() {
            if capture.contains(&l) {
                let d = x.dims()[2];
                let qkv = block.qkv.forward(block.ln1.forward(x.clone()));
                captured.push((l, qkv.narrow(2, 0, 2 * d)));
            }
            x = block.forward(x, bias.clone(), None, false).0;
        }
        let logits = self.head.forward(self.ln_f.forward(x));
        let qk = capture
            .iter()
            .map(|l| {
                let i = captured.iter().position(|(c, _)| c == l).expect("captured");
                captured[i].1.clone()
            })
            .collect();
        (
            ForwardOutput {
                logits,
                attention: Vec::new(),
            },
            qk,
        )
    }

    /// Number of attention heads of every block.
    pub fn num_heads(&self) -> usize {
        self.blocks.first().map_or(1, |b| b.n_heads)
    }
}
