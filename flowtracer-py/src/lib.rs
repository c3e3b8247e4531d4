//! The `flowtracer` Python package: the core's front door ([`Sequence`] and [`Tracer`]) for
//! numpy arrays.
//!
//! The extension module is `flowtracer._native`; `python/flowtracer/__init__.py` gives each
//! entry point a Python signature and a doctested docstring and calls into this module. What
//! this crate adds to the core, and nothing more:
//!
//! - **input**: numpy arrays (or anything `numpy.asarray` takes) of float32 or float64 are read
//!   in place when C-contiguous (zero-copy, through `PyReadonlyArray`) and copied in C order
//!   otherwise; every other dtype is an error naming it. Spans are `(start, stop)` tuples,
//!   `range`s (step 1) or ascending integer sequences, turned into [`Tokens`];
//! - **options**: keyword options by the core's field names, starting from the core's
//!   defaults (`Config::default()`, `LayerSelection::default()`, `BackboneConfig::default()`),
//!   enum values parsed by the core's `FromStr`; an unknown option is the core's
//!   [`flowtracer_core::Error::UnknownName`] listing the allowed ones;
//! - **batches**: a list of sequences, a padded `[B, ...]` array with a `(B, N)` attention mask
//!   (left or right padding), or one buffer cut by `cu_seqlens`, traced by
//!   [`Tracer::trace_batch`] (parallel: the core's `parallel` feature) into `(B, T)` weights
//!   aligned to completion tokens;
//! - **errors**: every [`Error`] becomes `flowtracer.Error` (a `ValueError`) with `kind` (the
//!   variant's name) and the error's fields as attributes;
//! - the GIL is released (`Python::detach`) around every computation.

extern crate alloc;

use alloc::borrow::Cow;

use flowtracer_core::aggregate::{LayerSelection, Layout};
use flowtracer_core::backbone::{BackboneConfig, backbone as core_backbone};
use flowtracer_core::grpo::ScaleRewards;
use flowtracer_core::sequence::split_ragged;
use flowtracer_core::shaping::{ApplyTo, Select};
use flowtracer_core::vocabulary::metrics;
use flowtracer_core::{
    AnswerMode, Config, Error as CoreError, FlowFloat, LayerShape, Sequence, Span, Spans, Tokens,
    Trace as CoreTrace, Tracer,
};
use numpy::{
    Element, PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::IntoPyObjectExt;
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyRange, PyRangeMethods, PyTuple};
use rayon::prelude::*;

create_exception!(
    flowtracer,
    Error,
    PyValueError,
    "Every error of flowtracer: bad shapes, spans, dtypes, non-finite or negative attention,\n\
     unknown options, ... A subclass of ValueError.\n\n\
     `kind` is the name of the core's error variant (for example 'NonFinite',\n\
     'SpanOutOfRange', 'UnknownName') or of the binding's own check ('UnsupportedDtype',\n\
     'BadRank', 'BadSpan', 'BadAttentionMask', 'BadBatch'). The fields of the error are\n\
     attributes; those an error does not have are None: sequence (the index in a batch),\n\
     span ('question', 'answer' or 'response'), row, col, layer, head, index, value, field,\n\
     what, given, allowed, expected, actual, n, range, mass, tolerance, dtype.\n\n\
     >>> import numpy as np, flowtracer\n\
     >>> a = np.array([[1.0, 0.0], [float('nan'), 1.0]])\n\
     >>> try:\n\
     ...     flowtracer.trace(a, (0, 1), (1, 2))\n\
     ... except flowtracer.Error as e:\n\
     ...     print(e.kind, e.row, e.col)\n\
     NonFinite 1 0"
);

/// The attributes every `flowtracer.Error` carries (None where the error has no such field).
const ERROR_ATTRIBUTES: &[&str] = &[
    "kind",
    "sequence",
    "span",
    "row",
    "col",
    "layer",
    "head",
    "index",
    "value",
    "field",
    "what",
    "given",
    "allowed",
    "expected",
    "actual",
    "n",
    "range",
    "mass",
    "tolerance",
    "dtype",
];

/// A `flowtracer.Error` with `kind`, `message` and the given attributes (the others None).
fn error_with<'py>(
    py: Python<'py>,
    kind: &str,
    message: String,
    attrs: Vec<(&'static str, Bound<'py, PyAny>)>,
) -> PyErr {
    let err = Error::new_err(message);
    let value = err.value(py);
    let set = || -> PyResult<()> {
        for name in ERROR_ATTRIBUTES {
            value.setattr(*name, py.None())?;
        }
        value.setattr("kind", kind)?;
        for (name, v) in attrs {
            value.setattr(name, v)?;
        }
        Ok(())
    };
    match set() {
        Ok(()) => err,
        Err(e) => e,
    }
}

/// The variant name of a core error (`NonFinite`, `SpanOutOfRange`, ...), from its `Debug`.
fn kind_of(e: &CoreError) -> String {
    format!("{e:?}")
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

fn span_name(span: Span) -> String {
    span.to_string()
}

/// The core's error as `flowtracer.Error`, with its fields as attributes; `sequence` is the
/// index of the failing sequence in a batch.
fn core_error<'py>(py: Python<'py>, e: &CoreError, sequence: Option<usize>) -> PyErr {
    let mut attrs: Vec<(&'static str, Bound<'py, PyAny>)> = Vec::new();
    macro_rules! put {
        ($name:literal, $v:expr) => {
            if let Ok(o) = $v.into_bound_py_any(py) {
                attrs.push(($name, o));
            }
        };
    }
    let range = |r: &core::ops::Range<usize>| (r.start, r.end);
    let position = |attrs: &mut Vec<(&'static str, Bound<'py, PyAny>)>,
                    p: &flowtracer_core::Position| {
        for (name, v) in [("layer", p.layer), ("head", p.head)] {
            if let Some(v) = v
                && let Ok(o) = v.into_bound_py_any(py)
            {
                attrs.push((name, o));
            }
        }
        for (name, v) in [("row", p.row), ("col", p.col)] {
            if let Ok(o) = v.into_bound_py_any(py) {
                attrs.push((name, o));
            }
        }
    };
    match e {
        CoreError::ShapeMismatch {
            what,
            expected,
            actual,
        } => {
            put!("what", *what);
            put!("expected", *expected);
            put!("actual", *actual);
        }
        CoreError::NotSquare { len, .. } => put!("actual", *len),
        CoreError::BadOffsets { index } => put!("index", *index),
        CoreError::ZeroDimension { what } => put!("what", *what),
        CoreError::EmptySpan { span } => put!("span", span_name(*span)),
        CoreError::UnsortedSpan { span, index } => {
            put!("span", span_name(*span));
            put!("index", *index);
        }
        CoreError::SpanOutOfRange { span, range: r, n } => {
            put!("span", span_name(*span));
            put!("range", range(r));
            put!("n", *n);
        }
        CoreError::AnswerNotAfterQuestion { answer, .. } => {
            put!("span", "answer");
            put!("range", range(answer));
        }
        CoreError::ResponseMissesAnswer { response, .. } => {
            put!("span", "response");
            put!("range", range(response));
        }
        CoreError::NonFinite { position: p } => position(&mut attrs, p),
        CoreError::Negative { position: p, value } => {
            position(&mut attrs, p);
            put!("value", *value);
        }
        CoreError::RowMassExceeded {
            row,
            mass,
            tolerance,
        } => {
            put!("row", *row);
            put!("mass", *mass);
            put!("tolerance", *tolerance);
        }
        CoreError::InvalidLayerSelection {
            value, num_layers, ..
        } => {
            put!("value", *value);
            put!("n", *num_layers);
        }
        CoreError::NonFiniteReward { index } => put!("index", *index),
        CoreError::GroupTooSmall { num_generations } => put!("value", *num_generations),
        CoreError::GroupSizeMismatch {
            batch,
            num_generations,
        } => {
            put!("actual", *batch);
            put!("value", *num_generations);
        }
        CoreError::UnknownName {
            what,
            given,
            allowed,
        } => {
            put!("what", *what);
            put!("given", given.as_str());
            put!("allowed", allowed.to_vec());
        }
        CoreError::NonFiniteInput { position: p, .. } => position(&mut attrs, p),
        CoreError::LogitsOverflow { layer, head, row } => {
            put!("layer", *layer);
            put!("head", *head);
            put!("row", *row);
        }
        CoreError::LseMismatch {
            layer,
            head,
            row,
            mass,
            tolerance,
        } => {
            put!("layer", *layer);
            put!("head", *head);
            put!("row", *row);
            put!("mass", *mass);
            put!("tolerance", *tolerance);
        }
        CoreError::InvalidConfig { field, .. } => put!("field", *field),
        _ => {}
    }
    if let Some(s) = sequence {
        put!("sequence", s);
    }
    let message = match sequence {
        Some(s) => format!("sequence {s}: {e}"),
        None => e.to_string(),
    };
    error_with(py, &kind_of(e), message, attrs)
}

/// A check of the binding's own (dtype, rank, span objects, masks, batch lists).
fn input_error(py: Python<'_>, kind: &str, message: String) -> PyErr {
    error_with(py, kind, message, Vec::new())
}

// ---------------------------------------------------------------------------------------------
// Options: the core's names, the core's defaults, the core's parsers.
// ---------------------------------------------------------------------------------------------

/// What `trace`, `token_weights` and `score_batch` accept: trace, shaping and `layers` (the
/// layer selection for per-layer input).
const SCORING_ALLOWED: &[&str] = &[
    "answer_mode",
    "edge_threshold",
    "row_tolerance",
    "rho",
    "gamma_flow",
    "apply_to",
    "mix",
    "normalize_mean",
    "select",
    "layers",
];
/// What `shape_advantages` accepts: shaping and the group advantages (`GrpoConfig`).
const SHAPE_ALLOWED: &[&str] = &[
    "rho",
    "gamma_flow",
    "apply_to",
    "mix",
    "normalize_mean",
    "select",
    "scale_rewards",
    "advantage_eps",
];
/// What `Trace.backbone` accepts (`BackboneConfig`).
const BACKBONE_ALLOWED: &[&str] = &["coverage", "checkpoint_threshold", "rho"];

/// Parsed options: the core's configuration and layer selection.
#[derive(Debug, Clone, Default)]
struct Options {
    config: Config,
    layers: LayerSelection,
}

fn option_value_error(py: Python<'_>, name: &str, e: PyErr) -> PyErr {
    error_with(
        py,
        "InvalidConfig",
        format!("invalid {name}: {e}"),
        vec![("field", pyo3::types::PyString::new(py, name).into_any())],
    )
}

/// Parses an enum option with the core's `FromStr` (its error lists the allowed names).
fn parse_name<T: core::str::FromStr<Err = CoreError>>(
    py: Python<'_>,
    name: &str,
    v: &Bound<'_, PyAny>,
) -> PyResult<T> {
    let s: String = v.extract().map_err(|e| option_value_error(py, name, e))?;
    s.parse::<T>().map_err(|e| core_error(py, &e, None))
}

fn parse_f64(py: Python<'_>, name: &str, v: &Bound<'_, PyAny>) -> PyResult<f64> {
    v.extract().map_err(|e| option_value_error(py, name, e))
}

/// Options from keyword arguments, each name checked against `allowed`, starting from the
/// core's defaults.
fn parse_options(
    py: Python<'_>,
    kwargs: Option<&Bound<'_, PyDict>>,
    allowed: &'static [&'static str],
) -> PyResult<Options> {
    let mut o = Options::default();
    let Some(kwargs) = kwargs else {
        return Ok(o);
    };
    let (mut trace, mut shaping, mut grpo) = (o.config.trace, o.config.shaping, o.config.grpo);
    for (k, v) in kwargs.iter() {
        let name: String = k.extract()?;
        if !allowed.contains(&name.as_str()) {
            return Err(core_error(
                py,
                &CoreError::UnknownName {
                    what: "option",
                    given: name,
                    allowed,
                },
                None,
            ));
        }
        let n = name.as_str();
        match n {
            "answer_mode" => trace = trace.with_answer_mode(parse_name::<AnswerMode>(py, n, &v)?),
            "edge_threshold" => trace = trace.with_edge_threshold(parse_f64(py, n, &v)?),
            "row_tolerance" => trace = trace.with_row_tolerance(parse_f64(py, n, &v)?),
            "rho" => shaping = shaping.with_rho(parse_f64(py, n, &v)?),
            "gamma_flow" => shaping = shaping.with_gamma_flow(parse_f64(py, n, &v)?),
            "apply_to" => shaping = shaping.with_apply_to(parse_name::<ApplyTo>(py, n, &v)?),
            "mix" => shaping = shaping.with_mix(parse_f64(py, n, &v)?),
            "normalize_mean" => {
                shaping = shaping
                    .with_normalize_mean(v.extract().map_err(|e| option_value_error(py, n, e))?)
            }
            "select" => shaping = shaping.with_select(parse_name::<Select>(py, n, &v)?),
            "scale_rewards" => {
                grpo = grpo.with_scale_rewards(parse_name::<ScaleRewards>(py, n, &v)?)
            }
            "advantage_eps" => grpo = grpo.with_advantage_eps(parse_f64(py, n, &v)?),
            "layers" => o.layers = parse_layers(py, &v)?,
            _ => unreachable!("every allowed option is parsed"),
        }
    }
    o.config = o
        .config
        .with_trace(trace)
        .with_shaping(shaping)
        .with_grpo(grpo);
    Ok(o)
}

/// `layers`: a name the core's `LayerSelection::from_str` reads (`"middle"`, `"all"`,
/// `"2..6"`, `"1,3,5"`, `"spaced:3"`), a `range`, or a list of layer indices.
fn parse_layers(py: Python<'_>, v: &Bound<'_, PyAny>) -> PyResult<LayerSelection> {
    if let Ok(s) = v.extract::<String>() {
        return s.parse().map_err(|e| core_error(py, &e, None));
    }
    if let Ok(r) = v.cast::<PyRange>()
        && r.step()? == 1
        && r.start()? >= 0
        && r.stop()? >= r.start()?
    {
        return Ok(LayerSelection::Range(
            r.start()? as usize..r.stop()? as usize,
        ));
    }
    let list: Vec<usize> = v
        .extract()
        .map_err(|e| option_value_error(py, "layers", e))?;
    Ok(LayerSelection::List(list))
}

fn backbone_config(py: Python<'_>, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<BackboneConfig> {
    let mut c = BackboneConfig::default();
    let Some(kwargs) = kwargs else {
        return Ok(c);
    };
    for (k, v) in kwargs.iter() {
        let name: String = k.extract()?;
        let n = name.as_str();
        c = match n {
            "coverage" => c.with_coverage(parse_f64(py, n, &v)?),
            "checkpoint_threshold" => c.with_checkpoint_threshold(parse_f64(py, n, &v)?),
            "rho" => c.with_rho(parse_f64(py, n, &v)?),
            _ => {
                return Err(core_error(
                    py,
                    &CoreError::UnknownName {
                        what: "option",
                        given: name,
                        allowed: BACKBONE_ALLOWED,
                    },
                    None,
                ));
            }
        };
    }
    Ok(c)
}

/// The core's defaults of every option, by name (enum values by their names).
#[pyfunction]
fn defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let c = Config::default();
    let b = BackboneConfig::default();
    let d = PyDict::new(py);
    d.set_item("answer_mode", c.trace.answer_mode.name())?;
    d.set_item("edge_threshold", c.trace.edge_threshold)?;
    d.set_item("row_tolerance", c.trace.row_tolerance)?;
    d.set_item("rho", c.shaping.rho)?;
    d.set_item("gamma_flow", c.shaping.gamma_flow)?;
    d.set_item("apply_to", c.shaping.apply_to.name())?;
    d.set_item("mix", c.shaping.mix)?;
    d.set_item("normalize_mean", c.shaping.normalize_mean)?;
    d.set_item("select", c.shaping.select.name())?;
    d.set_item("scale_rewards", c.grpo.scale_rewards.name())?;
    d.set_item("advantage_eps", c.grpo.advantage_eps)?;
    d.set_item("layers", LayerSelection::default().to_string())?;
    d.set_item("coverage", b.coverage)?;
    d.set_item("checkpoint_threshold", b.checkpoint_threshold)?;
    Ok(d)
}

/// The allowed names of every enum option (the core's `NAMES`).
#[pyfunction]
fn choices(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("answer_mode", AnswerMode::NAMES.to_vec())?;
    d.set_item("apply_to", ApplyTo::NAMES.to_vec())?;
    d.set_item("select", Select::NAMES.to_vec())?;
    d.set_item("scale_rewards", ScaleRewards::NAMES.to_vec())?;
    Ok(d)
}

// ---------------------------------------------------------------------------------------------
// Input: arrays (zero-copy where possible) and spans.
// ---------------------------------------------------------------------------------------------

/// The float types the core runs in.
trait Float: FlowFloat + Element + Copy + Send + Sync {}
impl Float for f32 {}
impl Float for f64 {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F32,
    F64,
}

/// The object as a numpy array (through `numpy.asarray` if it is not one) and its dtype.
fn as_array<'py>(
    py: Python<'py>,
    what: &str,
    obj: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, Dtype)> {
    let arr = if obj.cast::<PyUntypedArray>().is_ok() {
        obj.clone()
    } else {
        py.import("numpy")?.getattr("asarray")?.call1((obj,))?
    };
    if arr.cast::<PyArrayDyn<f64>>().is_ok() {
        Ok((arr, Dtype::F64))
    } else if arr.cast::<PyArrayDyn<f32>>().is_ok() {
        Ok((arr, Dtype::F32))
    } else {
        let dtype = arr
            .getattr("dtype")
            .and_then(|d| d.str())
            .map(|s| s.to_string())
            .unwrap_or_else(|_| "unknown".into());
        Err(error_with(
            py,
            "UnsupportedDtype",
            format!(
                "{what} has dtype {dtype}; flowtracer reads float32 or float64 \
                 (torch tensors through DLPack and bfloat16 are not supported yet: \
                 convert with .float().numpy())"
            ),
            vec![
                ("dtype", pyo3::types::PyString::new(py, &dtype).into_any()),
                ("what", pyo3::types::PyString::new(py, what).into_any()),
            ],
        ))
    }
}

/// A borrowed float array and its shape.
struct ArrayIn<'py, F: Float> {
    array: PyReadonlyArrayDyn<'py, F>,
}

impl<'py, F: Float> ArrayIn<'py, F> {
    fn new(arr: &Bound<'py, PyAny>) -> PyResult<Self> {
        let a = arr.cast::<PyArrayDyn<F>>().map_err(PyErr::from)?;
        Ok(Self {
            array: a
                .try_readonly()
                .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(format!("{e}")))?,
        })
    }

    fn shape(&self) -> Vec<usize> {
        self.array.shape().to_vec()
    }

    /// The values in C order: the array's own memory when it is C-contiguous (zero-copy),
    /// else a copy.
    fn data(&self) -> Cow<'_, [F]> {
        if self.array.is_c_contiguous()
            && let Ok(s) = self.array.as_slice()
        {
            return Cow::Borrowed(s);
        }
        Cow::Owned(self.array.as_array().iter().copied().collect())
    }
}

/// How the values of one sequence are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `Ā`, dense `N x N` or packed lower triangle.
    Matrix(Layout),
    /// `[layers][heads][N][N]`, averaged over the selected layers and every head.
    Layers {
        layers: usize,
        heads: usize,
        n: usize,
    },
}

/// One sequence's values (borrowed from the array where possible) and their form.
struct Source<'a, F: Float> {
    data: Cow<'a, [F]>,
    form: Form,
}

/// The form of one sequence's array of the given shape: `[N(N+1)/2]` packed, `[N, N]`,
/// `[H, N, N]`, `[L, H, N, N]`.
fn form_of(py: Python<'_>, shape: &[usize]) -> PyResult<Form> {
    let square = |s: &[usize]| -> PyResult<usize> {
        let (a, b) = (s[s.len() - 2], s[s.len() - 1]);
        if a != b {
            return Err(core_error(
                py,
                &CoreError::ShapeMismatch {
                    what: "attention (its last two dimensions)",
                    expected: a * a,
                    actual: a * b,
                },
                None,
            ));
        }
        Ok(a)
    };
    match shape.len() {
        1 => Ok(Form::Matrix(Layout::Packed)),
        2 => {
            square(shape)?;
            Ok(Form::Matrix(Layout::Dense))
        }
        3 => Ok(Form::Layers {
            layers: 1,
            heads: shape[0],
            n: square(shape)?,
        }),
        4 => Ok(Form::Layers {
            layers: shape[0],
            heads: shape[1],
            n: square(shape)?,
        }),
        d => Err(input_error(
            py,
            "BadRank",
            format!(
                "attention has {d} dimensions; expected [N(N+1)/2] (packed), [N, N], \
                 [H, N, N] or [L, H, N, N]"
            ),
        )),
    }
}

impl<'a, F: Float> Source<'a, F> {
    /// The validated sequence (aggregating per-layer input).
    fn sequence(
        &self,
        spans: Spans,
        layers: &LayerSelection,
    ) -> Result<Sequence<'_, F>, CoreError> {
        match self.form {
            Form::Matrix(layout) => Sequence::borrowed(&self.data, layout, spans),
            Form::Layers {
                layers: l,
                heads,
                n,
            } => Sequence::from_layers(
                &self.data,
                LayerShape {
                    layers: l,
                    heads,
                    n,
                    layout: Layout::Dense,
                },
                layers,
                spans,
            ),
        }
    }
}

/// One span object as [`Tokens`]: a `(start, stop)` tuple or a `range` (step 1) is a range;
/// any other sequence of integers (list, numpy array) is a list of positions.
fn tokens(py: Python<'_>, span: &str, obj: &Bound<'_, PyAny>) -> PyResult<Tokens> {
    let bad = |why: String| {
        error_with(
            py,
            "BadSpan",
            format!("the {span} span {why}"),
            vec![("span", pyo3::types::PyString::new(py, span).into_any())],
        )
    };
    let as_range = |start: isize, stop: isize| -> PyResult<Tokens> {
        if start < 0 || stop < 0 {
            return Err(bad(format!("({start}, {stop}) has a negative bound")));
        }
        Ok(Tokens::Range(start as usize..stop as usize))
    };
    if let Ok(r) = obj.cast::<PyRange>() {
        if r.step()? == 1 {
            return as_range(r.start()?, r.stop()?);
        }
        let v: Vec<isize> = obj.extract()?;
        return list_tokens(v).map_err(|i| bad(format!("has a negative position {i}")));
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        if t.len() != 2 {
            return Err(bad(format!(
                "is a tuple of {} items; a tuple is (start, stop): use a list for positions",
                t.len()
            )));
        }
        let (start, stop): (isize, isize) = t
            .extract()
            .map_err(|_| bad("is a tuple that is not (start, stop) of integers".into()))?;
        return as_range(start, stop);
    }
    if obj.is_instance_of::<pyo3::types::PyString>() {
        return Err(bad(
            "is a string; expected (start, stop), a range or positions".into(),
        ));
    }
    let v: Vec<isize> = obj.extract().map_err(|_| {
        bad(format!(
            "is a {}; expected (start, stop), a range or a sequence of integer positions",
            obj.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    list_tokens(v).map_err(|i| bad(format!("has a negative position {i}")))
}

fn list_tokens(v: Vec<isize>) -> Result<Tokens, isize> {
    v.into_iter()
        .map(|i| usize::try_from(i).map_err(|_| i))
        .collect::<Result<Vec<usize>, isize>>()
        .map(Tokens::List)
}

fn spans(
    py: Python<'_>,
    question: &Bound<'_, PyAny>,
    answer: &Bound<'_, PyAny>,
    response: Option<&Bound<'_, PyAny>>,
) -> PyResult<Spans> {
    let mut s = Spans::new(
        tokens(py, "question", question)?,
        tokens(py, "answer", answer)?,
    );
    if let Some(r) = response
        && !r.is_none()
    {
        s = s.with_response(tokens(py, "response", r)?);
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------------------
// One sequence: trace, token_weights, Trace.backbone.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum AnyTrace {
    F32(CoreTrace<f32>),
    F64(CoreTrace<f64>),
}

/// The result of `flowtracer.trace`: reach, flow and throughput of every token (numpy arrays
/// of the input's dtype), the number of source tokens, the answer's absorbed mass, and the
/// settings to turn it into weights or a backbone.
///
/// >>> import flowtracer
/// >>> a = [[1.0, 0.0, 0.0, 0.0, 0.0],
/// ...      [0.5, 0.5, 0.0, 0.0, 0.0],
/// ...      [0.3, 0.5, 0.2, 0.0, 0.0],
/// ...      [0.1, 0.2, 0.3, 0.4, 0.0],
/// ...      [0.1, 0.1, 0.6, 0.1, 0.1]]
/// >>> t = flowtracer.trace(a, (0, 2), (4, 5))
/// >>> t.n, t.num_sources, round(t.answer_mass, 12), t.dtype
/// (5, 2, 1.0, 'float64')
/// >>> [round(x, 4) for x in t.reach.tolist()]
/// [0.5165, 0.435, 0.63, 0.1, 1.0]
/// >>> t.throughput.round(4).tolist()
/// [1.0, 1.4211, 1.395, 0.1511, 2.0]
#[pyclass(module = "flowtracer", name = "Trace", frozen)]
struct PyTrace {
    inner: AnyTrace,
    config: Config,
    layers: LayerSelection,
    spans: Spans,
    attention: Py<PyAny>,
}

fn vec_to_py<'py, F: Float>(py: Python<'py>, v: &[F]) -> Bound<'py, PyAny> {
    PyArray1::from_slice(py, v).into_any()
}

fn tokens_to_py<'py>(py: Python<'py>, t: &Tokens) -> PyResult<Bound<'py, PyAny>> {
    Ok(match t {
        Tokens::Range(r) => (r.start, r.end).into_pyobject(py)?.into_any(),
        Tokens::List(v) => PyList::new(py, v)?.into_any(),
    })
}

#[pymethods]
impl PyTrace {
    /// Number of tokens N.
    #[getter]
    fn n(&self) -> usize {
        match &self.inner {
            AnyTrace::F32(t) => t.n(),
            AnyTrace::F64(t) => t.n(),
        }
    }

    /// 'float32' or 'float64': the dtype of the input and of every array of the trace.
    #[getter]
    fn dtype(&self) -> &'static str {
        match &self.inner {
            AnyTrace::F32(_) => "float32",
            AnyTrace::F64(_) => "float64",
        }
    }

    /// Reach h of every token (method §4), shape (N,): positive exactly for live tokens.
    #[getter]
    fn reach<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        match &self.inner {
            AnyTrace::F32(t) => vec_to_py(py, t.reach()),
            AnyTrace::F64(t) => vec_to_py(py, t.reach()),
        }
    }

    /// Flow f of every token (method §6), shape (N,), each in [0, 1].
    #[getter]
    fn flow<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        match &self.inner {
            AnyTrace::F32(t) => vec_to_py(py, t.flow()),
            AnyTrace::F64(t) => vec_to_py(py, t.flow()),
        }
    }

    /// Throughput tau of every token (method §7), shape (N,): 2 f for live tokens, else 0.
    #[getter]
    fn throughput<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        match &self.inner {
            AnyTrace::F32(t) => vec_to_py(py, t.throughput()),
            AnyTrace::F64(t) => vec_to_py(py, t.throughput()),
        }
    }

    /// |Q+|: the number of live question tokens where flow was injected.
    #[getter]
    fn num_sources(&self) -> usize {
        match &self.inner {
            AnyTrace::F32(t) => t.num_sources(),
            AnyTrace::F64(t) => t.num_sources(),
        }
    }

    /// Flow absorbed by the answer (1 up to rounding, by conservation).
    #[getter]
    fn answer_mass(&self) -> f64 {
        match &self.inner {
            AnyTrace::F32(t) => t.answer_mass(),
            AnyTrace::F64(t) => t.answer_mass(),
        }
    }

    /// The question tokens: (start, stop) for a range, else the list of positions.
    #[getter]
    fn question<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match &self.inner {
            AnyTrace::F32(t) => tokens_to_py(py, t.question()),
            AnyTrace::F64(t) => tokens_to_py(py, t.question()),
        }
    }

    /// The answer tokens: (start, stop) for a range, else the list of positions.
    #[getter]
    fn answer<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match &self.inner {
            AnyTrace::F32(t) => tokens_to_py(py, t.answer()),
            AnyTrace::F64(t) => tokens_to_py(py, t.answer()),
        }
    }

    /// The scored response tokens (default: every token after the question).
    #[getter]
    fn response<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match &self.inner {
            AnyTrace::F32(t) => tokens_to_py(py, t.response()),
            AnyTrace::F64(t) => tokens_to_py(py, t.response()),
        }
    }

    /// Per-token weights, shape (N,): gamma_flow on the top-rho response tokens by
    /// throughput, 1 elsewhere (method §9), with the options the trace was made with.
    ///
    /// >>> import flowtracer
    /// >>> a = [[1.0, 0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0, 0.0],
    /// ...      [0.3, 0.5, 0.2, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4, 0.0],
    /// ...      [0.1, 0.1, 0.6, 0.1, 0.1]]
    /// >>> flowtracer.trace(a, (0, 2), (4, 5)).token_weights().tolist()
    /// [1.0, 1.0, 1.5, 1.0, 1.5]
    fn token_weights<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let tracer = Tracer::new(self.config).map_err(|e| core_error(py, &e, None))?;
        Ok(match &self.inner {
            AnyTrace::F32(t) => PyArray1::from_vec(py, tracer.token_weights(t)).into_any(),
            AnyTrace::F64(t) => PyArray1::from_vec(py, tracer.token_weights(t)).into_any(),
        })
    }

    /// The backbone of the flow (method §8), an analysis tool: a dict with `path` (the most
    /// probable question-to-answer path), `path_probability`, `edges` (a list of
    /// (from, to, flow), most flow first, covering `coverage` of the total), `total_edge_flow`,
    /// `hubs` (top-rho response tokens by throughput) and `checkpoints` (tokens with
    /// f >= checkpoint_threshold). Options: coverage, checkpoint_threshold, rho (the core's
    /// BackboneConfig defaults). Reads the attention the trace was made from again.
    ///
    /// >>> import flowtracer
    /// >>> a = [[1.0, 0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0, 0.0],
    /// ...      [0.3, 0.5, 0.2, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4, 0.0],
    /// ...      [0.1, 0.1, 0.6, 0.1, 0.1]]
    /// >>> b = flowtracer.trace(a, (0, 2), (4, 5)).backbone()
    /// >>> b["path"], round(b["path_probability"] * 29, 12), len(b["edges"]), b["hubs"]
    /// ([1, 2, 4], 10.0, 5, [2, 4])
    #[pyo3(signature = (**options))]
    fn backbone<'py>(
        &self,
        py: Python<'py>,
        options: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let bc = backbone_config(py, options)?;
        let attention = self.attention.bind(py);
        let (arr, dtype) = as_array(py, "attention", attention)?;
        let result = match (&self.inner, dtype) {
            (AnyTrace::F32(t), Dtype::F32) => self.backbone_of::<f32>(py, &arr, t, &bc)?,
            (AnyTrace::F64(t), Dtype::F64) => self.backbone_of::<f64>(py, &arr, t, &bc)?,
            _ => {
                return Err(input_error(
                    py,
                    "UnsupportedDtype",
                    "the attention's dtype changed since it was traced".into(),
                ));
            }
        };
        let d = PyDict::new(py);
        d.set_item("path", result.path)?;
        d.set_item("path_probability", result.path_probability)?;
        let edges: Vec<(usize, usize, f64)> = result
            .edges
            .iter()
            .map(|e| (e.from, e.to, e.flow))
            .collect();
        d.set_item("edges", edges)?;
        d.set_item("total_edge_flow", result.total_edge_flow)?;
        d.set_item("hubs", result.hubs)?;
        d.set_item("checkpoints", result.checkpoints)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "Trace(n={}, num_sources={}, answer_mass={}, dtype={})",
            self.n(),
            self.num_sources(),
            self.answer_mass(),
            self.dtype()
        )
    }
}

impl PyTrace {
    fn backbone_of<F: Float>(
        &self,
        py: Python<'_>,
        arr: &Bound<'_, PyAny>,
        t: &CoreTrace<F>,
        bc: &BackboneConfig,
    ) -> PyResult<flowtracer_core::backbone::Backbone> {
        let input = ArrayIn::<F>::new(arr)?;
        let form = form_of(py, &input.shape())?;
        let source = Source {
            data: input.data(),
            form,
        };
        let spans = self.spans.clone();
        let layers = &self.layers;
        py.detach(|| {
            let seq = source.sequence(spans, layers)?;
            core_backbone(&seq, t, bc)
        })
        .map_err(|e| core_error(py, &e, None))
    }
}

fn trace_typed<F: Float>(
    py: Python<'_>,
    arr: &Bound<'_, PyAny>,
    spans: Spans,
    options: &Options,
) -> PyResult<CoreTrace<F>> {
    let input = ArrayIn::<F>::new(arr)?;
    let form = form_of(py, &input.shape())?;
    let source = Source {
        data: input.data(),
        form,
    };
    let config = options.config;
    let layers = &options.layers;
    py.detach(|| {
        let mut tracer = Tracer::new(config)?;
        let seq = source.sequence(spans, layers)?;
        tracer.trace(&seq)
    })
    .map_err(|e| core_error(py, &e, None))
}

/// Traces one sequence; see `flowtracer.trace` (python/flowtracer/__init__.py).
#[pyfunction]
#[pyo3(signature = (attention, question, answer, response, options))]
fn trace<'py>(
    py: Python<'py>,
    attention: &Bound<'py, PyAny>,
    question: &Bound<'py, PyAny>,
    answer: &Bound<'py, PyAny>,
    response: Option<&Bound<'py, PyAny>>,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<PyTrace> {
    let options = parse_options(py, options, SCORING_ALLOWED)?;
    let spans = spans(py, question, answer, response)?;
    let (arr, dtype) = as_array(py, "attention", attention)?;
    let inner = match dtype {
        Dtype::F32 => AnyTrace::F32(trace_typed::<f32>(py, &arr, spans.clone(), &options)?),
        Dtype::F64 => AnyTrace::F64(trace_typed::<f64>(py, &arr, spans.clone(), &options)?),
    };
    Ok(PyTrace {
        inner,
        config: options.config,
        layers: options.layers,
        spans,
        attention: arr.unbind(),
    })
}

// ---------------------------------------------------------------------------------------------
// Groups: shape_advantages.
// ---------------------------------------------------------------------------------------------

fn shape_typed<'py, F: Float>(
    py: Python<'py>,
    rewards: &Bound<'py, PyAny>,
    num_generations: usize,
    weights: &Bound<'py, PyAny>,
    options: &Options,
) -> PyResult<Bound<'py, PyAny>> {
    let np = py.import("numpy")?;
    let dtype = if core::any::TypeId::of::<F>() == core::any::TypeId::of::<f32>() {
        "float32"
    } else {
        "float64"
    };
    // Rewards in the weights' dtype (the core takes one float type for both).
    let rewards = np.getattr("asarray")?.call1((rewards, dtype))?;
    let r = ArrayIn::<F>::new(&rewards)?;
    if r.shape().len() != 1 {
        return Err(input_error(
            py,
            "BadRank",
            format!("rewards must be 1-D (B,), got shape {:?}", r.shape()),
        ));
    }
    let w = ArrayIn::<F>::new(weights)?;
    let shape = w.shape();
    if shape.len() != 2 {
        return Err(input_error(
            py,
            "BadRank",
            format!("weights must be 2-D (B, T), got shape {shape:?}"),
        ));
    }
    if shape[0] != r.shape()[0] {
        return Err(core_error(
            py,
            &CoreError::ShapeMismatch {
                what: "weights (rows, one per reward)",
                expected: r.shape()[0],
                actual: shape[0],
            },
            None,
        ));
    }
    let (rd, wd) = (r.data(), w.data());
    let config = options.config;
    let out = py
        .detach(|| Tracer::new(config)?.shape_advantages(&rd, num_generations, &wd))
        .map_err(|e| core_error(py, &e, None))?;
    Ok(PyArray1::from_vec(py, out).reshape(shape)?.into_any())
}

/// Shaped per-token advantages; see `flowtracer.shape_advantages`.
#[pyfunction]
#[pyo3(signature = (rewards, num_generations, weights, options))]
fn shape_advantages<'py>(
    py: Python<'py>,
    rewards: &Bound<'py, PyAny>,
    num_generations: usize,
    weights: &Bound<'py, PyAny>,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let options = parse_options(py, options, SHAPE_ALLOWED)?;
    let (w, dtype) = as_array(py, "weights", weights)?;
    match dtype {
        Dtype::F32 => shape_typed::<f32>(py, rewards, num_generations, &w, &options),
        Dtype::F64 => shape_typed::<f64>(py, rewards, num_generations, &w, &options),
    }
}

// ---------------------------------------------------------------------------------------------
// Batches: score_batch.
// ---------------------------------------------------------------------------------------------

/// Where one sequence of a padded batch lies: its first position and its length.
fn mask_extents(
    py: Python<'_>,
    mask: &Bound<'_, PyAny>,
    b: usize,
    n: usize,
) -> PyResult<Vec<(usize, usize)>> {
    let np = py.import("numpy")?;
    let m = np.getattr("asarray")?.call1((mask,))?;
    let m = m.call_method1("__ne__", (0,))?;
    let m = np.getattr("ascontiguousarray")?.call1((m, "uint8"))?;
    let arr = m.cast::<PyArrayDyn<u8>>().map_err(PyErr::from)?.readonly();
    if arr.shape() != [b, n] {
        return Err(input_error(
            py,
            "BadAttentionMask",
            format!(
                "attention_mask has shape {:?}; the attention is of {b} sequences of {n} tokens: expected ({b}, {n})",
                arr.shape()
            ),
        ));
    }
    let data = arr
        .as_slice()
        .map_err(|e| input_error(py, "BadAttentionMask", e.to_string()))?;
    let mut out = Vec::with_capacity(b);
    for (i, row) in data.chunks_exact(n.max(1)).take(b).enumerate() {
        let first = row.iter().position(|&x| x != 0).unwrap_or(0);
        let len = row.iter().filter(|&&x| x != 0).count();
        if row[first..first + len].contains(&0) {
            let err = error_with(
                py,
                "BadAttentionMask",
                format!(
                    "sequence {i}: attention_mask row is not one contiguous run of ones \
                     (left or right padding only)"
                ),
                vec![("sequence", i.into_pyobject(py)?.into_any())],
            );
            return Err(err);
        }
        out.push((first, len));
    }
    Ok(out)
}

/// Copies the `len x len` block at `(offset, offset)` of each of the `mats` `N x N`
/// matrices in `data`.
fn crop<F: Float>(data: &[F], mats: usize, n: usize, offset: usize, len: usize) -> Vec<F> {
    let mut out = Vec::with_capacity(mats * len * len);
    for m in 0..mats {
        let base = m * n * n;
        for r in offset..offset + len {
            let row = base + r * n + offset;
            out.extend_from_slice(&data[row..row + len]);
        }
    }
    out
}

/// One input sequence of a batch: its values, its form, its spans and where its completion
/// starts (`None` spans: no answer, weight 1).
struct BatchItem<'a, F: Float> {
    source: Source<'a, F>,
    n: usize,
    spans: Option<Spans>,
    completion_start: usize,
}

/// The per-sequence sources of a batch (borrowed from the caller's arrays where possible).
enum BatchInput<'py, F: Float> {
    List(Vec<ArrayIn<'py, F>>),
    One(ArrayIn<'py, F>),
}

/// The batch's sources, with each sequence's length.
fn batch_sources<'a, 'py, F: Float>(
    py: Python<'py>,
    input: &'a BatchInput<'py, F>,
    mask: Option<&Bound<'py, PyAny>>,
    cu_seqlens: Option<&Bound<'py, PyAny>>,
    packed: bool,
) -> PyResult<Vec<(Source<'a, F>, usize)>> {
    match input {
        BatchInput::List(arrays) => {
            if mask.is_some() || cu_seqlens.is_some() {
                return Err(input_error(
                    py,
                    "BadBatch",
                    "attention_mask and cu_seqlens go with one array, not a list of sequences"
                        .into(),
                ));
            }
            arrays
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let shape = a.shape();
                    let form = form_of(py, &shape).map_err(|e| with_sequence(py, e, i))?;
                    let n = match form {
                        Form::Matrix(Layout::Dense) => shape[0],
                        Form::Matrix(_) => packed_n(shape[0]),
                        Form::Layers { n, .. } => n,
                    };
                    Ok((
                        Source {
                            data: a.data(),
                            form,
                        },
                        n,
                    ))
                })
                .collect()
        }
        BatchInput::One(a) => {
            let shape = a.shape();
            let data = a.data();
            if let Some(cu) = cu_seqlens {
                if mask.is_some() {
                    return Err(input_error(
                        py,
                        "BadBatch",
                        "give attention_mask (padded batch) or cu_seqlens (one buffer), not both"
                            .into(),
                    ));
                }
                if shape.len() != 1 {
                    return Err(input_error(
                        py,
                        "BadRank",
                        format!(
                            "with cu_seqlens the attention is one 1-D buffer, got shape {shape:?}"
                        ),
                    ));
                }
                let offsets: Vec<usize> = cu.extract().map_err(|_| {
                    input_error(
                        py,
                        "BadBatch",
                        "cu_seqlens must be a sequence of non-negative integers".into(),
                    )
                })?;
                let layout = if packed {
                    Layout::Packed
                } else {
                    Layout::Dense
                };
                let lens: Vec<usize> = offsets
                    .windows(2)
                    .map(|w| w[1].saturating_sub(w[0]))
                    .collect();
                let Cow::Borrowed(data) = data else {
                    unreachable!("batch_input made the buffer C-contiguous");
                };
                let parts =
                    split_ragged(data, &offsets, layout).map_err(|e| core_error(py, &e, None))?;
                return Ok(parts
                    .into_iter()
                    .zip(lens)
                    .map(|(p, n)| {
                        (
                            Source {
                                data: Cow::Borrowed(p),
                                form: Form::Matrix(layout),
                            },
                            n,
                        )
                    })
                    .collect());
            }
            if shape.len() < 3 || shape.len() > 5 {
                return Err(input_error(
                    py,
                    "BadRank",
                    format!(
                        "a padded batch is [B, N, N], [B, H, N, N] or [B, L, H, N, N], got shape {shape:?} \
                         (a list of arrays, or one buffer with cu_seqlens, for other forms)"
                    ),
                ));
            }
            let b = shape[0];
            let form = form_of(py, &shape[1..])?;
            let n = shape[shape.len() - 1];
            let per = shape[1..].iter().product::<usize>();
            let mats = per / (n * n).max(1);
            let Cow::Borrowed(data) = data else {
                unreachable!("batch_input made the batch C-contiguous");
            };
            let extents = match mask {
                Some(m) => mask_extents(py, m, b, n)?,
                None => vec![(0, n); b],
            };
            let items: Vec<(Source<'a, F>, usize)> = extents
                .par_iter()
                .enumerate()
                .map(|(i, &(offset, len))| {
                    let whole = &data[i * per..(i + 1) * per];
                    let values = if len == n {
                        Cow::Borrowed(whole)
                    } else {
                        Cow::Owned(crop(whole, mats, n, offset, len))
                    };
                    let form = match form {
                        Form::Layers { layers, heads, .. } => Form::Layers {
                            layers,
                            heads,
                            n: len,
                        },
                        f => f,
                    };
                    (Source { data: values, form }, len)
                })
                .collect();
            Ok(items)
        }
    }
}

fn packed_n(len: usize) -> usize {
    // The N with N (N + 1) / 2 = len, or 0 (the core then reports NotSquare).
    let mut n = ((2.0 * len as f64).sqrt()) as usize;
    while n * (n + 1) / 2 > len {
        n -= 1;
    }
    while (n + 1) * (n + 2) / 2 <= len {
        n += 1;
    }
    n
}

fn with_sequence(py: Python<'_>, err: PyErr, i: usize) -> PyErr {
    let v = err.value(py);
    let _ = v.setattr("sequence", i);
    err
}

fn opt_list<'py>(
    py: Python<'py>,
    what: &str,
    obj: Option<&Bound<'py, PyAny>>,
    b: usize,
) -> PyResult<Option<Vec<Bound<'py, PyAny>>>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    let items: Vec<Bound<'py, PyAny>> = obj
        .try_iter()
        .and_then(|it| it.collect::<PyResult<Vec<_>>>())
        .map_err(|_| {
            input_error(
                py,
                "BadBatch",
                format!("{what} must be a list, one entry per sequence"),
            )
        })?;
    if items.len() != b {
        return Err(error_with(
            py,
            "BadBatch",
            format!(
                "{what} has {} entries for a batch of {b} sequences",
                items.len()
            ),
            vec![
                ("expected", b.into_pyobject(py)?.into_any()),
                ("actual", items.len().into_pyobject(py)?.into_any()),
            ],
        ));
    }
    Ok(Some(items))
}

/// Everything `score_batch` takes besides the attention.
struct BatchArgs<'a, 'py> {
    questions: &'a Bound<'py, PyAny>,
    answers: &'a Bound<'py, PyAny>,
    responses: Option<&'a Bound<'py, PyAny>>,
    attention_mask: Option<&'a Bound<'py, PyAny>>,
    cu_seqlens: Option<&'a Bound<'py, PyAny>>,
    completion_start: Option<&'a Bound<'py, PyAny>>,
    completion_length: Option<usize>,
    packed: bool,
}

fn batch_input<'py, F: Float>(
    attention: &Bound<'py, PyAny>,
    as_list: bool,
) -> PyResult<BatchInput<'py, F>> {
    if as_list {
        let items: Vec<Bound<'py, PyAny>> = attention.try_iter()?.collect::<PyResult<_>>()?;
        Ok(BatchInput::List(
            items
                .iter()
                .map(|a| ArrayIn::<F>::new(a))
                .collect::<PyResult<_>>()?,
        ))
    } else {
        // One array is cut into sequences in place: a non-contiguous one is copied into C
        // order once, here (numpy.ascontiguousarray), not refused.
        let contiguous = attention
            .py()
            .import("numpy")?
            .getattr("ascontiguousarray")?
            .call1((attention,))?;
        Ok(BatchInput::One(ArrayIn::<F>::new(&contiguous)?))
    }
}

fn score_typed<'py, F: Float>(
    py: Python<'py>,
    input: &BatchInput<'py, F>,
    args: &BatchArgs<'_, 'py>,
    options: &Options,
) -> PyResult<Bound<'py, PyAny>> {
    let sources = batch_sources(py, input, args.attention_mask, args.cu_seqlens, args.packed)?;
    let b = sources.len();
    let questions = opt_list(py, "questions", Some(args.questions), b)?.unwrap_or_default();
    let answers = opt_list(py, "answers", Some(args.answers), b)?.unwrap_or_default();
    let responses = opt_list(py, "responses", args.responses, b)?;
    let starts = opt_list(py, "completion_start", args.completion_start, b)?;
    let mut items: Vec<BatchItem<'_, F>> = Vec::with_capacity(b);
    for (i, (source, n)) in sources.into_iter().enumerate() {
        let spans = if answers[i].is_none() {
            None
        } else {
            let response = responses.as_ref().map(|r| &r[i]);
            Some(
                spans(py, &questions[i], &answers[i], response)
                    .map_err(|e| with_sequence(py, e, i))?,
            )
        };
        let completion_start = match &starts {
            Some(s) => s[i].extract::<usize>().map_err(|_| {
                error_with(
                    py,
                    "BadBatch",
                    format!("sequence {i}: completion_start must be a non-negative integer"),
                    vec![(
                        "sequence",
                        i.into_pyobject(py)
                            .map(|o| o.into_any())
                            .unwrap_or_else(|_| py.None().into_bound(py)),
                    )],
                )
            })?,
            None => match &spans {
                Some(s) => s.question.end(),
                None => tokens(py, "question", &questions[i])
                    .map_err(|e| with_sequence(py, e, i))?
                    .end(),
            },
        };
        items.push(BatchItem {
            source,
            n,
            spans,
            completion_start,
        });
    }
    let t = args.completion_length.unwrap_or_else(|| {
        items
            .iter()
            .map(|it| it.n.saturating_sub(it.completion_start))
            .max()
            .unwrap_or(0)
    });
    let tracer = Tracer::new(options.config).map_err(|e| core_error(py, &e, None))?;
    let layers = &options.layers;
    let result: Result<Vec<F>, (CoreError, usize)> = py.detach(|| {
        // Sequences are built (aggregated, cropped spans checked) in parallel too.
        let scored: Vec<usize> = (0..items.len())
            .filter(|&i| items[i].spans.is_some())
            .collect();
        let seqs: Vec<Sequence<'_, F>> = scored
            .par_iter()
            .map(|&i| {
                let it = &items[i];
                it.source
                    .sequence(it.spans.clone().expect("scored"), layers)
                    .map_err(|e| (e, i))
            })
            .collect::<Result<_, _>>()?;
        let traces = tracer.trace_batch(&seqs);
        let mut out = vec![F::one(); items.len() * t];
        for (&i, tr) in scored.iter().zip(traces) {
            let tr = tr.map_err(|e| (e, i))?;
            let w = tracer.token_weights(&tr);
            let start = items[i].completion_start;
            let row = &mut out[i * t..(i + 1) * t];
            for (j, slot) in row.iter_mut().enumerate() {
                if let Some(&x) = w.get(start + j) {
                    *slot = x;
                }
            }
        }
        Ok(out)
    });
    let out = result.map_err(|(e, i)| core_error(py, &e, Some(i)))?;
    Ok(PyArray1::from_vec(py, out).reshape([b, t])?.into_any())
}

/// Whether the batch's attention is a list (or tuple) of per-sequence arrays, and its dtype.
fn batch_dtype<'py>(
    py: Python<'py>,
    attention: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, bool, Dtype)> {
    if attention.is_instance_of::<PyList>() || attention.is_instance_of::<PyTuple>() {
        let items: Vec<Bound<'py, PyAny>> = attention.try_iter()?.collect::<PyResult<_>>()?;
        if items.is_empty() {
            return Err(input_error(py, "BadBatch", "the batch is empty".into()));
        }
        let mut arrays = Vec::with_capacity(items.len());
        let mut dtype = None;
        for (i, it) in items.iter().enumerate() {
            let (a, d) = as_array(py, "attention", it).map_err(|e| with_sequence(py, e, i))?;
            if dtype.is_some_and(|x| x != d) {
                return Err(with_sequence(
                    py,
                    input_error(
                        py,
                        "UnsupportedDtype",
                        format!("sequence {i}: every sequence of a batch must have the same dtype"),
                    ),
                    i,
                ));
            }
            dtype = Some(d);
            arrays.push(a);
        }
        Ok((
            PyList::new(py, arrays)?.into_any(),
            true,
            dtype.expect("non-empty"),
        ))
    } else {
        let (a, d) = as_array(py, "attention", attention)?;
        Ok((a, false, d))
    }
}

/// Scores a batch; see `flowtracer.score_batch`.
#[pyfunction]
#[pyo3(signature = (attention, questions, answers, responses, attention_mask, cu_seqlens, completion_start, completion_length, packed, options))]
#[allow(clippy::too_many_arguments)]
fn score_batch<'py>(
    py: Python<'py>,
    attention: &Bound<'py, PyAny>,
    questions: &Bound<'py, PyAny>,
    answers: &Bound<'py, PyAny>,
    responses: Option<&Bound<'py, PyAny>>,
    attention_mask: Option<&Bound<'py, PyAny>>,
    cu_seqlens: Option<&Bound<'py, PyAny>>,
    completion_start: Option<&Bound<'py, PyAny>>,
    completion_length: Option<usize>,
    packed: bool,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let options = parse_options(py, options, SCORING_ALLOWED)?;
    let (arr, as_list, dtype) = batch_dtype(py, attention)?;
    let args = BatchArgs {
        questions,
        answers,
        responses,
        attention_mask: attention_mask.filter(|m| !m.is_none()),
        cu_seqlens: cu_seqlens.filter(|m| !m.is_none()),
        completion_start,
        completion_length,
        packed,
    };
    match dtype {
        Dtype::F32 => score_typed::<f32>(py, &batch_input(&arr, as_list)?, &args, &options),
        Dtype::F64 => score_typed::<f64>(py, &batch_input(&arr, as_list)?, &args, &options),
    }
}

// ---------------------------------------------------------------------------------------------
// Test helpers (underscore names, used by flowtracer-py/tests).
// ---------------------------------------------------------------------------------------------

/// The address of the values the binding reads for `attention` (the array's own data pointer
/// when it is C-contiguous float32/float64: zero-copy; another address when it was copied).
#[pyfunction]
fn _data_ptr(py: Python<'_>, attention: &Bound<'_, PyAny>) -> PyResult<usize> {
    let (arr, dtype) = as_array(py, "attention", attention)?;
    Ok(match dtype {
        Dtype::F32 => ArrayIn::<f32>::new(&arr)?.data().as_ptr() as usize,
        Dtype::F64 => ArrayIn::<f64>::new(&arr)?.data().as_ptr() as usize,
    })
}

/// The addresses of each sequence's values as `score_batch` reads them.
#[pyfunction]
#[pyo3(signature = (attention, attention_mask=None, cu_seqlens=None, packed=false))]
fn _batch_data_ptrs(
    py: Python<'_>,
    attention: &Bound<'_, PyAny>,
    attention_mask: Option<&Bound<'_, PyAny>>,
    cu_seqlens: Option<&Bound<'_, PyAny>>,
    packed: bool,
) -> PyResult<Vec<usize>> {
    fn ptrs<F: Float>(
        py: Python<'_>,
        arr: &Bound<'_, PyAny>,
        as_list: bool,
        mask: Option<&Bound<'_, PyAny>>,
        cu: Option<&Bound<'_, PyAny>>,
        packed: bool,
    ) -> PyResult<Vec<usize>> {
        let input = batch_input::<F>(arr, as_list)?;
        let sources = batch_sources(py, &input, mask, cu, packed)?;
        Ok(sources
            .iter()
            .map(|(s, _)| s.data.as_ptr() as usize)
            .collect())
    }
    let (arr, as_list, dtype) = batch_dtype(py, attention)?;
    match dtype {
        Dtype::F32 => ptrs::<f32>(py, &arr, as_list, attention_mask, cu_seqlens, packed),
        Dtype::F64 => ptrs::<f64>(py, &arr, as_list, attention_mask, cu_seqlens, packed),
    }
}

/// The core called directly, without the binding's input handling: `flowtracer_core::trace`
/// with the default configuration on a dense f64 `N x N` matrix given as a flat list, and
/// the default `Tracer`'s weights. Returns `(reach, flow, throughput, weights)` as lists.
#[pyfunction]
#[pyo3(signature = (flat, question, answer, response=None))]
#[allow(clippy::type_complexity)]
fn _core_trace_f64(
    py: Python<'_>,
    flat: Vec<f64>,
    question: Vec<usize>,
    answer: Vec<usize>,
    response: Option<Vec<usize>>,
) -> PyResult<(Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>)> {
    let mut spans = Spans::new(question, answer);
    if let Some(r) = response {
        spans = spans.with_response(r);
    }
    let run = || -> Result<_, CoreError> {
        let seq = Sequence::dense(&flat, spans)?;
        let t = flowtracer_core::trace(&seq)?;
        let w = Tracer::default().token_weights(&t);
        Ok((
            t.reach().to_vec(),
            t.flow().to_vec(),
            t.throughput().to_vec(),
            w,
        ))
    };
    run().map_err(|e| core_error(py, &e, None))
}

/// The core's naive oracle (`flowtracer_core::reference::trace`, different code from the
/// fast path) on a dense f64 matrix: `(h, f, tau, sources)`.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn _reference_trace_f64(
    flat: Vec<f64>,
    n: usize,
    question: Vec<usize>,
    answer: Vec<usize>,
) -> (Vec<f64>, Vec<f64>, Vec<f64>, usize) {
    let t =
        flowtracer_core::reference::trace(&flat, n, &question, &answer, AnswerMode::Absorbing, 0.0);
    (t.h, t.f, t.tau, t.sources)
}

/// The core's shaped advantages called directly on f64 lists (default configuration).
#[pyfunction]
fn _core_shape_advantages_f64(
    py: Python<'_>,
    rewards: Vec<f64>,
    num_generations: usize,
    weights: Vec<f64>,
) -> PyResult<Vec<f64>> {
    Tracer::default()
        .shape_advantages(&rewards, num_generations, &weights)
        .map_err(|e| core_error(py, &e, None))
}

/// The core's batch path on a `[B, N, N]` C-contiguous float32 array, without the binding:
/// `Sequence::dense` on each sequence's slice, `Tracer::trace_batch` (default configuration,
/// parallel), then `token_weights` of each: the work `score_batch` does for that input.
/// Returns the seconds of each of `repeats` runs (the baseline of the binding-overhead
/// benchmark, `flowtracer-py/benches/bench_batch.py`).
#[pyfunction]
fn _core_batch_seconds(
    py: Python<'_>,
    attention: &Bound<'_, PyAny>,
    question: (usize, usize),
    answer: (usize, usize),
    repeats: usize,
) -> PyResult<Vec<f64>> {
    let arr = attention
        .cast::<PyArrayDyn<f32>>()
        .map_err(PyErr::from)?
        .readonly();
    let shape = arr.shape().to_vec();
    let data = arr
        .as_slice()
        .map_err(|e| input_error(py, "BadRank", e.to_string()))?;
    if shape.len() != 3 || shape[1] != shape[2] {
        return Err(input_error(
            py,
            "BadRank",
            format!("expected [B, N, N], got {shape:?}"),
        ));
    }
    let per = shape[1] * shape[2];
    py.detach(|| {
        let tracer = Tracer::default();
        let mut seconds = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            let start = std::time::Instant::now();
            let seqs = data
                .chunks_exact(per)
                .map(|a| Sequence::dense(a, Spans::new(question.0..question.1, answer.0..answer.1)))
                .collect::<Result<Vec<_>, _>>()?;
            let weights: Vec<Vec<f32>> = tracer
                .trace_batch(&seqs)
                .into_iter()
                .map(|t| t.map(|t| tracer.token_weights(&t)))
                .collect::<Result<_, _>>()?;
            core::hint::black_box(weights);
            seconds.push(start.elapsed().as_secs_f64());
        }
        Ok(seconds)
    })
    .map_err(|e: CoreError| core_error(py, &e, None))
}

/// Spins for about `millis` milliseconds, with the GIL released (`release_gil`) or held:
/// the control of the GIL test (a Python thread runs meanwhile only when it is released).
#[pyfunction]
fn _busy(py: Python<'_>, millis: u64, release_gil: bool) {
    let spin = || {
        let end = std::time::Instant::now() + core::time::Duration::from_millis(millis);
        while std::time::Instant::now() < end {
            core::hint::spin_loop();
        }
    };
    if release_gil {
        py.detach(spin);
    } else {
        spin();
    }
}

/// The extension module `flowtracer._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("Error", py.get_type::<Error>())?;
    m.add("METRICS", PyTuple::new(py, metrics::ALL)?)?;
    m.add("ERROR_ATTRIBUTES", PyTuple::new(py, ERROR_ATTRIBUTES)?)?;
    m.add("SCORING_OPTIONS", PyTuple::new(py, SCORING_ALLOWED)?)?;
    m.add("SHAPING_OPTIONS", PyTuple::new(py, SHAPE_ALLOWED)?)?;
    m.add("BACKBONE_OPTIONS", PyTuple::new(py, BACKBONE_ALLOWED)?)?;
    m.add_class::<PyTrace>()?;
    m.add_function(wrap_pyfunction!(defaults, m)?)?;
    m.add_function(wrap_pyfunction!(choices, m)?)?;
    m.add_function(wrap_pyfunction!(trace, m)?)?;
    m.add_function(wrap_pyfunction!(shape_advantages, m)?)?;
    m.add_function(wrap_pyfunction!(score_batch, m)?)?;
    m.add_function(wrap_pyfunction!(_data_ptr, m)?)?;
    m.add_function(wrap_pyfunction!(_batch_data_ptrs, m)?)?;
    m.add_function(wrap_pyfunction!(_core_trace_f64, m)?)?;
    m.add_function(wrap_pyfunction!(_reference_trace_f64, m)?)?;
    m.add_function(wrap_pyfunction!(_core_shape_advantages_f64, m)?)?;
    m.add_function(wrap_pyfunction!(_busy, m)?)?;
    m.add_function(wrap_pyfunction!(_core_batch_seconds, m)?)?;
    Ok(())
}
