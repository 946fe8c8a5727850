"""Approximate search against exact search on 100k random-but-clustered vectors."""

from __future__ import annotations

import numpy as np
import pytest

from lamra.index import Index, exact_topk
from lamra.index.synthetic import clustered_vectors

FP = {"model": "m", "adapter": None, "prompt_format": "lamra-ret-1", "dim": 64}


def recall_at_10(backend, count, queries=300, **search_params):
    vectors = clustered_vectors(count + queries, 64, seed=11)
    queries, vectors = vectors[:queries], vectors[queries:]
    index = Index.from_vectors(vectors, [str(n) for n in range(count)], FP, backend=backend)
    _, exact = exact_topk(queries, vectors.astype(np.float16), 10)

    def recall(**params):
        _, found = index.search(queries, 10, **params)
        return float(np.mean([len(set(map(str, e)) & set(f)) / 10 for e, f in zip(exact, found)]))

    return recall, index


def test_ivf_default_parameters_reach_recall_095_on_100k():
    recall, index = recall_at_10("ivf", 100_000)
    assert recall() >= 0.95, (recall(), index.manifest["backend_params"])
    assert recall(nprobe=2) < 0.95  # the data is not so easy that any setting passes


def test_hnsw_default_parameters_reach_recall_095_on_20k():
    recall, index = recall_at_10("hnsw", 20_000)
    assert recall() >= 0.95, (recall(), index.manifest["backend_params"])
    assert recall(ef_search=10) < recall()


@pytest.mark.slow
def test_hnsw_default_parameters_reach_recall_095_on_100k():
    recall, index = recall_at_10("hnsw", 100_000)
    assert recall() >= 0.95, (recall(), index.manifest["backend_params"])
