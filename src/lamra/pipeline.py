"""Retrieve -> rerank -> fuse (docs/format.md#retrieve-rerank-fuse): LamRA's full pipeline, live or on stored results.

- :class:`Pipeline` - a retriever, an index and an optional reranker with the reranking options
  fixed once: ``retrieve`` (encode, search the index), ``rerank`` (one query's hits: the top K
  reranked and fused, the rest below them) and ``search`` (both). ``lamra search``, the server
  (:mod:`lamra.serving.engine`, which batches the encoding and calls ``rerank`` per query) and
  the functions below all use it.
- :func:`search` / :func:`retrieve` - the same as plain functions.
- :func:`rerank_hits` / :func:`rerank_run` - rerank *stored* retrieval results (ids + scores
  per query, e.g. a TREC run read back with ``lamra.evaluation.report.read_trec_run``), so a
  caller can rerank without encoding anything again.
- :func:`fuse_ranked` - the fusion rule alone (fuse, order, ties in retrieval order), shared by
  the above and ``lamra eval mbeir --rerank`` (:mod:`lamra.evaluation.rerank`).
- :func:`item_from_metadata` - an indexed item (images, video) rebuilt from its stored metadata.

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
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from .errors import InputError
from .items import Item, as_item
from .progress import progress_bar

if TYPE_CHECKING:
    import numpy as np

# (numpy and the reranker module load inside the functions that use them: the CLI reads this
# module's defaults, and `lamra --help` stays quick.)

logger = logging.getLogger(__name__)

# w in the released fusion S_ret + w * S_rank (docs/format.md#retrieve-rerank-fuse); every other task used w = 1.0.
RELEASED_RERANK_WEIGHTS = {"mscoco_task0": 0.5, "mscoco_task3": 0.1}
# LamRA's K: the retriever's top K candidates of a query are reranked (docs/format.md#retrieve-rerank-fuse).
RERANK_TOP_K = 50
# The inference modes of the reranker: P(Yes) per candidate, or listwise windows.
POINTWISE, LISTWISE = "pointwise", "listwise"
MODES = (POINTWISE, LISTWISE)

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
    """An indexed item rebuilt from its stored metadata ({"id", "text", "image" / "images", "video"}:
    a video file, or a list of frame files)."""
    images = meta.get("images") or ([meta["image"]] if meta.get("image") else [])
    video = meta.get("video") or None
    if isinstance(video, list):
        video = [Path(frame) for frame in video]
    return Item(text=meta.get("text") or None, images=[Path(p) for p in images], id=meta.get("id"),
                video=Path(video) if isinstance(video, str) else video)


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


def rerank_scores(reranker, query: Any, items: Sequence[Item], *, mode: str = POINTWISE,
                  instruction: str | None = None, batch_size: int | None = None, window: int | None = None) -> np.ndarray:
    """S_rank of each item: P(Yes) (pointwise) or listwise probability / its maximum (listwise)."""
    import numpy as np

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not items:
        return np.zeros(0, dtype=np.float32)
    if mode == POINTWISE:
        return np.asarray(reranker.score(query, items, instruction, batch_size=batch_size), dtype=np.float32)
    _, probabilities = reranker.pick(query, items, instruction, window=window, batch_size=batch_size)
    return (probabilities / probabilities.max()).astype(np.float32)


def fuse_ranked(head: Sequence[tuple[str, float]], s_rank, alpha: float) -> list[Hit]:
    """The reranked ``head`` ((id, S_ret) in retrieval order) fused with its ``s_rank`` and
    ordered by ``alpha * S_ret + (1 - alpha) * S_rank``, best first; equal fused scores keep
    the retrieval order. The one fusion rule of the CLI, the evaluation and the server."""
    import numpy as np

    from .reranker.model import fuse

    s_rank = np.asarray(s_rank, dtype=np.float32).reshape(-1)
    if len(s_rank) != len(head):
        raise ValueError(f"{len(s_rank)} rerank scores for {len(head)} candidates")
    s_ret = np.array([score for _, score in head], dtype=np.float32)
    fused = fuse(s_ret, s_rank, alpha)
    order = np.argsort(-fused, kind="stable")
    return [Hit(str(head[i][0]), float(head[i][1]), float(s_rank[i]), float(fused[i])) for i in order]


class Pipeline:
    """LamRA's retrieve -> rerank -> fuse over one index, with its options fixed once.

    ``reranker``: None retrieves only (it may be set later, e.g. loaded once the retrieval is
    done). ``top_k``: candidates reranked per query (LamRA's K). ``alpha``: one number, a
    ``{task: alpha}`` mapping, or None for the released per-task weights. ``mode``: "pointwise"
    or "listwise" (``window``: candidates per listwise prompt). ``candidates``: the candidate
    items, a mapping or a function of the id (default: rebuilt from the index's metadata).
    """

    def __init__(self, retriever, index, reranker=None, *, top_k: int = RERANK_TOP_K,
                 alpha: float | Mapping[str, float] | None = None, mode: str = POINTWISE,
                 candidates: Candidates | None = None, batch_size: int | None = None, window: int | None = None):
        self.retriever, self.index, self.reranker = retriever, index, reranker
        self.top_k, self.alpha, self.mode = top_k, alpha, mode
        self.batch_size, self.window = batch_size, window
        self._find = _lookup(candidates if candidates is not None else self._indexed_item)

    def _indexed_item(self, item_id: str) -> Item:
        return item_from_metadata(self.index.metadata(item_id))

    def alpha_for(self, task: str | None = None) -> float:
        """The alpha a query of ``task`` is fused with."""
        return alpha_for(self.alpha, task)

    def depth(self, k: int | None = None, *, reranking: bool | None = None) -> int:
        """Hits to retrieve for ``k`` results (default ``top_k``): at least ``top_k`` when reranking
        (default: when the pipeline has a reranker), so the reranker sees all of its K."""
        reranking = self.reranker is not None if reranking is None else reranking
        if k is None:
            return self.top_k
        return max(k, self.top_k) if reranking else k

    # -- retrieval ------------------------------------------------------------------------------

    def encode(self, queries: Sequence[Any], instruction: str | Sequence[str | None] | None = None,
               **options) -> np.ndarray:
        """The queries' vectors (``instruction``: one for all, or one per query; ``options`` go to
        the retriever's ``encode``, e.g. ``batch_size``)."""
        return self.retriever.encode(list(queries), instruction, show_progress=False, **options)

    def nearest(self, vectors, k: int, **search_params) -> list[list[tuple[str, float]]]:
        """The top ``k`` (id, cosine) of each query vector in the index, best first."""
        scores, ids = self.index.search(vectors, k=k, **search_params)
        return [[(item_id, float(score)) for item_id, score in zip(row_ids, row_scores)]
                for row_ids, row_scores in zip(ids, scores)]

    def retrieve(self, queries: Sequence[Any], k: int | None = None,
                 instruction: str | Sequence[str | None] | None = None, **search_params) -> list[list[tuple[str, float]]]:
        """The top ``k`` (default ``top_k``) (id, cosine) of each query, best first."""
        if not queries:
            return []
        return self.nearest(self.encode(queries, instruction), self.top_k if k is None else k, **search_params)

    # -- reranking ------------------------------------------------------------------------------

    def rerank(self, query: Any, hits: Sequence[tuple[str, float]], *, instruction: str | None = None,
               task: str | None = None, top_k: int | None = None) -> list[Hit]:
        """One query's retrieved ``hits`` ((id, score), any order): the top ``top_k`` (default the
        pipeline's) by retrieval score are reranked and fused; the rest follow in retrieval order."""
        top_k = self.top_k if top_k is None else top_k
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        weight = self.alpha_for(task)
        ordered = sorted(((str(i), float(s)) for i, s in hits), key=lambda hit: -hit[1])
        head, tail = ordered[:top_k], ordered[top_k:]
        items = [self._find(item_id) for item_id, _ in head]
        s_rank = rerank_scores(self.reranker, query, items, mode=self.mode, instruction=instruction,
                               batch_size=self.batch_size, window=self.window)
        return fuse_ranked(head, s_rank, weight) + [Hit(item_id, score) for item_id, score in tail]

    def search(self, queries: Sequence[Any], *, k: int | None = None, instruction: str | None = None,
               task: str | None = None, **search_params) -> list[list[Hit]]:
        """Each query's ranked hits: its top :meth:`depth` retrieved, the top ``top_k`` reranked and
        fused when there is a reranker, the first ``k`` kept (default: ``top_k``)."""
        found = self.retrieve(queries, self.depth(k), instruction, **search_params)
        out = []
        for query, hits in zip(queries, found):
            if self.reranker is None:
                ranked = [Hit(item_id, score) for item_id, score in hits]
            else:
                ranked = self.rerank(query, hits, instruction=instruction, task=task)
            out.append(ranked if k is None else ranked[:k])
        return out


# -- the pipeline as plain functions ------------------------------------------------------------


def rerank_hits(reranker, query: Any, hits: Sequence[tuple[str, float]], candidates: Candidates, *,
                top_k: int = RERANK_TOP_K, alpha: float | Mapping[str, float] | None = None, task: str | None = None,
                mode: str = POINTWISE, instruction: str | None = None, batch_size: int | None = None,
                window: int | None = None) -> list[Hit]:
    """Rerank one query's retrieved ``hits`` ((id, score), any order): the top ``top_k`` by
    retrieval score are reranked and fused; the rest follow in retrieval order."""
    pipeline = Pipeline(retriever=None, index=None, reranker=reranker, top_k=top_k, alpha=alpha, mode=mode,
                        candidates=candidates, batch_size=batch_size, window=window)
    return pipeline.rerank(query, hits, instruction=instruction, task=task)


def rerank_run(reranker, queries: Mapping[str, Any], run: Mapping[str, Sequence[tuple[str, float]]],
               candidates: Candidates, *, top_k: int = RERANK_TOP_K,
               alpha: float | Mapping[str, float] | None = None, tasks: Mapping[str, str] | None = None,
               instructions: Mapping[str, str] | None = None, mode: str = POINTWISE, batch_size: int | None = None,
               window: int | None = None, show_progress: bool = False) -> dict[str, list[Hit]]:
    """Rerank stored retrieval results: ``run`` maps each query id to its (candidate id, score)
    list; ``queries`` maps query ids to items; ``tasks`` / ``instructions`` (by query id) pick
    each query's alpha and instruction. Nothing is encoded again."""
    pipeline = Pipeline(retriever=None, index=None, reranker=reranker, top_k=top_k, alpha=alpha, mode=mode,
                        candidates=candidates, batch_size=batch_size, window=window)
    results: dict[str, list[Hit]] = {}
    with progress_bar(len(run), "reranking", enabled=show_progress) as bar:
        for qid, hits in run.items():
            if qid not in queries:
                raise InputError("the run names a query that is not among the queries given", item=qid,
                                 field="qid")
            results[qid] = pipeline.rerank(queries[qid], hits, task=tasks.get(qid) if tasks else None,
                                           instruction=instructions.get(qid) if instructions else None)
            bar.advance()
    return results


def retrieve(retriever, index, queries: Sequence[Any], *, top_k: int = RERANK_TOP_K,
             instruction: str | Sequence[str | None] | None = None) -> list[list[tuple[str, float]]]:
    """The top ``top_k`` (id, cosine) of each query from ``index``, best first."""
    return Pipeline(retriever, index, top_k=top_k).retrieve(queries, instruction=instruction)


def search(retriever, index, reranker, queries: Sequence[Any], *, top_k: int = RERANK_TOP_K, k: int | None = None,
           alpha: float | Mapping[str, float] | None = None, task: str | None = None,
           mode: str = POINTWISE, instruction: str | None = None, candidates: Candidates | None = None,
           batch_size: int | None = None, window: int | None = None) -> list[list[Hit]]:
    """The whole pipeline for each query: retrieve ``top_k``, rerank them, fuse, keep ``k``
    (default: all ``top_k``). Candidates come from the index's metadata unless given."""
    pipeline = Pipeline(retriever, index, reranker, top_k=top_k, alpha=alpha, mode=mode, candidates=candidates,
                        batch_size=batch_size, window=window)
    # (Only the top_k are retrieved here, so a larger k still gives top_k hits.)
    return pipeline.search(queries, k=None if k is None else min(k, top_k), instruction=instruction, task=task)
