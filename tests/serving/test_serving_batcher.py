"""The batching queue on its own: batches form under load, failures and cancellations stay local."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from lamra.serving.batcher import MicroBatcher, QueueFull


class SlowSquare:
    """run_batch that takes a fixed time per call (like a model forward) and records batch sizes."""

    def __init__(self, seconds=0.03, fail_on=None):
        self.seconds, self.fail_on, self.sizes = seconds, fail_on, []

    def __call__(self, jobs):
        self.sizes.append(len(jobs))
        time.sleep(self.seconds)
        if self.fail_on is not None and self.fail_on in jobs:
            raise ValueError(f"bad job {self.fail_on}")
        return [job * job for job in jobs]


def submit_all(batcher, jobs, workers=24):
    with ThreadPoolExecutor(workers) as pool:
        futures = list(pool.map(batcher.submit, jobs))
    return futures


def test_concurrent_callers_share_batches_and_get_their_own_results():
    run = SlowSquare()
    with MicroBatcher(run, max_batch_size=8, max_wait_s=0.01) as batcher:
        futures = submit_all(batcher, list(range(40)))
        assert [f.result(timeout=10) for f in futures] == [n * n for n in range(40)]
    assert sum(run.sizes) == 40 and max(run.sizes) <= 8
    assert len(run.sizes) < 40  # batching happened: fewer model calls than requests
    assert batcher.stats.jobs == 40 and batcher.stats.batches == len(run.sizes)


def test_batch_size_one_runs_one_at_a_time():
    run = SlowSquare(0.0)
    with MicroBatcher(run, max_batch_size=1, max_wait_s=0.01) as batcher:
        futures = submit_all(batcher, list(range(10)))
        assert [f.result(timeout=10) for f in futures] == [n * n for n in range(10)]
    assert run.sizes == [1] * 10


def test_a_failing_job_does_not_fail_its_neighbours():
    run = SlowSquare(0.01, fail_on=3)
    with MicroBatcher(run, max_batch_size=16, max_wait_s=0.05) as batcher:
        futures = [batcher.submit(n) for n in range(6)]
        for n, future in enumerate(futures):
            if n == 3:
                with pytest.raises(ValueError, match="bad job 3"):
                    future.result(timeout=10)
            else:
                assert future.result(timeout=10) == n * n


def test_cancelled_jobs_are_skipped_and_a_full_queue_refuses():
    gate = threading.Event()
    seen = []

    def run(jobs):
        gate.wait(10)
        seen.extend(jobs)
        return jobs

    with MicroBatcher(run, max_batch_size=1, max_wait_s=0.0, max_queue=2) as batcher:
        first = batcher.submit("first")  # taken by the worker, blocked on the gate
        deadline = time.monotonic() + 5
        while batcher.pending() and time.monotonic() < deadline:
            time.sleep(0.005)
        waiting = batcher.submit("given up")
        batcher.submit("kept")
        with pytest.raises(QueueFull):
            batcher.submit("one too many")
        assert waiting.cancel()
        gate.set()
        assert first.result(timeout=10) == "first"
    assert seen == ["first", "kept"]


def test_submit_needs_a_started_batcher():
    batcher = MicroBatcher(SlowSquare(0.0))
    with pytest.raises(RuntimeError, match="not running"):
        batcher.submit(1)
    batcher.start()
    assert batcher.submit(3).result(timeout=10) == 9
    batcher.stop()
    assert not batcher.running


def test_wrong_result_count_is_an_error_not_a_hang():
    with MicroBatcher(lambda jobs: [], max_batch_size=4) as batcher:
        with pytest.raises(RuntimeError, match="0 results for 1 jobs"):
            batcher.submit(1).result(timeout=10)
