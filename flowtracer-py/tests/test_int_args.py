"""Every integer the user gives (dimensions, indices, counts, offsets, span bounds, integer
options) that is negative, a float, a bool, None where None is not allowed, or too large for
the platform's unsigned size (>= 2**64) raises flowtracer.Error (a ValueError) naming the
argument, never pyo3's OverflowError or TypeError."""

import numpy as np
import pytest
from conftest import causal
from test_errors import error

import flowtracer
from flowtracer import _native

HUGE = 2**64  # one past the largest usize on a 64-bit platform
BAD_INTS = [-1, 2.0, 2.5, True, HUGE, 2**70, "3"]


def expect(e, kind, field):
    assert (e.kind, e.field) == (kind, field), (e.kind, e.field, str(e))
    assert field in str(e)


def qk(n=4, d=2, hq=2, hkv=1):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((hq, n, d)).astype(np.float32), rng.standard_normal((hkv, n, d)).astype(np.float32))


@pytest.mark.parametrize("bad", BAD_INTS + [None])
@pytest.mark.parametrize("position", range(4))
def test_accumulator_dimensions(bad, position):
    names = ["q_heads", "kv_heads", "n", "d"]
    dims = [2, 1, 4, 2]
    dims[position] = bad
    e = error(flowtracer.QkAccumulator, *dims)
    expect(e, "BadArgument", names[position])
    assert e.given == repr(bad)


def test_accumulator_dimensions_accept_integers():
    acc = flowtracer.QkAccumulator(np.int64(2), np.uint8(1), np.int32(4), 2)
    assert acc.shape == (2, 1, 4, 2)


@pytest.mark.parametrize("bad", BAD_INTS + [None])
def test_add_layer_index(bad):
    acc = flowtracer.QkAccumulator(2, 1, 4, 2)
    e = error(acc.add_layer, bad, *qk())
    expect(e, "BadIndex", "index")
    assert acc.layers == 0
    acc.add_layer(np.int64(3), *qk())
    assert acc.layers == 1


@pytest.mark.parametrize("bad", BAD_INTS)
def test_window(bad):
    q, k = qk()
    e = error(flowtracer.score_qk, [q], [k], (0, 1), (3, 4), window=bad)
    expect(e, "InvalidConfig", "window")
    e = error(flowtracer.QkAccumulator, 2, 1, 4, 2, window=bad)
    expect(e, "InvalidConfig", "window")


@pytest.mark.parametrize("bad", BAD_INTS + [None])
def test_shape_advantages_num_generations(bad):
    e = error(flowtracer.shape_advantages, [1.0, 0.0], bad, np.ones((2, 3)))
    expect(e, "BadArgument", "num_generations")
    w = flowtracer.shape_advantages([1.0, 0.0], np.int64(2), np.ones((2, 3)))
    assert w.shape == (2, 3)


@pytest.mark.parametrize("bad", BAD_INTS + [None])
def test_select_layers_num_layers(bad):
    from flowtracer.trl.capture import select_layers

    for fn in (_native.select_layers, select_layers):
        e = error(fn, "all", bad)
        expect(e, "BadArgument", "num_layers")
        assert fn("all", np.int64(3)) == [0, 1, 2]


@pytest.mark.parametrize("bad", [range(HUGE, HUGE + 2), range(0, HUGE, 2), range(-HUGE, 2), range(0, 2**62, 2), range(-1, 2**62), range(0, 2**40, 3), [0, HUGE], [0, 2.5], [-1]])
def test_layers_option(bad):
    a = np.stack([np.stack([causal(5, 0)])] * 3)  # [3, 1, 5, 5]
    e = error(flowtracer.trace, a, (0, 2), (4, 5), layers=bad)
    assert e.kind in ("InvalidConfig", "InvalidLayerSelection"), (e.kind, str(e))
    assert flowtracer.trace(a, (0, 2), (4, 5), layers=range(0, 3, 2)).flow.shape == (5,)  # a stepped range reads


@pytest.mark.parametrize(
    "bad",
    [(0, HUGE), (-1, 2), (0.5, 2), (None, 2), range(HUGE, HUGE + 1), range(0, HUGE), range(0, HUGE, 2), range(-HUGE, 0, 3), range(0, 2**62, 2), range(0, 2**40, 3), [HUGE], [1.5], [-1], [None]],
)
def test_span_bounds(bad, worked):
    e = error(flowtracer.trace, worked, bad, (4, 5))
    assert (e.kind, e.span) == ("BadSpan", "question"), (e.kind, str(e))
    e = error(flowtracer.score_batch, [worked], [bad], [(4, 5)])
    assert (e.kind, e.span, e.sequence) == ("BadSpan", "question", 0), (e.kind, str(e))


@pytest.mark.parametrize("bad", BAD_INTS + [None])
def test_batch_completion_start(bad, worked):
    e = error(flowtracer.score_batch, [worked, worked], [(0, 2)] * 2, [(4, 5)] * 2, completion_start=[2, bad])
    expect(e, "BadBatch", "completion_start")
    assert e.sequence == 1
    w = flowtracer.score_batch([worked, worked], [(0, 2)] * 2, [(4, 5)] * 2, completion_start=np.array([2, 2]))
    assert w.shape == (2, 3)


@pytest.mark.parametrize("bad", BAD_INTS)
def test_batch_completion_length(bad, worked):
    e = error(flowtracer.score_batch, [worked], [(0, 2)], [(4, 5)], completion_length=bad)
    expect(e, "BadBatch", "completion_length")
    w = flowtracer.score_batch([worked], [(0, 2)], [(4, 5)], completion_length=np.int64(4))
    assert w.shape == (1, 4)


@pytest.mark.parametrize("bad", BAD_INTS + [None])
def test_batch_cu_seqlens(bad, worked):
    flat = np.concatenate([worked.ravel(), worked.ravel()])
    e = error(flowtracer.score_batch, flat, [(0, 2)] * 2, [(4, 5)] * 2, cu_seqlens=[0, 5, bad])
    expect(e, "BadBatch", "cu_seqlens")
    assert e.index == 2
    e = error(flowtracer.score_batch, flat, [(0, 2)] * 2, [(4, 5)] * 2, cu_seqlens=5)
    expect(e, "BadBatch", "cu_seqlens")
    w = flowtracer.score_batch(flat, [(0, 2)] * 2, [(4, 5)] * 2, cu_seqlens=np.array([0, 5, 10]))
    assert w.shape == (2, 3)


@pytest.mark.parametrize("name, bad", [("packed", 1), ("packed", None), ("return_details", "yes"), ("on_error", 1), ("on_error", None)])
def test_batch_flags(name, bad, worked):
    e = error(flowtracer.score_batch, [worked], [(0, 2)], [(4, 5)], **{name: bad})
    expect(e, "BadArgument", name)


@pytest.mark.parametrize("bad", [1, 2.5, b"float32"])
def test_accumulator_dtype(bad):
    e = error(flowtracer.QkAccumulator, 2, 1, 4, 2, dtype=bad)
    expect(e, "BadArgument", "dtype")
    assert flowtracer.QkAccumulator(2, 1, 4, 2, dtype=None).dtype == "float32"  # the default
