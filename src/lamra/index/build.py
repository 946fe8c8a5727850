"""Encoding a collection into an index: in shards, checkpointed, resumable, multi-process.

The items are cut into fixed shards (``shard_size`` items, in input order). Each encoded
shard is written atomically to ``INDEX/.work/shards/NNNNN.npy`` (its ids beside it) and a
plan file records what is being built, so a killed run - at any moment - is resumed by the
same call: finished shards are kept, the rest are encoded, and rank 0 merges them into the
index, whose manifest is written last. Under ``torchrun`` (RANK / WORLD_SIZE set), rank r
encodes shards r, r + W, r + 2W ... and rank 0 merges: the same code path as one process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..embeddings import atomic_write_bytes
from ..errors import IncompatibleArtifactError, InputError
from ..items import Item, as_item
from ..progress import progress_bar
from . import files
from .backends import resolve_params
from .store import Index, check_fingerprint, check_new_ids

logger = logging.getLogger(__name__)

WORK = ".work"
PLAN = "plan.json"


@dataclass
class Entry:
    """An item to encode and the metadata stored for it."""

    item: Item
    meta: dict


def to_entries(items: Iterable[Any]) -> list[Entry]:
    """Items (Item, dict with "id", or anything ``as_item`` takes) -> entries; every one needs an id."""
    entries = []
    for position, value in enumerate(items):
        try:
            item = as_item(value)
        except InputError as exc:
            raise exc.located(item=f"#{position}") from None
        if item.id is None:
            raise InputError("item has no id: give every indexed item one (Item(id=...) or {'id': ...})",
                             item=f"#{position}", field="id")
        meta = dict(value) if isinstance(value, dict) else {"text": item.text, "images": item.images}
        meta["id"] = item.id
        meta.setdefault("text", item.text)
        entries.append(Entry(item, meta))
    return entries


class Distributed:
    """Rank and world size from torch.distributed's environment (torchrun); gloo barriers."""

    def __init__(self, rank: int = 0, world: int = 1, owned: bool = False):
        self.rank, self.world, self._owned = rank, world, owned

    @classmethod
    def from_env(cls) -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        owned = False
        if not dist.is_initialized():
            # Only barriers go through the group, so gloo works for CPU and GPU ranks alike;
            # the long timeout lets a slow rank finish its shards.
            dist.init_process_group("gloo", timeout=timedelta(hours=24))
            owned = True
        return cls(dist.get_rank(), dist.get_world_size(), owned)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self._owned:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._owned = False


def build_index(items, retriever, path, *, backend: str = "flat", dtype: str = "float16", shard_size: int = 1024,
                show_progress: bool = True, skip_bad: bool = False, batch_size: int | None = None,
                max_batch_tokens: int | None = None, **backend_params) -> Index:
    path = Path(path)
    entries = to_entries(items)
    if not entries:
        raise InputError("no items to index", file=str(path))
    check_new_ids([e.item.id for e in entries], None)
    resolve_params(backend, len(entries), dtype, backend_params)  # bad parameters fail before encoding
    fingerprint = retriever.fingerprint()
    plan = _plan("build", 0, fingerprint, entries, shard_size)
    dist = Distributed.from_env()
    try:
        if (path / files.MANIFEST).is_file():
            if dist.rank == 0:
                _already_built(path, plan)
            dist.barrier()
            return Index.open(path, verify=False)
        if dist.rank == 0 and path.is_dir() and any(p.name != WORK for p in path.iterdir()):
            raise InputError("folder exists and is not a lamra index (nor an interrupted build); "
                             "choose another --out", file=str(path))
        encode = _encoder(retriever, batch_size, max_batch_tokens)
        merged = _run_shards(entries, encode, path / WORK, plan, dist, show_progress=show_progress,
                             skip_bad=skip_bad, dtype=dtype, dim=int(getattr(retriever, "dim", None) or fingerprint["dim"]))
        if dist.rank == 0:
            vectors, kept, bad = merged
            if not kept:
                raise InputError("every item was bad; nothing to index", file=str(path))
            index = Index.from_vectors(vectors, [entries[i].item.id for i in kept], fingerprint,
                                       metadata=[entries[i].meta for i in kept], backend=backend, dtype=dtype,
                                       **backend_params)
            index.manifest["build"] = {"ids_sha256": plan["ids_sha256"], "shard_size": plan["shard_size"]}
            index.manifest["skipped"] = bad
            index.save(path)
            _discard_work(path)
        dist.barrier()
        return Index.open(path, verify=False)  # just written (and checked) by rank 0
    finally:
        dist.close()


def add_items(index: Index, items, retriever, *, show_progress: bool = True, shard_size: int = 1024,
              skip_bad: bool = False, skip_existing: bool = False, batch_size: int | None = None,
              max_batch_tokens: int | None = None) -> None:
    fingerprint = retriever.fingerprint()
    check_fingerprint(index.manifest, fingerprint, where=str(index.path or "(in memory)"))
    entries = to_entries(items)
    target = len(index.manifest["segments"])
    plan = _plan("add", target, fingerprint, entries, shard_size)
    if index.path is not None and _add_finished_earlier(index, plan):
        return
    if skip_existing:
        entries = [e for e in entries if e.item.id not in index]
    if not entries:
        logger.info("nothing to add")
        return
    check_new_ids([e.item.id for e in entries], index)
    encode = _encoder(retriever, batch_size, max_batch_tokens)
    if index.path is None:
        vectors, kept, bad = _encode_entries(entries, encode, skip_bad, index.dim)
        index.add_vectors(vectors, [entries[i].item.id for i in kept], [entries[i].meta for i in kept])
        return
    plan = _plan("add", target, fingerprint, entries, shard_size)  # (the items left after skip_existing)
    dist = Distributed.from_env()
    try:
        merged = _run_shards(entries, encode, index.path / WORK, plan, dist, show_progress=show_progress,
                             skip_bad=skip_bad, dtype=index.manifest["dtype"], dim=index.dim)
        if dist.rank == 0:
            vectors, kept, bad = merged
            if bad:
                index.manifest["skipped"] = list(index.manifest.get("skipped", [])) + bad
            index.add_vectors(vectors, [entries[i].item.id for i in kept], [entries[i].meta for i in kept])
            _discard_work(index.path)
        dist.barrier()
        if dist.rank != 0:
            index.__dict__.update(Index.open(index.path, verify=False).__dict__)
    finally:
        dist.close()


# -- shards -------------------------------------------------------------------------------------


def _plan(kind: str, target: int, fingerprint: dict, entries: list[Entry], shard_size: int) -> dict:
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    digest = hashlib.sha256("\n".join(e.item.id for e in entries).encode()).hexdigest()
    return {"kind": kind, "target_segment": target, "fingerprint": fingerprint, "count": len(entries),
            "ids_sha256": digest, "shard_size": shard_size}


def _already_built(path: Path, plan: dict) -> None:
    """A build re-run over a finished index of the same items and model is a no-op (a run killed
    after its commit, or simply run twice); anything else there is refused."""
    manifest = files.read_manifest(path)
    same = manifest.get("build", {}).get("ids_sha256") == plan["ids_sha256"] and \
        all(manifest.get(k) == v for k, v in plan["fingerprint"].items())
    if not same:
        raise InputError("an index already exists here: add items with `lamra index add` (Index.add), "
                         "or choose another --out", file=str(path))
    logger.info("%s already holds this build; nothing to do", path)
    _discard_work(path)


def _add_finished_earlier(index: Index, plan: dict) -> bool:
    """True if the interrupted add in the work folder was committed before the kill (clean up)."""
    old = _read_plan(index.path / WORK)
    if old is None or old.get("kind") != "add" or old.get("target_segment", 0) >= len(index.manifest["segments"]):
        return False
    if old.get("ids_sha256") != plan["ids_sha256"]:
        _discard_work(index.path)  # a committed add of other items: its leftovers are useless
        return False
    logger.info("this add was already committed; removing its work folder")
    _discard_work(index.path)
    return True


def _read_plan(work: Path) -> dict | None:
    try:
        return json.loads((work / PLAN).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _prepare_work(work: Path, plan: dict) -> dict:
    """Start a work folder for ``plan`` or check that the interrupted one there is the same job."""
    old = _read_plan(work)
    if old is not None:
        if old.get("fingerprint") != plan["fingerprint"]:
            raise IncompatibleArtifactError(
                f"{work} holds an interrupted {old.get('kind')} made with {old.get('fingerprint')}, not "
                f"{plan['fingerprint']}: run it again with the same model, or delete {work}")
        if (old.get("kind"), old.get("target_segment"), old.get("ids_sha256")) != \
                (plan["kind"], plan["target_segment"], plan["ids_sha256"]):
            raise InputError(f"an interrupted {old.get('kind')} of other items is in {work}: run it again with "
                             f"the same items to finish it, or delete that folder to start over", file=str(work))
        if old["shard_size"] != plan["shard_size"]:
            logger.info("resuming with the interrupted run's shard size %d", old["shard_size"])
        logger.info("resuming an interrupted %s from %s", plan["kind"], work)
        return old
    if work.exists():
        shutil.rmtree(work)
    (work / "shards").mkdir(parents=True)
    atomic_write_bytes(work / PLAN, json.dumps(plan).encode())
    return plan


def _run_shards(entries: list[Entry], encode, work: Path, plan: dict, dist: Distributed, *,
                show_progress: bool, skip_bad: bool, dtype: str, dim: int):
    """Encode this rank's missing shards; on rank 0 return (vectors, kept positions, bad)."""
    if dist.rank == 0:
        _prepare_work(work, plan)
    dist.barrier()
    plan = _read_plan(work)
    shard_size = plan["shard_size"]
    n_shards = (len(entries) + shard_size - 1) // shard_size
    mine = range(dist.rank, n_shards, dist.world)
    todo = [s for s in mine if not (work / "shards" / f"{s:05d}.npy").is_file()]
    my_items = sum(len(entries[s * shard_size:(s + 1) * shard_size]) for s in mine)
    with progress_bar(my_items, "indexing", enabled=show_progress and dist.rank == 0) as bar:
        bar.advance(sum(len(entries[s * shard_size:(s + 1) * shard_size]) for s in mine if s not in todo))
        for shard in todo:
            chunk = entries[shard * shard_size:(shard + 1) * shard_size]
            vectors, kept, bad = _encode_entries(chunk, encode, skip_bad, dim)
            stem = work / "shards" / f"{shard:05d}"
            record = {"ids": [chunk[i].item.id for i in kept], "bad": bad}
            atomic_write_bytes(stem.with_suffix(".json"), json.dumps(record).encode())
            atomic_write_bytes(stem.with_suffix(".npy"), files.npy_bytes(vectors))  # the shard is done
            logger.info("rank %d: shard %d/%d written (%d items)", dist.rank, shard + 1, n_shards, len(kept))
            bar.advance(len(chunk))
    dist.barrier()
    if dist.rank != 0:
        return None
    return _merge_shards(entries, work, n_shards, shard_size, dtype)


def _merge_shards(entries, work: Path, n_shards: int, shard_size: int, dtype: str):
    kept, bad, blocks = [], [], []
    for shard in range(n_shards):
        stem = work / "shards" / f"{shard:05d}"
        record = json.loads(stem.with_suffix(".json").read_text())
        vectors = files.load_npy(stem.with_suffix(".npy"), mmap=False)
        start = shard * shard_size
        expected = {e.item.id: start + n for n, e in enumerate(entries[start:start + shard_size])}
        if len(record["ids"]) + len(record["bad"]) != len(expected) or len(vectors) != len(record["ids"]) \
                or any(i not in expected for i in record["ids"]):
            raise files.CorruptIndexError(f"shard {shard} does not match the items being indexed; delete {work} "
                                          "and build again", file=str(stem.with_suffix(".npy")))
        kept.extend(expected[i] for i in record["ids"])
        bad.extend(record["bad"])
        blocks.append(vectors.astype(dtype, copy=False))
    return np.concatenate(blocks), kept, bad


def _encoder(retriever, batch_size, max_batch_tokens):
    options: dict[str, Any] = {"show_progress": False}
    if batch_size is not None:
        options["batch_size"] = batch_size
    if max_batch_tokens is not None:
        options["max_batch_tokens"] = max_batch_tokens
    return lambda items: retriever.encode(items, **options)


def _encode_entries(entries: list[Entry], encode, skip_bad: bool, dim: int):
    """Encode entries; with ``skip_bad`` leave out (and report) items that fail to load."""
    pending = list(range(len(entries)))
    bad: list[dict] = []
    while pending:
        try:
            vectors = np.asarray(encode([entries[i].item for i in pending]), dtype=np.float32)
            return vectors, pending, bad
        except InputError as exc:
            culprit = next((n for n, i in enumerate(pending) if entries[i].item.id == exc.item), None)
            if not skip_bad or culprit is None:
                if culprit is not None:
                    raise InputError(f"{exc.reason} (pass --skip-bad / skip_bad=True to index the other items)",
                                     file=exc.file, line=exc.line, item=exc.item, field=exc.field) from None
                raise
            logger.warning("skipping item %r: %s", exc.item, exc)
            bad.append({"id": exc.item, "error": str(exc)})
            pending.pop(culprit)
    return np.empty((0, dim), dtype=np.float32), [], bad


def _discard_work(path: Path) -> None:
    work = path / WORK
    if not work.exists():
        return
    trash = path / f".trash-{os.getpid()}"
    os.replace(work, trash)  # atomic: a later run never sees half a work folder
    shutil.rmtree(trash, ignore_errors=True)
    for stale in path.glob(".trash-*"):
        shutil.rmtree(stale, ignore_errors=True)
