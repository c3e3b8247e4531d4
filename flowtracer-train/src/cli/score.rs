//! `flowtracer score`: FlowTracer scores of one attention dump, as JSON.
//!
//! ```text
//! flowtracer score --attention FILE [--tensor NAME]... [--layers SPEC]
//!                  --question A..B --answer C..D [--response E..F]
//!                  [--config FILE] [--out FILE]
//! flowtracer score --qk FILE.safetensors [--layers SPEC] --question A..B --answer C..D ...
//! ```
//!
//! `--qk` takes post-RoPE queries and keys instead of probabilities (models that run
//! FlashAttention): tensors `q.{L}`, `k.{L}`, optional `lse.{L}`, `__metadata__` keys
//! `num_layers`, `scale`, `window`; the format is in `src/cli/qk.rs` and
//! [method §15](docs/method.md#s15). `Ā` is formed without any per-head `N x N` matrix,
//! then scored exactly as below; `layers` in the output are model layer numbers.
//!
//! # Input
//!
//! `--attention FILE` is attention probabilities `P[l][h][k][i]` (query `k`, key `i`; rows
//! sum to 1; entries above the diagonal are ignored), as float16, float32 or float64:
//!
//! - a `.npy` file of shape `[N, N]` (already aggregated), `[H, N, N]` (one layer's heads) or
//!   `[L, H, N, N]` (every layer of a model);
//! - a `.safetensors` file with either one tensor of one of those shapes (chosen by
//!   `--tensor NAME` when the file holds several), or one tensor per layer, each `[N, N]`,
//!   `[H, N, N]` or `[1, H, N, N]` (a batch of one). Per-layer tensors are taken in the order
//!   of repeated `--tensor` options, or, without `--tensor`, all tensors of the file ordered
//!   by the last number in their names (`model.layers.7.attn` is layer 7).
//!
//! The format is recognised by the `.npy` magic bytes, else read as safetensors. Everything
//! is computed in f64 (f32 input is widened exactly).
//!
//! `--layers` selects the layers that are averaged when the input has a layer axis:
//! `middle` (the default: layers `floor(L/3)..floor(2L/3)`), `all`, a half-open range `a..b`,
//! a list `1,3,5`, or `spaced:n` (`n` evenly spaced layers), as the core's
//! [`LayerSelection`] reads them. Heads are always averaged.
//!
//! Spans are half-open token ranges `A..B`: `--question` (where flow is injected),
//! `--answer` (where it is absorbed) and `--response` (the scored tokens, default
//! `question.end..N`, which must contain the answer).
//!
//! `--config FILE` is a JSON object with any of these keys (default after the `=`; the
//! defaults are those of the core's `ShapingConfig`, `TraceConfig` and `BackboneConfig`):
//! `rho = 0.4`, `gamma_flow = 1.5`, `apply_to = "both"` (or `"nonnegative_only"`),
//! `mix = 1.0`, `normalize_mean = false`, `select = "top"` (or `"bottom"`),
//! `answer_mode = "absorbing"` (or `"relay"`), `edge_threshold = 0`,
//! `row_tolerance = 0.001`, `coverage = 0.8`, `checkpoint_threshold = 0.5`. The option names
//! are the core's (`ApplyTo`, `Select`, `AnswerMode`). Unknown keys are an error.
//!
//! # Output
//!
//! One JSON object, on stdout or written atomically to `--out` (with
//! [`write_atomic`]: a temporary file in the same directory, fsynced and renamed into place;
//! nothing is left behind on error):
//!
//! | field | meaning |
//! |---|---|
//! | `n` | number of tokens N |
//! | `question`, `answer`, `response` | the spans used, as `[start, end]` |
//! | `layers` | the layers averaged (input indices), or `null` if the input had no layer axis |
//! | `reach` | `h` per token (length N): how much of a token's attention mass reaches the answer |
//! | `flow` | `f` per token: the fraction of question-to-answer flow through the token |
//! | `throughput` | `tau` per token (`2 f` for live tokens) |
//! | `weights` | the advantage weight per token (`gamma_flow` for hubs, 1 elsewhere with the defaults) |
//! | `backbone.path` | the most probable question-to-answer token path |
//! | `backbone.path_probability` | its probability |
//! | `backbone.edges` | the kept edges as `[i, k, phi]`, by flow descending, covering `coverage` of all edge flow |
//! | `backbone.total_edge_flow` | the flow summed over all token-to-token edges |
//! | `backbone.hubs` | the top-`rho` response tokens by throughput (the shaped tokens) |
//! | `backbone.checkpoints` | tokens with `f >= checkpoint_threshold` |
//! | `metrics` | `answer_mass` (flow absorbed by the answer, 1 in absorbing mode), `num_sources` (live question tokens), `num_live` (tokens with `h > 0`), `kept_edge_flow`, `kept_edge_share`, `response_flow_mean`, `response_weight_mean`, `num_hubs`, `num_checkpoints`, `max_row_mass` (of the averaged attention) |
//!
//! # Errors
//!
//! Every problem with the input (missing or unreadable file, truncated or corrupt
//! `.npy`/`.safetensors`, a non-float dtype, a wrong rank, non-square matrices, spans out of
//! bounds, NaN or negative attention, rows summing to more than 1, no question token
//! reaching the answer, a bad config) and a failed write of `--out` is a [`CliError`] with a
//! one-line message and exit code 2 ([`ExitCode::BadInput`]).
//!
//! [`ExitCode::BadInput`]: super::ExitCode::BadInput

use core::ops::Range;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use flowtracer_core::aggregate::{
    LayerAccumulator, LayerSelection, Layout, aggregate, select_layers,
};
use flowtracer_core::backbone::{Backbone, BackboneConfig, backbone};
use flowtracer_core::shaping::{ApplyTo, Select, ShapingConfig};
use flowtracer_core::validate::check_spans;
use flowtracer_core::{AnswerMode, Config, Sequence, Spans, Trace, TraceConfig, Tracer};
use flowtracer_io::{RawArray, SafeTensors, view_npy};
use serde::{Deserialize, Serialize};

use super::CliError;
use crate::atomic::{read_regular, write_atomic};
use crate::checkpoint::json_object;

/// Arguments of `flowtracer score`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The attention file and spans.
    #[command(flatten)]
    pub input: Input,
    /// Write the JSON to this file (atomically) instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// The inputs shared by `flowtracer score` and `flowtracer explain`.
///
/// Spans and the layer selection are kept as text and parsed by [`score`], so that a bad
/// value is reported like every other bad input: one line, exit code 2.
#[derive(Debug, Clone, clap::Args)]
pub struct Input {
    /// Attention probabilities: .npy (N x N, H x N x N or L x H x N x N) or .safetensors.
    #[arg(long, value_name = "FILE", required_unless_present = "qk")]
    pub attention: Option<PathBuf>,
    /// Post-RoPE queries and keys instead (FlashAttention models): .safetensors with
    /// q.{L} [H_q, N, d], k.{L} [H_kv, N, d], optional lse.{L} [H_q, N] (see `cli::qk`).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["attention", "tensor"])]
    pub qk: Option<PathBuf>,
    /// Safetensors tensor to read; repeat to list per-layer tensors in layer order.
    #[arg(long, value_name = "NAME")]
    pub tensor: Vec<String>,
    /// Layers to average: `middle` (default), `all`, a range `a..b`, or a list `1,3,5`.
    #[arg(long, value_name = "SPEC", allow_hyphen_values = true)]
    pub layers: Option<String>,
    /// Question tokens, a half-open range `A..B` (where flow is injected).
    #[arg(long, value_name = "A..B", allow_hyphen_values = true)]
    pub question: String,
    /// Answer tokens, a half-open range `C..D` (where flow is absorbed).
    #[arg(long, value_name = "C..D", allow_hyphen_values = true)]
    pub answer: String,
    /// Scored response tokens `E..F` (default: from the end of the question to N).
    #[arg(long, value_name = "E..F", allow_hyphen_values = true)]
    pub response: Option<String>,
    /// A JSON file of scoring options (rho, gamma_flow, answer_mode, coverage, ...).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl Input {
    /// The input file: `--qk` or `--attention`.
    pub fn source(&self) -> &Path {
        self.qk
            .as_deref()
            .or(self.attention.as_deref())
            .unwrap_or(Path::new(""))
    }
}

/// Runs `flowtracer score`.
///
/// # Errors
///
/// A [`CliError`] for any bad input (see the [module docs](self)) or a failed write; no
/// output file exists after an error.
pub fn run(args: Args) -> Result<(), CliError> {
    let scored = score(&args.input)?;
    let mut json = serde_json::to_string_pretty(&scored.report())
        .map_err(|e| CliError::bad_input(format!("cannot serialise the scores: {e}")))?;
    json.push('\n');
    match &args.out {
        Some(path) => write_out(path, json.as_bytes()),
        None => std::io::stdout()
            .lock()
            .write_all(json.as_bytes())
            .map_err(|e| CliError::bad_input(format!("cannot write to standard output: {e}"))),
    }
}

/// Scoring options read from `--config` (every field optional).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Fraction of response tokens that are shaped (hubs).
    pub rho: f64,
    /// Weight of the shaped tokens.
    pub gamma_flow: f64,
    /// `"both"` or `"nonnegative_only"`: how a trainer applies the weights to negative
    /// advantages. Accepted so one config file serves the trainer and the CLI; it does not
    /// change the weights reported here.
    pub apply_to: ApplyTo,
    /// Interpolation between plain GRPO (0) and full shaping (1).
    pub mix: f64,
    /// Rescale the weights to mean 1 over the response.
    pub normalize_mean: bool,
    /// `"top"` (default) or `"bottom"` (the paper's ablation).
    pub select: Select,
    /// `"absorbing"` (default) or `"relay"`.
    pub answer_mode: AnswerMode,
    /// Edges with weight below this are dropped (default 0).
    pub edge_threshold: f64,
    /// Allowed excess of a row's mass over 1.
    pub row_tolerance: f64,
    /// Fraction of the edge flow the kept backbone edges must cover.
    pub coverage: f64,
    /// Flow at or above which a token is a checkpoint.
    pub checkpoint_threshold: f64,
}

impl Default for Options {
    fn default() -> Self {
        let shaping = ShapingConfig::default();
        let trace = TraceConfig::DEFAULT;
        let bb = BackboneConfig::default();
        Self {
            rho: shaping.rho,
            gamma_flow: shaping.gamma_flow,
            apply_to: shaping.apply_to,
            mix: shaping.mix,
            normalize_mean: shaping.normalize_mean,
            select: shaping.select,
            answer_mode: trace.answer_mode,
            edge_threshold: trace.edge_threshold,
            row_tolerance: trace.row_tolerance,
            coverage: bb.coverage,
            checkpoint_threshold: bb.checkpoint_threshold,
        }
    }
}

impl Options {
    fn shaping(&self) -> ShapingConfig {
        ShapingConfig::default()
            .with_rho(self.rho)
            .with_gamma_flow(self.gamma_flow)
            .with_apply_to(self.apply_to)
            .with_mix(self.mix)
            .with_normalize_mean(self.normalize_mean)
            .with_select(self.select)
    }

    fn trace(&self) -> TraceConfig {
        TraceConfig::default()
            .with_answer_mode(self.answer_mode)
            .with_edge_threshold(self.edge_threshold)
            .with_row_tolerance(self.row_tolerance)
    }

    fn backbone(&self) -> BackboneConfig {
        BackboneConfig::default()
            .with_coverage(self.coverage)
            .with_checkpoint_threshold(self.checkpoint_threshold)
            .with_rho(self.rho)
    }
}

/// Everything computed for one attention dump.
#[derive(Debug, Clone)]
pub struct Scored {
    /// Number of tokens.
    pub n: usize,
    /// Question span.
    pub question: Range<usize>,
    /// Answer span.
    pub answer: Range<usize>,
    /// Scored response span.
    pub response: Range<usize>,
    /// Layers averaged, or `None` if the input had no layer axis.
    pub layers: Option<Vec<usize>>,
    /// The averaged attention `Ā` (dense `N x N`) with its spans, as the core checked them.
    pub sequence: Sequence<'static, f64>,
    /// Reach, flow and throughput.
    pub trace: Trace<f64>,
    /// Advantage weight per token.
    pub weights: Vec<f64>,
    /// Path, kept edges, hubs and checkpoints.
    pub backbone: Backbone,
    /// The options in force.
    pub options: Options,
}

/// The JSON document of `flowtracer score` (field names are the documented interface).
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    n: usize,
    question: [usize; 2],
    answer: [usize; 2],
    response: [usize; 2],
    layers: Option<&'a [usize]>,
    reach: &'a [f64],
    flow: &'a [f64],
    throughput: &'a [f64],
    weights: &'a [f64],
    backbone: BackboneReport<'a>,
    metrics: Metrics,
}

#[derive(Debug, Serialize)]
struct BackboneReport<'a> {
    path: &'a [usize],
    path_probability: f64,
    edges: Vec<(usize, usize, f64)>,
    total_edge_flow: f64,
    hubs: &'a [usize],
    checkpoints: &'a [usize],
}

/// Summary numbers of one scored sequence (the `metrics` object of the JSON).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Metrics {
    /// Flow absorbed by the answer (1 in absorbing mode).
    pub answer_mass: f64,
    /// Live question tokens `|Q+|`.
    pub num_sources: usize,
    /// Tokens with `h > 0`.
    pub num_live: usize,
    /// Flow on the kept backbone edges.
    pub kept_edge_flow: f64,
    /// `kept_edge_flow / total_edge_flow` (0 if there is no edge flow).
    pub kept_edge_share: f64,
    /// Mean flow over the response.
    pub response_flow_mean: f64,
    /// Mean advantage weight over the response.
    pub response_weight_mean: f64,
    /// Number of hubs.
    pub num_hubs: usize,
    /// Number of checkpoints.
    pub num_checkpoints: usize,
    /// Largest row mass of `Ā` (on and below the diagonal).
    pub max_row_mass: f64,
}

impl Scored {
    /// The summary metrics.
    #[must_use]
    pub fn metrics(&self) -> Metrics {
        let n = self.n;
        let kept_edge_flow: f64 = self.backbone.edges.iter().map(|e| e.flow).sum();
        let total = self.backbone.total_edge_flow;
        let len = self.response.len().max(1) as f64;
        let max_row_mass = (0..n)
            .map(|k| self.sequence.row(k).iter().sum::<f64>())
            .fold(0.0, f64::max);
        Metrics {
            answer_mass: self.trace.answer_mass(),
            num_sources: self.trace.num_sources(),
            num_live: self.trace.reach().iter().filter(|&&h| h > 0.0).count(),
            kept_edge_flow,
            kept_edge_share: if total > 0.0 {
                kept_edge_flow / total
            } else {
                0.0
            },
            response_flow_mean: self.trace.flow()[self.response.clone()].iter().sum::<f64>() / len,
            response_weight_mean: self.weights[self.response.clone()].iter().sum::<f64>() / len,
            num_hubs: self.backbone.hubs.len(),
            num_checkpoints: self.backbone.checkpoints.len(),
            max_row_mass,
        }
    }

    /// The JSON document of `flowtracer score`.
    #[must_use]
    pub fn report(&self) -> Report<'_> {
        let pair = |r: &Range<usize>| [r.start, r.end];
        Report {
            n: self.n,
            question: pair(&self.question),
            answer: pair(&self.answer),
            response: pair(&self.response),
            layers: self.layers.as_deref(),
            reach: self.trace.reach(),
            flow: self.trace.flow(),
            throughput: self.trace.throughput(),
            weights: &self.weights,
            backbone: BackboneReport {
                path: &self.backbone.path,
                path_probability: self.backbone.path_probability,
                edges: self
                    .backbone
                    .edges
                    .iter()
                    .map(|e| (e.from, e.to, e.flow))
                    .collect(),
                total_edge_flow: self.backbone.total_edge_flow,
                hubs: &self.backbone.hubs,
                checkpoints: &self.backbone.checkpoints,
            },
            metrics: self.metrics(),
        }
    }
}

/// Reads the attention, checks everything, and computes the trace, weights and backbone.
///
/// Checks run in the order of [method §13](docs/method.md#s13): file and shape, then spans, then the data.
///
/// # Errors
///
/// A [`CliError`] naming the first problem found (see the [module docs](self)).
pub fn score(input: &Input) -> Result<Scored, CliError> {
    let options = match &input.config {
        Some(path) => read_options(path)?,
        None => Options::default(),
    };
    let selection = input
        .layers
        .as_deref()
        .map(|text| {
            text.parse::<LayerSelection>()
                .map_err(|e| CliError::bad_input(format!("invalid --layers {text:?}: {e}")))
        })
        .transpose()?;
    let question = parse_range("--question", &input.question)?;
    let answer = parse_range("--answer", &input.answer)?;
    let response = input
        .response
        .as_deref()
        .map(|r| parse_range("--response", r))
        .transpose()?;

    let core = |e: flowtracer_core::Error| CliError::bad_input(e.to_string());
    let spans = match &response {
        Some(r) => Spans::new(question.clone(), answer.clone()).with_response(r.clone()),
        None => Spans::new(question.clone(), answer.clone()),
    };
    let (n, attention, layers) = if let Some(path) = &input.qk {
        // Method §15 order: the file's shapes and config, the spans, then the data.
        let file = super::qk::QkFile::open(path)?;
        check_spans(file.n(), &spans).map_err(core)?;
        let (attention, layers) = file.aggregate(
            &selection.unwrap_or_default(),
            options.trace().row_tolerance,
        )?;
        (file.n(), attention, Some(layers))
    } else {
        let path = input.source();
        let file = AttentionFile::open(path, &input.tensor)?;
        // Spans are checked against the file's N before its data is read (method §13 order).
        check_spans(file.n, &spans).map_err(core)?;
        if file.layers.is_none() && selection.is_some() {
            return Err(CliError::bad_input(format!(
                "--layers needs attention with a layer axis ([L,H,N,N] or per-layer tensors), but {} has shape {:?}",
                path.display(),
                file.shape
            )));
        }
        let n = file.n;
        let (attention, layers) = file.aggregate(&selection.unwrap_or_default())?;
        (n, attention, layers)
    };
    // The core's default response: every token after the question.
    let response = response.unwrap_or(question.end..n);
    let sequence = Sequence::owned(attention, Layout::Dense, spans).map_err(core)?;
    let config = Config::default()
        .with_trace(options.trace())
        .with_shaping(options.shaping());
    let mut tracer = Tracer::new(config).map_err(core)?;
    let trace = tracer.trace(&sequence).map_err(core)?;
    let weights = tracer.token_weights(&trace);
    let backbone = backbone(&sequence, &trace, &options.backbone()).map_err(core)?;
    Ok(Scored {
        n,
        question,
        answer,
        response,
        layers,
        sequence,
        trace,
        weights,
        backbone,
        options,
    })
}

/// The most bytes a `--config` file may hold.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads `--config`: a regular file of at most [`MAX_CONFIG_BYTES`] holding a JSON object
/// (an array or any other value is refused, never read by position).
fn read_options(path: &Path) -> Result<Options, CliError> {
    let bytes = read_regular(path, MAX_CONFIG_BYTES).map_err(|e| {
        CliError::bad_input(format!("cannot read --config {}: {e}", path.display()))
    })?;
    json_object(&bytes)
        .map_err(|e| CliError::bad_input(format!("bad --config {}: {e}", path.display())))
}

/// Parses a half-open range `A..B` given for `flag`.
///
/// # Errors
///
/// A [`CliError`] naming the flag if the text is not `A..B` with `A <= B`.
pub fn parse_range(flag: &str, text: &str) -> Result<Range<usize>, CliError> {
    let bad = |why: &str| CliError::bad_input(format!("invalid {flag} {text:?}: {why}"));
    let (a, b) = text
        .split_once("..")
        .ok_or_else(|| bad("expected a half-open range A..B such as 3..7"))?;
    let parse = |s: &str| s.trim().parse::<usize>();
    let (Ok(start), Ok(end)) = (parse(a), parse(b)) else {
        return Err(bad(
            "expected a half-open range A..B of non-negative integers",
        ));
    };
    if start > end {
        return Err(bad("the start is after the end"));
    }
    Ok(start..end)
}

/// Writes the output of `score` or `explain` to `--out` with [`write_atomic`].
///
/// # Errors
///
/// A [`CliError`] (bad input) naming `--out` and the path; no output or temporary file is
/// left behind.
pub fn write_out(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    write_atomic(path, bytes).map_err(|e| {
        CliError::bad_input(format!(
            "cannot write --out {}: {}",
            e.path.display(),
            e.source
        ))
    })
}

/// An attention file, opened and checked for shape, before its data is aggregated.
struct AttentionFile {
    /// Tokens.
    n: usize,
    /// Heads.
    heads: usize,
    /// Layers, if the input has a layer axis.
    layers: Option<usize>,
    /// The shape as found (for messages).
    shape: Vec<usize>,
    /// Where the data comes from.
    source: Source,
    /// The file, for messages.
    path: PathBuf,
}

enum Source {
    /// A `.npy` file's bytes: one array, decoded as it is averaged.
    Npy(Vec<u8>),
    /// A safetensors file's bytes and the one tensor to read, decoded as it is averaged.
    Tensor { bytes: Vec<u8>, name: String },
    /// Per-layer safetensors: the file's bytes and the tensor names in layer order.
    PerLayer { bytes: Vec<u8>, names: Vec<String> },
}

impl AttentionFile {
    fn open(path: &Path, tensors: &[String]) -> Result<Self, CliError> {
        let shown = path.display();
        // A regular file, read up to the size it has (a device, FIFO or directory is refused).
        let bytes = read_regular(path, u64::MAX)
            .map_err(|e| CliError::bad_input(format!("cannot read --attention {shown}: {e}")))?;
        let io = |e: flowtracer_io::Error| CliError::bad_input(format!("{shown}: {e}"));
        let is_npy = bytes.starts_with(b"\x93NUMPY")
            || path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
        if is_npy {
            if !tensors.is_empty() {
                return Err(CliError::bad_input(format!(
                    "--tensor applies to .safetensors files, but {shown} is a .npy file"
                )));
            }
            let shape = view_npy(&bytes).map_err(io)?.shape;
            return Self::from_shape(path, shape, Source::Npy(bytes));
        }
        let file = SafeTensors::parse(&bytes).map_err(io)?;
        let infos = file.tensors();
        let names: Vec<String> = match tensors {
            [] if infos.is_empty() => {
                return Err(CliError::bad_input(format!(
                    "{shown}: the file holds no tensors"
                )));
            }
            [] if infos.len() == 1 => vec![infos[0].name.clone()],
            [] => layer_order(infos.iter().map(|t| t.name.as_str()))
                .map_err(|e| CliError::bad_input(format!("{shown}: {e}")))?,
            names => names.to_vec(),
        };
        if names.len() == 1 {
            let shape = file.view(&names[0]).map_err(io)?.shape;
            drop(file);
            let name = names.into_iter().next().expect("one name");
            return Self::from_shape(path, shape, Source::Tensor { bytes, name });
        }
        // Per-layer tensors: check every shape (and dtype) before reading any data.
        let mut layer_shape: Option<(usize, usize, Vec<usize>)> = None;
        for name in &names {
            work(1);
            let info = file
                .get(name)
                .ok_or_else(|| io(flowtracer_io::Error::TensorNotFound { name: name.clone() }))?;
            if !matches!(info.dtype.as_str(), "F64" | "F32" | "F16" | "BF16") {
                return Err(io(flowtracer_io::Error::UnsupportedDtype {
                    dtype: info.dtype.clone(),
                }));
            }
            let (heads, n) = match info.shape.as_slice() {
                &[a, b] if a == b => (1, a),
                &[h, a, b] | &[1, h, a, b] if a == b => (h, a),
                s => {
                    return Err(CliError::bad_input(format!(
                        "{shown}: per-layer tensor {name:?} has shape {s:?}; expected [N,N], [H,N,N] or [1,H,N,N] with square matrices"
                    )));
                }
            };
            match &layer_shape {
                None => layer_shape = Some((heads, n, info.shape.clone())),
                Some((h0, n0, s0)) if (*h0, *n0) != (heads, n) => {
                    return Err(CliError::bad_input(format!(
                        "{shown}: per-layer tensor {name:?} has shape {:?}, but the first one has {s0:?}",
                        info.shape
                    )));
                }
                Some(_) => {}
            }
        }
        let (heads, n, first) = layer_shape.unwrap_or((1, 0, Vec::new()));
        let mut shape = vec![names.len()];
        shape.extend_from_slice(&first);
        drop(file);
        check_n(path, n, &shape)?;
        Ok(Self {
            n,
            heads,
            layers: Some(names.len()),
            shape,
            source: Source::PerLayer { bytes, names },
            path: path.to_path_buf(),
        })
    }

    fn from_shape(path: &Path, shape: Vec<usize>, source: Source) -> Result<Self, CliError> {
        let (layers, heads, n) = match *shape.as_slice() {
            [a, b] => (None, 1, (a, b)),
            [h, a, b] => (None, h, (a, b)),
            [l, h, a, b] => (Some(l), h, (a, b)),
            _ => {
                return Err(CliError::bad_input(format!(
                    "{}: attention has shape {shape:?} (rank {}); expected [N,N], [H,N,N] or [L,H,N,N]",
                    path.display(),
                    shape.len()
                )));
            }
        };
        if n.0 != n.1 {
            return Err(CliError::bad_input(format!(
                "{}: attention matrices must be square, but the shape is {shape:?}",
                path.display()
            )));
        }
        check_n(path, n.0, &shape)?;
        if heads == 0 || layers == Some(0) {
            return Err(CliError::bad_input(format!(
                "{}: attention has shape {shape:?}, with no {}",
                path.display(),
                if heads == 0 { "heads" } else { "layers" }
            )));
        }
        Ok(Self {
            n: n.0,
            heads,
            layers,
            shape,
            source,
            path: path.to_path_buf(),
        })
    }

    /// Averages the selected layers and all heads into `Ā`, decoding one head's `N x N`
    /// matrix at a time: besides the file's bytes, only `Ā` and one head's matrix (both
    /// f64) are held.
    ///
    /// Each head is added to the core's [`LayerAccumulator`] as it is decoded, in the order
    /// the core's [`aggregate`] adds them (selected layers ascending, heads ascending), so
    /// `Ā` is the same to the last bit. A defect (NaN, infinity, negative entry) is then
    /// reported as the core reports it for whole layers: the layer holding the first one is
    /// decoded whole and checked by the core alone.
    fn aggregate(
        self,
        selection: &LayerSelection,
    ) -> Result<(Vec<f64>, Option<Vec<usize>>), CliError> {
        let core = |e: flowtracer_core::Error| CliError::bad_input(e.to_string());
        let shown = self.path.display().to_string();
        let io = |e: flowtracer_io::Error| CliError::bad_input(format!("{shown}: {e}"));
        let (n, heads) = (self.n, self.heads);
        // 0: no layer axis and one head, the input is already `Ā`.
        let layers = match self.layers {
            Some(l) => l,
            None if heads == 1 => 0,
            None => 1,
        };
        let selected = match self.layers {
            Some(l) => Some(select_layers(l, selection).map_err(core)?),
            None => None,
        };
        let mut order = selected.clone().unwrap_or_else(|| vec![0]);
        order.sort_unstable();
        match &self.source {
            Source::Npy(bytes) => {
                let view = view_npy(bytes).map_err(io)?;
                let abar = average(&[view], true, layers, heads, n, &order).map_err(core)?;
                Ok((abar, selected))
            }
            Source::Tensor { bytes, name } => {
                let file = SafeTensors::parse(bytes).map_err(io)?;
                let view = file.view(name).map_err(io)?;
                let abar = average(&[view], true, layers, heads, n, &order).map_err(core)?;
                Ok((abar, selected))
            }
            Source::PerLayer { bytes, names } => {
                let file = SafeTensors::parse(bytes).map_err(io)?;
                let views = names
                    .iter()
                    .map(|name| file.view(name))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(io)?;
                let abar = average(&views, false, layers, heads, n, &order).map_err(core)?;
                Ok((abar, selected))
            }
        }
    }
}

/// The mean over the layers `order` (ascending) and all heads of attention held either in
/// one view of `[layers][heads][n][n]` elements (`one_array`) or in one view per layer of
/// `[heads][n][n]`: see [`AttentionFile::aggregate`]. `layers == 0` with one head means the
/// input is already `Ā` (no layer axis).
fn average(
    views: &[RawArray<'_>],
    one_array: bool,
    layers: usize,
    heads: usize,
    n: usize,
    order: &[usize],
) -> Result<Vec<f64>, flowtracer_core::Error> {
    let m = n * n;
    let per_layer = heads * m;
    // A layer's view and the offset of its first element.
    let layer = |l: usize| -> (&RawArray<'_>, usize) {
        if one_array {
            (&views[0], l * per_layer)
        } else {
            (&views[l], 0)
        }
    };
    if views.iter().any(|v| !v.is_c_order()) {
        // A Fortran-order .npy: decoded whole and averaged by the core.
        let data = views[0].decode().data.into_f64();
        if layers == 0 {
            return Ok(data);
        }
        let all = LayerSelection::List(order.to_vec());
        return aggregate(&data, layers, heads, n, Layout::Dense, &all);
    }
    if layers == 0 {
        // Already `Ā` (`[N, N]` or `[1, N, N]`, no layer axis): only decoded, and checked by
        // the core's trace.
        let mut abar = vec![0.0; m];
        views[0].decode_f64_into(0, &mut abar);
        return Ok(abar);
    }
    let mut acc = LayerAccumulator::new(1, n, Layout::Dense)?;
    let mut head = vec![0.0; m];
    for &l in order {
        let (view, start) = layer(l);
        for h in 0..heads {
            view.decode_f64_into(start + h * m, &mut head);
            acc.add_layer(l, &head)?;
        }
    }
    match acc.finish() {
        Err(
            flowtracer_core::Error::NonFinite { position }
            | flowtracer_core::Error::Negative { position, .. },
        ) => {
            // Report the defect as the core does for whole layers: check that layer alone.
            let l = position.layer.unwrap_or(0);
            let (view, start) = layer(l);
            let mut data = vec![0.0; per_layer];
            view.decode_f64_into(start, &mut data);
            let mut one = LayerAccumulator::new(heads, n, Layout::Dense)?;
            one.add_layer(l, &data)?;
            one.finish()
        }
        other => other,
    }
}

fn check_n(path: &Path, n: usize, shape: &[usize]) -> Result<(), CliError> {
    if n == 0 {
        return Err(CliError::bad_input(format!(
            "{}: attention has shape {shape:?}, with no tokens",
            path.display()
        )));
    }
    Ok(())
}

/// Orders per-layer tensor names by the last number in each name.
///
/// One sort of `(layer, position, name)`: O(T log T) for T names. Two names with one layer
/// number are reported as the pair whose later name comes first in the file; a name without
/// a number as the first such name, if no repeated layer number comes before it.
fn layer_order<'a>(names: impl Iterator<Item = &'a str>) -> Result<Vec<String>, String> {
    let mut keyed = Vec::new();
    let mut unnumbered = None;
    for (at, name) in names.enumerate() {
        let digits = name
            .rsplit(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())
            .unwrap_or("");
        match digits.parse::<u64>() {
            Ok(layer) => keyed.push((layer, at, name)),
            Err(_) => {
                unnumbered = Some(name);
                break;
            }
        }
    }
    keyed.sort_unstable_by(|a, b| {
        work(1);
        a.cmp(b)
    });
    if let Some(w) = keyed
        .windows(2)
        .filter(|w| w[0].0 == w[1].0)
        .min_by_key(|w| w[1].1)
    {
        let ((layer, _, other), (_, _, name)) = (w[0], w[1]);
        return Err(format!(
            "tensors {other:?} and {name:?} have the same layer number {layer}; list the per-layer tensors with repeated --tensor"
        ));
    }
    if let Some(name) = unnumbered {
        return Err(format!(
            "the file holds several tensors and {name:?} has no layer number; choose one with --tensor, or list the per-layer tensors with repeated --tensor"
        ));
    }
    Ok(keyed
        .into_iter()
        .map(|(_, _, name)| name.to_owned())
        .collect())
}

/// Work counted by the tests: each name comparison of the per-layer checks.
#[cfg(test)]
static WORK: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Counts `n` units of work (tests only; nothing in other builds).
#[inline]
fn work(n: u64) {
    #[cfg(test)]
    WORK.fetch_add(n, core::sync::atomic::Ordering::Relaxed);
    #[cfg(not(test))]
    let _ = n;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file of `t` zero-size per-layer tensors, listed in a scrambled layer
    /// order (`k * 7919 mod t`; 7919 is prime, so every layer appears once).
    fn per_layer_file(t: usize) -> PathBuf {
        let mut header = String::from("{");
        for k in 0..t {
            let i = k * 7919 % t;
            if k > 0 {
                header.push(',');
            }
            header.push_str(&format!(
                "\"model.layers.{i}.attn\":{{\"dtype\":\"F32\",\"shape\":[0,0],\"data_offsets\":[0,0]}}"
            ));
        }
        header.push('}');
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        let path = std::env::temp_dir().join(format!(
            "flowtracer-score-layers-{t}-{}.safetensors",
            std::process::id()
        ));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Issue 14 item 5: ordering and checking T per-layer tensors costs O(T log T) name
    /// comparisons, not O(T^2). Counted, not timed (each comparison of the layer sort, each
    /// lookup by name; a lookup is flowtracer-io's binary search, counted in its own test):
    /// 4x the tensors must cost well under 16x the work (T log T gives about 4.7x).
    #[test]
    fn per_layer_checks_are_not_quadratic() {
        let mut counts = Vec::new();
        for t in [4_000, 16_000] {
            let path = per_layer_file(t);
            WORK.store(0, core::sync::atomic::Ordering::Relaxed);
            let err = AttentionFile::open(&path, &[]).err().expect("zero tokens");
            assert!(err.message().contains("no tokens"), "{err}");
            counts.push(WORK.load(core::sync::atomic::Ordering::Relaxed));
            let _ = std::fs::remove_file(&path);
        }
        println!(
            "name comparisons: T = 4000: {}, 4T = 16000: {}",
            counts[0], counts[1]
        );
        assert!(
            counts[1] < 6 * counts[0],
            "4x the tensors cost {}x the work ({counts:?})",
            counts[1] as f64 / counts[0] as f64
        );
    }

    /// The layer order and both error messages, on small cases.
    #[test]
    fn layer_order_sorts_by_the_last_number_and_reports_the_first_problem() {
        let order = layer_order(["b.10.x", "a.2", "c.0.y", "d7"].into_iter()).unwrap();
        assert_eq!(order, ["c.0.y", "a.2", "d7", "b.10.x"]);
        let err = layer_order(["l.1", "m.2", "n.1", "o.2"].into_iter()).unwrap_err();
        assert!(
            err.contains("\"l.1\" and \"n.1\" have the same layer number 1"),
            "{err}"
        );
        let err = layer_order(["l.1", "x", "l.1"].into_iter()).unwrap_err();
        assert!(err.contains("\"x\" has no layer number"), "{err}");
    }

    /// The `.npy` bytes of `values` (f64, C order) with `shape`.
    fn npy(shape: &[usize], values: &[f64]) -> Vec<u8> {
        let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
        let mut header = format!(
            "{{'descr': '<f8', 'fortran_order': False, 'shape': ({}), }}",
            dims.join(", ")
        );
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&u16::try_from(header.len()).unwrap().to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        out
    }

    /// Averaging head by head while decoding gives the core's `aggregate` exactly: the same
    /// `Ā` to the last bit, and the same first defect (layer, head, row, column) when several
    /// are planted across heads, rows and layers.
    #[test]
    fn streaming_average_equals_the_core_aggregate() {
        let (l, h, n) = (4, 3, 6);
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut clean = vec![0.0; l * h * n * n];
        for m in 0..l * h {
            for k in 0..n {
                let row: Vec<f64> = (0..=k).map(|_| next()).collect();
                let total: f64 = row.iter().sum();
                for (i, x) in row.iter().enumerate() {
                    clean[(m * n + k) * n + i] = x / total;
                }
            }
        }
        let at = |layer: usize, head: usize, row: usize, col: usize| {
            ((layer * h + head) * n + row) * n + col
        };
        let mut cases = vec![clean.clone()];
        // A negative in an early head's late row and one in a later head's early row.
        let mut two_negatives = clean.clone();
        two_negatives[at(1, 0, 5, 2)] = -0.25;
        two_negatives[at(1, 2, 1, 0)] = -0.5;
        cases.push(two_negatives.clone());
        // A NaN in a later layer beats the negatives of an earlier one.
        let mut nan_later = two_negatives;
        nan_later[at(3, 1, 4, 4)] = f64::NAN;
        nan_later[at(3, 0, 5, 1)] = f64::INFINITY;
        cases.push(nan_later);
        for values in &cases {
            let bytes = npy(&[l, h, n, n], values);
            let view = view_npy(&bytes).unwrap();
            for selection in [
                LayerSelection::All,
                LayerSelection::Middle,
                LayerSelection::List(vec![3, 1]),
            ] {
                let mut order = select_layers(l, &selection).unwrap();
                order.sort_unstable();
                let streamed = average(core::slice::from_ref(&view), true, l, h, n, &order);
                let whole = aggregate(values, l, h, n, Layout::Dense, &selection);
                match (&streamed, &whole) {
                    (Ok(a), Ok(b)) => {
                        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
                    }
                    _ => assert_eq!(streamed, whole, "{selection:?}"),
                }
            }
        }
    }
}
