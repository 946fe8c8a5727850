"""Exact search against a naive numpy reference (full score matrix, stable sort)."""

from __future__ import annotations

import numpy as np
import pytest

from lamra.index import Index, exact_topk
from lamra.index.backends import SCAN_MAX_BATCH

FINGERPRINT = {"model": "m", "adapter": None, "prompt_format": "lamra-ret-1", "dim": 24}


def naive_topk(queries, candidates, k):
    scores = np.asarray(queries, np.float32) @ np.asarray(candidates, np.float32).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def unit(rows, dim, seed):
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("chunk_rows", [None, 64, 1000])
def test_exact_topk_matches_naive_reference(chunk_rows):
    candidates, queries = unit(3000, 24, 0), unit(70, 24, 1)
    scores, positions = exact_topk(queries, candidates, 10, chunk_rows=chunk_rows)
    ref_scores, ref_positions = naive_topk(queries, candidates, 10)
    assert positions.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(positions, ref_positions)
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-5)


@pytest.mark.parametrize("chunk_rows", [None, 50, 333])
def test_ties_go_to_the_lower_position(chunk_rows):
    # Small integer vectors: many exactly equal scores, computed exactly in any order.
    rng = np.random.default_rng(2)
    candidates = rng.integers(-1, 2, (2000, 8)).astype(np.float32)
    queries = rng.integers(-1, 2, (40, 8)).astype(np.float32)
    scores, positions = exact_topk(queries, candidates, 25, chunk_rows=chunk_rows)
    ref_scores, ref_positions = naive_topk(queries, candidates, 25)
    np.testing.assert_array_equal(positions, ref_positions)
    np.testing.assert_array_equal(scores, ref_scores)


def test_k_larger_than_the_collection_and_float16_candidates():
    candidates = unit(7, 24, 3).astype(np.float16)
    scores, positions = exact_topk(unit(3, 24, 4), candidates, 10)
    assert scores.shape == positions.shape == (3, 7)
    np.testing.assert_array_equal(positions, naive_topk(unit(3, 24, 4), candidates, 10)[1])
    one_query = exact_topk(unit(1, 24, 4)[0], candidates, 2)[1]
    assert one_query.shape == (1, 2)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="dimension"):
        exact_topk(unit(2, 8, 0), unit(5, 24, 0), 3)
    with pytest.raises(ValueError, match="k must be"):
        exact_topk(unit(2, 24, 0), unit(5, 24, 0), 0)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("batch", [1, SCAN_MAX_BATCH, SCAN_MAX_BATCH + 9])  # FAISS scan and BLAS paths
def test_flat_index_search_equals_reference_on_the_stored_vectors(dtype, batch):
    vectors = unit(20_000, 24, 5)
    ids = [f"doc-{n}" for n in range(len(vectors))]
    index = Index.from_vectors(vectors, ids, FINGERPRINT, dtype=dtype)
    queries = unit(batch, 24, 6)
    scores, found = index.search(queries, k=10)
    stored = vectors.astype(dtype).astype(np.float32)
    ref_scores, ref_positions = naive_topk(queries, stored, 10)
    assert found == [[ids[p] for p in row] for row in ref_positions]
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-5)


@pytest.mark.parametrize("batch", [3, SCAN_MAX_BATCH + 5])
def test_flat_index_breaks_ties_by_position(batch):
    rng = np.random.default_rng(7)
    vectors = rng.integers(-1, 2, (9000, 24)).astype(np.float32)  # exact in float16 too
    queries = rng.integers(-1, 2, (batch, 24)).astype(np.float32)
    index = Index.from_vectors(vectors, [str(n) for n in range(len(vectors))], FINGERPRINT)
    _, found = index.search(queries, k=30)
    ref = naive_topk(queries, vectors, 30)[1]
    assert found == [[str(p) for p in row] for row in ref]
