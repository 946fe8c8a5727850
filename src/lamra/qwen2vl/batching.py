"""Length-aware batching: sort by length, fill each batch up to a padded-token budget."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def plan_batches(
    lengths: Sequence[int],
    *,
    max_batch_size: int,
    max_batch_tokens: int | None = None,
    sort_by_length: bool = True,
) -> list[list[int]]:
    """Group item indices into batches.

    Sorted (longest first), a batch grows while ``len(batch) * longest <= max_batch_tokens``
    and ``len(batch) <= max_batch_size``; padding waste stays small. Unsorted, batches are
    fixed-size slices in input order (the plain baseline).
    """
    if max_batch_size < 1:
        raise ValueError("max_batch_size must be at least 1")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if sort_by_length else list(range(len(lengths)))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        new_longest = max(longest, lengths[index])
        too_many = len(current) + 1 > max_batch_size
        too_big = max_batch_tokens is not None and (len(current) + 1) * new_longest > max_batch_tokens
        if current and (too_many or too_big):
            batches.append(current)
            current, new_longest = [], lengths[index]
        current.append(index)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


def prefetch(make: Callable[[T], R], inputs: Iterable[T], *, depth: int = 2) -> Iterator[R]:
    """``map(make, inputs)`` computed ``depth`` steps ahead in a worker thread, so loading and
    preprocessing images overlaps with the model's forward pass."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = []
        for value in inputs:
            pending.append(pool.submit(make, value))
            if len(pending) > depth:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()
