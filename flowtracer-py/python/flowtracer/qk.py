"""Scoring from post-RoPE queries and keys (method §15): for models that run FlashAttention
or SDPA and never form attention probabilities.

Per layer, ``Q [H_q, N, d]`` and ``K [H_kv, N, d]`` (grouped-query: query head ``h`` uses key
head ``h // (H_q // H_kv)``, as Hugging Face's ``repeat_kv``) give each head's causal softmax
``P = softmax(scale · Q Kᵀ)`` (optionally windowed, soft-capped, with padding keys masked), and
``Ā`` is the mean of ``P`` over every query head and the given layers, formed block by block
by the Rust core (``flowtracer_core::qk``): no per-head ``N × N`` matrix exists, only ``Ā``
(``N²`` values). The passes of :func:`flowtracer.trace` then run on ``Ā``.

Precision: float64 queries and keys are computed in float64 and give a float64 ``Ā`` and
trace; float32, float16 and bfloat16 in float32 (float16 and bfloat16 widened exactly), so
float16/bfloat16 input gives the same ``Ā``, bit for bit, as its float32 upcast. The
exponential has a relative error of at most 1.1e-7 (f32) and 4e-16 (f64).

Complexity: ``O(L · H_q · N_vis · d)`` time, ``N_vis ≈ N² / 2`` visible pairs (``N · w`` with
a window ``w``), parallel over row blocks; memory ``Ā`` plus one layer's keys packed
(``H_kv · N · d``) plus per-thread scratch. The GIL is released throughout.

Validation follows method §15, in order: shapes and configuration, then the spans, then the
first non-finite value (layers ascending; ``Q``, then ``K``, then the log-sum-exp; each in
flat order), then the first bad row (logits that overflow, or a saved log-sum-exp that does
not belong). Every failure is a :class:`flowtracer.Error` with the position as attributes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _native, _torch
from ._native import Trace

#: The options :func:`score_qk` and :meth:`QkAccumulator.finish` take besides their keywords:
#: the scoring options of :func:`flowtracer.trace` less ``layers`` (the input holds the
#: selected layers) and ``row_tolerance`` (here the keyword of the Q/K stage).
QK_SCORING_OPTIONS: tuple[str, ...] = _native.QK_SCORING_OPTIONS


def qk_defaults() -> dict[str, Any]:
    """The core's defaults of the Q/K stage (``QkConfig::default()``).

    ``scale`` None means ``1 / sqrt(d)``, ``window`` None every earlier key, ``logit_softcap``
    None no capping; ``row_tolerance`` is how far from 1 a row of probabilities may sum when a
    log-sum-exp is given.

    >>> import flowtracer
    >>> flowtracer.qk_defaults()
    {'scale': None, 'window': None, 'logit_softcap': None, 'row_tolerance': 0.001}
    """
    return _native.qk_defaults()


def score_qk(
    q: Any,
    k: Any,
    question: Any,
    answer: Any,
    response: Any = None,
    *,
    lse: Any = None,
    key_mask: Any = None,
    scale: float | None = None,
    window: int | None = None,
    logit_softcap: float | None = None,
    row_tolerance: float | None = None,
    **options: Any,
) -> Trace:
    """Traces one sequence from its queries and keys: the :class:`Trace` of :func:`flowtracer.trace`.

    ``q`` is a list (or tuple) with one array per selected layer ``[H_q, N, d]``, or one array
    ``[L, H_q, N, d]``; ``k`` likewise ``[H_kv, N, d]`` (``H_q`` a multiple of ``H_kv``);
    post-RoPE, as the attention kernel receives them. Arrays are float32, float64, float16
    (bfloat16 as torch tensors: numpy has none), numpy arrays or torch CPU tensors, read in
    place when contiguous (bfloat16 too: its 16-bit words are reinterpreted, not converted). ``lse`` is the saved log-sum-exp per layer
    ``[H_q, N]`` (float32, natural log, as FlashAttention returns it) or None (computed);
    with it every row must sum to 1 within ``row_tolerance`` (given, it is also the trace's
    tolerance for the rows of ``Ā``, each a mean of such rows). ``key_mask`` is a length-N
    boolean array (False: a padding key no query attends to) or None. ``scale``, ``window``
    (query ``k`` sees key ``i`` iff ``k - window < i <= k``), ``logit_softcap`` (Gemma 2) and
    ``row_tolerance`` default to the core's (:func:`qk_defaults`). Options: the scoring
    options (:data:`QK_SCORING_OPTIONS`). Layer positions in errors are indices into ``q``.

    >>> import numpy as np, flowtracer
    >>> q = np.ones((1, 3, 1))                        # one layer [H_q = 1, N = 3, d = 1]
    >>> k = np.log([1.0, 2.0, 3.0]).reshape(1, 3, 1)  # row 2 of Ā: 1/6, 2/6, 3/6
    >>> t = flowtracer.score_qk([q], [k], (0, 1), (2, 3), scale=1.0)
    >>> round(float(t.flow[1]), 12), t.dtype
    (0.4, 'float64')
    >>> q[0, 1, 0] = np.nan
    >>> try:
    ...     flowtracer.score_qk([q], [k], (0, 1), (2, 3))
    ... except flowtracer.Error as e:
    ...     print(e.kind, e.tensor, e.layer, e.head, e.row, e.col)
    NonFiniteInput query 0 0 1 0
    """
    q, k, bf16 = _torch.qk_layers(q, k)
    if lse is not None:
        lse = _torch.host_list(lse, "lse")
    return _native.score_qk(
        q,
        k,
        _torch.span(question),
        _torch.span(answer),
        _torch.span(response),
        lse,
        _torch.host(key_mask, "key_mask"),
        scale,
        window,
        logit_softcap,
        row_tolerance,
        bf16,
        options,
    )


class QkAccumulator(_native.QkAccumulator):
    """``Ā`` of one sequence, accumulated one layer's queries and keys at a time.

    For a forward hook that sees one layer at a time: memory stays ``Ā`` (``N²`` values of
    ``dtype``, float32 or float64) however many layers are added. ``q_heads``, ``kv_heads``,
    ``n`` and ``d`` are the shape every layer must have (non-negative integers: a negative,
float, bool or None is a :class:`flowtracer.Error` naming the argument as ``field``, kind
``BadArgument``); ``dtype`` is ``"float32"`` (also for None) or ``"float64"``; ``key_mask``, ``scale``, ``window``,
    ``logit_softcap`` and ``row_tolerance`` as :func:`score_qk`. Shape and dtype errors come
    back from :meth:`add_layer` at once; data errors (non-finite values, a log-sum-exp that
    does not belong) only from :meth:`finish`, in method §15's order whatever order the
    layers came in. :meth:`finish` or :meth:`finish_matrix` consumes the accumulator
    (whether or not it succeeds, once :meth:`finish`'s spans and options parse: a malformed
    argument leaves it as it was): any later call raises ``AccumulatorConsumed``.

    >>> import numpy as np, flowtracer
    >>> acc = flowtracer.QkAccumulator(1, 1, 3, 1, scale=1.0, dtype="float64")
    >>> acc.add_layer(0, np.ones((1, 3, 1)), np.log([1.0, 2.0, 3.0]).reshape(1, 3, 1))
    >>> acc.layers
    1
    >>> (acc.finish_matrix() * 6).round(12).tolist()
    [[6.0, 0.0, 0.0], [2.0, 4.0, 0.0], [1.0, 2.0, 3.0]]
    >>> try:
    ...     acc.finish((0, 1), (2, 3))
    ... except flowtracer.Error as e:
    ...     print(e.kind)
    AccumulatorConsumed
    """

    def __new__(
        cls,
        q_heads: int,
        kv_heads: int,
        n: int,
        d: int,
        *,
        key_mask: Any = None,
        scale: float | None = None,
        window: int | None = None,
        logit_softcap: float | None = None,
        row_tolerance: float | None = None,
        dtype: str | None = "float32",
    ) -> QkAccumulator:
        return super().__new__(
            cls,
            q_heads,
            kv_heads,
            n,
            d,
            key_mask=_torch.host(key_mask, "key_mask"),
            scale=scale,
            window=window,
            logit_softcap=logit_softcap,
            row_tolerance=row_tolerance,
            dtype=dtype,
        )

    def add_layer(self, index: int, q: Any, k: Any, lse: Any = None) -> None:
        """Adds one layer: ``q [H_q, N, d]``, ``k [H_kv, N, d]`` and optionally its saved
        log-sum-exp ``lse [H_q, N]`` (float32); ``index`` is the layer's number, used to
        report positions and to order data errors. Dtypes and devices as :func:`score_qk`.

        >>> import numpy as np, flowtracer
        >>> acc = flowtracer.QkAccumulator(2, 1, 4, 8)
        >>> rng = np.random.default_rng(0)
        >>> for layer in (3, 4):
        ...     acc.add_layer(layer, rng.standard_normal((2, 4, 8), dtype=np.float32),
        ...                   rng.standard_normal((1, 4, 8), dtype=np.float32))
        >>> a = acc.finish_matrix()
        >>> a.shape, a.dtype, bool(np.allclose(a.sum(axis=1), 1.0, rtol=1e-6))
        ((4, 4), dtype('float32'), True)
        """
        q, k, bf16 = _torch.qk_layers(q, k)
        if lse is not None:
            lse = _torch.host(lse, "lse")
        super().add_layer(index, q, k, lse, bf16)

    def finish(self, question: Any, answer: Any, response: Any = None, **options: Any) -> Trace:
        """The :class:`Trace` of the mean ``Ā`` with these spans and options (as
        :func:`score_qk`); consumes the accumulator.

        >>> import numpy as np, flowtracer
        >>> acc = flowtracer.QkAccumulator(1, 1, 3, 1, scale=1.0)
        >>> acc.add_layer(0, np.ones((1, 3, 1), np.float32),
        ...               np.log([1.0, 2.0, 3.0]).reshape(1, 3, 1).astype(np.float32))
        >>> t = acc.finish((0, 1), (2, 3))
        >>> t.dtype, abs(float(t.flow[1]) - 0.4) < 1e-6
        ('float32', True)
        """
        return super().finish(_torch.span(question), _torch.span(answer), _torch.span(response), options)

    def finish_matrix(self) -> np.ndarray:
        """The mean ``Ā`` as an ``(N, N)`` array of ``dtype`` (zeros above the diagonal and
        outside the window); consumes the accumulator. Raises the data errors as :meth:`finish`.

        >>> import numpy as np, flowtracer
        >>> acc = flowtracer.QkAccumulator(1, 1, 2, 1)
        >>> acc.add_layer(0, np.zeros((1, 2, 1)), np.zeros((1, 2, 1)))
        >>> acc.finish_matrix().tolist()
        [[1.0, 0.0], [0.5, 0.5]]
        """
        return super().finish_matrix()
