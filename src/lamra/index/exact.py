"""Exact inner-product top-k in chunks: never the full (queries x candidates) score matrix.

Ties are broken by the lower candidate position, so the answer is a pure function of the
inputs (the same top-k as a full ``argsort`` of ``-scores`` with a stable sort).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

# Score-block budget: queries x candidate rows per block stays under this many floats (~64 MiB).
_BLOCK_FLOATS = 16 * 1024 * 1024
_QUERY_BLOCK = 1024


def exact_topk(queries: np.ndarray, candidates: np.ndarray, k: int, *,
               chunk_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` candidates of each query by inner product.

    ``queries`` (Q, D) and ``candidates`` (N, D) are float arrays (float16 candidates are
    converted to float32 one chunk at a time, so a float16 memmap works without a copy).
    Returns ``scores`` (Q, k') float32 and ``positions`` (Q, k') int64, best first, with
    k' = min(k, N); equal scores come in increasing candidate position.
    """
    queries = _as_matrix(queries, "queries")
    if candidates.ndim != 2:
        raise ValueError(f"candidates must be a 2-D array, got shape {candidates.shape}")
    if queries.shape[1] != candidates.shape[1]:
        raise ValueError(f"queries have dimension {queries.shape[1]}, candidates {candidates.shape[1]}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    total = candidates.shape[0]
    chunks = lambda: _row_chunks(candidates, chunk_rows or _default_chunk(min(len(queries), _QUERY_BLOCK),
                                                                          candidates.shape[1]))
    return topk_over_chunks(queries, chunks, total, k)


def topk_over_chunks(queries: np.ndarray, chunks: Callable[[], Iterator[tuple[int, np.ndarray]]],
                     total: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over candidates given as ``(start, float32 block)`` chunks, in order.

    ``chunks`` is called once per block of queries (a few hundred at a time), so memory
    stays bounded by one score block whatever the number of queries.
    """
    k_out = min(k, total)
    n_queries = len(queries)
    scores = np.empty((n_queries, k_out), dtype=np.float32)
    positions = np.empty((n_queries, k_out), dtype=np.int64)
    if k_out == 0 or n_queries == 0:
        return scores, positions
    for q0 in range(0, n_queries, _QUERY_BLOCK):
        block = queries[q0:q0 + _QUERY_BLOCK]
        best_s = np.full((len(block), 0), -np.inf, dtype=np.float32)
        best_p = np.zeros((len(block), 0), dtype=np.int64)
        for start, rows in chunks():
            chunk_scores = block @ rows.T
            s, p = _chunk_topk(chunk_scores, k_out)
            best_s, best_p = merge_topk(best_s, best_p, s, p + start, k_out)
        scores[q0:q0 + len(block)] = best_s
        positions[q0:q0 + len(block)] = best_p
    return scores, positions


def merge_topk(s1: np.ndarray, p1: np.ndarray, s2: np.ndarray, p2: np.ndarray, k: int):
    """Merge two per-row candidate lists into the best ``k`` (score desc, then position asc)."""
    s = np.concatenate([s1, s2], axis=1)
    p = np.concatenate([p1, p2], axis=1)
    order = np.lexsort((p, -s), axis=1)[:, :k]
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(p, order, axis=1)


def _chunk_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` of each row of one score block, ties by lower column (not yet sorted)."""
    n = scores.shape[1]
    if n <= k:
        cols = np.broadcast_to(np.arange(n, dtype=np.int64), scores.shape)
        return scores, np.array(cols)
    cols = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    picked = np.take_along_axis(scores, cols, axis=1)
    # argpartition picks arbitrarily among scores equal to the k-th; redo rows where that matters.
    kth = picked.min(axis=1)
    ambiguous = np.nonzero((scores >= kth[:, None]).sum(axis=1) > k)[0]
    for row in ambiguous:
        stable = np.argsort(-scores[row], kind="stable")[:k]
        cols[row] = stable
        picked[row] = scores[row, stable]
    return picked, cols.astype(np.int64)


def _row_chunks(candidates: np.ndarray, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, candidates.shape[0], rows):
        yield start, np.asarray(candidates[start:start + rows], dtype=np.float32)


def _default_chunk(n_queries: int, dim: int) -> int:
    # Enough rows to keep BLAS busy, few enough that the score block and a float32 copy of
    # the chunk stay small.
    by_scores = _BLOCK_FLOATS // max(n_queries, 1)
    by_copy = _BLOCK_FLOATS // max(dim, 1)
    return int(max(1024, min(by_scores, by_copy)))


def _as_matrix(array, name: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 1-D or 2-D array, got shape {array.shape}")
    return np.ascontiguousarray(array)
