"""Training LamRA-Ret: InfoNCE over the global batch, on the shared loop (:mod:`lamra.training.loop`).

This module only says what the retriever brings to the loop (:func:`retriever_recipe`): its
data (stage-1 pairs or stage-2 M-BEIR queries), the embedding model, the collator and the step.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Callable

from ..training.args import RetrieverTrainingArgs
from ..training.loop import Recipe, train

logger = logging.getLogger(__name__)


def retriever_recipe(args: RetrieverTrainingArgs) -> Recipe:
    from .collator import RetrievalCollator
    from .model import Retriever
    from .steps import EmbeddingModel, gradient_cache_step, plain_step

    step = gradient_cache_step if args.chunk_size else plain_step
    return Recipe(
        name="retriever",
        dataset=build_dataset(args),
        wrap=lambda backbone: EmbeddingModel(Retriever(backbone)),
        collator=lambda processor: RetrievalCollator(processor, text_rule=args.text_rule, chunk_size=args.chunk_size),
        step=partial(step, temperature=args.temperature, distill_weight=args.distill_weight,
                     distill_batch_negatives=args.distill_batch_negatives),
    )


def build_dataset(args: RetrieverTrainingArgs):
    from .data import MBEIRTrainDataset, PairDataset

    if args.data_kind == "pairs":
        return PairDataset(args.data, use_hard_negatives=args.use_hard_negatives)
    # Distillation also learns from queries without a positive (the KL term alone).
    dataset = MBEIRTrainDataset(args.data, queries=args.train_queries, pool=args.train_pool, seed=args.seed,
                                use_hard_negatives=args.use_hard_negatives, unlabelled_ok=bool(args.distill))
    return distill_dataset(args, dataset) if args.distill else dataset


def distill_dataset(args: RetrieverTrainingArgs, base):
    """The scored queries of ``args.distill``, refused if another retriever (than ``args.model``)
    or reranker (than ``args.distill_reranker``, when given) made the scores."""
    from ..qwen2vl.backbone import _model_id
    from .distill import DistillDataset

    reranker = {"model": _model_id(args.distill_reranker)} if args.distill_reranker else None
    dataset = DistillDataset(base, args.distill, top_k=args.distill_top_k,
                             retrieval_weight=args.distill_retrieval_weight,
                             rerank_weight=args.distill_rerank_weight, temperature=args.distill_temperature,
                             retriever={"model": _model_id(args.model), "adapter": None}, reranker=reranker,
                             candidates=args.distill_weight > 0, with_positive=args.distill_with_positive,
                             unlabelled_min_p=args.distill_unlabelled_min_p)
    if dataset.unlabelled and not args.distill_batch_negatives:
        # On the synthetic data such queries, compared only with their own k candidates, sank the retriever.
        logger.warning("%d of the %d distilled queries have no positive and learn by the KL term alone: set "
                       "distill_batch_negatives: true so that it also keeps them apart from the batch's other "
                       "positives (docs/training.md, \"Batch negatives in the KL term\")", dataset.unlabelled,
                       len(dataset))
    return dataset


def train_retriever(args: RetrieverTrainingArgs, *, on_log: Callable[[dict], None] | None = None) -> Path:
    """Train LamRA-Ret: a LoRA (or the full language model) with InfoNCE; returns the adapter folder.

    Writes ``OUTPUT/adapter`` (peft adapter + the tokenizer with ``<emb>``), ``OUTPUT/checkpoints``
    (resumable: weights, optimizer, scheduler, RNG, step), ``OUTPUT/train_log.jsonl``; each
    logged record also goes to ``on_log`` on the main process (the CLI prints it).
    """
    args.check()
    return train(args, retriever_recipe(args), on_log=on_log)  # bad data fails in the recipe, before the model
