//! Input of the Q/K stage: queries and keys of float32, float64, float16 or bfloat16 (its
//! 16-bit words), log-sum-exps of float32, key masks; read in place where C-contiguous.

use alloc::borrow::Cow;

use flowtracer_core::Error as CoreError;
use flowtracer_core::qk::QkInput;
use half::slice::HalfBitsSliceExt;
use half::{bf16, f16};
use numpy::{PyArrayDyn, PyUntypedArray};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};

use crate::error::*;
use crate::input::ArrayIn;

/// The element type of one array of queries or keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QkDtype {
    F32,
    F64,
    F16,
    Bf16,
}

impl QkDtype {
    pub(crate) fn name(self) -> &'static str {
        match self {
            QkDtype::F32 => "float32",
            QkDtype::F64 => "float64",
            QkDtype::F16 => "float16",
            QkDtype::Bf16 => "bfloat16",
        }
    }
}

/// One borrowed array of queries or keys (bfloat16 as its 16-bit words).
pub(crate) enum QkArray<'py> {
    F32(ArrayIn<'py, f32>),
    F64(ArrayIn<'py, f64>),
    F16(ArrayIn<'py, f16>),
    Bf16(ArrayIn<'py, u16>),
}

/// The values of one array in C order: the array's own memory when it is C-contiguous (for
/// bfloat16 its `u16` words reinterpreted as `half::bf16`, no copy), else a copy.
pub(crate) enum QkValues<'a> {
    F32(Cow<'a, [f32]>),
    F64(Cow<'a, [f64]>),
    F16(Cow<'a, [f16]>),
    Bf16(Cow<'a, [bf16]>),
}

impl QkArray<'_> {
    pub(crate) fn shape(&self) -> Vec<usize> {
        match self {
            QkArray::F32(a) => a.shape(),
            QkArray::F64(a) => a.shape(),
            QkArray::F16(a) => a.shape(),
            QkArray::Bf16(a) => a.shape(),
        }
    }

    pub(crate) fn dtype(&self) -> QkDtype {
        match self {
            QkArray::F32(_) => QkDtype::F32,
            QkArray::F64(_) => QkDtype::F64,
            QkArray::F16(_) => QkDtype::F16,
            QkArray::Bf16(_) => QkDtype::Bf16,
        }
    }

    pub(crate) fn values(&self) -> QkValues<'_> {
        match self {
            QkArray::F32(a) => QkValues::F32(a.data()),
            QkArray::F64(a) => QkValues::F64(a.data()),
            QkArray::F16(a) => QkValues::F16(a.data()),
            QkArray::Bf16(a) => QkValues::Bf16(match a.data() {
                Cow::Borrowed(words) => Cow::Borrowed(words.reinterpret_cast::<bf16>()),
                Cow::Owned(words) => Cow::Owned(words.into_iter().map(bf16::from_bits).collect()),
            }),
        }
    }
}

/// An element type of queries and keys that the binding reads: its values out of
/// [`QkValues`].
pub(crate) trait QkElem: QkInput {
    fn slice<'a>(v: &'a QkValues<'_>) -> &'a [Self];
}

macro_rules! qk_elem {
    ($t:ty, $variant:ident) => {
        impl QkElem for $t {
            fn slice<'a>(v: &'a QkValues<'_>) -> &'a [Self] {
                match v {
                    QkValues::$variant(x) => x,
                    _ => unreachable!("the dtype was checked to be one for every array"),
                }
            }
        }
    };
}
qk_elem!(f32, F32);
qk_elem!(f64, F64);
qk_elem!(f16, F16);
qk_elem!(bf16, Bf16);

fn dtype_str(arr: &Bound<'_, PyAny>) -> String {
    arr.getattr("dtype")
        .and_then(|d| d.str())
        .map(|s| s.to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn dtype_error(py: Python<'_>, what: &str, dtype: &str, message: String) -> PyErr {
    error_with(
        py,
        "UnsupportedDtype",
        message,
        vec![
            ("dtype", PyString::new(py, dtype).into_any()),
            ("what", PyString::new(py, what).into_any()),
        ],
    )
}

/// The object as a numpy array (through `numpy.asarray` if it is not one).
pub(crate) fn ndarray<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    if obj.cast::<PyUntypedArray>().is_ok() {
        Ok(obj.clone())
    } else {
        obj.py().import("numpy")?.getattr("asarray")?.call1((obj,))
    }
}

/// One array of queries or keys. With `bf16` the array holds bfloat16 values as their
/// 16-bit words (`uint16`, as `flowtracer` passes a torch bfloat16 tensor); without it,
/// float32, float64 or float16 (any other dtype, 16-bit integers included, is an error
/// naming it).
pub(crate) fn qk_array<'py>(
    py: Python<'py>,
    what: &str,
    obj: &Bound<'py, PyAny>,
    bf16: bool,
) -> PyResult<QkArray<'py>> {
    let arr = ndarray(obj)?;
    if bf16 {
        if arr.cast::<PyArrayDyn<u16>>().is_ok() {
            return Ok(QkArray::Bf16(ArrayIn::new(&arr)?));
        }
        let dtype = dtype_str(&arr);
        return Err(dtype_error(
            py,
            what,
            &dtype,
            format!("{what} is marked bfloat16 (its 16-bit words, uint16) but has dtype {dtype}"),
        ));
    }
    if arr.cast::<PyArrayDyn<f32>>().is_ok() {
        Ok(QkArray::F32(ArrayIn::new(&arr)?))
    } else if arr.cast::<PyArrayDyn<f64>>().is_ok() {
        Ok(QkArray::F64(ArrayIn::new(&arr)?))
    } else if arr.cast::<PyArrayDyn<f16>>().is_ok() {
        Ok(QkArray::F16(ArrayIn::new(&arr)?))
    } else {
        let dtype = dtype_str(&arr);
        Err(dtype_error(
            py,
            what,
            &dtype,
            format!(
                "{what} has dtype {dtype}; queries and keys are float32, float64, float16 or \
                 bfloat16 (a torch tensor)"
            ),
        ))
    }
}

/// One log-sum-exp array: float32 (natural log, as FlashAttention saves it).
pub(crate) fn lse_array<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
) -> PyResult<ArrayIn<'py, f32>> {
    let arr = ndarray(obj)?;
    if arr.cast::<PyArrayDyn<f32>>().is_ok() {
        return ArrayIn::new(&arr);
    }
    let dtype = dtype_str(&arr);
    Err(dtype_error(
        py,
        "lse",
        &dtype,
        format!(
            "lse has dtype {dtype}; the saved log-sum-exp is float32 (natural log, as \
             FlashAttention returns it)"
        ),
    ))
}

/// The arrays of one input of `score_qk` (`q`, `k` or `lse`): a list or tuple with one array
/// per layer, or one array with a leading layer axis, or one array of a single layer.
pub(crate) struct Stack<A> {
    pub(crate) arrays: Vec<A>,
    /// One array holding every layer along its first axis.
    pub(crate) stacked: bool,
    /// Number of layers.
    pub(crate) layers: usize,
}

impl<A> Stack<A> {
    /// The shape of layer `i` (`shape` gives an array's shape).
    pub(crate) fn layer_shape(&self, i: usize, shape: impl Fn(&A) -> Vec<usize>) -> Vec<usize> {
        if self.stacked {
            shape(&self.arrays[0])[1..].to_vec()
        } else {
            shape(&self.arrays[i])
        }
    }
}

/// Reads a stack of per-layer arrays whose layers have rank `rank` (3 for `Q` and `K`,
/// 2 for the log-sum-exp).
pub(crate) fn stack<'py, A>(
    py: Python<'py>,
    what: &str,
    obj: &Bound<'py, PyAny>,
    rank: usize,
    read: impl Fn(&Bound<'py, PyAny>) -> PyResult<A>,
    shape: impl Fn(&A) -> Vec<usize>,
) -> PyResult<Stack<A>> {
    let bad_rank = |got: usize, layer: Option<usize>| {
        let at = layer.map(|l| format!(" (layer {l})")).unwrap_or_default();
        let per = if rank == 3 { "[H, N, d]" } else { "[H_q, N]" };
        input_error(
            py,
            "BadRank",
            format!(
                "{what}{at} has {got} dimensions; expected a list of {per} arrays, one per \
                 layer, or one array [L, {}",
                &per[1..]
            ),
        )
    };
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let items: Vec<Bound<'py, PyAny>> = obj.try_iter()?.collect::<PyResult<_>>()?;
        let mut arrays = Vec::with_capacity(items.len());
        for (i, it) in items.iter().enumerate() {
            let a = read(it)?;
            let r = shape(&a).len();
            if r != rank {
                return Err(bad_rank(r, Some(i)));
            }
            arrays.push(a);
        }
        let layers = arrays.len();
        return Ok(Stack {
            arrays,
            stacked: false,
            layers,
        });
    }
    let a = read(obj)?;
    let s = shape(&a);
    if s.len() == rank + 1 {
        Ok(Stack {
            layers: s[0],
            arrays: vec![a],
            stacked: true,
        })
    } else if s.len() == rank {
        Ok(Stack {
            arrays: vec![a],
            stacked: false,
            layers: 1,
        })
    } else {
        Err(bad_rank(s.len(), None))
    }
}

/// Layer `i`'s values out of a stack's values (`per`: the values of one layer).
pub(crate) fn layer_values<T>(
    values: &[impl AsRef<[T]>],
    stacked: bool,
    i: usize,
    per: usize,
) -> &[T] {
    if stacked {
        &values[0].as_ref()[i * per..(i + 1) * per]
    } else {
        values[i].as_ref()
    }
}

/// The names of each dimension of a layer's `Q`, `K` and log-sum-exp, for shape errors.
const DIMS: [(&str, [&str; 3]); 3] = [
    (
        "queries",
        [
            "queries (dimension H_q of [H_q, N, d])",
            "queries (dimension N of [H_q, N, d])",
            "queries (dimension d of [H_q, N, d])",
        ],
    ),
    (
        "keys",
        [
            "keys (dimension H_kv of [H_kv, N, d])",
            "keys (dimension N of [H_kv, N, d])",
            "keys (dimension d of [H_kv, N, d])",
        ],
    ),
    (
        "log-sum-exp",
        [
            "log-sum-exp (dimension H_q of [H_q, N])",
            "log-sum-exp (dimension N of [H_q, N])",
            "",
        ],
    ),
];

/// Checks one layer's array against its expected dimensions: a different number of values
/// is the core's `ShapeMismatch` for the buffer (as `QkAccumulator::check_layer` reports
/// it); the same number in other dimensions (a transposed array) names the dimension.
/// `tensor`: 0 queries, 1 keys, 2 log-sum-exp.
pub(crate) fn check_dims(
    tensor: usize,
    expected: &[usize],
    actual: &[usize],
) -> Result<(), CoreError> {
    let (what, dims) = DIMS[tensor];
    let (e, a) = (
        expected.iter().product::<usize>(),
        actual.iter().product::<usize>(),
    );
    if e != a {
        return Err(CoreError::ShapeMismatch {
            what,
            expected: e,
            actual: a,
        });
    }
    match expected.iter().zip(actual).position(|(x, y)| x != y) {
        Some(j) => Err(CoreError::ShapeMismatch {
            what: dims[j],
            expected: expected[j],
            actual: actual[j],
        }),
        None => Ok(()),
    }
}

/// A key-validity mask: a 1-D array of length N, True (or nonzero) for a token, False (0)
/// for a padding key.
pub(crate) fn key_mask(
    py: Python<'_>,
    obj: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<Vec<bool>>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    let np = py.import("numpy")?;
    let m = np.getattr("asarray")?.call1((obj,))?;
    let m = m.call_method1("__ne__", (0,))?;
    let m = np.getattr("ascontiguousarray")?.call1((m, "uint8"))?;
    let arr = ArrayIn::<u8>::new(&m)?;
    if arr.shape().len() != 1 {
        return Err(input_error(
            py,
            "BadRank",
            format!(
                "key_mask has shape {:?}; expected one dimension of N tokens",
                arr.shape()
            ),
        ));
    }
    Ok(Some(arr.data().iter().map(|&x| x != 0).collect()))
}

/// Whether two arrays share the first's dtype, as an error naming both.
pub(crate) fn same_dtype(py: Python<'_>, first: QkDtype, other: QkDtype, at: &str) -> PyResult<()> {
    if first == other {
        return Ok(());
    }
    Err(dtype_error(
        py,
        at,
        other.name(),
        format!(
            "{at} has dtype {}, the queries {}: every query and key array of one call has one \
             dtype",
            other.name(),
            first.name()
        ),
    ))
}
