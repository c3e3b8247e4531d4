//! Input: arrays (zero-copy where possible) and spans.

use alloc::borrow::Cow;

use flowtracer_core::aggregate::{LayerSelection, Layout};
use flowtracer_core::{Error as CoreError, FlowFloat, LayerShape, Sequence, Spans, Tokens};
use numpy::{
    Element, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::{PyRange, PyRangeMethods, PyTuple};

use crate::error::*;

/// The float types the core runs in.
pub(crate) trait Float: FlowFloat + Element + Copy + Send + Sync {}
impl Float for f32 {}
impl Float for f64 {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dtype {
    F32,
    F64,
}

/// The object as a numpy array (through `numpy.asarray` if it is not one) and its dtype.
pub(crate) fn as_array<'py>(
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
                "{what} has dtype {dtype}; flowtracer reads float32 or float64 here \
                 (numpy arrays or torch tensors; float16 and bfloat16 queries and keys go to \
                 score_qk): convert with .astype(numpy.float32) or .float()"
            ),
            vec![
                ("dtype", pyo3::types::PyString::new(py, &dtype).into_any()),
                ("what", pyo3::types::PyString::new(py, what).into_any()),
            ],
        ))
    }
}

/// A borrowed array and its shape.
pub(crate) struct ArrayIn<'py, F: Element + Copy> {
    array: PyReadonlyArrayDyn<'py, F>,
}

impl<'py, F: Element + Copy> ArrayIn<'py, F> {
    pub(crate) fn new(arr: &Bound<'py, PyAny>) -> PyResult<Self> {
        let a = arr.cast::<PyArrayDyn<F>>().map_err(PyErr::from)?;
        Ok(Self {
            array: a
                .try_readonly()
                .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(format!("{e}")))?,
        })
    }

    pub(crate) fn shape(&self) -> Vec<usize> {
        self.array.shape().to_vec()
    }

    /// The values in C order: the array's own memory when it is C-contiguous (zero-copy),
    /// else a copy.
    pub(crate) fn data(&self) -> Cow<'_, [F]> {
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
pub(crate) enum Form {
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
pub(crate) struct Source<'a, F: Float> {
    /// The values; with `crop`, the whole padded block the sequence is cut from.
    pub(crate) data: Cow<'a, [F]>,
    /// The form of the sequence (after the crop).
    pub(crate) form: Form,
    /// A sequence of a padded batch, cut out of `data` only when its `Sequence` is built
    /// (so per-layer input is never copied whole).
    pub(crate) crop: Option<Crop>,
}

/// Where a sequence lies in a padded block of `mats` matrices of `n x n`: the `len x len`
/// block at `(offset, offset)` of each.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Crop {
    pub(crate) mats: usize,
    pub(crate) n: usize,
    pub(crate) offset: usize,
    pub(crate) len: usize,
}

impl Crop {
    /// The block's values, contiguous.
    fn apply<F: Float>(&self, data: &[F]) -> Vec<F> {
        let Crop {
            mats,
            n,
            offset,
            len,
        } = *self;
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
}

/// The form of one sequence's array of the given shape: `[N(N+1)/2]` packed, `[N, N]`,
/// `[H, N, N]`, `[L, H, N, N]`.
pub(crate) fn form_of(py: Python<'_>, shape: &[usize]) -> PyResult<Form> {
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
    pub(crate) fn sequence(
        &self,
        spans: Spans,
        layers: &LayerSelection,
    ) -> Result<Sequence<'_, F>, CoreError> {
        let cropped = self.crop.map(|c| c.apply(&self.data));
        match (self.form, cropped) {
            (Form::Matrix(layout), None) => Sequence::borrowed(&self.data, layout, spans),
            (Form::Matrix(layout), Some(values)) => Sequence::owned(values, layout, spans),
            (
                Form::Layers {
                    layers: l,
                    heads,
                    n,
                },
                cropped,
            ) => Sequence::from_layers(
                cropped.as_deref().unwrap_or(&self.data),
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
pub(crate) fn tokens(py: Python<'_>, span: &str, obj: &Bound<'_, PyAny>) -> PyResult<Tokens> {
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
        let bounds = (|| Ok::<_, PyErr>((r.start()?, r.stop()?, r.step()?)))()
            .map_err(|_| bad(format!("{} has a bound outside [-2**63, 2**63)", repr(obj))))?;
        if let (start, stop, 1) = bounds {
            return as_range(start, stop);
        }
        let v = range_items(r).map_err(|why| bad(format!("{} {why}", repr(obj))))?;
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

/// The elements of a `range`, allocated fallibly, so that a range of 2**61 elements is an
/// error (`Err` with why), not a capacity-overflow panic or an out-of-memory abort.
pub(crate) fn range_items(r: &Bound<'_, PyRange>) -> Result<Vec<isize>, String> {
    let len = r
        .len()
        .map_err(|_| "has more elements than a list can hold".to_string())?;
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| format!("has {len} elements, more than can be allocated"))?;
    for x in r.try_iter().map_err(|e| e.to_string())? {
        v.push(x.and_then(|x| x.extract()).map_err(|e| e.to_string())?);
    }
    Ok(v)
}

fn repr(obj: &Bound<'_, PyAny>) -> String {
    obj.repr().map(|r| r.to_string()).unwrap_or_default()
}

pub(crate) fn list_tokens(v: Vec<isize>) -> Result<Tokens, isize> {
    v.into_iter()
        .map(|i| usize::try_from(i).map_err(|_| i))
        .collect::<Result<Vec<usize>, isize>>()
        .map(Tokens::List)
}

pub(crate) fn spans(
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
