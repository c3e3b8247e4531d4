"""score_qk and QkAccumulator (method §15) against a naive numpy float64 oracle, and the
accumulator's Ā traced by flowtracer.trace, exactly.

The oracle materialises every head's causal softmax in float64 and averages them (different
code from the core's block-by-block stage). Tolerances, stated once (the core's own for this
stage, flowtracer-core/tests/common.rs): |x - y| <= ABS + REL |y|, with F64 for float64 input
and F32 for float32, float16 and bfloat16 input (f32 arithmetic) against the oracle on the
same (rounded) values, for Ā, the reach h and the flow f; LSE_ROUNDING between Ā formed
with a given float32 log-sum-exp and Ā with the computed one (the saved LSE is rounded to
float32, so the two agree within f32's rounding of a logit, not to the bit).
"""

import numpy as np
import pytest

import flowtracer

F64 = (1e-10, 1e-10)  # (ABS, REL)
F32 = (1e-5, 1e-4)
LSE_ROUNDING = (1e-6, 1e-6)


def close(x, y, tol):
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    assert x.shape == y.shape
    err = np.abs(x - y) - (tol[0] + tol[1] * np.abs(y))
    assert np.all(err <= 0), (np.abs(x - y).max(), np.unravel_index(np.argmax(err), err.shape))


def oracle(qs, ks, scale=None, window=None, key_mask=None, softcap=None, lses=None):
    """Ā in float64: per layer and query head, the causal softmax as an N x N matrix."""
    hq, n, d = qs[0].shape
    hkv = ks[0].shape[0]
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    row, col = np.indices((n, n))
    vis = col <= row
    if window is not None:
        vis &= row - window < col
    if key_mask is not None:
        vis &= np.asarray(key_mask, dtype=bool)[None, :]
    abar = np.zeros((n, n))
    for layer, (q, k) in enumerate(zip(qs, ks)):
        q, k = np.asarray(q, dtype=np.float64), np.asarray(k, dtype=np.float64)
        for h in range(hq):
            s = q[h] @ k[h // (hq // hkv)].T * scale
            if softcap is not None:
                s = softcap * np.tanh(s / softcap)
            s = np.where(vis, s, -np.inf)
            if lses is not None:
                p = np.exp(s - np.asarray(lses[layer], dtype=np.float64)[h][:, None])
            else:
                m = s.max(axis=1, keepdims=True)
                m = np.where(np.isfinite(m), m, 0.0)
                e = np.exp(s - m)
                sums = e.sum(axis=1, keepdims=True)
                p = np.divide(e, sums, out=np.zeros_like(e), where=sums > 0)
            abar += np.where(vis, p, 0.0)
    return abar / (len(qs) * hq)


def oracle_lse(qs, ks, scale=None):
    """The log-sum-exp of every (layer, head, row), float32, as FlashAttention saves it."""
    out = []
    for q, k in zip(qs, ks):
        hq, n, d = q.shape
        sc = 1.0 / np.sqrt(d) if scale is None else scale
        s = np.einsum("hnd,hmd->hnm", q.astype(np.float64), np.repeat(k, hq // k.shape[0], axis=0).astype(np.float64)) * sc
        s = np.where(np.tril(np.ones((n, n), dtype=bool)), s, -np.inf)
        m = s.max(axis=2, keepdims=True)
        out.append((m[..., 0] + np.log(np.exp(s - m).sum(axis=2))).astype(np.float32))
    return out


def qk_case(layers, hq, hkv, n, d, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    qs = [rng.standard_normal((hq, n, d)).astype(dtype) for _ in range(layers)]
    ks = [rng.standard_normal((hkv, n, d)).astype(dtype) for _ in range(layers)]
    return qs, ks


def spans(n):
    return (0, max(1, n // 3)), (n - 1, n)


def matrix(qs, ks, dtype="float64", lses=None, **config):
    hq, n, d = qs[0].shape
    acc = flowtracer.QkAccumulator(hq, ks[0].shape[0], n, d, dtype=dtype, **config)
    for i, (q, k) in enumerate(zip(qs, ks)):
        acc.add_layer(i, q, k, None if lses is None else lses[i])
    return acc.finish_matrix()


CASES = {  # layers, H_q, H_kv, N, d
    "mha": (2, 3, 3, 13, 8),
    "gqa": (3, 4, 2, 17, 5),
    "mqa": (1, 4, 1, 9, 16),
    "n1": (2, 2, 1, 1, 3),
    "d1": (2, 2, 2, 11, 1),
    "blocks": (1, 2, 1, 33, 7),  # N past several row (4) and key (8) blocks, odd
}


@pytest.mark.parametrize("name", CASES)
def test_f64_against_the_oracle_and_the_accumulator(name):
    layers, hq, hkv, n, d = CASES[name]
    qs, ks = qk_case(layers, hq, hkv, n, d, seed=len(name))
    q, a = spans(n) if n > 1 else ((0, 1), (0, 1))
    want = oracle(qs, ks)
    got = matrix(qs, ks)
    assert got.dtype == np.float64 and got.shape == (n, n)
    close(got, want, F64)
    if n == 1:  # a question and an answer need two tokens: Ā is all there is
        return
    t = flowtracer.score_qk(qs, ks, q, a)
    ref = flowtracer.trace(want, q, a)
    close(t.reach, ref.reach, F64)
    close(t.flow, ref.flow, F64)
    # the accumulator's Ā traced by trace: the same trace, bit for bit
    exact = flowtracer.trace(got, q, a)
    for x, y in [(t.reach, exact.reach), (t.flow, exact.flow), (t.throughput, exact.throughput)]:
        assert x.dtype == np.float64 and np.array_equal(x, y)
    assert np.array_equal(t.token_weights(), exact.token_weights())
    assert t.backbone() == exact.backbone()
    # one [L, H, N, d] array, a tuple, and the accumulator's finish: the same trace
    for u in [flowtracer.score_qk(np.stack(qs), np.stack(ks), q, a), flowtracer.score_qk(tuple(qs), tuple(ks), q, a)]:
        assert np.array_equal(u.flow, t.flow)
    acc = flowtracer.QkAccumulator(hq, hkv, n, d, dtype="float64")
    for i in reversed(range(layers)):  # any order: the sum is the same up to rounding
        acc.add_layer(i, qs[i], ks[i])
    close(acc.finish(q, a).flow, t.flow, F64)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_f32_arithmetic_against_the_oracle(dtype):
    qs, ks = qk_case(2, 4, 2, 21, 8, seed=3, dtype=dtype)
    q, a = spans(21)
    want = oracle(qs, ks)  # on the same rounded values
    got = matrix(qs, ks, dtype="float32")
    assert got.dtype == np.float32
    close(got, want, F32)
    t = flowtracer.score_qk(qs, ks, q, a)
    assert t.dtype == "float32"
    ref = flowtracer.trace(want, q, a)
    close(t.reach, ref.reach, F32)
    close(t.flow, ref.flow, F32)
    # float16 widens exactly: its float32 upcast gives the same Ā and trace, bit for bit
    up = flowtracer.score_qk([x.astype(np.float32) for x in qs], [x.astype(np.float32) for x in ks], q, a)
    assert np.array_equal(t.flow, up.flow) and np.array_equal(t.reach, up.reach)


@pytest.mark.parametrize("window", [1, 2, 5, 40])
def test_window(window):
    qs, ks = qk_case(2, 2, 1, 19, 4, seed=window)
    q, a = spans(19)
    got = matrix(qs, ks, window=window)
    close(got, oracle(qs, ks, window=window), F64)
    row, col = np.indices(got.shape)
    assert np.all(got[row - col >= window] == 0.0)
    if window < 19:
        assert not np.allclose(got, matrix(qs, ks))
    if window == 1:  # each token sees only itself: Ā is the identity, no flow leaves Q
        assert np.array_equal(got, np.eye(19))
        with pytest.raises(flowtracer.Error) as e:
            flowtracer.score_qk(qs, ks, q, a, window=window)
        assert e.value.kind == "NoSourceMass"
        return
    t = flowtracer.score_qk(qs, ks, q, a, window=window)
    assert np.array_equal(t.flow, flowtracer.trace(got, q, a).flow)


def test_scale_softcap_and_defaults():
    qs, ks = qk_case(1, 2, 2, 10, 4, seed=9)
    for config in [{"scale": 0.7}, {"logit_softcap": 1.5}, {"scale": 2.0, "logit_softcap": 3.0}]:
        close(matrix(qs, ks, **config), oracle(qs, ks, softcap=config.get("logit_softcap"), scale=config.get("scale")), F64)
    # None is the core's default, and the default is what the core says
    d = flowtracer.qk_defaults()
    base = matrix(qs, ks)
    assert np.array_equal(base, matrix(qs, ks, scale=None, window=None, logit_softcap=None, row_tolerance=None))
    assert np.array_equal(base, matrix(qs, ks, row_tolerance=d["row_tolerance"]))
    assert d["scale"] is None and np.array_equal(base, matrix(qs, ks, scale=1 / np.sqrt(4)))


def test_lse_given_equals_computed():
    qs, ks = qk_case(2, 4, 2, 15, 8, seed=4)
    lses = oracle_lse(qs, ks)
    q, a = spans(15)
    without = matrix(qs, ks)
    given = matrix(qs, ks, lses=lses)
    close(given, oracle(qs, ks, lses=lses), F64)
    close(given, without, LSE_ROUNDING)
    t = flowtracer.score_qk(qs, ks, q, a, lse=lses)
    t_stacked = flowtracer.score_qk(np.stack(qs), np.stack(ks), q, a, lse=np.stack(lses))
    assert np.array_equal(t.flow, t_stacked.flow)
    assert np.array_equal(t.flow, flowtracer.trace(given, q, a).flow)


def test_key_mask():
    n = 12
    qs, ks = qk_case(2, 2, 1, n, 4, seed=5)
    mask = np.ones(n, dtype=bool)
    mask[:3] = False  # left padding
    got = matrix(qs, ks, key_mask=mask)
    close(got, oracle(qs, ks, key_mask=mask), F64)
    assert np.all(got[:, :3] == 0.0) and np.all(got[:3] == 0.0)
    # the unpadded sequence's Ā is the valid block, up to the rounding of the summation order
    close(got[3:, 3:], matrix([x[:, 3:] for x in qs], [x[:, 3:] for x in ks]), F64)
    t = flowtracer.score_qk(qs, ks, (3, 6), (n - 1, n), key_mask=mask)
    assert np.array_equal(t.flow, flowtracer.trace(got, (3, 6), (n - 1, n)).flow)
    ints = flowtracer.score_qk(qs, ks, (3, 6), (n - 1, n), key_mask=mask.astype(np.int64))
    assert np.array_equal(ints.flow, t.flow)


def test_options_reach_the_trace():
    qs, ks = qk_case(1, 2, 2, 16, 4, seed=6)
    q, a = spans(16)
    got = matrix(qs, ks)
    for options in [{}, {"gamma_flow": 2.0, "rho": 0.5}, {"answer_mode": "relay"}, {"select": "bottom"}]:
        t = flowtracer.score_qk(qs, ks, q, a, **options)
        want = flowtracer.trace(got, q, a, **options)
        assert np.array_equal(t.token_weights(), want.token_weights()), options
        acc = flowtracer.QkAccumulator(2, 2, 16, 4, dtype="float64")
        acc.add_layer(0, qs[0], ks[0])
        assert np.array_equal(acc.finish(q, a, **options).token_weights(), want.token_weights())
    # with a response span
    t = flowtracer.score_qk(qs, ks, [0, 2], [15], (5, 16))
    assert t.response == (5, 16) and t.question == [0, 2]


def test_non_contiguous_input_is_copied_not_refused():
    qs, ks = qk_case(2, 2, 2, 9, 6, seed=7)
    q, a = spans(9)
    t = flowtracer.score_qk(qs, ks, q, a)
    fortran = [np.asfortranarray(x) for x in qs]
    strided = [np.repeat(x, 2, axis=2)[:, :, ::2] for x in ks]
    assert not fortran[0].flags.c_contiguous and not strided[0].flags.c_contiguous
    assert np.array_equal(flowtracer.score_qk(fortran, strided, q, a).flow, t.flow)
    # an [L, H, N, d] view with the layer axis not outermost in memory
    q4 = np.stack(qs, axis=1).transpose(1, 0, 2, 3)
    assert not q4.flags.c_contiguous
    assert np.array_equal(flowtracer.score_qk(q4, ks, q, a).flow, t.flow)


@pytest.mark.parametrize("name", ["gqa", "mqa", "blocks"])
@pytest.mark.parametrize("window", [None, 3])
def test_equals_the_core_and_its_oracle(name, window):
    """score_qk and the accumulator against the core called directly (qk::sequence_from_qk,
    no binding), exactly; the core's naive oracle (reference::attention_from_qk) against this
    file's numpy oracle, at F64."""
    layers, hq, hkv, n, d = CASES[name]
    qs, ks = qk_case(layers, hq, hkv, n, d, seed=11)
    q, a = spans(n)
    flat_q, flat_k = np.stack(qs).ravel().tolist(), np.stack(ks).ravel().tolist()
    shape = (layers, hq, hkv, n, d)
    abar, reach, flow = flowtracer._native._core_qk_f64(flat_q, flat_k, shape, list(range(*q)), list(range(*a)), None, window)
    got = matrix(qs, ks, window=window)
    assert np.array_equal(got.ravel(), np.array(abar))
    t = flowtracer.score_qk(qs, ks, q, a, window=window)
    assert np.array_equal(t.reach, np.array(reach)) and np.array_equal(t.flow, np.array(flow))
    ref = flowtracer._native._reference_qk_f64(flat_q, flat_k, shape, 1 / np.sqrt(d), window)
    close(np.array(ref).reshape(n, n), oracle(qs, ks, window=window), F64)
