"""Evaluate the zero-shot sets: embed each side once (cached, resumable), rank and score every task
as the official scripts do, then, when asked, rerank each task's top K with LamRA-Rank (scores
cached query by query) and report Ret and Ret+Rank side by side.

Scores: the official features are bf16 and so are their dot products, so the cosine scores are
rounded to bfloat16 here too; the matching sets count a tie as wrong (strict ``>``) and a ranking
breaks ties by the lower position. Outputs, per set, under ``OUT/SET/``: ``results.json`` and
``results.md``, ``runs/{task}.trec`` (top 50; ``{task}_rerank.trec`` after reranking),
``embeddings/`` and ``rerank-scores/``; CIRCO test adds ``circo_test_submission.json``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ...digests import strings_sha256
from ...embeddings import atomic_write_bytes
from ...pipeline import fuse_ranked
from ...progress import progress_bar
from ..cache import EmbeddingCache
from ..metrics import evaluate_run, itm_accuracy
from ..report import write_trec_run
from ..rerank import ScoreFile
from . import read_set
from .base import Side, Task, ZeroShotSet
from .encoding import PromptEncoder, entry_item, score_pairs
from .prompts import ZEROSHOT_PROMPTS_VERSION, alpha_of

logger = logging.getLogger(__name__)

RUN_DEPTH = 50  # the official scripts keep the top 50 (for reranking and the CIRCO server)
MASKED_SCORE = -100.0  # VIST: the query's own context photos


@dataclass
class TaskScores:
    """One task's numbers: Ret, and Ret+Rank when reranked (percent)."""

    set: str
    task: str
    metrics: dict[str, float]
    reranked: dict[str, float] | None = None
    queries: int = 0
    candidates: int = 0
    note: str | None = None


@dataclass
class SetResults:
    name: str
    tasks: list[TaskScores]
    mean: dict[str, float] | None = None  # {"Ret": x, "Ret+Rank": y}, labelled by ``mean_label``
    mean_label: str | None = None
    notes: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    scored: int = 0
    rescored: int = 0


@dataclass
class ZeroShotReranking:
    """The reranker (loaded when its turn comes) and how a (query, candidates) is scored."""

    load_reranker: Callable[[], Any]
    batch_size: int | None = None
    score: Callable[..., np.ndarray] = score_pairs


def bfloat16(values) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), as float32."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return rounded.astype(np.uint32).view(np.float32)


def prompts_digest(side: Side) -> str:
    """What a side's vectors depend on besides the model: every prompt's text and media paths."""
    return strings_sha256(repr(entry.parts) for entry in side.entries)


def encoder_for(model) -> Any:
    """A lamra Retriever reads the sets' prompts through :class:`PromptEncoder`; a baseline as is."""
    return PromptEncoder(model) if hasattr(model, "processor") and hasattr(model, "embed") else model


def embed_sides(dataset: ZeroShotSet, encoder, cache: EmbeddingCache) -> dict[str, np.ndarray]:
    """Every side's vectors in entry order (from the cache when the key matches)."""
    vectors = {}
    if dataset.max_pixels is not None and hasattr(encoder, "at_max_pixels"):
        encoder = encoder.at_max_pixels(dataset.max_pixels)
    for side in dataset.sides.values():
        # Ids unique across sides (a baseline derives vectors from them); the position after the colon.
        items = [entry_item(entry.parts, f"{side.name}:{position}") for position, entry in enumerate(side.entries)]
        index = cache.index(f"{side.name}", lambda items=items: items, encoder, source=side.source,
                            count=len(items), dtype="float32",
                            parts={"kind": "zeroshot", "set": dataset.name, "side": side.name,
                                   "prompts": ZEROSHOT_PROMPTS_VERSION, "prompts_sha256": prompts_digest(side)})
        order = np.argsort([int(i.rsplit(":", 1)[1]) for i in index.ids])
        vectors[side.name] = np.asarray(index.vectors(), dtype=np.float32)[order]
    return vectors


def rank(task: Task, queries: np.ndarray, candidates: np.ndarray, depth: int = RUN_DEPTH):
    """Each query's (candidate positions, bf16 scores), best first: its own list whole, or the top
    ``depth`` of the candidate side (masked ones at -100)."""
    ranked = []
    if task.lists is not None:
        for vector, row in zip(queries, task.lists):
            row = np.asarray(row)
            scores = bfloat16(candidates[row] @ vector)
            order = np.lexsort((np.arange(len(row)), -scores))
            ranked.append((row[order], scores[order]))
        return ranked
    positions = np.arange(len(candidates))
    for start in range(0, len(queries), 256):
        block = bfloat16(queries[start:start + 256] @ candidates.T)
        for offset, scores in enumerate(block):
            if task.masked is not None:
                scores[task.masked[start + offset]] = MASKED_SCORE
            order = np.lexsort((positions, -scores))[:depth]
            ranked.append((order, scores[order]))
    return ranked


def score_task(task: Task, ranked: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """The task's metrics (percent) on a ranking; ITM compares the positive with the negative."""
    values: dict[str, float] = {}
    recall = [name for name in task.metrics if name != "ITM"]
    if recall:
        run = {str(q): [str(p) for p in positions] for q, (positions, _) in enumerate(ranked)}
        qrels = {str(q): [str(p) for p in positives] for q, positives in enumerate(task.positives)}
        values.update({name: 100 * value for name, value in evaluate_run(run, qrels, recall).items()})
    if "ITM" in task.metrics:
        scores, labels = [], []
        for (positions, row), positives in zip(ranked, task.positives):
            scores.append(row)
            labels.append([p in positives for p in positions])
        values["ITM"] = 100 * itm_accuracy(scores, labels)
    return {name: values[name] for name in task.metrics}


def _write_run(path: Path, dataset: ZeroShotSet, task: Task, ranked, *, tag: str = "lamra") -> None:
    queries = dataset.sides[task.queries].entries
    candidates = dataset.sides[task.candidates].entries
    write_trec_run(path, [q.id for q in queries], [[candidates[p].id for p in positions[:RUN_DEPTH]]
                                                   for positions, _ in ranked],
                   [list(scores[:RUN_DEPTH]) for _, scores in ranked], tag=tag)


def _submission(path: Path, dataset: ZeroShotSet, task: Task, ranked) -> None:
    """CIRCO test: {annotation id: the top 50 image ids as strings} for the evaluation server."""
    candidates = dataset.sides[task.candidates].entries
    body = {key: [candidates[p].id for p in positions[:RUN_DEPTH]]
            for key, (positions, _) in zip(task.submission_keys, ranked)}
    atomic_write_bytes(path, json.dumps(body, indent=1).encode())


def rerank_task(dataset: ZeroShotSet, task: Task, ranked, reranker, reranking: ZeroShotReranking, folder: Path,
                *, show_progress: bool) -> tuple[list, int, int]:
    """The top ``task.rerank_k`` of every query reranked (pointwise, the task's prompts), cached per
    query; fused as the official ``S_ret + w * P(Yes)``. Returns the new ranking, and how many
    queries were scored and reused."""
    k = task.rerank_k
    heads = {str(q): [(str(p), float(s)) for p, s in zip(positions[:k], scores[:k])]
             for q, (positions, scores) in enumerate(ranked)}
    fingerprint = getattr(reranker, "fingerprint", None)
    identity = {"fingerprint": fingerprint() if callable(fingerprint) else type(reranker).__name__,
                "prompts": ZEROSHOT_PROMPTS_VERSION}
    parts = {"kind": "zeroshot-rerank", "set": dataset.name, "top_k": k,
             "queries_sha256": strings_sha256(repr(parts) for parts in task.rerank_queries),
             "candidates_sha256": strings_sha256(repr(parts) for parts in task.rerank_candidates),
             "heads_sha256": strings_sha256(f"{q}\t{' '.join(d for d, _ in h)}" for q, h in heads.items())}
    store = ScoreFile(folder, f"{task.queries}-{task.candidates}", identity, parts)
    done = store.load(heads)
    todo = [q for q in heads if q not in done]
    if todo:
        with store.appending() as append, progress_bar(len(todo), f"reranking {dataset.name} {task.name}",
                                                       enabled=show_progress) as bar:
            for qid in todo:
                ids = [d for d, _ in heads[qid]]
                scores = reranking.score(reranker, task.rerank_queries[int(qid)],
                                         [task.rerank_candidates[int(d)] for d in ids],
                                         batch_size=reranking.batch_size)
                append(qid, ids, scores)
                done[qid] = np.asarray(scores, dtype=np.float32)
                bar.advance()
    store.finish()
    alpha = alpha_of(task.rerank_weight)
    reranked = []
    for q, (positions, scores) in enumerate(ranked):
        hits = fuse_ranked(heads[str(q)], done[str(q)], alpha)
        head = np.array([int(hit.id) for hit in hits])
        fused = np.array([hit.fused for hit in hits], dtype=np.float32)
        reranked.append((np.concatenate([head, positions[k:]]), np.concatenate([fused, scores[k:]])))
    return reranked, len(todo), len(heads) - len(todo)


def evaluate_zeroshot_sets(root: str | os.PathLike, names: Sequence[str], load_encoder: Callable[[], Any],
                           out: str | os.PathLike, *, reranking: ZeroShotReranking | None = None,
                           format: str = "lamra", cache_dir: str | os.PathLike | None = None,
                           batch_size: int | None = None, shard_size: int = 1024, show_progress: bool = True,
                           announce: Callable[[str], None] | None = None,
                           free_memory: Callable[[], None] | None = None) -> list[SetResults]:
    """Read every set in ``names`` (all files checked before a model loads), embed and score them,
    then rerank when ``reranking`` is given; reports go to ``out/SET``."""
    say = announce or logger.info
    root, out = Path(root), Path(out)
    datasets = [read_set(root, name, format) for name in names]
    encoder = encoder_for(load_encoder())
    fingerprint = encoder.fingerprint()
    rankings, results = [], []
    for dataset in datasets:
        say(f"{dataset.name}: " + ", ".join(f"{len(s.entries)} {s.name}" for s in dataset.sides.values()))
        folder = out / _folder_name(dataset.name)
        cache = EmbeddingCache(Path(cache_dir) / _folder_name(dataset.name) if cache_dir else folder / "embeddings",
                               shard_size=shard_size, batch_size=batch_size, show_progress=show_progress)
        vectors = embed_sides(dataset, encoder, cache)
        per_task, scores = [], []
        for task in dataset.tasks:
            ranked = rank(task, vectors[task.queries], vectors[task.candidates])
            per_task.append(ranked)
            _write_run(folder / "runs" / f"{task.name}.trec", dataset, task, ranked)
            if task.submission:
                _submission(folder / f"circo_{task.name}_submission.json", dataset, task, ranked)
            scores.append(TaskScores(dataset.name, task.name, score_task(task, ranked),
                                     queries=len(dataset.sides[task.queries].entries),
                                     candidates=len(dataset.sides[task.candidates].entries),
                                     note="submission file (no labels)" if task.submission else None))
        rankings.append(per_task)
        results.append(SetResults(dataset.name, scores, mean_label=dataset.mean, notes=list(dataset.notes),
                                  built=cache.stats.built, reused=cache.stats.reused))
    del encoder
    if reranking is not None and any(t.rerank_queries for d in datasets for t in d.tasks):
        if free_memory:
            free_memory()
        reranker = reranking.load_reranker()
        for dataset, per_task, result in zip(datasets, rankings, results):
            folder = out / _folder_name(dataset.name)
            for task, ranked, row in zip(dataset.tasks, per_task, result.tasks):
                if task.rerank_queries is None:
                    continue
                reranked, scored, reused = rerank_task(dataset, task, ranked, reranker, reranking,
                                                       folder / "rerank-scores", show_progress=show_progress)
                result.scored += scored
                result.rescored += reused
                if task.submission:
                    _submission(folder / f"circo_{task.name}_rerank_submission.json", dataset, task, reranked)
                _write_run(folder / "runs" / f"{task.name}_rerank.trec", dataset, task, reranked, tag="lamra-rerank")
                row.reranked = score_task(task, reranked)
    for dataset, result in zip(datasets, results):
        result.mean = _mean(result) if dataset.mean else None
        result.files = _write_reports(out / _folder_name(dataset.name), result, root=root, format=format,
                                      fingerprint=fingerprint)
    return results


def _folder_name(name: str) -> str:
    return name.replace(" ", "-").replace("(", "").replace(")", "")


def _mean(result: SetResults) -> dict[str, float]:
    """The mean of each task's first metric (the set's headline number), Ret and Ret+Rank."""
    rows = [t for t in result.tasks if t.metrics]
    mean = {"Ret": float(np.mean([next(iter(t.metrics.values())) for t in rows]))}
    if all(t.reranked for t in rows):
        mean["Ret+Rank"] = float(np.mean([next(iter(t.reranked.values())) for t in rows]))
    return mean


def table_rows(result: SetResults) -> list[tuple[str, str, str, str]]:
    """(task, metric, Ret, Ret+Rank) rows of a set, the mean (ours) last."""
    rows = []
    for task in result.tasks:
        if not task.metrics:
            rows.append((task.task, task.note or "-", "-", "-"))
        for name, value in task.metrics.items():
            after = task.reranked.get(name) if task.reranked else None
            rows.append((task.task, name, f"{value:.2f}", "-" if after is None else f"{after:.2f}"))
    if result.mean:
        rows.append(("mean (ours)", result.mean_label.split(" ")[0], f"{result.mean['Ret']:.2f}",
                     f"{result.mean['Ret+Rank']:.2f}" if "Ret+Rank" in result.mean else "-"))
    return rows


def _write_reports(folder: Path, result: SetResults, *, root: Path, format: str, fingerprint: dict) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    body = {"benchmark": "lamra zero-shot (official LamRA evaluation)", "set": result.name, "root": str(root),
            "format": format, "prompts": ZEROSHOT_PROMPTS_VERSION, "encoder": fingerprint,
            "tasks": [{"task": t.task, "queries": t.queries, "candidates": t.candidates, "metrics": t.metrics,
                       "reranked": t.reranked, "note": t.note} for t in result.tasks],
            "mean": result.mean, "mean_label": result.mean_label, "notes": result.notes,
            "embeddings": {"built": result.built, "reused": result.reused},
            "rerank_scores": {"scored": result.scored, "reused": result.rescored}}
    files = {"json": folder / "results.json", "md": folder / "results.md"}
    atomic_write_bytes(files["json"], json.dumps(body, indent=2).encode())
    lines = [f"# Zero-shot: {result.name}", "", "| Task | Metric | Ret | Ret+Rank |", "|---|---|---:|---:|"]
    lines += [f"| {' | '.join(row)} |" for row in table_rows(result)]
    if result.mean_label:
        lines += ["", f"Mean: {result.mean_label}."]
    lines += [f"Note: {note}." for note in result.notes]
    atomic_write_bytes(files["md"], ("\n".join(lines) + "\n").encode())
    return files
