"""Encoding a collection into an index: in shards, checkpointed, resumable, multi-process.

The items are cut into fixed shards (``shard_size`` items, in input order). Each encoded
shard is written atomically to ``INDEX/.work/shards/NNNNN.npy`` (its ids beside it) and a
plan file records what is being built, so a killed run - at any moment - is resumed by the
same call: finished shards are kept, the rest are encoded, and rank 0 merges them into the
index, whose manifest is written last. Under ``torchrun`` (RANK / WORLD_SIZE set), rank r
encodes shards r, r + W, r + 2W ... and rank 0 merges: the same code path as one process
(rank, world size and barriers come from :mod:`lamra.distributed`).

Instructions are data: ``instruction`` is one string for every item, or one per item (``None``
for an item that takes none, like a candidate); each shard hands its items' own instructions to
``retriever.encode(items, instruction=[...])``. They change the vectors, so the plan (and the
finished index's manifest) records their hash and a resumed build must use the same ones.

The per-shard work is hidden behind the encoding: with lamra's retriever (``prepare`` /
``encode_prepared``) the next shard is tokenized in a background thread while the current one
encodes, and each shard's files are written in another while the next one encodes (one write
pending at most; a shard still counts as done only once its ``.npy``, written last, is there).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .. import distributed
from ..embeddings import atomic_write_bytes, npy_bytes
from ..errors import IncompatibleArtifactError, InputError
from ..items import Item, as_item
from ..progress import progress_bar
from . import files
from .backends import resolve_params
from .checks import FINGERPRINT_KEYS, check_fingerprint, check_new_ids

logger = logging.getLogger(__name__)

WORK = ".work"
PLAN = "plan.json"
SKIP_HINT = "pass skip_bad=True to index the other items"
CLI_SKIP_HINT = "pass --skip-bad to index the other items"  # the same advice in the CLI's words


@dataclass
class Entry:
    """An item to encode, its instruction (None: none) and the metadata stored for it."""

    item: Item
    meta: dict
    instruction: str | None = None


def to_entries(items: Iterable[Any], instruction: str | Sequence[str | None] | None = None) -> list[Entry]:
    """Items (Item, dict with "id", or anything ``as_item`` takes) -> entries; every one needs an id.

    ``instruction``: one for every item, or a sequence with one per item (None where none).
    """
    items = list(items)
    instructions = per_item_instructions(instruction, len(items))
    entries = []
    for position, (value, instr) in enumerate(zip(items, instructions)):
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
        entries.append(Entry(item, meta, instr))
    return entries


def per_item_instructions(instruction, count: int) -> list:
    """One instruction for every item, or a sequence with one per item (its length checked)."""
    if instruction is None or isinstance(instruction, str):
        return [instruction] * count
    instruction = list(instruction)
    if len(instruction) != count:
        raise InputError(f"got {len(instruction)} instructions for {count} items: give one for all, or one per item",
                         field="instruction")
    for position, value in enumerate(instruction):
        if value is not None and not isinstance(value, str):
            raise InputError(f"an instruction must be a string or None, got {type(value).__name__}",
                             item=f"#{position}", field="instruction")
    return instruction


def build_index(cls: type, items, retriever, path, *, backend: str = "flat", dtype: str = "float16",
                shard_size: int = 1024, show_progress: bool = True, skip_bad: bool = False,
                batch_size: int | None = None, max_batch_tokens: int | None = None,
                instruction: str | Sequence[str | None] | None = None,
                skip_hint: str | None = SKIP_HINT, num_workers: int | None = None, tokenize_ahead: bool = True,
                **backend_params):
    """See :meth:`Index.build`, which passes itself as ``cls`` (so this module needs no import of
    the store). ``skip_hint``: what a bad item's error suggests (None: nothing)."""
    path = Path(path)
    entries = to_entries(items, instruction)
    if not entries:
        raise InputError("no items to index", file=str(path))
    check_new_ids([e.item.id for e in entries], None)
    resolve_params(backend, len(entries), dtype, backend_params)  # bad parameters fail before encoding
    fingerprint = retriever.fingerprint()
    plan = _plan("build", 0, fingerprint, entries, shard_size)
    with distributed.process_group() as rank:
        if (path / files.MANIFEST).is_file():
            if rank == 0:
                _already_built(path, plan)
            distributed.barrier()
            return cls.open(path, verify=False)
        # A work folder means an interrupted build, even when it was killed while saving the index
        # (some segment files written, no manifest yet): the save is simply done again.
        if rank == 0 and path.is_dir() and not (path / WORK).is_dir() and any(p.name != WORK for p in path.iterdir()):
            raise InputError("folder exists and is not a lamra index (nor an interrupted build); "
                             "choose another --out", file=str(path))
        encode = _encoder(retriever, batch_size, max_batch_tokens, num_workers, tokenize_ahead)
        merged = _run_shards(entries, encode, path / WORK, plan, show_progress=show_progress, skip_bad=skip_bad,
                             skip_hint=skip_hint, dtype=dtype,
                             dim=int(getattr(retriever, "dim", None) or fingerprint["dim"]))
        if rank == 0:
            vectors, kept, bad = merged
            if not kept:
                raise InputError("every item was bad; nothing to index", file=str(path))
            index = cls.from_vectors(vectors, [entries[i].item.id for i in kept], fingerprint,
                                     metadata=[entries[i].meta for i in kept], backend=backend, dtype=dtype,
                                     **backend_params)
            index.manifest["build"] = _build_record(plan, entries)
            index.manifest["skipped"] = bad
            index.save(path)
            _discard_work(path)
        distributed.barrier()
        return cls.open(path, verify=False)  # just written (and checked) by rank 0


def add_items(index, items, retriever, *, show_progress: bool = True, shard_size: int = 1024,
              skip_bad: bool = False, skip_existing: bool = False, batch_size: int | None = None,
              max_batch_tokens: int | None = None, instruction: str | Sequence[str | None] | None = None,
              skip_hint: str | None = SKIP_HINT, num_workers: int | None = None, tokenize_ahead: bool = True) -> None:
    """See :meth:`Index.add`."""
    todo = entries_to_add(index, items, retriever, instruction=instruction, shard_size=shard_size,
                          skip_existing=skip_existing)
    if todo is None:
        return
    entries, plan = todo
    encode = _encoder(retriever, batch_size, max_batch_tokens, num_workers, tokenize_ahead)
    if index.path is None:
        vectors, kept, bad = _encode_entries(entries, encode, skip_bad, index.dim, skip_hint)
        index.add_vectors(vectors, [entries[i].item.id for i in kept], [entries[i].meta for i in kept])
        return
    with distributed.process_group() as rank:
        merged = _run_shards(entries, encode, index.path / WORK, plan, show_progress=show_progress,
                             skip_bad=skip_bad, skip_hint=skip_hint, dtype=index.manifest["dtype"], dim=index.dim)
        if rank == 0:
            vectors, kept, bad = merged
            if bad:
                index.manifest["skipped"] = list(index.manifest.get("skipped", [])) + bad
            index.add_vectors(vectors, [entries[i].item.id for i in kept], [entries[i].meta for i in kept])
            _discard_work(index.path)
        distributed.barrier()
        if rank != 0:
            index.__dict__.update(type(index).open(index.path, verify=False).__dict__)


def entries_to_add(index, items, retriever, *, instruction, shard_size: int, skip_existing: bool):
    """What an add (to a FAISS or a Milvus index) encodes: its entries, checked (the retriever's
    fingerprint, ids not in the index yet), and their plan; None when the same add finished
    earlier or nothing is left to add."""
    fingerprint = retriever.fingerprint()
    check_fingerprint(index.manifest, fingerprint, where=str(index.path or "(in memory)"))
    entries = to_entries(items, instruction)
    target = len(index.manifest["segments"])
    if index.path is not None and _add_finished_earlier(index, _plan("add", target, fingerprint, entries,
                                                                     shard_size)):
        return None
    if skip_existing:
        entries = [e for e in entries if e.item.id not in index]
    if not entries:
        logger.info("nothing to add")
        return None
    check_new_ids([e.item.id for e in entries], index)
    return entries, _plan("add", target, fingerprint, entries, shard_size)  # (the items left after skip_existing)


# -- shards -------------------------------------------------------------------------------------


def _plan(kind: str, target: int, fingerprint: dict, entries: list[Entry], shard_size: int) -> dict:
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    digest = hashlib.sha256("\n".join(e.item.id for e in entries).encode()).hexdigest()
    plan = {"kind": kind, "target_segment": target, "fingerprint": fingerprint, "count": len(entries),
            "ids_sha256": digest, "shard_size": shard_size}
    instructions = instructions_sha256(entries)
    if instructions is not None:  # (absent without instructions: plans of older builds still match)
        plan["instructions_sha256"] = instructions
    return plan


def instructions_sha256(entries: list[Entry]) -> str | None:
    """A hash of the entries' instructions, in order; None when no entry has one."""
    if all(e.instruction is None for e in entries):
        return None
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(b"\x00" if entry.instruction is None else entry.instruction.encode("utf-8") + b"\x01")
    return digest.hexdigest()


def _build_record(plan: dict, entries: list[Entry]) -> dict:
    """What the manifest keeps about a build: enough to recognise the same build run again."""
    record = {"ids_sha256": plan["ids_sha256"], "shard_size": plan["shard_size"]}
    if "instructions_sha256" in plan:
        record["instructions_sha256"] = plan["instructions_sha256"]
        distinct = {e.instruction for e in entries}
        if len(distinct) == 1:
            record["instruction"] = entries[0].instruction
    return record


def _already_built(path: Path, plan: dict) -> None:
    """A build re-run over a finished index of the same items and model is a no-op (a run killed
    after its commit, or simply run twice); anything else there is refused."""
    manifest = files.read_manifest(path)
    build = manifest.get("build", {})
    same = build.get("ids_sha256") == plan["ids_sha256"] and \
        build.get("instructions_sha256") == plan.get("instructions_sha256") and \
        all(manifest.get(k) == v for k, v in plan["fingerprint"].items() if k in FINGERPRINT_KEYS)
    if not same:
        raise InputError("an index already exists here: add items with `lamra index add` (Index.add), "
                         "or choose another --out", file=str(path))
    logger.info("%s already holds this build; nothing to do", path)
    _discard_work(path)


def _add_finished_earlier(index, plan: dict) -> bool:
    """True if the interrupted add in the work folder was committed before the kill (clean up)."""
    old = _read_plan(index.path / WORK)
    if old is None or old.get("kind") != "add" or old.get("target_segment", 0) >= len(index.manifest["segments"]):
        return False
    if (old.get("ids_sha256"), old.get("instructions_sha256")) != (plan["ids_sha256"], plan.get("instructions_sha256")):
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
        if old.get("instructions_sha256") != plan.get("instructions_sha256"):
            raise InputError(f"an interrupted {old.get('kind')} of the same items with other instructions is in "
                             f"{work}: run it again with the same instructions to finish it, or delete that "
                             "folder to start over", file=str(work))
        if old["shard_size"] != plan["shard_size"]:
            logger.info("resuming with the interrupted run's shard size %d", old["shard_size"])
        logger.info("resuming an interrupted %s from %s", plan["kind"], work)
        return old
    if work.exists():
        shutil.rmtree(work)
    (work / "shards").mkdir(parents=True)
    atomic_write_bytes(work / PLAN, json.dumps(plan).encode())
    return plan


def _run_shards(entries: list[Entry], encode, work: Path, plan: dict, *, show_progress: bool, skip_bad: bool,
                skip_hint: str | None, dtype: str, dim: int):
    """Encode this rank's missing shards; on rank 0 return (vectors, kept positions, bad)."""
    rank, world = distributed.rank(), distributed.world_size()
    if rank == 0:
        _prepare_work(work, plan)
    distributed.barrier()
    plan = _read_plan(work)
    shard_size = plan["shard_size"]
    n_shards = (len(entries) + shard_size - 1) // shard_size
    mine = range(rank, n_shards, world)
    todo = [s for s in mine if not (work / "shards" / f"{s:05d}.npy").is_file()]
    my_items = sum(len(entries[s * shard_size:(s + 1) * shard_size]) for s in mine)
    chunks = [entries[s * shard_size:(s + 1) * shard_size] for s in todo]
    # Two background threads: one tokenizes the next shard, one writes the last shard's files. On
    # any error (or a kill signal) leaving the block waits for both, so a shard whose vectors were
    # made is still written whole, as when the write came before the next shard's encoding.
    with progress_bar(my_items, "indexing", enabled=show_progress and rank == 0) as bar, \
            ThreadPoolExecutor(1, thread_name_prefix="lamra-tokenize") as tokenizer, \
            ThreadPoolExecutor(1, thread_name_prefix="lamra-write") as writer:
        bar.advance(sum(len(entries[s * shard_size:(s + 1) * shard_size]) for s in mine if s not in todo))
        prompts = _tokenize_ahead(tokenizer, encode, chunks)
        written: Future | None = None
        for shard, chunk in zip(todo, chunks):
            vectors, kept, bad = _encode_entries(chunk, encode, skip_bad, dim, skip_hint, next(prompts))
            if written is not None:
                written.result()  # one write pending at most; its error (a full disk) stops the build here
            record = {"ids": [chunk[i].item.id for i in kept], "bad": bad}
            written = writer.submit(_write_shard, work, shard, record, vectors, f"rank {rank}: shard {shard + 1}/"
                                    f"{n_shards} written ({len(kept)} items)")
            bar.advance(len(chunk))
        if written is not None:
            written.result()
    distributed.barrier()
    if rank != 0:
        return None
    return _merge_shards(entries, work, n_shards, shard_size, dtype)


def _write_shard(work: Path, shard: int, record: dict, vectors: np.ndarray, message: str) -> None:
    stem = work / "shards" / f"{shard:05d}"
    atomic_write_bytes(stem.with_suffix(".json"), json.dumps(record).encode())
    atomic_write_bytes(stem.with_suffix(".npy"), npy_bytes(vectors))  # the shard is done
    logger.info(message)


def _tokenize_ahead(pool: ThreadPoolExecutor, encode, chunks: list[list[Entry]]):
    """Each chunk's prompts (``encode.prepare``), the next one tokenized in ``pool`` while the
    caller encodes this one; None for each chunk when the encoder cannot tokenize apart."""
    prepare = getattr(encode, "prepare", None)
    if prepare is None:
        yield from (None for _ in chunks)
        return
    pending = pool.submit(prepare, chunks[0]) if chunks else None
    for number in range(len(chunks)):
        prompts = pending.result()
        if number + 1 < len(chunks):
            pending = pool.submit(prepare, chunks[number + 1])
        yield prompts


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


def _encoder(retriever, batch_size, max_batch_tokens, num_workers=None, tokenize_ahead: bool = True):
    """``encode(entries)``: the entries' items, with their instructions when any has one (and,
    for a retriever that tokenizes apart, ``encode.prepare``: see :class:`_PreparingEncoder`;
    ``tokenize_ahead`` false: not, each shard tokenized in ``encode`` itself)."""
    options: dict[str, Any] = {"show_progress": False}
    if batch_size is not None:
        options["batch_size"] = batch_size
    if max_batch_tokens is not None:
        options["max_batch_tokens"] = max_batch_tokens
    if num_workers:
        options["num_workers"] = num_workers
    if tokenize_ahead and callable(getattr(retriever, "prepare", None)) \
            and callable(getattr(retriever, "encode_prepared", None)):
        return _PreparingEncoder(retriever, options)

    def encode(entries: list[Entry]):
        items = [e.item for e in entries]
        instructions = [e.instruction for e in entries]
        if all(i is None for i in instructions):  # (an encoder without instructions works too)
            return retriever.encode(items, **options)
        return retriever.encode(items, instruction=instructions, **options)

    return encode


class _PreparingEncoder:
    """``encode(entries)`` for lamra's retriever, whose ``encode`` is ``encode_prepared(prepare(...))``:
    a shard's prompts can be tokenized apart (``prepare``, in a background thread) and handed back,
    ``encode(entries, prompts)``, with the same vectors and the same errors in the same order."""

    def __init__(self, retriever, options: dict):
        self.retriever, self.options = retriever, options

    def prepare(self, entries: list[Entry]) -> list:
        """One prompt per entry, or the InputError its tokenization raised (an unreadable image
        header...), kept in its place and raised when the shard is encoded, as ``encode`` would."""
        prompts = []
        for entry in entries:
            try:
                prompts.append(self.retriever.prepare([entry.item], entry.instruction)[0])
            except InputError as exc:
                prompts.append(exc)
        return prompts

    def __call__(self, entries: list[Entry], prompts: list | None = None):
        if prompts is None:
            prompts = self.prepare(entries)
        error = next((p for p in prompts if isinstance(p, InputError)), None)
        if error is not None:
            raise error
        return self.retriever.encode_prepared(prompts, **self.options)


def _encode_entries(entries: list[Entry], encode, skip_bad: bool, dim: int, skip_hint: str | None = SKIP_HINT,
                    prompts: list | None = None):
    """Encode entries; with ``skip_bad`` leave out (and report) items that fail to load.
    ``prompts``: the entries' prompts, tokenized ahead (``encode.prepare``)."""
    pending = list(range(len(entries)))
    bad: list[dict] = []
    while pending:
        try:
            subset = [entries[i] for i in pending]
            vectors = np.asarray(encode(subset) if prompts is None else encode(subset, [prompts[i] for i in pending]),
                                 dtype=np.float32)
            return vectors, pending, bad
        except InputError as exc:
            culprit = next((n for n, i in enumerate(pending) if entries[i].item.id == exc.item), None)
            if not skip_bad or culprit is None:
                if culprit is not None and skip_hint:
                    raise InputError(f"{exc.reason} ({skip_hint})", file=exc.file, line=exc.line, item=exc.item,
                                     field=exc.field) from None
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
