"""Search backends over an index's vectors: exact ("flat") and approximate (FAISS IVF / HNSW).

All of them answer ``search(queries float32 (Q, D), k) -> scores (Q, k'), positions (Q, k')``
with k' = min(k, count) and positions into the index's rows, best first, equal scores in
increasing position: an approximate backend widens its search for a large k rather than
return fewer. FAISS is imported inside functions.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Iterator

import numpy as np

from .exact import exact_topk, merge_topk, to_float32, topk_over_chunks

BACKENDS = ("flat", "ivf", "hnsw")
DTYPES = ("float16", "float32")
# Encodings of the vectors inside an approximate index (FAISS factory names).
ENCODINGS = {"flat": "Flat", "fp16": "SQfp16", "sq8": "SQ8", "int8": "SQ8"}
# Queries per call up to which the flat backend scans with FAISS (one thread per slice of the
# rows, memory-bound); above it, a BLAS matrix product over float32 chunks is faster.
SCAN_MAX_BATCH = 32
_ADD_CHUNK = 65536


def default_params(backend: str, count: int, dtype: str) -> dict[str, Any]:
    """Build / search parameters of a backend for ``count`` vectors (all recorded in the manifest)."""
    if backend == "flat":
        return {}
    encoding = "fp16" if dtype == "float16" else "flat"
    if backend == "ivf":
        # ~2 sqrt(N) lists (balances the coarse and the list scans), each with at least ~40
        # training points (FAISS's advice).
        nlist = max(1, min(round(2 * math.sqrt(max(count, 1))), max(count // 40, 1)))
        return {"nlist": nlist, "nprobe": default_nprobe(nlist), "encoding": encoding}
    if backend == "hnsw":
        return {"M": 32, "ef_construction": 200, "ef_search": 128, "encoding": encoding}
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def default_nprobe(nlist: int) -> int:
    """Lists visited per query: 1% of them, at least 16. On the clustered data of the tests and
    the benchmark this gives recall@10 >= 0.95; more lists buy recall, fewer buy speed
    (docs/benchmarks-search.md has the curve)."""
    return min(nlist, max(16, nlist // 100))


def resolve_params(backend: str, count: int, dtype: str, given: dict[str, Any]) -> dict[str, Any]:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose float16 or float32")
    params = default_params(backend, count, dtype)
    unknown = set(given) - set(params)
    if unknown:
        raise ValueError(f"unknown {backend} parameter(s) {sorted(unknown)}; known: {sorted(params) or 'none'}")
    params.update({k: v for k, v in given.items() if v is not None})
    if backend == "ivf" and "nprobe" not in given and "nlist" in given:
        params["nprobe"] = default_nprobe(int(params["nlist"]))
    if "encoding" in params:
        _factory_encoding(params["encoding"])  # validates
    return params


def _factory_encoding(encoding: str) -> str:
    encoding = str(encoding).lower()
    if encoding in ENCODINGS:
        return ENCODINGS[encoding]
    if encoding.startswith("pq") and encoding[2:].isdigit():
        return f"PQ{int(encoding[2:])}"
    raise ValueError(f"unknown encoding {encoding!r}; choose flat, fp16, sq8 (int8) or pqM (e.g. pq64)")


def make_searcher(backend: str, dim: int, dtype: str, params: dict[str, Any]):
    if backend == "flat":
        return FlatSearcher(dim, dtype)
    return FaissSearcher(backend, dim, params)


def as_float32_chunks(arrays: Iterable[np.ndarray], rows: int = _ADD_CHUNK) -> Iterator[np.ndarray]:
    for array in arrays:
        for start in range(0, len(array), rows):
            yield to_float32(array[start:start + rows])


class FlatSearcher:
    """Exact search. The vectors live in FAISS flat indexes (float16 or float32 codes, no
    other copy), split in one contiguous slice per thread: a batch-1 scan runs at memory
    speed on every core; big batches go through a BLAS product over float32 chunks."""

    kind = "flat"

    def __init__(self, dim: int, dtype: str, threads: int | None = None):
        self.dim, self.dtype = dim, dtype
        self.threads = threads or _thread_count()
        self._parts: list = []
        self._starts: list[int] = []
        self.ntotal = 0

    def build(self, arrays: list[np.ndarray]) -> None:
        """(Re)load every vector: ``arrays`` are the segments, in order (any float dtype)."""
        total = sum(len(a) for a in arrays)
        slices = max(1, min(self.threads, total // 4096 or 1))
        bounds = np.linspace(0, total, slices + 1).astype(np.int64)
        self._parts, self._starts = [], []
        rows = _concat_reader(arrays)
        for begin, end in zip(bounds[:-1], bounds[1:]):
            self._parts.append(self._new_part(rows(int(begin), int(end))))
            self._starts.append(int(begin))
        self.ntotal = total

    def add(self, vectors: np.ndarray, all_arrays: list[np.ndarray]) -> None:
        self.build(all_arrays)  # re-slice so every thread keeps an equal share

    def _new_part(self, block: np.ndarray):
        import faiss

        if self.dtype == "float16":
            index = faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
            codes = np.ascontiguousarray(block, dtype=np.float16)
        else:
            index = faiss.IndexFlatIP(self.dim)
            codes = np.ascontiguousarray(block, dtype=np.float32)
        # The codes of a flat FAISS index are the raw vectors: copy them in without re-encoding.
        faiss.copy_array_to_vector(codes.view(np.uint8).ravel(), index.codes)
        index.ntotal = len(codes)
        return index

    def vectors(self) -> list[np.ndarray]:
        """Views (no copy) of the stored vectors, one array per slice."""
        import faiss

        views = []
        np_dtype = np.float16 if self.dtype == "float16" else np.float32
        for part in self._parts:
            if part.ntotal == 0:
                views.append(np.empty((0, self.dim), dtype=np_dtype))
                continue
            raw = faiss.rev_swig_ptr(part.codes.data(), part.codes.size())
            views.append(raw.view(np_dtype).reshape(part.ntotal, self.dim))
        return views

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.ntotal == 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        k = min(k, self.ntotal)
        if len(queries) <= SCAN_MAX_BATCH:
            return self._scan(queries, k)
        return topk_over_chunks(queries, self._float32_chunks, self.ntotal, k)

    def _scan(self, queries, k):
        views = self.vectors()

        def one(i):
            part, n = self._parts[i], self._parts[i].ntotal
            scores, pos = part.search(queries, min(k + 1, n))
            if scores.shape[1] > k:
                # FAISS orders equal scores arbitrarily: where the k-th and (k+1)-th tie, redo
                # that query on this slice with the exact, position-ordered top-k.
                for row in np.nonzero(scores[:, k - 1] == scores[:, k])[0]:
                    scores[row, :k], pos[row, :k] = exact_topk(queries[row], views[i], k)
                scores, pos = scores[:, :k], pos[:, :k]
            return scores, np.where(pos >= 0, pos + self._starts[i], -1)

        if len(self._parts) == 1:
            results = [one(0)]
        else:
            results = list(_scan_pool(len(self._parts)).map(one, range(len(self._parts))))
        scores = np.full((len(queries), 0), -np.inf, np.float32)
        positions = np.zeros((len(queries), 0), np.int64)
        for s, p in results:
            scores, positions = merge_topk(scores, positions, s, p, k)
        return scores, positions

    def _float32_chunks(self, rows: int = 8192) -> Iterator[tuple[int, np.ndarray]]:
        buffer = np.empty((rows, self.dim), dtype=np.float32)
        for start, view in zip(self._starts, self.vectors()):
            for offset in range(0, len(view), rows):
                block = view[offset:offset + rows]
                yield start + offset, to_float32(block, buffer[:len(block)])


class FaissSearcher:
    """Approximate search with a FAISS IVF or HNSW index (its own copy of the vectors,
    possibly compressed: fp16, sq8 / int8 or PQ), saved as one file in the index folder."""

    def __init__(self, kind: str, dim: int, params: dict[str, Any], index=None):
        self.kind, self.dim, self.params = kind, dim, dict(params)
        self.index = index

    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def factory(self) -> str:
        encoding = _factory_encoding(self.params["encoding"])
        if self.kind == "ivf":
            return f"IVF{int(self.params['nlist'])},{encoding}"
        return f"HNSW{int(self.params['M'])}" + ("" if encoding == "Flat" else f",{encoding}")

    def build(self, arrays: list[np.ndarray], *, seed: int = 1234) -> None:
        import faiss

        index = faiss.index_factory(self.dim, self.factory(), faiss.METRIC_INNER_PRODUCT)
        if self.kind == "hnsw":
            index.hnsw.efConstruction = int(self.params["ef_construction"])
        if not index.is_trained:
            index.train(_training_sample(arrays, self._training_size(), seed))
        self.index = index
        self._add_arrays(arrays)

    def _training_size(self) -> int:
        if self.kind == "ivf":
            # 64 points per centroid: k-means time grows as sample x nlist x dim, and more
            # points barely move the centroids (FAISS's own cap is 256). PQ codebooks (256
            # centroids each) want ~10k points whatever nlist is.
            pq = str(self.params["encoding"]).lower().startswith("pq")
            return max(int(self.params["nlist"]) * 64, 16384 if pq else 0)
        return 65536  # scalar / product quantizer training of HNSW encodings

    def add(self, vectors: np.ndarray, all_arrays: list[np.ndarray]) -> None:
        self._add_arrays([vectors])

    def _add_arrays(self, arrays):
        for block in as_float32_chunks(arrays):
            self.index.add(block)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by the approximate index; always min(k, ntotal) results per query.

        IVF visits only ``nprobe`` lists, which may hold fewer than k vectors: the short queries
        are searched again with 4x the lists until they have k (at nprobe = nlist every vector is
        seen). HNSW's beam is at least k wide; a query still short after that is answered
        exactly from the index's own (decoded) vectors.
        """
        k = min(k, self.ntotal)
        if k == 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        if self.kind == "ivf":
            nlist = int(self.params["nlist"])
            width = min(int(self.params["nprobe"]), nlist)
            scores, positions = self._search(queries, k, width)
            short = _short_rows(positions)
            while len(short) and width < nlist:
                width = min(nlist, width * 4)
                scores[short], positions[short] = self._search(queries[short], k, width)
                short = short[_short_rows(positions[short])]
        else:
            width = max(int(self.params["ef_search"]), k)
            scores, positions = self._search(queries, k, width)
            short = _short_rows(positions)
            if len(short):
                scores[short], positions[short] = topk_over_chunks(queries[short], self._decoded_chunks,
                                                                   self.ntotal, k)
        # FAISS orders equal scores arbitrarily: put them in position order, misses (-1) last.
        missing = positions < 0
        scores = np.where(missing, -np.inf, scores).astype(np.float32)
        order = np.lexsort((np.where(missing, np.iinfo(np.int64).max, positions), -scores), axis=1)
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(positions, order, axis=1)

    def _search(self, queries: np.ndarray, k: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        if self.kind == "ivf":
            params = faiss.SearchParametersIVF(nprobe=width)
        else:
            params = faiss.SearchParametersHNSW(efSearch=width)
        return self.index.search(np.ascontiguousarray(queries), k, params=params)

    def _decoded_chunks(self, rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, self.ntotal, rows):
            yield start, self.index.reconstruct_n(start, min(rows, self.ntotal - start))

    def save(self, path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, kind: str, dim: int, params: dict, path) -> "FaissSearcher":
        import faiss

        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            from .files import CorruptIndexError

            raise CorruptIndexError(f"cannot read the {kind} index ({str(exc).splitlines()[0]})",
                                    file=str(path)) from None
        return cls(kind, dim, params, index)


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _scan_pool(threads: int) -> ThreadPoolExecutor:
    """One lasting pool for the slice scans: a fresh thread per call would also start a fresh
    OpenMP team inside FAISS, which costs more than scanning 100k vectors."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < threads:
            _POOL = ThreadPoolExecutor(threads, thread_name_prefix="lamra-scan", initializer=_one_omp_thread)
        return _POOL


def _one_omp_thread() -> None:
    import faiss

    faiss.omp_set_num_threads(1)  # this thread scans one slice; FAISS should not fan out again


def _short_rows(positions: np.ndarray) -> np.ndarray:
    """Rows of a FAISS answer that found fewer than k vectors (a -1 position)."""
    return np.nonzero((positions < 0).any(axis=1))[0]


def _concat_reader(arrays: list[np.ndarray]):
    """rows(begin, end) over the concatenation of ``arrays`` (copies only across a boundary)."""
    offsets = np.cumsum([0] + [len(a) for a in arrays])

    def rows(begin: int, end: int) -> np.ndarray:
        parts = []
        for a, lo in zip(arrays, offsets[:-1]):
            s, e = max(begin - lo, 0), min(end - lo, len(a))
            if s < e:
                parts.append(a[s:e])
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else np.empty((0, arrays[0].shape[1] if arrays else 0))

    return rows


def _training_sample(arrays: list[np.ndarray], size: int, seed: int) -> np.ndarray:
    total = sum(len(a) for a in arrays)
    rows = _concat_reader(arrays)
    if total <= size:
        return to_float32(rows(0, total))
    picks = np.sort(np.random.default_rng(seed).choice(total, size=size, replace=False))
    offsets = np.cumsum([0] + [len(a) for a in arrays])
    out = np.empty((size, arrays[0].shape[1]), dtype=np.float32)
    for a, lo in zip(arrays, offsets[:-1]):
        mask = (picks >= lo) & (picks < lo + len(a))
        out[mask] = to_float32(np.asarray(a[picks[mask] - lo]))
    return out


def _thread_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
