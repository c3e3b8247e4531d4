"""Zero-copy input for C-contiguous float32/float64, copies otherwise; the GIL released."""

import threading
import time

import numpy as np
import pytest
from conftest import causal

import flowtracer
from flowtracer import _native


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_c_contiguous_input_is_read_in_place(dtype):
    a = causal(16, 0, dtype)
    assert _native._data_ptr(a) == a.ctypes.data
    sub = np.stack([a, a])[1]  # a C-contiguous view inside a bigger buffer
    assert _native._data_ptr(sub) == sub.ctypes.data


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_contiguous_input_is_copied_not_refused(dtype):
    a = causal(16, 1, dtype)
    expect = flowtracer.trace(a, (0, 4), (14, 16))
    for x in [np.asfortranarray(a), np.repeat(a, 2, axis=0)[::2], a.T.T.copy(order="F")]:
        assert _native._data_ptr(x) != x.ctypes.data
        t = flowtracer.trace(x, (0, 4), (14, 16))
        assert np.array_equal(t.flow, expect.flow)


def test_batch_reads_each_sequence_in_place():
    n, b = 8, 3
    batch = np.stack([causal(n, s) for s in range(b)])
    item = batch.itemsize
    assert _native._batch_data_ptrs(batch) == [batch.ctypes.data + i * n * n * item for i in range(b)]
    seqs = list(batch.astype(np.float32))
    assert _native._batch_data_ptrs(seqs) == [s.ctypes.data for s in seqs]
    flat = batch.ravel()
    cu = [0, n, 2 * n, 3 * n]
    assert _native._batch_data_ptrs(flat, cu_seqlens=cu) == [flat.ctypes.data + i * n * n * item for i in range(b)]
    # unpadded rows of a masked batch are read in place too; a padded one is cut out (0)
    mask = np.ones((b, n))
    mask[1, :2] = 0
    ptrs = _native._batch_data_ptrs(batch, attention_mask=mask)
    assert ptrs == [batch.ctypes.data, 0, batch.ctypes.data + 2 * n * n * item]


def progress_during(call):
    """Ticks a Python thread makes in the middle half of `call` (0 if the GIL is held)."""
    ticks = []
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            ticks.append(time.perf_counter())

    th = threading.Thread(target=spin)
    th.start()
    time.sleep(0.02)
    t0 = time.perf_counter()
    call()
    t1 = time.perf_counter()
    stop.set()
    th.join()
    lo, hi = t0 + 0.25 * (t1 - t0), t0 + 0.75 * (t1 - t0)
    return sum(lo < t < hi for t in ticks), t1 - t0


def test_the_test_detects_a_held_gil():
    held, _ = progress_during(lambda: _native._busy(300, False))
    released, _ = progress_during(lambda: _native._busy(300, True))
    assert held == 0 and released > 100, (held, released)


def released(call, attempts=3, min_ticks=20):
    """Whether a Python thread progressed in the middle of `call`, in one of `attempts` runs.

    A held GIL gives 0 ticks every time; retrying only forgives an OS scheduler that starved
    the thread on a loaded machine (the control test above shows a held GIL is caught).
    """
    seen = []
    for _ in range(attempts):
        ticks, seconds = progress_during(call)
        seen.append((ticks, round(seconds, 3)))
        if ticks >= min_ticks:
            return True, seen
    return False, seen


def test_gil_released_during_score_batch():
    n = 1024
    a = causal(n, 0, np.float32)
    b = 256
    while True:  # one call long enough to tell (doubling the batch until it is)
        batch = [a] * b  # one buffer, read in place b times
        call = lambda: flowtracer.score_batch(batch, [(0, 64)] * b, [(n - 8, n)] * b)  # noqa: E731
        _, seconds = progress_during(call)
        if seconds > 0.2 or b >= 1 << 15:
            break
        b *= 2
    assert seconds > 0.2, "too short to tell"
    ok, seen = released(call, min_ticks=100)
    assert ok, seen


def test_gil_released_during_trace():
    n = 4096
    a = causal(n, 0, np.float32)  # one call of tens of milliseconds
    ok, seen = released(lambda: flowtracer.trace(a, (0, 64), (n - 8, n)))
    assert ok, seen


def test_gil_released_during_score_qk_and_add_layer():
    rng = np.random.default_rng(0)
    n, heads, d = 256, 4, 32
    while True:  # one call long enough to tell (doubling N until it is)
        q = rng.standard_normal((2, heads, n, d), dtype=np.float32)
        k = rng.standard_normal((2, heads // 2, n, d), dtype=np.float32)
        call = lambda: flowtracer.score_qk(q, k, (0, 8), (n - 2, n))  # noqa: E731
        _, seconds = progress_during(call)
        if seconds > 0.2 or n >= 1 << 13:
            break
        n *= 2
    assert seconds > 0.2, "too short to tell"
    ok, seen = released(call, min_ticks=100)
    assert ok, seen
    acc = flowtracer.QkAccumulator(heads, heads // 2, n, d)
    ok, seen = released(lambda: acc.add_layer(0, q[0], k[0]), min_ticks=20)
    assert ok, seen
