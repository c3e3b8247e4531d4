"""``Ā`` from post-RoPE queries and keys in torch, in row blocks, on whatever device they live.

The torch twin of the core's Q/K stage (method §15) for tensors that live on a GPU: per
selected layer, the softmax of every query head is formed for a block of query rows at a
time (``rows x keys x heads``, bounded by ``block_bytes``), averaged over the heads and added
into ``Ā``. No per-head ``N x N`` matrix is ever allocated; only ``Ā`` (``N²`` values per
sequence) outlives a block, and only it moves to the host for the core's passes. On CPU the
core itself (:class:`flowtracer.QkAccumulator`) does the same; the two agree within
:data:`CONFORMANCE_RTOL` / :data:`CONFORMANCE_ATOL` (tests/test_qk_torch.py).

Conventions, as the core's: query head ``h`` uses key head ``h // (H_q / H_kv)``; scale
default ``1 / sqrt(d)``; query ``k`` sees key ``i`` iff ``i <= k``, ``k - w < i`` (window
``w``) and ``key_mask[i]``; Gemma 2's soft-cap ``cap * tanh(s / cap)`` before the softmax;
with a saved LSE each probability is ``exp(s - lse)`` and each head's row must sum to 1
within ``row_tolerance``. f64 input is computed in f64; every other dtype (f32, f16, bf16)
in f32. A row with no visible key is all zero.

Errors are :class:`flowtracer.Error` in the core's validation order (method §15): shapes and
config when a layer is added; then, at :meth:`TorchQkAccumulator.finish`, per sequence the
first non-finite input scanning layers ascending, ``Q`` then ``K`` then ``LSE``, each in flat
``(head, row, column)`` order (``NonFiniteInput``), else the first bad row by
``(layer, head, row)`` (``LogitsOverflow``, ``LseMismatch``).

Complexity per layer: ``O(H_q · N² · d)`` time; extra memory ``Ā`` (``B N²`` values) plus one
block of ``B · H_q · rows · N`` logits transformed in place with a bool flag each (at most
``block_bytes``, at least one row) plus ``B · H_q · N`` row flags.
"""

from __future__ import annotations

import math
from typing import Any

import torch

import flowtracer

from .config import flowtracer_error

#: Agreement of this torch path with the core's Q/K stage on the same f32 input:
#: ``|torch - core| <= CONFORMANCE_RTOL * |core| + CONFORMANCE_ATOL`` entrywise on ``Ā``
#: (different exponentials, 1.1e-7 relative for the core's, and summation orders).
CONFORMANCE_RTOL = 1e-5
CONFORMANCE_ATOL = 1e-6

#: Default scratch of one row block (bytes): rows x keys x heads x (4 + 1) bytes (f32).
DEFAULT_BLOCK_BYTES = 64 << 20

_TENSORS = ("query", "key", "log-sum-exp")


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


class TorchQkAccumulator:
    """``Ā`` of a batch of ``B`` sequences, fed one layer at a time (a forward hook's view).

    ``add_layer(index, q, k, lse=None)`` takes ``q [B, H_q, N, d]`` and ``k [B, H_kv, N, d]``
    (or without the batch axis when ``batch`` is None), as the attention function receives
    them (post-RoPE, keys before ``repeat_kv``), and ``lse [B, H_q, N]`` when saved. ``index``
    is the model's layer number; layers must come in ascending order. :meth:`finish` returns
    ``Ā`` and one error (or None) per sequence; :meth:`finish_matrix` returns ``Ā`` or raises
    the first sequence's error.

    >>> import torch
    >>> from flowtracer.trl.qk_torch import TorchQkAccumulator
    >>> acc = TorchQkAccumulator(2, 1, 3, 4)
    >>> acc.add_layer(0, torch.zeros(2, 3, 4), torch.zeros(1, 3, 4))
    >>> acc.finish_matrix().tolist()        # zero logits: uniform over the visible keys
    [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.3333333432674408, 0.3333333432674408, 0.3333333432674408]]
    """

    def __init__(
        self,
        q_heads: int,
        kv_heads: int,
        n: int,
        d: int,
        *,
        batch: int | None = None,
        key_mask: Any = None,
        scale: float | None = None,
        window: int | None = None,
        logit_softcap: float | None = None,
        row_tolerance: float | None = None,
        device: Any = None,
        dtype: torch.dtype = torch.float32,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
    ) -> None:
        if not isinstance(n, int) or n < 1:
            if n == 0:
                raise flowtracer_error("EmptySequence", "the sequence has no tokens (N = 0)")
            raise flowtracer_error("InvalidConfig", f"n must be a positive int, got {n!r}", field="n")
        for what, v in (("query heads", q_heads), ("key/value heads", kv_heads), ("head dimensions (d)", d)):
            if not isinstance(v, int) or v < 1:
                raise flowtracer_error("ZeroDimension", f"{what} must be >= 1, got {v!r}", what=what)
        if q_heads % kv_heads:
            raise flowtracer_error(
                "HeadsNotGrouped",
                f"{q_heads} query heads are not a multiple of {kv_heads} key/value heads",
                q_heads=q_heads,
                kv_heads=kv_heads,
            )
        self.scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise flowtracer_error("InvalidConfig", f"scale {scale} must be finite and > 0", field="scale")
        if window is not None and (not isinstance(window, int) or window < 1):
            raise flowtracer_error("InvalidConfig", f"window {window} must be >= 1", field="window")
        if logit_softcap is not None and not (math.isfinite(logit_softcap) and logit_softcap > 0):
            raise flowtracer_error(
                "InvalidConfig", f"logit_softcap {logit_softcap} must be finite and > 0", field="logit_softcap"
            )
        tol = flowtracer.defaults()["row_tolerance"] if row_tolerance is None else float(row_tolerance)
        if not tol >= 0:
            raise flowtracer_error("InvalidConfig", f"row_tolerance {tol} must be >= 0", field="row_tolerance")
        self.row_tolerance = tol
        self.window, self.softcap = window, logit_softcap
        self.q_heads, self.kv_heads, self.n, self.d = q_heads, kv_heads, n, d
        self.batched = batch is not None
        self.b = batch if batch is not None else 1
        self.device = torch.device(device) if device is not None else None
        self.dtype = dtype
        self.block_bytes = int(block_bytes)
        mask = None
        if key_mask is not None:
            mask = torch.as_tensor(key_mask)
            if not self.batched:
                mask = mask.unsqueeze(0)
            if tuple(mask.shape) != (self.b, n):
                raise flowtracer_error(
                    "ShapeMismatch",
                    f"key mask has shape {tuple(mask.shape)}, expected {(self.b, n) if self.batched else (n,)}",
                    what="key mask",
                    expected=n,
                    actual=int(mask.shape[-1]),
                )
            mask = mask.to(torch.bool)
        self._key_mask = mask
        self._sum: torch.Tensor | None = None
        self._layers: list[int] = []
        self._nonfinite: list[flowtracer.Error | None] = [None] * self.b
        self._row_error: list[flowtracer.Error | None] = [None] * self.b

    @property
    def layers(self) -> list[int]:
        """The layers added so far (model layer numbers)."""
        return list(self._layers)

    def _check(self, name: str, t: torch.Tensor, heads: int, last: int | None) -> torch.Tensor:
        if not self.batched:
            t = t.unsqueeze(0)
        want = (self.b, heads, self.n) + ((last,) if last is not None else ())
        if tuple(t.shape) != want:
            raise flowtracer_error(
                "ShapeMismatch",
                f"{name} of layer {self._next_index} has shape {tuple(t.shape[1:] if self.batched else t.shape[1:])}"
                f", expected {want[1:]}",
                what=name,
                expected=math.prod(want),
                actual=t.numel(),
                layer=self._next_index,
            )
        if not (t.is_floating_point()):
            raise flowtracer_error("UnsupportedDtype", f"{name} has dtype {t.dtype}", dtype=str(t.dtype))
        return t

    def add_layer(self, index: int, q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor | None = None) -> None:
        """Adds layer ``index``: its head-mean probabilities go into ``Ā`` block by block."""
        if self._layers and index <= self._layers[-1]:
            raise flowtracer_error(
                "InvalidConfig",
                f"layer {index} added after layer {self._layers[-1]}: layers must ascend",
                field="layer",
                layer=index,
            )
        self._next_index = index
        q = self._check("queries", q, self.q_heads, self.d)
        k = self._check("keys", k, self.kv_heads, self.d)
        if lse is not None:
            lse = self._check("log-sum-exp", lse, self.q_heads, None)
        layer = index
        self._layers.append(index)
        dev = self.device if self.device is not None else q.device
        with torch.no_grad():
            q, k = q.to(dev), k.to(dev)
            lse = lse.to(dev) if lse is not None else None
            self._scan_nonfinite(layer, (q, k, lse))
            self._accumulate(layer, q, k, lse)

    def _scan_nonfinite(self, layer: int, tensors: tuple[torch.Tensor | None, ...]) -> None:
        for t_i, t in enumerate(tensors):
            if t is None:
                continue
            bad = ~torch.isfinite(t.reshape(self.b, -1))
            if not bool(bad.any()):
                continue
            for b in range(self.b):
                if self._nonfinite[b] is not None or not bool(bad[b].any()):
                    continue
                flat = int(bad[b].nonzero()[0, 0])
                shape = t.shape[1:]
                head, rest = divmod(flat, math.prod(shape[1:]))
                row, col = divmod(rest, shape[2]) if len(shape) == 3 else (rest, 0)
                self._nonfinite[b] = flowtracer_error(
                    "NonFiniteInput",
                    f"non-finite {_TENSORS[t_i]} value at layer {layer}, head {head}, row {row}, column {col}",
                    tensor=_TENSORS[t_i],
                    layer=layer,
                    head=head,
                    row=row,
                    col=col,
                )

    def _accumulate(self, layer: int, q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor | None) -> None:
        b, hq, hkv, n, d = self.b, self.q_heads, self.kv_heads, self.n, self.d
        g = hq // hkv
        ct = _compute_dtype(q) if q.dtype == torch.float64 or k.dtype == torch.float64 else torch.float32
        dev = q.device
        if self._sum is None:
            self._sum = torch.zeros(b, n, n, dtype=ct, device=dev)
        kf = k.to(ct)  # [B, H_kv, N, d]
        width = 8 if ct == torch.float64 else 4
        # One block: its logits (width bytes each, transformed in place) and one bool flag each.
        rows = max(1, min(n, self.block_bytes // max(1, (width + 1) * b * hq * n)))
        keys = torch.arange(n, device=dev)
        valid = self._key_mask.to(dev) if self._key_mask is not None else None
        bad_rows = torch.zeros(b, hq, n, dtype=torch.bool, device=dev)
        mass = torch.ones(b, hq, n, dtype=ct, device=dev) if lse is not None else None
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            qb = q[:, :, r0:r1, :].to(ct).reshape(b, hkv, g, r1 - r0, d)
            s = torch.einsum("bkgrd,bknd->bkgrn", qb, kf).reshape(b, hq, r1 - r0, n)
            s.mul_(self.scale)
            qi = torch.arange(r0, r1, device=dev)[:, None]
            vis = keys[None, :] <= qi
            if self.window is not None:
                vis = vis & (keys[None, :] > qi - self.window)
            vis = vis[None, None].expand(b, 1, r1 - r0, n)
            if valid is not None:
                vis = vis & valid[:, None, None, :]
            # Non-finite logits of visible keys (method §15 check 4), without a full-block
            # isfinite (on the CPU it allocates f32 temporaries): after masking the invisible
            # keys to -inf, a row is bad iff its max is NaN or +inf, or it holds more -inf
            # entries than invisible keys.
            hidden = ~vis
            s.masked_fill_(hidden, -math.inf)
            top = s.amax(dim=-1)
            neg = (s == -math.inf).sum(dim=-1)
            bad_rows[:, :, r0:r1] = torch.isnan(top) | (top == math.inf) | (neg > hidden.sum(dim=-1))
            if self.softcap is not None:
                s.div_(self.softcap).tanh_().mul_(self.softcap)
                s.masked_fill_(hidden, -math.inf)
            if lse is None:
                m = top[..., None] if self.softcap is None else s.amax(dim=-1, keepdim=True)
                m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
                s.sub_(m).exp_()
                s.div_(s.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(ct).tiny))
            else:
                s.sub_(lse[:, :, r0:r1].to(ct)[..., None]).exp_()
                rowmass = s.sum(dim=-1)
                has = vis.any(dim=-1).expand(b, hq, r1 - r0)
                mass[:, :, r0:r1] = torch.where(has, rowmass, torch.ones_like(rowmass))
            s.nan_to_num_(nan=0.0)
            self._sum[:, r0:r1, :] += s.sum(dim=1)
            del s  # before the next block's logits exist: one block at a time
        self._record_rows(layer, bad_rows, mass)

    def _record_rows(self, layer: int, bad_rows: torch.Tensor, mass: torch.Tensor | None) -> None:
        lse_bad = None
        if mass is not None:
            lse_bad = (mass - 1).abs() > self.row_tolerance
            lse_bad = lse_bad | ~torch.isfinite(mass)
        any_bad = bad_rows | lse_bad if lse_bad is not None else bad_rows
        if not bool(any_bad.any()):
            return
        for b in range(self.b):
            if self._row_error[b] is not None or not bool(any_bad[b].any()):
                continue
            flat = int(any_bad[b].reshape(-1).nonzero()[0, 0])
            head, row = divmod(flat, self.n)
            if bool(bad_rows[b, head, row]):
                self._row_error[b] = flowtracer_error(
                    "LogitsOverflow",
                    f"the attention logits of layer {layer}, head {head}, row {row} overflow "
                    "(q·k·scale is not finite)",
                    layer=layer,
                    head=head,
                    row=row,
                )
            else:
                m = float(mass[b, head, row])
                self._row_error[b] = flowtracer_error(
                    "LseMismatch",
                    f"the saved log-sum-exp of layer {layer}, head {head}, row {row} does not belong to "
                    f"q and k: the row's probabilities sum to {m}, tolerance {self.row_tolerance}",
                    layer=layer,
                    head=head,
                    row=row,
                    mass=m,
                    tolerance=self.row_tolerance,
                )

    def finish(self) -> tuple[torch.Tensor, list[flowtracer.Error | None]]:
        """``Ā`` (``[B, N, N]``, or ``[N, N]`` unbatched; f32, f64 for f64 input) and each sequence's error.

        The error of a sequence is its first non-finite input if any, else its first bad row
        (method §15's order, across every layer added); its rows of ``Ā`` are then not
        meaningful.
        """
        if not self._layers or self._sum is None:
            raise flowtracer_error("ZeroDimension", "no layer was added", what="layers")
        a = self._sum * (1.0 / (len(self._layers) * self.q_heads))
        errors = [nf if nf is not None else re for nf, re in zip(self._nonfinite, self._row_error)]
        return (a if self.batched else a[0]), errors

    def finish_matrix(self) -> torch.Tensor:
        """``Ā``, or raises the first sequence's :class:`flowtracer.Error` (``sequence`` set when batched)."""
        a, errors = self.finish()
        for b, e in enumerate(errors):
            if e is not None:
                if self.batched:
                    e.sequence = b
                raise e
        return a


def attention_from_qk(
    q: list[torch.Tensor],
    k: list[torch.Tensor],
    lse: list[torch.Tensor] | None = None,
    *,
    layers: list[int] | None = None,
    **options: Any,
) -> torch.Tensor:
    """``Ā`` of one sequence from per-layer ``q [H_q, N, d]`` and ``k [H_kv, N, d]`` (torch).

    ``layers`` are the model layer numbers of the entries (default ``0, 1, ...``); every
    entry is averaged. Options as :class:`TorchQkAccumulator`.

    >>> import torch
    >>> from flowtracer.trl.qk_torch import attention_from_qk
    >>> q = [torch.zeros(1, 2, 2)]; k = [torch.zeros(1, 2, 2)]
    >>> attention_from_qk(q, k, window=1).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    if not q or len(q) != len(k) or (lse is not None and len(lse) != len(q)):
        raise flowtracer_error("ZeroDimension", "q, k (and lse) must be equal-length non-empty lists", what="layers")
    hq, n, d = q[0].shape
    acc = TorchQkAccumulator(hq, k[0].shape[0], n, d, **options)
    for i, (ql, kl) in enumerate(zip(q, k)):
        acc.add_layer(layers[i] if layers is not None else i, ql, kl, None if lse is None else lse[i])
    return acc.finish_matrix()
