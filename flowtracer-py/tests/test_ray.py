"""Scoring in Ray tasks (the engine verl runs on): identical weights to the in-process call.

A local Ray cluster with 2 CPUs; the attention arrays go through Ray's object store
(``ray.put``), flowtracer is imported inside the workers, each task scores a shard of the
batch with ``flowtracer.score_batch``.
"""

from __future__ import annotations

import numpy as np
import pytest
import ray
from conftest import causal

import flowtracer


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def batch(seed):
    lens = [9, 14, 7, 12, 10, 16]
    n = max(lens)
    padded = np.zeros((len(lens), n, n), dtype=np.float32)
    mask = np.zeros((len(lens), n), dtype=np.int64)
    for b, m in enumerate(lens):
        padded[b, n - m :, n - m :] = causal(m, seed + b, dtype=np.float32)  # left padding
        mask[b, n - m :] = 1
    questions = [(0, 3)] * len(lens)
    answers = [(m - 2, m) for m in lens]
    answers[2] = None
    return padded, mask, questions, answers


def test_weights_from_ray_tasks_equal_the_in_process_call(cluster):
    @ray.remote
    def score(attention, mask, questions, answers, t):
        import flowtracer as ft  # imported in the worker process

        return ft.score_batch(attention, questions, answers, attention_mask=mask, completion_length=t)

    padded, mask, questions, answers = batch(3)
    t = padded.shape[1] - 3
    want = flowtracer.score_batch(padded, questions, answers, attention_mask=mask, completion_length=t)
    shards = [slice(0, 3), slice(3, 6)]
    refs = [
        score.remote(ray.put(padded[s]), ray.put(mask[s]), questions[s], answers[s], t) for s in shards
    ]
    got = np.concatenate(ray.get(refs))
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got, want)
    assert (got != 1).any()  # something was shaped


def test_worker_errors_arrive_as_flowtracer_errors(cluster):
    @ray.remote
    def score(attention):
        import flowtracer as ft

        return ft.score_batch([attention], [(0, 1)], [(3, 4)])

    bad = causal(4, 0)
    bad[2, 1] = np.nan
    with pytest.raises(ray.exceptions.RayTaskError) as e:
        ray.get(score.remote(ray.put(bad)))
    cause = e.value.as_instanceof_cause()
    assert isinstance(cause, flowtracer.Error)
    assert isinstance(cause, ValueError)
    assert "non-finite attention at row 2, column 1" in str(cause)
