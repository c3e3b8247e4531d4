"""Bad input to score_qk and QkAccumulator: a flowtracer.Error with the core's kind and the
position as attributes, in method §15's order, never a crash; the accumulator consumed once.

Tolerance, stated once: MASS_TOL, the absolute error allowed on the row mass an LseMismatch
reports (the mass of rows summed in f32 against a float32 log-sum-exp shifted by a known
constant, so exp(-shift) up to f32 rounding).
"""

import numpy as np
import pytest
from test_errors import error

import flowtracer

MASS_TOL = 1e-5


def case(layers=2, hq=4, hkv=2, n=8, d=4, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    qs = [rng.standard_normal((hq, n, d)).astype(dtype) for _ in range(layers)]
    ks = [rng.standard_normal((hkv, n, d)).astype(dtype) for _ in range(layers)]
    return qs, ks


def score(qs, ks, q=(0, 2), a=(7, 8), **kw):
    return flowtracer.score_qk(qs, ks, q, a, **kw)


def lse_of(qs, ks):
    """The true float32 log-sum-exp per (layer, head, row) (causal, scale 1/sqrt(d))."""
    out = []
    for q, k in zip(qs, ks):
        hq, n, d = q.shape
        s = np.einsum("hnd,hmd->hnm", q.astype(np.float64), np.repeat(k, hq // k.shape[0], axis=0).astype(np.float64)) / np.sqrt(d)
        s = np.where(np.tril(np.ones((n, n), dtype=bool)), s, -np.inf)
        m = s.max(axis=2, keepdims=True)
        out.append((m[..., 0] + np.log(np.exp(s - m).sum(axis=2))).astype(np.float32))
    return out


def test_non_finite_positions():
    qs, ks = case()
    qs[1][2, 5, 3] = np.nan
    e = error(score, qs, ks)
    assert (e.kind, e.tensor, e.layer, e.head, e.row, e.col) == ("NonFiniteInput", "query", 1, 2, 5, 3)
    ks[1][0, 0, 0] = np.inf  # K is scanned after Q within a layer
    assert error(score, qs, ks).tensor == "query"
    ks[0][1, 6, 2] = -np.inf  # but a lower layer comes first
    e = error(score, qs, ks)
    assert (e.tensor, e.layer, e.head, e.row, e.col) == ("key", 0, 1, 6, 2)
    qs, ks = case()
    lse = lse_of(qs, ks)
    lse[1][3, 4] = np.nan
    e = error(score, qs, ks, lse=lse)
    assert (e.kind, e.tensor, e.layer, e.head, e.row, e.col) == ("NonFiniteInput", "log-sum-exp", 1, 3, 4, 0)
    # float16 and float64 report the same position
    for dtype in [np.float16, np.float64]:
        qs, ks = case(dtype=dtype)
        qs[0][3, 7, 1] = np.nan
        e = error(score, qs, ks)
        assert (e.tensor, e.layer, e.head, e.row, e.col) == ("query", 0, 3, 7, 1)


def test_lse_that_does_not_belong():
    qs, ks = case()
    lse = lse_of(qs, ks)
    score(qs, ks, lse=lse)  # the true one passes
    e = error(score, qs, ks, lse=[x + 1.0 for x in lse])  # too large: rows sum to 1/e
    assert (e.kind, e.layer, e.head, e.row) == ("LseMismatch", 0, 0, 0)
    assert abs(e.mass - np.exp(-1.0)) < MASS_TOL
    assert e.tolerance == flowtracer.qk_defaults()["row_tolerance"]
    bad = [x.copy() for x in lse]
    bad[1][1, 4] -= 0.01  # too small, one row: mass e^0.01 > 1 + 1e-3
    e = error(score, qs, ks, lse=bad)
    assert (e.kind, e.layer, e.head, e.row) == ("LseMismatch", 1, 1, 4)
    assert abs(e.mass - np.exp(0.01)) < MASS_TOL
    score(qs, ks, lse=bad, row_tolerance=0.02)  # the tolerance reaches the core
    bad[0][0, 0] = np.nan  # a non-finite value anywhere wins over any bad row
    assert error(score, qs, ks, lse=bad).kind == "NonFiniteInput"


def test_logits_overflow():
    qs, ks = case(dtype=np.float32)
    qs[1][2, 3] = 1e30
    ks[1][1, 0] = 1e30
    e = error(score, qs, ks)
    assert (e.kind, e.layer, e.head, e.row) == ("LogitsOverflow", 1, 2, 3)


def test_shapes():
    qs, ks = case(hq=3, hkv=2)
    e = error(score, qs, ks)
    assert (e.kind, e.q_heads, e.kv_heads) == ("HeadsNotGrouped", 3, 2)
    e = error(score, qs, ks, window=0)  # shapes before the configuration
    assert e.kind == "HeadsNotGrouped"
    qs, ks = case()
    e = error(score, qs, [k[:, :5] for k in ks], window=0)  # the configuration before a layer's shape
    assert (e.kind, e.field) == ("InvalidConfig", "window")
    e = error(score, qs, [ks[0], ks[1][:, :5]])
    assert (e.kind, e.what, e.expected, e.actual) == ("ShapeMismatch", "keys", 2 * 8 * 4, 2 * 5 * 4)
    e = error(score, [qs[0], qs[1].reshape(4, 4, 8)], ks)  # same size, other dimensions
    assert (e.kind, e.expected, e.actual) == ("ShapeMismatch", 8, 4)
    assert e.what == "queries (dimension N of [H_q, N, d])"
    e = error(score, qs, ks[:1])
    assert (e.kind, e.what, e.expected, e.actual) == ("ShapeMismatch", "keys (layers)", 2, 1)
    e = error(score, qs, ks, lse=[np.zeros((4, 7), np.float32)] * 2)
    assert (e.kind, e.what) == ("ShapeMismatch", "log-sum-exp")
    e = error(score, qs, ks, lse=[np.zeros((4, 8), np.float32)])
    assert (e.kind, e.what) == ("ShapeMismatch", "log-sum-exp (layers)")
    e = error(score, qs, ks, key_mask=np.ones(7, dtype=bool))
    assert (e.kind, e.what, e.expected, e.actual) == ("ShapeMismatch", "key mask", 8, 7)
    e = error(score, [q[:, :, :0] for q in qs], [k[:, :, :0] for k in ks])
    assert (e.kind, e.what) == ("ZeroDimension", "head dimensions (d)")
    e = error(score, [], [])
    assert (e.kind, e.what) == ("ZeroDimension", "layers")
    e = error(score, [q[:, :0] for q in qs], [k[:, :0] for k in ks])
    assert e.kind == "EmptySequence"
    e = error(score, [q[0] for q in qs], ks)
    assert e.kind == "BadRank"
    e = error(score, np.zeros((1, 1, 4, 8, 4)), ks)
    assert e.kind == "BadRank"


def test_dtypes():
    qs, ks = case()
    for dtype in [np.int16, np.uint16, np.int32, np.complex64, np.bool_]:
        e = error(score, [q.astype(dtype) for q in qs], [k.astype(dtype) for k in ks])
        assert (e.kind, e.dtype, e.what) == ("UnsupportedDtype", str(np.dtype(dtype)), "q"), dtype
        assert "bfloat16" in str(e)
    e = error(score, qs, [k.astype(np.float64) for k in ks])
    assert (e.kind, e.dtype, e.what) == ("UnsupportedDtype", "float64", "k (layer 0)")
    e = error(score, [qs[0], qs[1].astype(np.float16)], ks)
    assert (e.kind, e.what) == ("UnsupportedDtype", "q (layer 1)")
    e = error(score, qs, ks, lse=[x.astype(np.float64) for x in lse_of(qs, ks)])
    assert (e.kind, e.what, e.dtype) == ("UnsupportedDtype", "lse", "float64")
    # the bfloat16 marker takes 16-bit words only
    e = error(flowtracer._native.score_qk, qs, ks, (0, 2), (7, 8), None, None, None, None, None, None, None, True, None)
    assert (e.kind, e.dtype) == ("UnsupportedDtype", "float32")


def test_spans_and_options():
    qs, ks = case()
    e = error(score, qs, ks, a=(7, 10))
    assert (e.kind, e.span, e.range, e.n) == ("SpanOutOfRange", "answer", (7, 10), 8)
    qs[0][0, 0, 0] = np.nan  # spans are checked before the data
    assert error(score, qs, ks, a=(7, 10)).kind == "SpanOutOfRange"
    qs, ks = case()
    e = error(score, qs, ks, q="x")
    assert (e.kind, e.span) == ("BadSpan", "question")
    for name, value in [("scale", -1.0), ("scale", np.inf), ("window", 0), ("logit_softcap", 0.0), ("row_tolerance", np.nan)]:
        e = error(score, qs, ks, **{name: value})
        assert (e.kind, e.field) == ("InvalidConfig", name), name
    for name, value in [("window", -1), ("window", 2.5), ("scale", "big")]:
        e = error(score, qs, ks, **{name: value})
        assert (e.kind, e.field) == ("InvalidConfig", name), name
    e = error(score, qs, ks, layers="all")
    assert (e.kind, e.given) == ("UnknownName", "layers")
    assert e.allowed == list(flowtracer.QK_SCORING_OPTIONS)
    e = error(score, qs, ks, rho=2.0)
    assert (e.kind, e.field) == ("InvalidConfig", "rho")


def test_accumulator_order_across_calls():
    qs, ks = case(layers=3)
    acc = flowtracer.QkAccumulator(4, 2, 8, 4)
    e = error(acc.add_layer, 0, qs[0], ks[0][:, :4])  # shape errors at once; nothing added
    assert (e.kind, e.what) == ("ShapeMismatch", "keys")
    e = error(acc.add_layer, 0, qs[0].transpose(1, 0, 2), ks[0])
    assert (e.kind, e.what) == ("ShapeMismatch", "queries (dimension H_q of [H_q, N, d])")
    e = error(acc.add_layer, 0, qs[0][0], ks[0])
    assert e.kind == "BadRank"
    e = error(acc.add_layer, -1, qs[0], ks[0])
    assert e.kind == "BadIndex"
    assert acc.layers == 0
    bad_k = ks[2].copy()
    bad_k[1, 2, 3] = np.nan
    acc.add_layer(2, qs[2], bad_k)  # data errors wait for finish ...
    bad_q = qs[1].copy()
    bad_q[0, 0, 0] = np.inf
    acc.add_layer(1, bad_q, ks[1])  # ... and the lowest layer's wins, whatever the order
    acc.add_layer(0, qs[0], ks[0])
    assert acc.layers == 3 and not acc.consumed
    e = error(acc.finish, (0, 2), (7, 8))
    assert (e.kind, e.tensor, e.layer) == ("NonFiniteInput", "query", 1)
    assert acc.consumed
    for call in [lambda: acc.finish((0, 2), (7, 8)), acc.finish_matrix, lambda: acc.add_layer(3, qs[0], ks[0])]:
        assert error(call).kind == "AccumulatorConsumed"
    assert acc.layers == 3


def test_accumulator_errors():
    e = error(flowtracer.QkAccumulator, 3, 2, 8, 4)
    assert (e.kind, e.q_heads, e.kv_heads) == ("HeadsNotGrouped", 3, 2)
    e = error(flowtracer.QkAccumulator, 2, 2, 8, 4, dtype="float16")
    assert (e.kind, e.what, e.allowed) == ("UnknownName", "dtype", ["float32", "float64"])
    e = error(flowtracer.QkAccumulator, 2, 2, 8, 4, window=0)
    assert (e.kind, e.field) == ("InvalidConfig", "window")
    # N² values cannot be allocated: the core reports N² * size_of(F) bytes, saturating at
    # 2**64 - 1 where N² itself overflows (N = 2**40)
    for n, dtype, size in [(1 << 30, "float32", 4), (1 << 30, "float64", 8), (1 << 40, "float32", 4)]:
        e = error(flowtracer.QkAccumulator, 1, 1, n, 1, dtype=dtype)
        assert (e.kind, e.what) == ("OutOfMemory", "the aggregated attention (N x N)")
        assert e.bytes == min(n * n * size, 2**64 - 1), (n, dtype, e.bytes)
    acc = flowtracer.QkAccumulator(2, 2, 8, 4)
    e = error(acc.finish, (0, 2), (7, 8))
    assert (e.kind, e.what) == ("ZeroDimension", "layers")
    assert error(acc.finish_matrix).kind == "AccumulatorConsumed"
    acc = flowtracer.QkAccumulator(2, 2, 8, 4)
    e = error(acc.finish, (0, 2), "x")  # a malformed argument does not consume it
    assert e.kind == "BadSpan" and not acc.consumed
    acc.add_layer(0, *[x[0][:2] for x in case(hq=2)])
    e = error(acc.finish, (0, 2), (7, 9))  # the spans, then the data
    assert e.kind == "SpanOutOfRange" and acc.consumed


@pytest.mark.parametrize("seed", range(10))
def test_random_input_never_crashes(seed):
    rng = np.random.default_rng(seed)
    dtypes = [np.float32, np.float64, np.float16, np.int16, np.float32]
    for _ in range(40):
        hq, hkv, n, d = (int(rng.integers(0, 4)) for _ in range(4))
        layers = int(rng.integers(0, 3))
        dt = dtypes[int(rng.integers(0, len(dtypes)))]
        qs = [rng.standard_normal((hq, n, d)).astype(dt) for _ in range(layers)]
        ks = [rng.standard_normal((hkv, max(0, n - int(rng.integers(0, 2))), d)).astype(dt) for _ in range(layers)]
        if layers and qs[0].size and dt != np.int16 and rng.random() < 0.3:
            qs[0].flat[int(rng.integers(0, qs[0].size))] = np.nan
        lse = None
        if rng.random() < 0.3:
            lse = [rng.standard_normal((hq, n)).astype(np.float32) for _ in range(layers)]
        kw = {["window", "scale", "logit_softcap"][int(rng.integers(0, 3))]: float(rng.integers(-1, 3))} if rng.random() < 0.3 else {}
        q, a = (0, max(1, n // 2)), (max(0, n - 1), n + int(rng.integers(0, 2)))
        try:
            flowtracer.score_qk(qs, ks, q, a, lse=lse, **kw)
        except flowtracer.Error as e:
            assert e.kind and str(e)
        try:
            acc = flowtracer.QkAccumulator(hq, hkv, n, d, **kw)
            for i in range(layers):
                acc.add_layer(i, qs[i], ks[i], None if lse is None else lse[i])
            acc.finish(q, a)
        except flowtracer.Error as e:
            assert e.kind and str(e)
