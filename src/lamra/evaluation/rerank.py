"""Ret+Rank on M-BEIR: rerank the stored retrieval runs of :func:`~lamra.evaluation.mbeir.evaluate_mbeir`.

Nothing is encoded: the retrieval evaluation left, in its output folder, ``results.json`` (the
pool, split, instruction choice and seed it used, and each task's TREC run) and the runs
themselves. For each task this module reads the run, rebuilds each query (its item and the
same instruction the retriever read) and its top-K candidates (from the pool files), scores
them with the reranker (pointwise P(Yes) or listwise), fuses ``alpha * S_ret + (1 - alpha) *
S_rank`` (:func:`lamra.pipeline.fuse_ranked`; alpha global or the released per-task defaults)
and scores the new ranking with the task's metric.

Rerank scores are cached per task, query by query (``OUT/rerank-scores``): a file keyed by the
reranker (fingerprint and settings), the mode, K, the data files, the instructions and the
retrieved ids, appended after every query and renamed when the task is done. A killed run
loses at most the query in flight; a second run with the same reranker reuses the scores and
scores nothing (fusion happens after the cache, so another alpha re-scores nothing either).

Outputs beside the retrieval ones: ``runs/mbeir_{task}_{pool}_{split}_rerank.trec`` (the reranked
top-K, fused scores), and results.json / .csv / .md rewritten with Ret and Ret+Rank side by side.
"""

from __future__ import annotations

import json
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ..data.mbeir import MBEIRLayout, candidate_from_record, get_task, read_qrels, read_queries
from ..data.mbeir_instructions import load_instructions
from ..digests import file_sha256, strings_sha256
from ..embeddings import atomic_write_bytes
from ..errors import InputError
from ..items import Item
from ..pipeline import LISTWISE, MODES, POINTWISE, RERANK_TOP_K, Hit, alpha_for, fuse_ranked, rerank_scores
from ..progress import progress_bar
from .cache import cache_key
from .mbeir import REFERENCE_CUTOFFS, distinct_slots, task_instructions
from .metrics import evaluate_run
from .report import TaskResult, read_trec_run, write_rerank_reports, write_trec_run

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
SCORES_DIR = "rerank-scores"
SCORES_FORMAT = 1
PARTIAL = ".partial"


@dataclass
class RerankResults:
    """Ret and Ret+Rank per task (same order), the alpha each task used, what was (re)scored."""

    retrieval: list[TaskResult]
    reranked: list[TaskResult]
    alphas: dict[str, float]
    mode: str = POINTWISE
    top_k: int = RERANK_TOP_K
    files: dict[str, Path] = field(default_factory=dict)
    scored: dict[str, int] = field(default_factory=dict)  # task -> queries scored by this run
    reused: dict[str, int] = field(default_factory=dict)  # task -> queries whose cached scores were used
    # Every task's retrieval row, in the evaluation's order: reranked or not (``tasks=`` picks some).
    all_tasks: list[TaskResult] = field(default_factory=list)

    @property
    def average(self) -> float:
        return _average(self.retrieval)

    @property
    def rerank_average(self) -> float:
        return _average(self.reranked)


def _average(results: Sequence[TaskResult]) -> float:
    return sum(r.score for r in results) / len(results) if results else 0.0


def read_evaluation(out: str | os.PathLike) -> dict:
    """The ``results.json`` of an M-BEIR evaluation in ``out`` (what the reranking builds on)."""
    path = Path(out) / RESULTS_FILE
    if not path.is_file():
        raise InputError("no M-BEIR evaluation here: run `lamra eval mbeir ROOT --model M --out "
                         f"{Path(out)}` first (its runs are what gets reranked)", file=str(path))
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"not valid JSON ({exc})", file=str(path)) from None
    for key in ("root", "pool", "split", "top_k", "tasks"):
        if key not in report:
            raise InputError("not the results of `lamra eval mbeir` (no such field)", file=str(path), field=key)
    return report


def rerank_mbeir(out: str | os.PathLike, reranker, *, root: str | os.PathLike | None = None,
                 tasks: Sequence[str] | None = None, top_k: int = RERANK_TOP_K,
                 alpha: float | Mapping[str, float] | None = None, mode: str = POINTWISE,
                 window: int | None = None, batch_size: int | None = None, show_progress: bool = True,
                 announce: Callable[[str], None] | None = None) -> RerankResults:
    """Rerank the runs of the M-BEIR evaluation in ``out`` and report Ret and Ret+Rank side by side.

    ``root``: the M-BEIR root (default: the evaluation's). ``tasks``: a subset of the evaluated
    tasks (default: all of them). ``top_k``: candidates reranked per query (at most the run's
    depth). ``alpha``: a number, a ``{task: alpha}`` mapping, or None for the released per-task
    weights. ``mode``: "pointwise" or "listwise" (``window``: candidates per listwise prompt).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    out = Path(out)
    report = read_evaluation(out)
    root = Path(root) if root is not None else Path(report["root"])
    if top_k < 1 or top_k > int(report["top_k"]):
        raise InputError(f"the runs hold the top {report['top_k']} of each query: the reranking depth must be "
                         f"1 to {report['top_k']}, got {top_k} (or evaluate again with a larger top-k)",
                         file=str(out / RESULTS_FILE), field="top_k")
    stored = all_tasks = [TaskResult(**entry) for entry in report["tasks"]]
    by_name = {result.task: result for result in stored}
    if tasks:
        missing = [name for name in tasks if name not in by_name]
        if missing:
            raise InputError(f"task(s) {', '.join(missing)} not in this evaluation (it has "
                             f"{', '.join(by_name) or 'none'}): evaluate them first", file=str(out / RESULTS_FILE))
        stored = [by_name[name] for name in tasks]
    say = announce or (lambda message: logger.info(message))
    layout = MBEIRLayout(root)
    table = load_instructions(root)
    choice = report.get("instruction_choice", "first")
    seed = report.get("instruction_seed") or 0
    pool, split = report["pool"], report["split"]
    identity = _reranker_identity(reranker, mode, window)
    results = RerankResults([], [], {}, mode=mode, top_k=top_k, all_tasks=all_tasks)
    for number, ret in enumerate(stored, start=1):
        task = get_task(ret.task, root)
        weight = alpha_for(alpha, task.name)
        query_path = layout.query_file(task.name, split)
        queries = read_queries(query_path)
        instructions = task_instructions(queries, table, choice, seed, layout, task, split, query_path)
        # (The run's file name, in this folder: results.json may hold a path relative to another directory.)
        run_name = Path(ret.run_file).name if ret.run_file else f"mbeir_{task.name}_{pool}_{split}.trec"
        run_path = out / "runs" / run_name
        run = read_trec_run(run_path)
        heads = {qid: hits[:top_k] for qid, hits in run.items()}
        pool_paths = layout.pool_files(task.name, pool, split)
        key_parts = {"kind": "rerank-scores", "format": SCORES_FORMAT, "mode": mode, "top_k": top_k,
                     "queries_sha256": file_sha256(query_path),
                     "pools_sha256": [file_sha256(path) for path in pool_paths],
                     "instructions_sha256": strings_sha256(instructions),
                     "run_sha256": strings_sha256(f"{qid}\t{' '.join(did for did, _ in hits)}"
                                                  for qid, hits in heads.items())}
        store = ScoreFile(out / SCORES_DIR, f"{task.name}_{pool}_{split}", identity, key_parts)
        done = store.load(heads)
        todo = [qid for qid in heads if qid not in done]
        say(f"[{number}/{len(stored)}] {task.name}: rerank the top {top_k} of {len(heads)} queries ({mode}, "
            f"alpha {weight:.3g})" + (f"; {len(done)} scored before" if done else ""))
        if todo:
            done.update(_score_queries(reranker, store, {qid: heads[qid] for qid in todo}, queries, instructions,
                                       pool_paths, root, run_path, mode=mode, batch_size=batch_size, window=window,
                                       show_progress=show_progress, label=task.name))
        store.finish()
        results.scored[task.name], results.reused[task.name] = len(todo), len(heads) - len(todo)
        ranked = {qid: fuse_ranked(heads[qid], done[qid], weight) + [Hit(did, s) for did, s in hits[top_k:]]
                  for qid, hits in run.items()}
        rank_run = out / "runs" / f"mbeir_{task.name}_{pool}_{split}_rerank.trec"
        write_trec_run(rank_run, list(ranked), [[hit.id for hit in hits[:top_k]] for hits in ranked.values()],
                       [[hit.score for hit in hits[:top_k]] for hits in ranked.values()], tag="lamra-rerank")
        qrels = read_qrels(layout.qrels_file(task.name, split))
        reranked = _score_task(ret, task, queries, qrels, ranked, run_file=rank_run, depth=int(report["top_k"]))
        results.retrieval.append(ret)
        results.reranked.append(reranked)
        results.alphas[task.name] = weight
        say(f"{task.name}: {task.metric} {ret.score:.1f} -> {reranked.score:.1f}")
    info = {**{k: v for k, v in report.items() if k not in ("average", "tasks", "rerank")},
            "rerank": {"reranker": identity, "mode": mode, "top_k": top_k,
                       "alpha": "released per-task weights" if alpha is None else
                       (dict(alpha) if isinstance(alpha, Mapping) else float(alpha)),
                       "alphas": results.alphas, "scores_dir": str(out / SCORES_DIR),
                       "scored": results.scored, "reused": results.reused}}
    note = (f"Pool: **{pool}**. Ret: the retriever's ranking; Ret+Rank: its top {top_k} reranked ({mode}) and "
            f"fused, alpha * S_ret + (1 - alpha) * S_rank, alpha "
            + (", ".join(f"{t} {a:.3g}" for t, a in results.alphas.items()) if alpha is None or
               isinstance(alpha, Mapping) else f"{float(alpha):g}") + ".")
    # Reranking some tasks keeps every task's retrieval row in results.json (a later run reads
    # them); the others are reported with Ret+Rank = Ret and named as not reranked.
    skipped = [ret.task for ret in all_tasks if ret.task not in results.alphas]
    if skipped:
        info["rerank"]["not_reranked"] = skipped
        note += f" Not reranked (Ret+Rank = Ret): {', '.join(skipped)}."
    reranked_of = {row.task: row for row in results.reranked}
    results.files = write_rerank_reports(all_tasks, [reranked_of.get(ret.task, ret) for ret in all_tasks], out,
                                         title=f"M-BEIR ({pool} pool, {split}): Ret and Ret+Rank", info=info,
                                         note=note)
    return results


def _score_queries(reranker, store: "ScoreFile", heads: Mapping[str, Sequence[tuple[str, float]]], queries,
                   instructions: list[str], pool_paths: list[Path], root: Path, run_path: Path, *, mode: str,
                   batch_size: int | None, window: int | None, show_progress: bool, label: str) -> dict[str, np.ndarray]:
    """S_rank of each query's head, every query's line on disk (``store``) before the next starts."""
    items = {query.qid: query.item(root) for query in queries}
    instruction_of = {query.qid: text for query, text in zip(queries, instructions)}
    candidates = load_candidates(pool_paths, {did for hits in heads.values() for did, _ in hits}, root)
    scored: dict[str, np.ndarray] = {}
    with store.appending() as append, progress_bar(len(heads), f"reranking {label}", enabled=show_progress) as bar:
        for qid, hits in heads.items():
            if qid not in items:
                raise InputError("the run names a query that is not in the query file", file=str(run_path),
                                 item=qid, field="qid")
            ids = [did for did, _ in hits]
            scores = _score_query(reranker, items[qid], [candidates[did] for did in ids], mode=mode,
                                  instruction=instruction_of[qid], batch_size=batch_size, window=window)
            append(qid, ids, scores)
            scored[qid] = scores
            bar.advance()
    return scored


def _reranker_identity(reranker, mode: str, window: int | None) -> dict:
    """What the rerank scores depend on besides the data: the model, its settings, the reading."""
    fingerprint = getattr(reranker, "fingerprint", None)
    identity: dict[str, Any] = {"fingerprint": fingerprint() if callable(fingerprint) else type(reranker).__name__}
    settings = getattr(reranker, "settings", None)
    if hasattr(settings, "fingerprint"):
        identity["settings"] = settings.fingerprint()
        identity["rerank_scores"] = getattr(settings, "rerank_scores", None)
    if mode == LISTWISE:
        identity["window"] = window or getattr(reranker, "listwise_window", None)
        identity["listwise_max_tokens"] = getattr(reranker, "listwise_max_tokens", None)
    return identity


def _score_query(reranker, query: Item, items: list[Item], *, mode: str, instruction: str | None,
                 batch_size: int | None, window: int | None) -> np.ndarray:
    """S_rank of one query's candidates; pointwise scores each distinct candidate once (a global
    pool's run can list a candidate twice)."""
    if mode == POINTWISE:
        first: dict[str, int] = {}
        for position, item in enumerate(items):
            first.setdefault(item.id, position)
        unique = [items[position] for position in first.values()]
        scores = rerank_scores(reranker, query, unique, mode=mode, instruction=instruction, batch_size=batch_size)
        by_id = dict(zip(first, scores))
        return np.array([by_id[item.id] for item in items], dtype=np.float32)
    return rerank_scores(reranker, query, items, mode=mode, instruction=instruction, batch_size=batch_size,
                         window=window)


def _score_task(ret: TaskResult, task, queries, qrels, ranked: dict[str, list[Hit]], *, run_file: Path,
                depth: int) -> TaskResult:
    run = {qid: distinct_slots([hit.id for hit in hits]) for qid, hits in ranked.items()}
    positives = {q.qid: qrels.positives.get(q.qid, []) for q in queries}  # every query counts (UniIR)
    names = [task.metric] + [f"Recall@{k}" for k in REFERENCE_CUTOFFS if k <= depth and k != task.recall_k]
    values = evaluate_run(run, positives, names)
    return TaskResult(**{**asdict(ret), "score": 100 * values[task.metric],
                         "metrics": {name: 100 * value for name, value in values.items()},
                         "run_file": str(run_file)})


_DID = re.compile(rb'"did"\s*:\s*"((?:[^"\\]|\\.)*)"')


def load_candidates(paths: Sequence[Path], dids: set[str], root: str | os.PathLike) -> dict[str, Item]:
    """The items of ``dids`` from the pool files (streamed; only lines naming a wanted did are parsed)."""
    found: dict[str, Item] = {}
    wanted = {did.encode() for did in dids}
    for path in paths:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                match = _DID.search(raw)
                if match is None or match.group(1) not in wanted or match.group(1).decode() in found:
                    continue
                try:
                    record = json.loads(raw)
                except ValueError as exc:
                    raise InputError(f"not valid JSON ({exc})", file=str(path), line=number) from None
                candidate = candidate_from_record(record, file=str(path), line=number)
                if candidate.did in dids and candidate.did not in found:
                    found[candidate.did] = candidate.item(root)
        if len(found) == len(dids):
            break
    missing = sorted(dids - set(found))
    if missing:
        raise InputError(f"{len(missing)} candidate(s) of the run are not in the pool (first: {missing[0]!r}): "
                         "the run was made with other data", file=str(paths[0]))
    return found


class ScoreFile:
    """One task's rerank scores: ``{stem}.{key}.jsonl`` (finished) or ``...jsonl.partial``
    (being written, one line per query, appended and flushed after each)."""

    def __init__(self, folder: Path, stem: str, identity: dict, parts: dict):
        self.folder = folder
        key = cache_key(identity, parts)
        self.path = folder / f"{stem}.{key}.jsonl"
        self.partial = self.path.with_name(self.path.name + PARTIAL)
        self.note = {"reranker": identity, **parts}

    def load(self, heads: Mapping[str, Sequence[tuple[str, float]]]) -> dict[str, np.ndarray]:
        """Scores already computed for these heads: the finished file, else the lines of a partial
        one (a line cut by a kill is dropped, and so is a line whose ids do not match)."""
        source = self.path if self.path.is_file() else self.partial
        if not source.is_file():
            return {}
        done: dict[str, np.ndarray] = {}
        good: list[bytes] = []
        with open(source, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = json.loads(raw)
                    qid, ids, scores = line["qid"], line["ids"], line["scores"]
                except (ValueError, KeyError, TypeError):
                    logger.warning("%s:%d: unreadable line dropped (an interrupted write); it is scored again",
                                   source, number)
                    continue
                if ids != [did for did, _ in heads.get(qid, [])] or len(scores) != len(ids):
                    continue
                done[qid] = np.asarray(scores, dtype=np.float32)
                good.append(raw if raw.endswith(b"\n") else raw + b"\n")
        if source == self.path and len(done) == len(heads):
            return done
        # Scoring goes on: keep the good lines in the partial file (a torn last line is dropped).
        atomic_write_bytes(self.partial, b"".join(good))
        if source == self.path:
            self.path.unlink()
        return done

    @contextmanager
    def appending(self) -> Iterator[Callable[[str, list[str], np.ndarray], None]]:
        """``append(qid, ids, scores)``: one line per query, on disk before the next query starts."""
        self.folder.mkdir(parents=True, exist_ok=True)
        note = self.path.with_name(self.path.name + ".key.json")
        if not note.is_file():
            atomic_write_bytes(note, json.dumps(self.note, indent=2, default=str).encode())
        with open(self.partial, "ab") as handle:
            def append(qid: str, ids: list[str], scores: np.ndarray) -> None:
                line = {"qid": qid, "ids": ids, "scores": [float(s) for s in scores]}
                handle.write((json.dumps(line) + "\n").encode())
                handle.flush()
                os.fsync(handle.fileno())

            yield append

    def finish(self) -> None:
        """The task is complete: the partial file becomes the finished one."""
        if self.path.is_file():
            return
        if self.partial.is_file():
            os.replace(self.partial, self.path)
        else:  # nothing was left to score (e.g. no queries): an empty finished file
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, b"")
