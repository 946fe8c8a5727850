"""Reference encoders that need no model: the chance level and the ceiling of a benchmark.

- :class:`RandomEncoder` gives every item an independent random unit vector, so each query's
  ranking is a uniformly random order of the pool: its scores are the chance level.
- :class:`OracleEncoder` maps each query onto its first positive: a perfect retriever by
  construction. Anything short of 100 means the data is broken (a positive missing from the
  pool, a qrels line naming an unknown query ...).

Both follow the encoder protocol of the evaluation (``encode(items, instruction=...)`` and
``fingerprint()``), so they run through exactly the same code as a real model. An item is a
query when it comes with an instruction (M-BEIR queries always have one; give zero-shot queries
one), a candidate otherwise.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping, Sequence

import numpy as np

from ..items import as_item
from ..retriever.model import per_item_instructions as _instructions


def _unit_vector(key: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


class RandomEncoder:
    """Independent random unit vectors (a function of seed, item id and instruction)."""

    def __init__(self, seed: int = 0, dim: int = 64):
        self.seed, self.dim = seed, dim

    def fingerprint(self) -> dict:
        return {"model": f"baseline:random@{self.seed}", "adapter": None, "prompt_format": "none", "dim": self.dim}

    def encode(self, items: Sequence[Any], instruction=None, **options) -> np.ndarray:
        items = [as_item(x) for x in items]
        rows = [_unit_vector(f"{self.seed}|{item.id}|{instr}", self.dim)
                for item, instr in zip(items, _instructions(instruction, len(items)))]
        return np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)


class OracleEncoder:
    """Each candidate a random unit vector; each query exactly its first positive's vector."""

    def __init__(self, positives: Mapping[str, Sequence[str]], dim: int = 256, name: str = "oracle"):
        self.positives = {str(q): [str(d) for d in dids] for q, dids in positives.items()}
        self.dim, self.name = dim, name

    def fingerprint(self) -> dict:
        digest = hashlib.sha256(repr(sorted(self.positives.items())).encode()).hexdigest()[:12]
        return {"model": f"baseline:{self.name}@{digest}", "adapter": None, "prompt_format": "none", "dim": self.dim}

    def encode(self, items: Sequence[Any], instruction=None, **options) -> np.ndarray:
        items = [as_item(x) for x in items]
        rows = []
        for item, instr in zip(items, _instructions(instruction, len(items))):
            if instr is not None:  # a query
                positives = self.positives.get(item.id)
                key = f"cand|{positives[0]}" if positives else f"query-without-positive|{item.id}"
            else:
                key = f"cand|{item.id}"
            rows.append(_unit_vector(key, self.dim))
        return np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)
