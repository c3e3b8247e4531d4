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

use flowtracer_core::aggregate::{LayerSelection, Layout};
use flowtracer_core::backbone::{Backbone, BackboneConfig, backbone};
use flowtracer_core::shaping::{ApplyTo, Select, ShapingConfig};
use flowtracer_core::validate::check_spans;
use flowtracer_core::{AnswerMode, Config, Sequence, Spans, Trace, TraceConfig, Tracer};
use serde::{Deserialize, Serialize};

use super::CliError;
use super::attention::AttentionFile;
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
