"""FlowTracer inside TRL's ``GRPOTrainer`` (TRL 1.16; needs torch, transformers and trl).

- :class:`FlowTracerConfig`: the core's scoring options (names and defaults of
  :func:`flowtracer.defaults`) plus the answer marker and question spans;
- :class:`FlowTracerGRPOTrainer`: ``GRPOTrainer`` with ``(B, T)`` FlowTracer advantages;
- :mod:`flowtracer.trl.capture`: the ``AttentionInterface`` wrapper and :class:`QkCapture`;
- :mod:`flowtracer.trl.qk_torch`: ``Ā`` from Q/K in torch row blocks (CUDA).

``import flowtracer`` never imports torch; ``import flowtracer.trl`` does.
"""

from .capture import QkCapture, QkRecorder, register, select_layers
from .config import BOXED, FlowTracerConfig
from .qk_torch import TorchQkAccumulator, attention_from_qk
from .scoring import score_captured, shape_with_weights

__all__ = [
    "BOXED",
    "FlowTracerConfig",
    "FlowTracerGRPOTrainer",
    "QkCapture",
    "QkRecorder",
    "TorchQkAccumulator",
    "attention_from_qk",
    "register",
    "score_captured",
    "select_layers",
    "shape_with_weights",
]


def __getattr__(name: str):
    # The trainer imports trl (slow, and only needed for training): loaded on first use.
    if name == "FlowTracerGRPOTrainer":
        from .trainer import FlowTracerGRPOTrainer

        return FlowTracerGRPOTrainer
    raise AttributeError(name)
