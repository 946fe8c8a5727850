"""plan_batches: every item once, budgets respected, plain mode is input order."""

from __future__ import annotations

import random

import pytest

from lamra.qwen2vl.batching import plan_batches, prefetch


@pytest.mark.parametrize("seed", range(5))
def test_sorted_batches_cover_every_item_once_within_budget(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 500) for _ in range(rng.randint(1, 300))]
    batches = plan_batches(lengths, max_batch_size=32, max_batch_tokens=4096)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 32
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 4096
    # Longest first, so padding within a batch stays small.
    flat = [lengths[i] for batch in batches for i in batch]
    assert flat == sorted(flat, reverse=True)


def test_an_item_longer_than_the_budget_gets_its_own_batch():
    assert plan_batches([10, 9000, 10], max_batch_size=8, max_batch_tokens=100) == [[1], [0, 2]]


def test_plain_batches_are_fixed_slices_in_input_order():
    assert plan_batches([5, 1, 9, 2, 7], max_batch_size=2, sort_by_length=False) == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError):
        plan_batches([1], max_batch_size=0)


def test_prefetch_keeps_order():
    assert list(prefetch(lambda x: x * 2, range(10), depth=3)) == [x * 2 for x in range(10)]
