"""The search pipeline behind the HTTP API: encode (batched) -> index search -> rerank -> fuse.

Retrieval and reranking are :class:`lamra.pipeline.Pipeline`'s, as for ``lamra search --rerank``:
the engine encodes and searches the queries of a batch together, then reranks and fuses each
request's hits (its own ``rerank_depth``, k by default) in a thread, within its deadline.

Nothing here knows about HTTP except :class:`ApiError` for refusals; the app turns requests
into :class:`Query` values and results into JSON.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from ..errors import InputError
from ..index.checks import check_fingerprint
from ..items import Item
from ..pipeline import LISTWISE, POINTWISE, Hit, Pipeline, alpha_for, item_from_metadata, rerank_scores
from .batcher import MicroBatcher, QueueFull
from .limits import ApiError, ServeConfig

logger = logging.getLogger(__name__)

class ScoresCandidates(Protocol):
    """What the server needs of a reranker (``lamra.reranker.model.Reranker`` fits)."""

    def score(self, query_item: Any, candidate_items: Sequence[Any]) -> np.ndarray: ...


# The id of every query item: errors about a query's image or video name "query", not a batch slot.
QUERY_ID = "query"


@dataclass(frozen=True)
class Query:
    """One search request, already checked: text, an RGB PIL image and / or a video file, an instruction."""

    text: str | None = None
    image: Any = None
    instruction: str | None = None
    video: Any = None

    def is_empty(self) -> bool:
        return self.text is None and self.image is None and self.video is None

    def item(self) -> Item:
        return Item(text=self.text, images=[self.image] if self.image is not None else [], id=QUERY_ID,
                    video=self.video)

    def with_instruction_in_text(self) -> Item:
        """For a reranker without an ``instruction`` argument: instruction, then the query text."""
        text = " ".join(part for part in (self.instruction, self.text) if part) or None
        return Item(text=text, images=[self.image] if self.image is not None else [], id=QUERY_ID,
                    video=self.video)


@dataclass(frozen=True)
class _Job:
    item: Item
    instruction: str | None
    k: int  # 0: embed only
    prepared: Any = None  # the item's tokenized prompt, when the request already made it


@dataclass(frozen=True)
class _Encoded:
    vector: np.ndarray
    hits: list[tuple[str, float]] | None = None  # (id, retrieval score), best first


class SearchEngine:
    """Owns the retriever, index, optional reranker and the batching queue of one server."""

    def __init__(self, retriever, index, *, reranker: ScoresCandidates | None = None,
                 config: ServeConfig | None = None, untrained: bool = False, metrics=None):
        self.retriever = retriever
        self.metrics = metrics  # a lamra.serving.metrics.Metrics, or None
        self.untrained = untrained
        self.index = index
        self.reranker = reranker
        self.config = config or ServeConfig()
        self.alpha = alpha_for(self.config.alpha)  # an alpha outside [0, 1] fails here, not per request
        # Vectors of another model, adapter or prompt format would give meaningless scores.
        check_fingerprint(dict(index.manifest), retriever.fingerprint(), where=str(index.path or "(in memory)"))
        # Candidates come from the index's metadata (an id it lacks is a 404, as for /items/ID).
        self.pipeline = Pipeline(retriever, index, _ServerReranker(reranker) if reranker is not None else None,
                                 alpha=self.alpha, candidates=lambda item_id: item_from_metadata(self.metadata(item_id)))
        self.batcher: MicroBatcher[_Job, _Encoded] = MicroBatcher(
            self._run_batch, max_batch_size=self.config.max_batch_size,
            max_wait_s=self.config.max_wait_ms / 1000.0, max_queue=self.config.max_queue)
        self._rerank_pool: ThreadPoolExecutor | None = None
        self.started_at = time.time()

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self.batcher.start()
        if self.reranker is not None and self._rerank_pool is None:
            # One thread: the reranker model runs one request at a time, off the event loop.
            self._rerank_pool = ThreadPoolExecutor(1, thread_name_prefix="lamra-rerank")

    def stop(self) -> None:
        self.batcher.stop()
        if self._rerank_pool is not None:
            self._rerank_pool.shutdown(wait=False, cancel_futures=True)
            self._rerank_pool = None

    # -- the model thread -------------------------------------------------------------

    def _run_batch(self, jobs: Sequence[_Job]) -> list[_Encoded]:
        if all(job.prepared is not None for job in jobs):
            # Tokenized once, in the request (which counted its tokens from them).
            vectors = self.retriever.encode_prepared([job.prepared for job in jobs], batch_size=len(jobs),
                                                     show_progress=False)
        else:
            vectors = self.pipeline.encode([job.item for job in jobs], [job.instruction for job in jobs],
                                           batch_size=len(jobs))
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(jobs))
            self.metrics.items_encoded.inc(len(jobs))
        results = [_Encoded(vectors[row]) for row in range(len(jobs))]
        searching = [row for row, job in enumerate(jobs) if job.k > 0]
        if searching:
            # One index call for every query of the batch, at the largest k asked.
            found = self.pipeline.nearest(vectors[searching], max(jobs[row].k for row in searching))
            for hits, row in zip(found, searching):
                # (Every backend returns min(k, count) results; the slice keeps each query its own k.)
                results[row] = _Encoded(vectors[row], hits[: jobs[row].k])
        return results

    async def _submit(self, job: _Job, deadline: float) -> _Encoded:
        try:
            future = self.batcher.submit(job)
        except QueueFull as exc:
            raise ApiError(503, "busy", f"server busy: {exc}; retry shortly") from None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), _remaining(deadline))
        except asyncio.TimeoutError:
            future.cancel()  # still queued: it is skipped; already running: the result is dropped
            raise ApiError(504, "timeout", f"the model did not answer within {self.config.request_timeout_s} s"
                           ) from None
        except InputError as exc:
            raise ApiError(400, "bad_input", str(exc), field=exc.field) from None

    # -- requests ---------------------------------------------------------------------

    async def search(self, query: Query, *, k: int, rerank: bool = False,
                     rerank_depth: int | None = None) -> dict:
        """Top-k for one query: ids with retrieval, rerank and fused scores, best first."""
        if query.is_empty():
            raise ApiError(400, "empty_query", "give a query text, an image or a video", field="text")
        if rerank and self.reranker is None:
            raise ApiError(400, "rerank_unavailable",
                           "this server has no reranker; start it with --rerank MODEL or search with rerank off",
                           field="rerank")
        deadline = time.monotonic() + self.config.request_timeout_s
        depth = max(k, rerank_depth or k) if rerank else k
        started = time.perf_counter()
        encoded = await self._submit(_Job(query.item(), query.instruction, depth), deadline)
        found = encoded.hits or []
        timings = {"retrieve_ms": round((time.perf_counter() - started) * 1000, 2)}
        hits = [{"id": item_id, "retrieval": score, "rerank": None, "fused": None} for item_id, score in found]
        if rerank and hits:
            started = time.perf_counter()
            ranked = await self._rerank(query, found, deadline)
            hits = [{"id": hit.id, "retrieval": hit.retrieval, "rerank": hit.rerank, "fused": hit.fused}
                    for hit in ranked]
            timings["rerank_ms"] = round((time.perf_counter() - started) * 1000, 2)
        hits = hits[:k]
        for rank, hit in enumerate(hits, start=1):
            hit["rank"] = rank
            hit["score"] = hit["fused"] if hit["fused"] is not None else hit["retrieval"]
        return {"results": hits, "reranked": bool(rerank), "timings": timings}

    async def _rerank(self, query: Query, found: list[tuple[str, float]], deadline: float) -> list[Hit]:
        """The pipeline's rerank and fusion of all of ``found`` (equal fused scores keep the
        retrieval order), in the reranker's thread, within the request's deadline."""
        rerank = partial(self.pipeline.rerank, query, found, instruction=query.instruction, top_k=len(found))
        ranked = await self._in_rerank_thread(rerank, deadline)
        if self.metrics is not None:
            self.metrics.candidates_reranked.labels(POINTWISE).inc(len(found))
        return ranked

    async def rerank_documents(self, query: Query, documents: Sequence[Item], *, mode: str = POINTWISE) -> np.ndarray:
        """The reranker's score of each document for ``query``: P(Yes) (pointwise) or, listwise, each
        position's probability from :meth:`~lamra.reranker.model.Reranker.pick` (its windows for long lists)."""
        if self.reranker is None:
            raise ApiError(400, "rerank_unavailable", "this server has no reranker; start it with --rerank MODEL",
                           field="model")
        reranker = self.pipeline.reranker
        if mode == LISTWISE and not callable(getattr(self.reranker, "pick", None)):
            raise ApiError(400, "listwise_unavailable", "this reranker has no listwise head", field="mode")
        deadline = time.monotonic() + self.config.request_timeout_s
        if mode == LISTWISE:
            call = partial(reranker.pick_probabilities, query, documents, query.instruction)
        else:
            call = partial(rerank_scores, reranker, query, documents, mode=POINTWISE, instruction=query.instruction)
        scores = await self._in_rerank_thread(call, deadline)
        if self.metrics is not None:
            self.metrics.candidates_reranked.labels(mode).inc(len(documents))
        return np.asarray(scores, dtype=np.float64)

    async def _in_rerank_thread(self, call, deadline: float):
        future = asyncio.get_running_loop().run_in_executor(self._rerank_pool, call)
        try:
            return await asyncio.wait_for(future, _remaining(deadline))
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"the reranker did not answer within {self.config.request_timeout_s} s"
                           ) from None
        except InputError as exc:
            raise ApiError(400, "bad_input", str(exc), field=exc.field) from None

    async def embed(self, items: Sequence[Item], instruction: str | None = None, *,
                    prepared: Sequence | None = None) -> np.ndarray:
        """(N, D) float32 unit vectors; the items join the same batches as search queries.
        ``prepared``: their prompts as ``retriever.prepare`` made them (not tokenized again)."""
        deadline = time.monotonic() + self.config.request_timeout_s
        prepared = prepared if prepared is not None else [None] * len(items)
        jobs = [self._submit(_Job(item, instruction, 0, ready), deadline) for item, ready in zip(items, prepared)]
        encoded = await asyncio.gather(*jobs)
        return np.stack([e.vector for e in encoded]) if encoded else np.zeros((0, self.retriever.dim), np.float32)

    # -- the collection ---------------------------------------------------------------

    def metadata(self, item_id: str) -> dict:
        """An indexed item's metadata; 404 for an id the index does not hold."""
        try:
            meta = self.index.metadata(item_id)
        except (KeyError, LookupError, InputError):
            meta = None
        if not meta:
            raise ApiError(404, "unknown_id", f"no item with id {item_id!r} in the index", field="id")
        return meta

    def image_path(self, item_id: str) -> Path:
        """The file of an indexed item's first image: a path the index stored, never one from a request."""
        image = self.metadata(item_id).get("image")
        if not image:
            raise ApiError(404, "no_image", f"item {item_id!r} has no image", field="id")
        path = Path(image)
        if not path.is_file():
            raise ApiError(404, "image_missing", f"the image file of item {item_id!r} is no longer on disk",
                           field="id")
        return path

    def retriever_settings(self):
        """The retriever's :class:`~lamra.settings.ModelSettings` (the defaults for a stand-in without)."""
        from ..settings import ModelSettings

        settings = getattr(self.retriever, "settings", None)
        return settings if isinstance(settings, ModelSettings) else ModelSettings()

    def info(self) -> dict:
        from ..qwen2vl.model_source import UNTRAINED_WARNING

        manifest = dict(self.index.manifest)
        return {
            "model": self.retriever.fingerprint(),
            # The LamRA release's rules the vectors are made under (docs/format.md#rule-sets).
            "rules": self.retriever_settings().for_model_type(None).rules,
            "untrained": self.untrained,
            "warnings": [UNTRAINED_WARNING] if self.untrained else [],
            "index": {"manifest": manifest, "count": len(self.index)},  # not its folder: no paths leave
            "reranker": describe_reranker(self.reranker),
            "limits": self.config.public(),
            "batching": self.batcher.stats.as_dict(),
            "uptime_s": round(time.time() - self.started_at, 1),
        }


class _ServerReranker:
    """The server's reranker as the pipeline calls it. The pipeline hands it the :class:`Query`:
    lamra's Reranker places the instruction itself; a reranker whose ``score`` takes no
    ``instruction`` reads it before the query text. The scores are checked, as a wrong count or a
    NaN would reorder the results silently."""

    def __init__(self, reranker: ScoresCandidates):
        self.reranker = reranker
        self.takes_instruction = _accepts(reranker.score, "instruction")

    def score(self, query: Query, candidates: Sequence[Item], instruction: str | None = None, *,
              batch_size: int | None = None) -> np.ndarray:
        if self.takes_instruction:
            scores = self.reranker.score(query.item(), candidates, instruction=instruction)
        else:
            scores = self.reranker.score(query.with_instruction_in_text(), candidates)
        return _checked(scores, len(candidates))

    def pick_probabilities(self, query: Query, candidates: Sequence[Item],
                           instruction: str | None = None) -> np.ndarray:
        """Listwise: each position's probability (the reranker's ``pick``, its windows for long lists)."""
        if _accepts(self.reranker.pick, "instruction"):
            _, probabilities = self.reranker.pick(query.item(), candidates, instruction=instruction)
        else:
            _, probabilities = self.reranker.pick(query.with_instruction_in_text(), candidates)
        return _checked(probabilities, len(candidates))


def _checked(scores, count: int) -> np.ndarray:
    """Scores as float64, refused when their count or a NaN would reorder the results silently."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.shape[0] != count or not np.all(np.isfinite(scores)):
        raise RuntimeError(f"the reranker returned {scores.shape[0]} scores for {count} candidates "
                           "(or non-finite values)")
    return scores


def describe_reranker(reranker) -> dict | None:
    if reranker is None:
        return None
    fingerprint = getattr(reranker, "fingerprint", None)
    details = fingerprint() if callable(fingerprint) else {}
    return {"class": type(reranker).__name__, **(details if isinstance(details, dict) else {})}


def _accepts(function, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
