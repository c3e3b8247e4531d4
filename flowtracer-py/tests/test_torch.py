"""torch tensors at every entry point: CPU tensors through DLPack (zero-copy when contiguous,
copied when not), bfloat16 and float16 queries and keys, devices other than the CPU.

float16 and bfloat16 widen to float32 exactly and the Q/K stage computes in float32 for all
three, so a half-precision tensor and its float32 upcast give the same Ā and the same trace,
bit for bit: these tests assert equality, no tolerance.
"""

import numpy as np
import pytest
import torch
from conftest import causal

import flowtracer
from flowtracer import _native, _torch


def test_torch_is_imported_only_for_torch_arguments():
    assert not _torch.is_torch(np.zeros(2)) and _torch.is_torch(torch.zeros(2))
    assert _torch.host(np.zeros(2)) is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_contiguous_cpu_tensor_is_read_in_place(dtype):
    t = torch.from_numpy(causal(16, 0)).to(dtype)
    assert _native._data_ptr(_torch.host(t)) == t.data_ptr()
    q = torch.randn(2, 5, 3, dtype=dtype)
    assert _native._qk_data_ptr(*_torch.qk(q, "q")) == q.data_ptr()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_tensors_are_read_in_place(dtype):
    q = torch.randn(2, 5, 3).to(dtype)
    array, bf16 = _torch.qk(q, "q")
    assert bf16 == (dtype == torch.bfloat16)
    assert _native._qk_data_ptr(array, bf16) == q.data_ptr()
    # a non-contiguous tensor is copied, not refused
    t = q.transpose(1, 2)
    array, bf16 = _torch.qk(t, "q")
    assert _native._qk_data_ptr(array, bf16) != t.data_ptr()


def test_entry_points_take_tensors():
    a = causal(12, 1, np.float32)
    t = torch.from_numpy(a.copy())
    q, ans = (0, 3), (10, 12)
    want = flowtracer.trace(a, q, ans)
    for x in [t, t.requires_grad_(False), torch.from_numpy(a.copy()).requires_grad_(True), t.T.contiguous().T]:
        got = flowtracer.trace(x, torch.tensor([0, 1, 2]), torch.tensor([10, 11]))
        assert np.array_equal(got.flow, want.flow)
        assert np.array_equal(flowtracer.token_weights(x, q, ans), want.token_weights())
    batch = np.stack([a, causal(12, 2, np.float32)])
    mask = np.ones((2, 12), dtype=np.int64)
    mask[1, :2] = 0
    spans_q, spans_a = [(0, 3), (0, 3)], [(10, 12), (8, 10)]
    want_b = flowtracer.score_batch(batch, spans_q, spans_a, attention_mask=mask)
    got_b = flowtracer.score_batch(torch.from_numpy(batch), spans_q, spans_a, attention_mask=torch.from_numpy(mask).bool())
    assert np.array_equal(got_b, want_b)
    # a tensor span is positions, as an integer array's
    got_l = flowtracer.score_batch([torch.from_numpy(x) for x in batch], [torch.arange(3)] * 2, spans_a)
    assert np.array_equal(got_l, flowtracer.score_batch(list(batch), spans_q, spans_a))
    flat = torch.from_numpy(np.concatenate([batch[0].ravel(), batch[1].ravel()]))
    got_cu = flowtracer.score_batch(flat, spans_q, spans_a, cu_seqlens=torch.tensor([0, 12, 24]))
    assert np.array_equal(got_cu, flowtracer.score_batch(list(batch), spans_q, spans_a))
    w = np.ones((2, 4))
    assert np.array_equal(
        flowtracer.shape_advantages(torch.tensor([1.0, 0.0]), 2, torch.from_numpy(w)),
        flowtracer.shape_advantages([1.0, 0.0], 2, w),
    )


def test_bfloat16_attention_is_refused_with_its_name():
    t = torch.from_numpy(causal(6, 0)).to(torch.bfloat16)
    with pytest.raises(flowtracer.Error) as e:
        flowtracer.trace(t, (0, 2), (4, 6))
    assert (e.value.kind, e.value.dtype) == ("UnsupportedDtype", "bfloat16")


def qk(layers, hq, hkv, n, d, seed):
    g = torch.Generator().manual_seed(seed)
    q = [torch.randn(hq, n, d, generator=g) for _ in range(layers)]
    k = [torch.randn(hkv, n, d, generator=g) for _ in range(layers)]
    return q, k


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_qk_equals_its_float32_upcast_exactly(dtype):
    q, k = qk(2, 4, 2, 19, 8, seed=1)
    qh, kh = [x.to(dtype) for x in q], [x.to(dtype) for x in k]
    q32, k32 = [x.float() for x in qh], [x.float() for x in kh]  # the same values
    spans = ((0, 5), (17, 19))
    t = flowtracer.score_qk(qh, kh, *spans)
    u = flowtracer.score_qk(q32, k32, *spans)
    assert t.dtype == "float32"
    for x, y in [(t.reach, u.reach), (t.flow, u.flow), (t.throughput, u.throughput)]:
        assert np.array_equal(x, y)
    # also as one [L, H, N, d] tensor, a non-contiguous one, and through the accumulator
    assert np.array_equal(flowtracer.score_qk(torch.stack(qh), torch.stack(kh), *spans).flow, u.flow)
    strided = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in qh]
    assert not strided[0].is_contiguous()
    assert np.array_equal(flowtracer.score_qk(strided, kh, *spans).flow, u.flow)
    mats = []
    for qs, ks in [(qh, kh), (q32, k32)]:
        acc = flowtracer.QkAccumulator(4, 2, 19, 8)
        for i in range(2):
            acc.add_layer(i, qs[i], ks[i])
        mats.append(acc.finish_matrix())
    assert np.array_equal(mats[0], mats[1])
    # torch float32 equals numpy float32
    n = flowtracer.score_qk([x.numpy() for x in q32], [x.numpy() for x in k32], *spans)
    assert np.array_equal(n.flow, u.flow)


def test_qk_tensors_with_lse_mask_and_grad():
    q, k = qk(1, 2, 1, 10, 4, seed=2)
    s = torch.einsum("hnd,hmd->hnm", q[0], k[0].expand(2, -1, -1)) / 2.0
    s = s.masked_fill(~torch.ones(10, 10, dtype=torch.bool).tril(), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    mask = torch.ones(10, dtype=torch.bool)
    mask[:2] = False
    spans = ((2, 4), (9, 10))
    want = flowtracer.score_qk([x.numpy() for x in q], [x.numpy() for x in k], *spans, lse=[lse.numpy()])
    got = flowtracer.score_qk([x.requires_grad_(True) for x in q], k, *spans, lse=[lse])
    assert np.array_equal(got.flow, want.flow)
    m = flowtracer.score_qk(q, k, *spans, key_mask=mask)
    assert np.array_equal(m.flow, flowtracer.score_qk([x.detach().numpy() for x in q], [x.numpy() for x in k], *spans, key_mask=mask.numpy()).flow)
    acc = flowtracer.QkAccumulator(2, 1, 10, 4, key_mask=mask)
    acc.add_layer(0, q[0], k[0])
    assert np.array_equal(acc.finish(torch.tensor([2, 3]), (9, 10)).flow, m.flow)


def test_qk_tensor_errors():
    q, k = qk(1, 2, 1, 6, 4, seed=3)
    with pytest.raises(flowtracer.Error) as e:  # bfloat16 and float32 mixed
        flowtracer.score_qk([q[0].bfloat16()], k, (0, 2), (5, 6))
    assert (e.value.kind, e.value.what) == ("UnsupportedDtype", "k (layer 0)")
    with pytest.raises(flowtracer.Error) as e:  # a genuine int16 tensor is not bfloat16
        flowtracer.score_qk([q[0].to(torch.int16)], [k[0].to(torch.int16)], (0, 2), (5, 6))
    assert (e.value.kind, e.value.dtype) == ("UnsupportedDtype", "int16")
    with pytest.raises(flowtracer.Error) as e:  # Q and K stay where they are
        flowtracer.score_qk([q[0].to("meta")], [k[0].to("meta")], (0, 2), (5, 6))
    assert (e.value.kind, e.value.what) == ("UnsupportedDevice", "q (layer 0)")
    acc = flowtracer.QkAccumulator(2, 1, 6, 4)
    with pytest.raises(flowtracer.Error) as e:
        acc.add_layer(0, q[0].to("meta"), k[0])
    assert e.value.kind == "UnsupportedDevice"
    bad = q[0].bfloat16()
    bad[1, 3, 2] = float("nan")
    with pytest.raises(flowtracer.Error) as e:
        flowtracer.score_qk([bad], [k[0].bfloat16()], (0, 2), (5, 6))
    assert (e.value.kind, e.value.tensor, e.value.head, e.value.row, e.value.col) == ("NonFiniteInput", "query", 1, 3, 2)


def test_bfloat16_lse_is_refused_as_a_log_sum_exp():
    """The saved log-sum-exp is float32 only (as a float64 one is refused, by the binding): a
    bfloat16 tensor is refused saying so, not with the attention's message (float32 or
    float64, bfloat16 'read by score_qk', which is where it was passed)."""
    q, k = qk(1, 2, 1, 6, 4, seed=4)
    lse = torch.zeros(2, 6, dtype=torch.bfloat16)
    calls = [
        lambda: flowtracer.score_qk(q, k, (0, 2), (5, 6), lse=[lse]),
        lambda: flowtracer.QkAccumulator(2, 1, 6, 4).add_layer(0, q[0], k[0], lse),
    ]
    for call in calls:
        with pytest.raises(flowtracer.Error) as e:
            call()
        assert (e.value.kind, e.value.dtype, e.value.what) == ("UnsupportedDtype", "bfloat16", "lse")
        assert "is float32 (natural log" in str(e.value) and "score_qk" not in str(e.value), str(e.value)
    with pytest.raises(flowtracer.Error) as e:  # the binding's message for float64, the same words
        flowtracer.score_qk(q, k, (0, 2), (5, 6), lse=[lse.double()])
    assert "is float32 (natural log" in str(e.value)
