"""Scoring what a :class:`~flowtracer.trl.capture.QkCapture` captured: ``(B, T)`` weights and shaped advantages.

Framework-neutral (numpy in, numpy out), so the same two calls serve TRL's trainer and a verl
worker: :func:`score_captured` turns the captured ``Ā`` of a padded batch into weights
aligned to completion tokens, and :func:`shape_with_weights` multiplies the trainer's
``(B,)`` advantages into ``(B, T)`` by the core's rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import flowtracer

from .capture import QkCapture
from .config import FlowTracerConfig


def score_captured(
    capture: QkCapture,
    attention_mask: np.ndarray,
    questions: list[Any],
    answers: list[Any],
    responses: list[Any] | None,
    *,
    completion_start: list[int],
    completion_length: int,
    config: FlowTracerConfig,
) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """``(B, T)`` weights, each sequence's status, and ``score_batch``'s details.

    ``attention_mask`` is the ``(B, N)`` mask of the captured forward (TRL: prompt mask then
    completion mask); spans are in each sequence's own coordinates (``None`` answer: no
    answer, weight 1). A sequence whose capture failed (non-finite Q/K, ...) or that the
    core rejects gets weight 1; its status is the error's ``kind`` (``"scored"`` and
    ``"no_answer"`` otherwise). Options: the config's scoring options (``layers`` was applied
    at capture).
    """
    attention, capture_errors = capture.result()
    answers = list(answers)
    for b, e in enumerate(capture_errors):
        if e is not None:
            answers[b] = None
    opts = config.scoring_options()
    del opts["layers"]
    weights, details = flowtracer.score_batch(
        attention,
        questions,
        answers,
        responses,
        attention_mask=np.asarray(attention_mask),
        completion_start=completion_start,
        completion_length=completion_length,
        on_error="ones",
        return_details=True,
        **opts,
    )
    status = list(details["status"])
    for b, e in enumerate(capture_errors):
        if e is not None:
            status[b] = e.kind
    details = dict(details, attention=attention, capture_errors=capture_errors)
    return weights, status, details


def shape_with_weights(advantages: np.ndarray, weights: np.ndarray, apply_to: str) -> np.ndarray:
    """``(B, T)`` advantages from a trainer's ``(B,)`` ones and ``(B, T)`` weights, by the core's rule.

    The core's ``shape_advantages`` forms group advantages from rewards; here the advantages
    are the trainer's. Each ``A_b`` is handed to it as the group ``(A_b, -A_b)`` with
    ``scale_rewards="none"`` (its advantages are then exactly ``A_b`` and ``-A_b``), so
    ``apply_to`` is applied by the core, not restated.

    >>> import numpy as np
    >>> from flowtracer.trl import shape_with_weights
    >>> w = np.array([[1.5, 1.0], [1.5, 1.0]])
    >>> shape_with_weights(np.array([2.0, -2.0]), w, "nonnegative_only").tolist()
    [[3.0, 2.0], [-2.0, -2.0]]
    """
    a = np.asarray(advantages, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    rewards = np.stack([a, -a], axis=1).reshape(-1)
    doubled = np.repeat(w, 2, axis=0)
    shaped = flowtracer.shape_advantages(rewards, 2, doubled, scale_rewards="none", apply_to=apply_to)
    return shaped[0::2]
