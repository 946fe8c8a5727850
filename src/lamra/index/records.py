"""What an index records: the manifest it starts with and the metadata kept of each item.

Shared by the FAISS store (:mod:`~lamra.index.store`) and the Milvus backend.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from ..errors import IncompatibleArtifactError
from . import files
from .checks import FINGERPRINT_KEYS


def new_manifest(fingerprint: dict, *, dtype: str, backend: str, params: dict) -> dict:
    from ..version import __version__

    stamp = now()
    return {
        "format": files.INDEX_FORMAT,
        **{k: fingerprint.get(k) for k in FINGERPRINT_KEYS},
        "count": 0,
        "dtype": dtype,
        "backend": backend,
        "backend_params": params,
        "created": stamp,
        "updated": stamp,
        "lamra_version": __version__,
        "segments": [],
    }


def normalise_metadata(record: dict) -> dict:
    """{"id", "text", "image" (first image, absolute), "images" (all), JSON-able extra fields}."""
    images = record.get("images")
    if images is None:
        images = [record["image"]] if record.get("image") else []
    elif not isinstance(images, (list, tuple)):
        images = [images]
    paths = [str(Path(p).resolve()) for p in images if isinstance(p, (str, os.PathLike))]
    out = {k: v for k, v in record.items() if k not in ("image", "images") and _jsonable(v)}
    out.setdefault("text", None)
    out["image"] = paths[0] if paths else None
    out["images"] = paths
    return out


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ItemLookup:
    """What both index kinds answer from their id list (``self._ids``) and manifest: an id's
    position (the map built on first use, in ``self._positions``), ``in``, the fingerprint."""

    _ids: list[str]
    _positions: dict[str, int] | None
    manifest: dict

    @property
    def ids(self) -> list[str]:
        return self._ids

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def fingerprint(self) -> dict:
        return {k: self.manifest.get(k) for k in FINGERPRINT_KEYS}

    def position(self, item_id: str) -> int:
        if self._positions is None:
            self._positions = {item_id: n for n, item_id in enumerate(self._ids)}
        try:
            return self._positions[str(item_id)]
        except KeyError:
            raise KeyError(f"no item with id {item_id!r} in this index") from None

    def _query_matrix(self, query_vectors, k: int):
        """Query vectors as a (Q, dim) float32 matrix, checked against this index and ``k``."""
        import numpy as np

        queries = np.asarray(query_vectors, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise IncompatibleArtifactError(f"query vectors have shape {queries.shape}; this index holds "
                                            f"dimension {self.dim} (model {self.manifest.get('model')!r})")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        return queries

    def __contains__(self, item_id) -> bool:
        try:
            self.position(item_id)
        except KeyError:
            return False
        return True
