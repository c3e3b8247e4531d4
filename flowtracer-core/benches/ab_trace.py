"""Interleaved A/B timing of two `bench_trace` binaries (the example `compare.py` drives),
for "no slowdown" checks across commits: the same input per N, the same flags as
`compare.py` (question the first eighth, answer the last 8 tokens, 15 repetitions per run),
runs alternating A B / B A so drift hits both, and the median of the per-run medians.

    git worktree add /tmp/base <commit> && (cd /tmp/base && cargo build --release -p flowtracer-core --example bench_trace)
    cargo build --release -p flowtracer-core --example bench_trace
    python3 flowtracer-core/benches/ab_trace.py /tmp/base/target/release/examples/bench_trace \\
        target/release/examples/bench_trace 1024,4096,8192 10

Prints, per N, every run's median for A and B, the medians, B / A and the A/A spread
(max - min of A's runs over their median): a ratio inside the spread is no measurable change.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np


def main():
    a_bin, b_bin = sys.argv[1], sys.argv[2]
    sizes = [int(x) for x in sys.argv[3].split(",")]
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 6
    rng = np.random.default_rng(0)
    for n in sizes:
        a = np.tril(rng.random((n, n)))
        a /= a.sum(axis=1, keepdims=True)
        with tempfile.TemporaryDirectory() as tmp:
            inp = os.path.join(tmp, "a.f32")
            np.ascontiguousarray(a, dtype="<f4").tofile(inp)
            runs = {"A": [], "B": []}
            for r in range(rounds):
                order = (("A", a_bin), ("B", b_bin)) if r % 2 == 0 else (("B", b_bin), ("A", a_bin))
                for name, binary in order:
                    out = subprocess.run(
                        [binary, "--input", inp, "--n", str(n), "--question", f"0..{n // 8}",
                         "--answer", f"{n - 8}..{n}", "--reps", "15"],
                        check=True, capture_output=True, text=True,
                    ).stdout
                    runs[name].append(json.loads(out)["median_s"] * 1e3)
        ma, mb = statistics.median(runs["A"]), statistics.median(runs["B"])
        spread = (max(runs["A"]) - min(runs["A"])) / ma
        print(f"N={n}: A {['%.2f' % x for x in runs['A']]} ms, B {['%.2f' % x for x in runs['B']]} ms; "
              f"median A {ma:.2f} ms, B {mb:.2f} ms, B/A {mb / ma:.3f}, A/A spread {spread:.0%}")


if __name__ == "__main__":
    main()
