#!/usr/bin/env bash
# Runs every test of flowtracer on a fresh machine: first installs what is missing
# (Debian packages for lavapipe and Chromium, cargo-fuzz, a Python virtual environment with
# the pinned maturin, pytest and numpy), then the whole test suite: the Rust workspace, then
# the Python package (flowtracer-py) built into a wheel and tested with pytest.
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
# The Python package's tools, pinned, in their own environment (target/py-venv), so the
# machine's Python is left alone. pip does nothing when the pins are already there.
PY_VENV="target/py-venv"
# torch (its CUDA wheel, used on the CPU), transformers, trl, datasets and ray are for
# flowtracer.trl's tests (a tiny GRPO run, the Q/K capture, scoring in Ray tasks).
PY_PINS=(maturin==1.16.0 pytest==9.2.0 numpy==2.4.6
    torch==2.15.0 transformers==5.24.0 trl==1.16.0 ray==2.60.0
    datasets==5.2.0 tokenizers==0.23.3 safetensors==0.8.0)
if [ ! -x "$PY_VENV/bin/python" ]; then
    banner "creating $PY_VENV"
    python3 -m venv "$PY_VENV"
fi
if ! "$PY_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_PINS[@]}"; then
    echo "could not install ${PY_PINS[*]} into $PY_VENV"
    exit 1
fi
[ "${1:-}" = "--install-only" ] && exit 0

# The loader warns without a runtime dir; wgpu picks lavapipe ("llvmpipe") on CPU machines.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

# `cargo test-all` is the alias in .cargo/config.toml: `cargo test --workspace --locked` with
# the one feature set CI uses (GPU suites included). A suite that cannot run says
# `SKIPPED: <reason>`; .ci/run fails on that.
banner "cargo test-all (workspace: unit, integration, property and doc tests)"
cargo test-all

# The Python package: an abi3 wheel of flowtracer-py (maturin, release), installed into the
# venv, then pytest: tests/ and every docstring example (--doctest-modules on the installed
# package). pytest's exit 5 (nothing collected) is a failure, not a pass.
banner "python: build the flowtracer wheel (maturin) and run pytest"
rm -f target/wheels/flowtracer-*.whl
"$PY_VENV/bin/maturin" build --release --locked -m flowtracer-py/Cargo.toml -o target/wheels
"$PY_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps target/wheels/flowtracer-*.whl
py_rc=0
(cd flowtracer-py && "../$PY_VENV/bin/python" -m pytest tests --doctest-modules --pyargs flowtracer -p no:cacheprovider) || py_rc=$?
if [ "$py_rc" -eq 5 ]; then
    echo "pytest collected no tests (exit 5): the Python suite did not run"
    exit 1
elif [ "$py_rc" -ne 0 ]; then
    echo "pytest failed (exit $py_rc)"
    exit "$py_rc"
fi
