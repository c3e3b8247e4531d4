//! Scoring from queries and keys ([method §15](docs/method.md#s15)): `score_qk` and the
//! layer-at-a-time `QkAccumulator`, on the core's Q/K stage (`flowtracer_core::qk`).

use alloc::borrow::Cow;

use flowtracer_core::qk::{QkAccumulator, QkConfig, QkLayer, QkShape};
use flowtracer_core::{Error as CoreError, Sequence, Spans, Trace as CoreTrace, Tracer};
use half::{bf16, f16};
use numpy::PyArray1;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::*;
use crate::input::{ArrayIn, Float, spans};
use crate::options::*;
use crate::qk_input::*;
use crate::single::{AnySequence, AnyTrace, PyTrace};

/// One sequence's input to the Q/K stage, read from Python: per layer, the shapes (for the
/// dimension checks) and the values (borrowed where C-contiguous).
struct QkInputs<'a> {
    shape: QkShape,
    layers: usize,
    q: (&'a [QkValues<'a>], bool),
    k: (&'a [QkValues<'a>], bool),
    lse: Option<(&'a [Cow<'a, [f32]>], bool)>,
    /// Per layer: the dimensions of its `Q`, `K` and log-sum-exp.
    dims: Vec<[Vec<usize>; 3]>,
}

impl QkInputs<'_> {
    /// Layer `i` as the core takes it (index `i`: the position in the caller's list).
    fn layer<T: QkElem>(&self, i: usize) -> QkLayer<'_, T> {
        fn per(d: &[usize]) -> usize {
            d.iter().product()
        }
        fn pick<'a, T: QkElem>(
            (values, stacked): (&'a [QkValues<'a>], bool),
            d: &[usize],
            i: usize,
        ) -> &'a [T] {
            let all = T::slice(&values[if stacked { 0 } else { i }]);
            if stacked {
                &all[i * per(d)..(i + 1) * per(d)]
            } else {
                all
            }
        }
        let mut layer = QkLayer::new(
            i,
            pick(self.q, &self.dims[i][0], i),
            pick(self.k, &self.dims[i][1], i),
        );
        if let Some((values, stacked)) = self.lse {
            layer = layer.with_lse(layer_values(values, stacked, i, per(&self.dims[i][2])));
        }
        layer
    }

    /// The core's validation order (method §15): shape and config (the accumulator), each
    /// layer's dimensions, then every layer added, then the spans and the data errors
    /// (`finish`); then the trace.
    fn run<T: QkElem, F: Float>(
        &self,
        config: QkConfig,
        mask: Option<&[bool]>,
        spans: Spans,
        tracer: &mut Tracer,
    ) -> Result<(Sequence<'static, F>, CoreTrace<F>), CoreError> {
        let mut acc = QkAccumulator::<F>::new(self.shape, config, mask)?;
        let layers: Vec<QkLayer<'_, T>> = (0..self.layers).map(|i| self.layer(i)).collect();
        for (i, layer) in layers.iter().enumerate() {
            check_layer_dims(self.shape, &self.dims[i], self.lse.is_some())?;
            acc.check_layer(layer)?;
        }
        for layer in &layers {
            acc.add_layer(layer)?;
        }
        let seq = acc.finish(spans)?;
        let trace = tracer.trace(&seq)?;
        Ok((seq, trace))
    }
}

/// One layer's dimensions against the shape: `Q [H_q, N, d]`, `K [H_kv, N, d]`, the
/// log-sum-exp `[H_q, N]`.
fn check_layer_dims(s: QkShape, dims: &[Vec<usize>; 3], lse: bool) -> Result<(), CoreError> {
    check_dims(0, &[s.q_heads, s.n, s.d], &dims[0])?;
    check_dims(1, &[s.kv_heads, s.n, s.d], &dims[1])?;
    if lse {
        check_dims(2, &[s.q_heads, s.n], &dims[2])?;
    }
    Ok(())
}

/// Scores one sequence from its queries and keys; see `flowtracer.score_qk`.
#[pyfunction]
#[pyo3(signature = (q, k, question, answer, response, lse, key_mask, scale, window, logit_softcap, row_tolerance, bf16, options))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn score_qk<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    question: &Bound<'py, PyAny>,
    answer: &Bound<'py, PyAny>,
    response: Option<&Bound<'py, PyAny>>,
    lse: Option<&Bound<'py, PyAny>>,
    key_mask: Option<&Bound<'py, PyAny>>,
    scale: Option<&Bound<'py, PyAny>>,
    window: Option<&Bound<'py, PyAny>>,
    logit_softcap: Option<&Bound<'py, PyAny>>,
    row_tolerance: Option<&Bound<'py, PyAny>>,
    bf16: bool,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<PyTrace> {
    let config = qk_config(py, scale, window, logit_softcap, row_tolerance)?;
    let options = qk_options(
        py,
        options,
        row_tolerance.is_some_and(|r| !r.is_none()),
        &config,
    )?;
    let spans = spans(py, question, answer, response)?;
    let mask = self::key_mask(py, key_mask)?;
    let qs = stack(
        py,
        "q",
        q,
        3,
        |o| qk_array(py, "q", o, bf16),
        QkArray::shape,
    )?;
    let ks = stack(
        py,
        "k",
        k,
        3,
        |o| qk_array(py, "k", o, bf16),
        QkArray::shape,
    )?;
    let ls = match lse.filter(|l| !l.is_none()) {
        Some(l) => Some(stack(
            py,
            "lse",
            l,
            2,
            |o| lse_array(py, o),
            ArrayIn::shape,
        )?),
        None => None,
    };
    if qs.layers == 0 {
        return Err(core_error(
            py,
            &CoreError::ZeroDimension { what: "layers" },
            None,
        ));
    }
    let count = |what: &'static str, actual: usize| {
        if actual == qs.layers {
            return Ok(());
        }
        let e = CoreError::ShapeMismatch {
            what,
            expected: qs.layers,
            actual,
        };
        Err(core_error(py, &e, None))
    };
    count("keys (layers)", ks.layers)?;
    if let Some(ls) = &ls {
        count("log-sum-exp (layers)", ls.layers)?;
    }
    let dtype = qs.arrays[0].dtype();
    for (i, a) in qs.arrays.iter().enumerate() {
        same_dtype(py, dtype, a.dtype(), &format!("q (layer {i})"))?;
    }
    for (i, a) in ks.arrays.iter().enumerate() {
        same_dtype(py, dtype, a.dtype(), &format!("k (layer {i})"))?;
    }
    let (q0, k0) = (
        qs.layer_shape(0, QkArray::shape),
        ks.layer_shape(0, QkArray::shape),
    );
    let shape = QkShape::new(q0[0], k0[0], q0[1], q0[2]);
    let dims: Vec<[Vec<usize>; 3]> = (0..qs.layers)
        .map(|i| {
            [
                qs.layer_shape(i, QkArray::shape),
                ks.layer_shape(i, QkArray::shape),
                ls.as_ref()
                    .map(|l| l.layer_shape(i, ArrayIn::shape))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let q_values: Vec<QkValues<'_>> = qs.arrays.iter().map(QkArray::values).collect();
    let k_values: Vec<QkValues<'_>> = ks.arrays.iter().map(QkArray::values).collect();
    let lse_values: Option<Vec<Cow<'_, [f32]>>> = ls
        .as_ref()
        .map(|l| l.arrays.iter().map(ArrayIn::data).collect());
    let inputs = QkInputs {
        shape,
        layers: qs.layers,
        q: (&q_values, qs.stacked),
        k: (&k_values, ks.stacked),
        lse: lse_values.as_deref().zip(ls.as_ref().map(|l| l.stacked)),
        dims,
    };
    let tracer_config = options.config;
    let mask = mask.as_deref();
    let (inner, seq) = py
        .detach(|| -> Result<(AnyTrace, AnySequence), CoreError> {
            let mut tracer = Tracer::new(tracer_config)?;
            let (s, t) = match dtype {
                QkDtype::F64 => {
                    let (s, t) =
                        inputs.run::<f64, f64>(config, mask, spans.clone(), &mut tracer)?;
                    return Ok((AnyTrace::F64(t), AnySequence::F64(s)));
                }
                QkDtype::F32 => inputs.run::<f32, f32>(config, mask, spans.clone(), &mut tracer)?,
                QkDtype::F16 => inputs.run::<f16, f32>(config, mask, spans.clone(), &mut tracer)?,
                QkDtype::Bf16 => {
                    inputs.run::<bf16, f32>(config, mask, spans.clone(), &mut tracer)?
                }
            };
            Ok((AnyTrace::F32(t), AnySequence::F32(s)))
        })
        .map_err(|e| core_error(py, &e, None))?;
    Ok(PyTrace::from_qk(inner, tracer_config, spans, seq))
}

/// The scoring options of `score_qk` and `QkAccumulator.finish`: with a `row_tolerance`
/// given, the trace's row tolerance is the same (each row of `Ā` is a mean of rows that sum to
/// 1 within it); else both keep the core's defaults.
fn qk_options(
    py: Python<'_>,
    options: Option<&Bound<'_, PyDict>>,
    row_tolerance_given: bool,
    config: &QkConfig,
) -> PyResult<Options> {
    let mut o = parse_options(py, options, QK_SCORING_ALLOWED)?;
    if row_tolerance_given {
        o.config = o
            .config
            .with_trace(o.config.trace.with_row_tolerance(config.row_tolerance));
    }
    Ok(o)
}

/// The storage types of `Ā` an accumulator may have (its `dtype`).
const ACCUMULATOR_DTYPES: &[&str] = &["float32", "float64"];

enum AnyAccumulator {
    F32(QkAccumulator<f32>),
    F64(QkAccumulator<f64>),
}

/// Streams one layer's queries and keys at a time into the running sum of `Ā`; see
/// `flowtracer.QkAccumulator` (python/flowtracer/qk.py), which converts torch tensors.
#[pyclass(module = "flowtracer", name = "QkAccumulator", subclass)]
pub(crate) struct PyQkAccumulator {
    /// `None` once `finish` or `finish_matrix` consumed it.
    inner: Option<AnyAccumulator>,
    shape: QkShape,
    dtype: &'static str,
    /// Layers added, kept after consumption.
    layers: usize,
    /// The configuration, and whether `row_tolerance` was given (see `qk_options`).
    config: QkConfig,
    row_tolerance_given: bool,
}

impl PyQkAccumulator {
    fn consumed_error(py: Python<'_>) -> PyErr {
        input_error(
            py,
            "AccumulatorConsumed",
            "this QkAccumulator was consumed by finish() or finish_matrix(); make a new one \
             for the next sequence"
                .into(),
        )
    }

    fn take(&mut self, py: Python<'_>) -> PyResult<AnyAccumulator> {
        self.inner.take().ok_or_else(|| Self::consumed_error(py))
    }
}

#[pymethods]
impl PyQkAccumulator {
    #[new]
    #[pyo3(signature = (q_heads, kv_heads, n, d, *, key_mask=None, scale=None, window=None, logit_softcap=None, row_tolerance=None, dtype=None))]
    #[allow(clippy::too_many_arguments)]
    fn new<'py>(
        py: Python<'py>,
        q_heads: &Bound<'py, PyAny>,
        kv_heads: &Bound<'py, PyAny>,
        n: &Bound<'py, PyAny>,
        d: &Bound<'py, PyAny>,
        key_mask: Option<&Bound<'py, PyAny>>,
        scale: Option<&Bound<'py, PyAny>>,
        window: Option<&Bound<'py, PyAny>>,
        logit_softcap: Option<&Bound<'py, PyAny>>,
        row_tolerance: Option<&Bound<'py, PyAny>>,
        dtype: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Self> {
        let dim = |name: &str, v: &Bound<'py, PyAny>| usize_arg(py, "BadArgument", name, None, v);
        let (q_heads, kv_heads) = (dim("q_heads", q_heads)?, dim("kv_heads", kv_heads)?);
        let (n, d) = (dim("n", n)?, dim("d", d)?);
        let dtype = match dtype.filter(|v| !v.is_none()) {
            Some(v) => str_arg(py, "dtype", v)?,
            None => "float32".to_string(), // None: the default
        };
        let Some(&dtype) = ACCUMULATOR_DTYPES.iter().find(|&&x| x == dtype) else {
            let e = CoreError::UnknownName {
                what: "dtype",
                given: dtype.to_string(),
                allowed: ACCUMULATOR_DTYPES,
            };
            return Err(core_error(py, &e, None));
        };
        let config = qk_config(py, scale, window, logit_softcap, row_tolerance)?;
        let mask = self::key_mask(py, key_mask)?;
        let shape = QkShape::new(q_heads, kv_heads, n, d);
        let mask = mask.as_deref();
        let inner = py
            .detach(|| -> Result<AnyAccumulator, CoreError> {
                Ok(if dtype == "float64" {
                    AnyAccumulator::F64(QkAccumulator::new(shape, config, mask)?)
                } else {
                    AnyAccumulator::F32(QkAccumulator::new(shape, config, mask)?)
                })
            })
            .map_err(|e| core_error(py, &e, None))?;
        Ok(Self {
            inner: Some(inner),
            shape,
            dtype,
            layers: 0,
            config,
            row_tolerance_given: row_tolerance.is_some_and(|r| !r.is_none()),
        })
    }

    /// Adds one layer (the binding's; see `flowtracer.QkAccumulator.add_layer`).
    #[pyo3(signature = (index, q, k, lse=None, bf16=false))]
    fn add_layer<'py>(
        &mut self,
        py: Python<'py>,
        index: &Bound<'py, PyAny>,
        q: &Bound<'py, PyAny>,
        k: &Bound<'py, PyAny>,
        lse: Option<&Bound<'py, PyAny>>,
        bf16: bool,
    ) -> PyResult<()> {
        let index = usize_arg(py, "BadIndex", "index", None, index)?;
        let shape = self.shape;
        let acc = self
            .inner
            .as_mut()
            .ok_or_else(|| Self::consumed_error(py))?;
        let rank = |what: &str, got: usize, per: &str| {
            input_error(
                py,
                "BadRank",
                format!("{what} has {got} dimensions; one layer's {what} is {per}"),
            )
        };
        let qa = qk_array(py, "q", q, bf16)?;
        let ka = qk_array(py, "k", k, bf16)?;
        let la = match lse.filter(|l| !l.is_none()) {
            Some(l) => Some(lse_array(py, l)?),
            None => None,
        };
        for (what, s, per) in [
            ("q", qa.shape(), "[H_q, N, d]"),
            ("k", ka.shape(), "[H_kv, N, d]"),
        ] {
            if s.len() != 3 {
                return Err(rank(what, s.len(), per));
            }
        }
        if let Some(l) = &la
            && l.shape().len() != 2
        {
            return Err(rank("lse", l.shape().len(), "[H_q, N]"));
        }
        same_dtype(py, qa.dtype(), ka.dtype(), "k")?;
        let dims = [
            qa.shape(),
            ka.shape(),
            la.as_ref().map(ArrayIn::shape).unwrap_or_default(),
        ];
        let (qv, kv) = (qa.values(), ka.values());
        let lv = la.as_ref().map(ArrayIn::data);
        let dtype = qa.dtype();
        py.detach(|| -> Result<(), CoreError> {
            check_layer_dims(shape, &dims, lv.is_some())?;
            fn add<T: QkElem, F: Float>(
                acc: &mut QkAccumulator<F>,
                index: usize,
                q: &QkValues<'_>,
                k: &QkValues<'_>,
                lse: Option<&[f32]>,
            ) -> Result<(), CoreError> {
                let mut layer = QkLayer::new(index, T::slice(q), T::slice(k));
                if let Some(l) = lse {
                    layer = layer.with_lse(l);
                }
                acc.add_layer(&layer)
            }
            let l = lv.as_deref();
            match acc {
                AnyAccumulator::F32(a) => match dtype {
                    QkDtype::F32 => add::<f32, f32>(a, index, &qv, &kv, l),
                    QkDtype::F64 => add::<f64, f32>(a, index, &qv, &kv, l),
                    QkDtype::F16 => add::<f16, f32>(a, index, &qv, &kv, l),
                    QkDtype::Bf16 => add::<bf16, f32>(a, index, &qv, &kv, l),
                },
                AnyAccumulator::F64(a) => match dtype {
                    QkDtype::F32 => add::<f32, f64>(a, index, &qv, &kv, l),
                    QkDtype::F64 => add::<f64, f64>(a, index, &qv, &kv, l),
                    QkDtype::F16 => add::<f16, f64>(a, index, &qv, &kv, l),
                    QkDtype::Bf16 => add::<bf16, f64>(a, index, &qv, &kv, l),
                },
            }
        })
        .map_err(|e| core_error(py, &e, None))?;
        self.layers += 1;
        Ok(())
    }

    /// Number of layers added so far.
    #[getter]
    fn layers(&self) -> usize {
        self.layers
    }

    /// `(q_heads, kv_heads, n, d)`: the shape every layer must have.
    #[getter]
    fn shape(&self) -> (usize, usize, usize, usize) {
        let s = self.shape;
        (s.q_heads, s.kv_heads, s.n, s.d)
    }

    /// The storage type of `Ā`: 'float32' or 'float64'.
    #[getter]
    fn dtype(&self) -> &'static str {
        self.dtype
    }

    /// Whether `finish` or `finish_matrix` consumed it.
    #[getter]
    fn consumed(&self) -> bool {
        self.inner.is_none()
    }

    /// The trace of the mean `Ā` (the binding's; see `flowtracer.QkAccumulator.finish`).
    #[pyo3(signature = (question, answer, response=None, options=None))]
    fn finish<'py>(
        &mut self,
        py: Python<'py>,
        question: &Bound<'py, PyAny>,
        answer: &Bound<'py, PyAny>,
        response: Option<&Bound<'py, PyAny>>,
        options: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<PyTrace> {
        let options = qk_options(py, options, self.row_tolerance_given, &self.config)?;
        let spans = spans(py, question, answer, response)?;
        let mut tracer = Tracer::new(options.config).map_err(|e| core_error(py, &e, None))?;
        let acc = self.take(py)?;
        let s = spans.clone();
        let (inner, seq) = py
            .detach(|| -> Result<(AnyTrace, AnySequence), CoreError> {
                Ok(match acc {
                    AnyAccumulator::F32(a) => {
                        let seq = a.finish(s)?;
                        (AnyTrace::F32(tracer.trace(&seq)?), AnySequence::F32(seq))
                    }
                    AnyAccumulator::F64(a) => {
                        let seq = a.finish(s)?;
                        (AnyTrace::F64(tracer.trace(&seq)?), AnySequence::F64(seq))
                    }
                })
            })
            .map_err(|e| core_error(py, &e, None))?;
        Ok(PyTrace::from_qk(inner, options.config, spans, seq))
    }

    /// The mean `Ā` as an `(N, N)` array (the binding's; see
    /// `flowtracer.QkAccumulator.finish_matrix`).
    fn finish_matrix<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let n = self.shape.n;
        let acc = self.take(py)?;
        let out = match acc {
            AnyAccumulator::F32(a) => py
                .detach(|| a.finish_matrix())
                .map(|v| PyArray1::from_vec(py, v).into_any()),
            AnyAccumulator::F64(a) => py
                .detach(|| a.finish_matrix())
                .map(|v| PyArray1::from_vec(py, v).into_any()),
        }
        .map_err(|e| core_error(py, &e, None))?;
        out.call_method1("reshape", ((n, n),))
    }

    fn __repr__(&self) -> String {
        let s = self.shape;
        format!(
            "QkAccumulator(q_heads={}, kv_heads={}, n={}, d={}, dtype={}, layers={}{})",
            s.q_heads,
            s.kv_heads,
            s.n,
            s.d,
            self.dtype,
            self.layers,
            if self.inner.is_none() {
                ", consumed"
            } else {
                ""
            }
        )
    }
}
