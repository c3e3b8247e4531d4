"""Q/K capture through transformers' ``AttentionInterface``: ``Ā`` formed inside the hook.

:func:`register` adds an attention implementation (``"flowtracer_sdpa"`` by default) that
calls the original one (``"sdpa"``, ``"flash_attention_2"``, ...) with the very same
arguments, so a model's outputs are bit-identical, and, while a :class:`QkCapture` is active
(``with capture:``), hands the post-RoPE queries and keys (``[B, H, N, d]``, keys before
``repeat_kv``) of the selected layers to an accumulator: layer by layer ``Ā`` grows inside the
hook, so neither all layers' Q/K nor any per-head ``N x N`` is ever held. The mask the model
built is checked to be causal plus key padding (plus the layer's sliding window); packed
sequences or other masks are refused (``flowtracer.Error``), never silently misread.

Where Q/K live decides who forms ``Ā``: CUDA (or any non-CPU) tensors go to the torch row
blocks of :mod:`flowtracer.trl.qk_torch` on that device; CPU tensors to the core's Q/K stage
(:class:`flowtracer.QkAccumulator`, one per sequence) when the binding has it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import torch

import flowtracer

from .config import flowtracer_error
from .qk_torch import DEFAULT_BLOCK_BYTES, TorchQkAccumulator

PREFIX = "flowtracer_"
_ACTIVE = threading.local()


def register(base: str = "sdpa") -> str:
    """Registers ``"flowtracer_" + base`` with transformers and returns that name.

    The new implementation uses ``base``'s attention function and mask function. Load the
    model with ``attn_implementation=register()`` (or call
    ``model.set_attn_implementation(...)``). Registering twice is harmless.

    >>> from flowtracer.trl import capture
    >>> capture.register()
    'flowtracer_sdpa'
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = PREFIX + base
    if name in ALL_ATTENTION_FUNCTIONS:
        return name
    if base not in ALL_ATTENTION_FUNCTIONS or base not in ALL_MASK_ATTENTION_FUNCTIONS:
        raise flowtracer_error(
            "UnknownName",
            f"attention implementation {base!r} is not registered with transformers",
            given=base,
            allowed=sorted(set(ALL_ATTENTION_FUNCTIONS) & set(ALL_MASK_ATTENTION_FUNCTIONS)),
        )
    inner = ALL_ATTENTION_FUNCTIONS[base]

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        active = getattr(_ACTIVE, "capture", None)
        if active is not None:
            active.observe(module, query, key, attention_mask, kwargs)
        return inner(module, query, key, value, attention_mask, *args, **kwargs)

    attention.__name__ = name
    attention.__doc__ = f"{base} attention that feeds an active flowtracer QkCapture."
    AttentionInterface.register(name, attention)
    from transformers import AttentionMaskInterface

    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    return name


def select_layers(layers: Any, num_layers: int) -> list[int]:
    """The model layers the core's layer selection ``layers`` picks out of ``num_layers`` (method §2).

    The core's own rule (``flowtracer._native.select_layers``), so a hook that sees one layer
    at a time keeps exactly the layers ``flowtracer.trace`` would aggregate; a bad selection
    is the core's ``InvalidLayerSelection`` or ``UnknownName``.

    >>> from flowtracer.trl.capture import select_layers
    >>> select_layers("middle", 12), select_layers("spaced:3", 12), select_layers("middle", 1)
    ([4, 5, 6, 7], [4, 5, 7], [0])
    """
    if isinstance(layers, range):
        layers = list(layers) if layers.step != 1 else layers
    return list(flowtracer._native.select_layers(layers, num_layers))


def _key_mask_of(mask: torch.Tensor | None, b: int, n: int, device: Any) -> torch.Tensor | None:
    """The key-validity mask ``[B, N]`` behind the model's mask (None: every key valid)."""
    if mask is None:
        return None
    if mask.ndim == 2:  # flash attention: the 2-D padding mask itself
        return mask.to(device=device, dtype=torch.bool)
    if mask.ndim != 4 or mask.shape[-1] != n or mask.shape[-2] != n:
        raise flowtracer_error(
            "BadAttentionMask",
            f"attention mask of shape {tuple(mask.shape)}: expected [B, 1, N, N] with N = {n} "
            "(a cache or cross-attention is not a forward over whole sequences)",
            what="attention_mask",
        )
    m = mask[:, 0]
    allowed = m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2
    return torch.diagonal(allowed, dim1=-2, dim2=-1).expand(b, n).to(device)


def _check_mask(mask: torch.Tensor | None, key_mask: torch.Tensor | None, window: int | None) -> None:
    """Refuses a 4-D mask that is not causal x key padding (x window) on the valid query rows."""
    if mask is None or mask.ndim != 4:
        return
    n = mask.shape[-1]
    m = mask[:, 0]
    allowed = m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2
    idx = torch.arange(n, device=mask.device)
    implied = idx[None, :] <= idx[:, None]
    if window is not None:
        implied = implied & (idx[None, :] > idx[:, None] - window)
    implied = implied[None]
    rows = torch.ones(1, n, dtype=torch.bool, device=mask.device)
    if key_mask is not None:
        km = key_mask.to(mask.device)
        implied = implied & km[:, None, :]
        rows = km
    if m.dtype != torch.bool:
        zero_or_masked = (m == 0) | ~allowed
        if not bool(zero_or_masked.all()):
            raise flowtracer_error(
                "BadAttentionMask",
                "the additive attention mask carries a bias (ALiBi or similar): not supported",
                what="attention_mask",
            )
    differs = (allowed != implied) & rows[:, :, None]
    if bool(differs.any()):
        raise flowtracer_error(
            "BadAttentionMask",
            "the model's attention mask is not causal x key padding (x sliding window): packed "
            "sequences and custom masks are not supported by the Q/K capture",
            what="attention_mask",
        )


class QkCapture:
    """Accumulates ``Ā`` of the selected layers during every forward run inside ``with capture:``.

    ``num_layers`` is the model's layer count (``config.num_hidden_layers``), ``layers`` the
    core's selection (default ``"middle"``). Each forward call (or each chunk TRL feeds)
    starts a new batch when a selected layer comes again; :meth:`result` returns ``Ā`` of all
    of them, ``[B_total, N, N]`` float32 (float64 for f64 models) on the host, and one error
    or None per sequence. ``seconds`` is the time spent in the hook.

    Options: ``row_tolerance``, ``score_device`` (move Q/K there first), ``block_bytes``,
    ``backend`` (``"auto"``: the core for CPU tensors when bound, torch otherwise; ``"torch"``).
    """

    def __init__(
        self,
        num_layers: int,
        layers: Any = "middle",
        *,
        row_tolerance: float | None = None,
        score_device: Any = None,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        backend: str = "auto",
    ) -> None:
        self.selected = select_layers(layers, num_layers)
        self._wanted = set(self.selected)
        self.row_tolerance = row_tolerance
        self.score_device = score_device
        self.block_bytes = block_bytes
        if backend not in ("auto", "torch"):
            raise flowtracer_error("UnknownName", f"backend {backend!r}", given=backend, allowed=["auto", "torch"])
        self.backend = backend
        self.seconds = 0.0
        self._chunks: list[Any] = []
        self._last = -1
        self._previous = None

    def __enter__(self) -> QkCapture:
        self._previous = getattr(_ACTIVE, "capture", None)
        _ACTIVE.capture = self
        return self

    def __exit__(self, *exc: Any) -> None:
        _ACTIVE.capture = self._previous

    def observe(self, module: Any, query: torch.Tensor, key: torch.Tensor, mask: Any, kwargs: dict) -> None:
        """The hook: adds this layer's Q/K into the current batch's accumulator."""
        index = getattr(module, "layer_idx", None)
        if index is None:
            raise flowtracer_error("InvalidConfig", "attention module without layer_idx", field="layer_idx")
        if index not in self._wanted:
            return
        start = time.perf_counter()
        with torch.no_grad():
            self._observe(module, index, query.detach(), key.detach(), mask, kwargs)
        self.seconds += time.perf_counter() - start

    def _observe(self, module, index, query, key, mask, kwargs) -> None:
        for bad in ("cu_seq_lens_q", "cu_seqlens_q", "position_bias", "s_aux", "sinks"):
            if kwargs.get(bad) is not None:
                raise flowtracer_error(
                    "InvalidConfig",
                    f"attention called with {bad}: packed sequences, position biases and attention "
                    "sinks are not supported by the Q/K capture",
                    field=bad,
                )
        if kwargs.get("is_causal", getattr(module, "is_causal", True)) is False:
            raise flowtracer_error("InvalidConfig", "non-causal attention", field="is_causal")
        b, hq, n, d = query.shape
        if query.shape[2] != key.shape[2]:
            raise flowtracer_error(
                "ShapeMismatch",
                f"queries for {query.shape[2]} tokens but keys for {key.shape[2]}: capture needs a "
                "forward over whole sequences (no cache)",
                what="keys",
                expected=query.shape[2],
                actual=key.shape[2],
            )
        window = kwargs.get("sliding_window", getattr(module, "sliding_window", None))
        scale = kwargs.get("scaling", getattr(module, "scaling", None))
        softcap = kwargs.get("softcap")
        dev = self.score_device if self.score_device is not None else query.device
        new_batch = index <= self._last or not self._chunks
        self._last = index
        if new_batch:
            key_mask = _key_mask_of(mask, b, n, dev)
            _check_mask(mask, key_mask, window)
            opts = dict(
                scale=scale, window=window, logit_softcap=softcap, row_tolerance=self.row_tolerance
            )
            if torch.device(dev).type == "cpu" and self.backend == "auto" and hasattr(flowtracer, "QkAccumulator"):
                dtype = "float64" if query.dtype == torch.float64 else "float32"
                masks = [None if key_mask is None else key_mask[i].cpu().numpy() for i in range(b)]
                acc = [flowtracer.QkAccumulator(hq, key.shape[1], n, d, key_mask=masks[i], dtype=dtype, **opts)
                       for i in range(b)]
            else:
                acc = TorchQkAccumulator(
                    hq, key.shape[1], n, d, batch=b, key_mask=key_mask, device=dev,
                    block_bytes=self.block_bytes, **opts,
                )
            self._chunks.append(acc)
        acc = self._chunks[-1]
        if isinstance(acc, list):
            q, k = query.cpu(), key.cpu()
            for i, a in enumerate(acc):
                a.add_layer(index, q[i], k[i])
        else:
            acc.add_layer(index, query, key)

    def result(self) -> tuple[np.ndarray, list[flowtracer.Error | None]]:
        """``Ā`` of every sequence seen (``[B, N, N]``, host numpy) and each one's error or None."""
        if not self._chunks:
            raise flowtracer_error("ZeroDimension", "no selected layer ran under the capture", what="layers")
        start = time.perf_counter()
        mats, errors = [], []
        for acc in self._chunks:
            if isinstance(acc, list):
                for a in acc:
                    try:
                        mats.append(np.asarray(a.finish_matrix()))
                        errors.append(None)
                    except flowtracer.Error as e:
                        mats.append(None)
                        errors.append(e)
            else:
                a, errs = acc.finish()
                mats.extend(a.cpu().numpy())
                errors.extend(errs)
        n = max(m.shape[0] for m in mats if m is not None) if any(m is not None for m in mats) else 0
        dtype = next((m.dtype for m in mats if m is not None), np.float32)
        out = np.zeros((len(mats), n, n), dtype=dtype)
        for i, m in enumerate(mats):
            if m is not None:
                out[i] = m
        for i, e in enumerate(errors):
            if e is not None:
                e.sequence = i
        self.seconds += time.perf_counter() - start
        return out, errors

    def reset(self) -> None:
        """Drops what was captured (the selection and options stay)."""
        self._chunks, self._last, self.seconds = [], -1, 0.0


def capture_bytes(n: int, q_heads: int, *, batch: int = 1, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """Extra bytes of the torch capture for ``batch`` sequences of ``n`` tokens, by its layout.

    ``Ā`` (``4 B N²``) plus one row block (its f32 logits and one bool flag each: at most
    ``block_bytes``, at least one row) plus the row flags (``B H_q N``). The layers' Q/K are
    the model's own tensors and are not copied (f32 casts of bf16 Q/K add ``4 (H_q + H_kv) N
    d`` per layer, freed after it). benches/README.md has the measured peak next to it.

    >>> from flowtracer.trl.capture import capture_bytes
    >>> capture_bytes(4096, 32) / 2**20          # Qwen3-8B, N = 4096, one sequence: MiB
    127.875
    """
    rows = max(1, min(n, block_bytes // max(1, 5 * batch * q_heads * n)))
    return 4 * batch * n * n + 5 * batch * q_heads * rows * n + batch * q_heads * n


class QkRecorder:
    """Keeps the selected layers' post-RoPE Q and K (host copies) during ``with recorder:``.

    For writing ``flowtracer score --qk`` files and for debugging; training uses
    :class:`QkCapture`, which keeps only ``Ā``. ``layers`` are model layer numbers;
    ``recorder.q[l]`` is ``[B, H_q, N, d]`` and ``recorder.k[l]`` ``[B, H_kv, N, d]`` (keys
    before ``repeat_kv``), as the attention function received them; ``recorder.scale[l]`` and
    ``recorder.window[l]`` are the layer's softmax scale and sliding window (None: none).
    """

    def __init__(self, layers: list[int]) -> None:
        self._wanted = set(int(x) for x in layers)
        self.q: dict[int, torch.Tensor] = {}
        self.k: dict[int, torch.Tensor] = {}
        self.scale: dict[int, float] = {}
        self.window: dict[int, int | None] = {}
        self._previous = None

    def __enter__(self) -> QkRecorder:
        self._previous = getattr(_ACTIVE, "capture", None)
        _ACTIVE.capture = self
        return self

    def __exit__(self, *exc: Any) -> None:
        _ACTIVE.capture = self._previous

    def observe(self, module: Any, query: torch.Tensor, key: torch.Tensor, mask: Any, kwargs: dict) -> None:
        index = getattr(module, "layer_idx", None)
        if index not in self._wanted:
            return
        self.q[index] = query.detach().cpu()
        self.k[index] = key.detach().cpu()
        self.scale[index] = float(kwargs.get("scaling", getattr(module, "scaling", None)) or query.shape[-1] ** -0.5)
        self.window[index] = kwargs.get("sliding_window", getattr(module, "sliding_window", None))
