//! Test helpers (underscore names, used by `flowtracer-py/tests` and `benches/`).

use flowtracer_core::{AnswerMode, Error as CoreError, Sequence, Spans, Tracer};
use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::batch::*;
use crate::error::*;
use crate::input::*;

/// The address of the values the binding reads for `attention` (the array's own data pointer
/// when it is C-contiguous float32/float64: zero-copy; another address when it was copied).
#[pyfunction]
pub(crate) fn _data_ptr(py: Python<'_>, attention: &Bound<'_, PyAny>) -> PyResult<usize> {
    let (arr, dtype) = as_array(py, "attention", attention)?;
    Ok(match dtype {
        Dtype::F32 => ArrayIn::<f32>::new(&arr)?.data().as_ptr() as usize,
        Dtype::F64 => ArrayIn::<f64>::new(&arr)?.data().as_ptr() as usize,
    })
}

/// The address of the values the Q/K stage reads for one array of queries or keys (`bf16`:
/// the array holds bfloat16's 16-bit words): the array's own data pointer when it is
/// C-contiguous (zero-copy), another address when it was copied.
#[pyfunction]
#[pyo3(signature = (x, bf16=false))]
pub(crate) fn _qk_data_ptr(py: Python<'_>, x: &Bound<'_, PyAny>, bf16: bool) -> PyResult<usize> {
    let a = crate::qk_input::qk_array(py, "q", x, bf16)?;
    Ok(match a.values() {
        crate::qk_input::QkValues::F32(v) => v.as_ptr() as usize,
        crate::qk_input::QkValues::F64(v) => v.as_ptr() as usize,
        crate::qk_input::QkValues::F16(v) => v.as_ptr() as usize,
        crate::qk_input::QkValues::Bf16(v) => v.as_ptr() as usize,
    })
}

/// The addresses of each sequence's values as `score_batch` reads them; 0 for a padded
/// sequence, which is cut out of its block (a copy of its own values only) when its
/// `Sequence` is built.
#[pyfunction]
#[pyo3(signature = (attention, attention_mask=None, cu_seqlens=None, packed=false))]
pub(crate) fn _batch_data_ptrs(
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
            .map(|(s, _)| {
                if s.crop.is_some() {
                    0
                } else {
                    s.data.as_ptr() as usize
                }
            })
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
pub(crate) fn _core_trace_f64(
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
pub(crate) fn _reference_trace_f64(
    flat: Vec<f64>,
    n: usize,
    question: Vec<usize>,
    answer: Vec<usize>,
) -> (Vec<f64>, Vec<f64>, Vec<f64>, usize) {
    let t =
        flowtracer_core::reference::trace(&flat, n, &question, &answer, AnswerMode::Absorbing, 0.0);
    (t.h, t.f, t.tau, t.sources)
}

/// The core's Q/K stage called directly, without the binding's input handling:
/// `qk::sequence_from_qk` (f64 input, f64 `Ā`, default `QkConfig` with `scale`/`window` if
/// given) on flat `[L][H_q][N][d]` / `[L][H_kv][N][d]` lists, then `flowtracer_core::trace`.
/// Returns `(Ā, reach, flow)` as lists.
#[pyfunction]
#[pyo3(signature = (q, k, shape, question, answer, scale=None, window=None))]
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub(crate) fn _core_qk_f64(
    py: Python<'_>,
    q: Vec<f64>,
    k: Vec<f64>,
    shape: (usize, usize, usize, usize, usize),
    question: Vec<usize>,
    answer: Vec<usize>,
    scale: Option<f64>,
    window: Option<usize>,
) -> PyResult<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    use flowtracer_core::qk::{QkConfig, QkLayer, QkShape, sequence_from_qk};
    let (layers, hq, hkv, n, d) = shape;
    let s = QkShape::new(hq, hkv, n, d);
    let mut config = QkConfig::default();
    if let Some(x) = scale {
        config = config.with_scale(x);
    }
    if let Some(w) = window {
        config = config.with_window(w);
    }
    let (ql, kl) = (s.q_len(), s.k_len());
    let run = || -> Result<_, CoreError> {
        let ls: Vec<QkLayer<'_, f64>> = (0..layers)
            .map(|l| QkLayer::new(l, &q[l * ql..(l + 1) * ql], &k[l * kl..(l + 1) * kl]))
            .collect();
        let seq: Sequence<'static, f64> =
            sequence_from_qk(&ls, s, &config, None, Spans::new(question, answer))?;
        let t = flowtracer_core::trace(&seq)?;
        Ok((
            seq.attention().to_vec(),
            t.reach().to_vec(),
            t.flow().to_vec(),
        ))
    };
    run().map_err(|e| core_error(py, &e, None))
}

/// The core's naive Q/K oracle (`flowtracer_core::reference::attention_from_qk`: every head's
/// softmax materialised in f64, then the mean), on the same flat lists; `Ā` as a list.
#[pyfunction]
#[pyo3(signature = (q, k, shape, scale, window=None))]
pub(crate) fn _reference_qk_f64(
    q: Vec<f64>,
    k: Vec<f64>,
    shape: (usize, usize, usize, usize, usize),
    scale: f64,
    window: Option<usize>,
) -> Vec<f64> {
    let (layers, hq, hkv, n, d) = shape;
    flowtracer_core::reference::attention_from_qk(
        &q,
        &k,
        None,
        (layers, hq, hkv),
        n,
        d,
        scale,
        window,
        None,
    )
}

/// The core's shaped advantages called directly on f64 lists (default configuration).
#[pyfunction]
pub(crate) fn _core_shape_advantages_f64(
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
pub(crate) fn _core_batch_seconds(
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

/// The number of threads the core's parallel paths use (rayon's global pool).
#[pyfunction]
pub(crate) fn _threads() -> usize {
    rayon::current_num_threads()
}

/// Spins for about `millis` milliseconds, with the GIL released (`release_gil`) or held:
/// the control of the GIL test (a Python thread runs meanwhile only when it is released).
#[pyfunction]
pub(crate) fn _busy(py: Python<'_>, millis: u64, release_gil: bool) {
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
