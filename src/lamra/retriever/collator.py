"""Collators: examples -> model inputs, built with the model-free processor (DataLoader workers)."""

from __future__ import annotations

from typing import Callable, Sequence

from ..qwen2vl.processor import LamraProcessor
from ..qwen2vl.prompts import MAX_RETRIEVAL_TEXT_TOKENS, TrainingTextRule, raw_text
from .data import Example

TEXT_RULES = ("raw", "lamra")
SIDES = ("query", "positive", "hard_negative", "distill")  # the batch's parts, in the order the loss takes them


class RetrievalCollator:
    """Queries, positives and (optionally) hard negatives as LamRA-Ret prompts.

    Each side comes as a list of chunks of at most ``chunk_size`` rows (one chunk when it is
    None): gradient caching forwards chunk by chunk, the plain path takes the one chunk.
    ``text_rule`` "lamra" formats and cuts texts to 480 tokens (stage 2), "raw" feeds them as
    they are (stage 1), as the released training did.
    """

    def __init__(self, processor: LamraProcessor, *, text_rule: str = "lamra",
                 max_text_tokens: int = MAX_RETRIEVAL_TEXT_TOKENS, chunk_size: int | None = None):
        if text_rule not in TEXT_RULES:
            raise ValueError(f"text_rule must be one of {TEXT_RULES}, got {text_rule!r}")
        self.processor = processor
        self.prepare_text: Callable[[str], str] = (
            TrainingTextRule(processor.tokenizer, max_text_tokens) if text_rule == "lamra" else raw_text)
        self.chunk_size = chunk_size

    def __call__(self, examples: Sequence[Example]) -> dict:
        batch = {
            "query": self._side([(e.query, e.instruction) for e in examples]),
            "positive": self._side([(e.positive, None) for e in examples]),
            "size": len(examples),
        }
        if examples and examples[0].hard_negative is not None:
            batch["hard_negative"] = self._side([(e.hard_negative, None) for e in examples])
        if examples and examples[0].distill is not None:  # each query's k candidates, query after query
            import torch

            batch["distill"] = self._side([(item, None) for e in examples for item in e.distill[0]])
            batch["teacher"] = torch.tensor([list(e.distill[1]) for e in examples], dtype=torch.float32)
            # Always there when distilling, so every rank gathers the same parts.
            batch["labelled"] = torch.tensor([e.labelled for e in examples], dtype=torch.bool)
        return batch

    def _side(self, items: list) -> list[dict]:
        prompts = [self.processor.embedding_input(item, instruction, prepare_text=self.prepare_text)
                   for item, instruction in items]
        size = self.chunk_size or len(prompts) or 1
        return [self.processor.collate(prompts[start : start + size]) for start in range(0, len(prompts), size)]
