"""A small batching queue: concurrent callers share one model call.

One worker thread owns the model. It takes the first waiting job, then gathers more for at
most ``max_wait_s`` (or until ``max_batch_size``) and runs them as one batch. While the model
is busy with a batch, new callers queue up and go together in the next one, so throughput
under load grows with the batch size; an idle server adds at most ``max_wait_s`` of latency.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

logger = logging.getLogger(__name__)

J = TypeVar("J")
R = TypeVar("R")

_STOP = object()


class QueueFull(Exception):
    """More jobs are waiting than the queue admits; the caller should retry later."""


@dataclass
class BatchStats:
    batches: int = 0
    jobs: int = 0
    largest: int = 0
    busy_s: float = 0.0
    sizes: dict = field(default_factory=dict)  # batch size -> how many batches had it

    def as_dict(self) -> dict:
        return {"batches": self.batches, "jobs": self.jobs, "largest_batch": self.largest,
                "mean_batch": round(self.jobs / self.batches, 3) if self.batches else 0.0,
                "busy_s": round(self.busy_s, 3)}


class MicroBatcher(Generic[J, R]):
    """Run ``run_batch(jobs) -> results`` (same length, same order) on batches of submitted jobs."""

    def __init__(self, run_batch: Callable[[Sequence[J]], Sequence[R]], *, max_batch_size: int = 16,
                 max_wait_s: float = 0.005, max_queue: int = 256, name: str = "lamra-batcher"):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max(0.0, max_wait_s)
        self.max_queue = max_queue
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._name = name
        self._lock = threading.Lock()
        self.stats = BatchStats()

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> "MicroBatcher":
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- submitting -------------------------------------------------------------------

    def submit(self, job: J) -> Future:
        """Queue one job; its Future gets the result (or the exception the batch raised for it)."""
        if not self.running:
            raise RuntimeError("the batcher is not running (call start())")
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull(f"{self._queue.qsize()} requests are already waiting for the model")
        future: Future = Future()
        self._queue.put((job, future))
        return future

    def pending(self) -> int:
        return self._queue.qsize()

    # -- the worker -------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stop = self._gather(batch)
            self._run([(job, fut) for job, fut in batch if fut.set_running_or_notify_cancel()])
            if stop:
                return

    def _gather(self, batch: list) -> bool:
        """Add waiting jobs to ``batch`` until it is full or ``max_wait_s`` has passed."""
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                entry = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                return False
            if entry is _STOP:
                return True
            batch.append(entry)
        return False

    def _run(self, batch: list) -> None:
        if not batch:  # every caller gave up (timed out) before the batch started
            return
        started = time.perf_counter()
        jobs = [job for job, _ in batch]
        try:
            results = list(self._run_batch(jobs))
            if len(results) != len(jobs):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(jobs)} jobs")
        except Exception as exc:
            if len(batch) == 1:
                batch[0][1].set_exception(exc)
            else:
                # One bad job must not fail its neighbours: retry them one by one.
                logger.info("batch of %d failed (%s); retrying one at a time", len(batch), exc)
                for entry in batch:
                    self._run_one(entry)
        else:
            for (_, future), result in zip(batch, results):
                future.set_result(result)
        finally:
            self._record(len(batch), time.perf_counter() - started)

    def _run_one(self, entry) -> None:
        job, future = entry
        try:
            (result,) = self._run_batch([job])
        except Exception as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)

    def _record(self, size: int, seconds: float) -> None:
        stats = self.stats
        stats.batches += 1
        stats.jobs += size
        stats.largest = max(stats.largest, size)
        stats.busy_s += seconds
        stats.sizes[size] = stats.sizes.get(size, 0) + 1
