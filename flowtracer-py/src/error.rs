//! The one exception, `flowtracer.Error`, and the core's errors turned into it.

use flowtracer_core::{Error as CoreError, Span};
use pyo3::IntoPyObjectExt;
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyString};

create_exception!(
    flowtracer,
    Error,
    PyValueError,
    "Every error of flowtracer: bad shapes, spans, dtypes, non-finite or negative attention,\n\
     unknown options, ... A subclass of ValueError.\n\n\
     `kind` is the name of the core's error variant (for example 'NonFinite',\n\
     'SpanOutOfRange', 'UnknownName') or of the binding's own check ('UnsupportedDtype',\n\
     'BadRank', 'BadSpan', 'BadAttentionMask', 'BadBatch', 'BadIndex', 'BadArgument',\n\
     'UnsupportedDevice', 'AccumulatorConsumed'). An argument of the wrong type or value (a\n\
     dimension, count, index or offset that is negative, a float, a bool, None or >= 2**64; an\n\
     option that does not parse: kind 'InvalidConfig') names the argument as field and its\n\
     repr as given. The fields of the error are attributes; those an error does not\n\
     have are None: sequence (the index in a batch), span ('question', 'answer' or\n\
     'response'), row, col, layer, head, index, value, field, what, given, allowed,\n\
     expected, actual, n, range, mass, tolerance, dtype, tensor ('query', 'key' or\n\
     'log-sum-exp': the input of score_qk holding a non-finite value; then row is the token\n\
     and col the feature), q_heads, kv_heads, bytes.\n\n\
     >>> import numpy as np, flowtracer\n\
     >>> a = np.array([[1.0, 0.0], [float('nan'), 1.0]])\n\
     >>> try:\n\
     ...     flowtracer.trace(a, (0, 1), (1, 2))\n\
     ... except flowtracer.Error as e:\n\
     ...     print(e.kind, e.row, e.col)\n\
     NonFinite 1 0"
);

/// The attributes every `flowtracer.Error` carries (None where the error has no such field).
pub(crate) const ERROR_ATTRIBUTES: &[&str] = &[
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
    "tensor",
    "q_heads",
    "kv_heads",
    "bytes",
];

/// A `flowtracer.Error` with `kind`, `message` and the given attributes (the others None).
pub(crate) fn error_with<'py>(
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
pub(crate) fn kind_of(e: &CoreError) -> String {
    format!("{e:?}")
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

pub(crate) fn span_name(span: Span) -> String {
    span.to_string()
}

/// The core's error as `flowtracer.Error`, with its fields as attributes; `sequence` is the
/// index of the failing sequence in a batch.
pub(crate) fn core_error<'py>(py: Python<'py>, e: &CoreError, sequence: Option<usize>) -> PyErr {
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
        CoreError::NonFiniteInput {
            tensor,
            position: p,
        } => {
            position(&mut attrs, p);
            put!("tensor", tensor.to_string());
        }
        CoreError::HeadsNotGrouped { q_heads, kv_heads } => {
            put!("q_heads", *q_heads);
            put!("kv_heads", *kv_heads);
        }
        CoreError::OutOfMemory { what, bytes } => {
            put!("what", *what);
            put!("bytes", *bytes);
        }
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

/// `flowtracer.Error` of kind `kind` for a value the user gave that the binding cannot read:
/// `field` is the argument's name, `given` its `repr`; `at` (an attribute and an index, as
/// `("sequence", 1)`) places one item of a per-sequence list. The one mapping of bad argument
/// values, used by the options ([`option_value_error`](crate::options::option_value_error))
/// and every integer argument ([`usize_arg`]).
pub(crate) fn argument_error<'py>(
    py: Python<'py>,
    kind: &str,
    field: &str,
    at: Option<(&'static str, usize)>,
    given: &Bound<'py, PyAny>,
    expected: &str,
) -> PyErr {
    let repr = given
        .repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "?".into());
    let type_name = given
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_default();
    let place = at.map_or(String::new(), |(name, i)| format!(" ({name} {i})"));
    let mut attrs = vec![
        ("field", PyString::new(py, field).into_any()),
        ("given", PyString::new(py, &repr).into_any()),
    ];
    if let Some((name, i)) = at
        && let Ok(o) = i.into_bound_py_any(py)
    {
        attrs.push((name, o));
    }
    error_with(
        py,
        kind,
        format!("invalid {field}{place}: expected {expected}, got {repr} ({type_name})"),
        attrs,
    )
}

/// A non-negative integer argument: a Python `int` or any integer with `__index__` (numpy
/// integers), at most `usize::MAX`. A bool, a float, None, a string, a negative value or a
/// larger one is [`argument_error`] of kind `kind`, never pyo3's `OverflowError`/`TypeError`.
pub(crate) fn usize_arg(
    py: Python<'_>,
    kind: &str,
    field: &str,
    at: Option<(&'static str, usize)>,
    v: &Bound<'_, PyAny>,
) -> PyResult<usize> {
    let expected = "a non-negative integer below 2**64";
    if v.is_instance_of::<PyBool>() {
        return Err(argument_error(py, kind, field, at, v, expected));
    }
    v.extract::<usize>()
        .map_err(|_| argument_error(py, kind, field, at, v, expected))
}

/// A bool argument (`True`/`False`, numpy's bool too), else [`argument_error`] `BadArgument`.
pub(crate) fn bool_arg(py: Python<'_>, field: &str, v: &Bound<'_, PyAny>) -> PyResult<bool> {
    v.extract::<bool>()
        .map_err(|_| argument_error(py, "BadArgument", field, None, v, "True or False"))
}

/// A string argument, else [`argument_error`] `BadArgument`.
pub(crate) fn str_arg(py: Python<'_>, field: &str, v: &Bound<'_, PyAny>) -> PyResult<String> {
    v.extract::<String>()
        .map_err(|_| argument_error(py, "BadArgument", field, None, v, "a string"))
}

/// A check of the binding's own (dtype, rank, span objects, masks, batch lists).
pub(crate) fn input_error(py: Python<'_>, kind: &str, message: String) -> PyErr {
    error_with(py, kind, message, Vec::new())
}
