//! The crate's one error type.

use alloc::string::String;
use core::fmt;
use core::ops::Range;

use crate::aggregate::Layout;

/// The stage of the pipeline where a result left the f64 range ([`Error::Overflow`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// The reach `h` (backward pass).
    Reach,
    /// The flow `f` (forward pass).
    Flow,
    /// A GRPO group's advantages.
    GroupAdvantages,
    /// The GRPO loss.
    GrpoLoss,
}

/// Which input of the Q/K stage ([method §15](docs/method.md#s15)) holds a bad value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QkTensor {
    /// The queries `Q [H_q][N][d]`.
    Query,
    /// The keys `K [H_kv][N][d]`.
    Key,
    /// The saved log-sum-exp `[H_q][N]`.
    LogSumExp,
}

impl fmt::Display for QkTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QkTensor::Query => "query",
            QkTensor::Key => "key",
            QkTensor::LogSumExp => "log-sum-exp",
        })
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Reach => "reach",
            Stage::Flow => "flow",
            Stage::GroupAdvantages => "group advantages",
            Stage::GrpoLoss => "grpo loss",
        })
    }
}

/// Which index range of a sequence an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Span {
    /// The question tokens `Q`, where flow is injected.
    Question,
    /// The answer tokens `A`, where flow is absorbed.
    Answer,
    /// The scored response tokens `R`.
    Response,
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Span::Question => "question",
            Span::Answer => "answer",
            Span::Response => "response",
        })
    }
}

/// Where in the input a bad value sits.
///
/// `layer` and `head` are `Some` when the value was found in per-layer, per-head attention
/// (`[layers][heads][N][N]`), `None` when it was found in aggregated attention `Ā`.
/// `row` is the query token `k`, `col` the key token `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Layer index in the input (not in the selection), if the input had layers.
    pub layer: Option<usize>,
    /// Head index, if the input had heads.
    pub head: Option<usize>,
    /// Query token (row of `Ā`).
    pub row: usize,
    /// Key token (column of `Ā`).
    pub col: usize,
}

impl Position {
    /// A position in aggregated attention `Ā[row][col]`.
    pub const fn matrix(row: usize, col: usize) -> Self {
        Self {
            layer: None,
            head: None,
            row,
            col,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = self.layer {
            write!(f, "layer {l}, ")?;
        }
        if let Some(h) = self.head {
            write!(f, "head {h}, ")?;
        }
        write!(f, "row {}, column {}", self.row, self.col)
    }
}

/// Everything that can go wrong with user data, in the order of [method §13](docs/method.md#s13).
///
/// Checks run in this order and the first failing one is returned, so the CPU path, the
/// GPU kernels and the fuzz oracle all report the same variant and position for the same
/// input.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// A buffer's length does not match the shape it should have.
    ShapeMismatch {
        /// Which buffer.
        what: &'static str,
        /// The length the shape implies.
        expected: usize,
        /// The length given.
        actual: usize,
    },
    /// The sequence has no tokens (`N = 0`).
    EmptySequence,
    /// The attention's length is `N²` (dense) or `N (N + 1) / 2` (packed) for no `N`.
    NotSquare {
        /// The length given.
        len: usize,
        /// The layout it was read as.
        layout: Layout,
    },
    /// Cumulative sequence lengths (`cu_seqlens`) that do not start at 0 or decrease.
    BadOffsets {
        /// The first offending entry.
        index: usize,
    },
    /// A shape parameter that must be positive is zero (layers or heads).
    ZeroDimension {
        /// Which dimension.
        what: &'static str,
    },
    /// A span has no tokens.
    EmptySpan {
        /// Which span.
        span: Span,
    },
    /// A span given as a list of positions is not strictly ascending.
    UnsortedSpan {
        /// Which span.
        span: Span,
        /// The first entry not above its predecessor.
        index: usize,
    },
    /// A span reaches past the end of the sequence.
    SpanOutOfRange {
        /// Which span.
        span: Span,
        /// The span as given.
        range: Range<usize>,
        /// Sequence length.
        n: usize,
    },
    /// The answer starts before the question ends.
    AnswerNotAfterQuestion {
        /// The question span.
        question: Range<usize>,
        /// The answer span.
        answer: Range<usize>,
    },
    /// The scored response range does not contain the answer span.
    ResponseMissesAnswer {
        /// The response span.
        response: Range<usize>,
        /// The answer span.
        answer: Range<usize>,
    },
    /// A NaN or infinite entry (the first one, by lowest flat index).
    NonFinite {
        /// Where it is.
        position: Position,
    },
    /// A negative entry (the first one, by lowest flat index).
    Negative {
        /// Where it is.
        position: Position,
        /// Its value.
        value: f64,
    },
    /// A row of `Ā` whose mass on and below the diagonal exceeds `1 + tolerance`.
    RowMassExceeded {
        /// The row (query token).
        row: usize,
        /// Its mass.
        mass: f64,
        /// The tolerance in force.
        tolerance: f64,
    },
    /// No question token reaches the answer: there is no flow to trace.
    NoSourceMass,
    /// A result overflowed f64: the reach or flow (only possible when rows of `Ā` may sum
    /// to far more than 1, i.e. with a `row_tolerance` far above its default), or the GRPO
    /// loss or group advantages (rewards, advantages or probability ratios near the f64
    /// range).
    Overflow {
        /// The stage that overflowed.
        stage: Stage,
    },
    /// A layer selection that names no layer, a layer out of range, or a repeated layer.
    InvalidLayerSelection {
        /// What is wrong with it.
        reason: &'static str,
        /// The offending layer index or count.
        value: usize,
        /// Number of layers in the input.
        num_layers: usize,
    },
    /// A reward that is NaN or infinite (the first one).
    NonFiniteReward {
        /// Its index in the batch of rewards.
        index: usize,
    },
    /// A GRPO group has fewer than two responses.
    GroupTooSmall {
        /// The group size given.
        num_generations: usize,
    },
    /// The batch is not a whole number of groups.
    GroupSizeMismatch {
        /// Number of responses.
        batch: usize,
        /// Group size.
        num_generations: usize,
    },
    /// A name that is none of an option's names (parsing an option enum from text).
    UnknownName {
        /// The option (`"loss_type"`, `"credit"`, ...).
        what: &'static str,
        /// The text given.
        given: String,
        /// Every allowed name.
        allowed: &'static [&'static str],
    },
    /// Query heads that do not split evenly over the key/value heads (grouped-query
    /// attention needs `H_q` to be a multiple of `H_kv`).
    HeadsNotGrouped {
        /// Query heads `H_q`.
        q_heads: usize,
        /// Key/value heads `H_kv`.
        kv_heads: usize,
    },
    /// A NaN or infinite value in the queries, keys or log-sum-exp of the Q/K stage (the
    /// first one: layers ascending, then Q, K, LSE, each in flat order).
    ///
    /// `position.row` is the token, `position.col` the feature (0 for the log-sum-exp).
    NonFiniteInput {
        /// Which input.
        tensor: QkTensor,
        /// Where it is (layer as given to the stage, head of that tensor).
        position: Position,
    },
    /// Finite queries and keys whose scaled product `q·k` is not finite in the arithmetic
    /// type (f32 for f32, f16 and bf16 input; f64 for f64): the first such row.
    LogitsOverflow {
        /// The layer (as given to the stage).
        layer: usize,
        /// The query head.
        head: usize,
        /// The query token.
        row: usize,
    },
    /// A saved log-sum-exp that does not belong to its queries and keys: the probabilities
    /// `exp(q·k·scale − lse)` of that row do not sum to 1 within the row tolerance (the
    /// first such row by layer, head, row).
    LseMismatch {
        /// The layer (as given to the stage).
        layer: usize,
        /// The query head.
        head: usize,
        /// The query token.
        row: usize,
        /// What the row sums to.
        mass: f64,
        /// The tolerance in force.
        tolerance: f64,
    },
    /// A buffer the input's shape implies could not be allocated (for example `Ā`'s
    /// `N²` values for the `N` of queries and keys).
    OutOfMemory {
        /// What the buffer is.
        what: &'static str,
        /// Its size in bytes (saturated at `usize::MAX`).
        bytes: usize,
    },
    /// A configuration value outside its domain.
    InvalidConfig {
        /// The field's name.
        field: &'static str,
        /// What the domain is.
        reason: &'static str,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ShapeMismatch {
                what,
                expected,
                actual,
            } => {
                write!(
                    f,
                    "{what} has {actual} elements, but its shape implies {expected}"
                )
            }
            Error::EmptySequence => f.write_str("the sequence is empty (N = 0)"),
            Error::NotSquare { len, layout } => match layout {
                Layout::Dense => write!(f, "attention has {len} values, which is N x N for no N"),
                Layout::Packed => write!(
                    f,
                    "packed attention has {len} values, which is N (N + 1) / 2 for no N"
                ),
            },
            Error::BadOffsets { index } => write!(
                f,
                "cu_seqlens must start at 0 and never decrease; entry {index} does not"
            ),
            Error::UnsortedSpan { span, index } => write!(
                f,
                "the {span} positions must be strictly ascending; entry {index} is not"
            ),
            Error::ZeroDimension { what } => write!(f, "the number of {what} is zero"),
            Error::EmptySpan { span } => write!(f, "the {span} span is empty"),
            Error::SpanOutOfRange { span, range, n } => write!(
                f,
                "the {span} span {}..{} is out of range for a sequence of {n} tokens",
                range.start, range.end
            ),
            Error::AnswerNotAfterQuestion { question, answer } => write!(
                f,
                "the answer span {}..{} starts before the question span {}..{} ends",
                answer.start, answer.end, question.start, question.end
            ),
            Error::ResponseMissesAnswer { response, answer } => write!(
                f,
                "the response span {}..{} does not contain the answer span {}..{}",
                response.start, response.end, answer.start, answer.end
            ),
            Error::NonFinite { position } => write!(f, "non-finite attention at {position}"),
            Error::Negative { position, value } => {
                write!(f, "negative attention {value} at {position}")
            }
            Error::RowMassExceeded {
                row,
                mass,
                tolerance,
            } => write!(
                f,
                "attention row {row} sums to {mass}, more than 1 + {tolerance}"
            ),
            Error::Overflow { stage } => write!(
                f,
                "the {stage} overflowed f64 (inputs near the limits of f64)"
            ),
            Error::NoSourceMass => f.write_str(
                "no question token reaches the answer (no source mass): nothing to trace",
            ),
            Error::InvalidLayerSelection {
                reason,
                value,
                num_layers,
            } => write!(
                f,
                "invalid layer selection: {reason} ({value}; the input has {num_layers} layers)"
            ),
            Error::NonFiniteReward { index } => write!(f, "reward {index} is not finite"),
            Error::GroupTooSmall { num_generations } => write!(
                f,
                "GRPO needs at least 2 generations per group, got {num_generations}"
            ),
            Error::GroupSizeMismatch {
                batch,
                num_generations,
            } => write!(
                f,
                "a batch of {batch} responses is not a whole number of groups of {num_generations}"
            ),
            Error::HeadsNotGrouped { q_heads, kv_heads } => write!(
                f,
                "{q_heads} query heads do not split evenly over {kv_heads} key/value heads"
            ),
            Error::NonFiniteInput { tensor, position } => {
                write!(f, "non-finite {tensor} value at {position}")
            }
            Error::LogitsOverflow { layer, head, row } => write!(
                f,
                "the attention logits of layer {layer}, head {head}, row {row} overflow (q·k·scale is not finite)"
            ),
            Error::LseMismatch {
                layer,
                head,
                row,
                mass,
                tolerance,
            } => write!(
                f,
                "the log-sum-exp of layer {layer}, head {head}, row {row} does not belong to its Q and K: the row's probabilities sum to {mass}, not 1 within {tolerance}"
            ),
            Error::OutOfMemory { what, bytes } => {
                write!(f, "cannot allocate {what}: {bytes} bytes")
            }
            Error::InvalidConfig { field, reason } => write!(f, "invalid {field}: {reason}"),
            Error::UnknownName {
                what,
                given,
                allowed,
            } => {
                write!(f, "unknown {what} {given:?}; expected one of: ")?;
                for (i, name) in allowed.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(name)?;
                }
                Ok(())
            }
        }
    }
}

impl core::error::Error for Error {}
