//! Batches: `score_batch` over a list, a padded array with a mask, or a buffer cut by `cu_seqlens`.

use alloc::borrow::Cow;

use flowtracer_core::aggregate::Layout;
use flowtracer_core::flow::conservation_residual;
use flowtracer_core::sequence::split_ragged;
use flowtracer_core::{Error as CoreError, Sequence, Spans, Tracer};
use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use rayon::prelude::*;

use crate::error::*;
use crate::input::*;
use crate::options::*;

/// Where one sequence of a padded batch lies: its first position and its length.
pub(crate) fn mask_extents(
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
                     (padding on the left, the right or both)"
                ),
                vec![("sequence", i.into_pyobject(py)?.into_any())],
            );
            return Err(err);
        }
        out.push((first, len));
    }
    Ok(out)
}

/// One input sequence of a batch: its values, its form, its spans and where its completion
/// starts (`None` spans: no answer, weight 1).
pub(crate) struct BatchItem<'a, F: Float> {
    source: Source<'a, F>,
    n: usize,
    spans: Option<Spans>,
    completion_start: usize,
}

/// The per-sequence sources of a batch (borrowed from the caller's arrays where possible).
pub(crate) enum BatchInput<'py, F: Float> {
    List(Vec<ArrayIn<'py, F>>),
    One(ArrayIn<'py, F>),
}

/// The batch's sources, with each sequence's length.
pub(crate) fn batch_sources<'a, 'py, F: Float>(
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
                            crop: None,
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
                let offsets = offsets(py, cu)?;
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
                                crop: None,
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
            // Each sequence keeps its whole padded block; a padded one is cut out only when
            // its `Sequence` is built (in parallel, one block at a time per thread).
            let items: Vec<(Source<'a, F>, usize)> = extents
                .iter()
                .enumerate()
                .map(|(i, &(offset, len))| {
                    let form = match form {
                        Form::Layers { layers, heads, .. } => Form::Layers {
                            layers,
                            heads,
                            n: len,
                        },
                        f => f,
                    };
                    let crop = (len != n).then_some(Crop {
                        mats,
                        n,
                        offset,
                        len,
                    });
                    let source = Source {
                        data: Cow::Borrowed(&data[i * per..(i + 1) * per]),
                        form,
                        crop,
                    };
                    (source, len)
                })
                .collect();
            Ok(items)
        }
    }
}

pub(crate) fn packed_n(len: usize) -> usize {
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

/// `cu_seqlens`: a sequence of non-negative integer token offsets (a list, a numpy array).
fn offsets(py: Python<'_>, cu: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    let expected = "a sequence of non-negative integer token offsets";
    if cu.is_instance_of::<pyo3::types::PyString>() {
        return Err(argument_error(
            py,
            "BadBatch",
            "cu_seqlens",
            None,
            cu,
            expected,
        ));
    }
    let items = cu
        .try_iter()
        .map_err(|_| argument_error(py, "BadBatch", "cu_seqlens", None, cu, expected))?;
    items
        .enumerate()
        .map(|(i, x)| usize_arg(py, "BadBatch", "cu_seqlens", Some(("index", i)), &x?))
        .collect()
}

pub(crate) fn with_sequence(py: Python<'_>, err: PyErr, i: usize) -> PyErr {
    let v = err.value(py);
    let _ = v.setattr("sequence", i);
    err
}

pub(crate) fn opt_list<'py>(
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
pub(crate) struct BatchArgs<'a, 'py> {
    questions: &'a Bound<'py, PyAny>,
    answers: &'a Bound<'py, PyAny>,
    responses: Option<&'a Bound<'py, PyAny>>,
    attention_mask: Option<&'a Bound<'py, PyAny>>,
    cu_seqlens: Option<&'a Bound<'py, PyAny>>,
    completion_start: Option<&'a Bound<'py, PyAny>>,
    completion_length: Option<usize>,
    packed: bool,
    /// `on_error="ones"`: a sequence the core rejects gets weight 1 instead of an exception.
    failed_rows_ones: bool,
    /// Return `(weights, details)`.
    return_details: bool,
}

pub(crate) fn batch_input<'py, F: Float>(
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

pub(crate) fn score_typed<'py, F: Float>(
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
            Some(s) => usize_arg(
                py,
                "BadBatch",
                "completion_start",
                Some(("sequence", i)),
                &s[i],
            )?,
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
    let want_residuals = args.return_details;
    let (outcomes, out) = py.detach(|| {
        // Sequences are built (aggregated, cropped, spans checked) in parallel too.
        let scored: Vec<usize> = (0..items.len())
            .filter(|&i| items[i].spans.is_some())
            .collect();
        let built: Vec<Result<Sequence<'_, F>, CoreError>> = scored
            .par_iter()
            .map(|&i| {
                let it = &items[i];
                it.source
                    .sequence(it.spans.clone().expect("scored"), layers)
            })
            .collect();
        let mut outcomes: Vec<Outcome> = (0..items.len()).map(|_| Outcome::NoAnswer).collect();
        let (mut index, mut seqs) = (Vec::new(), Vec::new());
        for (&i, r) in scored.iter().zip(built) {
            match r {
                Ok(seq) => {
                    index.push(i);
                    seqs.push(seq);
                }
                Err(e) => outcomes[i] = Outcome::Failed(e),
            }
        }
        let traces = tracer.trace_batch(&seqs);
        let mut out = vec![F::one(); items.len() * t];
        // The conservation residual (one more O(N²) read per sequence, in parallel) only
        // when the details are asked for.
        let residuals: Vec<f64> = if want_residuals {
            traces
                .par_iter()
                .zip(&seqs)
                .map(|(tr, seq)| {
                    tr.as_ref().map_or(f64::NAN, |tr| {
                        conservation_residual(seq, tr.edge_threshold(), tr.reach())
                    })
                })
                .collect()
        } else {
            vec![f64::NAN; seqs.len()]
        };
        for ((&i, tr), residual) in index.iter().zip(traces).zip(residuals) {
            let tr = match tr {
                Ok(tr) => tr,
                Err(e) => {
                    outcomes[i] = Outcome::Failed(e);
                    continue;
                }
            };
            let w = tracer.token_weights(&tr);
            let start = items[i].completion_start;
            let row = &mut out[i * t..(i + 1) * t];
            for (j, slot) in row.iter_mut().enumerate() {
                if let Some(&x) = w.get(start + j) {
                    *slot = x;
                }
            }
            outcomes[i] = Outcome::Scored {
                answer_mass: tr.answer_mass(),
                num_sources: tr.num_sources(),
                residual,
            };
        }
        (outcomes, out)
    });
    if !args.failed_rows_ones
        && let Some((i, e)) = outcomes.iter().enumerate().find_map(|(i, o)| match o {
            Outcome::Failed(e) => Some((i, e)),
            _ => None,
        })
    {
        return Err(core_error(py, e, Some(i)));
    }
    let weights = PyArray1::from_vec(py, out).reshape([b, t])?.into_any();
    if !args.return_details {
        return Ok(weights);
    }
    let details = PyDict::new(py);
    let mut status = Vec::with_capacity(b);
    let errors = PyList::empty(py);
    let mut mass = Vec::with_capacity(b);
    let mut sources = Vec::with_capacity(b);
    let mut residuals = Vec::with_capacity(b);
    for (i, o) in outcomes.iter().enumerate() {
        match o {
            Outcome::NoAnswer => {
                status.push("no_answer".to_string());
                errors.append(py.None())?;
                mass.push(f64::NAN);
                sources.push(0i64);
                residuals.push(f64::NAN);
            }
            Outcome::Scored {
                answer_mass,
                num_sources,
                residual,
            } => {
                status.push("scored".to_string());
                errors.append(py.None())?;
                mass.push(*answer_mass);
                sources.push(*num_sources as i64);
                residuals.push(*residual);
            }
            Outcome::Failed(e) => {
                status.push(kind_of(e));
                errors.append(core_error(py, e, Some(i)).value(py))?;
                mass.push(f64::NAN);
                sources.push(0);
                residuals.push(f64::NAN);
            }
        }
    }
    details.set_item("status", status)?;
    details.set_item("errors", errors)?;
    details.set_item("answer_mass", PyArray1::from_vec(py, mass))?;
    details.set_item("num_sources", PyArray1::from_vec(py, sources))?;
    details.set_item("conservation_residual", PyArray1::from_vec(py, residuals))?;
    Ok((weights, details).into_pyobject(py)?.into_any())
}

/// What became of one sequence of a batch.
pub(crate) enum Outcome {
    /// No answer span: weight 1, not traced.
    NoAnswer,
    /// Traced and weighted.
    Scored {
        answer_mass: f64,
        num_sources: usize,
        /// The core's `conservation_residual` (NaN when the details were not asked for).
        residual: f64,
    },
    /// The core rejected it (its row keeps weight 1 with `on_error="ones"`).
    Failed(CoreError),
}

/// Whether the batch's attention is a list (or tuple) of per-sequence arrays, and its dtype.
pub(crate) fn batch_dtype<'py>(
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

/// The values of `score_batch`'s `on_error` (the binding's own, not an option of the core).
const ON_ERROR: &[&str] = &["raise", "ones"];

/// Scores a batch; see `flowtracer.score_batch`.
#[pyfunction]
#[pyo3(signature = (attention, questions, answers, responses, attention_mask, cu_seqlens, completion_start, completion_length, packed, on_error, return_details, options))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn score_batch<'py>(
    py: Python<'py>,
    attention: &Bound<'py, PyAny>,
    questions: &Bound<'py, PyAny>,
    answers: &Bound<'py, PyAny>,
    responses: Option<&Bound<'py, PyAny>>,
    attention_mask: Option<&Bound<'py, PyAny>>,
    cu_seqlens: Option<&Bound<'py, PyAny>>,
    completion_start: Option<&Bound<'py, PyAny>>,
    completion_length: Option<&Bound<'py, PyAny>>,
    packed: &Bound<'py, PyAny>,
    on_error: &Bound<'py, PyAny>,
    return_details: &Bound<'py, PyAny>,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let options = parse_options(py, options, SCORING_ALLOWED)?;
    let completion_length = match completion_length.filter(|v| !v.is_none()) {
        Some(v) => Some(usize_arg(py, "BadBatch", "completion_length", None, v)?),
        None => None,
    };
    let packed = bool_arg(py, "packed", packed)?;
    let return_details = bool_arg(py, "return_details", return_details)?;
    let on_error = str_arg(py, "on_error", on_error)?;
    let failed_rows_ones = match on_error.as_str() {
        "raise" => false,
        "ones" => true,
        other => {
            return Err(core_error(
                py,
                &CoreError::UnknownName {
                    what: "on_error",
                    given: other.to_string(),
                    allowed: ON_ERROR,
                },
                None,
            ));
        }
    };
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
        failed_rows_ones,
        return_details,
    };
    match dtype {
        Dtype::F32 => score_typed::<f32>(py, &batch_input(&arr, as_list)?, &args, &options),
        Dtype::F64 => score_typed::<f64>(py, &batch_input(&arr, as_list)?, &args, &options),
    }
}
