"""Question, answer and response spans of TRL's padded batches, in each sequence's own coordinates.

TRL lays a batch out as left-padded ``prompt_ids`` followed by right-padded
``completion_ids``; sequence ``b`` (its non-padding tokens) is the prompt's ``P_b`` tokens
then the completion's ``C_b``. Its question defaults to ``(0, P_b)``; its answer is the
tokens whose characters overlap the answer marker's last complete match in the completion's
text (through the tokenizer's offsets); its response is the completion, ``P_b ..P_b + C_b``
(minus tool-output tokens where TRL's ``tool_mask`` is 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .config import compile_marker, flowtracer_error


def token_offsets(tokenizer: Any, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """The text of ``ids`` and each token's character span in it.

    The text is ``tokenizer.decode(ids)``; when re-encoding it with offsets
    (``return_offsets_mapping``) gives back exactly ``ids``, those offsets are used; otherwise
    each token's span comes from decoding growing prefixes (exact, ``O(T²)`` characters).
    """
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) == list(ids):
            return text, [tuple(o) for o in enc["offset_mapping"]]
    except (NotImplementedError, TypeError, KeyError):
        pass
    offsets, prev = [], 0
    for j in range(len(ids)):
        end = len(tokenizer.decode(ids[: j + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False))
        offsets.append((prev, max(prev, end)))
        prev = max(prev, end)
    return text, offsets


def answer_tokens(marker: Any, text: str, offsets: list[tuple[int, int]]) -> tuple[int, int] | None:
    """The tokens ``[start, stop)`` overlapping the marker's last complete match, or None.

    >>> from flowtracer.trl.spans import answer_tokens
    >>> text = "so <answer>42</answer>"
    >>> offsets = [(i, i + 1) for i in range(len(text))]      # one token per character
    >>> answer_tokens(("<answer>", "</answer>"), text, offsets)
    (11, 13)
    """
    m = compile_marker(marker) if not hasattr(marker, "last") else marker
    found = m.last(text)
    if found is None or found[0] >= found[1]:
        return None
    cs, ce = found
    hit = [j for j, (s, e) in enumerate(offsets) if s < ce and e > cs]
    if not hit:
        return None
    return (hit[0], hit[-1] + 1)


def batch_spans(
    tokenizer: Any,
    marker: Any,
    prompt_mask: np.ndarray,
    completion_ids: np.ndarray,
    completion_mask: np.ndarray,
    *,
    questions: list[Any] | None = None,
    tool_mask: np.ndarray | None = None,
) -> dict[str, list[Any]]:
    """Per sequence: ``question``, ``answer`` (None where no match), ``response``, ``completion_start``.

    ``questions[b]``, when given, is ``(start, stop)`` in the unpadded prompt's tokens.
    """
    m = compile_marker(marker)
    out: dict[str, list[Any]] = {"question": [], "answer": [], "response": [], "completion_start": []}
    for b in range(completion_ids.shape[0]):
        p = int(prompt_mask[b].sum())
        c = int(completion_mask[b].sum())
        if questions is not None and questions[b] is not None:
            q0, q1 = (int(x) for x in questions[b])
            if not 0 <= q0 < q1 <= p:
                raise flowtracer_error(
                    "SpanOutOfRange",
                    f"sequence {b}: question span {(q0, q1)} is not inside its {p} prompt tokens",
                    sequence=b,
                    span="question",
                    range=(q0, q1),
                    n=p,
                )
            question: Any = (q0, q1)
        else:
            question = (0, p)
        ids = [int(t) for t in completion_ids[b, :c]]
        ans = None
        if c:
            text, offsets = token_offsets(tokenizer, ids)
            local = answer_tokens(m, text, offsets)
            if local is not None:
                ans = (p + local[0], p + local[1])
        response: Any = (p, p + c)
        if tool_mask is not None:
            keep = [p + j for j in range(c) if tool_mask[b, j]]
            response = keep
            if ans is not None and not any(ans[0] <= t < ans[1] for t in keep):
                ans = None
        if c == 0:
            ans = None
        out["question"].append(question)
        out["answer"].append(ans)
        out["response"].append(response if c else None)
        out["completion_start"].append(p)
    return out
