"""flowtracer against what trainer authors use today, timed in one run.

(a) numpy/scipy: `flowtracer_numpy` of ../shared/bench/python_anchor.py, used as it is
    (two LAPACK triangular solves in f64 on copies of the matrix);
(b) the floor: two streaming passes over the packed f32 lower triangle (`numpy.sum`);
(c) flowtracer-core through the bench binary `examples/bench_trace.rs` (f32 input, f64
    accumulation), which also reports the peak heap bytes allocated while scoring.

Checks that (a) and (c) agree to 1e-5 on h and f, and prints a Markdown table of medians
and ratios (all measured in this run).

    python3 flowtracer-core/benches/compare.py [N ...] [--reps R] [--markdown FILE]
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
ANCHOR = ROOT.parent / "shared" / "bench"
sys.path.insert(0, str(ANCHOR))
from python_anchor import flowtracer_numpy, random_attention  # noqa: E402


def median_time(fn, reps):
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sizes", nargs="*", type=int, default=[1024, 2048, 4096])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--markdown", type=pathlib.Path)
    args = ap.parse_args()

    subprocess.run(
        ["cargo", "build", "--release", "--locked", "-q", "-p", "flowtracer-core", "--example", "bench_trace"],
        cwd=ROOT, check=True,
    )
    binary = ROOT / "target" / "release" / "examples" / "bench_trace"
    rng = np.random.default_rng(0)
    rows = []
    for n in args.sizes:
        abar = random_attention(n, rng)
        q, a = list(range(0, n // 8)), list(range(n - 8, n))
        packed = abar[np.tril_indices(n)].astype(np.float32)

        h_np, f_np = flowtracer_numpy(abar, q, a)
        t_np = median_time(lambda: flowtracer_numpy(abar, q, a), max(3, args.reps // 2))
        t_floor = 2 * median_time(lambda: packed.sum(), args.reps)

        with tempfile.TemporaryDirectory() as tmp:
            inp, out = os.path.join(tmp, "a.f32"), os.path.join(tmp, "hf.f64")
            np.ascontiguousarray(abar, dtype="<f4").tofile(inp)
            res = subprocess.run(
                [str(binary), "--input", inp, "--n", str(n), "--question", f"0..{n // 8}",
                 "--answer", f"{n - 8}..{n}", "--reps", str(args.reps), "--out", out],
                check=True, capture_output=True, text=True,
            )
            rust = json.loads(res.stdout)
            hf = np.fromfile(out, dtype="<f8")
        h_rs, f_rs = hf[:n], hf[n:]
        err = max(np.max(np.abs(h_rs - h_np) / np.maximum(1.0, np.abs(h_np))),
                  np.max(np.abs(f_rs - f_np) / np.maximum(1.0, np.abs(f_np))))
        if not err <= 1e-5:
            sys.exit(f"N={n}: flowtracer and numpy/scipy disagree: max relative error {err:.3e} > 1e-5")
        rows.append(dict(n=n, numpy=t_np, floor=t_floor, rust=rust["median_s"],
                         peak=rust["peak_extra_bytes"], err=err))
        print(json.dumps(rows[-1]), file=sys.stderr)

    lines = [
        "| N | numpy/scipy (s) | floor: 2 passes (s) | flowtracer (s) | flowtracer / floor | numpy / flowtracer | peak extra heap | max rel. diff |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['numpy']:.4f} | {r['floor']:.5f} | {r['rust']:.5f} | "
            f"{r['rust'] / r['floor']:.2f}x | {r['numpy'] / r['rust']:.1f}x | "
            f"{r['peak'] / 1024:.0f} KiB ({r['peak'] / r['n']:.0f} B/token) | {r['err']:.1e} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
