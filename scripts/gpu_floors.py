"""Floors for scripts/gpu-bench.sh, measured with the machine's PyTorch on the same GPU.

- fp32 matmul with TF32 off on the Q·Kᵀ shapes of one layer of one sequence
  ([H_q, N, d] @ [H_q, d, N], keys repeated for grouped-query heads): TFLOP/s counted on the
  full N x N product (2 · H_q · N² · d flops);
- a device-to-device copy of the batch's Ā (batch · N² · 4 bytes): bytes moved per second,
  read plus written, and from it the time floor of the two passes plus the check, which
  read the lower triangle of Ā three times (3 · 2 N² bytes per sequence).

Prints one JSON object. Each figure is the median of --reps timed runs (CUDA events) after
two warm-ups.
"""

import argparse
import json
import statistics

import torch


def timed(fn, reps):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", default="1024,4096,8192")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", default="32,8")
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    # bench_qk_gpu's flags, so gpu-bench.sh passes both the same ones: the floors are per
    # layer (the matmul) or per batch of Ā (the copy), so the layer count does not enter.
    p.add_argument("--layers", type=int, default=12)
    a = p.parse_args()
    hq, hkv = (int(x) for x in a.heads.split(","))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    rows = []
    for n in (int(x) for x in a.n.split(",")):
        g = torch.Generator(device="cuda").manual_seed(n)
        q = torch.rand(hq, n, a.d, device="cuda", generator=g) * 2 - 1
        k = torch.rand(hkv, n, a.d, device="cuda", generator=g) * 2 - 1
        kt = k.repeat_interleave(hq // hkv, dim=0).transpose(1, 2).contiguous()
        out = torch.empty(hq, n, n, device="cuda")
        ms = timed(lambda: torch.bmm(q, kt, out=out), a.reps)
        flops = 2.0 * hq * n * n * a.d
        del out
        nbytes = a.batch * n * n * 4
        src = torch.empty(nbytes // 4, device="cuda")
        dst = torch.empty_like(src)
        copy_ms = timed(lambda: dst.copy_(src), a.reps)
        del src, dst
        moved_per_s = 2.0 * nbytes / (copy_ms * 1e-3)
        passes_bytes = a.batch * 3 * 2.0 * n * n
        rows.append(
            {
                "n": n,
                "matmul_fp32_ms_per_layer_seq": round(ms, 4),
                "matmul_fp32_tflops": round(flops / (ms * 1e-3) / 1e12, 3),
                "copy_ms": round(copy_ms, 4),
                "copy_tb_per_s_read_plus_write": round(moved_per_s / 1e12, 3),
                "passes_floor_ms_batch": round(passes_bytes / moved_per_s * 1e3, 4),
            }
        )
        torch.cuda.empty_cache()
    print(
        json.dumps(
            {
                "floors": "torch",
                "torch": torch.__version__,
                "gpu": torch.cuda.get_device_name(0),
                "tf32": False,
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
