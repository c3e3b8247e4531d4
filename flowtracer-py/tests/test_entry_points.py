"""Every entry point against the Rust core's results on the same inputs."""

import numpy as np
import pytest
from conftest import ORACLE_ATOL, ORACLE_RTOL, causal, packed

import flowtracer
from flowtracer import _native


def core(a, question, answer, response=None):
    """The core called directly (flowtracer_core::trace, default Tracer) on a dense f64 matrix."""
    r, f, tau, w = _native._core_trace_f64(
        np.asarray(a, dtype=np.float64).ravel().tolist(),
        list(question),
        list(answer),
        None if response is None else list(response),
    )
    return np.array(r), np.array(f), np.array(tau), np.array(w)


def assert_same(x, y):
    """Bit-for-bit equality (f64 against the core)."""
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == y.shape and x.dtype == y.dtype
    assert np.array_equal(x, y), np.abs(x - y).max()


# --- method §12 -------------------------------------------------------------------------------


def test_worked_example_f64(worked):
    t = flowtracer.trace(worked, (0, 2), (4, 5))
    # method §12's exact fractions, to the golden tests' 1e-12
    h = [1033 / 2000, 87 / 200, 63 / 100, 1 / 10, 1]
    f = [1 / 2, 734 / 1033, 20895 / 29957, 6791 / 89871, 1]
    assert t.dtype == "float64" and t.n == 5 and t.num_sources == 2
    assert np.abs(t.reach - h).max() < 1e-12
    assert np.abs(t.flow - f).max() < 1e-12
    assert np.abs(t.throughput - 2 * np.array(f)).max() < 1e-12
    assert abs(t.answer_mass - 1) < 1e-12
    assert t.token_weights().tolist() == [1.0, 1.0, 1.5, 1.0, 1.5]
    assert t.question == (0, 2) and t.answer == (4, 5) and t.response == (2, 5)


def test_worked_example_f32(worked):
    t = flowtracer.trace(worked.astype(np.float32), (0, 2), (4, 5))
    f = [1 / 2, 734 / 1033, 20895 / 29957, 6791 / 89871, 1]
    assert t.dtype == "float32" and t.flow.dtype == np.float32
    assert np.abs(t.flow - f).max() < 1e-6
    assert t.token_weights().dtype == np.float32
    assert t.token_weights().tolist() == [1.0, 1.0, 1.5, 1.0, 1.5]


def test_worked_example_backbone(worked):
    b = flowtracer.trace(worked, (0, 2), (4, 5)).backbone()
    assert b["path"] == [1, 2, 4]
    assert abs(b["path_probability"] - 10 / 29) < 1e-12
    assert [(i, k) for i, k, _ in b["edges"]] == [(2, 4), (1, 2), (0, 1), (0, 2), (1, 4)]
    assert [round(phi, 4) for _, _, phi in b["edges"]] == [0.6643, 0.5145, 0.2106, 0.1830, 0.1633]
    assert round(b["total_edge_flow"], 4) == 1.9836
    assert b["hubs"] == [2, 4]
    # options by the core's names
    assert len(flowtracer.trace(worked, (0, 2), (4, 5)).backbone(coverage=1.0)["edges"]) == 10


# --- against the core, exactly ------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 8, 41])
@pytest.mark.parametrize("seed", [0, 1])
def test_trace_equals_core(n, seed):
    a = causal(n, seed)
    q, ans = range(0, max(1, n // 3)), range(n - 1, n)
    r, f, tau, w = core(a, q, ans)
    forms = {
        "dense": a,
        "packed": packed(a),
        "fortran": np.asfortranarray(a),
        "strided": np.repeat(a, 2, axis=1)[:, ::2],
        "list": a.tolist(),
    }
    spans = [
        ((q.start, q.stop), (ans.start, ans.stop)),
        (q, ans),
        (list(q), list(ans)),
        (np.array(list(q)), np.array(list(ans), dtype=np.int32)),
    ]
    for name, x in forms.items():
        for qs, as_ in spans:
            t = flowtracer.trace(x, qs, as_)
            assert_same(t.reach, r), name
            assert_same(t.flow, f), name
            assert_same(t.throughput, tau), name
            assert_same(t.token_weights(), w), name
            assert_same(flowtracer.token_weights(x, qs, as_), w)


def test_trace_with_lists_and_response_equals_core():
    a = causal(30, 7)
    q, ans, resp = [0, 2, 4, 5], [26, 28], list(range(10, 29))
    r, f, tau, w = core(a, q, ans, resp)
    t = flowtracer.trace(a, q, ans, resp)
    assert_same(t.reach, r)
    assert_same(t.flow, f)
    assert_same(t.token_weights(), w)
    assert t.question == q and t.answer == ans and t.response == resp


@pytest.mark.parametrize("n", [2, 5, 40])
def test_trace_against_the_core_oracle(n):
    a = causal(n, 3)
    q, ans = list(range(max(1, n // 4))), [n - 1]
    h, f, tau, sources = _native._reference_trace_f64(a.ravel().tolist(), n, q, ans)
    t = flowtracer.trace(a, q, ans)
    assert t.num_sources == sources
    for x, y in [(t.reach, h), (t.flow, f), (t.throughput, tau)]:
        assert np.all(np.abs(x - y) <= ORACLE_RTOL * np.abs(y) + ORACLE_ATOL)


def test_per_layer_input_is_aggregated_by_the_core():
    n = 12
    a = causal(n, 5)
    noise = causal(n, 6)
    q, ans = (0, 3), (10, 12)
    expect = flowtracer.trace(a, q, ans)
    # one head, one layer; identical heads (their mean is exact); only the selected layer
    one = flowtracer.trace(a[None, None], q, ans, layers="all")
    heads = flowtracer.trace(np.stack([a, a, a, a]), q, ans)
    layers = np.stack([noise[None], a[None], noise[None]])  # [3, 1, n, n]
    for sel in ["1", "1..2", range(1, 2), [1], "middle"]:
        t = flowtracer.trace(layers, q, ans, layers=sel)
        assert_same(t.flow, expect.flow)
    for t in [one, heads]:
        assert_same(t.flow, expect.flow)
        assert_same(t.token_weights(), expect.token_weights())
    assert not np.array_equal(flowtracer.trace(layers, q, ans, layers="all").flow, expect.flow)


def test_options_by_the_core_names_and_defaults(worked):
    d = flowtracer.defaults()
    assert set(flowtracer.SCORING_OPTIONS) <= set(d)
    base = flowtracer.trace(worked, (0, 2), (4, 5))
    # every default passed explicitly gives the same result, to the bit
    explicit = {k: d[k] for k in flowtracer.SCORING_OPTIONS}
    t = flowtracer.trace(worked, (0, 2), (4, 5), **explicit)
    assert_same(t.flow, base.flow)
    assert_same(t.token_weights(), base.token_weights())
    # and each option reaches the core
    w = lambda **o: flowtracer.token_weights(worked, (0, 2), (4, 5), **o).tolist()
    assert w(gamma_flow=2.0) == [1.0, 1.0, 2.0, 1.0, 2.0]
    assert w(rho=1.0) == [1.0, 1.0, 1.5, 1.5, 1.5]
    assert w(select="bottom") == [1.0, 1.0, 1.5, 1.5, 1.0]
    assert w(rho=0.0) == [1.0] * 5
    relay = flowtracer.trace(worked, (0, 2), (3, 5), answer_mode="relay")
    assert relay.reach[3] > 1.0  # a relaying answer token passes flow on
    assert flowtracer.trace(worked, (0, 2), (4, 5), edge_threshold=0.15).flow[3] == 0.0
    for name, allowed in flowtracer.choices().items():
        assert d[name] in allowed


def test_shape_advantages_equals_core():
    rng = np.random.default_rng(0)
    rewards = rng.random(6)
    weights = rng.choice([1.0, 1.5], size=(6, 7))
    expect = _native._core_shape_advantages_f64(rewards.tolist(), 3, weights.ravel().tolist())
    adv = flowtracer.shape_advantages(rewards, 3, weights)
    assert adv.shape == (6, 7)
    assert_same(adv.ravel(), np.array(expect))
    assert_same(flowtracer.shape_advantages(rewards.tolist(), 3, np.asfortranarray(weights)), adv)
    adv32 = flowtracer.shape_advantages(rewards, 3, weights.astype(np.float32))
    assert adv32.dtype == np.float32 and np.allclose(adv32, adv, rtol=1e-6)
    # options reach the core
    none = flowtracer.shape_advantages(rewards, 3, weights, scale_rewards="none")
    assert not np.array_equal(none, adv)
    only_pos = flowtracer.shape_advantages(rewards, 3, weights, apply_to="nonnegative_only")
    negative = adv.max(axis=1) < 0
    assert negative.any() and (~negative).any()
    assert np.all(only_pos[negative] == only_pos[negative][:, :1])  # no weights below 0
    assert_same(only_pos[~negative], adv[~negative])


def test_metrics_are_the_core_names():
    assert isinstance(flowtracer.METRICS, tuple) and len(flowtracer.METRICS) == len(set(flowtracer.METRICS))
    assert all(m.startswith("flow/") for m in flowtracer.METRICS)
    assert "flow/no_answer_frac" in flowtracer.METRICS and "flow/weight_mean" in flowtracer.METRICS


def test_every_public_callable_has_a_runnable_example():
    for name in flowtracer.__all__:
        obj = getattr(flowtracer, name)
        if callable(obj):
            assert ">>>" in (obj.__doc__ or ""), name
    for meth in ["token_weights", "backbone"]:
        assert ">>>" in getattr(flowtracer.Trace, meth).__doc__
