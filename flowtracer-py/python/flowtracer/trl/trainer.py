"""`FlowTracerGRPOTrainer`: TRL 1.16's ``GRPOTrainer`` with FlowTracer token weights.

Where ``Ā`` is captured (never a forward pass only for it when TRL runs one):

1. When TRL computes old log-probabilities (``num_iterations > 1``, or
   ``gradient_accumulation_steps`` not a multiple of ``steps_per_generation *
   num_iterations``, or vLLM importance sampling), Q/K are captured during that no-grad
   forward, in ``_generate_and_score_completions``, once per generation; the ``(B,)``
   advantages leave it as ``(B, T)``, reused by every iteration.
2. Otherwise (TRL's on-policy default runs no forward before the loss), they are captured
   during the loss's own forward (``_get_per_token_logps_and_entropies`` under
   ``_compute_loss``) and the weights are multiplied into ``inputs["advantages"]`` after that
   forward and before the loss is formed from them. No extra forward is run in either case.

Then ``flowtracer.score_batch`` scores every sequence (question: the prompt's non-padding
tokens, or ``FlowTracerConfig.question_column``; answer: the marker's last complete match;
response: the completion) into ``(B, T)`` weights (1 at padding, for a completion without an
answer, or one the core rejects), and the advantages become ``A_b · w_bt`` by the core's
``shape_advantages`` rule (``apply_to``). The ``flow/*`` metrics go to TRL's ``_metrics``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from trl import GRPOTrainer

import flowtracer

from .capture import QkCapture, register, select_layers
from .config import FlowTracerConfig, flowtracer_error
from .scoring import score_captured, shape_with_weights
from .spans import batch_spans

#: The ``flow/*`` metrics this trainer logs (from :data:`flowtracer.METRICS`): all of them but
#: ``flow/fidelity`` (needs the task's decisive tokens, which a TRL dataset does not have).
LOGGED_METRICS: tuple[str, ...] = tuple(m for m in flowtracer.METRICS if m != "flow/fidelity")


class FlowTracerGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose advantages are multiplied by FlowTracer token weights, ``(B, T)``.

    Arguments are ``GRPOTrainer``'s plus ``flow_config`` (a :class:`FlowTracerConfig`). The
    model must run a capturing attention implementation: a model given by name is loaded
    with ``attn_implementation="flowtracer_sdpa"`` (set ``model_init_kwargs`` to choose
    another, e.g. ``flowtracer_flash_attention_2`` after
    ``flowtracer.trl.capture.register("flash_attention_2")``); a model object is switched to
    ``flowtracer_<its implementation>``.
    """

    def __init__(self, model: Any, *args: Any, flow_config: FlowTracerConfig | None = None, **kwargs: Any) -> None:
        self.flow_config = flow_config if flow_config is not None else FlowTracerConfig()
        if isinstance(model, str):
            train_args = kwargs.get("args") if "args" in kwargs else (args[1] if len(args) > 1 else None)
            if train_args is not None:
                mik = dict(train_args.model_init_kwargs or {})
                mik.setdefault("attn_implementation", register("sdpa"))
                train_args.model_init_kwargs = mik
        super().__init__(model, *args, **kwargs)
        self._flow_use_capture_model()
        self._flow_capture: QkCapture | None = None
        self._flow_armed = False
        self._flow_after_forward = None
        self._flow_last_step_end: float | None = None
        if self.args.importance_sampling_level not in ("token", "sequence"):
            raise flowtracer_error(
                "InvalidConfig", "unknown importance_sampling_level", field="importance_sampling_level"
            )

    # -- model set-up -------------------------------------------------------------------
    def _flow_use_capture_model(self) -> None:
        model = self.accelerator.unwrap_model(self.model)
        config = model.config
        impl = getattr(config, "_attn_implementation", None) or "sdpa"
        if not impl.startswith("flowtracer_"):
            if impl == "eager":
                raise flowtracer_error(
                    "InvalidConfig",
                    "the model runs eager attention; FlowTracerGRPOTrainer captures Q/K from sdpa or "
                    "flash attention (load it with attn_implementation='sdpa')",
                    field="attn_implementation",
                )
            model.set_attn_implementation(register(impl))
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        self._flow_num_layers = int(text.num_hidden_layers)
        select_layers(self.flow_config.layers, self._flow_num_layers)  # a bad selection fails here

    def _flow_new_capture(self) -> QkCapture:
        c = self.flow_config
        return QkCapture(
            self._flow_num_layers,
            c.layers,
            row_tolerance=c.row_tolerance,
            score_device=c.score_device,
            block_bytes=c.block_bytes,
        )

    # -- where the forward passes are ---------------------------------------------------
    def _get_per_token_logps_and_entropies(self, model, *args: Any, **kwargs: Any):
        if not (self._flow_armed and self._flow_capture is not None and model is self.model):
            return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        self._flow_armed = False
        with self._flow_capture:
            result = super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        after, self._flow_after_forward = self._flow_after_forward, None
        if after is not None:
            after()
        return result

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        mode = "train" if self.model.training else "eval"
        started = time.perf_counter()
        # Arm the capture only where TRL will run the old-log-prob forward (its first forward
        # of self.model here); otherwise the first one could be the reference forward of a
        # PEFT model with its adapter disabled.
        capture_here = mode == "train" and self._flow_old_logps_expected()
        self._flow_capture = self._flow_new_capture() if capture_here else None
        self._flow_armed = capture_here
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._flow_armed = False
        if mode != "train":
            self._flow_capture = None
            return output
        column = self.flow_config.question_column
        questions = [x.get(column) for x in inputs] if column is not None else None
        spans = self._flow_spans(output, questions)
        captured = self._flow_capture
        self._flow_capture = None
        if captured is not None and captured._chunks:
            # TRL ran the old-log-prob forward: score now, once per generation.
            output["advantages"] = self._flow_score(output, spans, captured, started)
        else:
            output["flowtracer_spans"] = [
                (q, a, r, s)
                for q, a, r, s in zip(spans["question"], spans["answer"], spans["response"], spans["completion_start"])
            ]
        return output

    def _flow_old_logps_expected(self) -> bool:
        """TRL 1.16's condition for computing old log-probabilities in
        ``_generate_and_score_completions`` (its ``generate_every`` test)."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        return self.args.gradient_accumulation_steps % generate_every != 0 or bool(
            self.use_vllm and self.vllm_importance_sampling_correction
        )

    def _compute_loss(self, model, inputs):
        spans = inputs.get("flowtracer_spans")
        if spans is None or inputs["advantages"].dim() != 1 or not self.model.training:
            return super()._compute_loss(model, inputs)
        # No forward ran before the loss: capture in the loss's own forward; the weights are
        # applied to inputs["advantages"] right after it, before _compute_loss reads them.
        started = time.perf_counter()
        capture = self._flow_new_capture()

        def score() -> None:
            unpacked = {
                key: [s[i] for s in spans]
                for i, key in enumerate(("question", "answer", "response", "completion_start"))
            }
            inputs["advantages"] = self._flow_score(inputs, unpacked, capture, started)

        self._flow_capture, self._flow_armed, self._flow_after_forward = capture, True, score
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._flow_capture, self._flow_armed, self._flow_after_forward = None, False, None

    # -- scoring ------------------------------------------------------------------------
    def _flow_spans(self, output: dict[str, Any], questions: list[Any] | None) -> dict[str, list[Any]]:
        tool_mask = output.get("tool_mask")
        return batch_spans(
            self.processing_class,
            self.flow_config.answer_marker,
            output["prompt_mask"].cpu().numpy(),
            output["completion_ids"].cpu().numpy(),
            output["completion_mask"].cpu().numpy(),
            questions=questions,
            tool_mask=None if tool_mask is None else tool_mask.cpu().numpy(),
        )

    def _flow_score(
        self, batch: dict[str, Any], spans: dict[str, list[Any]], capture: QkCapture, started: float
    ) -> torch.Tensor:
        """``(B, T)`` shaped advantages of ``batch`` from the captured ``Ā``; logs ``flow/*``."""
        t0 = time.perf_counter()
        mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1).cpu().numpy()
        weights, status, details = score_captured(
            capture,
            mask,
            spans["question"],
            spans["answer"],
            spans["response"],
            completion_start=spans["completion_start"],
            completion_length=batch["completion_ids"].shape[1],
            config=self.flow_config,
        )
        advantages = batch["advantages"]
        shaped = shape_with_weights(advantages.detach().cpu().numpy(), weights, self.flow_config.apply_to)
        flow_seconds = capture.seconds + (time.perf_counter() - t0)
        self._flow_log(weights, batch["completion_mask"].cpu().numpy(), status, details, flow_seconds, started)
        self._flow_last = {"weights": weights, "status": status, "attention": details["attention"]}
        return torch.as_tensor(shaped, dtype=advantages.dtype, device=advantages.device)

    def _flow_log(self, weights, completion_mask, status, details, flow_seconds, started) -> None:
        metrics = self._metrics["train"]
        scored = np.array([s == "scored" for s in status])
        no_answer = np.array([s == "no_answer" for s in status])
        live = completion_mask.astype(bool) & scored[:, None]
        now = time.perf_counter()
        step = now - (self._flow_last_step_end if self._flow_last_step_end is not None else started)
        self._flow_last_step_end = now
        values = {
            "flow/weight_mean": float(weights[live].mean()) if live.any() else 1.0,
            "flow/weight_max": float(weights[live].max()) if live.any() else 1.0,
            "flow/answer_mass": float(np.nanmean(details["answer_mass"])) if scored.any() else float("nan"),
            # The largest over the batch's scored sequences, as the Rust trainer logs it.
            "flow/conservation_residual": float(np.nanmax(details["conservation_residual"]))
            if scored.any()
            else float("nan"),
            "flow/no_answer_frac": float(no_answer.mean()),
            "flow/unscored_frac": float((~scored & ~no_answer).mean()),
            "flow/scoring_time_frac": flow_seconds / step if step > 0 else 0.0,
        }
        for name in LOGGED_METRICS:
            metrics[name].append(values[name])
