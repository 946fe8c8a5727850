"""Retrieve -> rerank -> fuse (spec 5): LamRA's full pipeline, live or on stored results.

- :func:`search` - encode queries, search an index for the top-K, rerank, fuse.
- :func:`rerank_hits` / :func:`rerank_run` - rerank *stored* retrieval results (ids + scores
  per query, e.g. a TREC run read back with ``lamra.evaluation.report.read_trec_run``), so a
  caller can rerank without encoding anything again.
- :func:`fuse_ranked` - the fusion rule alone (fuse, order, ties in retrieval order), shared by
  the above, ``lamra search --rerank``, ``lamra eval mbeir --rerank``
  (:mod:`lamra.evaluation.rerank`) and the server.

Fusion: ``S = alpha * S_ret + (1 - alpha) * S_rank`` over the reranked top-K (the rest keep
their retrieval order below them). ``alpha`` is one number, a ``{task: alpha}`` mapping, or
None for the released per-task defaults. The released evaluation fused ``S_ret + w * S_rank``
with w = 1.0, but 0.5 for mscoco_task0 and 0.1 for mscoco_task3; dividing by ``1 + w`` (a
positive constant for all candidates of a query) keeps every ranking and gives
``alpha = 1 / (1 + w)``: 0.5 by default, 2/3 for mscoco_task0 and 1/1.1 for mscoco_task3.

``S_rank`` is P("Yes") in pointwise mode. In listwise mode it is each candidate's listwise
probability divided by the largest one (its odds against the chosen candidate, in [0, 1] like
P(Yes)), from :meth:`lamra.reranker.model.Reranker.pick`'s tournament.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import InputError
from .items import Item, as_item
from .progress import progress_bar
from .reranker.model import fuse

logger = logging.getLogger(__name__)

# w in the released fusion S_ret + w * S_rank (spec 5); every other task used w = 1.0.
RELEASED_RERANK_WEIGHTS = {"mscoco_task0": 0.5, "mscoco_task3": 0.1}
DEFAULT_TOP_K = 50
MODES = ("pointwise", "listwise")

Candidates = Mapping[str, Any] | Callable[[str], Any]


@dataclass(frozen=True)
class Hit:
    """One ranked candidate: its retrieval score and, when reranked, S_rank and the fused score."""

    id: str
    retrieval: float
    rerank: float | None = None
    fused: float | None = None

    @property
    def score(self) -> float:
        """The score that ordered it: fused when reranked, else retrieval."""
        return self.fused if self.fused is not None else self.retrieval


def released_alpha(task: str | None) -> float:
    """The released evaluation's fusion weight for ``task`` as an alpha (``1 / (1 + w)``)."""
    return 1.0 / (1.0 + RELEASED_RERANK_WEIGHTS.get(task or "", 1.0))


def alpha_for(alpha: float | Mapping[str, float] | None, task: str | None = None) -> float:
    """The alpha one query uses: a number as is, a mapping's entry for ``task`` (else its
    "default", else the released one), or the released per-task default for None."""
    if alpha is None:
        value = released_alpha(task)
    elif isinstance(alpha, Mapping):
        value = alpha[task] if task in alpha else alpha.get("default", released_alpha(task))
    else:
        value = alpha
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"alpha must be within [0, 1], got {value} (task {task!r})")
    return value


def item_from_metadata(meta: Mapping) -> Item:
    """An indexed item rebuilt from its stored metadata ({"id", "text", "image" / "images"})."""
    images = meta.get("images") or ([meta["image"]] if meta.get("image") else [])
    return Item(text=meta.get("text") or None, images=[Path(p) for p in images], id=meta.get("id"))


def _lookup(candidates: Candidates) -> Callable[[str], Item]:
    def find(item_id: str) -> Item:
        try:
            value = candidates(item_id) if callable(candidates) else candidates[item_id]
        except (KeyError, LookupError):
            raise InputError("no candidate item for this id (not in the candidate collection)", item=item_id,
                             field="id") from None
        item = as_item(value)
        return item if item.id is not None else Item.interleaved(item.parts, id=item_id)

    return find


def rerank_scores(reranker, query: Any, items: Sequence[Item], *, mode: str = "pointwise",
                  instruction: str | None = None, batch_size: int | None = None, window: int | None = None) -> np.ndarray:
    """S_rank of each item: P(Yes) (pointwise) or listwise probability / its maximum (listwise)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not items:
        return np.zeros(0, dtype=np.float32)
    if mode == "pointwise":
        return np.asarray(reranker.score(query, items, instruction, batch_size=batch_size), dtype=np.float32)
    _, probabilities = reranker.pick(query, items, instruction, window=window, batch_size=batch_size)
    return (probabilities / probabilities.max()).astype(np.float32)


def rerank_hits(reranker, query: Any, hits: Sequence[tuple[str, float]], candidates: Candidates, *,
                top_k: int = DEFAULT_TOP_K, alpha: float | Mapping[str, float] | None = None, task: str | None = None,
                mode: str = "pointwise", instruction: str | None = None, batch_size: int | None = None,
                window: int | None = None) -> list[Hit]:
    """Rerank one query's retrieved ``hits`` ((id, score), any order): the top ``top_k`` by
    retrieval score are reranked and fused; the rest follow in retrieval order."""
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    weight = alpha_for(alpha, task)
    ordered = sorted(((str(i), float(s)) for i, s in hits), key=lambda hit: -hit[1])
    head, tail = ordered[:top_k], ordered[top_k:]
    find = _lookup(candidates)
    items = [find(item_id) for item_id, _ in head]
    s_rank = rerank_scores(reranker, query, items, mode=mode, instruction=instruction, batch_size=batch_size,
                           window=window)
    return fuse_ranked(head, s_rank, weight) + [Hit(item_id, score) for item_id, score in tail]


def fuse_ranked(head: Sequence[tuple[str, float]], s_rank, alpha: float) -> list[Hit]:
    """The reranked ``head`` ((id, S_ret) in retrieval order) fused with its ``s_rank`` and
    ordered by ``alpha * S_ret + (1 - alpha) * S_rank``, best first; equal fused scores keep
    the retrieval order. The one fusion rule of the CLI, the evaluation and the server."""
    s_rank = np.asarray(s_rank, dtype=np.float32).reshape(-1)
    if len(s_rank) != len(head):
        raise ValueError(f"{len(s_rank)} rerank scores for {len(head)} candidates")
    s_ret = np.array([score for _, score in head], dtype=np.float32)
    fused = fuse(s_ret, s_rank, alpha)
    order = np.argsort(-fused, kind="stable")
    return [Hit(str(head[i][0]), float(head[i][1]), float(s_rank[i]), float(fused[i])) for i in order]


def rerank_run(reranker, queries: Mapping[str, Any], run: Mapping[str, Sequence[tuple[str, float]]],
               candidates: Candidates, *, top_k: int = DEFAULT_TOP_K,
               alpha: float | Mapping[str, float] | None = None, tasks: Mapping[str, str] | None = None,
               instructions: Mapping[str, str] | None = None, mode: str = "pointwise", batch_size: int | None = None,
               window: int | None = None, show_progress: bool = False) -> dict[str, list[Hit]]:
    """Rerank stored retrieval results: ``run`` maps each query id to its (candidate id, score)
    list; ``queries`` maps query ids to items; ``tasks`` / ``instructions`` (by query id) pick
    each query's alpha and instruction. Nothing is encoded again."""
    results: dict[str, list[Hit]] = {}
    with progress_bar(len(run), "reranking", enabled=show_progress) as bar:
        for qid, hits in run.items():
            if qid not in queries:
                raise InputError("the run names a query that is not among the queries given", item=qid,
                                 field="qid")
            results[qid] = rerank_hits(
                reranker, queries[qid], hits, candidates, top_k=top_k, alpha=alpha,
                task=tasks.get(qid) if tasks else None, mode=mode,
                instruction=instructions.get(qid) if instructions else None, batch_size=batch_size, window=window)
            bar.advance()
    return results


def retrieve(retriever, index, queries: Sequence[Any], *, top_k: int = DEFAULT_TOP_K,
             instruction: str | Sequence[str | None] | None = None) -> list[list[tuple[str, float]]]:
    """The top ``top_k`` (id, cosine) of each query from ``index``, best first."""
    if not queries:
        return []
    vectors = retriever.encode(list(queries), instruction, show_progress=False)
    scores, ids = index.search(vectors, k=top_k)
    return [[(item_id, float(score)) for item_id, score in zip(row_ids, row_scores)]
            for row_ids, row_scores in zip(ids, scores)]


def search(retriever, index, reranker, queries: Sequence[Any], *, top_k: int = DEFAULT_TOP_K, k: int | None = None,
           alpha: float | Mapping[str, float] | None = None, task: str | None = None,
           mode: str = "pointwise", instruction: str | None = None, candidates: Candidates | None = None,
           batch_size: int | None = None, window: int | None = None) -> list[list[Hit]]:
    """The whole pipeline for each query: retrieve ``top_k``, rerank them, fuse, keep ``k``
    (default: all ``top_k``). Candidates come from the index's metadata unless given."""
    hits = retrieve(retriever, index, queries, top_k=top_k, instruction=instruction)
    lookup = candidates if candidates is not None else (lambda item_id: item_from_metadata(index.metadata(item_id)))
    out = []
    for query, query_hits in zip(queries, hits):
        ranked = rerank_hits(reranker, query, query_hits, lookup, top_k=top_k, alpha=alpha, task=task, mode=mode,
                             instruction=instruction, batch_size=batch_size, window=window)
        out.append(ranked[:k] if k is not None else ranked)
    return out
