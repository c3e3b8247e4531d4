"""The torch Q/K path (flowtracer.trl.qk_torch) against the core's Q/K stage on the same tensors.

Runs on CPU tensors always; on CUDA when FLOWTRACER_TEST_CUDA=1 (else the run's summary says
``SKIPPED: no CUDA``, from conftest.py). The reference is the core (``flowtracer.QkAccumulator.finish_matrix``),
never a Python re-derivation; agreement within qk_torch.CONFORMANCE_RTOL / _ATOL (f32) and
F64_TOL (f64). Errors: the same kind and position as the core's, in method §15's order.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import flowtracer
from flowtracer.trl import capture
from flowtracer.trl.qk_torch import CONFORMANCE_ATOL, CONFORMANCE_RTOL, TorchQkAccumulator

#: f64 input: torch f64 against the core's f64 (its exponential: 4e-16 relative).
F64_TOL = 1e-12

CASES = {
    # name: (H_q, H_kv, N, d, window, softcap, masked keys, lse)
    "mha": (4, 4, 9, 8, None, None, 0, False),
    "gqa": (6, 2, 17, 4, None, None, 0, False),
    "mqa": (4, 1, 5, 3, None, None, 0, False),
    "window": (4, 2, 13, 8, 4, None, 0, False),
    "softcap": (2, 1, 11, 8, None, 5.0, 0, False),
    "left_padding": (4, 2, 12, 8, None, None, 3, False),
    "lse": (4, 2, 10, 8, None, None, 0, True),
    "n1_d1": (1, 1, 1, 1, None, None, 0, False),
    "odd_blocks": (3, 1, 37, 5, 7, None, 2, False),
}


def devices():
    if os.environ.get("FLOWTRACER_TEST_CUDA") == "1":
        assert torch.cuda.is_available(), "FLOWTRACER_TEST_CUDA=1 but torch sees no CUDA device"
        return ["cpu", "cuda"]
    return ["cpu"]  # conftest.py's terminal summary says "SKIPPED: no CUDA"


def layers_of(case, seed, dtype):
    hq, hkv, n, d, *_ = case
    g = torch.Generator().manual_seed(seed)
    qs = [torch.randn(hq, n, d, generator=g, dtype=torch.float64).to(dtype) * 2 for _ in range(2)]
    ks = [torch.randn(hkv, n, d, generator=g, dtype=torch.float64).to(dtype) * 2 for _ in range(2)]
    return qs, ks


def key_mask(n, masked):
    m = np.ones(n, dtype=bool)
    m[:masked] = False
    return m


def lse_of(q, k, case, mask):
    """The LSE FlashAttention would save: from the core's own stage is impossible, so from torch
    in f64 (the check then tests the core and the torch path agree on accepting it)."""
    hq, hkv, n, d, window, softcap, *_ = case
    s = torch.einsum("hnd,hmd->hnm", q.double(), k.double().repeat_interleave(hq // hkv, 0)) / d**0.5
    i = torch.arange(n)
    vis = (i[None, :] <= i[:, None]) & torch.as_tensor(mask)[None, :]
    return torch.logsumexp(s.masked_fill(~vis, -float("inf")), -1).float()


def core_matrix(case, qs, ks, lses, dtype):
    hq, hkv, n, d, window, softcap, masked, _ = case
    acc = flowtracer.QkAccumulator(
        hq, hkv, n, d, key_mask=key_mask(n, masked) if masked else None, window=window,
        logit_softcap=softcap, dtype="float64" if dtype == torch.float64 else "float32",
    )
    for i, (q, k) in enumerate(zip(qs, ks)):
        acc.add_layer(3 + i, q, k, None if lses is None else lses[i])
    return np.asarray(acc.finish_matrix())


def torch_matrix(case, qs, ks, lses, device, block_bytes=1 << 12):
    hq, hkv, n, d, window, softcap, masked, _ = case
    acc = TorchQkAccumulator(
        hq, hkv, n, d, key_mask=key_mask(n, masked) if masked else None, window=window,
        logit_softcap=softcap, device=device, block_bytes=block_bytes,
    )
    for i, (q, k) in enumerate(zip(qs, ks)):
        acc.add_layer(3 + i, q.to(device), k.to(device), None if lses is None else lses[i].to(device))
    return acc.finish_matrix().cpu().numpy()


# bf16 with an LSE is left out: an LSE from f64 logits does not belong to bf16-rounded Q/K.
@pytest.mark.parametrize(
    "name,dtype",
    [
        (name, dtype)
        for name in sorted(CASES)
        for dtype in (torch.float32, torch.float64, torch.bfloat16)
        if not (dtype == torch.bfloat16 and CASES[name][7])
    ],
)
def test_torch_path_matches_the_core(name, dtype):
    case = CASES[name]
    qs, ks = layers_of(case, seed=len(name), dtype=dtype)
    mask = key_mask(case[2], case[6])
    lses = [lse_of(q, k, case, mask) for q, k in zip(qs, ks)] if case[7] else None
    want = core_matrix(case, qs, ks, lses, dtype)
    for device in devices():
        got = torch_matrix(case, qs, ks, lses, device)
        if dtype == torch.float64:
            np.testing.assert_allclose(got, want, rtol=F64_TOL, atol=F64_TOL)
        else:
            np.testing.assert_allclose(got, want, rtol=CONFORMANCE_RTOL, atol=CONFORMANCE_ATOL)


def test_block_size_does_not_change_the_result():
    case = CASES["gqa"]
    qs, ks = layers_of(case, 5, torch.float32)
    one_row = torch_matrix(case, qs, ks, None, "cpu", block_bytes=1)
    whole = torch_matrix(case, qs, ks, None, "cpu", block_bytes=1 << 30)
    np.testing.assert_allclose(one_row, whole, rtol=CONFORMANCE_RTOL, atol=CONFORMANCE_ATOL)


def error_of(fn):
    with pytest.raises(flowtracer.Error) as e:
        fn()
    return e.value


POSITION = ("kind", "tensor", "layer", "head", "row", "col")


@pytest.mark.parametrize(
    "defects",
    [
        # (layer position, tensor, flat index, value): the first by method §15's order wins
        [(1, "k", 7, float("nan")), (0, "q", 50, float("inf"))],
        [(0, "k", 3, float("nan")), (0, "q", 40, float("nan"))],
        [(1, "q", 0, float("-inf"))],
        [(1, "lse", 5, float("nan")), (1, "k", 150, float("nan"))],
        [(1, "lse", 2, 50.0)],  # an LSE that does not belong: LseMismatch after the scans
        [(0, "lse", 9, -50.0), (1, "q", 11, float("nan"))],  # non-finite first, across layers
        [(0, "q", 4, 1e30), (0, "k", 4, 1e30)],  # finite input, overflowing logits
    ],
)
def test_errors_match_the_core(defects):
    case = CASES["lse"]
    qs, ks = layers_of(case, 11, torch.float32)
    mask = key_mask(case[2], 0)
    lses = [lse_of(q, k, case, mask) for q, k in zip(qs, ks)]
    for layer, name, flat, value in defects:
        t = {"q": qs, "k": ks, "lse": lses}[name][layer]
        t.view(-1)[flat] = value
    want = error_of(lambda: core_matrix(case, qs, ks, lses, torch.float32))
    for device in devices():
        got = error_of(lambda: torch_matrix(case, qs, ks, lses, device))
        assert [getattr(got, a, None) for a in POSITION] == [getattr(want, a, None) for a in POSITION]
        if want.kind == "LseMismatch":
            assert got.mass == pytest.approx(want.mass, rel=1e-5)


def test_shape_and_config_errors_are_the_cores_kinds():
    for args, kwargs in [((6, 4, 5, 8), {}), ((4, 2, 0, 8), {}), ((0, 1, 5, 8), {}), ((4, 2, 5, 8), {"window": 0})]:
        want = error_of(lambda: flowtracer.QkAccumulator(*args, **kwargs))
        got = error_of(lambda: TorchQkAccumulator(*args, **kwargs))
        assert got.kind == want.kind
    acc = TorchQkAccumulator(4, 2, 5, 8)
    core = flowtracer.QkAccumulator(4, 2, 5, 8)
    bad = (torch.zeros(4, 5, 7), torch.zeros(2, 5, 8))
    assert error_of(lambda: acc.add_layer(0, *bad)).kind == error_of(lambda: core.add_layer(0, *bad)).kind


@pytest.mark.parametrize("n_layers", [1, 2, 3, 5, 12, 36])
def test_layer_selection_is_the_cores(n_layers):
    """select_layers picks exactly the layers the core averages (trace on per-layer input)."""
    rng = np.random.default_rng(n_layers)
    n = 6
    per_layer = rng.random((n_layers, 1, n, n)) ** 4
    per_layer = np.tril(per_layer)
    per_layer /= per_layer.sum(-1, keepdims=True)
    specs = ["middle", "all", f"0..{n_layers}", ",".join(str(i) for i in range(0, n_layers, 2))]
    lo, hi = n_layers // 3, 2 * n_layers // 3
    specs += [f"spaced:{c}" for c in range(1, max(1, hi - lo) + 1) if hi > lo]
    for spec in specs:
        chosen = capture.select_layers(spec, n_layers)
        want = flowtracer.trace(per_layer, (0, 2), (n - 1, n), layers=spec).reach
        got = flowtracer.trace(per_layer[chosen].mean(axis=0)[0], (0, 2), (n - 1, n)).reach
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, err_msg=spec)


def test_layer_selection_errors_are_the_cores():
    """A bad selection is the core's error, by kind, from the binding's select_layers."""
    for spec, kind in [("12..14", "InvalidLayerSelection"), ("spaced:9", "InvalidLayerSelection"), ("top", "UnknownName")]:
        with pytest.raises(flowtracer.Error) as info:
            capture.select_layers(spec, 12)
        assert info.value.kind == kind, spec
