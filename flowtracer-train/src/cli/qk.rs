//! `flowtracer score --qk FILE`: `Ā` from post-RoPE queries and keys
//! ([method §15](docs/method.md#s15)) for models that run FlashAttention or SDPA.
//!
//! # Format
//!
//! A `.safetensors` file with, for every layer `L` it holds (the model's layer number):
//!
//! | tensor | shape | |
//! |---|---|---|
//! | `q.{L}` | `[H_q, N, d]` (or `[1, H_q, N, d]`) | post-RoPE queries |
//! | `k.{L}` | `[H_kv, N, d]` (or `[1, H_kv, N, d]`) | post-RoPE keys (`H_q` a multiple of `H_kv`) |
//! | `lse.{L}` | `[H_q, N]` (or `[1, H_q, N]`), optional | FlashAttention's saved log-sum-exp (natural log) |
//!
//! as F32, F16 or BF16 (F64 is accepted and computed in f64; 16-bit floats are computed in
//! f32), every layer of one shape. `__metadata__` keys (string values, as safetensors
//! writers store them; JSON numbers are accepted too), all optional: `num_layers` (the
//! model's total, so `--layers middle` is the model's middle band even when the file holds
//! only those layers; default: one past the largest `L` in the file), `scale` (default
//! `1/sqrt(d)`), `window` (the sliding window `w`, as method §15 maps Mistral's and Gemma's),
//! `softcap` (Gemma 2's `attn_logit_softcapping`).
//! `--layers` selects by model layer number; a selected layer missing from the file is an
//! error.

use std::path::{Path, PathBuf};

use flowtracer_core::aggregate::{LayerSelection, select_layers};
use flowtracer_core::qk::{QkAccumulator, QkConfig, QkLayer, QkShape};
use flowtracer_io::{Array, Data, SafeTensors};
use serde::Deserialize;

use super::CliError;
use crate::atomic::read_regular;

/// A `--qk` file, opened and checked for shape, before any layer is computed.
pub(crate) struct QkFile {
    bytes: Vec<u8>,
    path: PathBuf,
    /// The layers the file holds, ascending.
    held: Vec<usize>,
    num_layers: usize,
    shape: QkShape,
    has_lse: bool,
    config: QkConfig,
}

/// The four `__metadata__` keys read; every other key is skipped without being stored.
#[derive(Deserialize, Default)]
struct Metadata {
    num_layers: Option<serde_json::Value>,
    scale: Option<serde_json::Value>,
    window: Option<serde_json::Value>,
    softcap: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Header {
    #[serde(rename = "__metadata__", default)]
    metadata: Option<Metadata>,
}

/// A metadata value as a string (safetensors stores strings; a JSON number is taken as is).
fn text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.trim().to_owned()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `[H, N, d]`, or `[1, H, N, d]` (a batch of one), as `(H, N, d)`; `[H, N]` as `(H, N, 1)`
/// when `rank2`.
fn dims(shape: &[usize], rank2: bool) -> Option<(usize, usize, usize)> {
    match (shape, rank2) {
        ([h, n, d], false) | ([1, h, n, d], false) => Some((*h, *n, *d)),
        ([h, n], true) | ([1, h, n], true) => Some((*h, *n, 1)),
        _ => None,
    }
}

impl QkFile {
    /// Reads the file, its tensor names and shapes, and its metadata.
    pub(crate) fn open(path: &Path) -> Result<Self, CliError> {
        let shown = path.display();
        let bad = |m: String| CliError::bad_input(format!("--qk {shown}: {m}"));
        // A regular file, read up to the size it has (a device, FIFO or directory is refused).
        let bytes = read_regular(path, u64::MAX)
            .map_err(|e| CliError::bad_input(format!("cannot read --qk {shown}: {e}")))?;
        let st = SafeTensors::parse(&bytes).map_err(|e| bad(e.to_string()))?;
        // The header was checked by `parse`: 8 bytes of length, then that much JSON.
        let len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
        let header: Header = serde_json::from_slice(&bytes[8..8 + len])
            .map_err(|e| bad(format!("__metadata__: {e}")))?;
        let meta = header.metadata.unwrap_or_default();
        let mut held = Vec::new();
        for t in st.tensors() {
            let Some((kind, number)) = t.name.split_once('.') else {
                return Err(bad(format!(
                    "unexpected tensor {:?} (expected q.L, k.L or lse.L)",
                    t.name
                )));
            };
            let layer: usize = number.parse().map_err(|_| {
                bad(format!(
                    "unexpected tensor {:?} (L must be a layer number)",
                    t.name
                ))
            })?;
            match kind {
                "q" => held.push(layer),
                "k" | "lse" => {}
                _ => {
                    return Err(bad(format!(
                        "unexpected tensor {:?} (expected q.L, k.L or lse.L)",
                        t.name
                    )));
                }
            }
        }
        held.sort_unstable();
        let Some(&first) = held.first() else {
            return Err(bad(String::from("no q.L tensor")));
        };
        let info = |name: String| {
            st.get(&name)
                .ok_or_else(|| bad(format!("layer {} has no tensor {name}", name_layer(&name))))
        };
        let q0 = info(format!("q.{first}"))?;
        let k0 = info(format!("k.{first}"))?;
        let ((q_heads, n, d), (kv_heads, kn, kd)) = match (
            dims(&q0.shape, false),
            dims(&k0.shape, false),
        ) {
            (Some(q), Some(k)) => (q, k),
            _ => {
                return Err(bad(format!(
                    "q.{first} has shape {:?} and k.{first} {:?}; expected [H_q, N, d] and [H_kv, N, d]",
                    q0.shape, k0.shape
                )));
            }
        };
        if (kn, kd) != (n, d) {
            return Err(bad(format!(
                "q.{first} is over {n} tokens of dimension {d}, but k.{first} over {kn} of dimension {kd}"
            )));
        }
        let has_lse = st.get(&format!("lse.{first}")).is_some();
        for &l in &held {
            let want = [
                (format!("q.{l}"), q_heads, false),
                (format!("k.{l}"), kv_heads, false),
            ];
            for (name, heads, _) in want {
                let t = info(name.clone())?;
                if dims(&t.shape, false) != Some((heads, n, d)) {
                    return Err(bad(format!(
                        "{name} has shape {:?}; every layer must have the shape of layer {first} ([{heads}, {n}, {d}])",
                        t.shape
                    )));
                }
            }
            let lse = st.get(&format!("lse.{l}"));
            if lse.is_some() != has_lse {
                return Err(bad(format!(
                    "some layers have a saved lse.L and some do not (layer {first}: {has_lse}, layer {l}: {})",
                    lse.is_some()
                )));
            }
            if let Some(t) = lse
                && dims(&t.shape, true) != Some((q_heads, n, 1))
            {
                return Err(bad(format!(
                    "lse.{l} has shape {:?}; expected [{q_heads}, {n}]",
                    t.shape
                )));
            }
        }
        let number = |key: &str,
                      v: &Option<serde_json::Value>|
         -> Result<Option<String>, CliError> {
            v.as_ref()
                .map(|v| text(v).ok_or_else(|| bad(format!("__metadata__ {key} must be a string"))))
                .transpose()
        };
        let last = *held.last().expect("non-empty");
        let num_layers = match number("num_layers", &meta.num_layers)? {
            Some(t) => t
                .parse::<usize>()
                .map_err(|_| bad(format!("__metadata__ num_layers {t:?} is not a count")))?,
            None => last + 1,
        };
        if last >= num_layers {
            return Err(bad(format!(
                "holds layer {last}, but __metadata__ num_layers is {num_layers}"
            )));
        }
        let mut config = QkConfig::default();
        if let Some(t) = number("scale", &meta.scale)? {
            let s = t
                .parse::<f64>()
                .map_err(|_| bad(format!("__metadata__ scale {t:?} is not a number")))?;
            config = config.with_scale(s);
        }
        if let Some(t) = number("softcap", &meta.softcap)? {
            let c = t
                .parse::<f64>()
                .map_err(|_| bad(format!("__metadata__ softcap {t:?} is not a number")))?;
            config = config.with_logit_softcap(c);
        }
        if let Some(t) = number("window", &meta.window)? {
            let w = t
                .parse::<usize>()
                .map_err(|_| bad(format!("__metadata__ window {t:?} is not a count")))?;
            config = config.with_window(w);
        }
        let shape = QkShape::new(q_heads, kv_heads, n, d);
        shape.check().map_err(|e| bad(e.to_string()))?;
        config.validate().map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            bytes,
            path: path.to_owned(),
            held,
            num_layers,
            shape,
            has_lse,
            config,
        })
    }

    /// Tokens `N`.
    pub(crate) fn n(&self) -> usize {
        self.shape.n
    }

    /// `Ā` (dense, f64) over the selected layers (model layer numbers) and every head, and
    /// the layers used, ascending.
    pub(crate) fn aggregate(
        &self,
        selection: &LayerSelection,
        row_tolerance: f64,
    ) -> Result<(Vec<f64>, Vec<usize>), CliError> {
        let shown = self.path.display();
        let bad = |m: String| CliError::bad_input(format!("--qk {shown}: {m}"));
        let core = |e: flowtracer_core::Error| bad(e.to_string());
        let mut selected = select_layers(self.num_layers, selection).map_err(core)?;
        selected.sort_unstable();
        if let Some(&l) = selected
            .iter()
            .find(|l| self.held.binary_search(l).is_err())
        {
            return Err(bad(format!(
                "layer {l} is selected (--layers {selection}) but the file has no q.{l}; it holds layers {:?}",
                self.held
            )));
        }
        let st = SafeTensors::parse(&self.bytes).map_err(|e| bad(e.to_string()))?;
        let read = |name: String| st.read(&name).map_err(|e| bad(format!("{name}: {e}")));
        let mut acc = QkAccumulator::<f64>::new(
            self.shape,
            self.config.with_row_tolerance(row_tolerance),
            None,
        )
        .map_err(core)?;
        // One layer in memory at a time, as a forward hook would feed them.
        for &l in &selected {
            let q = read(format!("q.{l}"))?;
            let k = read(format!("k.{l}"))?;
            let lse: Option<Vec<f32>> = if self.has_lse {
                Some(match read(format!("lse.{l}"))?.data {
                    Data::F32(v) => v,
                    Data::F64(v) => v.iter().map(|&x| x as f32).collect(),
                })
            } else {
                None
            };
            add(&mut acc, l, q, k, lse.as_deref()).map_err(core)?;
        }
        Ok((acc.finish_matrix().map_err(core)?, selected))
    }
}

/// Adds one layer, in f32 when both tensors are 32- or 16-bit, else in f64.
fn add(
    acc: &mut QkAccumulator<f64>,
    layer: usize,
    q: Array,
    k: Array,
    lse: Option<&[f32]>,
) -> Result<(), flowtracer_core::Error> {
    match (q.data, k.data) {
        (Data::F32(q), Data::F32(k)) => {
            acc.add_layer(&with_lse(QkLayer::new(layer, &q[..], &k[..]), lse))
        }
        (q, k) => {
            let (q, k) = (q.into_f64(), k.into_f64());
            acc.add_layer(&with_lse(QkLayer::new(layer, &q[..], &k[..]), lse))
        }
    }
}

fn with_lse<'a, T>(layer: QkLayer<'a, T>, lse: Option<&'a [f32]>) -> QkLayer<'a, T> {
    match lse {
        Some(x) => layer.with_lse(x),
        None => layer,
    }
}

/// The layer number of a tensor name `kind.L`.
fn name_layer(name: &str) -> &str {
    name.split_once('.').map_or(name, |(_, l)| l)
}
