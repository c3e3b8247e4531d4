#!/usr/bin/env bash
# Runs every test of flowtracer on a fresh machine: first installs what is missing
# (Debian packages for lavapipe and Chromium, cargo-fuzz), then the whole test suite.
#
#   ./test.sh                 install what is missing, then run all tests
#   ./test.sh --install-only  only install
set -euo pipefail
cd "$(dirname "$0")"

banner() { printf '\n==== %s ====\n' "$*"; }

# Debian packages the tests need: Vulkan on the CPU (lavapipe) for the GPU kernels,
# Chromium for the `flowtracer explain` page test.
packages=(mesa-vulkan-drivers libvulkan1 chromium)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    banner "installing ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    banner "installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi
[ "${1:-}" = "--install-only" ] && exit 0

# The loader warns without a runtime dir; wgpu picks lavapipe ("llvmpipe") on CPU machines.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

# `cargo test-all` is the alias in .cargo/config.toml: `cargo test --workspace --locked` with
# the one feature set CI uses (GPU suites included). A suite that cannot run says
# `SKIPPED: <reason>`; .ci/run fails on that.
banner "cargo test-all (workspace: unit, integration, property and doc tests)"
cargo test-all
