"""Building and extending a Milvus index: encoded shard by shard, each upserted by id, resumable.

The same shards and plan as the FAISS build (:mod:`~lamra.index.build`): a killed build, run
again, finds the plan in ``INDEX/.work`` and the collection it names, keeps the shards marked
done and encodes the rest. A shard is marked done only after Milvus took it, and rows are
upserted by id, so a shard sent twice (killed between the upsert and its mark) still leaves one
row per item. Before the manifest is written the collection is checked against the items: a
missing row's shard is encoded again, a stray row deleted.

Under ``torchrun`` with a server URI every rank upserts its own shards straight into the
collection; an embedded database opens in one process only, so there the ranks write their
shards to the work folder and rank 0 upserts them.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np

from .. import distributed
from ..embeddings import atomic_write_bytes
from ..errors import InputError
from ..progress import progress_bar
from . import files
from . import milvus_db as mv
from .build import (
    SKIP_HINT,
    WORK,
    _build_record,
    _discard_work,
    _encode_entries,
    _encoder,
    _plan,
    _prepare_work,
    _read_plan,
    _run_shards,
    entries_to_add,
    to_entries,
)
from .checks import FINGERPRINT_KEYS, check_new_ids
from .records import new_manifest, normalise_metadata, now

logger = logging.getLogger(__name__)

DONE = ".upserted.json"  # a shard's mark: its ids (and bad items) are in the collection


def build_milvus(items, retriever, path, *, dtype: str = "float32", shard_size: int = 1024, show_progress: bool = True,
                 skip_bad: bool = False, batch_size: int | None = None, max_batch_tokens: int | None = None,
                 instruction: str | Sequence[str | None] | None = None, skip_hint: str | None = SKIP_HINT,
                 milvus_uri: str | None = None, milvus_token: str | None = None, milvus_collection: str | None = None,
                 source: str | None = None, tokenize_ahead: bool = True, **params):
    """``Index.build(..., backend="milvus")``: see the module docstring. Returns the URI to open
    the index with (None: the one its manifest records)."""
    path = Path(path)
    entries = to_entries(items, instruction)
    if not entries:
        raise InputError("no items to index", file=str(path))
    check_new_ids([e.item.id for e in entries], None)
    recorded = milvus_uri or mv.EMBEDDED_DB
    params = mv.resolve_params(len(entries), dtype, params, embedded=mv.is_embedded(recorded))
    fingerprint = retriever.fingerprint()
    plan = _plan("build", 0, fingerprint, entries, shard_size)
    uid = uuid.uuid4().hex
    plan["milvus"] = {"uri": recorded, "collection": milvus_collection or mv.collection_name(path, uid),
                      "index_uid": uid, "params": params, "dtype": dtype, "source": source}
    with distributed.process_group() as rank:
        if (path / files.MANIFEST).is_file():
            if rank == 0:
                _same_build(path, plan)
            distributed.barrier()
            return _connect_uri(path, milvus_uri)
        if rank == 0 and path.is_dir() and not (path / WORK).is_dir() and any(path.iterdir()):
            raise InputError("folder exists and is not a lamra index (nor an interrupted build); "
                             "choose another --out", file=str(path))
        if rank == 0:
            path.mkdir(parents=True, exist_ok=True)
            plan = _prepare_work(path / WORK, plan)
            _same_target(plan, milvus_uri, milvus_collection, path)
        distributed.barrier()
        plan = _read_plan(path / WORK)
        target = plan["milvus"]
        uri = _connect_uri(path, milvus_uri) or mv.client_uri(path, target["uri"])
        encode = _encoder(retriever, batch_size, max_batch_tokens, tokenize_ahead=tokenize_ahead)
        dim = int(getattr(retriever, "dim", None) or fingerprint["dim"])
        work = path / WORK
        options = {"skip_bad": skip_bad, "skip_hint": skip_hint, "dim": dim}
        shared_db = mv.is_embedded(uri) and distributed.world_size() > 1
        if rank == 0 or not shared_db:
            client = mv.connect(uri, milvus_token)
        if rank == 0:
            description = mv.describe({**fingerprint, "dtype": dtype}, target["index_uid"], path)
            mv.create_or_check(client, target["collection"], description, dim=dim, dtype=dtype,
                               uid=target["index_uid"], uri=uri)
        distributed.barrier()
        if shared_db:  # one process holds an embedded database: the ranks hand their shards to rank 0
            merged = _run_shards(entries, encode, work, plan, show_progress=show_progress, dtype="float32", **options)
            if rank == 0:
                _upsert_merged(client, target, entries, merged, work, plan["shard_size"])
        else:
            _upsert_shards(client, target, entries, encode, work, plan, segment=0, show_progress=show_progress,
                           **options)
        distributed.barrier()
        if rank == 0:
            kept, bad = _reconcile(client, target, entries, encode, work, plan, segment=0, **options)
            if not kept:
                raise InputError("every item was bad; nothing to index", file=str(path))
            mv.finish_collection(client, target["collection"], target["params"])
            manifest = new_manifest(fingerprint, dtype=dtype, backend="milvus", params=target["params"])
            manifest["milvus"] = {k: target[k] for k in ("uri", "collection", "index_uid")}
            manifest["build"] = _build_record(plan, entries)
            manifest["skipped"] = bad
            _commit_segment(path, manifest, [entries[i] for i in kept])
            _discard_work(path)
        distributed.barrier()
        return uri


def from_vectors(vectors: np.ndarray, ids: list[str], fingerprint: dict, *, path, metadata: list[dict] | None = None,
                 dtype: str = "float32", milvus_uri: str | None = None, milvus_token: str | None = None,
                 milvus_collection: str | None = None, source: str | None = None, **params):
    """A Milvus index over vectors you already have, in the folder ``path`` (committed at once);
    returns the URI to open it with."""
    if path is None:
        raise ValueError("a milvus index lives in a folder: give path=")
    path = Path(path)
    if (path / files.MANIFEST).is_file() or (path.is_dir() and any(path.iterdir())):
        raise InputError("folder exists: choose another path", file=str(path))
    vectors = np.asarray(vectors, dtype=np.float32)
    ids = [str(i) for i in ids]
    check_new_ids(ids, None)
    dim = int(fingerprint.get("dim") or vectors.shape[1])
    if vectors.ndim != 2 or vectors.shape[1] != dim or len(vectors) != len(ids) or not len(ids):
        raise ValueError(f"vectors of shape {vectors.shape} for {len(ids)} ids of dimension {dim}")
    recorded = milvus_uri or mv.EMBEDDED_DB
    params = mv.resolve_params(len(ids), dtype, params, embedded=mv.is_embedded(recorded))
    uid = uuid.uuid4().hex
    target = {"uri": recorded, "collection": milvus_collection or mv.collection_name(path, uid), "index_uid": uid,
              "params": params, "source": source}
    path.mkdir(parents=True, exist_ok=True)
    uri = mv.client_uri(path, recorded)
    client = mv.connect(uri, milvus_token)
    fingerprint = {**fingerprint, "dim": dim}
    mv.create_or_check(client, target["collection"], mv.describe({**fingerprint, "dtype": dtype}, uid, path), dim=dim,
                       dtype=dtype, uid=uid, uri=uri)
    metadata = metadata if metadata is not None else [{"id": i} for i in ids]
    mv.upsert(client, target["collection"], mv.rows(ids, vectors, metadata, segment=0, dtype=dtype, source=source))
    mv.finish_collection(client, target["collection"], params)
    manifest = new_manifest(fingerprint, dtype=dtype, backend="milvus", params=params)
    manifest["milvus"] = {k: target[k] for k in ("uri", "collection", "index_uid")}
    _commit_segment(path, manifest, [_Kept(i, m) for i, m in zip(ids, metadata)])
    return uri


def add_items(index, items, retriever, *, show_progress: bool = True, shard_size: int = 1024, skip_bad: bool = False,
              skip_existing: bool = False, batch_size: int | None = None, max_batch_tokens: int | None = None,
              instruction: str | Sequence[str | None] | None = None, skip_hint: str | None = SKIP_HINT,
              source: str | None = None, tokenize_ahead: bool = True) -> None:
    """``MilvusIndex.add``: a new segment of upserted shards, resumable like the build."""
    todo = entries_to_add(index, items, retriever, instruction=instruction, shard_size=shard_size,
                          skip_existing=skip_existing)
    if todo is None:
        return
    entries, plan = todo
    target_segment = len(index.manifest["segments"])
    target = {**index.manifest["milvus"], "params": index.manifest["backend_params"], "dtype": index.manifest["dtype"],
              "source": source}
    plan["milvus"] = target
    encode = _encoder(retriever, batch_size, max_batch_tokens, tokenize_ahead=tokenize_ahead)
    work = index.path / WORK
    options = {"skip_bad": skip_bad, "skip_hint": skip_hint, "dim": index.dim}
    shared_db = mv.is_embedded(index.uri) and distributed.world_size() > 1
    with distributed.process_group() as rank:
        if rank == 0:
            plan = _prepare_work(work, plan)
        distributed.barrier()
        plan = _read_plan(work)
        if shared_db:
            merged = _run_shards(entries, encode, work, plan, show_progress=show_progress, dtype="float32", **options)
            if rank == 0:
                _upsert_merged(index.client, plan["milvus"], entries, merged, work, plan["shard_size"],
                               segment=target_segment)
        else:
            _upsert_shards(index.client, plan["milvus"], entries, encode, work, plan, segment=target_segment,
                           show_progress=show_progress, **options)
        distributed.barrier()
        if rank == 0:
            kept, bad = _reconcile(index.client, plan["milvus"], entries, encode, work, plan, segment=target_segment,
                                   **options)
            mv.finish_collection(index.client, index.collection, index.manifest["backend_params"])
            manifest = dict(index.manifest)
            if bad:
                manifest["skipped"] = list(manifest.get("skipped", [])) + bad
            _commit_segment(index.path, manifest, [entries[i] for i in kept])
            _discard_work(index.path)
        distributed.barrier()
        index._reopen()


def add_vectors(index, vectors: np.ndarray, ids: list[str], metadata: list[dict] | None = None) -> None:
    ids = [str(i) for i in ids]
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != index.dim or len(vectors) != len(ids):
        raise ValueError(f"vectors of shape {vectors.shape} for {len(ids)} ids of dimension {index.dim}")
    check_new_ids(ids, index)
    metadata = metadata if metadata is not None else [{"id": i} for i in ids]
    segment = len(index.manifest["segments"])
    mv.upsert(index.client, index.collection, mv.rows(ids, vectors, metadata, segment=segment,
                                                      dtype=index.manifest["dtype"], source=None))
    mv.finish_collection(index.client, index.collection, index.manifest["backend_params"])
    _commit_segment(index.path, dict(index.manifest), [_Kept(i, m) for i, m in zip(ids, metadata)])
    index._reopen()


# -- shards ----------------------------------------------------------------------------------------


class _Kept:
    """(id, metadata) of an item given as a vector: what a segment keeps of an Entry."""

    def __init__(self, item_id: str, meta: dict):
        self.meta = {**meta, "id": item_id}
        self.item = SimpleNamespace(id=item_id)


def _marker(work: Path, shard: int) -> Path:
    return work / "shards" / f"{shard:05d}{DONE}"


def _upsert_shards(client, target: dict, entries, encode, work: Path, plan: dict, *, segment: int, show_progress: bool,
                   skip_bad: bool, skip_hint, dim: int, only: Sequence[int] | None = None) -> None:
    """Encode and upsert this rank's shards not marked done (``only``: these shards, on this rank)."""
    rank, world = distributed.rank(), distributed.world_size()
    shard_size = plan["shard_size"]
    n_shards = (len(entries) + shard_size - 1) // shard_size
    mine = list(only) if only is not None else list(range(rank, n_shards, world))
    todo = [s for s in mine if not _marker(work, s).is_file()]
    sizes = {s: len(entries[s * shard_size:(s + 1) * shard_size]) for s in mine}
    with progress_bar(sum(sizes.values()), "indexing", enabled=show_progress and rank == 0) as bar:
        bar.advance(sum(sizes[s] for s in mine if s not in todo))
        for shard in todo:
            chunk = entries[shard * shard_size:(shard + 1) * shard_size]
            vectors, kept, bad = _encode_entries(chunk, encode, skip_bad, dim, skip_hint)
            ids = [chunk[i].item.id for i in kept]
            mv.upsert(client, target["collection"], mv.rows(ids, vectors, [chunk[i].meta for i in kept],
                                                            segment=segment, dtype=target["dtype"],
                                                            source=target.get("source")))
            atomic_write_bytes(_marker(work, shard), json.dumps({"ids": ids, "bad": bad}).encode())
            logger.info("rank %d: shard %d/%d upserted (%d items)", rank, shard + 1, n_shards, len(kept))
            bar.advance(len(chunk))


def _upsert_merged(client, target: dict, entries, merged, work: Path, shard_size: int, *, segment: int = 0) -> None:
    """Rank 0 of a multi-process build into an embedded database: upsert the shards the ranks wrote."""
    vectors, kept, _ = merged
    ids = [entries[i].item.id for i in kept]
    mv.upsert(client, target["collection"], mv.rows(ids, vectors, [entries[i].meta for i in kept], segment=segment,
                                                    dtype=target["dtype"], source=target.get("source")))
    for shard in range((len(entries) + shard_size - 1) // shard_size):
        record = json.loads((work / "shards" / f"{shard:05d}.json").read_text())
        atomic_write_bytes(_marker(work, shard), json.dumps(record).encode())


def _reconcile(client, target: dict, entries, encode, work: Path, plan: dict, *, segment: int, skip_bad: bool,
               skip_hint, dim: int) -> tuple[list[int], list[dict]]:
    """The kept entries (positions) and bad items of every shard, after checking that the
    collection holds exactly one row per kept item of this segment (redoing a shard whose rows
    are missing, deleting rows that belong to no item)."""
    name = target["collection"]
    shard_size = plan["shard_size"]
    n_shards = (len(entries) + shard_size - 1) // shard_size
    for attempt in range(2):
        records = [json.loads(_marker(work, s).read_text()) for s in range(n_shards)]
        expected = [i for r in records for i in r["ids"]]
        client.flush(name)
        stored = int(client.query(name, filter=f"segment == {segment}", output_fields=["count(*)"])[0]["count(*)"])
        if stored == len(expected):
            break
        present = set(mv.stored_ids(client, name, f"segment == {segment}"))
        stray = sorted(present - set(expected))
        if stray:
            logger.warning("deleting %d rows of %s that belong to no item", len(stray), name)
            client.delete(name, ids=stray)
        missing = set(expected) - present
        redo = sorted({s for s, r in enumerate(records) if missing & set(r["ids"])})
        if not redo:
            continue
        if attempt:
            raise files.CorruptIndexError(f"Milvus collection {name!r} lost the rows of shard(s) {redo} twice",
                                          file=str(work))
        logger.warning("the rows of %d shard(s) are missing from %s: encoding them again", len(redo), name)
        for shard in redo:
            _marker(work, shard).unlink()
        _upsert_shards(client, target, entries, encode, work, plan, segment=segment, show_progress=False,
                       skip_bad=skip_bad, skip_hint=skip_hint, dim=dim, only=redo)
    position = {e.item.id: n for n, e in enumerate(entries)}
    return [position[i] for r in records for i in r["ids"]], [b for r in records for b in r["bad"]]


def _commit_segment(path: Path, manifest: dict, kept) -> None:
    """Write a segment's ids and items, then the manifest (the commit point)."""
    number = len(manifest.get("segments", []))
    (path / "segments").mkdir(parents=True, exist_ok=True)
    ids = [e.item.id for e in kept]
    records = [{"id": e.item.id, **{k: v for k, v in normalise_metadata(e.meta).items() if k != "id"}} for e in kept]
    stem = f"segments/{number:05d}"
    entry = {"count": len(ids),
             "ids": files.write_file(path, f"{stem}.ids.json", json.dumps(ids, ensure_ascii=False).encode()),
             "items": files.write_file(path, f"{stem}.items.jsonl", files.jsonl_bytes(records))}
    segments = list(manifest.get("segments", [])) + [entry]
    manifest.update(segments=segments, count=sum(s["count"] for s in segments), updated=now())
    files.write_manifest(path, manifest)


def _same_build(path: Path, plan: dict) -> None:
    """A finished index of the same items and model: nothing to do; anything else is refused."""
    manifest = files.read_manifest(path)
    build = manifest.get("build", {})
    same = manifest.get("backend") == "milvus" and build.get("ids_sha256") == plan["ids_sha256"] and \
        build.get("instructions_sha256") == plan.get("instructions_sha256") and \
        all(manifest.get(k) == v for k, v in plan["fingerprint"].items() if k in FINGERPRINT_KEYS)
    if not same:
        raise InputError("an index already exists here: add items with `lamra index add` (Index.add), "
                         "or choose another --out", file=str(path))
    logger.info("%s already holds this build; nothing to do", path)
    _discard_work(path)


def _same_target(plan: dict, milvus_uri: str | None, milvus_collection: str | None, path: Path) -> None:
    """A resumed build goes on in the database and collection it started in."""
    target = plan["milvus"]
    if milvus_collection and milvus_collection != target["collection"]:
        raise InputError(f"the interrupted build in {path / WORK} writes to Milvus collection "
                         f"{target['collection']!r}, not {milvus_collection!r}: run it with the same options, "
                         "or delete that folder", file=str(path))
    if milvus_uri and mv.is_embedded(milvus_uri) != mv.is_embedded(target["uri"]):
        raise InputError(f"the interrupted build in {path / WORK} writes to {target['uri']}, not {milvus_uri}: "
                         "run it with the same --milvus-uri, or delete that folder", file=str(path))


def _connect_uri(path: Path, milvus_uri: str | None) -> str | None:
    return mv.client_uri(path, milvus_uri) if milvus_uri else None
