"""score_batch from numpy against the core's batch path and against the subprocess recipe it
replaces: 64 sequences of N = 2048, in one run.

    python flowtracer-py/benches/bench_batch.py [--b 64] [--n 2048] [--repeats 7]
        [--subprocess 8] [--flowtracer target/release/flowtracer]

Three ways to get the `(B, T)` weights of the same float32 `[B, N, N]` buffer (random causal
row-stochastic, peaked rows; question 0..64, answer N-8..N; default configuration):

- **rust**: `_native._core_batch_seconds`, the core's batch path with no binding
  (`Sequence::dense` on each slice, `Tracer::trace_batch` in parallel, `token_weights`);
- **python**: `flowtracer.score_batch` (zero-copy read, span parsing, GIL released, the
  `(B, T)` result). Rust and Python runs alternate (A B A B ...) so drift in the machine's
  speed hits both; medians, and the binding overhead `python / rust - 1`;
- **subprocess**: the recipe the package replaces, per response: `numpy.save` its `Ā` to a
  `.npy`, run `flowtracer score --attention FILE --question 0..64 --answer N-8..N` in a
  subprocess, parse its JSON, copy its `weights` into the row. Timed on the first
  `--subprocess` sequences only (one after another, as the recipe runs), and scaled to the
  batch per sequence: `B x (seconds / sequences)`, stated as such in the output.

Prints one JSON object with numpy's version, the core's thread count and the load average
before and after (the machine may be shared).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import flowtracer
from flowtracer import _native

ROOT = Path(__file__).resolve().parents[2]


def load():
    return Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None


def subprocess_recipe(binary, a, q, ans, count, tmp):
    """The old recipe on the first `count` sequences: (seconds, weights rows)."""
    b, n, _ = a.shape
    t = n - q[1]
    out = np.ones((count, t), dtype=np.float64)
    start = time.perf_counter()
    for i in range(count):
        path = os.path.join(tmp, f"seq{i}.npy")
        np.save(path, a[i])
        run = subprocess.run(
            [binary, "score", "--attention", path, "--question", f"{q[0]}..{q[1]}", "--answer", f"{ans[0]}..{ans[1]}"],
            check=True,
            capture_output=True,
            text=True,
        )
        w = json.loads(run.stdout)["weights"]
        out[i] = w[q[1] : q[1] + t]
    return time.perf_counter() - start, out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--b", type=int, default=64)
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--subprocess", type=int, default=8, help="sequences timed through the subprocess recipe (0: skip)")
    p.add_argument("--flowtracer", default=str(ROOT / "target" / "release" / "flowtracer"))
    args = p.parse_args()
    b, n = args.b, args.n
    load_before = load()
    rng = np.random.default_rng(0)
    a = np.empty((b, n, n), dtype=np.float32)
    for i in range(b):  # causal, row-stochastic, peaked
        x = np.tril(rng.random((n, n), dtype=np.float32) ** 4)
        a[i] = x / x.sum(axis=1, keepdims=True)
    q, ans = (0, 64), (n - 8, n)
    questions, answers = [q] * b, [ans] * b

    # warm-up
    w = flowtracer.score_batch(a, questions, answers)
    assert w.shape == (b, n - 64)
    _native._core_batch_seconds(a, q, ans, 1)

    rust, python = [], []
    for _ in range(args.repeats):
        rust += _native._core_batch_seconds(a, q, ans, 1)
        t0 = time.perf_counter()
        flowtracer.score_batch(a, questions, answers)
        python.append(time.perf_counter() - t0)
    r, py = statistics.median(rust), statistics.median(python)
    result = {
        "b": b,
        "n": n,
        "dtype": "float32",
        "gib": round(a.nbytes / 2**30, 3),
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "threads": _native._threads(),
        "cpus": os.cpu_count(),
        "rust_median_s": round(r, 4),
        "python_median_s": round(py, 4),
        "overhead": round(py / r - 1, 4),
        "rust_s": [round(x, 4) for x in rust],
        "python_s": [round(x, 4) for x in python],
    }
    if args.subprocess:
        k = min(args.subprocess, b)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess_recipe(args.flowtracer, a, q, ans, 1, tmp)  # warm the page cache and binary
            seconds, rows = subprocess_recipe(args.flowtracer, a, q, ans, k, tmp)
        per_seq = seconds / k
        result.update(
            {
                "subprocess_sequences_timed": k,
                "subprocess_s": round(seconds, 4),
                "subprocess_per_sequence_s": round(per_seq, 4),
                "subprocess_scaled_to_batch_s": round(per_seq * b, 3),
                "speedup_vs_subprocess": round(per_seq * b / py, 1),
                # the CLI computes in f64 from the f32 file; weights agree where no tie
                # straddles the top-rho cut
                "subprocess_rows_equal": int(sum(np.array_equal(rows[i], w[i]) for i in range(k))),
                "flowtracer_binary": os.path.relpath(args.flowtracer, ROOT),
            }
        )
    result["load_before"] = load_before
    result["load_after"] = load()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
