"""The Milvus backend: the vectors in a Milvus collection, lamra's manifest and items in the folder.

One client (``pymilvus.MilvusClient``) for every kind of Milvus: an embedded database (a file
path: Milvus Lite, the real C++ engine in a subprocess), a standalone server or a cluster
(``http://host:19530`` with a token). The index folder holds what it holds for FAISS except the
vectors::

    manifest.json                 fingerprint, count, backend "milvus", index parameters, and
                                  "milvus": {uri, collection, index_uid}
    segments/00000.ids.json       the ids of each build / add, in order
    segments/00000.items.jsonl    their metadata (text, image paths, extra fields)
    milvus.db                     the embedded database (when no --milvus-uri was given)

The collection and its client are in :mod:`~lamra.index.milvus_db`, building and adding in
:mod:`~lamra.index.milvus_build`. Opening checks the collection's description: it refuses a
collection made by another model or owned by another index folder.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..errors import IncompatibleArtifactError, InputError
from . import files
from .checks import check_fingerprint
from .milvus_db import (
    EMBEDDED_DB,
    MAX_TOPK,
    SEARCH_PARAMS,
    client_uri,
    connect,
    count_rows,
    is_embedded,
    one_line,
    owner_of,
    release,
)
from .milvus_filter import check_where
from .records import ItemLookup

logger = logging.getLogger(__name__)

_QUERY_BATCH = 1024


# -- an open index -------------------------------------------------------------------------------


class MilvusIndex(ItemLookup):
    """An index folder whose vectors are in Milvus; the same interface as :class:`Index`
    (``search``, ``metadata``, ``ids``, ``add``, ``vectors`` ...), plus ``where=`` filters.

    Opened by ``Index.open`` (which reads the manifest); ``Index.build(..., backend="milvus")``
    makes one.
    """

    def __init__(self, manifest: dict, path: Path, *, uri: str, token: str | None,
                 segments: list[tuple[list[str], Path]]):
        self.manifest, self.path, self.uri, self._token = manifest, Path(path), uri, token
        self._client = None
        self.collection = manifest["milvus"]["collection"]
        self._segments = segments
        self._ids = [i for ids, _ in segments for i in ids]
        self._positions: dict[str, int] | None = None
        self._offsets: dict[int, np.ndarray] = {}
        self._guard: str | None = None  # a filter that hides rows of an add that was never committed
        self._loaded = False

    @classmethod
    def open(cls, path, *, expect: dict | None = None, verify: bool = True, milvus_uri: str | None = None,
             milvus_token: str | None = None, manifest: dict | None = None) -> "MilvusIndex":
        path = Path(path)
        manifest = manifest or files.read_manifest(path)
        check_fingerprint(manifest, expect, where=str(path))
        record = manifest.get("milvus") or {}
        if not record.get("collection") or not record.get("index_uid"):
            raise files.CorruptIndexError("the manifest names no Milvus collection", file=str(path / files.MANIFEST))
        uri = milvus_uri or client_uri(path, record.get("uri") or EMBEDDED_DB)
        segments = []
        check = files.verify_file if verify else files.check_size
        for entry in manifest["segments"]:
            ids_path, items_path = check(path, entry["ids"]), check(path, entry["items"])
            try:
                ids = json.loads(ids_path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise files.CorruptIndexError(f"ids file is not valid JSON ({exc})", file=str(ids_path)) from None
            if not isinstance(ids, list) or len(ids) != entry["count"]:
                raise files.CorruptIndexError(f"ids file does not hold {entry['count']} ids", file=str(ids_path))
            segments.append((ids, items_path))
        count = sum(len(ids) for ids, _ in segments)
        if count != manifest["count"]:
            raise files.CorruptIndexError(f"segments hold {count} items, the manifest says {manifest['count']}",
                                          file=str(path / files.MANIFEST))
        index = cls(manifest, path, uri=uri, token=milvus_token, segments=segments)
        # Under torchrun an embedded database is rank 0's alone (Milvus Lite opens a file in one
        # process): the other ranks connect only if they use the collection.
        from .. import distributed

        if not (is_embedded(uri) and distributed.world_size() > 1 and distributed.rank() != 0):
            index.client  # noqa: B018 - connects and checks the collection now
        return index

    @property
    def client(self):
        """The Milvus client, connected (and the collection checked) on first use."""
        if self._client is None:
            self._client = connect(self.uri, self._token)
            try:
                self._check_collection()
            except Exception:
                self._client = None
                raise
        return self._client

    def _check_collection(self) -> None:
        name, where = self.collection, f"Milvus collection {self.collection!r} at {self.uri}"
        if not self._client.has_collection(name):
            raise InputError(f"{where} does not exist (dropped, or another database?): rebuild the index, or give "
                             "the right --milvus-uri", file=str(self.path))
        owner = owner_of(self._client, name)
        if owner is None or owner.get("index_uid") != self.manifest["milvus"]["index_uid"]:
            other = "is not a lamra index" if owner is None else \
                f"belongs to another lamra index ({owner.get('folder')})"
            raise IncompatibleArtifactError(f"{where} {other}, not to {self.path}")
        check_fingerprint(owner, self.fingerprint(), where=where)

    # -- the same interface as Index ------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"MilvusIndex({len(self)} items, dim {self.dim}, {self.collection} at {self.uri})"

    def metadata(self, item_id: str) -> dict:
        position = self.position(item_id)
        for number, (ids, items_path) in enumerate(self._segments):
            if position < len(ids):
                if number not in self._offsets:
                    self._offsets[number] = files.line_offsets(items_path)
                with open(items_path, "rb") as handle:
                    handle.seek(int(self._offsets[number][position]))
                    return json.loads(handle.readline())
            position -= len(ids)
        raise KeyError(item_id)  # pragma: no cover - positions and segments agree

    def load(self) -> "MilvusIndex":
        """Load the collection into the query nodes and check that it holds this index's rows."""
        if self._loaded:
            return self
        self.client.load_collection(self.collection)
        stored, expected = count_rows(self.client, self.collection), len(self)
        if stored < expected:
            raise files.CorruptIndexError(f"Milvus collection {self.collection!r} holds {stored} rows, the manifest "
                                          f"{expected}: rebuild the index", file=str(self.path))
        if stored > expected:  # rows of an add killed before its commit: run it again to finish it
            logger.warning("%s holds %d rows of an unfinished add; searches leave them out", self.collection,
                           stored - expected)
            self._guard = f"segment < {len(self._segments)}"
        self._loaded = True
        return self

    def vectors(self) -> np.ndarray:
        """All stored vectors (N, dim) as float32, in index order (fetched from Milvus)."""
        return self.vectors_of(self._ids)

    def vectors_of(self, ids: list[str]) -> np.ndarray:
        """The stored vectors of ``ids`` (N, dim) as float32, in that order (fetched from Milvus)."""
        ids = [str(i) for i in ids]
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for start in range(0, len(ids), _QUERY_BATCH):
            chunk = ids[start:start + _QUERY_BATCH]
            found = {str(r["id"]): r["vector"] for r in self.client.get(self.collection, ids=chunk,
                                                                         output_fields=["vector"])}
            missing = [i for i in chunk if i not in found]
            if missing:
                raise files.CorruptIndexError(f"Milvus collection {self.collection!r} has no row for id "
                                              f"{missing[0]!r}", file=str(self.path))
            out[start:start + len(chunk)] = [_as_array(found[i]) for i in chunk]
        return out

    def search(self, query_vectors: np.ndarray, k: int = 10, *, where: str | None = None,
               **search_params) -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` of each query: scores (Q, k') float32 (-inf where a query found fewer) and ids.

        ``where``: a Milvus boolean expression over the scalar fields (``modality == 'image'``),
        checked before it is sent. ``search_params``: ``nprobe`` (IVF) or ``ef_search`` (HNSW).
        Equal scores come in index order, as from the FAISS backends.
        """
        queries = self._query_matrix(query_vectors, k)
        k = min(k, len(self))
        if k > MAX_TOPK:
            raise ValueError(f"Milvus returns at most {MAX_TOPK} results per query, asked for {k}")
        params = self._search_params(search_params, k)
        self.load()
        expression = " and ".join(f"({e})" for e in (check_where(where) if where else None, self._guard) if e)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids: list[list[str]] = []
        for start in range(0, len(queries), _QUERY_BATCH):
            block = queries[start:start + _QUERY_BATCH]
            found = self._search(block, k, params, expression)
            short = [n for n, hits in enumerate(found) if len(hits) < k]
            # IVF visits nprobe lists, which may hold fewer than k rows: widen like the FAISS backend.
            while short and "nprobe" in params and params["nprobe"] < int(self.manifest["backend_params"]["nlist"]):
                params = dict(params, nprobe=min(int(self.manifest["backend_params"]["nlist"]), params["nprobe"] * 4))
                again = self._search(block[short], k, params, expression)
                for n, hits in zip(short, again):
                    found[n] = hits
                short = [n for n in short if len(found[n]) < k]
            for row, hits in enumerate(found, start=start):
                hits = [hit for hit in hits if hit[0] in self]  # (a row of an add committed meanwhile)
                hits.sort(key=lambda hit: (-hit[1], self.position(hit[0])))
                scores[row, :len(hits)] = [score for _, score in hits]
                ids.append([item_id for item_id, _ in hits])
        return scores, ids

    def _search_params(self, overrides: dict, k: int) -> dict:
        stored = self.manifest["backend_params"]
        known = SEARCH_PARAMS.get(stored["index_type"], ())
        unknown = set(overrides) - set(known)
        if unknown:
            raise ValueError(f"unknown search parameter(s) {sorted(unknown)} for a Milvus {stored['index_type']} "
                             f"index (it takes {', '.join(known) or 'none'})")
        params = {name: int(overrides.get(name, stored[name])) for name in known}
        if "ef_search" in params:
            params["ef_search"] = max(params["ef_search"], k)  # HNSW's beam must hold k
        return params

    def _search(self, queries: np.ndarray, k: int, params: dict, expression: str) -> list[list[tuple[str, float]]]:
        from pymilvus.exceptions import MilvusException

        milvus_params = {"nprobe": params["nprobe"]} if "nprobe" in params else (
            {"ef": params["ef_search"]} if "ef_search" in params else {})
        vectors = list(queries.astype(np.float16) if self.manifest["dtype"] == "float16" else queries)
        try:
            result = self.client.search(self.collection, data=vectors, limit=k, filter=expression, anns_field="vector",
                                        search_params={"metric_type": "IP", "params": milvus_params},
                                        output_fields=[])
        except MilvusException as exc:
            raise InputError(f"Milvus refused the search of {self.collection!r}: {one_line(exc)}",
                             field="where" if expression else None) from None
        return [[(str(hit["id"]), float(hit["distance"])) for hit in hits] for hits in result]

    # -- changing one -----------------------------------------------------------------------------

    def add(self, items, retriever, *, show_progress: bool = True, **options) -> None:
        """Encode ``items`` and upsert them as a new segment (resumable, like the build)."""
        from .milvus_build import add_items

        add_items(self, items, retriever, show_progress=show_progress, **options)

    def add_vectors(self, vectors: np.ndarray, ids: list[str], metadata: list[dict] | None = None) -> None:
        """Upsert vectors you already have as a new segment, committed at once."""
        from .milvus_build import add_vectors

        add_vectors(self, vectors, ids, metadata)

    def drop(self) -> None:
        """Delete the collection (a temporary index: mining's pool); an embedded database inside
        the folder is closed too, as the folder is about to go."""
        self.client.drop_collection(self.collection)
        if is_embedded(self.uri) and Path(self.uri).resolve().is_relative_to(self.path.resolve()):
            release(self.uri)

    def _reopen(self) -> None:
        fresh = type(self).open(self.path, verify=False, milvus_uri=self.uri, milvus_token=self._token)
        self.__dict__.update(fresh.__dict__)


def _as_array(vector) -> np.ndarray:
    if isinstance(vector, (bytes, bytearray)):  # float16 vectors come back as raw bytes
        return np.frombuffer(vector, dtype=np.float16).astype(np.float32)
    return np.asarray(vector, dtype=np.float32)
