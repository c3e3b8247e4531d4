#!/usr/bin/env bash
# One setting of a sensitivity sweep (issue 18): FlowTracer at other credit knobs, against the
# uniform runs of a finished study of the same task and seeds.
#
#   scripts/sensitivity.sh MAIN OUT SEEDS -- COMPARE_KNOBS...
#
# MAIN is the study's --out; OUT is this setting's own --out; COMPARE_KNOBS are the study's
# knobs (task, warm-up, steps; no --seed, --seeds, --methods or --out: the seeds are the
# study's first SEEDS, from 0) plus the setting, e.g. `--gamma 3.0`. For seeds 0..SEEDS-1 the warm-up (seed-S/warmup.*) and the uniform run
# (seed-S/uniform/) are copied from MAIN when OUT lacks them; `compare --methods
# uniform,flowtracer` then keeps both (their keys hold only the knobs they read: the warm-up
# none of the credit knobs, uniform none of rho, gamma, apply-to), measures the credit
# fidelity at this rho, and trains only the flowtracer runs. A copy made with other knobs is
# refused by compare (exit 2), never mixed in. Set FLOWTRACER to the binary (default:
# `flowtracer` on PATH). Like compare, it can be stopped and run again.
set -euo pipefail
if [ $# -lt 4 ] || [ "$4" != "--" ]; then
    echo "usage: $0 MAIN OUT SEEDS -- COMPARE_KNOBS..." >&2
    exit 2
fi
main=$1 out=$2 seeds=$3
shift 4
bin=${FLOWTRACER:-flowtracer}
for ((s = 0; s < seeds; s++)); do
    from="$main/seed-$s" to="$out/seed-$s"
    if [ ! -f "$from/warmup.json" ] || [ ! -f "$from/uniform/result.json" ]; then
        echo "$from has no finished warm-up and uniform run" >&2
        exit 2
    fi
    mkdir -p "$to"
    if [ ! -e "$to/warmup.json" ]; then
        cp "$from/warmup.bpk" "$from/warmup.json" "$to/"
    fi
    if [ ! -e "$to/uniform" ]; then
        cp -r "$from/uniform" "$to/uniform"
    fi
done
exec "$bin" compare --seeds "$seeds" --methods uniform,flowtracer "$@" --out "$out"
