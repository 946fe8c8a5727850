"""``lamra eval mbeir`` as one call: evaluate the retriever, or take the evaluation already in the
output folder, then rerank its runs when asked (Ret and Ret+Rank).

The caller (the CLI) checks the options, hands over the models as factories (so each loads when
its turn comes and the retriever can leave memory before the reranker loads) and prints the
outcome; this module decides what runs, in which order, and on which process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .. import distributed
from ..errors import InputError
from ..pipeline import POINTWISE, RERANK_TOP_K
from .cache import Encoder
from .mbeir import MBEIRResults, evaluate_mbeir
from .rerank import RerankResults, read_evaluation, rerank_mbeir


class StoredEvaluationError(InputError):
    """The output folder holds no evaluation that these options can rerank; ``option`` names the
    option to change (the CLI reports it as the bad one)."""

    def __init__(self, message: str, *, option: str):
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class Reranking:
    """How to rerank the runs: the reranker (loaded when the reranking starts) and the fusion."""

    load_reranker: Callable[[], Any]
    top_k: int = RERANK_TOP_K
    alpha: float | Mapping[str, float] | None = None
    mode: str = POINTWISE
    batch_size: int | None = None


@dataclass
class MBEIROutcome:
    """What one evaluation did. ``retrieval``: None when the stored runs were reranked (nothing
    encoded). ``reranked``: None without reranking, and on every process but the first.
    ``evaluation``: the reranked evaluation's results.json as it was before the reranking."""

    retrieval: MBEIRResults | None = None
    reranked: RerankResults | None = None
    evaluation: dict | None = None


def check_stored(out: str | os.PathLike, root: str | os.PathLike, *, pool: str, split: str, instructions: str,
                 seed: int, rerank_top_k: int) -> dict:
    """The evaluation in ``out`` (its results.json), if it is the one these options describe:
    reranking alone builds on it. Otherwise a :class:`StoredEvaluationError` says what differs."""
    out, root = Path(out), Path(root)
    try:
        report = read_evaluation(out)
    except InputError as exc:
        raise StoredEvaluationError(f"no evaluation to rerank in {out} ({exc}): give --model (or --baseline) to "
                                    "run the retrieval first, or --out with an earlier evaluation",
                                    option="--rerank") from None
    stored_choice = report.get("instruction_choice", "first")
    stored_seed = report.get("instruction_seed") or 0
    mismatches = [(option, given, stored) for option, given, stored in (
        ("--pool", pool, report["pool"]), ("--split", split, report["split"]),
        ("--instructions", instructions, stored_choice),
        ("--seed", seed if instructions == "random" else 0, stored_seed if stored_choice == "random" else 0))
        if given != stored]
    if Path(report["root"]).resolve() != root.resolve():
        mismatches.append(("ROOT", str(root), report["root"]))
    if mismatches:
        said = "; ".join(f"{option} {stored} there, {given} here" for option, given, stored in mismatches)
        raise StoredEvaluationError(f"{out} holds another evaluation ({said}): pass the same options, or --model "
                                    "to evaluate again", option="--rerank")
    if rerank_top_k > int(report["top_k"]):
        raise StoredEvaluationError(f"the stored runs hold the top {report['top_k']} per query; {rerank_top_k} is "
                                    "more", option="--rerank-top-k")
    return report


def evaluate_and_rerank(root: str | os.PathLike, out: str | os.PathLike, *,
                        encoder: Callable[[], Encoder] | None, rerank: Reranking | None = None,
                        tasks: Sequence[str] | None = None, pool: str = "local", split: str = "test",
                        instructions: str = "first", seed: int = 0, show_progress: bool = True,
                        announce: Callable[[str], None] | None = None,
                        started: Callable[[bool], None] | None = None, **evaluation) -> MBEIROutcome:
    """Evaluate on M-BEIR (:func:`~lamra.evaluation.mbeir.evaluate_mbeir`) and, with ``rerank``,
    rerank the runs (:func:`~lamra.evaluation.rerank.rerank_mbeir`).

    ``encoder`` makes the retriever (or a baseline). None, with ``rerank``, reranks the evaluation
    already in ``out`` - checked against these options first - and encodes nothing. Under
    torchrun every process encodes its share; only the first reranks. ``started(stored)`` is
    called when the work starts (``stored``: the stored runs are reranked). ``evaluation``: the
    other options of ``evaluate_mbeir`` (top_k, cache_dir, batch_size, skip_bad ...).
    """
    if encoder is None:
        if rerank is None:
            raise ValueError("give an encoder to evaluate, or a reranking of the stored evaluation")
        report = check_stored(out, root, pool=pool, split=split, instructions=instructions, seed=seed,
                              rerank_top_k=rerank.top_k)
        if started:
            started(True)
        reranked = _rerank(out, root, tasks, rerank, show_progress=show_progress, announce=announce)
        return MBEIROutcome(reranked=reranked, evaluation=report)
    retriever = encoder()
    if started:
        started(False)
    results = evaluate_mbeir(root, retriever, out, tasks=tasks, pool=pool, split=split, instructions=instructions,
                             seed=seed, show_progress=show_progress, announce=announce, **evaluation)
    if rerank is None or not distributed.is_main_process():
        return MBEIROutcome(retrieval=results)
    del retriever  # the retriever leaves memory before the reranker loads
    free_accelerator_memory()
    report = read_evaluation(out)
    reranked = _rerank(out, root, tasks, rerank, show_progress=show_progress, announce=announce)
    return MBEIROutcome(retrieval=results, reranked=reranked, evaluation=report)


def _rerank(out, root, tasks, rerank: Reranking, *, show_progress: bool, announce) -> RerankResults:
    reranker = rerank.load_reranker()
    return rerank_mbeir(out, reranker, root=root, tasks=tasks, top_k=rerank.top_k, alpha=rerank.alpha,
                        mode=rerank.mode, batch_size=rerank.batch_size, show_progress=show_progress,
                        announce=announce)


def free_accelerator_memory() -> None:
    """Give the memory of deleted models back (a GPU keeps it cached otherwise)."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
