"""Zero-shot evaluation over a plain folder (Flickr30K-, CIRCO-, CC-Neg-style sets converted to it).

Layout (image paths are relative to the jsonl file's folder)::

    DATA/queries.jsonl      {"id": "q1", "text": "...", "image": "img/q1.jpg",
                             "instruction": "...",            (optional; else --instruction)
                             "candidates": ["c1", "c2"]}      (optional: rank only these)
    DATA/candidates.jsonl   {"id": "c1", "text": "...", "image": "img/c1.jpg"}
    DATA/qrels.txt          "q1 0 c1 1" per positive (TREC qrels; M-BEIR's 5-column lines work too)

Two modes:

- *ranking* (no query has ``candidates``): each query is ranked against every candidate
  (Flickr30K t->i / i->t, CIRCO, ShareGPT4V, Urban-1K ...); default metrics R@1, R@5, R@10, MAP@5.
- *lists* (every query has ``candidates``): each query is ranked among its own candidates
  (CC-Neg and Sugar-Crepe with 2, GeneCIS with 10-15); default metrics R@1 and, when every list
  has a positive and a negative, ITM accuracy.

R@K is the hit rate (any positive in the top K), MAP@K is CIRCO's, ITM accuracy counts a tie as
wrong (see :mod:`lamra.evaluation.metrics`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..data.jsonl import item_from_record, iter_jsonl, read_item_lines
from ..data.mbeir import read_qrels
from ..errors import InputError
from ..items import Item
from .cache import EmbeddingCache, Encoder
from .metrics import evaluate_run, itm_accuracy, parse_metric, rank_by_scores
from .report import write_trec_run

logger = logging.getLogger(__name__)

QUERIES, CANDIDATES, QRELS = "queries.jsonl", "candidates.jsonl", "qrels.txt"
RANKING_METRICS = ("R@1", "R@5", "R@10", "MAP@5")


@dataclass
class ZeroShotQuery:
    item: Item
    instruction: str | None
    candidates: list[str] | None
    line: int


@dataclass
class ZeroShotResults:
    metrics: dict[str, float]  # percent
    mode: str
    queries: int
    candidates: int
    files: dict[str, Path] = field(default_factory=dict)
    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)


def read_queries(path: Path, default_instruction: str | None = None) -> list[ZeroShotQuery]:
    queries, seen = [], {}
    for line, record in iter_jsonl(path):
        if record is None:
            continue
        try:
            item = item_from_record(record, base_dir=path.parent, line=line)
            instruction = record.get("instruction", default_instruction)
            if instruction is not None and not isinstance(instruction, str):
                raise InputError("must be a string", item=item.id, field="instruction")
            candidates = record.get("candidates")
            if candidates is not None and (not isinstance(candidates, list) or not candidates
                                           or not all(isinstance(c, (str, int)) for c in candidates)):
                raise InputError("must be a non-empty list of candidate ids", item=item.id, field="candidates")
            if item.id in seen:
                raise InputError(f"duplicate id (first on line {seen[item.id]})", item=item.id, field="id")
        except InputError as exc:
            raise exc.located(file=str(path), line=line) from None
        seen[item.id] = line
        queries.append(ZeroShotQuery(item, instruction, [str(c) for c in candidates] if candidates else None, line))
    if not queries:
        raise InputError("no queries", file=str(path))
    return queries


def read_candidates(path: Path) -> list[Item]:
    return [e.item for e in _candidate_lines(path)]


def _candidate_lines(path: Path) -> list:
    entries = read_item_lines(path)
    errors = [e.error for e in entries if e.error is not None]
    if errors:
        more = f" (and {len(errors) - 1} more bad lines)" if len(errors) > 1 else ""
        raise InputError(f"{errors[0].reason}{more}", file=errors[0].file, line=errors[0].line,
                         item=errors[0].item, field=errors[0].field)
    if not entries:
        raise InputError("no candidates", file=str(path))
    return entries


def evaluate_zeroshot(data: str | os.PathLike, encoder: Encoder, out: str | os.PathLike, *,
                      metrics: Sequence[str] | None = None, instruction: str | None = None,
                      top_k: int | None = None, cache_dir: str | os.PathLike | None = None,
                      index_dtype: str = "float16", batch_size: int | None = None,
                      show_progress: bool = True) -> ZeroShotResults:
    """Evaluate ``encoder`` on a zero-shot folder (layout above); reports go to ``out``."""
    from .report import TaskResult, write_reports

    data, out = Path(data), Path(out)
    for name in (QUERIES, CANDIDATES, QRELS):
        if not (data / name).is_file():
            raise InputError(f"missing {name} (a zero-shot folder holds {QUERIES}, {CANDIDATES} and {QRELS})",
                             file=str(data / name))
    queries = read_queries(data / QUERIES, instruction)
    candidate_lines = _candidate_lines(data / CANDIDATES)
    candidates = [e.item for e in candidate_lines]
    qrels = read_qrels(data / QRELS).positives
    mode = _mode(queries, data / QUERIES)
    known = {item.id for item in candidates}
    _check_ids(queries, qrels, known, data)
    metrics = list(metrics) if metrics else _default_metrics(mode, queries, qrels)
    parsed = {name: parse_metric(name) for name in metrics}
    if mode == "ranking" and any(kind == "itm" for kind, _ in parsed.values()):
        raise InputError("ITM accuracy needs a 'candidates' list on every query", file=str(data / QUERIES))
    if any(kind == "itm" for kind, _ in parsed.values()):
        _check_itm_lists(queries, qrels, data / QUERIES)
    depth = max([top_k or 10] + [k for _, k in parsed.values()])

    cache = EmbeddingCache(cache_dir if cache_dir is not None else out / "embeddings", index_dtype=index_dtype,
                           batch_size=batch_size, show_progress=show_progress)
    lines = {e.item.id: e.line for e in candidate_lines}
    pool = cache.index("candidates", lambda: candidates, encoder, source=data / CANDIDATES, count=len(candidates),
                       locate=lines.get)
    query_index = cache.index("queries", lambda: [q.item for q in queries], encoder, source=data / QUERIES,
                              count=len(queries), dtype="float32", parts={"kind": "query"},
                              instruction=[q.instruction for q in queries],
                              locate={q.item.id: q.line for q in queries}.get)
    query_vectors = query_index.vectors()
    qids = query_index.ids
    if mode == "ranking":
        scores, ranked = pool.search(query_vectors, k=depth)
        itm = None
    else:
        scores, ranked, itm = _rank_lists(queries, qids, query_vectors, pool, qrels)
    positives = {q.item.id: qrels.get(q.item.id, []) for q in queries}
    run = dict(zip(qids, ranked))
    ranking_metrics = [name for name, (kind, _) in parsed.items() if kind != "itm"]
    values = evaluate_run(run, positives, ranking_metrics) if ranking_metrics else {}
    for name, (kind, _) in parsed.items():
        if kind == "itm":
            values[name] = itm_accuracy(*itm)
    results = ZeroShotResults({name: 100 * values[name] for name in metrics}, mode, len(queries), len(candidates),
                              built=cache.stats.built, reused=cache.stats.reused)
    write_trec_run(out / "runs" / "zeroshot.trec", qids, ranked, scores)
    rows = [TaskResult(task=data.name, task_type=mode, dataset=data.name, metric=name, score=value,
                       queries=len(queries), pool=mode, pool_size=len(candidates))
            for name, value in results.metrics.items()]
    info = {"benchmark": "zero-shot", "data": str(data), "mode": mode, "encoder": encoder.fingerprint(),
            "metrics": results.metrics, "cache_dir": str(cache.folder), "encoded": cache.stats.built,
            "reused": cache.stats.reused}
    results.files = write_reports(rows, out, title=f"Zero-shot: {data.name} ({mode})", info=info)
    return results


def _mode(queries: list[ZeroShotQuery], path: Path) -> str:
    with_lists = [q for q in queries if q.candidates is not None]
    if not with_lists:
        return "ranking"
    if len(with_lists) != len(queries):
        first = next(q for q in queries if q.candidates is None)
        raise InputError("some queries have a 'candidates' list and this one has none: give every query one, or none",
                         file=str(path), line=first.line, item=first.item.id, field="candidates")
    return "lists"


def _check_ids(queries, qrels: dict, known: set, data: Path) -> None:
    query_ids = {q.item.id for q in queries}
    for q in queries:
        unknown = [c for c in q.candidates or [] if c not in known]
        if unknown:
            raise InputError(f"candidate id(s) not in {CANDIDATES}: {', '.join(unknown[:5])}", file=str(data / QUERIES),
                             line=q.line, item=q.item.id, field="candidates")
    for qid, dids in qrels.items():
        if qid not in query_ids:
            raise InputError(f"qrels name query {qid!r}, which is not in {QUERIES}", file=str(data / QRELS), item=qid)
        unknown = [d for d in dids if d not in known]
        if unknown:
            raise InputError(f"qrels name candidate(s) not in {CANDIDATES}: {', '.join(unknown[:5])}",
                             file=str(data / QRELS), item=qid)


def _check_itm_lists(queries, qrels: dict, path: Path) -> None:
    for q in queries:
        positives = sum(c in qrels.get(q.item.id, ()) for c in q.candidates)
        if not 0 < positives < len(q.candidates):
            raise InputError(f"ITM accuracy needs a positive and a negative among the candidates; this query has "
                             f"{positives} positive(s) of {len(q.candidates)}", file=str(path), line=q.line,
                             item=q.item.id, field="candidates")


def _default_metrics(mode: str, queries, qrels) -> list[str]:
    if mode == "ranking":
        return list(RANKING_METRICS)
    mixed = all(0 < sum(c in qrels.get(q.item.id, ()) for c in q.candidates) < len(q.candidates) for q in queries)
    return ["R@1", "ITM"] if mixed else ["R@1"]


def _rank_lists(queries, qids, query_vectors, pool, qrels):
    """Rank each query among its own candidates; also the (scores, labels) for ITM accuracy."""
    vectors = pool.vectors()
    by_id = {q.item.id: q for q in queries}
    all_scores, ranked, itm_scores, itm_labels = [], [], [], []
    for qid, vector in zip(qids, query_vectors):
        ids = by_id[qid].candidates
        scores = vectors[[pool.position(c) for c in ids]] @ vector
        order = rank_by_scores(scores, list(range(len(ids))))
        ranked.append([ids[i] for i in order])
        all_scores.append(scores[order])
        positives = set(qrels.get(qid, ()))
        itm_scores.append(scores)
        itm_labels.append([c in positives for c in ids])
    return all_scores, ranked, (itm_scores, itm_labels)
