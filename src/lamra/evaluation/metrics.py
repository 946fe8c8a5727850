"""Retrieval metrics of the LamRA paper, each tied to the definition it follows.

A *run* maps a query id to its ranked candidate ids, best first; the order IS the ranking
(ties in score were already broken by whoever ranked: lamra's index breaks them by the lower
candidate position). *qrels* map a query id to its positive candidate ids.

- ``recall_at_k`` - M-BEIR's Recall@K (UniIR ``compute_recall_at_k``): a HIT RATE, 1 when any
  positive is in the top K, else 0, averaged over queries. It is trec_eval's ``success@K``,
  computed here with ir-measures (``Success@K``, pytrec_eval backend).
- ``r_at_1`` - R@1 of the zero-shot tables (Flickr30K, ShareGPT4V, Urban-1K, GeneCIS, ...): the
  same hit rate at K=1.
- ``map_at_k`` - CIRCO's mAP@K: per query (1 / min(K, |G|)) * sum over ranks k <= K of
  P@k * rel(k), averaged. trec_eval's ``map_cut.K`` (ir-measures ``AP@K``) is the same sum
  divided by |G| instead, so the library's per-query value is rescaled by |G| / min(K, |G|).
- ``itm_accuracy`` - image-text matching accuracy (CC-Neg, Sugar-Crepe): a query is right when
  its best positive scores strictly above its best negative (a tie is wrong), averaged; with 2
  candidates that is "positive > negative". Plain numpy (no ranking library defines it).

Averaging follows UniIR: every query in the run or the qrels counts; a query with no positives
or no results scores 0 (trec_eval would instead skip queries missing from either).
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping, Sequence

import numpy as np

Run = Mapping[str, Sequence[str]]
Qrels = Mapping[str, Iterable[str]]

_METRIC_NAME = re.compile(r"^(?:(?P<kind>recall|r|map|mAP)@(?P<k>\d+)|(?P<itm>itm))$", re.IGNORECASE)


def _ir_measures():
    try:
        import ir_measures
    except ImportError:  # pragma: no cover - a dependency of the eval extra
        from ..errors import LamraError

        raise LamraError("the metrics need ir-measures: pip install 'ir-measures>=0.3.7,<0.5'") from None
    return ir_measures


def _library_scores(run: Run) -> list:
    """The run as ir-measures ScoredDocs whose scores follow the given order strictly.

    trec_eval re-sorts by score and breaks ties by document id; strictly decreasing scores
    keep the caller's ranking (and its tie-breaking) intact.
    """
    ScoredDoc = _ir_measures().ScoredDoc
    docs = []
    for qid, ranked in run.items():
        length = len(ranked)
        seen = set()
        for position, did in enumerate(ranked):
            if did in seen:
                raise ValueError(f"query {qid!r}: candidate {did!r} is ranked twice")
            seen.add(did)
            docs.append(ScoredDoc(qid, did, float(length - position)))
    return docs


def _library_qrels(qrels: Qrels) -> list:
    Qrel = _ir_measures().Qrel
    return [Qrel(qid, did, 1) for qid, dids in qrels.items() for did in sorted(dids)]


def per_query(run: Run, qrels: Qrels, metrics: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{metric: {qid: value}}`` for metric names like "Recall@5", "R@1", "MAP@5" (0..1)."""
    ir_measures = _ir_measures()
    AP, Success = ir_measures.AP, ir_measures.Success
    run = {str(qid): [str(did) for did in ranked] for qid, ranked in run.items()}
    qrels = {str(qid): {str(did) for did in dids} for qid, dids in qrels.items()}
    queries = sorted(set(run) | set(qrels))
    parsed = {name: _parse(name) for name in metrics}
    if any(kind == "itm" for kind, _ in parsed.values()):
        raise ValueError("ITM accuracy needs scores, not a run: use itm_accuracy(...)")
    measures = {name: (Success @ k if kind == "recall" else AP @ k) for name, (kind, k) in parsed.items()}
    names_by_measure: dict[str, list[str]] = {}
    for name, measure in measures.items():
        names_by_measure.setdefault(str(measure), []).append(name)
    values = {name: dict.fromkeys(queries, 0.0) for name in metrics}
    positives = {qid: len(dids) for qid, dids in qrels.items()}
    library_qrels = _library_qrels(qrels)
    if not run or not library_qrels:
        return values
    for result in ir_measures.iter_calc(list(set(measures.values())), library_qrels, _library_scores(run)):
        for name in names_by_measure.get(str(result.measure), ()):
            kind, k = parsed[name]
            value = float(result.value)
            if kind == "map":  # trec's AP@K divides by |G|; CIRCO divides by min(K, |G|)
                count = positives.get(result.query_id, 0)
                value = value * count / min(k, count) if count else 0.0
            values[name][result.query_id] = value
    return values


def evaluate_run(run: Run, qrels: Qrels, metrics: Sequence[str]) -> dict[str, float]:
    """Mean of each metric over all queries of the run and the qrels (0..1)."""
    table = per_query(run, qrels, metrics)
    return {name: (float(np.mean(list(values.values()))) if values else 0.0) for name, values in table.items()}


def recall_at_k(run: Run, qrels: Qrels, k: int) -> float:
    """M-BEIR Recall@K: the share of queries with a positive in the top K."""
    return evaluate_run(run, qrels, [f"Recall@{k}"])[f"Recall@{k}"]


def r_at_1(run: Run, qrels: Qrels) -> float:
    return recall_at_k(run, qrels, 1)


def map_at_k(run: Run, qrels: Qrels, k: int) -> float:
    """CIRCO's mAP@K."""
    return evaluate_run(run, qrels, [f"MAP@{k}"])[f"MAP@{k}"]


def itm_accuracy(scores: Sequence[Sequence[float]], labels: Sequence[Sequence[bool]]) -> float:
    """Image-text matching accuracy: a query is right when max(positive scores) > max(negative scores).

    ``scores[i]`` are query i's candidate scores and ``labels[i]`` say which are positive; each
    query needs at least one positive and one negative.
    """
    right = []
    for number, (row, flags) in enumerate(zip(scores, labels, strict=True)):
        row, flags = np.asarray(row, dtype=np.float64), np.asarray(flags, dtype=bool)
        if row.shape != flags.shape or not flags.any() or flags.all():
            raise ValueError(f"query {number}: needs as many labels as scores, and a positive and a negative")
        right.append(row[flags].max() > row[~flags].max())
    return float(np.mean(right)) if right else 0.0


def _parse(name: str) -> tuple[str, int]:
    match = _METRIC_NAME.match(name.strip())
    if not match:
        raise ValueError(f"unknown metric {name!r}: use Recall@K (or R@K), MAP@K or ITM")
    if match["itm"]:
        return "itm", 0
    k = int(match["k"])
    if k < 1:
        raise ValueError(f"{name}: K must be at least 1")
    return ("map" if match["kind"].lower() == "map" else "recall"), k


def parse_metric(name: str) -> tuple[str, int]:
    """("recall" | "map" | "itm", K) of a metric name; raises ValueError for an unknown one."""
    return _parse(name)


def rank_by_scores(scores: np.ndarray, ids: Sequence[str], k: int | None = None) -> list[str]:
    """Candidate ids by descending score, ties broken by the lower position (as the index does)."""
    scores = np.asarray(scores)
    order = np.lexsort((np.arange(len(scores)), -scores))
    return [ids[i] for i in (order if k is None else order[:k])]
