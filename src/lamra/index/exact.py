"""Exact inner-product top-k in chunks: never the full (queries x candidates) score matrix.

Ties are broken by the lower candidate position, so the answer is a pure function of the
inputs: the top-k of a full stable ``argsort`` of ``-scores`` (up to the float rounding of
the scores themselves).
"""

from __future__ import annotations

import warnings
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
    rows = chunk_rows or _default_chunk(min(len(queries), _QUERY_BLOCK), candidates.shape[1])

    def chunks():
        return _row_chunks(candidates, rows)

    return topk_over_chunks(queries, chunks, candidates.shape[0], k)


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
            s, p = _chunk_topk(block, rows, k_out)
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


def _chunk_topk(queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` rows for each query (FAISS: BLAS + heaps, multi-threaded), ties by lower row.

    FAISS orders equal scores arbitrarily, so it is asked for k + 1: where the k-th and the
    (k+1)-th score are equal the choice is ambiguous, and that query is redone with a stable sort.
    """
    import faiss

    n = len(rows)
    if n <= k:
        scores = queries @ rows.T
        return scores, np.broadcast_to(np.arange(n, dtype=np.int64), scores.shape).copy()
    scores, cols = faiss.knn(queries, rows, min(k + 1, n), metric=faiss.METRIC_INNER_PRODUCT)
    if scores.shape[1] > k:
        for row in np.nonzero(scores[:, k - 1] == scores[:, k])[0]:
            full = rows @ queries[row]
            stable = np.argsort(-full, kind="stable")[:k]
            scores[row, :k], cols[row, :k] = full[stable], stable
    return scores[:, :k], cols[:, :k].astype(np.int64)


def _row_chunks(candidates: np.ndarray, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    buffer = None if candidates.dtype == np.float32 else np.empty((rows, candidates.shape[1]), np.float32)
    for start in range(0, candidates.shape[0], rows):
        block = candidates[start:start + rows]
        yield start, to_float32(block, None if buffer is None else buffer[:len(block)])


def to_float32(block: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float16 -> float32 (torch's vectorised cast is ~10x numpy's; used when torch is there)."""
    if block.dtype == np.float32 and out is None:
        return np.ascontiguousarray(block)
    if out is None:
        out = np.empty(block.shape, dtype=np.float32)
    torch = _torch()
    if torch is not None and block.dtype == np.float16:
        with warnings.catch_warnings():  # a read-only memmap is only read here
            warnings.simplefilter("ignore", UserWarning)
            torch.from_numpy(out).copy_(torch.from_numpy(np.ascontiguousarray(block)))
    else:
        out[...] = block
    return out


def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    return torch


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
