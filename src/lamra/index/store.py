"""Index: vectors + ids + item metadata + manifest in one folder, searched by a backend.

Layout of an index folder::

    manifest.json                 model fingerprint, count, dtype, backend and its parameters,
                                  created / updated, and the size + sha256 of every file below
    segments/00000.vectors.npy    (n, dim) float16 or float32, one row per item
    segments/00000.ids.json       the n ids, in row order
    segments/00000.items.jsonl    the n items' metadata (id, text, image paths, extra fields)
    backend-00001.faiss           the approximate (IVF / HNSW) index, if any
    .work/                        only while a build or add is running or was interrupted

``build`` writes segment 0; each ``add`` appends a segment. The manifest is written last, so
an interrupted write leaves the previous, complete index in place.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import IncompatibleArtifactError
from . import files
from .backends import FaissSearcher, make_searcher, resolve_params
from .build import add_items, build_index
from .checks import check_fingerprint, check_new_ids
from .records import ItemLookup, new_manifest, normalise_metadata, now


class Index(ItemLookup):
    """A searchable, on-disk (or in-memory) collection of item vectors.

    >>> index = Index.build(items, retriever, "my-index")          # encode, checkpointing shards
    >>> index = Index.open("my-index", expect=retriever.fingerprint())
    >>> scores, ids = index.search(retriever.encode(["a red car"]), k=10)
    >>> index.metadata(ids[0][0])                                    # {"id", "text", "image", ...}
    """

    def __init__(self, manifest: dict, segments: list["_Segment"], searcher, path: Path | None, *, loader=None):
        self.manifest = manifest
        self._segments = segments
        self._searcher_object = searcher
        self._loader = loader  # loads the searcher on first use (opening stays cheap)
        self._lock = threading.Lock()
        self.path = path
        self._ids: list[str] = [i for s in segments for i in s.ids]
        self._positions: dict[str, int] | None = None

    # -- making one -------------------------------------------------------------------------

    @classmethod
    def from_vectors(cls, vectors: np.ndarray, ids: list[str], fingerprint: dict, *,
                     metadata: list[dict] | None = None, path=None, backend: str = "flat",
                     dtype: str | None = None, **backend_params) -> "Index":
        """An index over vectors you already have; ``path=None`` keeps it in memory (not for
        ``backend="milvus"``, which takes ``milvus_uri`` / ``milvus_token`` / ``milvus_collection``)."""
        if backend == "milvus":
            from .milvus import MilvusIndex
            from .milvus_build import from_vectors

            uri = from_vectors(vectors, ids, fingerprint, metadata=metadata, path=path, dtype=dtype or "float32",
                               **backend_params)
            return MilvusIndex.open(path, verify=False, milvus_uri=uri, milvus_token=backend_params.get("milvus_token"))
        dtype = dtype or "float16"
        vectors = np.asarray(vectors)
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be a 2-D array, got shape {vectors.shape}")
        if len(vectors) == 0:
            raise ValueError("cannot make an index of zero vectors")
        dim = int(fingerprint.get("dim") or vectors.shape[1])
        if vectors.shape[1] != dim:
            raise IncompatibleArtifactError(f"vectors have dimension {vectors.shape[1]} but the fingerprint says {dim}")
        params = resolve_params(backend, len(vectors), dtype, backend_params)
        manifest = new_manifest({**fingerprint, "dim": dim}, dtype=dtype, backend=backend, params=params)
        index = cls(manifest, [], None, None)
        index._loader = lambda: _build_searcher(index.manifest, index._segments)
        index._append(vectors, ids, metadata)
        if path is not None:
            index.save(path)
        return index

    @classmethod
    def build(cls, items: Iterable[Any], retriever, path, *, backend: str = "flat", dtype: str | None = None,
              shard_size: int = 1024, show_progress: bool = True,
              instruction: str | Sequence[str | None] | None = None, num_workers: int = 0,
              **backend_params) -> "Index":
        """Encode ``items`` (each with an id) into a new index folder at ``path``.

        ``instruction``: one instruction for every item (e.g. queries of one task), or a
        sequence with one per item, ``None`` where an item takes none; each item is encoded
        with its own (``retriever.encode(items, instruction=[...])``). Candidates take none.

        Encoding goes shard by shard, each shard checkpointed in ``path/.work``: if the build
        is killed, the same call resumes it. Under ``torchrun`` every rank encodes its share
        of the shards and rank 0 writes the index. Extra keyword arguments: ``skip_bad``
        (leave out items whose image is unreadable, listed in the manifest), ``batch_size``,
        ``max_batch_tokens`` and the backend's parameters (``nlist``, ``nprobe``, ``M``,
        ``ef_search``, ``encoding`` ...). ``num_workers``: processes collating each shard's
        batches (``Retriever.encode(num_workers=...)``; 0: a thread, as by default).
        ``tokenize_ahead`` (default true): tokenize the next shard in a background thread while
        this one encodes (lamra's retriever; false: each shard tokenized as it is encoded).

        ``backend="milvus"``: the vectors go to a Milvus collection (:mod:`lamra.index.milvus`;
        ``milvus_uri`` - default an embedded database in the folder -, ``milvus_token``,
        ``milvus_collection``, ``index_type``, ``source``); ``dtype`` defaults to float32 there
        and to float16 for the FAISS backends.
        """
        if backend == "milvus":
            if num_workers:
                raise ValueError("num_workers is not supported with backend='milvus' yet")
            from .milvus import MilvusIndex
            from .milvus_build import build_milvus

            uri = build_milvus(items, retriever, path, dtype=dtype or "float32", shard_size=shard_size,
                               show_progress=show_progress, instruction=instruction, **backend_params)
            return MilvusIndex.open(path, verify=False, milvus_uri=uri, milvus_token=backend_params.get("milvus_token"))
        return build_index(cls, items, retriever, path, backend=backend, dtype=dtype or "float16",
                           shard_size=shard_size, show_progress=show_progress, instruction=instruction,
                           num_workers=num_workers, **backend_params)

    @classmethod
    def open(cls, path, *, expect: dict | None = None, verify: bool = True, milvus_uri: str | None = None,
             milvus_token: str | None = None) -> "Index":
        """Open an index folder. ``expect`` (a ``Retriever.fingerprint()``) refuses an index made
        by another model, adapter, prompt format or dimension. ``verify`` checks every file's
        sha256 (``False``: sizes only, faster for very large indexes). The vectors are loaded
        into the search backend on the first search (or ``load()``).

        A Milvus index (its manifest says so) opens as a :class:`~lamra.index.milvus.MilvusIndex`
        on the database its manifest names, or on ``milvus_uri`` (``milvus_token``: default
        ``$MILVUS_TOKEN``)."""
        path = Path(path)
        manifest = files.read_manifest(path)
        if manifest.get("backend") == "milvus":
            from .milvus import MilvusIndex

            return MilvusIndex.open(path, expect=expect, verify=verify, milvus_uri=milvus_uri,
                                    milvus_token=milvus_token, manifest=manifest)
        check_fingerprint(manifest, expect, where=str(path))
        segments = [_Segment.load(path, entry, manifest, verify=verify) for entry in manifest["segments"]]
        count = sum(len(s) for s in segments)
        if count != manifest["count"]:
            raise files.CorruptIndexError(f"segments hold {count} items, the manifest says {manifest['count']}",
                                          file=str(path / files.MANIFEST))
        backend_file = None
        if manifest["backend"] != "flat":
            entry = manifest.get("backend_file")
            if not entry:
                raise files.CorruptIndexError(f"the manifest names no file for the {manifest['backend']} backend",
                                              file=str(path / files.MANIFEST))
            backend_file = (files.verify_file if verify else files.check_size)(path, entry)
        return cls(manifest, segments, None, path, loader=lambda: _load_searcher(manifest, segments, backend_file))

    # -- using one --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "in memory"
        return f"Index({len(self)} items, dim {self.dim}, {self.manifest['backend']}, {where})"

    @property
    def _searcher(self):
        if self._searcher_object is None:
            with self._lock:
                if self._searcher_object is None:
                    self._searcher_object = self._loader()
        return self._searcher_object

    def load(self) -> "Index":
        """Load the vectors into the search backend now (otherwise the first search does)."""
        self._searcher  # noqa: B018 - loads on access
        return self

    def vectors(self) -> np.ndarray:
        """All stored vectors (N, dim) as float32 (a copy)."""
        from .backends import to_float32

        return np.concatenate([to_float32(np.asarray(s.vectors)) for s in self._segments])

    def search(self, query_vectors: np.ndarray, k: int = 10, **search_params) -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` items of each query: scores (Q, k') float32 and Q lists of ids, best first.

        k' = min(k, len(index)); an approximate backend may find fewer than k' for a query (its
        id list is then shorter and the missing scores are -inf). ``search_params`` override
        the backend's search settings for this call (``nprobe`` for ivf, ``ef_search`` for hnsw).
        """
        queries = self._query_matrix(query_vectors, k)
        queries = np.ascontiguousarray(queries)
        if search_params.pop("where", None) is not None:
            raise ValueError(f"--where filters need a Milvus index; this one is {self.manifest['backend']} "
                             "(build it with --backend milvus)")
        searcher = self._searcher
        if search_params:
            searcher = _with_params(searcher, search_params)
        scores, positions = searcher.search(queries, k)
        ids = [[self._ids[p] for p in row if p >= 0] for row in positions]
        return scores, ids

    def metadata(self, item_id: str) -> dict:
        """The stored metadata of an item: {"id", "text", "image", "images", ...extra fields}."""
        position = self.position(item_id)
        for segment in self._segments:
            if position < len(segment):
                return segment.item(position)
            position -= len(segment)
        raise KeyError(item_id)  # pragma: no cover - positions and segments agree

    # -- changing one -----------------------------------------------------------------------

    def add(self, items: Iterable[Any], retriever, *, show_progress: bool = True, **options) -> None:
        """Encode ``items`` and append them (resumable like ``build``; ids must be new unless
        ``skip_existing=True``, which leaves out items already in the index). ``instruction=``,
        ``num_workers=`` and ``tokenize_ahead=`` work as in :meth:`build` (the instruction: one for
        all, or one per item)."""
        add_items(self, items, retriever, show_progress=show_progress, **options)

    def add_vectors(self, vectors: np.ndarray, ids: list[str], metadata: list[dict] | None = None) -> None:
        """Append vectors you already have (written to disk at once if the index has a path)."""
        self._append(np.asarray(vectors), ids, metadata)
        if self.path is not None:
            self._commit(self.path, new_segments=[len(self._segments) - 1])

    def save(self, path=None) -> Path:
        """Write the whole index to ``path`` (default: where it was opened), manifest last."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("this index has no path yet: give save() a folder")
        target.mkdir(parents=True, exist_ok=True)
        if self.path is not None and target.resolve() == self.path.resolve():
            return target
        self._commit(target, new_segments=list(range(len(self._segments))), fresh=True)
        self.path = target
        return target

    def _append(self, vectors: np.ndarray, ids, metadata) -> None:
        ids = [str(i) for i in ids]
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise IncompatibleArtifactError(f"vectors of shape {vectors.shape} for an index of dimension {self.dim}")
        if len(ids) != len(vectors):
            raise ValueError(f"{len(vectors)} vectors but {len(ids)} ids")
        if metadata is None:
            metadata = [{"id": i} for i in ids]
        if len(metadata) != len(ids):
            raise ValueError(f"{len(ids)} ids but {len(metadata)} metadata records")
        check_new_ids(ids, self)
        dtype = np.float16 if self.manifest["dtype"] == "float16" else np.float32
        stored = np.ascontiguousarray(vectors, dtype=dtype)
        records = [{"id": i, **{k: v for k, v in normalise_metadata(m).items() if k != "id"}}
                   for i, m in zip(ids, metadata)]
        if self.manifest["backend"] != "flat" and self._segments:
            self._searcher  # noqa: B018 - an IVF / HNSW index from disk must be there to take new vectors
        self._ids.extend(ids)
        if self._positions is not None:
            start = len(self._ids) - len(ids)
            self._positions.update({i: start + n for n, i in enumerate(ids)})
        self._segments.append(_Segment(stored, ids, records))
        if self._searcher_object is not None:
            self._searcher_object.add(stored, [s.vectors for s in self._segments])
        self.manifest["count"] = len(self._ids)
        self.manifest["updated"] = now()

    def _commit(self, folder: Path, *, new_segments: list[int], fresh: bool = False) -> None:
        """Write the given segments and the backend file, then the manifest (the commit point)."""
        folder.mkdir(parents=True, exist_ok=True)
        entries = [] if fresh else list(self.manifest.get("segments", []))
        for number in new_segments:
            entries[number:number + 1] = [self._segments[number].write(folder, number)]
        manifest = dict(self.manifest, segments=entries, count=len(self._ids), updated=now())
        old_backend = manifest.get("backend_file")
        if self.manifest["backend"] != "flat":
            name = f"backend-{len(entries):05d}.faiss"
            self._searcher.save(folder / f".{name}.tmp")
            os.replace(folder / f".{name}.tmp", folder / name)
            manifest["backend_file"] = files.describe_file(folder, name)
        files.write_manifest(folder, manifest)
        self.manifest = manifest
        if not fresh and old_backend and old_backend["path"] != manifest.get("backend_file", {}).get("path"):
            (folder / old_backend["path"]).unlink(missing_ok=True)


class _Segment:
    """One build or add: vectors (memory-mapped when opened), ids, and item metadata."""

    def __init__(self, vectors: np.ndarray, ids: list[str], records: list[dict] | None = None,
                 items_path: Path | None = None):
        self.vectors, self.ids = vectors, ids
        self._records = records
        self._items_path = items_path
        self._offsets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def item(self, position: int) -> dict:
        if self._records is not None:
            return dict(self._records[position])
        if self._offsets is None:
            self._offsets = files.line_offsets(self._items_path)
        with open(self._items_path, "rb") as handle:
            handle.seek(int(self._offsets[position]))
            return json.loads(handle.readline())

    def write(self, folder: Path, number: int) -> dict:
        (folder / "segments").mkdir(exist_ok=True)
        stem = f"segments/{number:05d}"
        items = files.jsonl_bytes(self._records) if self._records is not None else self._items_path.read_bytes()
        return {
            "count": len(self),
            "vectors": write_npy(folder, f"{stem}.vectors.npy", self.vectors),
            "ids": files.write_file(folder, f"{stem}.ids.json", json.dumps(self.ids, ensure_ascii=False).encode()),
            "items": files.write_file(folder, f"{stem}.items.jsonl", items),
        }

    @classmethod
    def load(cls, folder: Path, entry: dict, manifest: dict, *, verify: bool) -> "_Segment":
        check = files.verify_file if verify else files.check_size
        vectors_path = check(folder, entry["vectors"])
        ids_path = check(folder, entry["ids"])
        items_path = check(folder, entry["items"])
        vectors = files.load_npy(vectors_path)
        want = (entry["count"], manifest["dim"])
        if vectors.shape != want or vectors.dtype != np.dtype(manifest["dtype"]):
            raise files.CorruptIndexError(f"vectors are {vectors.dtype} {vectors.shape}, the manifest says "
                                          f"{manifest['dtype']} {want}", file=str(vectors_path))
        try:
            ids = json.loads(ids_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise files.CorruptIndexError(f"ids file is not valid JSON ({exc})", file=str(ids_path)) from None
        if not isinstance(ids, list) or len(ids) != entry["count"]:
            raise files.CorruptIndexError(f"ids file does not hold {entry['count']} ids", file=str(ids_path))
        return cls(vectors, ids, items_path=items_path)


def write_npy(folder: Path, name: str, array: np.ndarray) -> dict:
    """Write a (possibly huge, memory-mapped) array as .npy, atomically, and describe it."""
    path = folder / name
    tmp = path.with_name(f".{path.name}.tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=array.dtype, shape=array.shape)
    for start in range(0, len(array), 65536):
        out[start:start + 65536] = array[start:start + 65536]
    out.flush()
    del out
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return files.describe_file(folder, name)


def _build_searcher(manifest: dict, segments: list[_Segment]):
    """A backend over the segments' vectors (trained and filled here for IVF / HNSW)."""
    searcher = make_searcher(manifest["backend"], int(manifest["dim"]), manifest["dtype"],
                             manifest.get("backend_params", {}))
    searcher.build([s.vectors for s in segments])
    return searcher


def _load_searcher(manifest: dict, segments: list[_Segment], backend_file: Path | None):
    backend, dim = manifest["backend"], int(manifest["dim"])
    params = manifest.get("backend_params", {})
    if backend == "flat":
        return _build_searcher(manifest, segments)
    searcher = FaissSearcher.load(backend, dim, params, backend_file)
    if searcher.ntotal != manifest["count"]:
        raise files.CorruptIndexError(f"the {backend} index holds {searcher.ntotal} vectors, the manifest says "
                                      f"{manifest['count']}", file=str(backend_file))
    return searcher


def _with_params(searcher, overrides: dict):
    if not isinstance(searcher, FaissSearcher):
        raise ValueError(f"the flat backend takes no search parameters, got {sorted(overrides)}")
    unknown = set(overrides) - set(searcher.params)
    if unknown:
        raise ValueError(f"unknown {searcher.kind} search parameter(s) {sorted(unknown)}")
    return FaissSearcher(searcher.kind, searcher.dim, {**searcher.params, **overrides}, searcher.index)
