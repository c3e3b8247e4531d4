#!/usr/bin/env bash
# The prepared real-GPU check of flowtracer-gpu (issue 16), in two modes.
#
#   scripts/gpu-bench.sh build [BUNDLE]   here (CI runs this): builds stripped release
#       binaries, gzipped (the GPU conformance tests of flowtracer-conformance and
#       flowtracer-gpu, and the example bench_qk_gpu), downloads the Vulkan loader (libvulkan1 .deb, which a bare
#       NVIDIA machine lacks) with `apt-get download`, and checks that the bundle fits in
#       64 MiB together with the working tree (the device tool's limit on what travels).
#   scripts/gpu-bench.sh run [BUNDLE]     on the NVIDIA machine: unpacks the loader into the
#       bundle (dpkg -x, nothing outside it), points it at the NVIDIA Vulkan driver, runs the
#       conformance binaries (they must find a GPU adapter: no skipping), the benchmark and
#       the PyTorch floors (scripts/gpu_floors.py), and prints one JSON object (also written
#       to $OUT/gpu-bench.json when OUT is set).
#
# BUNDLE defaults to target/gpu-bench (ignored by git). With the device tool:
#   run(command="scripts/gpu-bench.sh run", carry=["target/gpu-bench"], timeout_s=540)
# Shape of the benchmark: GPU_BENCH_ARGS (default: the Qwen3-8B middle band, 12 layers,
# H_q = 32, H_kv = 8, d = 128, N in 1024, 4096, 8192, batch 4, 3 timed repetitions).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"
bundle="${2:-target/gpu-bench}"
limit=$((64 * 1024 * 1024))
bench_args="${GPU_BENCH_ARGS:---n 1024,4096,8192 --batch 4 --layers 12 --heads 32,8 --d 128 --reps 3}"

# The test executables a `cargo test --no-run --message-format=json` built, one path a line.
executables() {
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu":
        print(m["executable"])
'
}

build() {
    local start=$SECONDS
    mkdir -p "$bundle/bin" "$bundle/debs"
    cargo build --locked --release -p flowtracer-gpu --features wgpu --example bench_qk_gpu
    local conf gpu
    conf="$(cargo test --locked --release -p flowtracer-conformance --features gpu --no-run \
        --message-format=json | executables)"
    gpu="$(cargo test --locked --release -p flowtracer-gpu --features wgpu --no-run \
        --message-format=json | executables)"
    [ -n "$conf" ] && [ -n "$gpu" ] || { echo "gpu-bench: test binaries not found" >&2; exit 1; }
    # Stripped, then gzipped (about 22 MB each stripped: three would not fit in 64 MiB).
    rm -f "$bundle"/bin/*
    local name src
    for pair in "bench_qk_gpu=target/release/examples/bench_qk_gpu" "conformance-gpu=$conf" \
        "flowtracer-gpu-tests=$gpu"; do
        name="${pair%%=*}"
        src="${pair#*=}"
        strip --strip-all -o "$bundle/bin/$name" "$src"
        gzip -9 -n -f "$bundle/bin/$name"
    done
    if ! ls "$bundle"/debs/libvulkan1_*.deb >/dev/null 2>&1; then
        # Its own package lists, for amd64 whatever this machine is (the device is x86-64).
        local o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oAPT::Sandbox::User=root
            -oDir::State::Lists=/tmp/gpu-bench-apt-lists -oDir::Cache=/tmp/gpu-bench-apt-cache)
        mkdir -p /tmp/gpu-bench-apt-lists/partial /tmp/gpu-bench-apt-cache
        apt-get "${o[@]}" update -qq
        (cd "$bundle/debs" && apt-get "${o[@]}" download libvulkan1)
    fi
    cp scripts/gpu-bench.sh scripts/gpu_floors.py "$bundle/"
    # What travels to the device: the bundle plus the working tree (tracked and untracked,
    # not ignored files), 64 MiB together.
    local size tree
    size="$(du -sb "$bundle" --exclude=root --exclude=out --exclude=exe | cut -f1)"
    tree="$(git ls-files -z -co --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -n 1 | cut -f1)"
    echo "gpu-bench: bundle $bundle is $size bytes, working tree $tree bytes: $(((size + tree) / 1024 / 1024)) MiB of 64 MiB; built in $((SECONDS - start)) s"
    du -b "$bundle"/bin/* "$bundle"/debs/*
    if [ "$((size + tree))" -gt "$limit" ]; then
        echo "gpu-bench: the bundle and the working tree exceed 64 MiB" >&2
        exit 1
    fi
}

run() {
    [ -f "$bundle/bin/bench_qk_gpu.gz" ] || { echo "gpu-bench: no bundle at $bundle: run 'build' first" >&2; exit 1; }
    local exe="$bundle/exe" f
    mkdir -p "$exe"
    for f in "$bundle"/bin/*.gz; do
        gzip -dc "$f" > "$exe/$(basename "$f" .gz)"
        chmod +x "$exe/$(basename "$f" .gz)"
    done
    local root="$bundle/root"
    if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; then
        mkdir -p "$root"
        for f in "$bundle"/debs/*.deb; do dpkg -x "$f" "$root"; done
        export LD_LIBRARY_PATH="$(cd "$root" && pwd)/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
    if [ -z "${VK_DRIVER_FILES:-}" ]; then
        for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json \
            /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json; do
            if [ -f "$icd" ]; then export VK_DRIVER_FILES="$icd"; break; fi
        done
    fi
    export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
    local out="${OUT:-$bundle/out}"
    mkdir -p "$out"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/gpu.txt" 2>&1 || true
    local status=0
    "$exe/conformance-gpu" --test-threads=1 > "$out/conformance.log" 2>&1 || status=1
    "$exe/flowtracer-gpu-tests" --test-threads=1 > "$out/gpu-tests.log" 2>&1 || status=1
    # shellcheck disable=SC2086
    "$exe/bench_qk_gpu" $bench_args > "$out/bench.json" 2> "$out/bench.err" || status=1
    # The floors on the benchmark's own shapes (N, batch, heads, d: the same flags).
    # shellcheck disable=SC2086
    python3 scripts/gpu_floors.py $bench_args > "$out/floors.json" 2> "$out/floors.err" || status=1
    python3 - "$out" "$status" <<'PY'
import json, os, re, sys
out, status = sys.argv[1], int(sys.argv[2])
def read(name):
    try:
        return open(os.path.join(out, name)).read()
    except OSError:
        return ""
def tests(log):
    m = re.findall(r"test result: (\w+)\. (\d+) passed; (\d+) failed", log)
    return {"result": [r for r, _, _ in m], "passed": sum(int(p) for _, p, _ in m),
            "failed": sum(int(f) for _, _, f in m), "skipped_lines": log.count("SKIPPED")}
def load(name):
    try:
        return json.loads(read(name))
    except ValueError:
        return {"error": (read(name) + read(name.replace(".json", ".err")))[-2000:]}
bench, floors = load("bench.json"), load("floors.json")
ratios = []
for b in bench.get("rows", []):
    f = next((f for f in floors.get("rows", []) if f["n"] == b["n"]), None)
    if f:
        ratios.append({
            "n": b["n"],
            "qk_executed_vs_torch_fp32": round(b["qk_tflops_executed"] / f["matmul_fp32_tflops"], 4),
            "passes_ms_batch_vs_copy_floor": round(b["passes_ms"] / f["passes_floor_ms_batch"], 2),
        })
print(json.dumps({
    "gpu": read("gpu.txt").strip(),
    "vk_driver_files": os.environ.get("VK_DRIVER_FILES", ""),
    "conformance": tests(read("conformance.log")),
    "gpu_crate_tests": tests(read("gpu-tests.log")),
    "bench": bench,
    "floors": floors,
    "ratios": ratios,
    "ok": status == 0,
}, indent=1))
PY
    if [ "$status" -ne 0 ]; then
        tail -n 30 "$out/conformance.log" "$out/gpu-tests.log" "$out/bench.err" "$out/floors.err" >&2 || true
    fi
    return "$status"
}

case "$mode" in
    build) build ;;
    run) run | tee "${OUT:-$bundle}/gpu-bench.json" ;;
    *) echo "usage: scripts/gpu-bench.sh build|run [BUNDLE]" >&2; exit 2 ;;
esac
