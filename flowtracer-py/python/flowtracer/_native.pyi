"""Type stubs of the extension module flowtracer._native (the Rust binding)."""

from collections.abc import Sequence
from typing import Any, Literal, TypedDict

import numpy as np
import numpy.typing as npt

METRICS: tuple[str, ...]
ERROR_ATTRIBUTES: tuple[str, ...]
SCORING_OPTIONS: tuple[str, ...]
SHAPING_OPTIONS: tuple[str, ...]
BACKBONE_OPTIONS: tuple[str, ...]
QK_SCORING_OPTIONS: tuple[str, ...]

_Float = np.float32 | np.float64
_Span = tuple[int, int] | range | list[int] | npt.NDArray[np.integer[Any]]

class Error(ValueError):
    """Every error of flowtracer; the fields an error does not have are None."""

    kind: str
    sequence: int | None
    span: Literal["question", "answer", "response"] | None
    row: int | None
    col: int | None
    layer: int | None
    head: int | None
    index: int | None
    value: float | int | None
    field: str | None
    what: str | None
    given: str | None
    allowed: list[str] | None
    expected: int | None
    actual: int | None
    n: int | None
    range: tuple[int, int] | None
    mass: float | None
    tolerance: float | None
    dtype: str | None
    tensor: Literal["query", "key", "log-sum-exp"] | None
    q_heads: int | None
    kv_heads: int | None
    bytes: int | None

class Backbone(TypedDict):
    path: list[int]
    path_probability: float
    edges: list[tuple[int, int, float]]
    total_edge_flow: float
    hubs: list[int]
    checkpoints: list[int]

class Trace:
    """The result of flowtracer.trace."""

    @property
    def n(self) -> int: ...
    @property
    def dtype(self) -> Literal["float32", "float64"]: ...
    @property
    def reach(self) -> npt.NDArray[_Float]: ...
    @property
    def flow(self) -> npt.NDArray[_Float]: ...
    @property
    def throughput(self) -> npt.NDArray[_Float]: ...
    @property
    def num_sources(self) -> int: ...
    @property
    def answer_mass(self) -> float: ...
    @property
    def question(self) -> tuple[int, int] | list[int]: ...
    @property
    def answer(self) -> tuple[int, int] | list[int]: ...
    @property
    def response(self) -> tuple[int, int] | list[int]: ...
    def token_weights(self) -> npt.NDArray[_Float]: ...
    def backbone(
        self,
        *,
        coverage: float = ...,
        checkpoint_threshold: float = ...,
        rho: float = ...,
    ) -> Backbone: ...

def defaults() -> dict[str, Any]: ...
def choices() -> dict[str, list[str]]: ...
def select_layers(layers: str | range | Sequence[int], num_layers: int) -> list[int]: ...
def trace(
    attention: Any,
    question: _Span,
    answer: _Span,
    response: _Span | None,
    options: dict[str, Any] | None,
) -> Trace: ...
def shape_advantages(
    rewards: Any, num_generations: int, weights: Any, options: dict[str, Any] | None
) -> npt.NDArray[_Float]: ...
def score_batch(
    attention: Any,
    questions: Any,
    answers: Any,
    responses: Any,
    attention_mask: Any,
    cu_seqlens: Any,
    completion_start: Any,
    completion_length: int | None,
    packed: bool,
    on_error: Literal["raise", "ones"],
    return_details: bool,
    options: dict[str, Any] | None,
) -> npt.NDArray[_Float] | tuple[npt.NDArray[_Float], dict[str, Any]]: ...
def qk_defaults() -> dict[str, Any]: ...
def score_qk(
    q: Any,
    k: Any,
    question: _Span,
    answer: _Span,
    response: _Span | None,
    lse: Any,
    key_mask: Any,
    scale: float | None,
    window: int | None,
    logit_softcap: float | None,
    row_tolerance: float | None,
    bf16: bool,
    options: dict[str, Any] | None,
) -> Trace: ...

class QkAccumulator:
    """The binding's accumulator; flowtracer.QkAccumulator (qk.py) subclasses it."""

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
        dtype: Literal["float32", "float64"] | None = None,  # None: float32
    ) -> QkAccumulator: ...
    def add_layer(self, index: int, q: Any, k: Any, lse: Any = None, bf16: bool = False) -> None: ...
    @property
    def layers(self) -> int: ...
    @property
    def shape(self) -> tuple[int, int, int, int]: ...
    @property
    def dtype(self) -> Literal["float32", "float64"]: ...
    @property
    def consumed(self) -> bool: ...
    def finish(
        self, question: _Span, answer: _Span, response: _Span | None = None, options: dict[str, Any] | None = None
    ) -> Trace: ...
    def finish_matrix(self) -> npt.NDArray[_Float]: ...

def _qk_data_ptr(x: Any, bf16: bool = False) -> int: ...
def _data_ptr(attention: Any) -> int: ...
def _batch_data_ptrs(
    attention: Any, attention_mask: Any = None, cu_seqlens: Any = None, packed: bool = False
) -> list[int]: ...
def _core_trace_f64(
    flat: list[float], question: list[int], answer: list[int], response: list[int] | None = None
) -> tuple[list[float], list[float], list[float], list[float]]: ...
def _reference_trace_f64(
    flat: list[float], n: int, question: list[int], answer: list[int]
) -> tuple[list[float], list[float], list[float], int]: ...
def _core_shape_advantages_f64(
    rewards: list[float], num_generations: int, weights: list[float]
) -> list[float]: ...
def _busy(millis: int, release_gil: bool) -> None: ...
def _threads() -> int: ...
def _core_qk_f64(
    q: list[float],
    k: list[float],
    shape: tuple[int, int, int, int, int],
    question: list[int],
    answer: list[int],
    scale: float | None = None,
    window: int | None = None,
) -> tuple[list[float], list[float], list[float]]: ...
def _reference_qk_f64(
    q: list[float], k: list[float], shape: tuple[int, int, int, int, int], scale: float, window: int | None = None
) -> list[float]: ...
def _core_batch_seconds(
    attention: npt.NDArray[np.float32], question: tuple[int, int], answer: tuple[int, int], repeats: int
) -> list[float]: ...
