"""FlowTracer token-level credit for GRPO, from Python.

The Rust core's front door for numpy arrays: trace one sequence's aggregated attention
(reach, flow, throughput), turn it into per-token advantage weights, shape a group's
advantages, or score a whole batch into the ``(B, T)`` weights TRL and verl multiply their
advantages by. Options have the core's names and defaults (:func:`defaults`); every error is
a :class:`flowtracer.Error`, a ``ValueError``.

Attention is float32 or float64 (anything ``numpy.asarray`` takes, or a torch tensor): a
C-contiguous array is read in place (zero-copy), any other is copied in C order. torch CPU
tensors go through DLPack (zero-copy as well); a CUDA tensor's ``Ā`` is copied to the host
with ``.cpu()``. Models that never form attention probabilities (FlashAttention, SDPA) are
scored from their queries and keys by :func:`score_qk` and :class:`QkAccumulator`
(float32, float64, float16 or bfloat16). Row ``k`` of ``Ā`` is query token
``k`` over keys ``0..=k`` (entries above the diagonal are ignored). Spans are ``(start, stop)``
tuples, ``range`` objects, or ascending integer positions (a list or an integer array).
The GIL is released while the core computes.

>>> import numpy as np, flowtracer
>>> a = np.array([[1.0, 0.0, 0.0, 0.0, 0.0],
...               [0.5, 0.5, 0.0, 0.0, 0.0],
...               [0.3, 0.5, 0.2, 0.0, 0.0],
...               [0.1, 0.2, 0.3, 0.4, 0.0],
...               [0.1, 0.1, 0.6, 0.1, 0.1]])      # method §12's worked example
>>> w = flowtracer.token_weights(a, question=(0, 2), answer=(4, 5))
>>> w.tolist()                                     # gamma_flow 1.5 on the top 40%
[1.0, 1.0, 1.5, 1.0, 1.5]
>>> flowtracer.shape_advantages([1.0, 0.0], 2, np.stack([w, w])).shape
(2, 5)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _native, _torch
from ._native import METRICS, Error, Trace
from .qk import QK_SCORING_OPTIONS, QkAccumulator, qk_defaults, score_qk

__all__ = [
    "Error",
    "METRICS",
    "QK_SCORING_OPTIONS",
    "QkAccumulator",
    "Trace",
    "choices",
    "defaults",
    "qk_defaults",
    "score_batch",
    "score_qk",
    "shape_advantages",
    "token_weights",
    "trace",
]

#: The options of :func:`trace`, :func:`token_weights` and :func:`score_batch`.
SCORING_OPTIONS: tuple[str, ...] = _native.SCORING_OPTIONS
#: The options of :func:`shape_advantages`.
SHAPING_OPTIONS: tuple[str, ...] = _native.SHAPING_OPTIONS
#: The options of :meth:`Trace.backbone`.
BACKBONE_OPTIONS: tuple[str, ...] = _native.BACKBONE_OPTIONS


def defaults() -> dict[str, Any]:
    """The core's default of every option, by name (enum options by their names).

    These are the paper's settings, read from the Rust core (``Config::default()``,
    ``LayerSelection::default()``, ``BackboneConfig::default()``); an option left out of a
    call takes this value.

    >>> import flowtracer
    >>> d = flowtracer.defaults()
    >>> d["rho"], d["gamma_flow"], d["apply_to"], d["answer_mode"], d["layers"]
    (0.4, 1.5, 'both', 'absorbing', 'middle')
    """
    return _native.defaults()


def choices() -> dict[str, list[str]]:
    """The names each enum option accepts (the core's ``FromStr`` names).

    >>> import flowtracer
    >>> flowtracer.choices()["scale_rewards"]
    ['group', 'batch', 'none']
    """
    return _native.choices()


def trace(attention: Any, question: Any, answer: Any, response: Any = None, **options: Any) -> Trace:
    """Traces one sequence: reach, flow and throughput of every token (method §4–7).

    ``attention`` is the aggregated attention ``Ā`` as ``[N, N]`` (or its packed lower
    triangle, 1-D of length ``N (N + 1) / 2``), or per-head ``[H, N, N]`` / per-layer
    ``[L, H, N, N]`` probabilities, averaged over every head and the layers chosen by the
    ``layers`` option (default ``"middle"``; also ``"all"``, ``"2..6"``, ``"1,3,5"``,
    ``"spaced:3"``, a ``range`` or a list). ``question`` is where flow is injected,
    ``answer`` where it is absorbed, ``response`` the tokens whose weights are shaped
    (default: every token after the question). Options (:data:`SCORING_OPTIONS`):
    ``answer_mode``, ``edge_threshold``, ``row_tolerance``, ``rho``, ``gamma_flow``,
    ``apply_to``, ``mix``, ``normalize_mean``, ``select``, ``layers``.

    Raises :class:`flowtracer.Error` for a bad shape, dtype or span, non-finite or negative
    attention (with ``row``/``col``, and ``layer``/``head`` for per-layer input), a row heavier
    than ``1 + row_tolerance``, no source mass, or an unknown option.

    >>> import flowtracer
    >>> a = [[1.0, 0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0, 0.0],
    ...      [0.3, 0.5, 0.2, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4, 0.0],
    ...      [0.1, 0.1, 0.6, 0.1, 0.1]]
    >>> t = flowtracer.trace(a, (0, 2), [4])
    >>> round(float(t.flow[1]) * 1033, 9), t.num_sources   # f(1) = 734/1033
    (734.0, 2)
    >>> t.token_weights().tolist()
    [1.0, 1.0, 1.5, 1.0, 1.5]
    """
    return _native.trace(
        _torch.host(attention), _torch.span(question), _torch.span(answer), _torch.span(response), options
    )


def token_weights(attention: Any, question: Any, answer: Any, response: Any = None, **options: Any) -> np.ndarray:
    """Per-token advantage weights of one sequence, shape ``(N,)``: ``trace(...).token_weights()``.

    ``gamma_flow`` (default 1.5) on the top-``rho`` (default 40%) response tokens by
    throughput, 1 elsewhere (method §9). Arguments and errors as :func:`trace`.

    >>> import flowtracer
    >>> a = [[1.0, 0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0, 0.0],
    ...      [0.3, 0.5, 0.2, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4, 0.0],
    ...      [0.1, 0.1, 0.6, 0.1, 0.1]]
    >>> flowtracer.token_weights(a, (0, 2), (4, 5), gamma_flow=2.0).tolist()
    [1.0, 1.0, 2.0, 1.0, 2.0]
    """
    return trace(attention, question, answer, response, **options).token_weights()


def shape_advantages(rewards: Any, num_generations: int, weights: Any, **options: Any) -> np.ndarray:
    """Shaped per-token advantages of whole groups, shape ``(B, T)`` like ``weights``.

    The group advantages of ``rewards`` (``(B,)``, groups of ``num_generations`` consecutive
    responses; ``scale_rewards``, ``advantage_eps``) spread over each response's weights
    (``(B, T)``, weight 1 at padding) as ``apply_to``, ``mix`` and ``normalize_mean`` say
    (method §9–10). Options: :data:`SHAPING_OPTIONS`. The result has the weights' dtype.

    >>> import numpy as np, flowtracer
    >>> w = np.array([[1.0, 1.5, 1.5], [1.0, 1.0, 1.0]])
    >>> adv = flowtracer.shape_advantages([1.0, 0.0], 2, w)
    >>> a0 = 0.5 / (0.5 ** 0.5 + 1e-4)     # (1 - 0.5) / (sample std + eps)
    >>> np.allclose(adv, [[a0, 1.5 * a0, 1.5 * a0], [-a0, -a0, -a0]], rtol=1e-12)
    True
    """
    return _native.shape_advantages(_torch.host(rewards, "rewards"), num_generations, _torch.host(weights, "weights"), options)


def score_batch(
    attention: Any,
    questions: Any,
    answers: Any,
    responses: Any = None,
    *,
    attention_mask: Any = None,
    cu_seqlens: Any = None,
    completion_start: Any = None,
    completion_length: int | None = None,
    packed: bool = False,
    on_error: str = "raise",
    return_details: bool = False,
    **options: Any,
) -> Any:
    """Scores a batch of sequences into ``(B, T)`` weights aligned to completion tokens.

    ``attention`` is one of:

    - a list of per-sequence arrays, each in any form :func:`trace` takes;
    - one padded array ``[B, N, N]`` (or per-head ``[B, H, N, N]``, per-layer
      ``[B, L, H, N, N]``) with ``attention_mask`` ``(B, N)`` (1 for tokens, 0 for padding;
      each row's ones one run: left, right, or both, as TRL's left-padded prompt followed by
      its right-padded completion) or without one (every sequence N tokens long);
    - one 1-D buffer of the sequences' dense ``N_b x N_b`` matrices back to back (their packed
      triangles with ``packed=True``) cut by ``cu_seqlens`` (``B + 1`` token offsets, from 0).

    ``questions``, ``answers`` and ``responses`` hold one span per sequence, in that
    sequence's own (unpadded) coordinates; an answer of ``None`` means no answer: weight 1.
    Row ``b``, column ``j`` of the result is the weight of token ``completion_start[b] + j``
    (default: the end of the question), 1 past the sequence's end; ``T`` is
    ``completion_length`` or the longest completion. The sequences are traced in parallel
    (the core's ``Tracer::trace_batch``) with the GIL released; options as :func:`trace`.
    The result has the attention's dtype.

    A sequence the core rejects (non-finite attention, a span out of its range, no source
    mass, ...) raises :class:`flowtracer.Error` with its index as ``sequence`` (the lowest
    such index); with ``on_error="ones"`` its row is weight 1 instead (plain GRPO for that
    response, as the Rust trainer does). Malformed arguments (span objects, list lengths, the
    mask; a ``cu_seqlens``, ``completion_start`` or ``completion_length`` entry that is not a
    non-negative integer: kind ``BadBatch``, the argument as ``field``) always raise. With ``return_details=True`` the result is ``(weights, details)``:
    ``details["status"]`` is ``"scored"``, ``"no_answer"`` or the error's ``kind`` per
    sequence, ``details["errors"]`` the :class:`flowtracer.Error` of each failed sequence (else
    None), ``details["answer_mass"]`` (NaN where not scored), ``details["num_sources"]``
    (0 where not scored) and ``details["conservation_residual"]`` (the core's rounding
    measure, method §5; NaN where not scored): what the ``flow/*`` metrics (:data:`METRICS`)
    are computed from.

    >>> import numpy as np, flowtracer
    >>> a = np.array([[1.0, 0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0, 0.0],
    ...               [0.3, 0.5, 0.2, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4, 0.0],
    ...               [0.1, 0.1, 0.6, 0.1, 0.1]])
    >>> padded = np.zeros((2, 6, 6)); padded[0, 1:, 1:] = a; padded[1, :5, :5] = a
    >>> mask = np.array([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])   # left, right padding
    >>> flowtracer.score_batch(padded, [(0, 2), (0, 2)], [(4, 5), None],
    ...                        attention_mask=mask).tolist()
    [[1.5, 1.0, 1.5], [1.0, 1.0, 1.0]]
    >>> bad = padded.copy(); bad[0, 3, 2] = np.nan
    >>> w, details = flowtracer.score_batch(bad, [(0, 2), (0, 2)], [(4, 5), None],
    ...                                     attention_mask=mask, on_error="ones",
    ...                                     return_details=True)
    >>> w.tolist(), details["status"]
    ([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], ['NonFinite', 'no_answer'])
    """
    return _native.score_batch(
        _torch.host_list(attention, "attention"),
        _torch.spans(questions),
        _torch.spans(answers),
        None if responses is None else _torch.spans(responses),
        _torch.host(attention_mask, "attention_mask"),
        _torch.span(cu_seqlens),
        _torch.span(completion_start),
        completion_length,
        packed,
        on_error,
        return_details,
        options,
    )
