"""M-BEIR evaluation: the paper's 16-task table over the local pools or one of the two global pools.

For each task: its queries (each with its instruction) and its pool are encoded through the
index layer into cached index folders; each query's top-K (50, as in the paper) is retrieved,
written as a TREC run, and scored with the task's metric (Recall@5, Recall@10 for Fashion200K and
FashionIQ; a hit rate, as UniIR computes it).

Pools (``pool=``, docs/format.md#m-beir-data-format; every report names the one it used):

- ``local``: each task's own pool;
- ``global-union``: UniIR's union pool file, each candidate once (``global`` is an alias);
- ``global-lamra``: the 16 local pools concatenated, as the official LamRA evaluation (the
  paper's global numbers). A candidate of several local pools is there several times, so it can
  take several of a query's top-K places. The local pools' cached indexes are searched one by
  one and the hits merged by score, which is the top-K of the concatenation.

Instructions (``instructions=``): ``first`` - the first instruction of the task (deterministic,
the default) - or ``random`` - the released code's choice (a random positive, a random
instruction keyed on its modality), seeded by ``seed`` and the qid so a run repeats.

Bad items (``skip_bad=True``): candidates and queries whose image cannot be read are left out,
counted per task and listed in results.json; a left-out query counts as a miss.

Any encoder works: ``encode(items, instruction=...)`` and ``fingerprint()``. Under ``torchrun``
the encoding is shared by all ranks (the index layer shards it); rank 0 searches and writes.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import distributed
from ..data.mbeir import (
    MBEIRLayout,
    is_empty_text_candidate,
    MBEIRQuery,
    Task,
    candidate_modalities,
    count_lines,
    describe_pool,
    get_task,
    iter_candidates,
    read_qrels,
    read_queries,
    resolve_pool,
    root_tasks,
)
from ..data.mbeir_instructions import INSTRUCTION_CHOICES, Instructions, load_instructions, query_instructions
from ..errors import InputError
from . import RETRIEVAL_TOP_K
from .cache import EmbeddingCache, Encoder
from .metrics import evaluate_run
from .report import TaskResult, write_reports, write_trec_run

logger = logging.getLogger(__name__)

REFERENCE_CUTOFFS = (1, 5, 10, 50)  # also reported for every task, besides its own metric
SKIP_HINT = "pass --skip-bad to leave bad items out (they are counted and listed in results.json)"


@dataclass
class MBEIRResults:
    results: list[TaskResult]
    average: float
    files: dict[str, Path] = field(default_factory=dict)  # json, csv, markdown
    built: list[str] = field(default_factory=list)  # cache entries encoded by this run
    reused: list[str] = field(default_factory=list)  # cache entries found ready
    pool: str = "local"  # the canonical pool name
    # Items left out as bad (skip_bad): {"queries": {task: [...]}, "candidates": {pool file: [...]}}
    skipped: dict[str, dict[str, list]] = field(default_factory=lambda: {"queries": {}, "candidates": {}})


def evaluate_mbeir(root: str | os.PathLike, encoder: Encoder, out: str | os.PathLike, *,
                   tasks: Sequence[str] | None = None, pool: str = "local", split: str = "test",
                   top_k: int = RETRIEVAL_TOP_K, cache_dir: str | os.PathLike | None = None,
                   index_dtype: str = "float16", batch_size: int | None = None, show_progress: bool = True,
                   announce: Callable[[str], None] | None = None, instructions: str = "first", seed: int = 0,
                   skip_bad: bool = False, shard_size: int = 1024, pool_backend: dict | None = None) -> MBEIRResults:
    """Evaluate ``encoder`` on the M-BEIR root ``root``; reports and runs go to ``out``.

    ``pool``: "local", "global-union" (alias "global") or "global-lamra" (module docstring).
    ``instructions``: "first" or "random" (seeded by ``seed``). ``skip_bad``: leave out
    unreadable candidates and queries, counted and listed, instead of stopping. ``shard_size``:
    items per checkpointed shard of an encoding (an interrupted run resumes from its last shard;
    under torchrun the shards are shared out). ``pool_backend``: where the candidate pools are
    indexed, as ``Index.build`` options (``{"backend": "milvus", "milvus_uri": ...}``; default an
    in-folder flat index). Every task searches the whole pool, with no modality filter: UniIR's
    global evaluation searches the union pool unfiltered and leaves the modality to the instruction.
    ``cache_dir`` (default ``out/embeddings``) holds the query and pool indexes; a later run with
    the same model, adapter, prompt format, settings and data files reuses them and encodes nothing.
    """
    root, out = Path(root), Path(out)
    pool = resolve_pool(pool)
    if instructions not in INSTRUCTION_CHOICES:
        raise InputError(f"instructions must be one of {', '.join(INSTRUCTION_CHOICES)}, got {instructions!r}")
    chosen = [get_task(name, root) for name in tasks] if tasks else list(root_tasks(root))
    too_deep = [t.name for t in chosen if t.recall_k > top_k]
    if too_deep:
        raise InputError(f"top_k={top_k} is below the Recall@K cut-off of {', '.join(too_deep)}")
    layout = MBEIRLayout(root)
    _check_files(layout, chosen, pool, split)
    table = load_instructions(root)
    cache = EmbeddingCache(cache_dir if cache_dir is not None else out / "embeddings", index_dtype=index_dtype,
                           batch_size=batch_size, show_progress=show_progress, shard_size=shard_size)
    say = announce or (lambda message: logger.info(message))
    options = {"skip_bad": skip_bad}
    results: list[TaskResult] = []
    pool_options = {**options, "backend": pool_backend}
    skipped: dict[str, dict[str, list]] = {"queries": {}, "candidates": {}}
    shared: dict[Path, object] = {}  # pool file -> its index (global pools: encoded once for all tasks)
    with distributed.process_group() as rank:
        if pool == "global-lamra":
            say(f"global-lamra pool: the {len(root_tasks(root))} local pools, concatenated")
        for number, task in enumerate(chosen, start=1):
            query_path, qrels_path = layout.query_file(task.name, split), layout.qrels_file(task.name, split)
            pool_paths = layout.pool_files(task.name, pool, split)
            where = pool_paths[0].name if len(pool_paths) == 1 else f"{len(pool_paths)} local pools"
            say(f"[{number}/{len(chosen)}] {task.name}: {pool} pool ({where})")
            started = time.perf_counter()
            pool_indexes = []
            for path in pool_paths:
                if path not in shared:
                    index = _pool_index(cache, path, encoder, root, **pool_options)
                    if pool != "local":
                        shared[path] = index
                else:
                    index = shared[path]
                pool_indexes.append(index)
            queries = read_queries(query_path)
            chosen_instructions = task_instructions(queries, table, instructions, seed, layout, task, split,
                                                    query_path)
            query_index = _query_index(cache, query_path, queries, chosen_instructions, encoder, root, **options)
            if rank != 0:
                continue
            qrels = read_qrels(qrels_path)
            result = _score_task(task, queries, qrels, query_index, pool_indexes, top_k=top_k, pool=pool,
                                 run_path=out / "runs" / f"mbeir_{task.name}_{pool}_{split}.trec")
            results.append(result)
            if query_index.manifest.get("skipped"):
                skipped["queries"][task.name] = list(query_index.manifest["skipped"])
            for path, index in zip(pool_paths, pool_indexes):
                if index.manifest.get("skipped"):
                    skipped["candidates"][path.name] = list(index.manifest["skipped"])
            logger.info("%s: %s = %.2f (%.1fs)", task.name, task.metric, result.score, time.perf_counter() - started)
    evaluation = MBEIRResults(results, sum(r.score for r in results) / len(results) if results else 0.0,
                              built=cache.stats.built, reused=cache.stats.reused, pool=pool, skipped=skipped)
    if rank == 0:
        info = {"benchmark": "M-BEIR", "root": str(root), "pool": pool, "pool_description": describe_pool(pool, split),
                "split": split, "top_k": top_k, "encoder": encoder.fingerprint(), "instructions": table.source,
                "instruction_choice": instructions, "instruction_seed": seed if instructions == "random" else None,
                "skip_bad": skip_bad, "skipped": skipped, "cache_dir": str(cache.folder),
                "encoded": cache.stats.built, "reused": cache.stats.reused}
        note = f"Pool: **{pool}**, {describe_pool(pool, split)}. Instructions: {_describe_choice(instructions, seed)}."
        evaluation.files = write_reports(results, out, title=f"M-BEIR ({pool} pool, {split})", info=info, note=note)
    return evaluation


def _describe_choice(choice: str, seed: int) -> str:
    if choice == "random":
        return f"random per query (a random positive's modality picks the key), seed {seed}"
    return "the first of each task (deterministic)"


def _check_files(layout: MBEIRLayout, tasks: list[Task], pool: str, split: str) -> None:
    """Every file the run needs, checked before anything is encoded."""
    for task in tasks:
        needed = [layout.query_file(task.name, split), layout.qrels_file(task.name, split),
                  *layout.pool_files(task.name, pool, split)]
        for path in needed:
            if not path.is_file():
                why = "the global-lamra pool is every local pool" if pool == "global-lamra" and path not in \
                    needed[:2] else f"{task.name} needs it"
                raise InputError(f"missing file ({why}; check the M-BEIR root, or `lamra data validate`)",
                                 file=str(path))


def task_instructions(queries: list[MBEIRQuery], table: Instructions, choice: str, seed: int, layout: MBEIRLayout,
                      task: Task, split: str, query_path: Path) -> list[str]:
    """Each query's instruction (what the retriever read, and what a reranker of the run reads);
    for ``random`` the positives' modalities come from the task's local pool (the union pool file
    when there is no local one)."""
    modality_of = None
    if choice == "random":
        source = layout.local_pool(task.name)
        if not source.is_file():
            source = layout.global_pool(split)
        modality_of = candidate_modalities(source, {did for query in queries for did in query.positives})
    return query_instructions(queries, table, choice=choice, seed=seed, modality_of=modality_of,
                              file=str(query_path))


def _score_task(task: Task, queries, qrels, query_index, pool_indexes: list, *, top_k: int, pool: str,
                run_path: Path) -> TaskResult:
    qids = query_index.ids
    scores, ranked = search_pools(pool_indexes, query_index.vectors(), top_k)
    write_trec_run(run_path, qids, ranked, scores)
    run = {qid: distinct_slots(row) for qid, row in zip(qids, ranked)}
    # Every query of the file counts; one without qrels lines (or left out as bad) scores 0 (UniIR's definition).
    positives = {q.qid: qrels.positives.get(q.qid, []) for q in queries}
    missing = sum(1 for dids in positives.values() if not dids)
    if missing:
        logger.warning("%s: %d queries have no qrels line; they score 0", task.name, missing)
    names = [task.metric] + [f"Recall@{k}" for k in REFERENCE_CUTOFFS if k <= top_k and k != task.recall_k]
    values = evaluate_run(run, positives, names)
    skipped_candidates = sum(len(index.manifest.get("skipped") or []) for index in pool_indexes)
    return TaskResult(task=task.name, task_type=task.type_label, dataset=task.display_dataset, metric=task.metric,
                      score=100 * values[task.metric], queries=len(queries), pool=pool,
                      pool_size=sum(len(index) for index in pool_indexes),
                      metrics={name: 100 * value for name, value in values.items()}, run_file=str(run_path),
                      query_index=str(query_index.path),
                      pool_index=str(pool_indexes[0].path) if len(pool_indexes) == 1 else None,
                      skipped_queries=len(query_index.manifest.get("skipped") or []),
                      skipped_candidates=skipped_candidates)


def search_pools(indexes: list, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
    """The top ``k`` of the concatenation of ``indexes`` (scores best first, ids), searched one by
    one and merged: a candidate in several indexes can fill several places. Equal scores keep
    the order of the concatenation (earlier index, then lower position)."""
    if len(indexes) == 1:
        return indexes[0].search(query_vectors, k=k)
    count = len(query_vectors)
    all_scores, all_ids = [], []
    for index in indexes:
        scores, ids = index.search(query_vectors, k=k)
        width = scores.shape[1] if scores.ndim == 2 else 0
        padded_scores = np.full((count, width), -np.inf, dtype=np.float32)
        padded_ids = np.full((count, width), None, dtype=object)
        for row, row_ids in enumerate(ids):
            padded_scores[row, :len(row_ids)] = scores[row, :len(row_ids)]
            padded_ids[row, :len(row_ids)] = row_ids
        all_scores.append(padded_scores)
        all_ids.append(padded_ids)
    scores, ids = np.concatenate(all_scores, axis=1), np.concatenate(all_ids, axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_scores = np.take_along_axis(scores, order, axis=1)
    top_ids = np.take_along_axis(ids, order, axis=1)
    ranked = [[did for did, score in zip(row_ids, row_scores) if did is not None and np.isfinite(score)]
              for row_ids, row_scores in zip(top_ids, top_scores)]
    return top_scores, ranked


def distinct_slots(ranked: Sequence[str]) -> list[str]:
    """The ranking with each repeat of a candidate renamed (``did#2`` ...), so a repeat keeps its
    place but counts as no positive: the hit rate of the ranking with its repeats, as the
    official global evaluation computes it (the metric code refuses a candidate ranked twice)."""
    seen: dict[str, int] = {}
    out = []
    for did in ranked:
        seen[did] = seen.get(did, 0) + 1
        out.append(did if seen[did] == 1 else f"{did}#{seen[did]}")
    return out


def _pool_index(cache: EmbeddingCache, path: Path, encoder: Encoder, root: Path, *, skip_bad: bool,
                backend: dict | None = None):
    """The pool's index: streamed from the jsonl only when it has to be encoded."""

    def items():
        candidates = list(iter_candidates(path))
        empty = sum(1 for candidate in candidates if is_empty_text_candidate(candidate))
        if empty:
            logger.warning("%s: %d 'text' candidate(s) have no text; embedded as the empty formatted text, "
                           "as the official code does", path, empty)
        return [candidate.item(root) for candidate in candidates]

    return cache.index(path.stem, items, encoder, source=path, count=count_lines(path),
                       locate=lambda did: _line_of(path, "did", did), skip_bad=skip_bad, skip_hint=SKIP_HINT,
                       backend=backend)


def _query_index(cache: EmbeddingCache, path: Path, queries: list[MBEIRQuery], instructions: list[str],
                 encoder: Encoder, root: Path, *, skip_bad: bool):
    lines = {query.qid: query.line for query in queries}
    # Queries are few and re-read in full: keep them in float32.
    return cache.index(f"query-{path.stem}", lambda: [q.item(root) for q in queries], encoder, source=path,
                       count=len(queries), parts={"kind": "query"}, instruction=instructions, dtype="float32",
                       locate=lines.get, skip_bad=skip_bad, skip_hint=SKIP_HINT)


def _line_of(path: Path, key: str, value: str) -> int | None:
    """The line of the record whose ``key`` is ``value`` (used only to name a failing item)."""
    import json

    needle = value.encode()
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if needle in raw:
                try:
                    if json.loads(raw).get(key) == value:
                        return number
                except ValueError:
                    continue
    return None


def oracle_positives(root: str | os.PathLike, tasks: Sequence[str] | None = None, split: str = "test") -> dict:
    """qid -> positives of the chosen tasks' qrels (what :class:`OracleEncoder` needs)."""
    layout = MBEIRLayout(root)
    positives: dict[str, list[str]] = {}
    for task in [get_task(name, root) for name in tasks] if tasks else root_tasks(root):
        path = layout.qrels_file(task.name, split)
        for qid, dids in read_qrels(path).positives.items():
            if positives.setdefault(qid, dids) != dids:
                raise InputError(f"qid {qid!r} is in two tasks with other positives: run the oracle one task "
                                 "at a time", file=str(path), item=qid)
    return positives
