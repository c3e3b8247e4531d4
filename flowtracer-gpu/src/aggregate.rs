//! Layer/head aggregation into `Ā` ([method §2](docs/method.md#s2)) on the device, mirroring
//! `flowtracer_core::aggregate`.

use alloc::vec;
use alloc::vec::Vec;

use cubecl::prelude::*;
use flowtracer_core::aggregate::{LayerSelection, Layout, check_shape, select_layers};
use flowtracer_core::{Error, Position};

use crate::buffer::DeviceBuffer;
use crate::kernels::aggregate as k;
use crate::plan::{GpuOptions, Kernel, Launch, LaunchPlan, to_u32};
use crate::trace::{MAX_N, TraceInput};

/// Where one sequence's `[heads][N][N]` attention of a layer lives in a layer buffer.
///
/// Head `h`, entry `(row, col)` is element `offset + h * head_stride + row * row_stride +
/// col` (dense) or `offset + h * head_stride + row * (row + 1) / 2 + col` (packed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerInput {
    /// Sequence length `N`.
    pub n: usize,
    /// Element offset of head 0, row 0.
    pub offset: usize,
    /// Elements between rows (dense layout only).
    pub row_stride: usize,
    /// Elements between heads.
    pub head_stride: usize,
}

impl LayerInput {
    /// Sequences stored back to back, each as `heads` contiguous matrices in `layout`.
    pub fn ragged(heads: usize, lengths: &[usize], layout: Layout) -> Vec<Self> {
        let mut offset = 0;
        lengths
            .iter()
            .map(|&n| {
                let m = layout.matrix_len(n);
                let input = Self {
                    n,
                    offset,
                    row_stride: n,
                    head_stride: m,
                };
                offset += heads * m;
                input
            })
            .collect()
    }

    /// Sequence `batch_index` of a padded dense `[batch][heads][t][t]` layer, occupying
    /// tokens `start..start + n` of its slot.
    pub fn padded(batch_index: usize, heads: usize, t: usize, start: usize, n: usize) -> Self {
        Self {
            n,
            offset: batch_index * heads * t * t + start * (t + 1),
            row_stride: t,
            head_stride: t * t,
        }
    }

    fn extent(&self, heads: usize, layout: Layout) -> usize {
        let last_row = match layout {
            Layout::Packed => (self.n - 1) * self.n / 2,
            _ => (self.n - 1) * self.row_stride,
        };
        self.offset + (heads - 1) * self.head_stride + last_row + self.n
    }
}

/// Streams attention one layer at a time into the running sum of `Ā` for a batch of
/// sequences, on the device (the GPU twin of `flowtracer_core::aggregate::LayerAccumulator`).
///
/// A trainer feeds each layer as the forward pass produces it; nothing holds more than one
/// layer. Data defects (non-finite, negative) are recorded on the device and reported by
/// [`finish`](Self::finish) with the same positions as the core.
#[derive(Debug)]
pub struct LayerAccumulator {
    heads: usize,
    layout: Layout,
    inputs: Vec<LayerInput>,
    metadata: DeviceBuffer,
    out: DeviceBuffer,
    out_offsets: Vec<usize>,
    /// Per added layer: its index, the defect slots, the first negative values.
    statuses: Vec<(usize, DeviceBuffer, DeviceBuffer)>,
    options: GpuOptions,
    plan: LaunchPlan,
}

/// The aggregated attention of a batch: dense `n x n` matrices stored back to back.
#[derive(Debug, Clone)]
pub struct Aggregated {
    /// `Ā` of every sequence (ragged; sequence `b` starts at `inputs[b].offset`).
    pub attention: DeviceBuffer,
    /// Where each sequence's `Ā` is, ready for [`crate::trace_batch`] once spans are set.
    pub offsets: Vec<usize>,
    /// Per-sequence result of the data checks ([method §13](docs/method.md#s13) checks 3 and 4).
    pub results: Vec<Result<(), Error>>,
    /// The launches made.
    pub plan: LaunchPlan,
}

impl Aggregated {
    /// A [`TraceInput`] for sequence `b` with the given spans.
    pub fn trace_input(
        &self,
        b: usize,
        n: usize,
        question: core::ops::Range<usize>,
        answer: core::ops::Range<usize>,
    ) -> TraceInput {
        TraceInput::dense(n, question, answer).at(self.offsets[b], n)
    }
}

impl LayerAccumulator {
    /// An accumulator for `heads` heads of the sequences `inputs`, stored in `layout`.
    ///
    /// # Errors
    ///
    /// [`Error::EmptySequence`] if some `n == 0`, [`Error::ZeroDimension`] if `heads == 0`
    /// (the core's order); [`Error::InvalidConfig`] (field `"batch"`) if there are more
    /// sequences than the device's cubes per grid dimension (65535 on wgpu: `aggregate_layer`
    /// puts the sequences along z); [`Error::InvalidConfig`] (field `"n"`) if some `n`
    /// exceeds [`MAX_N`] or `Σ n²` reaches 2^32; [`Error::OutOfMemory`] if `Ā` (`4 Σ n²`
    /// bytes) exceeds one device allocation (cubecl's `max_page_size`: 128 MiB on lavapipe).
    pub fn new(
        client: &Client,
        heads: usize,
        layout: Layout,
        inputs: Vec<LayerInput>,
        options: &GpuOptions,
    ) -> Result<Self, Error> {
        if inputs.iter().any(|i| i.n == 0) {
            return Err(Error::EmptySequence);
        }
        if heads == 0 {
            return Err(Error::ZeroDimension { what: "heads" });
        }
        let options = options.fit(client);
        if inputs.len() > options.grid() as usize {
            return Err(Error::InvalidConfig {
                field: "batch",
                reason: "the GPU kernels launch one layer of cubes per sequence: at most the \
                         device's cubes per grid dimension (65535 on wgpu); split the batch",
            });
        }
        let too_big = Error::InvalidConfig {
            field: "n",
            reason: "the GPU kernels index with u32: n must be at most 65535 and Σ n² below 2^32",
        };
        if inputs.iter().any(|i| i.n > MAX_N) {
            return Err(too_big);
        }
        let mut out_offsets = Vec::with_capacity(inputs.len());
        let mut total = 0usize;
        let mut metadata = vec![0u32; inputs.len().max(1) * k::AGG_META];
        for (b, input) in inputs.iter().enumerate() {
            out_offsets.push(total);
            let m = &mut metadata[b * k::AGG_META..(b + 1) * k::AGG_META];
            m[k::N] = to_u32(input.n);
            m[k::IN_OFFSET] = u32::try_from(input.offset).map_err(|_| too_big.clone())?;
            m[k::IN_ROW_STRIDE] = u32::try_from(input.row_stride).map_err(|_| too_big.clone())?;
            m[k::IN_HEAD_STRIDE] = u32::try_from(input.head_stride).map_err(|_| too_big.clone())?;
            m[k::OUT_OFFSET] = u32::try_from(total).map_err(|_| too_big.clone())?;
            total = total.saturating_add(input.n * input.n);
        }
        // One buffer: at most one device allocation (wgpu's binding limit), as the core
        // reports an `N²` it cannot allocate.
        let bytes = total.saturating_mul(core::mem::size_of::<f32>());
        if u64::try_from(bytes).map_or(true, |b| b > client.properties().memory.max_page_size) {
            return Err(Error::OutOfMemory {
                what: "the aggregated attention (N x N)",
                bytes,
            });
        }
        // `aggregate_layer` folds each sequence's `n²` entries over x and y only.
        let n_max = inputs.iter().map(|i| i.n).max().unwrap_or(0);
        if u32::try_from(total).is_err()
            || Launch::elementwise(Kernel::AggregateLayer, n_max * n_max, &options)
                .cubes
                .2
                != 1
        {
            return Err(too_big);
        }
        Ok(Self {
            heads,
            layout,
            metadata: DeviceBuffer::from_u32(client, &metadata),
            out: DeviceBuffer::uninit(client, total),
            inputs,
            out_offsets,
            statuses: Vec::new(),
            options,
            plan: LaunchPlan::default(),
        })
    }

    /// Number of layers added so far.
    pub fn layers(&self) -> usize {
        self.statuses.len()
    }

    /// The launch of `aggregate_layer` for these sequences: the `n_max²` entries folded
    /// over x and y within the grid limit (as [`Launch::elementwise`]), one z layer per
    /// sequence.
    fn layer_launch(&self) -> Launch {
        let n_max = self.inputs.iter().map(|i| i.n).max().unwrap_or(0);
        let entries = Launch::elementwise(Kernel::AggregateLayer, n_max * n_max, &self.options);
        // `new` refused an `n` whose entries would need z as well (`entries.cubes.2 > 1`).
        Launch::new(
            Kernel::AggregateLayer,
            (
                entries.cubes.0,
                entries.cubes.1,
                to_u32(self.inputs.len().max(1)),
            ),
            (self.options.units, 1, 1),
        )
    }

    /// Adds layer `layer_index` (its `[heads][N][N]` values for every sequence, at
    /// `layer_offset` elements into `layer`) to the sum. Enqueues one launch; does not block.
    ///
    /// `layer_index` is only used to report positions.
    ///
    /// # Errors
    ///
    /// [`Error::ShapeMismatch`] if some sequence's heads do not fit in `layer`;
    /// [`Error::InvalidConfig`] (field `"layer_offset"`) if one ends at or past element
    /// 2^32 of it (the kernels index with `u32`).
    pub fn add_layer(
        &mut self,
        client: &Client,
        layer_index: usize,
        layer: &DeviceBuffer,
        layer_offset: usize,
    ) -> Result<(), Error> {
        for input in &self.inputs {
            let extent = layer_offset + input.extent(self.heads, self.layout);
            if extent > layer.len() {
                return Err(Error::ShapeMismatch {
                    what: "layer attention",
                    expected: extent,
                    actual: layer.len(),
                });
            }
            if u32::try_from(extent).is_err() {
                return Err(Error::InvalidConfig {
                    field: "layer_offset",
                    reason: "the GPU kernels index with u32: every sequence must end below \
                             element 2^32 of the layer buffer",
                });
            }
        }
        if self.inputs.is_empty() {
            let empty = DeviceBuffer::from_u32(client, &[]);
            self.statuses.push((layer_index, empty.clone(), empty));
            return Ok(());
        }
        let status =
            DeviceBuffer::from_u32(client, &vec![u32::MAX; self.inputs.len() * self.heads * 2]);
        let launch = self.plan.push(self.layer_launch());
        k::launch_layer(
            client,
            &launch,
            layer,
            &self.metadata,
            &self.out,
            &status,
            to_u32(layer_offset),
            to_u32(self.heads),
            self.statuses.is_empty(),
            self.layout == Layout::Packed,
        );
        let pairs = self.inputs.len() * self.heads;
        let values = DeviceBuffer::uninit(client, pairs);
        let gather = self.plan.push(Launch::elementwise(
            Kernel::AggregateNegative,
            pairs,
            &self.options,
        ));
        k::launch_negative(
            client,
            &gather,
            layer,
            &self.metadata,
            &status,
            &values,
            to_u32(layer_offset),
            to_u32(self.heads),
            self.layout == Layout::Packed,
        );
        self.statuses.push((layer_index, status, values));
        Ok(())
    }

    /// The mean `Ā` of every sequence (blocks once to read the defect records).
    ///
    /// # Errors
    ///
    /// [`Error::ZeroDimension`] if no layer was added. Per-sequence [`Error::NonFinite`]
    /// then [`Error::Negative`] (first defect in the order layers were added, then head,
    /// row, column) are in [`Aggregated::results`].
    pub fn finish(mut self, client: &Client) -> Result<Aggregated, Error> {
        if self.statuses.is_empty() {
            return Err(Error::ZeroDimension { what: "layers" });
        }
        let scale = (1.0 / (self.statuses.len() * self.heads) as f64) as f32;
        if !self.out.is_empty() {
            let launch = self.plan.push(Launch::elementwise(
                Kernel::AggregateScale,
                self.out.len(),
                &self.options,
            ));
            k::launch_scale(client, &launch, &self.out, scale);
        }
        let seqs = self.inputs.len();
        let mut results: Vec<Result<(), Error>> = vec![Ok(()); seqs];
        let mut negative: Vec<Option<Error>> = vec![None; seqs];
        for (layer, status, values) in &self.statuses {
            if seqs == 0 {
                break;
            }
            let slots = status.read_u32(client);
            let values = values.read_f32(client);
            for (b, input) in self.inputs.iter().enumerate() {
                for head in 0..self.heads {
                    let pair = b * self.heads + head;
                    let at = |p: u32| Position {
                        layer: Some(*layer),
                        head: Some(head),
                        row: p as usize / input.n,
                        col: p as usize % input.n,
                    };
                    if results[b].is_ok() && slots[2 * pair] != u32::MAX {
                        results[b] = Err(Error::NonFinite {
                            position: at(slots[2 * pair]),
                        });
                    }
                    if negative[b].is_none() && slots[2 * pair + 1] != u32::MAX {
                        negative[b] = Some(Error::Negative {
                            position: at(slots[2 * pair + 1]),
                            value: f64::from(values[pair]),
                        });
                    }
                }
            }
        }
        for (r, neg) in results.iter_mut().zip(negative) {
            if let (Ok(()), Some(e)) = (&*r, neg) {
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

/// Aggregates `[layers][heads][N][N]` attention held in `attention` into a dense `N x N`
/// `Ā` over the selected layers (the GPU twin of `flowtracer_core::aggregate::aggregate`).
///
/// # Errors
///
/// The core's errors in the core's order: [`Error::ShapeMismatch`] (length),
/// [`Error::EmptySequence`], [`Error::ZeroDimension`] (layers, then heads),
/// [`Error::InvalidLayerSelection`], the device's limits of [`LayerAccumulator::new`]
/// ([`Error::InvalidConfig`], [`Error::OutOfMemory`]), then the first [`Error::NonFinite`] and the first
/// [`Error::Negative`] entry of the selected layers (found on the device).
///
/// # Complexity
///
/// One launch per selected layer plus one per layer for the negative-value gather and one
/// scale; O(L_sel · H · N²) work; one blocking read-back of `4 H` words per layer.
///
/// # Examples
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use flowtracer_core::aggregate::{LayerSelection, Layout};
/// use flowtracer_gpu::{DeviceBuffer, GpuOptions, aggregate};
/// let client = cubecl::Device::Wgpu(Default::default()).client();
/// let p = [1.0f32, 0.0, 0.25, 0.75, /* head 1 */ 1.0, 0.0, 0.5, 0.5];
/// let input = DeviceBuffer::from_f32(&client, &p);
/// let a = aggregate(&client, &input, 1, 2, 2, Layout::Dense, &LayerSelection::All, &GpuOptions::default())?;
/// assert_eq!(a.read_f32(&client), [1.0, 0.0, 0.375, 0.625]);
/// # }
/// # Ok::<(), flowtracer_core::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn aggregate(
    client: &Client,
    attention: &DeviceBuffer,
    layers: usize,
    heads: usize,
    n: usize,
    layout: Layout,
    selection: &LayerSelection,
    options: &GpuOptions,
) -> Result<DeviceBuffer, Error> {
    let per_layer = check_shape(attention.len(), layers, heads, n, layout)?;
    let mut selected = select_layers(layers, selection)?;
    selected.sort_unstable();
    let input = LayerInput::ragged(heads, &[n], layout);
    let mut acc = LayerAccumulator::new(client, heads, layout, input, options)?;
    for l in selected {
        acc.add_layer(client, l, attention, l * per_layer)?;
    }
    let mut out = acc.finish(client)?;
    out.results.pop().unwrap_or(Ok(()))?;
    Ok(out.attention)
}
