"""FlowTracer from post-RoPE Q and K (method §15) against what trainer authors write today,
timed in one run on the same two threads (issue 15's benchmark).

Contenders, per N, for H_q heads over H_kv key heads of dimension d, two layers, f32:
(a) numpy per head, as users write it today (AttnRL): `softmax(Q Kᵀ · scale + mask)` as a
    full `N x N` per head, the mean over heads and layers, then the two triangular solves of
    ../shared/bench/python_anchor.py;
(b) the best numpy we could write: row blocks of 512 queries, every head's softmax over the
    block's causal keys, averaged per block (no per-head `N x N`), then the same solves;
(c) the floor: numpy's (BLAS) `Q Kᵀ` for the same heads and layers, nothing else, halved
    (causal attention needs the lower half);
(d) flowtracer mode (a): `qk::QkAccumulator` to `Ā`, then the trace, through the bench
    binary `examples/bench_qk.rs` (built with `--features parallel`), with its peak extra
    heap from a counting allocator; and flowtracer mode (b): `Tracer::trace_qk`, the rows of
    `Ā` recomputed inside the two passes (nothing `N x N`), same binary, same repetitions
    (the modes alternate), its trace checked equal to mode (a)'s bit for bit;
(e) the per-cause variant of (d) for the missed floor target: the same code built for
    AVX2 (`-C target-feature=+avx2`, into target/bench-avx2; not what ships, which is the
    x86-64 baseline, SSE2), to show how much of the gap to BLAS is the instruction set
    (BLAS dispatches to AVX2/AVX-512 with FMA at run time; the core cannot without
    `unsafe`).

Checks that (a), (b) and (d) agree on h and f (relative 1e-4), and prints a Markdown table
of medians and ratios, with numpy's and scipy's versions and the thread count.

    python3 flowtracer-core/benches/compare_qk.py [N ...] [--reps R] [--markdown FILE]
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

THREADS = "2"
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ[var] = THREADS

import numpy as np  # noqa: E402
import scipy  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
ANCHOR = ROOT.parent / "shared" / "bench"
sys.path.insert(0, str(ANCHOR))
from python_anchor import flowtracer_numpy  # noqa: E402

from compare import median_time  # noqa: E402  (this folder is on the path: run as a script)

HQ, HKV, D, LAYERS = 16, 4, 64, 2
BLOCK = 512


def per_head(q, k, scale):
    """(a): one full softmax per head, as AttnRL computes it."""
    _, hq, n, _ = q.shape
    group = hq // k.shape[1]
    mask = np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)
    acc = np.zeros((n, n), dtype=np.float32)
    for l in range(q.shape[0]):
        for h in range(hq):
            s = q[l, h] @ k[l, h // group].T * scale + mask
            s -= s.max(axis=1, keepdims=True)
            p = np.exp(s)
            p /= p.sum(axis=1, keepdims=True)
            acc += p
    return acc / (q.shape[0] * hq)


def blocked(q, k, scale):
    """(b): row blocks, heads averaged per block, no per-head N x N."""
    _, hq, n, _ = q.shape
    group = hq // k.shape[1]
    acc = np.zeros((n, n), dtype=np.float32)
    for r0 in range(0, n, BLOCK):
        r1 = min(n, r0 + BLOCK)
        mask = np.triu(np.full((r1 - r0, r1), -np.inf, dtype=np.float32), 1 + r0)
        block = acc[r0:r1, :r1]
        for l in range(q.shape[0]):
            for h in range(hq):
                s = q[l, h, r0:r1] @ k[l, h // group, :r1].T * scale + mask
                s -= s.max(axis=1, keepdims=True)
                np.exp(s, out=s)
                s /= s.sum(axis=1, keepdims=True)
                block += s
    return acc / (q.shape[0] * hq)


def floor(q, k):
    """(c): the BLAS products alone."""
    group = q.shape[1] // k.shape[1]
    for l in range(q.shape[0]):
        for h in range(q.shape[1]):
            q[l, h] @ k[l, h // group].T


def uptime():
    """The machine's load (other sessions build and test on it), as `uptime` prints it."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sizes", nargs="*", type=int, default=[1024, 4096, 8192])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--markdown", type=pathlib.Path)
    args = ap.parse_args()

    subprocess.run(
        ["cargo", "build", "--release", "--locked", "-q", "-p", "flowtracer-core",
         "--features", "parallel", "--example", "bench_qk"],
        cwd=ROOT, check=True,
    )
    binary = ROOT / "target" / "release" / "examples" / "bench_qk"
    avx2_dir = ROOT / "target" / "bench-avx2"
    subprocess.run(
        ["cargo", "build", "--release", "--locked", "-q", "-p", "flowtracer-core",
         "--features", "parallel", "--example", "bench_qk"],
        cwd=ROOT, check=True,
        env=dict(os.environ, CARGO_TARGET_DIR=str(avx2_dir), RUSTFLAGS="-C target-feature=+avx2"),
    )
    avx2 = avx2_dir / "release" / "examples" / "bench_qk"
    rng = np.random.default_rng(0)
    scale = 1.0 / np.sqrt(D)
    rows = []
    for n in args.sizes:
        q = rng.standard_normal((LAYERS, HQ, n, D), dtype=np.float32)
        k = rng.standard_normal((LAYERS, HKV, n, D), dtype=np.float32)
        qs, ans = list(range(0, n // 8)), list(range(n - 8, n))
        reps = args.reps if n <= 4096 else max(1, args.reps // 2)

        h_b, f_b = flowtracer_numpy(blocked(q, k, scale), qs, ans)
        t_blocked = median_time(lambda: flowtracer_numpy(blocked(q, k, scale), qs, ans), reps)
        t_floor = median_time(lambda: floor(q, k), reps) / 2
        if n <= 4096:
            h_a, f_a = flowtracer_numpy(per_head(q, k, scale), qs, ans)
            t_per_head = median_time(lambda: flowtracer_numpy(per_head(q, k, scale), qs, ans), reps)
            assert np.allclose(h_a, h_b, rtol=1e-4, atol=1e-6) and np.allclose(f_a, f_b, rtol=1e-4, atol=1e-6)
        else:
            t_per_head = None  # 16 full N x N softmaxes per layer: minutes at N = 8192

        with tempfile.TemporaryDirectory() as tmp:
            qf, kf, out = (os.path.join(tmp, x) for x in ("q.f32", "k.f32", "hf.f64"))
            np.ascontiguousarray(q, dtype="<f4").tofile(qf)
            np.ascontiguousarray(k, dtype="<f4").tofile(kf)
            res = subprocess.run(
                [str(binary), "--q", qf, "--k", kf, "--layers", str(LAYERS), "--q-heads", str(HQ),
                 "--kv-heads", str(HKV), "--n", str(n), "--d", str(D), "--question", f"0..{n // 8}",
                 "--answer", f"{n - 8}..{n}", "--reps", str(reps), "--out", out],
                check=True, capture_output=True, text=True,
            )
            rust = json.loads(res.stdout)
            hf = np.fromfile(out, dtype="<f8")
            res = subprocess.run([str(avx2)] + res.args[1:], check=True, capture_output=True, text=True)
            rust_avx2 = json.loads(res.stdout)
        h_rs, f_rs = hf[:n], hf[n:]
        err = max(np.max(np.abs(h_rs - h_b) / np.maximum(1.0, np.abs(h_b))),
                  np.max(np.abs(f_rs - f_b) / np.maximum(1.0, np.abs(f_b))))
        if not err <= 1e-4:
            sys.exit(f"N={n}: flowtracer and numpy disagree: max relative error {err:.3e} > 1e-4")
        rows.append(dict(n=n, per_head=t_per_head, blocked=t_blocked, floor=t_floor,
                         rust=rust["median_s"], rust_qk=rust["qk_median_s"], avx2=rust_avx2["median_s"],
                         peak=rust["peak_extra_bytes"], err=err, stream=rust["b_median_s"],
                         stream_avx2=rust_avx2["b_median_s"], stream_peak=rust["b_peak_extra_bytes"]))
        print(json.dumps(rows[-1]), file=sys.stderr)

    lines = [
        f"numpy {np.__version__}, scipy {scipy.__version__}, {THREADS} threads (BLAS and rayon); "
        f"H_q = {HQ}, H_kv = {HKV}, d = {D}, {LAYERS} layers, f32; `uptime`: {uptime()}",
        "",
        "| N | numpy per head (s) | numpy blocked (s) | floor: QKᵀ / 2 (s) | flowtracer (a): Ā (s) | flowtracer (a): Ā + trace (s) | (a) / floor | variant (e) AVX2 build: Ā + trace (s) | (e) / floor | blocked / (a) | per head / (a) | peak extra heap (a) | N² f32 | max rel. diff |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ph = "—" if r["per_head"] is None else f"{r['per_head']:.3f}"
        ph_ratio = "—" if r["per_head"] is None else f"{r['per_head'] / r['rust']:.1f}x"
        lines.append(
            f"| {r['n']} | {ph} | {r['blocked']:.3f} | {r['floor']:.4f} | {r['rust_qk']:.4f} | "
            f"{r['rust']:.4f} | {r['rust'] / r['floor']:.2f}x | {r['avx2']:.4f} | {r['avx2'] / r['floor']:.2f}x | "
            f"{r['blocked'] / r['rust']:.1f}x | {ph_ratio} | "
            f"{r['peak'] / 2**20:.1f} MiB | {4 * r['n'] ** 2 / 2**20:.1f} MiB | {r['err']:.1e} |"
        )
    lines += [
        "",
        "| N | floor (s) | flowtracer (a): Ā + trace (s) | (a) / floor | flowtracer (b): streaming (s) | (b) / floor | (b) / (a) | "
        "variant (e) AVX2 build: (b) (s) | (e) (b) / floor | blocked / (b) | per head / (b) | peak extra heap (a) | peak extra heap (b) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ph_ratio = "—" if r["per_head"] is None else f"{r['per_head'] / r['stream']:.1f}x"
        lines.append(
            f"| {r['n']} | {r['floor']:.4f} | {r['rust']:.4f} | {r['rust'] / r['floor']:.2f}x | {r['stream']:.4f} | "
            f"{r['stream'] / r['floor']:.2f}x | {r['stream'] / r['rust']:.2f}x | {r['stream_avx2']:.4f} | "
            f"{r['stream_avx2'] / r['floor']:.2f}x | {r['blocked'] / r['stream']:.1f}x | {ph_ratio} | "
            f"{r['peak'] / 2**20:.1f} MiB | {r['stream_peak'] / 2**20:.2f} MiB |"
        )
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
