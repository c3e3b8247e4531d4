"""The AttentionInterface capture (flowtracer.trl.capture) and the span finding (flowtracer.trl.spans).

The wrapper leaves the model's outputs bit-identical; the capture's Ā is the same whether
the core (CPU default) or the torch row blocks form it; bf16 models work; masks the capture
cannot express are refused; answers are the last complete match, mapped through offsets.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from tiny_llama import char_tokenizer, tiny_llama

import flowtracer
from flowtracer.trl import QkCapture, register
from flowtracer.trl.qk_torch import CONFORMANCE_ATOL, CONFORMANCE_RTOL
from flowtracer.trl.spans import answer_tokens, batch_spans, token_offsets

TEXTS = ["12+34=46 so <answer>46</answer>", "7*8=56, <answer>5</answer><answer>56</answer>"]


def test_importing_flowtracer_does_not_import_torch():
    code = "import sys, flowtracer; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_wrapper_outputs_are_bit_identical():
    tok = char_tokenizer()
    plain = tiny_llama(tok)
    wrapped = tiny_llama(tok, attn=register("sdpa"))
    batch = tok(TEXTS, padding=True, return_tensors="pt")  # left padding
    capture = QkCapture(plain.config.num_hidden_layers)
    with torch.no_grad():
        want = plain(**batch).logits
        with capture:
            got = wrapped(**batch).logits
    assert torch.equal(got, want)
    a, errors = capture.result()
    n = batch["input_ids"].shape[1]
    assert a.shape == (2, n, n) and errors == [None, None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_core_and_torch_backends_agree_in_the_hook(dtype):
    tok = char_tokenizer()
    model = tiny_llama(tok, attn=register("sdpa"), dtype=dtype)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    results = []
    for backend in ("auto", "torch"):
        capture = QkCapture(model.config.num_hidden_layers, backend=backend, block_bytes=1 << 12)
        with torch.no_grad(), capture:
            model(**batch)
        results.append(capture.result())
    (a_core, e_core), (a_torch, e_torch) = results
    assert e_core == [None, None] and e_torch == [None, None]
    mask = batch["attention_mask"].numpy().astype(bool)
    for b in range(2):
        live = np.ix_(mask[b], mask[b])
        np.testing.assert_allclose(a_torch[b][live], a_core[b][live], rtol=CONFORMANCE_RTOL, atol=CONFORMANCE_ATOL)
        assert np.allclose(a_core[b][live].sum(axis=1), 1, atol=1e-5)


def test_packed_sequences_are_refused():
    tok = char_tokenizer()
    model = tiny_llama(tok, attn=register("sdpa"))
    ids = torch.tensor([tok("12+34=46" + "7*8=56").input_ids])
    positions = torch.tensor([list(range(8)) + list(range(6))])  # two sequences packed in one row
    with pytest.raises(flowtracer.Error) as e, torch.no_grad(), QkCapture(6):
        model(input_ids=ids, position_ids=positions, use_cache=False)  # packing is detected without a cache
    assert e.value.kind == "BadAttentionMask"


def test_a_nonfinite_query_is_that_sequences_error_only():
    tok = char_tokenizer()
    model = tiny_llama(tok, attn=register("sdpa"))
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    capture = QkCapture(6, backend="torch")
    layer = model.model.layers[2].self_attn
    hook = layer.q_proj.register_forward_hook(lambda m, i, out: out.index_fill(0, torch.tensor([1]), float("nan")))
    try:
        with torch.no_grad(), capture:
            model(**batch)
    finally:
        hook.remove()
    _, errors = capture.result()
    assert errors[0] is None
    assert errors[1].kind == "NonFiniteInput" and errors[1].tensor == "query" and errors[1].layer == 2
    assert errors[1].sequence == 1 and (errors[1].head, errors[1].row, errors[1].col) == (0, 0, 0)


@pytest.mark.parametrize(
    "marker,text,want",
    [
        (("<answer>", "</answer>"), "a <answer>1</answer> b <answer>23</answer>", "23"),
        (("<answer>", "</answer>"), "a <answer>1</answer> b <answer>23", "1"),  # last *complete*
        (("<answer>", "</answer>"), "no tags here", None),
        ("\\boxed{}", "x \\boxed{1} y \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{}", "x \\boxed{1} y \\boxed{\\frac{1}{2}", "1"),
        (r"answer: (\d+)", "answer: 3, answer: 45.", "45"),
        (r"\d+", "7 then 89", "89"),
    ],
)
def test_answer_marker_last_complete_match(marker, text, want):
    offsets = [(i, i + 1) for i in range(len(text))]
    span = answer_tokens(marker, text, offsets)
    assert (None if span is None else text[span[0] : span[1]]) == want


def test_offsets_fall_back_to_prefix_decoding():
    tok = char_tokenizer()
    ids = tok("ab").input_ids + [tok.unk_token_id] + tok("c<answer>9</answer>").input_ids  # [UNK] does not round-trip
    text, offsets = token_offsets(tok, ids)
    assert text == "ab[UNK]c<answer>9</answer>"
    assert offsets[2] == (2, 7) and offsets[3] == (7, 8)
    assert answer_tokens(("<answer>", "</answer>"), text, offsets) == (12, 13)


def test_batch_spans_in_sequence_coordinates():
    tok = char_tokenizer()
    prompts = tok(["1+2=", "10+20="], padding=True, return_tensors="np")
    tok.padding_side = "right"  # TRL's completions
    completions = tok(["3 <answer>3</answer>", "<answer>30</answer>"], padding=True, return_tensors="np")
    spans = batch_spans(
        tok, ("<answer>", "</answer>"), prompts["attention_mask"], completions["input_ids"],
        completions["attention_mask"], questions=[None, (0, 2)],
    )
    assert spans["question"] == [(0, 4), (0, 2)]
    assert spans["completion_start"] == [4, 6]
    assert spans["answer"] == [(4 + 10, 4 + 11), (6 + 8, 6 + 10)]
    assert spans["response"] == [(4, 4 + 20), (6, 6 + 19)]
    with pytest.raises(flowtracer.Error) as e:
        batch_spans(tok, ("<answer>", "</answer>"), prompts["attention_mask"], completions["input_ids"],
                    completions["attention_mask"], questions=[(0, 9), None])
    assert e.value.kind == "SpanOutOfRange" and e.value.sequence == 0 and e.value.span == "question"
