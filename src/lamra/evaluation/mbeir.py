"""M-BEIR evaluation: the paper's 16-task table over the local pools or the global (union) pool.

For each task: its queries (with the first instruction of the task, a deterministic choice)
and its pool are encoded through the index layer into cached index folders; each query's
top-K (50, as in the paper) is retrieved, written as a TREC run, and scored with the task's
metric (Recall@5, Recall@10 for Fashion200K and FashionIQ; a hit rate, as UniIR computes it).

Any encoder works: ``encode(items, instruction=...)`` and ``fingerprint()``. Under ``torchrun``
the encoding is shared by all ranks (the index layer shards it); rank 0 searches and writes.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..data.mbeir import (
    TASKS,
    MBEIRLayout,
    Task,
    count_lines,
    get_task,
    iter_candidates,
    load_instructions,
    read_qrels,
    read_queries,
)
from ..errors import InputError
from .cache import EmbeddingCache, Encoder, EncoderAdapter, strings_sha256
from .metrics import evaluate_run
from .report import TaskResult, write_reports, write_trec_run

logger = logging.getLogger(__name__)

DEFAULT_TOP_K = 50
REFERENCE_CUTOFFS = (1, 5, 10, 50)  # also reported for every task, besides its own metric


@dataclass
class MBEIRResults:
    results: list[TaskResult]
    average: float
    files: dict[str, Path] = field(default_factory=dict)  # json, csv, markdown
    built: list[str] = field(default_factory=list)  # cache entries encoded by this run
    reused: list[str] = field(default_factory=list)  # cache entries found ready


def evaluate_mbeir(root: str | os.PathLike, encoder: Encoder, out: str | os.PathLike, *,
                   tasks: Sequence[str] | None = None, pool: str = "local", split: str = "test",
                   top_k: int = DEFAULT_TOP_K, cache_dir: str | os.PathLike | None = None,
                   index_dtype: str = "float16", batch_size: int | None = None, show_progress: bool = True,
                   announce: Callable[[str], None] | None = None) -> MBEIRResults:
    """Evaluate ``encoder`` on the M-BEIR root ``root``; reports and runs go to ``out``.

    ``cache_dir`` (default ``out/embeddings``) holds the query and pool indexes; a later run with
    the same model, adapter, prompt format and data files reuses them and encodes nothing.
    """
    root, out = Path(root), Path(out)
    if pool not in ("local", "global"):
        raise InputError(f"pool must be 'local' or 'global', got {pool!r}")
    chosen = [get_task(name) for name in tasks] if tasks else list(TASKS)
    too_deep = [t.name for t in chosen if t.recall_k > top_k]
    if too_deep:
        raise InputError(f"top_k={top_k} is below the Recall@K cut-off of {', '.join(too_deep)}")
    layout = MBEIRLayout(root)
    instructions = load_instructions(root)
    cache = EmbeddingCache(cache_dir if cache_dir is not None else out / "embeddings", index_dtype=index_dtype,
                           batch_size=batch_size, show_progress=show_progress)
    say = announce or (lambda message: logger.info(message))
    results: list[TaskResult] = []
    shared_pool = None
    with _distributed() as rank:
        for number, task in enumerate(chosen, start=1):
            query_path, qrels_path = layout.query_file(task.name, split), layout.qrels_file(task.name, split)
            pool_path = layout.pool(task.name, pool, split)
            for needed in (query_path, qrels_path, pool_path):
                if not needed.is_file():
                    raise InputError(f"missing file ({task.name} needs it; check the M-BEIR root, or "
                                     "`lamra data validate`)", file=str(needed))
            say(f"[{number}/{len(chosen)}] {task.name}: {pool} pool {pool_path.name}")
            started = time.perf_counter()
            if pool == "global":
                shared_pool = shared_pool or _pool_index(cache, pool_path, encoder, root)
                pool_index = shared_pool
            else:
                pool_index = _pool_index(cache, pool_path, encoder, root)
            queries = read_queries(query_path)
            query_index = _query_index(cache, query_path, queries, encoder, instructions, root)
            if rank != 0:
                continue
            qrels = read_qrels(qrels_path)
            results.append(_score_task(task, queries, qrels, query_index, pool_index, top_k=top_k, pool=pool,
                                       run_path=out / "runs" / f"mbeir_{task.name}_{pool}_{split}.trec"))
            logger.info("%s: %s = %.2f (%.1fs)", task.name, task.metric, results[-1].score,
                        time.perf_counter() - started)
    evaluation = MBEIRResults(results, sum(r.score for r in results) / len(results) if results else 0.0,
                              built=cache.stats.built, reused=cache.stats.reused)
    if rank == 0:
        info = {"benchmark": "M-BEIR", "root": str(root), "pool": pool, "split": split, "top_k": top_k,
                "encoder": encoder.fingerprint(), "instructions": instructions.source,
                "instruction_choice": "first", "cache_dir": str(cache.folder),
                "encoded": cache.stats.built, "reused": cache.stats.reused}
        title = f"M-BEIR ({pool} pool, {split})"
        evaluation.files = write_reports(results, out, title=title, info=info)
    return evaluation


def _score_task(task: Task, queries, qrels, query_index, pool_index, *, top_k: int, pool: str,
                run_path: Path) -> TaskResult:
    qids = query_index.ids
    scores, ranked = pool_index.search(query_index.vectors(), k=top_k)
    write_trec_run(run_path, qids, ranked, scores)
    run = dict(zip(qids, ranked))
    # Every query of the file counts; one without qrels lines scores 0 (UniIR's definition).
    positives = {q.qid: qrels.positives.get(q.qid, []) for q in queries}
    missing = sum(1 for dids in positives.values() if not dids)
    if missing:
        logger.warning("%s: %d queries have no qrels line; they score 0", task.name, missing)
    names = [task.metric] + [f"Recall@{k}" for k in REFERENCE_CUTOFFS if k <= top_k and k != task.recall_k]
    values = evaluate_run(run, positives, names)
    return TaskResult(task=task.name, task_type=task.type_label, dataset=task.display_dataset, metric=task.metric,
                      score=100 * values[task.metric], queries=len(queries), pool=pool, pool_size=len(pool_index),
                      metrics={name: 100 * value for name, value in values.items()}, run_file=str(run_path),
                      query_index=str(query_index.path), pool_index=str(pool_index.path))


def _pool_index(cache: EmbeddingCache, path: Path, encoder: Encoder, root: Path):
    """The pool's index: streamed from the jsonl only when it has to be encoded."""

    def items():
        return [candidate.item(root) for candidate in iter_candidates(path)]

    return cache.index(path.stem, items, encoder, source=path, count=count_lines(path),
                       locate=lambda did: _line_of(path, "did", did))


def _query_index(cache: EmbeddingCache, path: Path, queries, encoder: Encoder, instructions, root: Path):
    by_qid = {query.qid: instructions.for_query(query) for query in queries}
    lines = {query.qid: query.line for query in queries}
    wrapped = EncoderAdapter(encoder, by_qid)
    parts = {"kind": "query", "instructions_sha256": strings_sha256(by_qid[q.qid] for q in queries)}
    # Queries are few and re-read in full: keep them in float32.
    return cache.index(f"query-{path.stem}", lambda: [q.item(root) for q in queries], wrapped, source=path,
                       count=len(queries), parts=parts, dtype="float32", locate=lines.get)


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


@contextmanager
def _distributed():
    """Yield this process's rank. Under torchrun, hold one gloo group for the whole evaluation
    (the index layer's builds then share it instead of setting up their own)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield 0
        return
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        from datetime import timedelta

        dist.init_process_group("gloo", timeout=timedelta(hours=24))
    try:
        yield dist.get_rank()
    finally:
        if owned:
            dist.destroy_process_group()


def oracle_positives(root: str | os.PathLike, tasks: Sequence[str] | None = None, split: str = "test") -> dict:
    """qid -> positives of the chosen tasks' qrels (what :class:`OracleEncoder` needs)."""
    layout = MBEIRLayout(root)
    positives: dict[str, list[str]] = {}
    for task in [get_task(name) for name in tasks] if tasks else TASKS:
        path = layout.qrels_file(task.name, split)
        for qid, dids in read_qrels(path).positives.items():
            if positives.setdefault(qid, dids) != dids:
                raise InputError(f"qid {qid!r} is in two tasks with other positives: run the oracle one task "
                                 "at a time", file=str(path), item=qid)
    return positives
