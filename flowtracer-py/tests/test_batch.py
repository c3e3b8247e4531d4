"""score_batch against one-by-one calls: list, padded with a mask, packed buffer."""

import numpy as np
import pytest
from conftest import causal, packed

import flowtracer


def one_by_one(seqs, questions, answers, t, starts=None, **options):
    """The (B, T) rows from per-sequence token_weights (weight 1 past the end / no answer)."""
    dtype = np.asarray(seqs[0]).dtype
    out = np.ones((len(seqs), t), dtype=dtype)
    for b, (a, q, ans) in enumerate(zip(seqs, questions, answers)):
        if ans is None:
            continue
        w = flowtracer.token_weights(a, q, ans, **options)
        start = q[1] if starts is None else starts[b]
        row = w[start : start + t]
        out[b, : len(row)] = row
    return out


def batch_case(dtype=np.float64):
    lens = [9, 14, 6, 14, 11]
    seqs = [causal(n, seed, dtype) for seed, n in enumerate(lens)]
    questions = [(0, 3), (0, 5), (0, 2), (1, 4), (0, 4)]
    answers = [(7, 9), (12, 13), (5, 6), None, (9, 11)]
    return lens, seqs, questions, answers


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_list_equals_one_by_one(dtype):
    lens, seqs, questions, answers = batch_case(dtype)
    w = flowtracer.score_batch(seqs, questions, answers)
    t = max(n - q[1] for n, q in zip(lens, questions))
    assert w.shape == (5, t) and w.dtype == dtype
    assert np.array_equal(w, one_by_one(seqs, questions, answers, t))
    assert np.all(w[3] == 1.0)  # no answer: weight 1
    # options reach every sequence
    w2 = flowtracer.score_batch(seqs, questions, answers, gamma_flow=2.0, rho=0.5)
    assert np.array_equal(w2, one_by_one(seqs, questions, answers, t, gamma_flow=2.0, rho=0.5))


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_with_mask_equals_one_by_one(side):
    lens, seqs, questions, answers = batch_case()
    n = max(lens)
    padded = np.full((5, n, n), np.nan)  # padding is never read
    mask = np.zeros((5, n), dtype=np.int64)
    for b, (a, m) in enumerate(zip(seqs, lens)):
        o = n - m if side == "left" else 0
        padded[b, o : o + m, o : o + m] = a
        mask[b, o : o + m] = 1
    w = flowtracer.score_batch(padded, questions, answers, attention_mask=mask)
    t = max(m - q[1] for m, q in zip(lens, questions))
    assert np.array_equal(w, one_by_one(seqs, questions, answers, t))
    # a boolean mask, an explicit completion layout
    starts = [q[1] + 1 for q in questions]
    w = flowtracer.score_batch(
        padded, questions, answers, attention_mask=mask.astype(bool), completion_start=starts, completion_length=4
    )
    assert np.array_equal(w, one_by_one(seqs, questions, answers, 4, starts))


def test_padded_per_layer_equals_one_by_one():
    lens, _, questions, answers = batch_case()
    n, layers, heads = max(lens), 3, 2
    per_seq = [np.stack([causal(m, 10 * b + l, heads=heads) for l in range(layers)]) for b, m in enumerate(lens)]
    padded = np.zeros((5, layers, heads, n, n))
    mask = np.zeros((5, n))
    for b, (x, m) in enumerate(zip(per_seq, lens)):
        padded[b, :, :, n - m :, n - m :] = x
        mask[b, n - m :] = 1
    for sel in ["middle", "all", "0,2"]:
        w = flowtracer.score_batch(padded, questions, answers, attention_mask=mask, layers=sel)
        t = max(m - q[1] for m, q in zip(lens, questions))
        assert np.array_equal(w, one_by_one(per_seq, questions, answers, t, layers=sel))


def test_unpadded_array_and_cu_seqlens_equal_one_by_one():
    n = 10
    seqs = [causal(n, s) for s in range(4)]
    questions = [(0, 3)] * 4
    answers = [(8, 10), (9, 10), None, (5, 7)]
    expect = one_by_one(seqs, questions, answers, 7)
    assert np.array_equal(flowtracer.score_batch(np.stack(seqs), questions, answers), expect)
    lens, _, questions, answers = batch_case()
    _, seqs, _, _ = batch_case()
    cu = np.concatenate([[0], np.cumsum(lens)])
    t = max(m - q[1] for m, q in zip(lens, questions))
    expect = one_by_one(seqs, questions, answers, t)
    dense = np.concatenate([a.ravel() for a in seqs])
    assert np.array_equal(flowtracer.score_batch(dense, questions, answers, cu_seqlens=cu), expect)
    tri = np.concatenate([packed(a) for a in seqs])
    assert np.array_equal(flowtracer.score_batch(tri, questions, answers, cu_seqlens=cu, packed=True), expect)


def test_batch_spans_as_lists_and_responses():
    lens, seqs, questions, answers = batch_case()
    answers = [None if a is None else list(range(*a)) for a in answers]
    responses = [None if a is None else list(range(q[1], a[-1] + 1)) for q, a in zip(questions, answers)]
    w = flowtracer.score_batch(seqs, questions, answers, responses)
    for b in range(5):
        if answers[b] is None:
            continue
        expect = flowtracer.token_weights(seqs[b], questions[b], answers[b], responses[b])
        row = expect[questions[b][1] :]
        assert np.array_equal(w[b, : len(row)], row)


def test_trl_layout_prompt_left_padded_completion_right_padded():
    """TRL concatenates left-padded prompts and right-padded completions: each row's tokens
    are one run in the middle. Spans are in the unpadded sequence; with completion_length
    = the completion width, column j is completion token j, as TRL's completion_mask."""
    prompt_lens, completion_lens = [3, 5, 4], [6, 2, 4]
    p_width, c_width = max(prompt_lens), max(completion_lens)
    n = p_width + c_width
    seqs = [causal(p + c, 20 + i) for i, (p, c) in enumerate(zip(prompt_lens, completion_lens))]
    padded = np.zeros((3, n, n))
    mask = np.zeros((3, n), dtype=np.int64)
    for b, (a, p, c) in enumerate(zip(seqs, prompt_lens, completion_lens)):
        o = p_width - p  # left padding of the prompt
        padded[b, o : o + p + c, o : o + p + c] = a
        mask[b, o : o + p + c] = 1
    questions = [(0, p) for p in prompt_lens]
    answers = [(p + c - 1, p + c) for p, c in zip(prompt_lens, completion_lens)]
    w = flowtracer.score_batch(padded, questions, answers, attention_mask=mask, completion_length=c_width)
    assert w.shape == (3, c_width)
    assert np.array_equal(w, one_by_one(seqs, questions, answers, c_width))
    for b, c in enumerate(completion_lens):
        assert np.all(w[b, c:] == 1.0)  # completion padding


def test_on_error_ones_and_details():
    lens, seqs, questions, answers = batch_case()
    t = max(n - q[1] for n, q in zip(lens, questions))
    expect = one_by_one(seqs, questions, answers, t)
    bad = [s.copy() for s in seqs]
    bad[1][5, 2] = np.nan
    bad[4][3, 0] = -1.0
    answers_bad = list(answers)
    answers_bad[2] = (5, 9)  # out of the sequence's 6 tokens
    with pytest.raises(flowtracer.Error) as info:
        flowtracer.score_batch(bad, questions, answers_bad)
    assert (info.value.kind, info.value.sequence) == ("NonFinite", 1)  # the lowest index
    w, details = flowtracer.score_batch(bad, questions, answers_bad, on_error="ones", return_details=True)
    assert details["status"] == ["scored", "NonFinite", "SpanOutOfRange", "no_answer", "Negative"]
    for b in [1, 2, 3, 4]:
        assert np.all(w[b] == 1.0)
    assert np.array_equal(w[0], expect[0])
    errors = details["errors"]
    assert errors[0] is None and errors[3] is None
    assert isinstance(errors[1], flowtracer.Error) and (errors[1].sequence, errors[1].row, errors[1].col) == (1, 5, 2)
    assert (errors[2].kind, errors[2].span, errors[2].n) == ("SpanOutOfRange", "answer", 6)
    assert (errors[4].row, errors[4].col, errors[4].value) == (3, 0, -1.0)
    mass, sources = details["answer_mass"], details["num_sources"]
    assert abs(mass[0] - flowtracer.trace(seqs[0], questions[0], answers[0]).answer_mass) == 0
    assert np.isnan(mass[1:]).all() and sources.tolist()[1:] == [0, 0, 0, 0]
    assert sources[0] == flowtracer.trace(seqs[0], questions[0], answers[0]).num_sources
    # details without failures; the default raises nothing on good input
    w2, d2 = flowtracer.score_batch(seqs, questions, answers, return_details=True)
    assert np.array_equal(w2, expect) and d2["status"][3] == "no_answer"
    with pytest.raises(flowtracer.Error) as info:
        flowtracer.score_batch(seqs, questions, answers, on_error="skip")
    assert (info.value.kind, info.value.what, info.value.allowed) == ("UnknownName", "on_error", ["raise", "ones"])


def residual_numpy(a, h, answer, threshold):
    """method §5's conservation residual, written out: max |sum_{k>i} W'[i][k] - 1| over live i outside the answer."""
    a = np.tril(np.asarray(a, dtype=np.float64), -1)
    keep = a if threshold <= 0 else np.where(a >= threshold, a, 0.0)
    out = 0.0
    for i in range(len(h)):
        if h[i] > 0 and not (answer[0] <= i < answer[1]):
            out = max(out, abs(float(keep[i + 1 :, i] @ h[i + 1 :]) / h[i] - 1.0))
    return out


def test_details_conservation_residual_is_the_cores():
    """details["conservation_residual"]: the core's rounding measure per scored sequence, NaN otherwise."""
    seqs = [causal(n, seed) for seed, n in enumerate((6, 9, 12))]
    questions, answers = [(0, 2), (0, 3), (0, 2)], [(5, 6), None, (10, 12)]
    _, details = flowtracer.score_batch(seqs, questions, answers, return_details=True)
    res = details["conservation_residual"]
    assert np.isnan(res[1]) and details["status"][1] == "no_answer"
    threshold = flowtracer.defaults()["edge_threshold"]
    for b in (0, 2):
        h = flowtracer.trace(seqs[b], questions[b], answers[b]).reach
        assert 0.0 <= res[b] <= 1e-12
        assert abs(res[b] - residual_numpy(seqs[b], h, answers[b], threshold)) <= 1e-12
