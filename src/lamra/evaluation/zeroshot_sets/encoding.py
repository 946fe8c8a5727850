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

    def __init__(self, retriever, processor=None):
        self.retriever = retriever
        self.processor = processor or retriever.processor

    def fingerprint(self) -> dict:
        return {**self.retriever.fingerprint(), "prompt_format": ZEROSHOT_PROMPTS_VERSION,
                "max_pixels": self.processor.settings.max_pixels}

    def at_max_pixels(self, max_pixels: int) -> "PromptEncoder":
        """The same model reading images at another cap (Urban-1K's official collator)."""
        import copy

        from ...qwen2vl.processor import LamraProcessor

        image_processor = copy.deepcopy(self.processor.image_processor)
        image_processor.size["longest_edge"] = max_pixels
        settings = self.processor.settings.with_overrides(max_pixels=max_pixels)
        return PromptEncoder(self.retriever, LamraProcessor(self.processor.tokenizer, image_processor, settings))

    def prompt_input(self, item: Any):
        item = as_item(item)
        text = retrieval_text(item.parts, cut_at_emb=True)
        return self.processor.tokenize(text, item.images, item.videos, item_id=item.id)

    def encode(self, items: Sequence[Any], instruction=None, *, batch_size: int = 64,
               max_batch_tokens: int | str | None = "auto", show_progress: bool = False, **options) -> np.ndarray:
        if instruction is not None and any(i is not None for i in ([instruction] if isinstance(instruction, str)
                                                                     else instruction)):
            raise ValueError("the zero-shot prompts carry their instructions in the parts")
        return self.retriever.encode_prepared([self.prompt_input(item) for item in items], processor=self.processor,
                                              batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                              show_progress=show_progress)


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
        text = rerank_text(query, parts, instructions=reranker.settings.rerank_instructions)
        prompts.append(tokenize(reranker.backbone, text, query_images + images, query_videos + videos))
    token_ids = [reranker.yes_id, reranker.no_id]
    logits = shared_prefix_answer_logits(reranker.backbone, prompts, token_ids, prefix_images=len(query_images),
                                         batch_size=batch_size or reranker.batch_size)
    logits = penalize_repeated(logits, token_ids, [p.input_ids for p in prompts], reranker.repetition_penalty)
    return np.asarray(yes_probability(logits), dtype=np.float32)
