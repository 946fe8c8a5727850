"""Random-but-clustered unit vectors, for the recall test and the search benchmark.

Real embedding collections are not uniform on the sphere (where every neighbour is about as
far as any other and no index can beat a scan): they gather in topics and sub-topics.
The generator draws topic centres, sub-topic offsets around them and isotropic noise.
"""

from __future__ import annotations

import numpy as np


def clustered_vectors(count: int, dim: int, *, topics: int = 100, subtopics: int = 10, spread: float = 1.5,
                      intrinsic_dim: int | None = None, seed: int = 0, dtype=np.float32,
                      chunk: int = 65536) -> np.ndarray:
    """(count, dim) unit rows: topic centre + sub-topic offset (0.7) + noise (``spread``).

    ``intrinsic_dim`` r < dim draws the noise in a random r-dimensional subspace: like real
    embeddings, whose variation spans far fewer directions than their dimension (isotropic
    noise in 1536 dimensions makes every sub-topic an island, and any index looks perfect).
    """
    rng = np.random.default_rng(seed)
    basis = None
    if intrinsic_dim is not None and intrinsic_dim < dim:
        basis = np.linalg.qr(rng.standard_normal((dim, intrinsic_dim)))[0].astype(np.float32).T  # (r, dim)
    centres = rng.standard_normal((topics, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    offsets = rng.standard_normal((topics * subtopics, dim), dtype=np.float32) * np.float32(0.7 / np.sqrt(dim))
    out = np.empty((count, dim), dtype=dtype)
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        which = rng.integers(0, topics * subtopics, n)
        block = centres[which // subtopics] + offsets[which]
        if basis is None:
            block += rng.standard_normal((n, dim), dtype=np.float32) * np.float32(spread / np.sqrt(dim))
        else:
            noise = rng.standard_normal((n, len(basis)), dtype=np.float32) @ basis
            block += noise * np.float32(spread / np.sqrt(len(basis)))
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:start + n] = block
    return out
