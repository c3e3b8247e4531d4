"""docs/python.md's torch snippets run, and do what the page says.

Each snippet is taken from the page itself (its first line names it), so the page and the
test cannot drift. The Q/K file snippet is scored by the `flowtracer` CLI (env
FLOWTRACER_BIN, else target/debug/flowtracer; missing is a failure, not a skip) and checked
against flowtracer.score_qk on the same tensors and against the capture's own Ā.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors import safe_open
from tiny_llama import char_tokenizer, tiny_llama
from trl import GRPOConfig

import flowtracer
from flowtracer.trl import QkCapture

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "python.md"
#: The CLI (f32 input computed in f32) against score_qk / trace on the same f32 values:
#: |cli - py| <= CLI_RTOL * |py| + CLI_ATOL on reach, flow and throughput.
CLI_RTOL = 1e-5
CLI_ATOL = 1e-7


def snippet(name):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    found = [b for b in blocks if b.startswith(f"# {name}\n") or b.startswith(f"# {name} ")]
    assert len(found) == 1, f"docs/python.md has {len(found)} snippets named {name!r}"
    return compile(found[0], f"{DOC}:{name}", "exec")


def test_every_torch_snippet_is_named():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    firsts = sorted(b.splitlines()[0] for b in blocks if re.search(r"^(import|from) (torch|trl|verl|flowtracer\.trl)", b, re.M))
    assert firsts == sorted(["# score_qk", "# trl recipe", "# verl recipe (untested): the worker side of steps 2 and 3",
                             "# qk file"])


def test_score_qk_snippet():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(snippet("score_qk"), {})
    assert out.getvalue() == "(48,) [1.0, 1.5]\n"


def test_trl_recipe_snippet(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tok = char_tokenizer()
    grpo_args = GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, max_completion_length=8,
        max_steps=1, logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, bf16=False,
    )
    ns = {
        "model": tiny_llama(tok),
        "tokenizer": tok,
        "dataset": Dataset.from_dict({"prompt": ["1+1=", "2*3="]}),
        "reward_fn": lambda completions, **kw: [float(i) for i in range(len(completions))],
        "grpo_args": grpo_args,
    }
    exec(snippet("trl recipe"), ns)
    logs = [h for h in ns["trainer"].state.log_history if "flow/no_answer_frac" in h]
    # A random model never writes <answer>...</answer>: every completion keeps weight 1.
    assert logs and logs[0]["flow/no_answer_frac"] == 1.0 and logs[0]["flow/weight_mean"] == 1.0


def test_verl_recipe_is_marked_untested():
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## In verl") :]
    assert section.split("\n\n")[1].startswith("**Untested.**")


def cli():
    path = Path(os.environ.get("FLOWTRACER_BIN", ROOT / "target" / "debug" / "flowtracer"))
    assert path.is_file(), f"{path} missing: cargo build -p flowtracer-train --bin flowtracer (or set FLOWTRACER_BIN)"
    return path


def test_qk_file_snippet_scored_by_the_cli(tmp_path):
    ns = {}
    exec(snippet("qk file"), ns)
    tok = char_tokenizer()
    model = tiny_llama(tok, layers=6, heads=4, kv_heads=2)
    ids = torch.tensor([tok("12+34=46; so <answer>46</answer>").input_ids])
    n = ids.shape[1]
    path = tmp_path / "qk.safetensors"
    ns["write_qk_file"](model, ids, str(path))
    question, answer = (0, 6), (n - 11, n - 9)
    run = subprocess.run(
        [str(cli()), "score", "--qk", str(path), "--question", f"{question[0]}..{question[1]}",
         "--answer", f"{answer[0]}..{answer[1]}"],
        capture_output=True, text=True, check=False,
    )
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        layers = sorted(int(k.split(".")[1]) for k in f.keys() if k.startswith("q."))
        q = [f.get_tensor(f"q.{layer}") for layer in layers]
        k = [f.get_tensor(f"k.{layer}") for layer in layers]
    assert layers == [2, 3] and got["layers"] == layers and meta["num_layers"] == "6"
    assert q[0].shape == (4, n, 8) and k[0].shape == (2, n, 8)
    want = flowtracer.score_qk(q, k, question, answer, scale=float(meta["scale"]))
    for field in ("reach", "flow", "throughput"):
        np.testing.assert_allclose(got[field], getattr(want, field), rtol=CLI_RTOL, atol=CLI_ATOL, err_msg=field)
    # and the capture the trainer uses, on the same model and tokens
    capture = QkCapture(6)
    with torch.no_grad(), capture:
        model(input_ids=ids)
    a, errors = capture.result()
    assert errors == [None]
    traced = flowtracer.trace(a[0], question, answer)
    np.testing.assert_allclose(got["throughput"], traced.throughput, rtol=CLI_RTOL, atol=CLI_ATOL)
