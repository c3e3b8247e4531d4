"""Random bad input: every call returns or raises flowtracer.Error, never anything else.

A seeded sweep (no randomness inside an assertion's expectations): shapes, dtypes, values
(NaN, inf, negative, rows heavier than 1), spans (empty, reversed, out of range, unsorted,
negative, wrong types) and options, through every entry point.
"""

import numpy as np
import pytest

import flowtracer

DTYPES = [np.float64, np.float32, np.float64, np.float32, np.float16, np.int32]
BAD_SPANS = [(0, 1), (0, 0), (3, 1), (0, 99), [2, 1], [0, 0], [-1], (1, -2), range(0, 3, 2), [], "x", None, 1.5, (0, 1, 2)]
OPTIONS = [{}, {}, {}, {"rho": 0.9}, {"rho": -1}, {"gamma_flow": float("nan")}, {"select": "middle"}, {"layers": "spaced:0"}, {"nope": 1}, {"edge_threshold": 0.3}, {"answer_mode": "relay"}]


def attention(rng):
    n = int(rng.integers(0, 7))
    shape = [(n, n), (n,), (2, n, n), (3, 2, n, n), (n, n + 1), (1, 1, 1, n, n)][int(rng.integers(0, 6))]
    a = rng.random(shape)
    if a.size and rng.random() < 0.5:
        a = np.tril(a) if a.ndim >= 2 else a
        a = a / np.maximum(a.sum(axis=-1, keepdims=True), 1e-9)
    if a.size and rng.random() < 0.3:
        a.flat[int(rng.integers(0, a.size))] = [np.nan, np.inf, -0.5, 3.0][int(rng.integers(0, 4))]
    with np.errstate(invalid="ignore"):
        a = a.astype(DTYPES[int(rng.integers(0, len(DTYPES)))])
    if a.ndim >= 2 and rng.random() < 0.3:
        a = np.asfortranarray(a)
    return a


def pick(rng, items):
    return items[int(rng.integers(0, len(items)))]


def spans(rng, a):
    """Mostly valid (question first half, answer last token) so the data checks run too."""
    n = a.shape[-1] if a.ndim >= 2 else int(np.sqrt(2 * a.shape[0]))
    good = rng.random() < 0.7
    q = (0, max(1, n // 2)) if good else pick(rng, BAD_SPANS)
    ans = (n - 1, n) if good or rng.random() < 0.5 else pick(rng, BAD_SPANS)
    resp = None if rng.random() < 0.7 else pick(rng, BAD_SPANS)
    return q, ans, resp


def call(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except flowtracer.Error as e:
        assert e.kind and str(e)
    # anything else propagates and fails the test


@pytest.mark.parametrize("seed", range(20))
def test_random_input_never_crashes(seed):
    rng = np.random.default_rng(seed)
    for _ in range(50):
        a = attention(rng)
        (q, ans, resp), opts = spans(rng, a), pick(rng, OPTIONS)
        call(flowtracer.trace, a, q, ans, resp, **opts)
        call(flowtracer.token_weights, a, q, ans, **opts)
        b = int(rng.integers(1, 4))
        call(flowtracer.score_batch, [a] * b, [q] * b, [spans(rng, a)[1] for _ in range(b)], **opts)
        if a.ndim == 2 and a.shape[0] == a.shape[1]:
            stacked = np.stack([a] * b)
            mask = rng.integers(0, 2, size=(b, a.shape[0]))
            call(flowtracer.score_batch, stacked, [q] * b, [ans] * b, attention_mask=mask, **opts)
            cu = np.concatenate([[0], np.cumsum(rng.integers(0, 4, size=b))])
            call(flowtracer.score_batch, stacked.ravel(), [q] * b, [ans] * b, cu_seqlens=cu, **opts)
        rewards = rng.random(int(rng.integers(0, 5)))
        w = rng.random((len(rewards), int(rng.integers(0, 4))))
        call(flowtracer.shape_advantages, rewards, int(rng.integers(0, 4)), w, **pick(rng, [{}, {"scale_rewards": "batch"}, {"mix": 2}]))
