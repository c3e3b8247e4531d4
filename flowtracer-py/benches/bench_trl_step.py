"""Per-step cost of FlowTracerGRPOTrainer against TRL's GRPOTrainer on the same tiny model.

    python flowtracer-py/benches/bench_trl_step.py [--steps 6] [--completion 128]

A random Llama (8 layers, hidden 128, 8 query / 4 key-value heads, d = 16) on the CPU,
batch 8 (2 prompts x 4 generations), f32; both trainers run the same seeds, the plain one
first. Prints the median TRL step_time of each (the first step dropped: warm-up), their
ratio, and FlowTracer's own flow/scoring_time_frac (capture + scoring over step time). The
capture site is the loss's own forward (TRL's on-policy default): no extra forward pass.
Noisy on a shared machine: run it on an idle one for numbers you quote.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_llama import char_tokenizer, tiny_llama  # noqa: E402

from flowtracer.trl import FlowTracerConfig, FlowTracerGRPOTrainer, register  # noqa: E402


def reward(completions, **kwargs):
    return [float(i % 4) for i in range(len(completions))]


def run(flow: bool, steps: int, completion: int) -> tuple[list[float], list[float]]:
    tok = char_tokenizer()
    # Both trainers run the same attention function (flowtracer_sdpa: sdpa behind a hook that
    # does nothing while no capture is active), so the difference is the capture and the
    # scoring. (transformers 5.24 generated ~2x slower under the plain name "sdpa" here, with
    # identical tokens: a name-keyed generation path that would otherwise swamp the ratio.)
    model = tiny_llama(tok, layers=8, heads=8, kv_heads=4, hidden=128, attn=register("sdpa"))
    data = Dataset.from_dict({"prompt": ["12+34=", "(5-2)*3="] * 64})
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out, per_device_train_batch_size=8, num_generations=4,
            max_completion_length=completion, max_steps=steps, logging_steps=1, report_to="none",
            save_strategy="no", use_cpu=True, bf16=False, seed=0,
            generation_kwargs={"min_new_tokens": completion},
        )
        kw = dict(reward_funcs=reward, args=args, train_dataset=data, processing_class=tok)
        if flow:
            trainer = FlowTracerGRPOTrainer(model, flow_config=FlowTracerConfig(answer_marker=r"(.{3})$"), **kw)
        else:
            trainer = GRPOTrainer(model, **kw)
        trainer.train()
    logs = [h for h in trainer.state.log_history if "step_time" in h]
    return [h["step_time"] for h in logs], [h.get("flow/scoring_time_frac", 0.0) for h in logs]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--completion", type=int, default=128)
    a = p.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, steps {a.steps}, "
          f"completion {a.completion} tokens, batch 8")
    t0 = time.perf_counter()
    plain, _ = run(False, a.steps, a.completion)
    flow, frac = run(True, a.steps, a.completion)
    mp, mf = statistics.median(plain[1:]), statistics.median(flow[1:])
    print(f"GRPOTrainer           median step {mp * 1e3:8.1f} ms  (steps {[round(x, 3) for x in plain]})")
    print(f"FlowTracerGRPOTrainer median step {mf * 1e3:8.1f} ms  (steps {[round(x, 3) for x in flow]})")
    print(f"ratio {mf / mp:.3f}; flow/scoring_time_frac median {statistics.median(frac[1:]):.4f}; "
          f"capture + scoring per step (frac x step) median "
          f"{statistics.median(f * t for f, t in zip(frac[1:], flow[1:])) * 1e3:.1f} ms")
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
