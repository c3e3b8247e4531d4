//! The front door: [`trace`] and [`trace_batch`], the reach, flow and throughput passes of
//! [method §4](docs/method.md#s4)–§7 on the device, mirroring `flowtracer_core::trace`.

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;

use cubecl::prelude::*;
use flowtracer_core::Spans;
use flowtracer_core::validate::{check_matrix_shape, check_spans};
use flowtracer_core::{AnswerMode, Error, Position, TraceConfig};

use crate::buffer::DeviceBuffer;
use crate::kernels::seq_meta::SeqMeta;
use crate::kernels::{check, flow, reach, throughput};
use crate::plan::{GpuOptions, Kernel, Launch, LaunchPlan, to_u32};

/// Largest sequence the kernels accept: flat indices `k * n + i` are `u32`.
pub const MAX_N: usize = 65_535;

/// Where one sequence's aggregated attention `Ā` lives in a device buffer, and its spans.
///
/// Entry `Ā[k][i]` is element `offset + k * row_stride + i` of the attention buffer; only
/// `i <= k` is read. A dense `n x n` matrix has `row_stride = n`; a sequence inside a padded
/// `[batch][T][T]` tensor has `row_stride = T` and `offset = b * T * T + start * (T + 1)`.
/// Spans are relative to the sequence's first token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceInput {
    /// Sequence length `N`.
    pub n: usize,
    /// Element offset of `Ā[0][0]`.
    pub offset: usize,
    /// Elements between consecutive rows.
    pub row_stride: usize,
    /// Question tokens `Q`.
    pub question: Range<usize>,
    /// Answer tokens `A`.
    pub answer: Range<usize>,
}

impl TraceInput {
    /// A dense `n x n` matrix at the start of the buffer.
    pub fn dense(n: usize, question: Range<usize>, answer: Range<usize>) -> Self {
        Self {
            n,
            offset: 0,
            row_stride: n,
            question,
            answer,
        }
    }

    /// The same sequence at another place: `offset` and `row_stride` as described above.
    #[must_use]
    pub fn at(mut self, offset: usize, row_stride: usize) -> Self {
        self.offset = offset;
        self.row_stride = row_stride;
        self
    }

    /// Dense matrices stored back to back (ragged batch): sequence `b` starts right after
    /// the `n * n` elements of sequence `b - 1`.
    pub fn ragged(
        sequences: impl IntoIterator<Item = (usize, Range<usize>, Range<usize>)>,
    ) -> Vec<Self> {
        let mut offset = 0;
        sequences
            .into_iter()
            .map(|(n, question, answer)| {
                let input = Self::dense(n, question, answer).at(offset, n);
                offset += n * n;
                input
            })
            .collect()
    }

    /// Sequence `batch_index` of a padded `[batch][t][t]` tensor, occupying tokens
    /// `start..start + n` of its slot.
    pub fn padded(
        batch_index: usize,
        t: usize,
        start: usize,
        n: usize,
        question: Range<usize>,
        answer: Range<usize>,
    ) -> Self {
        Self::dense(n, question, answer).at(batch_index * t * t + start * (t + 1), t)
    }

    /// One past the last element of the buffer this sequence reads.
    fn extent(&self) -> usize {
        if self.n == 0 {
            self.offset
        } else {
            self.offset + (self.n - 1) * self.row_stride + self.n
        }
    }
}

/// Validates one sequence on the host, in the order of [method §13](docs/method.md#s13) (checks 1 and 2).
fn validate_input(input: &TraceInput, buffer_len: usize) -> Result<(), Error> {
    if input.n == 0 {
        return Err(Error::EmptySequence);
    }
    if input.row_stride < input.n || input.extent() > buffer_len {
        return Err(Error::ShapeMismatch {
            what: "attention",
            expected: input.extent().max(input.offset + input.n * input.n),
            actual: buffer_len,
        });
    }
    check_spans(
        input.n,
        &Spans::new(input.question.clone(), input.answer.clone()),
    )?;
    if input.n > MAX_N || u32::try_from(input.extent()).is_err() {
        return Err(Error::InvalidConfig {
            field: "n",
            reason: "the GPU kernels index with u32: n must be at most 65535 and every \
                     sequence must end below element 2^32 of the attention buffer",
        });
    }
    Ok(())
}

/// The smallest `f32` at or above `t`: for every `f32` weight `w`, `w < f32_at_least(t)`
/// exactly when `w < t` in f64, so the kernels drop exactly the edges the core drops.
fn f32_at_least(t: f64) -> f32 {
    let x = t as f32;
    if f64::from(x) < t { x.next_up() } else { x }
}

/// The configuration checks of `flowtracer_core::TraceConfig` (same variants, same order).
pub(crate) fn validate_config(config: &TraceConfig) -> Result<(), Error> {
    config.validate()
}

/// The launches [`trace_batch`] makes for sequences of lengths `lengths` (0 for a sequence
/// that failed host validation) whose outputs total `tokens` elements.
///
/// With `B = options.block`, `S` sequences and `Nmax` the longest: one `check`, one
/// `reach_zero`, `ceil(Nmax / B)` each of `reach_block` and `flow_block` (`S` cubes of `B`
/// units), up to `ceil(Nmax / B) - 1` each of `reach_update` and `flow_update` (one unit
/// per remaining row of every sequence), one `flow_init` and one `throughput`.
pub fn trace_plan(lengths: &[usize], tokens: usize, options: &GpuOptions) -> LaunchPlan {
    let mut plan = LaunchPlan::default();
    let seqs = lengths.len();
    let n_max = lengths.iter().copied().max().unwrap_or(0);
    if seqs == 0 || n_max == 0 {
        return plan;
    }
    let s = to_u32(seqs);
    let block = options.block as usize;
    let units = options.units;
    let steps = n_max.div_ceil(block);
    let rows_after = |step: usize| {
        lengths
            .iter()
            .map(|&n| n.saturating_sub((step + 1) * block))
            .max()
            .unwrap_or(0)
    };
    let row_grid = |rows: usize| to_u32(rows.div_ceil(units as usize).max(1));
    plan.push(Launch::new(
        Kernel::Check,
        (row_grid(n_max), s, 1),
        (units, 1, 1),
    ));
    plan.push(Launch::elementwise(Kernel::ReachZero, tokens, options));
    for step in 0..steps {
        plan.push(Launch::new(Kernel::ReachBlock, (s, 1, 1), (options.block, 1, 1)).at_step(step));
        let rows = rows_after(step);
        if rows > 0 {
            plan.push(
                Launch::new(Kernel::ReachUpdate, (row_grid(rows), s, 1), (units, 1, 1))
                    .at_step(step),
            );
        }
    }
    plan.push(Launch::new(Kernel::FlowInit, (s, 1, 1), (units, 1, 1)));
    for step in 0..steps {
        plan.push(Launch::new(Kernel::FlowBlock, (s, 1, 1), (options.block, 1, 1)).at_step(step));
        let rows = rows_after(step);
        if rows > 0 {
            plan.push(
                Launch::new(Kernel::FlowUpdate, (row_grid(rows), s, 1), (units, 1, 1))
                    .at_step(step),
            );
        }
    }
    plan.push(Launch::elementwise(Kernel::Throughput, tokens, options));
    plan
}

/// Reach, flow and throughput of a batch of sequences, on the device.
///
/// Outputs are ragged: sequence `b` owns elements [`GpuTrace::range`]`(b)` of each buffer.
/// A sequence whose [`GpuTrace::result`] is an error has unspecified outputs.
#[derive(Debug, Clone)]
pub struct GpuTrace {
    reach: DeviceBuffer,
    flow: DeviceBuffer,
    throughput: DeviceBuffer,
    ranges: Vec<Range<usize>>,
    answers: Vec<Range<usize>>,
    answer_mode: AnswerMode,
    results: Vec<Result<usize, Error>>,
    plan: LaunchPlan,
}

/// One sequence of a [`GpuTrace`], read back to the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTrace {
    /// `h`, one value per token.
    pub reach: Vec<f32>,
    /// `f`, one value per token.
    pub flow: Vec<f32>,
    /// `tau`, one value per token.
    pub throughput: Vec<f32>,
    /// `|Q+|`.
    pub num_sources: usize,
    /// Flow that reached the answer (sum of `f(a)`, or `f(a) / h(a)` in relay mode): 1 up
    /// to rounding.
    pub answer_mass: f64,
}

impl GpuTrace {
    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether sequence `b` was traced, or the first error its input has ([method §13](docs/method.md#s13) order).
    ///
    /// # Panics
    ///
    /// If `b >= self.len()`.
    pub fn result(&self, b: usize) -> Result<(), Error> {
        self.results[b].clone().map(|_| ())
    }

    /// `|Q+|` of sequence `b`.
    ///
    /// # Errors
    ///
    /// The sequence's error, as [`GpuTrace::result`].
    pub fn num_sources(&self, b: usize) -> Result<usize, Error> {
        self.results[b].clone()
    }

    /// The elements of the output buffers that belong to sequence `b`.
    pub fn range(&self, b: usize) -> Range<usize> {
        self.ranges[b].clone()
    }

    /// The reach `h` of every token (ragged, see [`GpuTrace::range`]).
    pub fn reach(&self) -> &DeviceBuffer {
        &self.reach
    }

    /// The flow `f` of every token (ragged).
    pub fn flow(&self) -> &DeviceBuffer {
        &self.flow
    }

    /// The throughput `tau` of every token (ragged).
    pub fn throughput(&self) -> &DeviceBuffer {
        &self.throughput
    }

    /// The launches that produced this trace.
    pub fn plan(&self) -> &LaunchPlan {
        &self.plan
    }

    /// Reads sequence `b` back to the host (blocks).
    ///
    /// # Errors
    ///
    /// The sequence's error, as [`GpuTrace::result`].
    pub fn read(&self, client: &Client, b: usize) -> Result<HostTrace, Error> {
        let num_sources = self.results[b].clone()?;
        let range = self.range(b);
        let reach = self.reach.read_range_f32(client, range.clone());
        let flow = self.flow.read_range_f32(client, range.clone());
        let throughput = self.throughput.read_range_f32(client, range);
        let answer_mass = self.answers[b]
            .clone()
            .map(|a| match self.answer_mode {
                AnswerMode::Relay => f64::from(flow[a]) / f64::from(reach[a]),
                _ => f64::from(flow[a]),
            })
            .sum();
        Ok(HostTrace {
            reach,
            flow,
            throughput,
            num_sources,
            answer_mass,
        })
    }

    /// Reads every sequence back to the host (blocks).
    pub fn read_all(&self, client: &Client) -> Vec<Result<HostTrace, Error>> {
        let (reach, flow, tau) = if self.is_empty() {
            (Vec::new(), Vec::new(), Vec::new())
        } else {
            (
                self.reach.read_f32(client),
                self.flow.read_f32(client),
                self.throughput.read_f32(client),
            )
        };
        (0..self.len())
            .map(|b| {
                let num_sources = self.results[b].clone()?;
                let r = self.range(b);
                let (h, f) = (&reach[r.clone()], &flow[r.clone()]);
                let answer_mass = self.answers[b]
                    .clone()
                    .map(|a| match self.answer_mode {
                        AnswerMode::Relay => f64::from(f[a]) / f64::from(h[a]),
                        _ => f64::from(f[a]),
                    })
                    .sum();
                Ok(HostTrace {
                    reach: h.to_vec(),
                    flow: f.to_vec(),
                    throughput: tau[r].to_vec(),
                    num_sources,
                    answer_mass,
                })
            })
            .collect()
    }
}

/// Device buffers a trace writes, reusable across calls (the GPU twin of the core's
/// `Workspace`): with a workspace large enough, [`trace_batch_with_workspace`] allocates
/// only its small metadata and status buffers.
///
/// The [`GpuTrace`] a call returns shares these buffers: the next call with the same
/// workspace overwrites it.
#[derive(Debug, Clone)]
pub struct Workspace {
    reach: DeviceBuffer,
    flow: DeviceBuffer,
    throughput: DeviceBuffer,
    u: DeviceBuffer,
    sources: DeviceBuffer,
}

impl Workspace {
    /// An empty workspace (buffers are allocated on first use).
    pub fn new(client: &Client) -> Self {
        Self::filled(client, 0, 0, 0.0)
    }

    /// A workspace for `tokens` tokens in `seqs` sequences whose every element holds
    /// `value` (bit pattern of the f32 for the `u32` buffer). Tests use it to check that
    /// no output depends on what the buffers held before.
    pub fn filled(client: &Client, tokens: usize, seqs: usize, value: f32) -> Self {
        let v = vec![value; tokens];
        Self {
            reach: DeviceBuffer::from_f32(client, &v),
            flow: DeviceBuffer::from_f32(client, &v),
            throughput: DeviceBuffer::from_f32(client, &v),
            u: DeviceBuffer::from_f32(client, &v),
            sources: DeviceBuffer::from_u32(client, &vec![value.to_bits(); seqs]),
        }
    }

    fn reserve(&mut self, client: &Client, tokens: usize, seqs: usize) {
        for b in [
            &mut self.reach,
            &mut self.flow,
            &mut self.throughput,
            &mut self.u,
        ] {
            if b.len() != tokens {
                *b = DeviceBuffer::uninit(client, tokens);
            }
        }
        if self.sources.len() != seqs {
            self.sources = DeviceBuffer::uninit(client, seqs);
        }
    }
}

/// Traces one dense row-major `n x n` matrix `Ā` held in `attention` (the GPU twin of
/// `flowtracer_core::trace`).
///
/// # Errors
///
/// Exactly the errors of `flowtracer_core::trace`, in the same order and with the same
/// positions: shape, spans, configuration, then the data checks of [method §13](docs/method.md#s13) (run on the
/// device), then [`Error::NoSourceMass`]. Also [`Error::InvalidConfig`] with field `"n"` if
/// `n` exceeds [`MAX_N`].
///
/// # Complexity
///
/// `4 ceil(N / block) + 2` launches, O(N²) work, O(N) extra device memory; one blocking
/// read-back of `4` words for the error status.
///
/// # Examples
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use flowtracer_core::TraceConfig;
/// use flowtracer_gpu::{DeviceBuffer, GpuOptions, trace};
/// let client = cubecl::Device::Wgpu(Default::default()).client();
/// let a = [1.0f32, 0.0, 0.5, 0.5];
/// let attention = DeviceBuffer::from_f32(&client, &a);
/// let t = trace(&client, &attention, 2, 0..1, 1..2, &TraceConfig::default(), &GpuOptions::default())?;
/// let host = t.read(&client, 0)?;
/// assert_eq!(host.reach, [0.5, 1.0]);
/// # }
/// # Ok::<(), flowtracer_core::Error>(())
/// ```
pub fn trace(
    client: &Client,
    attention: &DeviceBuffer,
    n: usize,
    question: Range<usize>,
    answer: Range<usize>,
    config: &TraceConfig,
    options: &GpuOptions,
) -> Result<GpuTrace, Error> {
    check_matrix_shape(attention.len(), n)?;
    check_spans(n, &Spans::new(question.clone(), answer.clone()))?;
    let out = trace_batch(
        client,
        attention,
        &[TraceInput::dense(n, question, answer)],
        config,
        options,
    )?;
    out.result(0)?;
    Ok(out)
}

/// Traces many sequences stored in one device buffer in one launch sequence (the GPU twin
/// of `flowtracer_core::trace_batch`).
///
/// Each sequence is validated on its own; one with bad input gets its error in
/// [`GpuTrace::result`] and does not stop the others.
///
/// # Errors
///
/// [`Error::InvalidConfig`] for a bad `config` (the same checks as the core), then
/// [`Error::InvalidConfig`] (field `"batch"`) for more sequences than the device's cubes
/// per grid dimension (65535 on wgpu). Per-sequence errors are reported by
/// [`GpuTrace::result`].
///
/// # Complexity
///
/// `4 ceil(Nmax / block) + 2` launches whatever the batch size (see [`trace_plan`]),
/// O(sum N²) work; one blocking read-back of `4` words per sequence.
pub fn trace_batch(
    client: &Client,
    attention: &DeviceBuffer,
    inputs: &[TraceInput],
    config: &TraceConfig,
    options: &GpuOptions,
) -> Result<GpuTrace, Error> {
    trace_batch_with_workspace(
        client,
        attention,
        inputs,
        config,
        options,
        &mut Workspace::new(client),
    )
}

/// [`trace_batch`] writing into `workspace`'s buffers (resized when their length differs
/// from the batch's).
///
/// # Errors
///
/// As [`trace_batch`].
pub fn trace_batch_with_workspace(
    client: &Client,
    attention: &DeviceBuffer,
    inputs: &[TraceInput],
    config: &TraceConfig,
    options: &GpuOptions,
    workspace: &mut Workspace,
) -> Result<GpuTrace, Error> {
    validate_config(config)?;
    let options = options.fit(client);
    // `trace_plan` puts the sequences along one grid axis (x of the block kernels, y of
    // the others).
    if inputs.len() > options.grid() as usize {
        return Err(Error::InvalidConfig {
            field: "batch",
            reason: "the GPU kernels launch one row of cubes per sequence: at most the \
                     device's cubes per grid dimension (65535 on wgpu); split the batch",
        });
    }
    let mut host: Vec<Result<(), Error>> = Vec::with_capacity(inputs.len());
    // One record per sequence (an all-zero, inactive one for an empty batch, so the buffer
    // is never empty). Only a sequence `validate_input` accepted gets an active record:
    // that is what makes the kernels' unchecked indexing safe (see `kernels::seq_meta`).
    let mut metadata = vec![0u32; inputs.len().max(1) * SeqMeta::WORDS];
    let mut lengths = Vec::with_capacity(inputs.len());
    let mut ranges = Vec::with_capacity(inputs.len());
    let mut tokens = 0usize;
    for (b, input) in inputs.iter().enumerate() {
        let ok = validate_input(input, attention.len());
        ranges.push(tokens..tokens + input.n);
        let record = if ok.is_ok() {
            lengths.push(input.n);
            SeqMeta {
                n: input.n,
                offset: input.offset,
                row_stride: input.row_stride,
                vec_offset: tokens,
                q_start: input.question.start,
                q_end: input.question.end,
                a_start: input.answer.start,
                a_end: input.answer.end,
                active: true,
            }
        } else {
            lengths.push(0);
            SeqMeta::default()
        };
        metadata[b * SeqMeta::WORDS..(b + 1) * SeqMeta::WORDS].copy_from_slice(&record.encode());
        tokens += input.n;
        host.push(ok);
    }
    let plan = trace_plan(&lengths, tokens, &options);
    let seqs = inputs.len();
    workspace.reserve(client, tokens, seqs);
    let reach_out = workspace.reach.clone();
    let flow_out = workspace.flow.clone();
    let tau_out = workspace.throughput.clone();
    let mut results: Vec<Result<usize, Error>> =
        host.iter().map(|r| r.clone().map(|()| 0)).collect();
    let answers = inputs.iter().map(|i| i.answer.clone()).collect();
    let mut out = GpuTrace {
        reach: reach_out,
        flow: flow_out,
        throughput: tau_out,
        ranges,
        answers,
        answer_mode: config.answer_mode,
        results: Vec::new(),
        plan: LaunchPlan::default(),
    };
    if plan.is_empty() {
        out.results = results;
        return Ok(out);
    }

    let metadata = DeviceBuffer::from_u32(client, &metadata);
    let u = workspace.u.clone();
    let sources = workspace.sources.clone();
    let status = DeviceBuffer::from_u32(client, &vec![u32::MAX; seqs * check::SLOTS]);
    let relay = config.answer_mode == AnswerMode::Relay;
    let threshold = f32_at_least(config.edge_threshold);
    let block = options.block as usize;
    for l in &plan.launches {
        let step = l.step;
        match l.kernel {
            Kernel::Check => check::launch(
                client,
                l,
                attention,
                &metadata,
                &status,
                config.row_tolerance as f32,
            ),
            Kernel::ReachZero => reach::launch_zero(client, l, &out.reach),
            Kernel::ReachBlock => {
                reach::launch_block(
                    client, l, attention, &metadata, &out.reach, step, threshold, block, relay,
                );
            }
            Kernel::ReachUpdate => {
                reach::launch_update(
                    client, l, attention, &metadata, &out.reach, step, threshold, block,
                );
            }
            Kernel::FlowInit => flow::launch_init(client, l, &metadata, &out.reach, &u, &sources),
            Kernel::FlowBlock => flow::launch_block(
                client, l, attention, &metadata, &out.reach, &sources, &u, &out.flow, step,
                threshold, block, relay,
            ),
            Kernel::FlowUpdate => {
                flow::launch_update(client, l, attention, &metadata, &u, step, threshold, block);
            }
            Kernel::Throughput => {
                throughput::launch(client, l, &out.reach, &out.flow, &out.throughput);
            }
            // Listed, not wildcarded: a new kernel must be placed here or there.
            Kernel::AggregateLayer
            | Kernel::AggregateNegative
            | Kernel::AggregateScale
            | Kernel::QkScan
            | Kernel::QkStats
            | Kernel::QkMean
            | Kernel::TokenWeights
            | Kernel::ShapeAdvantage => {
                unreachable!("`trace_plan` never lists {}", l.kernel)
            }
        }
    }

    let status = status.read_u32(client);
    let sources = sources.read_u32(client);
    for (b, input) in inputs.iter().enumerate() {
        if results[b].is_err() {
            continue;
        }
        results[b] = decode_status(
            client,
            attention,
            input,
            &status[b * check::SLOTS..],
            config,
        )
        .and_then(|()| match sources[b] as usize {
            0 => Err(Error::NoSourceMass),
            s => Ok(s),
        });
    }
    out.results = results;
    out.plan = plan;
    Ok(out)
}

/// Turns the check kernel's three slots into the core's error, in [method §13](docs/method.md#s13) order.
fn decode_status(
    client: &Client,
    attention: &DeviceBuffer,
    input: &TraceInput,
    slots: &[u32],
    config: &TraceConfig,
) -> Result<(), Error> {
    let n = input.n;
    let row_start = |k: usize| input.offset + k * input.row_stride;
    if slots[0] != u32::MAX {
        let flat = slots[0] as usize;
        return Err(Error::NonFinite {
            position: Position::matrix(flat / n, flat % n),
        });
    }
    if slots[1] != u32::MAX {
        let flat = slots[1] as usize;
        let (row, col) = (flat / n, flat % n);
        let at = row_start(row) + col;
        let value = attention.read_range_f32(client, at..at + 1)[0];
        return Err(Error::Negative {
            position: Position::matrix(row, col),
            value: f64::from(value),
        });
    }
    if slots[2] != u32::MAX {
        let row = slots[2] as usize;
        let values = attention.read_range_f32(client, row_start(row)..row_start(row) + row + 1);
        let mass = values.iter().map(|&x| f64::from(x)).sum();
        return Err(Error::RowMassExceeded {
            row,
            mass,
            tolerance: config.row_tolerance,
        });
    }
    Ok(())
}
