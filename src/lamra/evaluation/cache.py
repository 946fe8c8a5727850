"""Embedding caches of the evaluation: index folders keyed by everything their vectors depend on.

A cache entry is a lamra index folder (``lamra.index.Index``), built with the index layer's
sharded, checkpointed, resumable (and ``torchrun``-parallel) encoding. Its folder name carries a
key hashed from

- the encoder's fingerprint (model, adapter, prompt-format version, dimension),
- the content hash (sha256) of the data file the items come from,
- whatever else changes the vectors (the query instructions, the storage dtype, whether bad
  items were left out),

so a second evaluation with the same model and data opens the folder and encodes nothing, and a
change of any of these lands in a new folder and encodes everything. (Images are read through
the data file's paths; an image replaced in place under the same name is not detected.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from ..digests import file_sha256, strings_sha256
from ..errors import InputError

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1


class Encoder(Protocol):
    """What the evaluation needs from a model: lamra's Retriever, or a baseline."""

    def encode(self, items: Sequence[Any], instruction: str | Sequence[str | None] | None = None,
               **options) -> np.ndarray: ...

    def fingerprint(self) -> dict: ...


def cache_key(fingerprint: dict, parts: dict) -> str:
    """A short, stable hash of the fingerprint and the other parts the vectors depend on."""
    blob = json.dumps({"format": CACHE_FORMAT, "fingerprint": fingerprint, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class CacheStats:
    built: list[str]
    reused: list[str]


class EmbeddingCache:
    """Index folders under ``folder``; ``stats`` records which were built and which reused."""

    def __init__(self, folder: str | os.PathLike, *, index_dtype: str = "float16", shard_size: int = 1024,
                 batch_size: int | None = None, show_progress: bool = True):
        self.folder = Path(folder)
        self.index_dtype = index_dtype
        self.shard_size = shard_size
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.stats = CacheStats([], [])

    def index(self, name: str, items: Callable[[], list], encoder: Encoder, *, source: Path, count: int,
              parts: dict | None = None, dtype: str | None = None, locate: Callable[[str], int | None] | None = None,
              instruction: str | Sequence[str | None] | None = None, skip_bad: bool = False,
              skip_hint: str | None = None, backend: dict | None = None):
        """The index of ``items()`` (called only when it must be built), from the cache when the key matches.

        ``source`` is the data file (its sha256 goes into the key), ``count`` the number of items
        it yields, ``parts`` anything else the vectors depend on. ``instruction``: one for all
        items or one per item (queries; candidates take none), hashed into the key.
        ``skip_bad`` leaves out items that fail to load (listed in the index's manifest under
        "skipped"; such an index has its own key); ``skip_hint`` is what the error of a bad item
        suggests otherwise. ``locate(item_id)`` gives the source line of an item, to name it when
        encoding fails. ``backend``: ``Index.build`` options of another backend (``{"backend":
        "milvus", "milvus_uri": ...}``); its name, database and index type go into the key.
        """
        from ..index import Index
        from ..index.files import MANIFEST

        dtype = dtype or self.index_dtype
        fingerprint = encoder.fingerprint()
        key_parts = {"data_sha256": file_sha256(source), "dtype": dtype, **(parts or {})}
        if instruction is not None:
            per_item = [instruction] * count if isinstance(instruction, str) else list(instruction)
            key_parts["instructions_sha256"] = strings_sha256(per_item)
        if skip_bad:
            key_parts["skip_bad"] = True
        backend = dict(backend or {})
        if backend:
            key_parts["backend"] = {k: v for k, v in backend.items() if k != "milvus_token"}
        key = cache_key(fingerprint, key_parts)
        path = self.folder / f"{name}.{key}"
        if (path / MANIFEST).is_file():
            index = Index.open(path, expect=fingerprint, verify=False, milvus_uri=backend.get("milvus_uri"),
                               milvus_token=backend.get("milvus_token"))
            if len(index) + len(index.manifest.get("skipped") or []) == count:
                logger.info("reusing %s (%d vectors)", path, len(index))
                self.stats.reused.append(name)
                return index
            raise InputError(f"cached index holds {len(index)} items, the data {count}: delete the folder to rebuild",
                             file=str(path))
        self._describe(path, name, fingerprint, key_parts, source)
        options: dict[str, Any] = {"dtype": dtype, "shard_size": self.shard_size, "show_progress": self.show_progress,
                                   "instruction": instruction, "skip_bad": skip_bad, "skip_hint": skip_hint}
        if self.batch_size is not None:
            options["batch_size"] = self.batch_size
        if backend:
            options.update(backend, source=str(source))
            options["dtype"] = "float32" if dtype == "float16" and backend.get("backend") == "milvus" else dtype
        listed = items()
        try:
            index = Index.build(listed, encoder, path, **options)
        except InputError as exc:
            line = locate(exc.item) if locate is not None and exc.item is not None else None
            raise exc.located(file=str(source), line=line) from None
        if index.manifest.get("skipped"):
            logger.warning("%s: left out %d bad item(s)", source, len(index.manifest["skipped"]))
        self.stats.built.append(name)
        return index

    def _describe(self, path: Path, name: str, fingerprint: dict, parts: dict, source: Path) -> None:
        """A readable note beside the folder: what its key was made of."""
        from ..embeddings import atomic_write_bytes

        note = {"name": name, "fingerprint": fingerprint, "source": str(source), **parts}
        atomic_write_bytes(path.with_name(path.name + ".key.json"), json.dumps(note, indent=2).encode())
