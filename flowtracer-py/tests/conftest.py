"""Inputs for the tests: valid by construction (causal, row-stochastic rows).

The expected numbers never come from Python: they are method §12's published values, or the
Rust core's own results on the same inputs (the `_native._core_*` helpers call the core
directly, without the binding's input handling), or the core's naive oracle
(`flowtracer_core::reference`).
"""

import numpy as np
import pytest

# Method §12's worked example: row k = query k over keys 0..=k.
WORKED = np.array(
    [
        [1.0, 0.0, 0.0, 0.0, 0.0],
        [0.5, 0.5, 0.0, 0.0, 0.0],
        [0.3, 0.5, 0.2, 0.0, 0.0],
        [0.1, 0.2, 0.3, 0.4, 0.0],
        [0.1, 0.1, 0.6, 0.1, 0.1],
    ]
)

# Agreement with the naive oracle (different code, different rounding), stated once:
# |x - y| <= ORACLE_RTOL * |y| + ORACLE_ATOL. Everything else is compared exactly.
ORACLE_RTOL = 1e-10
ORACLE_ATOL = 1e-14


def causal(n, seed, dtype=np.float64, heads=None):
    """A random causal row-stochastic n x n matrix (or [heads, n, n])."""
    rng = np.random.default_rng(seed)
    shape = (n, n) if heads is None else (heads, n, n)
    a = rng.random(shape) ** 4  # peaked rows, as real attention
    a = np.tril(a)
    a /= a.sum(axis=-1, keepdims=True)
    return a.astype(dtype)


def packed(a):
    """The packed lower triangle of a dense matrix (row k: keys 0..=k, back to back)."""
    return np.concatenate([a[k, : k + 1] for k in range(a.shape[0])])


@pytest.fixture
def worked():
    return WORKED.copy()


def pytest_terminal_summary(terminalreporter):
    """Says, in the run's own output, which suite did not run: the Q/K capture's CUDA
    conformance (tests/test_qk_torch.py) runs only with FLOWTRACER_TEST_CUDA=1 on a machine
    with an NVIDIA GPU. pytest captures what tests print, so the line is written here (CI
    allows exactly this SKIPPED line and fails on any other)."""
    import os

    if os.environ.get("FLOWTRACER_TEST_CUDA") != "1":
        terminalreporter.write_line("SKIPPED: no CUDA")
