"""Training LamRA-Rank: the pointwise + listwise answer loss, on the shared loop (:mod:`lamra.training.loop`).

This module only says what the reranker brings to the loop (:func:`reranker_recipe`): its data
(training queries with mined negatives), the answer model, the collator and the step.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

from ..training.args import RerankerTrainingArgs
from ..training.loop import Recipe, train


def reranker_recipe(args: RerankerTrainingArgs) -> Recipe:
    from .collator import RerankCollator
    from .data import RerankTrainDataset
    from .steps import AnswerModel, answer_loss_step

    dataset = RerankTrainDataset(args.data, args.mined, queries=args.train_queries, pool=args.train_pool,
                                 seed=args.seed, max_negatives=args.max_negatives, instructions=args.instructions)
    return Recipe(
        name="reranker",
        dataset=dataset,
        wrap=AnswerModel,
        collator=lambda processor: RerankCollator(processor, max_text_tokens=args.max_text_tokens,
                                                  label_span=args.label_span, chunk_size=args.chunk_size),
        step=partial(answer_loss_step, loss=args.loss),
    )


def train_reranker(args: RerankerTrainingArgs, *, on_log: Callable[[dict], None] | None = None) -> Path:
    """Train LamRA-Rank: a LoRA on the raw Qwen2-VL-Instruct model with the pointwise + listwise
    answer loss; returns the adapter folder (``Reranker.from_pretrained(model, lora=adapter)``).

    Same outputs, resume and logging as :func:`lamra.retriever.trainer.train_retriever`; the log
    also holds the two parts of the loss (``pointwise_loss``, ``listwise_loss``).
    """
    args.check()
    return train(args, reranker_recipe(args), on_log=on_log)
