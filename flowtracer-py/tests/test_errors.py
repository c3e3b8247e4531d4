"""Bad input raises flowtracer.Error (a ValueError) with the right attributes, never a crash."""

import numpy as np
import pytest
from conftest import causal

import flowtracer
from flowtracer import _native


def error(fn, *args, **kwargs):
    with pytest.raises(flowtracer.Error) as info:
        fn(*args, **kwargs)
    e = info.value
    assert isinstance(e, ValueError)
    for name in _native.ERROR_ATTRIBUTES:
        assert hasattr(e, name), name
    return e


def test_nan_and_negative_positions(worked):
    a = worked.copy()
    a[3, 1] = np.nan
    e = error(flowtracer.trace, a, (0, 2), (4, 5))
    assert (e.kind, e.row, e.col, e.layer, e.head) == ("NonFinite", 3, 1, None, None)
    a = worked.copy()
    a[2, 0] = -0.25
    e = error(flowtracer.trace, a.astype(np.float32), (0, 2), (4, 5))
    assert (e.kind, e.row, e.col, e.value) == ("Negative", 2, 0, -0.25)
    layers = np.stack([np.stack([worked, worked])] * 3)  # [3, 2, 5, 5]
    layers[1, 1, 4, 2] = np.inf
    e = error(flowtracer.trace, layers, (0, 2), (4, 5), layers="all")
    assert (e.kind, e.layer, e.head, e.row, e.col) == ("NonFinite", 1, 1, 4, 2)


def test_row_mass_and_source_mass(worked):
    a = worked.copy()
    a[2, 2] = 0.9
    e = error(flowtracer.trace, a, (0, 2), (4, 5))
    assert (e.kind, e.row) == ("RowMassExceeded", 2)
    assert e.tolerance == flowtracer.defaults()["row_tolerance"]
    flowtracer.trace(a, (0, 2), (4, 5), row_tolerance=1.0)  # the option reaches the core
    a = np.eye(5)
    e = error(flowtracer.trace, a, (0, 2), (4, 5))
    assert e.kind == "NoSourceMass"


def test_spans(worked):
    e = error(flowtracer.trace, worked, (0, 2), (4, 9))
    assert (e.kind, e.span, e.range, e.n) == ("SpanOutOfRange", "answer", (4, 9), 5)
    e = error(flowtracer.trace, worked, [0, 1], [4, 3])
    assert (e.kind, e.span, e.index) == ("UnsortedSpan", "answer", 1)
    e = error(flowtracer.trace, worked, (0, 0), (4, 5))
    assert (e.kind, e.span) == ("EmptySpan", "question")
    e = error(flowtracer.trace, worked, (0, 3), (2, 5))
    assert (e.kind, e.span) == ("AnswerNotAfterQuestion", "answer")
    e = error(flowtracer.trace, worked, (0, 2), (4, 5), (2, 4))
    assert (e.kind, e.span) == ("ResponseMissesAnswer", "response")
    for bad in ["0..2", (0, 1, 2), (-1, 2), [0, -3], 3.5, ("a", "b")]:
        e = error(flowtracer.trace, worked, bad, (4, 5))
        assert (e.kind, e.span) == ("BadSpan", "question"), bad


def test_shapes_and_dtypes(worked):
    e = error(flowtracer.trace, np.zeros((3, 4)), (0, 1), (2, 3))
    assert e.kind == "ShapeMismatch"
    e = error(flowtracer.trace, np.zeros(7), (0, 1), (2, 3))
    assert (e.kind, e.actual) == ("NotSquare", 7)
    e = error(flowtracer.trace, np.zeros((1, 1, 1, 2, 2)), (0, 1), (1, 2))
    assert e.kind == "BadRank"
    e = error(flowtracer.trace, np.zeros((0, 0)), (0, 1), (1, 2))
    assert e.kind == "EmptySequence"
    for dtype in [np.int64, np.float16, np.complex128, np.bool_]:
        e = error(flowtracer.trace, worked.astype(dtype), (0, 2), (4, 5))
        assert e.kind == "UnsupportedDtype" and e.dtype == str(np.dtype(dtype)), dtype
        assert "float32 or float64" in str(e)
    e = error(flowtracer.trace, [["a"]], (0, 1), (1, 2))
    assert e.kind == "UnsupportedDtype"


def test_options(worked):
    e = error(flowtracer.trace, worked, (0, 2), (4, 5), gama_flow=2.0)
    assert (e.kind, e.what, e.given) == ("UnknownName", "option", "gama_flow")
    assert e.allowed == list(flowtracer.SCORING_OPTIONS)
    e = error(flowtracer.trace, worked, (0, 2), (4, 5), apply_to="positive")
    assert (e.kind, e.what, e.allowed) == ("UnknownName", "apply_to", flowtracer.choices()["apply_to"])
    e = error(flowtracer.trace, worked, (0, 2), (4, 5), rho=1.5)
    assert (e.kind, e.field) == ("InvalidConfig", "rho")
    e = error(flowtracer.trace, worked, (0, 2), (4, 5), rho="high")
    assert (e.kind, e.field) == ("InvalidConfig", "rho")
    e = error(flowtracer.trace, worked, (0, 2), (4, 5), layers="middle2")
    assert (e.kind, e.what) == ("UnknownName", "layers")
    e = error(flowtracer.shape_advantages, [1.0, 0.0], 2, np.ones((2, 3)), gamma_flow=1.0, answer_mode="relay")
    assert e.kind == "UnknownName" and e.allowed == list(flowtracer.SHAPING_OPTIONS)
    e = error(flowtracer.trace(worked, (0, 2), (4, 5)).backbone, coverage=2.0)
    assert (e.kind, e.field) == ("InvalidConfig", "coverage")
    e = error(flowtracer.trace(worked, (0, 2), (4, 5)).backbone, hubs=3)
    assert e.allowed == list(flowtracer.BACKBONE_OPTIONS)


def test_shape_advantages_errors():
    e = error(flowtracer.shape_advantages, [1.0, 0.0], 1, np.ones((2, 3)))
    assert e.kind == "GroupTooSmall"
    e = error(flowtracer.shape_advantages, [1.0, 0.0, 1.0], 2, np.ones((3, 3)))
    assert e.kind == "GroupSizeMismatch"
    e = error(flowtracer.shape_advantages, [1.0, np.nan], 2, np.ones((2, 3)))
    assert (e.kind, e.index) == ("NonFiniteReward", 1)
    e = error(flowtracer.shape_advantages, [1.0, 0.0], 2, np.ones(6))
    assert e.kind == "BadRank"
    e = error(flowtracer.shape_advantages, [1.0, 0.0], 2, np.ones((3, 2)))
    assert e.kind == "ShapeMismatch"
    e = error(flowtracer.shape_advantages, [1.0, 0.0], 2, np.ones((2, 2), dtype=np.int32))
    assert e.kind == "UnsupportedDtype"


def test_batch_errors(worked):
    bad = worked.copy()
    bad[4, 2] = np.nan
    e = error(flowtracer.score_batch, [worked, worked, bad], [(0, 2)] * 3, [(4, 5)] * 3)
    assert (e.kind, e.sequence, e.row, e.col) == ("NonFinite", 2, 4, 2)
    e = error(flowtracer.score_batch, [worked, worked], [(0, 2)] * 2, [(4, 5), (4, 7)])
    assert (e.kind, e.sequence, e.span) == ("SpanOutOfRange", 1, "answer")
    e = error(flowtracer.score_batch, [worked, worked], [(0, 2)] * 2, [(4, 5), "x"])
    assert (e.kind, e.sequence, e.span) == ("BadSpan", 1, "answer")
    e = error(flowtracer.score_batch, [worked, worked], [(0, 2)] * 3, [(4, 5)] * 2)
    assert (e.kind, e.expected, e.actual) == ("BadBatch", 2, 3)
    e = error(flowtracer.score_batch, [worked, worked.astype(np.float32)], [(0, 2)] * 2, [(4, 5)] * 2)
    assert (e.kind, e.sequence) == ("UnsupportedDtype", 1)
    e = error(flowtracer.score_batch, [], [], [])
    assert e.kind == "BadBatch"
    padded = np.stack([worked, worked])
    e = error(flowtracer.score_batch, padded, [(0, 2)] * 2, [(4, 5)] * 2, attention_mask=[[1, 1, 0, 1, 1], [1] * 5])
    assert (e.kind, e.sequence) == ("BadAttentionMask", 0)
    e = error(flowtracer.score_batch, padded, [(0, 2)] * 2, [(4, 5)] * 2, attention_mask=np.ones((2, 4)))
    assert e.kind == "BadAttentionMask"
    flat = np.concatenate([worked.ravel(), worked.ravel()])
    e = error(flowtracer.score_batch, flat, [(0, 2)] * 2, [(4, 5)] * 2, cu_seqlens=[0, 5, 4])
    assert (e.kind, e.index) == ("BadOffsets", 2)
    e = error(flowtracer.score_batch, flat, [(0, 2)] * 2, [(4, 5)] * 2, cu_seqlens=[0, 5, 11])
    assert e.kind == "ShapeMismatch"
    e = error(flowtracer.score_batch, np.zeros((2, 5)), [(0, 2)] * 2, [(4, 5)] * 2)
    assert e.kind == "BadRank"
    # a causal attention of a padded batch: the padding rows may hold anything
    a = causal(6, 0)
    flowtracer.score_batch(np.stack([a, a]), [(0, 2)] * 2, [(4, 6)] * 2)
