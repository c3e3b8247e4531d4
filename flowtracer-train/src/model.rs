//! A small decoder-only transformer whose attention probabilities can be read out.
//!
//! Pre-norm blocks (`x + attn(ln(x))`, `x + mlp(ln(x))`), learned absolute positions, GELU MLP,
//! no dropout anywhere (so the attention that is read out is the attention that was used).
//! Attention is written out by hand rather than with `burn::nn::attention` so the probabilities
//! of chosen layers can be returned, already averaged over heads on the device, from the same
//! forward pass that computes the logits.
//!
//! Masking: a query at column `q` sees key column `k` iff `k <= q` and `k` is a real token
//! (not padding). A padding query sees only itself, so no softmax row is empty. The causal
//! test also hides chosen key columns from every later query
//! ([`Batch::mask_bias_with_keys`]); without such columns the pass is the plain one.

use burn::module::{Module, Param};
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use flowtracer_core::baselines::SplitMix64;
use serde::{Deserialize, Serialize};

/// Shape of the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of attention heads (`d_model` must be a multiple).
    pub n_heads: usize,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Maximum sequence length (size of the position table).
    pub max_len: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            vocab_size: crate::tokenizer::VOCAB_SIZE,
            d_model: 64,
            n_heads: 4,
            n_layers: 4,
            max_len: 128,
        }
    }
}

impl ModelConfig {
    /// Builds a model with weights drawn from `seed` (deterministic, independent of burn's RNG).
    ///
    /// # Panics
    ///
    /// Panics if `d_model` is not a multiple of `n_heads`.
    pub fn init(&self, seed: u64, device: &Device) -> Transformer {
        assert!(
            self.n_heads > 0 && self.d_model.is_multiple_of(self.n_heads),
            "d_model must be a multiple of n_heads"
        );
        let mut rng = SplitMix64::new(seed);
        let d = self.d_model;
        let std = 0.02;
        let proj_std = 0.02 / (2.0 * self.n_layers as f64).sqrt();
        let blocks = (0..self.n_layers)
            .map(|_| Block {
                ln1: LayerNormConfig::new(d).init(device),
                qkv: linear(&mut rng, d, 3 * d, std, device),
                proj: linear(&mut rng, d, d, proj_std, device),
                ln2: LayerNormConfig::new(d).init(device),
                fc1: linear(&mut rng, d, 4 * d, std, device),
                fc2: linear(&mut rng, 4 * d, d, proj_std, device),
                n_heads: self.n_heads,
            })
            .collect();
        Transformer {
            tok: Embedding {
                weight: Param::from_tensor(uniform(&mut rng, [self.vocab_size, d], std, device)),
            },
            pos: Embedding {
                weight: Param::from_tensor(uniform(&mut rng, [self.max_len, d], std, device)),
            },
            blocks,
            ln_f: LayerNormConfig::new(d).init(device),
            head: linear(&mut rng, d, self.vocab_size, std, device),
            max_len: self.max_len,
        }
    }
}

/// Uniform init with the given standard deviation (bound `sqrt(3) * std`).
fn uniform<const D: usize>(
    rng: &mut SplitMix64,
    shape: [usize; D],
    std: f64,
    device: &Device,
) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let a = 3f64.sqrt() * std;
    let data: Vec<f32> = (0..n)
        .map(|_| ((rng.next_f64() * 2.0 - 1.0) * a) as f32)
        .collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

fn linear(rng: &mut SplitMix64, d_in: usize, d_out: usize, std: f64, device: &Device) -> Linear {
    Linear {
        weight: Param::from_tensor(uniform(rng, [d_in, d_out], std, device)),
        bias: Some(Param::from_tensor(Tensor::zeros([d_out], device))),
    }
}

#[cfg(feature = "wgpu")]
mod qk_capture;

/// One pre-norm transformer block.
#[derive(Module, Debug)]
pub struct Block {
    ln1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    n_heads: usize,
}

/// Cached keys and values of every layer, `[B, H, T, d_head]` each (for sampling).
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
}

impl KvCache {
    /// Number of cached key columns (0 when empty).
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |(k, _)| k.dims()[2])
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Block {
    /// `bias`: `[B, 1, S, Tk]` additive mask (0 or a large negative). Returns the block output
    /// and, if `capture`, the head-mean attention `[B, S, Tk]`.
    fn forward(
        &self,
        x: Tensor<3>,
        bias: Tensor<4>,
        cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
        capture: bool,
    ) -> (Tensor<3>, Option<Tensor<3>>) {
        let [b, s, d] = x.dims();
        let h = self.n_heads;
        let dh = d / h;
        let qkv = self.qkv.forward(self.ln1.forward(x.clone()));
        let split = |t: Tensor<3>| t.reshape([b, s, h, dh]).swap_dims(1, 2);
        let q = split(qkv.clone().narrow(2, 0, d));
        let mut k = split(qkv.clone().narrow(2, d, d));
        let mut v = split(qkv.narrow(2, 2 * d, d));
        if let Some(c) = cache {
            if let Some((ck, cv)) = c.take() {
                k = Tensor::cat(vec![ck, k], 2);
                v = Tensor::cat(vec![cv, v], 2);
            }
            *c = Some((k.clone(), v.clone()));
        }
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar(1.0 / (dh as f64).sqrt())
            + bias;
        let probs = softmax(scores, 3);
        let attn = capture.then(|| {
            let [_, _, sq, tk] = probs.dims();
            probs.clone().mean_dim(1).reshape([b, sq, tk])
        });
        let ctx = probs.matmul(v).swap_dims(1, 2).reshape([b, s, d]);
        let x = x + self.proj.forward(ctx);
        let y = self
            .fc2
            .forward(gelu(self.fc1.forward(self.ln2.forward(x.clone()))));
        (x + y, attn)
    }
}

/// The decoder-only transformer.
#[derive(Module, Debug)]
pub struct Transformer {
    tok: Embedding,
    pos: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    head: Linear,
    max_len: usize,
}

/// What a forward pass returns.
#[derive(Debug)]
pub struct ForwardOutput {
    /// Logits `[B, S, V]`.
    pub logits: Tensor<3>,
    /// Head-mean attention probabilities `[B, S, Tk]`, one per captured layer, in the order of
    /// the `capture` argument.
    pub attention: Vec<Tensor<3>>,
}

/// A padded batch ready for the model: tokens, positions and the key mask.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids, row-major `[B][T]`.
    pub tokens: Vec<u32>,
    /// Whether each column is a real token (not padding), `[B][T]`.
    pub valid: Vec<bool>,
    /// Batch size.
    pub batch: usize,
    /// Padded length.
    pub len: usize,
}

impl Batch {
    /// Position ids: the number of real tokens before each column (pads get 0).
    pub fn positions(&self) -> Vec<i64> {
        let mut out = vec![0i64; self.tokens.len()];
        for r in 0..self.batch {
            let mut p = 0i64;
            for c in 0..self.len {
                let i = r * self.len + c;
                if self.valid[i] {
                    out[i] = p;
                    p += 1;
                }
            }
        }
        out
    }

    /// Additive attention mask `[B, 1, T, T]` for a full (uncached) pass.
    pub fn mask_bias(&self, device: &Device) -> Tensor<4> {
        let (b, t) = (self.batch, self.len);
        Tensor::from_data(
            TensorData::new(self.bias_values(None), [b, 1, t, t]),
            device,
        )
    }

    /// [`mask_bias`](Self::mask_bias) with some key columns hidden: a column `k` with
    /// `masked_keys[r * T + k]` gets the logit `-inf` ([`MASKED`]) for every later query
    /// `q > k` of its row, in every layer, so each softmax renormalises over the remaining
    /// keys and nothing of column `k` reaches a later column. A masked column's own query
    /// still sees itself and the unmasked columns before it. With no column masked the bias
    /// equals [`mask_bias`](Self::mask_bias)'s, value for value.
    ///
    /// # Panics
    ///
    /// If `masked_keys.len()` is not `B * T` (a caller bug).
    pub fn mask_bias_with_keys(&self, masked_keys: &[bool], device: &Device) -> Tensor<4> {
        let (b, t) = (self.batch, self.len);
        assert_eq!(masked_keys.len(), b * t, "one flag per column");
        let bias = self.bias_values(Some(masked_keys));
        Tensor::from_data(TensorData::new(bias, [b, 1, t, t]), device)
    }

    fn bias_values(&self, masked_keys: Option<&[bool]>) -> Vec<f32> {
        let (b, t) = (self.batch, self.len);
        let mut bias = vec![0f32; b * t * t];
        for r in 0..b {
            for q in 0..t {
                for k in 0..t {
                    let ok = (k <= q && self.valid[r * t + k]) || k == q;
                    if !ok {
                        bias[(r * t + q) * t + k] = NEG;
                    } else if k < q && masked_keys.is_some_and(|m| m[r * t + k]) {
                        bias[(r * t + q) * t + k] = MASKED;
                    }
                }
            }
        }
        bias
    }
}

/// The logit of a key hidden by [`Batch::mask_bias_with_keys`] (the causal test): `-inf`, so
/// its softmax weight is exactly 0 (every row keeps at least its own column, so no row is
/// all `-inf`).
pub const MASKED: f32 = f32::NEG_INFINITY;

/// The additive mask value (large negative, finite so no row becomes NaN).
pub const NEG: f32 = -1.0e9;

/// Int tensor `[B, S]` from row-major ids.
pub fn int_tensor(values: Vec<i64>, b: usize, s: usize, device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(values, [b, s]), device)
}

impl Transformer {
    /// Number of blocks.
    pub fn num_layers(&self) -> usize {
        self.blocks.len()
    }

    /// Maximum sequence length.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Full forward pass over a padded batch; captures head-mean attention of the listed layers.
    ///
    /// # Panics
    ///
    /// Panics if a captured layer index is out of range or the batch is longer than `max_len`.
    pub fn forward_batch(
        &self,
        batch: &Batch,
        capture: &[usize],
        device: &Device,
    ) -> ForwardOutput {
        assert!(batch.len <= self.max_len, "sequence longer than max_len");
        let tokens = int_tensor(
            batch.tokens.iter().map(|&t| i64::from(t)).collect(),
            batch.batch,
            batch.len,
            device,
        );
        let pos = int_tensor(batch.positions(), batch.batch, batch.len, device);
        self.forward(tokens, pos, batch.mask_bias(device), None, capture)
    }

    /// [`forward_batch`](Self::forward_batch) with the key columns of `masked_keys` (`[B][T]`)
    /// hidden from every later query in every layer ([`Batch::mask_bias_with_keys`]).
    ///
    /// # Panics
    ///
    /// As [`forward_batch`](Self::forward_batch), and if `masked_keys.len()` is not `B * T`.
    pub fn forward_batch_masked(
        &self,
        batch: &Batch,
        masked_keys: &[bool],
        capture: &[usize],
        device: &Device,
    ) -> ForwardOutput {
        assert!(batch.len <= self.max_len, "sequence longer than max_len");
        let tokens = int_tensor(
            batch.tokens.iter().map(|&t| i64::from(t)).collect(),
            batch.batch,
            batch.len,
            device,
        );
        let pos = int_tensor(batch.positions(), batch.batch, batch.len, device);
        let bias = batch.mask_bias_with_keys(masked_keys, device);
        self.forward(tokens, pos, bias, None, capture)
    }

    /// The general forward pass. `bias` is `[B, 1, S, Tk]` where `Tk` counts cached plus new
    /// columns. With a cache, new keys and values are appended to it.
    pub fn forward(
        &self,
        tokens: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        bias: Tensor<4>,
        mut cache: Option<&mut KvCache>,
        capture: &[usize],
    ) -> ForwardOutput {
        for &l in capture {
            assert!(l < self.blocks.len(), "captured layer {l} out of range");
        }
        let mut x = self.tok.forward(tokens) + self.pos.forward(positions);
        if let Some(c) = cache.as_deref_mut()
            && c.layers.len() != self.blocks.len()
        {
            c.layers = (0..self.blocks.len()).map(|_| None).collect();
        }
        let mut captured: Vec<(usize, Tensor<3>)> = Vec::new();
        for (l, block) in self.blocks.iter().enumerate() {
            let want = capture.contains(&l);
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[l]);
            let (y, attn) = block.forward(x, bias.clone(), layer_cache, want);
            x = y;
            if let Some(a) = attn {
                captured.push((l, a));
            }
        }
        let logits = self.head.forward(self.ln_f.forward(x));
        let attention = capture
            .iter()
            .map(|l| {
                captured
                    .iter()
                    .find(|(c, _)| c == l)
                    .map(|(_, a)| a.clone())
                    .expect("captured")
            })
            .collect();
        ForwardOutput { logits, attention }
    }
}

/// Per-token log-probabilities of `targets` under `logits / temperature`.
///
/// `logits`: `[B, S, V]`, `targets`: `[B, S]`; returns `[B, S]`. With `temperature == 1` this
/// is the plain log-softmax (TRL divides the logits by the sampling temperature the same way).
pub fn token_logps(logits: Tensor<3>, targets: Tensor<2, Int>, temperature: f64) -> Tensor<2> {
    let logits = if temperature > 0.0 && temperature != 1.0 {
        logits.div_scalar(temperature)
    } else {
        logits
    };
    let logp = burn::tensor::activation::log_softmax(logits, 2);
    logp.gather(2, targets.unsqueeze_dim::<3>(2))
        .squeeze_dim::<2>(2)
}

/// Per-token entropy (nats) of `softmax(logits / temperature)`: `[B, S, V] -> [B, S]`.
pub fn token_entropy(logits: Tensor<3>, temperature: f64) -> Tensor<2> {
    let logits = if temperature > 0.0 && temperature != 1.0 {
        logits.div_scalar(temperature)
    } else {
        logits
    };
    let logp = burn::tensor::activation::log_softmax(logits, 2);
    let p = logp.clone().exp();
    (p * logp).sum_dim(2).squeeze_dim::<2>(2).neg()
}

/// Every float parameter of a module, flattened in visiting order (for tests and checks).
pub fn param_values<M: Module>(module: &M) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl burn::module::ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let v = param
                .val()
                .into_data()
                .try_into_vec::<f32>()
                .expect("f32 parameters");
            self.0.extend(v);
        }
    }
    let mut c = Collect(Vec::new());
    module.visit(&mut c);
    c.0
}
