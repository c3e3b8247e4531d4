"""Issue 15, item 5: the aggregation and the two passes against their floors, with one
variant per named cause of the gap, timed in one run (this script's numpy floors and the
bench binary `examples/bench_passes.rs`, in its shipped build and in an AVX2 build).

Floors, measured here with numpy on arrays of the benchmark's sizes:
- aggregation: one read of the eight packed lower triangles ([2 layers][4 heads]) plus one
  write of a packed triangle, `P.sum(axis=0)` (the issue's definition); `P.sum()` (the read
  alone) is printed beside it;
- trace: two streaming passes over the packed f32 lower triangle, `2 x packed.sum()` (as
  `compare.py`).

The binary prints the shipped entry points and benchmark-only replicas of their loops, each
changing one cause (see its docs); the AVX2 build (`-C target-feature=+avx2`, into
target/bench-avx2; not what ships) shows the instruction set's share. Every contender is
single-threaded (numpy's sums and the aggregation; the trace of one sequence).

    python3 flowtracer-core/benches/compare_passes.py [N ...] [--reps R] [--markdown FILE]
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys

THREADS = "2"
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ[var] = THREADS

import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from compare import median_time  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
MATRICES = 8


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def build(target_dir=None, rustflags=None):
    env = dict(os.environ)
    if target_dir:
        env["CARGO_TARGET_DIR"] = str(target_dir)
    if rustflags:
        env["RUSTFLAGS"] = rustflags
    subprocess.run(
        ["cargo", "build", "--release", "--locked", "-q", "-p", "flowtracer-core",
         "--features", "parallel", "--example", "bench_passes"],
        cwd=ROOT, check=True, env=env,
    )
    return pathlib.Path(target_dir or ROOT / "target") / "release" / "examples" / "bench_passes"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sizes", nargs="*", type=int, default=[4096, 8192])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--markdown", type=pathlib.Path)
    args = ap.parse_args()
    shipped_bin = build()
    avx2_bin = build(ROOT / "target" / "bench-avx2", "-C target-feature=+avx2")
    start = uptime()
    rows = []
    for n in args.sizes:
        m = n * (n + 1) // 2
        p = np.random.default_rng(0).random((MATRICES, m), dtype=np.float32)
        agg_rw = median_time(lambda: p.sum(axis=0), args.reps)
        agg_read = median_time(lambda: p.sum(), args.reps)
        one = p[0]
        trace_floor = 2 * median_time(lambda: one.sum(), args.reps)
        del p, one
        cmd = ["--n", str(n), "--reps", str(args.reps)]
        rust = json.loads(subprocess.run([str(shipped_bin)] + cmd, check=True, capture_output=True, text=True).stdout)
        avx2 = json.loads(subprocess.run([str(avx2_bin)] + cmd, check=True, capture_output=True, text=True).stdout)
        rows.append(dict(n=n, agg_floor=agg_rw, agg_read=agg_read, trace_floor=trace_floor, rust=rust, avx2=avx2))
        print(json.dumps(rows[-1]), file=sys.stderr)
    end = uptime()

    agg = [
        ("agg_shipped", "shipped: `aggregate`, dense input"),
        ("agg_packed", "shipped, packed input"),
        ("agg_reused", "shipped `LayerAccumulator::with_buffer`: output allocation reused (no fresh pages)"),
        ("agg_rep_previous", "replica, reused output: the previous loop (a head at a time, sum + min per entry)"),
        ("agg_rep_dense", "... the shipped dense loop (a head at a time, min per entry, finite sum row)"),
        ("agg_rep_dense_sweep4", "... dense, 4 heads per sweep (min, finite sum row)"),
        ("agg_rep_dense_nochecks", "... dense, a head at a time, checks off"),
        ("agg_rep_packed", "... the shipped packed loop (4 heads per sweep, min, finite sum row)"),
        ("agg_rep_packed_nochecks", "... packed, 4 heads per sweep, checks off"),
        ("agg_rep_fused", "... checks off, packed, all layers per row, Ā written once"),
        ("agg_floor_rust", "Rust floor: 8 packed reads + 1 packed write"),
    ]
    trace = [
        ("trace_shipped", "shipped: `Tracer::trace`, dense Ā"),
        ("trace_packed", "shipped, packed Ā"),
        ("trace_rep_f64", "replica of the two passes, checks off, f64 accumulation (as shipped)"),
        ("trace_rep_f32", "... checks off, f32 accumulation"),
        ("trace_rep_f32_packed", "... checks off, f32 accumulation, packed Ā"),
        ("trace_floor_rust", "Rust floor: 2 sums over the packed triangle"),
    ]
    sizes = [r["n"] for r in rows]
    lines = [
        f"numpy {np.__version__}, one thread per contender; medians of "
        f"{args.reps}; `uptime` before: {start}; after: {end}",
        "",
        "Aggregation, [2 layers][4 heads][N][N] f32 into Ā. Floor: numpy `P.sum(axis=0)` over the eight packed "
        "triangles (read 8, write 1): " + ", ".join(f"N = {r['n']}: {r['agg_floor'] * 1e3:.1f} ms" for r in rows)
        + "; the read alone (`P.sum()`): " + ", ".join(f"{r['agg_read'] * 1e3:.1f} ms" for r in rows) + ".",
        "",
        "| variant | " + " | ".join(f"N = {n} (ms) | / floor | AVX2 build (ms) | / floor" for n in sizes) + " |",
        "|---|" + "---:|" * (4 * len(sizes)),
    ]

    def table(entries, floor_key):
        for key, label in entries:
            cells = []
            for r in rows:
                f = r[floor_key]
                cells += [f"{r['rust'][key] * 1e3:.2f}", f"{r['rust'][key] / f:.2f}x",
                          f"{r['avx2'][key] * 1e3:.2f}", f"{r['avx2'][key] / f:.2f}x"]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")

    table(agg, "agg_floor")
    lines += [
        "",
        "Trace (reach and flow), one N x N f32 Ā, question the first eighth, answer the last 8 tokens. Floor: "
        "numpy `2 x packed.sum()`: " + ", ".join(f"N = {r['n']}: {r['trace_floor'] * 1e3:.2f} ms" for r in rows) + ".",
        "",
        "| variant | " + " | ".join(f"N = {n} (ms) | / floor | AVX2 build (ms) | / floor" for n in sizes) + " |",
        "|---|" + "---:|" * (4 * len(sizes)),
    ]
    table(trace, "trace_floor")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
