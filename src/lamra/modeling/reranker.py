"""LamRA-Rank: score (query, candidate) pairs by P("Yes"), or pick the best of a short list."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ..backbone import Backbone, load_backbone
from ..items import DEFAULT_IMAGE_PIXEL_LIMIT, as_item
from ..prompts import (LISTWISE_ANSWER_PREFIX, MAX_RERANK_TEXT_TOKENS, listwise_messages, pointwise_messages,
                       render_chat, truncate_text)
from .batching import plan_batches
from .inputs import PromptInput, collate, last_hidden_states, tokenize_prompt
from .pooling import gather_rows, last_positions

DEFAULT_ALPHA = 0.5


def fuse(retrieval_scores, rerank_scores, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """LamRA's final score: ``alpha * S_ret + (1 - alpha) * S_rank`` (spec section 5)."""
    return alpha * np.asarray(retrieval_scores, dtype=np.float32) + (1 - alpha) * np.asarray(rerank_scores, dtype=np.float32)


class Reranker:
    """Pointwise (``score``) and listwise (``pick``) reranking with a LamRA-Rank checkpoint."""

    def __init__(self, backbone: Backbone, *, max_text_tokens: int = MAX_RERANK_TEXT_TOKENS,
                 image_pixel_limit: int = DEFAULT_IMAGE_PIXEL_LIMIT):
        self.backbone = backbone
        self.max_text_tokens = max_text_tokens
        self.image_pixel_limit = image_pixel_limit
        tokenizer = backbone.tokenizer
        self.yes_id, self.no_id = (tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in ("Yes", "No"))
        self.digit_ids = [tokenizer(str(n), add_special_tokens=False)["input_ids"][0] for n in range(1, 10)]

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, *, lora=None, merge_lora: bool = False, device=None,
                        dtype=None, attn_implementation=None, **kwargs) -> "Reranker":
        backbone = load_backbone(model, lora=lora, merge_lora=merge_lora, device=device, dtype=dtype,
                                 attn_implementation=attn_implementation)
        return cls(backbone, **kwargs)

    def fingerprint(self) -> dict:
        return self.backbone.fingerprint()

    def _truncate(self, text: str) -> str:
        return truncate_text(text, self.backbone.tokenizer, self.max_text_tokens)

    def pointwise_prompt(self, query: Any, candidate: Any, instruction: str | None = None) -> str:
        return render_chat(pointwise_messages(query, candidate, instruction, truncate=self._truncate))

    def listwise_prompt(self, query: Any, candidates: Sequence[Any], instruction: str | None = None) -> str:
        text = render_chat(listwise_messages(query, list(candidates), instruction, truncate=self._truncate))
        return text + LISTWISE_ANSWER_PREFIX

    def _next_token_logits(self, prompts: list[PromptInput], batch_size: int):
        """Logits of the token that follows each prompt: (N, vocab), on the CPU."""
        import torch

        lm_head = self.backbone.output_head()
        out = [None] * len(prompts)
        for rows in plan_batches([len(p.input_ids) for p in prompts], max_batch_size=batch_size):
            inputs = collate(self.backbone, [prompts[i] for i in rows], pixel_limit=self.image_pixel_limit)
            hidden, inputs = last_hidden_states(self.backbone, inputs)
            with torch.inference_mode():
                logits = lm_head(gather_rows(hidden, last_positions(inputs["attention_mask"]))).float().cpu()
            for row, index in enumerate(rows):
                out[index] = logits[row]
        return torch.stack(out) if out else torch.empty(0)

    def score(self, query: Any, candidates: Sequence[Any], instruction: str | None = None, *,
              batch_size: int = 8) -> np.ndarray:
        """P("Yes") for each candidate: softmax over the [Yes, No] logits of the answer."""
        import torch

        query = as_item(query)
        prompts = []
        for candidate in candidates:
            candidate = as_item(candidate)
            images = query.images + candidate.images
            text = self.pointwise_prompt(query, candidate, instruction)
            prompts.append(tokenize_prompt(self.backbone, text, images, pixel_limit=self.image_pixel_limit,
                                           item_id=candidate.id))
        if not prompts:
            return np.zeros(0, dtype=np.float32)
        logits = self._next_token_logits(prompts, batch_size)
        pair = torch.stack([logits[:, self.yes_id], logits[:, self.no_id]], dim=1)
        return torch.softmax(pair, dim=1)[:, 0].numpy().astype(np.float32)

    def pick(self, query: Any, candidates: Sequence[Any], instruction: str | None = None) -> tuple[int, np.ndarray]:
        """Listwise: the 0-based position of the best candidate and the probabilities over positions."""
        import torch

        candidates = [as_item(c) for c in candidates]
        if not 1 <= len(candidates) <= len(self.digit_ids):
            raise ValueError(f"listwise reranking takes 1 to {len(self.digit_ids)} candidates, got {len(candidates)}")
        query = as_item(query)
        images = query.images + [image for c in candidates for image in c.images]
        prompt = tokenize_prompt(self.backbone, self.listwise_prompt(query, candidates, instruction), images,
                                 pixel_limit=self.image_pixel_limit)
        logits = self._next_token_logits([prompt], 1)[0]
        probabilities = torch.softmax(logits[self.digit_ids[: len(candidates)]], dim=0).numpy()
        return int(probabilities.argmax()), probabilities.astype(np.float32)
