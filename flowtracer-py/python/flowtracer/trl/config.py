"""`FlowTracerConfig`: the scoring options of the core plus what TRL needs (answer marker, spans).

Every option the core has keeps the core's name and default: the defaults are read from
:func:`flowtracer.defaults` when the dataclass is defined, never restated here.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import flowtracer

_D = flowtracer.defaults()

#: Options of the core that only make sense where flowtracer forms the group advantages
#: itself (``flowtracer.shape_advantages``). In TRL the trainer forms them (its
#: ``GRPOConfig.scale_rewards``), and flowtracer multiplies TRL's ``(B,)`` advantages into
#: ``(B, T)``; these are therefore refused, with the TRL option to use instead.
TRL_OWNED_OPTIONS: dict[str, str] = {
    "scale_rewards": "GRPOConfig.scale_rewards",
    "advantage_eps": "GRPOConfig (TRL adds 1e-4 to the group std itself)",
}

#: The answer marker ``\\boxed{...}``: the content of the last ``\\boxed{`` whose braces close.
BOXED = "\\boxed{}"


@dataclass
class FlowTracerConfig:
    """How :class:`flowtracer.trl.FlowTracerGRPOTrainer` scores completions.

    The first group of fields are the core's scoring options, with its names and defaults
    (:func:`flowtracer.defaults`; method §2, §9, §13, §15). The rest say where the question
    and the answer are and where Q/K are turned into ``Ā``.

    - ``answer_marker``: how the answer is found in a completion's text: a ``(open, close)``
      tag pair (default ``("<answer>", "</answer>")``, the answer is the text between them),
      :data:`BOXED` (``"\\\\boxed{}"``, the content of a ``\\boxed{...}`` with balanced braces),
      or a regular expression (a ``str`` or compiled ``re.Pattern``; its group 1 if it has
      groups, else the whole match). The **last complete** match counts; its characters are
      mapped to tokens through the tokenizer's offsets (every token overlapping them). No
      match: the completion keeps weight 1 and counts in ``flow/no_answer_frac``.
    - ``question_column``: a dataset column holding each example's question span as
      ``(start, stop)`` in the tokens of its unpadded prompt (the problem statement inside a
      chat template, say). Default ``None``: the prompt's non-padding tokens.
    - ``score_device``: where ``Ā`` is formed from Q/K: ``None`` (default) where the model
      runs (CUDA: torch row blocks on the device; CPU: the core's Q/K stage), or a torch
      device string to move each layer's Q/K there first.
    - ``block_bytes``: the scratch of the torch row blocks (rows x keys x heads x 4 bytes),
      default 64 MiB.

    >>> from flowtracer.trl import FlowTracerConfig
    >>> c = FlowTracerConfig(rho=0.2)
    >>> c.rho, c.gamma_flow, c.layers, c.scoring_options()["rho"]
    (0.2, 1.5, 'middle', 0.2)
    """

    rho: float = _D["rho"]
    gamma_flow: float = _D["gamma_flow"]
    apply_to: str = _D["apply_to"]
    mix: float = _D["mix"]
    normalize_mean: bool = _D["normalize_mean"]
    select: str = _D["select"]
    answer_mode: str = _D["answer_mode"]
    edge_threshold: float = _D["edge_threshold"]
    row_tolerance: float = _D["row_tolerance"]
    layers: Any = _D["layers"]
    answer_marker: Any = ("<answer>", "</answer>")
    question_column: str | None = None
    score_device: str | None = None
    block_bytes: int = 64 << 20
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.extra:
            if name in TRL_OWNED_OPTIONS:
                raise flowtracer_error(
                    "InvalidConfig",
                    f"option {name!r} needs (B,) advantages formed by flowtracer; in TRL the "
                    f"trainer forms them: set {TRL_OWNED_OPTIONS[name]} instead",
                    field=name,
                )
            raise flowtracer_error(
                "UnknownName",
                f"unknown FlowTracerConfig option {name!r}; allowed: {sorted(_fields())}",
                given=name,
                allowed=sorted(_fields()),
            )
        if self.block_bytes < 1:
            raise flowtracer_error("InvalidConfig", "block_bytes must be >= 1", field="block_bytes")
        compile_marker(self.answer_marker)
        # The core validates the scoring options (names, ranges) on a one-token trace.
        flowtracer.trace([[1.0, 0.0], [0.5, 0.5]], (0, 1), (1, 2), **self._scoring_without_layers())

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> FlowTracerConfig:
        """A config from a dict; unknown or TRL-owned names raise :class:`flowtracer.Error`."""
        known = {k: v for k, v in options.items() if k in _fields()}
        return cls(**known, extra={k: v for k, v in options.items() if k not in _fields()})

    def _scoring_without_layers(self) -> dict[str, Any]:
        opts = self.scoring_options()
        del opts["layers"]
        return opts

    def scoring_options(self) -> dict[str, Any]:
        """The core's scoring options (:data:`flowtracer.SCORING_OPTIONS`) as keyword arguments."""
        return {name: getattr(self, name) for name in flowtracer.SCORING_OPTIONS}


def _fields() -> set[str]:
    return {f.name for f in dataclasses.fields(FlowTracerConfig)} - {"extra"}


def flowtracer_error(kind: str, message: str, **attrs: Any) -> flowtracer.Error:
    """A :class:`flowtracer.Error` of ``kind`` with the binding's attributes (the others None)."""
    err = flowtracer.Error(message)
    for name in flowtracer._native.ERROR_ATTRIBUTES:
        setattr(err, name, None)
    err.kind = kind
    for name, value in attrs.items():
        setattr(err, name, value)
    return err


class _Marker:
    """A compiled answer marker: :meth:`last` gives the character span of the last match."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.pattern: re.Pattern[str] | None = None
        self.tags: tuple[str, str] | None = None
        if isinstance(spec, tuple):
            if len(spec) != 2 or not all(isinstance(s, str) and s for s in spec):
                raise flowtracer_error(
                    "InvalidConfig", "answer_marker tag pair must be two non-empty strings", field="answer_marker"
                )
            self.tags = spec
        elif spec == BOXED:
            pass
        elif isinstance(spec, re.Pattern):
            self.pattern = spec
        elif isinstance(spec, str) and spec:
            try:
                self.pattern = re.compile(spec, flags=re.S)
            except re.error as e:
                raise flowtracer_error(
                    "InvalidConfig", f"answer_marker is not a valid regex: {e}", field="answer_marker"
                ) from None
        else:
            raise flowtracer_error(
                "InvalidConfig",
                "answer_marker must be a (open, close) tag pair, '\\\\boxed{}' or a regex",
                field="answer_marker",
            )

    def last(self, text: str) -> tuple[int, int] | None:
        """The character span ``[start, stop)`` of the answer in ``text``: its last complete match."""
        if self.tags is not None:
            open_, close = self.tags
            end = text.rfind(close)
            while end != -1:
                start = text.rfind(open_, 0, end)
                if start != -1:
                    return (start + len(open_), end)
                end = text.rfind(close, 0, end)
            return None
        if self.pattern is not None:
            found = None
            for m in self.pattern.finditer(text):
                found = m.span(1) if m.re.groups else m.span()
            return found
        return _last_boxed(text)


def _last_boxed(text: str) -> tuple[int, int] | None:
    key = "\\boxed{"
    start = text.rfind(key)
    while start != -1:
        depth, i = 1, start + len(key)
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return (start + len(key), i - 1)
        start = text.rfind(key, 0, start)
    return None


def compile_marker(spec: Any) -> _Marker:
    """The answer marker of a :class:`FlowTracerConfig` (``answer_marker``), checked."""
    return _Marker(spec)
