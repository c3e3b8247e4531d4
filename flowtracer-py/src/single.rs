//! One sequence and one batch of groups: `trace`, `Trace` (`token_weights`, `backbone`), `shape_advantages`.

use flowtracer_core::aggregate::LayerSelection;
use flowtracer_core::backbone::{BackboneConfig, backbone as core_backbone};
use flowtracer_core::{
    Config, Error as CoreError, Sequence, Spans, Tokens, Trace as CoreTrace, Tracer,
};
use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::error::*;
use crate::input::*;
use crate::options::*;

#[derive(Debug, Clone)]
pub(crate) enum AnyTrace {
    F32(CoreTrace<f32>),
    F64(CoreTrace<f64>),
}

/// The result of `flowtracer.trace`: reach, flow and throughput of every token (numpy arrays
/// of the input's dtype), the number of source tokens, the answer's absorbed mass, and the
/// settings to turn it into weights or a backbone. It keeps a reference to the attention
/// array it was traced from (for `backbone()`), so that array stays alive with it; a trace
/// from `score_qk` or `QkAccumulator.finish` keeps the `Ā` it computed (N² values).
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
pub(crate) struct PyTrace {
    inner: AnyTrace,
    config: Config,
    layers: LayerSelection,
    spans: Spans,
    attention: Held,
}

/// What `backbone()` reads again: the caller's attention array, or the `Ā` the Q/K stage
/// formed (owned).
pub(crate) enum Held {
    Array(Py<PyAny>),
    Qk(AnySequence),
}

/// An owned sequence of either float type (`Ā` from queries and keys).
pub(crate) enum AnySequence {
    F32(Sequence<'static, f32>),
    F64(Sequence<'static, f64>),
}

impl PyTrace {
    /// A trace of `Ā` formed by the Q/K stage (`score_qk`, `QkAccumulator.finish`).
    pub(crate) fn from_qk(inner: AnyTrace, config: Config, spans: Spans, seq: AnySequence) -> Self {
        Self {
            inner,
            config,
            layers: LayerSelection::default(),
            spans,
            attention: Held::Qk(seq),
        }
    }
}

pub(crate) fn vec_to_py<'py, F: Float>(py: Python<'py>, v: &[F]) -> Bound<'py, PyAny> {
    PyArray1::from_slice(py, v).into_any()
}

pub(crate) fn tokens_to_py<'py>(py: Python<'py>, t: &Tokens) -> PyResult<Bound<'py, PyAny>> {
    Ok(match t {
        Tokens::Range(r) => (r.start, r.end).into_pyobject(py)?.into_any(),
        Tokens::List(v) => PyList::new(py, v)?.into_any(),
    })
}

#[pymethods]
impl PyTrace {
    /// Number of tokens N.
    #[getter]
    pub(crate) fn n(&self) -> usize {
        match &self.inner {
            AnyTrace::F32(t) => t.n(),
            AnyTrace::F64(t) => t.n(),
        }
    }

    /// 'float32' or 'float64': the dtype of the input and of every array of the trace.
    #[getter]
    pub(crate) fn dtype(&self) -> &'static str {
        match &self.inner {
            AnyTrace::F32(_) => "float32",
            AnyTrace::F64(_) => "float64",
        }
    }

    /// Reach h of every token (method §4), shape (N,): positive exactly for live tokens.
    #[getter]
    pub(crate) fn reach<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        match &self.inner {
            AnyTrace::F32(t) => vec_to_py(py, t.reach()),
            AnyTrace::F64(t) => vec_to_py(py, t.reach()),
        }
    }

    /// Flow f of every token (method §6), shape (N,), each in [0, 1].
    #[getter]
    pub(crate) fn flow<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        match &self.inner {
            AnyTrace::F32(t) => vec_to_py(py, t.flow()),
            AnyTrace::F64(t) => vec_to_py(py, t.flow()),
        }
    }

    /// Throughput tau of every token (method §7), shape (N,): 2 f for live tokens, else 0.
    #[getter]
    pub(crate) fn throughput<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        match &self.inner {
            AnyTrace::F32(t) => vec_to_py(py, t.throughput()),
            AnyTrace::F64(t) => vec_to_py(py, t.throughput()),
        }
    }

    /// |Q+|: the number of live question tokens where flow was injected.
    #[getter]
    pub(crate) fn num_sources(&self) -> usize {
        match &self.inner {
            AnyTrace::F32(t) => t.num_sources(),
            AnyTrace::F64(t) => t.num_sources(),
        }
    }

    /// Flow absorbed by the answer (1 up to rounding, by conservation).
    #[getter]
    pub(crate) fn answer_mass(&self) -> f64 {
        match &self.inner {
            AnyTrace::F32(t) => t.answer_mass(),
            AnyTrace::F64(t) => t.answer_mass(),
        }
    }

    /// The question tokens: (start, stop) for a range, else the list of positions.
    #[getter]
    pub(crate) fn question<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match &self.inner {
            AnyTrace::F32(t) => tokens_to_py(py, t.question()),
            AnyTrace::F64(t) => tokens_to_py(py, t.question()),
        }
    }

    /// The answer tokens: (start, stop) for a range, else the list of positions.
    #[getter]
    pub(crate) fn answer<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match &self.inner {
            AnyTrace::F32(t) => tokens_to_py(py, t.answer()),
            AnyTrace::F64(t) => tokens_to_py(py, t.answer()),
        }
    }

    /// The scored response tokens (default: every token after the question).
    #[getter]
    pub(crate) fn response<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
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
    pub(crate) fn token_weights<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
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
    pub(crate) fn backbone<'py>(
        &self,
        py: Python<'py>,
        options: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let bc = backbone_config(py, options)?;
        let attention = match &self.attention {
            Held::Array(a) => a.bind(py),
            Held::Qk(seq) => {
                let held = match (&self.inner, seq) {
                    (AnyTrace::F32(t), AnySequence::F32(s)) => {
                        py.detach(|| core_backbone(s, t, &bc))
                    }
                    (AnyTrace::F64(t), AnySequence::F64(s)) => {
                        py.detach(|| core_backbone(s, t, &bc))
                    }
                    _ => unreachable!("a Q/K trace holds Ā of its own dtype"),
                };
                return backbone_dict(py, held.map_err(|e| core_error(py, &e, None))?);
            }
        };
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
        backbone_dict(py, result)
    }

    pub(crate) fn __repr__(&self) -> String {
        format!(
            "Trace(n={}, num_sources={}, answer_mass={}, dtype={})",
            self.n(),
            self.num_sources(),
            self.answer_mass(),
            self.dtype()
        )
    }
}

/// The backbone as the dict `Trace.backbone()` returns.
fn backbone_dict(
    py: Python<'_>,
    result: flowtracer_core::backbone::Backbone,
) -> PyResult<Bound<'_, PyDict>> {
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

impl PyTrace {
    pub(crate) fn backbone_of<F: Float>(
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
            crop: None,
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

pub(crate) fn trace_typed<F: Float>(
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
        crop: None,
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
pub(crate) fn trace<'py>(
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
        attention: Held::Array(arr.unbind()),
    })
}

pub(crate) fn shape_typed<'py, F: Float>(
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
pub(crate) fn shape_advantages<'py>(
    py: Python<'py>,
    rewards: &Bound<'py, PyAny>,
    num_generations: &Bound<'py, PyAny>,
    weights: &Bound<'py, PyAny>,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let num_generations = usize_arg(py, "BadArgument", "num_generations", None, num_generations)?;
    let options = parse_options(py, options, SHAPE_ALLOWED)?;
    let (w, dtype) = as_array(py, "weights", weights)?;
    match dtype {
        Dtype::F32 => shape_typed::<f32>(py, rewards, num_generations, &w, &options),
        Dtype::F64 => shape_typed::<f64>(py, rewards, num_generations, &w, &options),
    }
}
