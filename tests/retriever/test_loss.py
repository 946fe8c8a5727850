"""InfoNCE against a naive per-row reference written here from the formula."""

from __future__ import annotations

import math

import pytest
import torch

from lamra.retriever.loss import info_nce


def naive_info_nce(queries, positives, negatives=None, temperature=0.05):
    candidates = list(positives) + (list(negatives) if negatives is not None else [])
    total = 0.0
    for i, query in enumerate(queries):
        scores = [float(query @ c) / temperature for c in candidates]
        top = max(scores)
        log_sum = top + math.log(sum(math.exp(s - top) for s in scores))
        total += log_sum - scores[i]
    return total / len(queries)


def unit(rows, dim, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(rows, dim, generator=generator, dtype=torch.float64), dim=-1)


@pytest.mark.parametrize("with_negatives", [False, True])
def test_matches_the_naive_reference(with_negatives):
    queries, positives = unit(6, 16, 0), unit(6, 16, 1)
    negatives = unit(4, 16, 2) if with_negatives else None
    got = info_nce(queries, positives, negatives, temperature=0.05)
    assert float(got) == pytest.approx(naive_info_nce(queries, positives, negatives, 0.05), rel=1e-6)


def test_all_equal_embeddings_give_log_batch_size():
    same = torch.nn.functional.normalize(torch.ones(8, 4), dim=-1)
    assert float(info_nce(same, same)) == pytest.approx(math.log(8), rel=1e-6)
    assert float(info_nce(same, same, same[:3])) == pytest.approx(math.log(11), rel=1e-6)


def test_perfect_pairs_at_low_temperature_give_almost_zero():
    queries = torch.eye(4, dtype=torch.float64)
    assert float(info_nce(queries, queries, temperature=0.01)) < 1e-10
