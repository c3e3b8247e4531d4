//! `Ā` from post-RoPE queries and keys on the device ([method §15](docs/method.md#s15)),
//! mirroring `flowtracer_core::qk`: the same contract, validation order and errors, with
//! no per-head `N x N` buffer (mode (a): `Ā` is the only `N x N` buffer).
//!
//! Per layer, three launches (see `kernels::qk`): `qk_scan` (the first non-finite value of
//! `Q`, `K`, the log-sum-exp), `qk_stats` (each row's log-sum-exp over its visible valid
//! keys, or the check of a saved one), `qk_mean` (the head sum of the probabilities, one
//! read-modify-write of `Ā` per layer); at [`QkAccumulator::finish`] one `aggregate_scale`
//! by `1 / (layers · H_q)`. `Q·Kᵀ` is computed twice per layer (once per pass) on
//! `TILE x TILE` tiles through shared memory.
//!
//! Conventions are the core's: query head `h` reads key head `h / (H_q / H_kv)`; the scale
//! defaults to `1 / sqrt(d)` (`QkConfig::scale`); query `k` sees key `i` iff `i <= k`, `k - w
//! < i` with a window `w`, and the key is valid; a row that sees no valid key is zero.
//! Everything is `f32` on the device (the core's f32 arithmetic type for f32, f16 and bf16
//! input); against the core's f64 oracle `Ā` agrees within [`crate::TOLERANCE`] (tested on
//! `|q|, |k| <= 2`, `d <= 128`).
//!
//! # Layouts
//!
//! Each sequence's place in the layer buffers is a [`QkSequence`]: offsets and strides of
//! `Q [H_q][n][d]`, `K [H_kv][n][d]` (rows of `d` contiguous values) and the optional
//! log-sum-exp `[H_q][n]`. Constructors cover head-major sequences back to back
//! ([`QkSequence::ragged`]), a padded `[B][H][T][d]` batch ([`QkSequence::padded`]) and
//! FlashAttention's varlen layout with `cu_seqlens` ([`QkSequence::varlen`], validated by the
//! core's `split_ragged`, read in place without a copy).
//!
//! # Validation
//!
//! Shapes, configuration, mask lengths and buffer extents on the host, with the core's
//! validators (`QkShape::check`, `QkConfig::validate`, `split_ragged`, `Spans::check`);
//! the non-finite scan and the row checks on the device (`qk_scan`, `qk_stats`, flat
//! indices by `atomic min`), decoded into the core's [`Error::NonFiniteInput`],
//! [`Error::LogitsOverflow`] and [`Error::LseMismatch`] with the core's positions and order
//! (lowest layer first; `Q`, `K`, LSE; then the first bad row by (layer, head, row)).

use alloc::vec;
use alloc::vec::Vec;

use cubecl::prelude::*;
use flowtracer_core::qk::{QkConfig, QkShape};
use flowtracer_core::validate::check_spans;
use flowtracer_core::{Error, Position, QkTensor, Spans};

use crate::aggregate::Aggregated;
use crate::buffer::DeviceBuffer;
use crate::kernels::aggregate as agg;
use crate::kernels::qk as k;
use crate::plan::{GpuOptions, Kernel, Launch, LaunchPlan, to_u32};
use crate::trace::MAX_N;

mod layout;
pub use layout::{QkSequence, QkView};

/// One layer's device buffers: its index (used to report positions), `Q`, `K` and the
/// optional saved log-sum-exp, laid out as the batch's [`QkSequence`]s say.
#[derive(Debug, Clone, Copy)]
pub struct QkDeviceLayer<'a> {
    /// The layer's index in the model.
    pub index: usize,
    /// Queries.
    pub q: &'a DeviceBuffer,
    /// Keys.
    pub k: &'a DeviceBuffer,
    /// Saved log-sum-exp, if any.
    pub lse: Option<&'a DeviceBuffer>,
}

/// Device buffers an accumulator writes, reusable across calls: `Ā` and the per-row
/// log-sum-exp. Resized when their length differs from what a batch needs.
#[derive(Debug, Clone)]
pub struct QkWorkspace {
    attention: DeviceBuffer,
    rows: DeviceBuffer,
}

impl QkWorkspace {
    /// An empty workspace (buffers are allocated on first use).
    pub fn new(client: &Client) -> Self {
        Self::filled(client, 0, 0, 0.0)
    }

    /// A workspace of `attention` and `rows` elements all holding `value`: tests use it to
    /// check that no output depends on what the buffers held before.
    pub fn filled(client: &Client, attention: usize, rows: usize, value: f32) -> Self {
        Self {
            attention: DeviceBuffer::from_f32(client, &vec![value; attention]),
            rows: DeviceBuffer::from_f32(client, &vec![value; rows]),
        }
    }

    fn reserve(&mut self, client: &Client, attention: usize, rows: usize) {
        if self.attention.len() != attention {
            self.attention = DeviceBuffer::uninit(client, attention);
        }
        if self.rows.len() != rows {
            self.rows = DeviceBuffer::uninit(client, rows);
        }
    }
}

/// A bad row's order key: (layer, head, row).
type RowKey = (usize, usize, usize);

/// What one added layer left to decode at [`QkAccumulator::finish`].
#[derive(Debug)]
struct LayerStatus {
    index: usize,
    status: DeviceBuffer,
    masses: Option<DeviceBuffer>,
}

/// Streams one layer's `Q` and `K` at a time into the running sum of `Ā` for a batch of
/// sequences, on the device (the GPU twin of `flowtracer_core::qk::QkAccumulator`).
///
/// Shape errors come back from [`add_layer`](Self::add_layer) at once; data errors are
/// recorded on the device and reported per sequence by [`finish`](Self::finish) in the
/// core's order, whatever order the layers came in.
#[derive(Debug)]
pub struct QkAccumulator {
    shape: (usize, usize, usize),
    config: QkConfig,
    sequences: Vec<QkSequence>,
    metadata: DeviceBuffer,
    mask: DeviceBuffer,
    out: DeviceBuffer,
    rows: DeviceBuffer,
    out_offsets: Vec<usize>,
    layers: Vec<LayerStatus>,
    options: GpuOptions,
    plan: LaunchPlan,
}

impl QkAccumulator {
    /// An accumulator for `q_heads` query heads, `kv_heads` key heads of dimension `d`,
    /// under `config`, for `sequences`.
    ///
    /// # Errors
    ///
    /// The core's order: each sequence's [`QkShape::check`] (an empty batch checks the
    /// heads with `n = 1`), then [`Error::InvalidConfig`] (`QkConfig::validate`), then
    /// [`Error::ShapeMismatch`] for a mask that is not `n` long, [`Error::InvalidConfig`]
    /// (field `"q"` or `"k"`) for a view whose heads or rows overlap; then
    /// [`Error::InvalidConfig`] (field `"batch"`) if the batch has more sequences, or more
    /// query heads, than the device's cubes per grid dimension (65535 on wgpu); then
    /// [`Error::InvalidConfig`] (field `"n"`) if some `n` exceeds [`MAX_N`] or `H_q · n · d`
    /// (or an offset, a stride, the outputs) does not fit in `u32`; then
    /// [`Error::OutOfMemory`] if `Ā` (`4 Σ n²` bytes) or the per-row buffer (`4 H_q Σ n`)
    /// exceeds one device allocation (cubecl's `max_page_size`: 128 MiB on lavapipe).
    ///
    /// # Complexity
    ///
    /// O(S) host work and one upload of `14 S` words of metadata (plus the masks) for `S`
    /// sequences; the workspace's `Ā` (`Σ n²` floats) and per-row buffers (`H_q Σ n`) are
    /// (re)allocated only when their lengths change.
    pub fn new(
        client: &Client,
        (q_heads, kv_heads, d): (usize, usize, usize),
        config: &QkConfig,
        sequences: Vec<QkSequence>,
        options: &GpuOptions,
    ) -> Result<Self, Error> {
        Self::new_with_workspace(
            client,
            (q_heads, kv_heads, d),
            config,
            sequences,
            options,
            &mut QkWorkspace::new(client),
        )
    }

    /// [`new`](Self::new), writing `Ā` and the per-row scratch into `workspace`'s buffers
    /// (which the result of [`finish`](Self::finish) then shares).
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn new_with_workspace(
        client: &Client,
        (q_heads, kv_heads, d): (usize, usize, usize),
        config: &QkConfig,
        sequences: Vec<QkSequence>,
        options: &GpuOptions,
        workspace: &mut QkWorkspace,
    ) -> Result<Self, Error> {
        if sequences.is_empty() {
            QkShape::new(q_heads, kv_heads, 1, d).check()?;
        }
        for s in &sequences {
            QkShape::new(q_heads, kv_heads, s.n, d).check()?;
        }
        config.validate()?;
        for s in &sequences {
            if let Some(m) = &s.key_valid
                && m.len() != s.n
            {
                return Err(Error::ShapeMismatch {
                    what: "key mask",
                    expected: s.n,
                    actual: m.len(),
                });
            }
            for (field, view, heads, width, row_stride) in [
                ("q", &s.q, q_heads, d, s.q.row_stride),
                ("k", &s.k, kv_heads, d, s.k.row_stride),
            ] {
                if !view.disjoint(heads, s.n, width, row_stride) {
                    return Err(Error::InvalidConfig {
                        field,
                        reason: "the view's heads or rows overlap (a row stride below the \
                                 row's width, or a head stride below the head's rows): \
                                 each (head, row, column) must be its own element",
                    });
                }
            }
        }
        // `layer_launches` puts sequences and query heads along one grid axis each.
        let max = client.properties().hardware.max_cube_count;
        if sequences.len() > max.1.min(max.2) as usize || q_heads > max.1 as usize {
            return Err(Error::InvalidConfig {
                field: "batch",
                reason: "the GPU kernels launch one row of cubes per sequence and per query \
                         head: at most the device's cubes per grid dimension (65535 on wgpu) \
                         of each; split the batch",
            });
        }
        let too_big = Error::InvalidConfig {
            field: "n",
            reason: "the GPU kernels index with u32: n must be at most 65535, H_q · n · d and \
                     every output below 2^32",
        };
        let mut metadata = vec![0u32; sequences.len().max(1) * k::WORDS];
        let mut mask = Vec::new();
        let (mut out_total, mut rows_total) = (0usize, 0usize);
        let mut out_offsets = Vec::with_capacity(sequences.len());
        for (b, s) in sequences.iter().enumerate() {
            if s.n > MAX_N
                || u32::try_from(q_heads.saturating_mul(s.n).saturating_mul(d)).is_err()
                || u32::try_from(kv_heads.saturating_mul(s.n).saturating_mul(d)).is_err()
            {
                return Err(too_big);
            }
            let r = &mut metadata[b * k::WORDS..(b + 1) * k::WORDS];
            r[k::N] = to_u32(s.n);
            r[k::OUT_OFFSET] = u32::try_from(out_total).map_err(|_| too_big.clone())?;
            r[k::ROWS_OFFSET] = u32::try_from(rows_total).map_err(|_| too_big.clone())?;
            if let Some(m) = &s.key_valid {
                r[k::HAS_MASK] = 1;
                r[k::MASK_OFFSET] = to_u32(mask.len());
                mask.extend(m.iter().map(|&v| u32::from(v)));
            }
            for (field, v) in [
                (k::Q_OFFSET, s.q.offset),
                (k::Q_HEAD, s.q.head_stride),
                (k::Q_ROW, s.q.row_stride),
                (k::K_OFFSET, s.k.offset),
                (k::K_HEAD, s.k.head_stride),
                (k::K_ROW, s.k.row_stride),
                (k::L_OFFSET, s.lse.offset),
                (k::L_HEAD, s.lse.head_stride),
            ] {
                r[field] = u32::try_from(v).map_err(|_| too_big.clone())?;
            }
            r[k::ACTIVE] = 1;
            out_offsets.push(out_total);
            out_total += s.n * s.n;
            rows_total += q_heads * s.n;
        }
        if u32::try_from(out_total).is_err() || u32::try_from(rows_total).is_err() {
            return Err(too_big);
        }
        // One buffer each: at most one device allocation (wgpu's binding limit), as the core
        // reports an `N²` it cannot allocate.
        let page = client.properties().memory.max_page_size;
        for (what, len) in [
            ("the aggregated attention (N x N)", out_total),
            ("the per-row log-sum-exp (H_q x N)", rows_total),
        ] {
            let bytes = len.saturating_mul(core::mem::size_of::<f32>());
            if u64::try_from(bytes).map_or(true, |b| b > page) {
                return Err(Error::OutOfMemory { what, bytes });
            }
        }
        workspace.reserve(client, out_total, rows_total);
        Ok(Self {
            shape: (q_heads, kv_heads, d),
            config: *config,
            metadata: DeviceBuffer::from_u32(client, &metadata),
            mask: DeviceBuffer::from_u32(client, if mask.is_empty() { &[0] } else { &mask }),
            out: workspace.attention.clone(),
            rows: workspace.rows.clone(),
            out_offsets,
            sequences,
            layers: Vec::new(),
            options: options.fit(client),
            plan: LaunchPlan::default(),
        })
    }

    /// Number of layers added so far.
    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// The launches made so far.
    pub fn plan(&self) -> &LaunchPlan {
        &self.plan
    }

    /// Checks that every sequence's `Q`, `K` and (if given) log-sum-exp lie inside `layer`'s
    /// buffers.
    ///
    /// # Errors
    ///
    /// [`Error::ShapeMismatch`] for `Q`, then `K`, then the log-sum-exp (expected: the
    /// extent the sequences need); [`Error::InvalidConfig`] (field `"n"`) if an extent
    /// reaches 2^32; with a log-sum-exp, [`Error::InvalidConfig`] (field `"lse"`) if a
    /// sequence's log-sum-exp heads overlap (its view is read only for such layers).
    ///
    /// # Complexity
    ///
    /// O(S) for `S` sequences, on the host; nothing is launched.
    pub fn check_layer(&self, layer: &QkDeviceLayer<'_>) -> Result<(), Error> {
        let (q_heads, kv_heads, d) = self.shape;
        let need =
            |f: &dyn Fn(&QkSequence) -> usize| self.sequences.iter().map(f).max().unwrap_or(0);
        let checks = [
            (
                "queries",
                need(&|s| s.q.extent(q_heads, s.n, d)),
                Some(layer.q.len()),
            ),
            (
                "keys",
                need(&|s| s.k.extent(kv_heads, s.n, d)),
                Some(layer.k.len()),
            ),
            (
                "log-sum-exp",
                need(&|s| s.lse.extent(q_heads, 1, s.n)),
                layer.lse.map(DeviceBuffer::len),
            ),
        ];
        for (what, expected, actual) in checks {
            let Some(actual) = actual else { continue };
            if expected > actual {
                return Err(Error::ShapeMismatch {
                    what,
                    expected,
                    actual,
                });
            }
            if u32::try_from(expected).is_err() {
                return Err(Error::InvalidConfig {
                    field: "n",
                    reason: "the GPU kernels index with u32: every layer buffer must end \
                             below element 2^32",
                });
            }
        }
        if layer.lse.is_some()
            && self
                .sequences
                .iter()
                .any(|s| !s.lse.disjoint(q_heads, s.n, 1, 1))
        {
            return Err(Error::InvalidConfig {
                field: "lse",
                reason: "the log-sum-exp view's heads overlap (a head stride below n): each \
                         (head, row) must be its own element",
            });
        }
        Ok(())
    }

    /// The launch geometry of one layer: `qk_scan`, `qk_stats`, `qk_mean`.
    fn layer_launches(&self) -> [Launch; 3] {
        let (q_heads, _, d) = self.shape;
        let seqs = to_u32(self.sequences.len());
        let n_max = self.sequences.iter().map(|s| s.n).max().unwrap_or(0);
        let tiles = to_u32(n_max.div_ceil(k::TILE).max(1));
        let units = self.options.units;
        // A grid-stride loop: at most 4096 cubes along x whatever the size.
        let scan = (q_heads * n_max * d)
            .div_ceil(units as usize)
            .clamp(1, 4096);
        let t = to_u32(k::UNITS);
        [
            Launch::new(Kernel::QkScan, (to_u32(scan), seqs, 3), (units, 1, 1)),
            Launch::new(Kernel::QkStats, (tiles, to_u32(q_heads), seqs), (t, t, 1)),
            Launch::new(Kernel::QkMean, (tiles, tiles, seqs), (t, t, 1)),
        ]
    }

    /// Adds one layer of every sequence. Enqueues three launches; does not block.
    ///
    /// # Errors
    ///
    /// Only those of [`check_layer`](Self::check_layer); data errors are reported by
    /// [`finish`](Self::finish).
    ///
    /// # Complexity
    ///
    /// `2 · H_q · N_tiles · d` multiply-adds per sequence, `N_tiles ≈ N² / 2` visible
    /// `(row, key)` pairs rounded up to `TILE x TILE` tiles (`N · w` with a window): each
    /// logit is computed twice, once per pass. Extra device memory: `H_q · N` floats of
    /// per-row scratch (and as much again for the masses when a log-sum-exp is given),
    /// `SLOTS` words of status per sequence. No `N x N` buffer besides `Ā`.
    pub fn add_layer(&mut self, client: &Client, layer: &QkDeviceLayer<'_>) -> Result<(), Error> {
        self.check_layer(layer)?;
        let (q_heads, kv_heads, d) = self.shape;
        let seqs = self.sequences.len();
        let status = DeviceBuffer::from_u32(client, &vec![u32::MAX; seqs.max(1) * k::SLOTS]);
        let with_lse = layer.lse.is_some();
        let masses = with_lse.then(|| DeviceBuffer::uninit(client, self.rows.len()));
        if seqs > 0 {
            let lse = layer.lse.unwrap_or(&self.mask);
            let buffers = k::LayerBuffers {
                q: layer.q,
                k: layer.k,
                lse,
                mask: &self.mask,
                metadata: &self.metadata,
                rows: &self.rows,
                masses: masses.as_ref().unwrap_or(&self.rows),
                status: &status,
                out: &self.out,
            };
            let scale = self.config.scale_for(d);
            let params = k::Params {
                q_heads: to_u32(q_heads),
                group: to_u32(q_heads / kv_heads),
                d: to_u32(d),
                scale: scale as f32,
                cap: self.config.logit_softcap.map(|c| c as f32),
                window: self.config.window.map(|w| to_u32(w.min(MAX_N + 1))),
                tolerance: self.config.row_tolerance as f32,
            };
            let [scan, stats, mean] = self.layer_launches();
            let scan = self.plan.push(scan);
            k::launch_scan(
                client,
                &scan,
                layer.q,
                layer.k,
                lse,
                &self.metadata,
                &status,
                (to_u32(q_heads), to_u32(kv_heads)),
                to_u32(d),
                with_lse,
            );
            let stats = self.plan.push(stats);
            k::launch_stats(client, &stats, &buffers, params, with_lse);
            let mean = self.plan.push(mean);
            k::launch_mean(client, &mean, &buffers, params, self.layers.is_empty());
        }
        self.layers.push(LayerStatus {
            index: layer.index,
            status,
            masses,
        });
        Ok(())
    }

    /// The mean `Ā` of every sequence (dense `n x n` back to back, zeros above the diagonal
    /// and outside the window), with each sequence's data errors. Blocks once per layer to
    /// read the status words.
    ///
    /// # Errors
    ///
    /// [`Error::ZeroDimension`] if no layer was added. Per sequence, in
    /// [`Aggregated::results`]: [`Error::NonFiniteInput`] (lowest layer; `Q`, `K`, LSE;
    /// flat order), then [`Error::LogitsOverflow`] or [`Error::LseMismatch`] (the first bad
    /// row by (layer, head, row)).
    ///
    /// # Complexity
    ///
    /// One `aggregate_scale` launch over `Σ n²` entries; on the host, one blocking read of
    /// `5 S` status words per layer (O(L · S)), and at most one read of one float per
    /// (layer, sequence) with a row-mass defect.
    pub fn finish(mut self, client: &Client) -> Result<Aggregated, Error> {
        if self.layers.is_empty() {
            return Err(Error::ZeroDimension { what: "layers" });
        }
        let q_heads = self.shape.0;
        if !self.out.is_empty() {
            let scale = (1.0 / (self.layers.len() * q_heads) as f64) as f32;
            let launch = self.plan.push(Launch::elementwise(
                Kernel::AggregateScale,
                self.out.len(),
                &self.options,
            ));
            agg::launch_scale(client, &launch, &self.out, scale);
        }
        let mut results = vec![Ok(()); self.sequences.len()];
        let mut non_finite: Vec<Option<(usize, Error)>> = vec![None; self.sequences.len()];
        let mut bad_row: Vec<Option<(RowKey, Error)>> = vec![None; self.sequences.len()];
        let rows_base: Vec<usize> = self
            .sequences
            .iter()
            .scan(0, |t, s| {
                let b = *t;
                *t += q_heads * s.n;
                Some(b)
            })
            .collect();
        for layer in &self.layers {
            if self.sequences.is_empty() {
                break;
            }
            let slots = layer.status.read_u32(client);
            for (b, s) in self.sequences.iter().enumerate() {
                let st = &slots[b * k::SLOTS..(b + 1) * k::SLOTS];
                let n = s.n;
                let tensors = [
                    (QkTensor::Query, self.shape.2),
                    (QkTensor::Key, self.shape.2),
                    (QkTensor::LogSumExp, 1),
                ];
                if let Some((t, (tensor, width))) = tensors
                    .into_iter()
                    .enumerate()
                    .find(|&(t, _)| st[t] != u32::MAX)
                    && non_finite[b].as_ref().is_none_or(|(l, _)| layer.index < *l)
                {
                    let p = st[t] as usize;
                    let position = Position {
                        layer: Some(layer.index),
                        head: Some(p / (n * width)),
                        row: (p / width) % n,
                        col: p % width,
                    };
                    non_finite[b] = Some((layer.index, Error::NonFiniteInput { tensor, position }));
                }
                let (over, mass) = (st[k::SLOT_OVERFLOW], st[k::SLOT_MASS]);
                let at = over.min(mass);
                if at == u32::MAX {
                    continue;
                }
                let (head, row) = (at as usize / n, at as usize % n);
                let key = (layer.index, head, row);
                if bad_row[b].as_ref().is_some_and(|(k0, _)| *k0 <= key) {
                    continue;
                }
                let error = if over <= mass {
                    Error::LogitsOverflow {
                        layer: layer.index,
                        head,
                        row,
                    }
                } else {
                    let masses = layer.masses.as_ref().expect("a mass slot implies an LSE");
                    let i = rows_base[b] + at as usize;
                    Error::LseMismatch {
                        layer: layer.index,
                        head,
                        row,
                        mass: f64::from(masses.read_range_f32(client, i..i + 1)[0]),
                        tolerance: self.config.row_tolerance,
                    }
                };
                bad_row[b] = Some((key, error));
            }
        }
        for (b, r) in results.iter_mut().enumerate() {
            if let Some((_, e)) = non_finite[b].take() {
                *r = Err(e);
            } else if let Some((_, e)) = bad_row[b].take() {
                *r = Err(e);
            }
        }
        Ok(Aggregated {
            attention: self.out,
            offsets: self.out_offsets,
            results,
            plan: self.plan,
        })
    }
}

/// `Ā` of one sequence averaged over `layers` and every query head, with `spans` checked:
/// the GPU twin of `flowtracer_core::qk::sequence_from_qk` (returns the dense `n x n`
/// device buffer, ready for [`crate::trace()`]).
///
/// Each layer's buffers hold exactly one sequence, head-major: `Q [H_q][N][d]`,
/// `K [H_kv][N][d]`, log-sum-exp `[H_q][N]`.
///
/// # Errors
///
/// The core's, in the core's order: [`QkShape::check`], [`Error::ZeroDimension`] for no
/// layer, [`Error::InvalidConfig`], the mask's length, each layer's
/// [`Error::ShapeMismatch`] (`Q`, `K`, LSE: exact lengths as the core), the spans; then the
/// device's limits of [`QkAccumulator::new`] (`InvalidConfig` for `n`, `OutOfMemory`); then
/// [`Error::NonFiniteInput`], then [`Error::LogitsOverflow`] or [`Error::LseMismatch`].
///
/// # Complexity
///
/// `3 L + 1` launches; O(L · H_q · N_vis · d) work; `N²` floats for `Ā` plus `H_q · N`
/// of scratch on the device.
///
/// # Examples
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use flowtracer_core::Spans;
/// use flowtracer_core::qk::{QkConfig, QkShape};
/// use flowtracer_gpu::{DeviceBuffer, GpuOptions, QkDeviceLayer, attention_from_qk};
/// let client = cubecl::Device::Wgpu(Default::default()).client();
/// let q = DeviceBuffer::from_f32(&client, &[1.0, 1.0]);
/// let k = DeviceBuffer::from_f32(&client, &[0.0, 2f32.ln()]);
/// let layer = QkDeviceLayer { index: 0, q: &q, k: &k, lse: None };
/// let config = QkConfig::default().with_scale(1.0);
/// let a = attention_from_qk(&client, &[layer], QkShape::new(1, 1, 2, 1), &config, None,
///     &Spans::new(0..1, 1..2), &GpuOptions::default())?;
/// let a = a.read_f32(&client); // [1, 0, 1/3, 2/3]
/// assert!((a[3] - 2.0 / 3.0).abs() < 1e-6);
/// # }
/// # Ok::<(), flowtracer_core::Error>(())
/// ```
pub fn attention_from_qk(
    client: &Client,
    layers: &[QkDeviceLayer<'_>],
    shape: QkShape,
    config: &QkConfig,
    key_valid: Option<&[bool]>,
    spans: &Spans,
    options: &GpuOptions,
) -> Result<DeviceBuffer, Error> {
    shape.check()?;
    if layers.is_empty() {
        return Err(Error::ZeroDimension { what: "layers" });
    }
    config.validate()?;
    if let Some(m) = key_valid
        && m.len() != shape.n
    {
        return Err(Error::ShapeMismatch {
            what: "key mask",
            expected: shape.n,
            actual: m.len(),
        });
    }
    for layer in layers {
        shape.check_lengths(
            layer.q.len(),
            layer.k.len(),
            layer.lse.map(DeviceBuffer::len),
        )?;
    }
    check_spans(shape.n, spans)?;
    let mut seq = QkSequence::ragged(shape.q_heads, shape.kv_heads, shape.d, &[shape.n]);
    if let Some(m) = key_valid {
        seq[0].key_valid = Some(m.to_vec());
    }
    let mut acc = QkAccumulator::new(
        client,
        (shape.q_heads, shape.kv_heads, shape.d),
        config,
        seq,
        options,
    )?;
    for layer in layers {
        acc.add_layer(client, layer)?;
    }
    let mut out = acc.finish(client)?;
    out.results.pop().unwrap_or(Ok(()))?;
    Ok(out.attention)
}
