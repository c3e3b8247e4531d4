"""Binding overhead of score_batch: 64 sequences of N = 2048 from numpy, against the core's
batch path on the same array in the same process.

    python flowtracer-py/benches/bench_batch.py [--b 64] [--n 2048] [--repeats 7]

Both sides trace the same float32 `[B, N, N]` buffer with the default configuration
(question 0..64, answer N-8..N) and compute each sequence's token weights; the Rust side is
`_native._core_batch_seconds` (`Sequence::dense` on each slice, `Tracer::trace_batch`,
`token_weights`, no binding), the Python side `flowtracer.score_batch` (zero-copy read,
span parsing, GIL released, the `(B, T)` result). Runs alternate (A B A B ...) so drift in
the machine's speed hits both; the medians are reported, with the overhead
`python / rust - 1`.
"""

import argparse
import json
import statistics
import time

import numpy as np

import flowtracer
from flowtracer import _native


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--b", type=int, default=64)
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    b, n = args.b, args.n
    rng = np.random.default_rng(0)
    a = np.empty((b, n, n), dtype=np.float32)
    for i in range(b):  # causal, row-stochastic, peaked
        x = np.tril(rng.random((n, n), dtype=np.float32) ** 4)
        a[i] = x / x.sum(axis=1, keepdims=True)
    q, ans = (0, 64), (n - 8, n)
    questions, answers = [q] * b, [ans] * b

    # warm-up, and the two sides agree on the weights
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
    print(
        json.dumps(
            {
                "b": b,
                "n": n,
                "dtype": "float32",
                "gib": round(a.nbytes / 2**30, 3),
                "rust_median_s": round(r, 4),
                "python_median_s": round(py, 4),
                "overhead": round(py / r - 1, 4),
                "rust_s": [round(x, 4) for x in rust],
                "python_s": [round(x, 4) for x in python],
            }
        )
    )


if __name__ == "__main__":
    main()
