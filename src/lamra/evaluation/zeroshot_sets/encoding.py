"""The two models reading the sets' exact prompts.

lamra's :class:`~lamra.retriever.Retriever` and :class:`~lamra.reranker.Reranker` build LamRA's
M-BEIR prompts (formatted text, the instruction before the text); the zero-shot evaluation feeds
other shapes (raw text, instructions before images, the singular suffix after several images).
Here the parts of :mod:`.prompts` are rendered as they are and go through the models' own
tokenization, batching and forwards. Nothing is cut: the official zero-shot collator truncates
nothing (M-BEIR's does).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ...items import Item, as_item
from .prompts import ZEROSHOT_PROMPTS_VERSION, media, rerank_text, retrieval_text


def entry_item(parts: Sequence, item_id: str) -> Item:
    """An item whose parts are the prompt's parts in order (instruction and suffix included)."""
    return Item.interleaved(list(parts), id=item_id)


class PromptEncoder:
    """A retriever that embeds each item's parts as rendered by :func:`.prompts.retrieval_text`
    (the evaluation's encoder protocol: ``encode`` and ``fingerprint``)."""

    def __init__(self, retriever):
        self.retriever = retriever

    def fingerprint(self) -> dict:
        return {**self.retriever.fingerprint(), "prompt_format": ZEROSHOT_PROMPTS_VERSION}

    def prompt_input(self, item: Any):
        item = as_item(item)
        text = retrieval_text(item.parts, cut_at_emb=True)
        return self.retriever.processor.tokenize(text, item.images, item.videos, item_id=item.id)

    def encode(self, items: Sequence[Any], instruction=None, *, batch_size: int = 64,
               max_batch_tokens: int | str | None = "auto", show_progress: bool = False, **options) -> np.ndarray:
        import torch

        from ...progress import progress_bar
        from ...qwen2vl.batching import plan_batches, prefetch
        from ...retriever.model import AUTO_MAX_BATCH_TOKENS

        if instruction is not None and any(i is not None for i in ([instruction] if isinstance(instruction, str)
                                                                     else instruction)):
            raise ValueError("the zero-shot prompts carry their instructions in the parts")
        retriever = self.retriever
        prepared = [self.prompt_input(item) for item in items]
        if max_batch_tokens == "auto":
            device = retriever.backbone.device.type
            max_batch_tokens = AUTO_MAX_BATCH_TOKENS.get(device, AUTO_MAX_BATCH_TOKENS["cuda"])
        out = torch.empty((len(prepared), retriever.dim), dtype=torch.float32)
        batches = plan_batches([len(p.input_ids) for p in prepared], max_batch_size=batch_size,
                               max_batch_tokens=max_batch_tokens, sort_by_length=True)
        collate = retriever.processor.collate
        was_training = retriever.backbone.model.training
        retriever.backbone.eval()
        try:
            with progress_bar(len(prepared), "encoding", enabled=show_progress and len(prepared) > 0) as bar:
                for rows, inputs in prefetch(lambda rows: (rows, collate([prepared[i] for i in rows])), batches):
                    with torch.inference_mode():
                        out[rows] = retriever.embed(inputs).cpu()
                    bar.advance(len(rows))
        finally:
            retriever.backbone.train(was_training)
        return out.numpy()


def score_pairs(reranker, query: Sequence, candidates: Sequence[Sequence], *,
                batch_size: int | None = None) -> np.ndarray:
    """P("Yes") of each (query, candidate) pointwise prompt of :func:`.prompts.rerank_text`, read as
    :meth:`lamra.reranker.Reranker.score` reads it (the query's prefix computed once)."""
    from ...reranker.forward import shared_prefix_answer_logits, tokenize
    from ...reranker.scores import penalize_repeated, yes_probability

    if not candidates:
        return np.zeros(0, dtype=np.float32)
    query_images, query_videos = media(query)
    prompts = []
    for parts in candidates:
        images, videos = media(parts)
        prompts.append(tokenize(reranker.backbone, rerank_text(query, parts), query_images + images,
                                query_videos + videos))
    token_ids = [reranker.yes_id, reranker.no_id]
    logits = shared_prefix_answer_logits(reranker.backbone, prompts, token_ids, prefix_images=len(query_images),
                                         batch_size=batch_size or reranker.batch_size)
    logits = penalize_repeated(logits, token_ids, [p.input_ids for p in prompts], reranker.repetition_penalty)
    return np.asarray(yes_probability(logits), dtype=np.float32)
