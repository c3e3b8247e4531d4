"""torch tensors as numpy arrays, for every entry point; torch is imported only when an
argument is a torch tensor (``type(x).__module__`` starts with ``"torch"``).

- CPU tensors go through DLPack (``numpy.from_dlpack``): zero-copy, the binding then reads
  the tensor's own memory when it is contiguous and copies it in C order when it is not.
  Tensors that require grad are detached first (no copy).
- bfloat16, which numpy lacks, is passed as its 16-bit words (``t.view(torch.int16)``
  through DLPack, viewed as ``uint16``, still zero-copy) with a marker, and the binding
  reinterprets the words as ``half::bf16``.
- CUDA (or any non-CPU) tensors: the attention ``Ā`` of :func:`flowtracer.trace` and
  :func:`flowtracer.score_batch` (and the small masks, offsets, rewards and weights) is
  copied to the host with ``.cpu()``; queries and keys for :func:`flowtracer.score_qk` and
  :class:`flowtracer.QkAccumulator` are refused (``UnsupportedDevice``): moving every layer's
  Q and K to the host is what the Q/K path exists to avoid, so form ``Ā`` on the device (as
  ``flowtracer.trl`` does) or call ``.cpu()`` yourself.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._native import ERROR_ATTRIBUTES, Error


def is_torch(x: Any) -> bool:
    """Whether ``x`` is a torch tensor (without importing torch)."""
    return type(x).__module__.startswith("torch")


def error(kind: str, message: str, **attrs: Any) -> Error:
    """A :class:`flowtracer.Error` with every attribute (None unless given)."""
    e = Error(message)
    for name in ERROR_ATTRIBUTES:
        setattr(e, name, None)
    e.kind = kind
    for name, value in attrs.items():
        setattr(e, name, value)
    return e


def _dtype_name(t: Any) -> str:
    return str(t.dtype).removeprefix("torch.")


def host(x: Any, what: str = "attention") -> Any:
    """A torch tensor as a numpy array on the host (copied from a device with ``.cpu()``);
    anything else unchanged. bfloat16 is refused (the attention ``Ā`` is float32 or
    float64, a saved log-sum-exp ``lse`` float32: convert with ``.float()``)."""
    if not is_torch(x):
        return x
    import torch

    if not isinstance(x, torch.Tensor):
        return x
    if x.device.type != "cpu":
        x = x.cpu()
    x = x.detach()
    if x.dtype == torch.bfloat16:
        reads = (
            "the saved log-sum-exp is float32 (natural log, as FlashAttention returns it)"
            if what == "lse"
            else "flowtracer reads float32 or float64 here (bfloat16 is read by score_qk)"
        )
        raise error(
            "UnsupportedDtype",
            f"{what} has dtype bfloat16; {reads}: convert with .float()",
            dtype="bfloat16",
            what=what,
        )
    return np.from_dlpack(x)


def host_list(x: Any, what: str) -> Any:
    """A list (or tuple) whose torch tensors become numpy arrays, or one tensor converted."""
    if isinstance(x, (list, tuple)):
        return [host(a, what) for a in x]
    return host(x, what)


def span(x: Any) -> Any:
    """A span given as a torch tensor of positions, as a list."""
    if is_torch(x):
        return x.tolist()
    return x


def spans(x: Any) -> Any:
    """A batch's spans (a list of spans, or a tensor of positions), without torch tensors."""
    if is_torch(x):
        return x.tolist()
    if isinstance(x, (list, tuple)):
        return [span(s) for s in x]
    return x


def qk(x: Any, what: str) -> tuple[Any, bool]:
    """One array of queries or keys and whether it holds bfloat16's 16-bit words."""
    if not is_torch(x):
        return x, False
    import torch

    if x.device.type != "cpu":
        raise error(
            "UnsupportedDevice",
            f"{what} is on {x.device}; score_qk and QkAccumulator compute on the CPU and do "
            "not move queries and keys off the device: form Ā on the device (flowtracer.trl "
            "does) or pass .cpu() tensors",
            what=what,
        )
    x = x.detach()
    if x.dtype == torch.bfloat16:
        return np.from_dlpack(x.view(torch.int16)).view(np.uint16), True
    return np.from_dlpack(x), False


def qk_layers(q: Any, k: Any) -> tuple[Any, Any, bool]:
    """``q`` and ``k`` (a list or tuple of per-layer arrays, or one array each) converted,
    and whether they are bfloat16; mixing bfloat16 with other dtypes is an error."""
    out, marks = [], []
    for x, what in [(q, "q"), (k, "k")]:
        if isinstance(x, (list, tuple)):
            items = [qk(a, f"{what} (layer {i})") for i, a in enumerate(x)]
            out.append([a for a, _ in items])
            marks += [(m, f"{what} (layer {i})") for i, (_, m) in enumerate(items)]
        else:
            a, m = qk(x, what)
            out.append(a)
            marks.append((m, what))
    bf16 = [m for m, _ in marks]
    if any(bf16) and not all(bf16):
        other = next(w for m, w in marks if m != bf16[0])
        raise error(
            "UnsupportedDtype",
            f"{other} is {'bfloat16' if not bf16[0] else 'not bfloat16'} unlike {marks[0][1]}: "
            "every query and key array of one call has one dtype",
            what=other,
            dtype="bfloat16" if not bf16[0] else None,
        )
    return out[0], out[1], bool(bf16 and bf16[0])
