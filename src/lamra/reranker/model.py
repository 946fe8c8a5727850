"""LamRA-Rank: P("Yes") per (query, candidate) pair, or the best of a list (docs/format.md).

- :meth:`Reranker.score` - pointwise. By default the query part of the prompt (everything up
  to ``Candidate:``) runs once and its key/value cache serves every candidate
  (:mod:`.forward`); ``shared_prefix=False`` runs one full forward per candidate.
  Both give the same scores (tested to 1e-4 in fp32) and neither generates.
- :meth:`Reranker.pick` / :meth:`Reranker.rank_listwise` - listwise: the digit after
  ``Ans: (``; longer lists are windowed (:mod:`.listwise`).
- Scores are read as the official evaluation read them (``settings.rerank_scores ==
  "official"``): after the checkpoint's repetition penalty (:mod:`.scores`); "raw"
  reads the logits unchanged.

The reranker keeps the model's M-RoPE (the official rerank code of both releases uses the stock
model class) and cuts no text at inference (the 256-token cut is a training rule). Its
instruction strings are the rule set's (``settings.rerank_instructions``: the runs of spaces of
the Qwen2-VL release, or the single spaces of the Qwen2.5-VL release; docs/format.md).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ..items import Item, as_item
from ..qwen2vl.backbone import Backbone, load_backbone
from ..qwen2vl.prompts import (
    LISTWISE_ANSWER_PREFIX,
    MAX_LISTWISE_CANDIDATES,
    listwise_messages,
    pointwise_messages,
    render_chat,
)
from ..settings import ModelSettings
from .forward import plain_answer_logits, shared_prefix_answer_logits, tokenize
from .listwise import ranking, tournament
from .scores import NO, YES, checkpoint_repetition_penalty, penalize_repeated, yes_probability

DEFAULT_ALPHA = 0.5
# Candidates (pointwise) or windows (listwise) per forward. On a GPU one batch takes a whole
# top-50: on an H200 the 2B reranked a top-50 of images 10-40% faster in one batch than in
# batches of 16, being bound by per-batch work on the CPU (docs/benchmarks.md).
DEFAULT_BATCH_SIZE = 16
GPU_BATCH_SIZE = 64
# The released reranker was trained on sequences of at most 2048 tokens (docs/format.md); longer
# listwise prompts are split into windows rather than fed whole.
DEFAULT_LISTWISE_MAX_TOKENS = 2048


def fuse(retrieval_scores, rerank_scores, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """LamRA's final score: ``alpha * S_ret + (1 - alpha) * S_rank`` (docs/format.md, "Fusion")."""
    return (alpha * np.asarray(retrieval_scores, dtype=np.float32)
            + (1 - alpha) * np.asarray(rerank_scores, dtype=np.float32))


class Reranker:
    """Pointwise (``score``) and listwise (``pick``, ``rank_listwise``) reranking.

    ``repetition_penalty``: None reads the checkpoint's (its generation_config.json); used
    only when ``settings.rerank_scores`` is "official". ``listwise_window``: most candidates
    per listwise prompt (1-9; the released model was trained on 2-5). ``listwise_max_tokens``:
    longest listwise prompt before a list is windowed. Methods taking ``batch_size`` default to
    :attr:`batch_size`: 64 on a GPU, 16 on the CPU.
    """

    def __init__(self, backbone: Backbone, *, repetition_penalty: float | None = None,
                 listwise_window: int = MAX_LISTWISE_CANDIDATES,
                 listwise_max_tokens: int = DEFAULT_LISTWISE_MAX_TOKENS):
        if not 1 <= listwise_window <= MAX_LISTWISE_CANDIDATES:
            raise ValueError(f"listwise_window must be 1 to {MAX_LISTWISE_CANDIDATES}, got {listwise_window}")
        self.backbone = backbone
        self.checkpoint_penalty = (checkpoint_repetition_penalty(backbone.model) if repetition_penalty is None
                                   else float(repetition_penalty))
        self.listwise_window = listwise_window
        self.listwise_max_tokens = listwise_max_tokens
        tokenizer = backbone.tokenizer
        self.yes_id, self.no_id = (tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in (YES, NO))
        self.digit_ids = [tokenizer(str(n), add_special_tokens=False)["input_ids"][0]
                          for n in range(1, MAX_LISTWISE_CANDIDATES + 1)]

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, *, lora=None, merge_lora: bool = False, device=None,
                        dtype=None, attn_implementation=None, settings: ModelSettings | None = None,
                        repetition_penalty: float | None = None, listwise_window: int = MAX_LISTWISE_CANDIDATES,
                        listwise_max_tokens: int = DEFAULT_LISTWISE_MAX_TOKENS, **setting_overrides) -> "Reranker":
        """Load a LamRA-Rank checkpoint (hub id or folder), optionally with a LoRA adapter.

        ``settings`` (or single fields as keywords, e.g. ``rerank_scores="raw"``) as for the
        retriever; see :class:`lamra.settings.ModelSettings`.
        """
        settings = (settings or ModelSettings.for_model(model, lora)).with_overrides(**setting_overrides)
        backbone = load_backbone(model, lora=lora, merge_lora=merge_lora, device=device, dtype=dtype,
                                 attn_implementation=attn_implementation, settings=settings)
        return cls(backbone, repetition_penalty=repetition_penalty, listwise_window=listwise_window,
                   listwise_max_tokens=listwise_max_tokens)

    @property
    def settings(self) -> ModelSettings:
        return self.backbone.settings

    @property
    def batch_size(self) -> int:
        """Candidates (pointwise) or windows (listwise) per forward unless a call says otherwise."""
        return GPU_BATCH_SIZE if str(self.backbone.device).startswith("cuda") else DEFAULT_BATCH_SIZE

    @property
    def repetition_penalty(self) -> float:
        """The penalty applied to answer logits: the checkpoint's in "official" mode, else 1."""
        return self.checkpoint_penalty if self.settings.rerank_scores == "official" else 1.0

    def fingerprint(self) -> dict:
        return {**self.backbone.fingerprint(), "settings": self.settings.fingerprint(),
                "rules": self.settings.rules, "rerank_instructions": self.settings.rerank_instructions,
                "rerank_scores": self.settings.rerank_scores, "repetition_penalty": self.repetition_penalty}

    # -- prompts ----------------------------------------------------------------------------

    def pointwise_prompt(self, query: Any, candidate: Any, instruction: str | None = None) -> str:
        """The exact chat text of a pointwise pair; the model answers "Yes" or "No"."""
        return render_chat(pointwise_messages(as_item(query), as_item(candidate), instruction,
                                              instructions=self._instructions))

    def listwise_prompt(self, query: Any, candidates: Sequence[Any], instruction: str | None = None) -> str:
        """The exact chat text of a listwise prompt, ending in ``Ans: (`` (the digit comes next)."""
        text = render_chat(listwise_messages(as_item(query), [as_item(c) for c in candidates], instruction,
                                             instructions=self._instructions))
        return text + LISTWISE_ANSWER_PREFIX

    @property
    def _instructions(self) -> str:
        # A reranker made without a model (prompt rendering only) renders the Qwen2-VL release's.
        backbone = getattr(self, "backbone", None)
        settings = getattr(backbone, "settings", None)
        return getattr(settings, "rerank_instructions", None) or "spaced"

    def _pointwise_inputs(self, query: Item, candidates: list[Item], instruction):
        return [tokenize(self.backbone, self.pointwise_prompt(query, c, instruction), query.images + c.images,
                         query.videos + c.videos, item_id=c.id) for c in candidates]

    def _listwise_input(self, query: Item, candidates: list[Item], instruction):
        images = query.images + [image for c in candidates for image in c.images]
        videos = query.videos + [video for c in candidates for video in c.videos]
        return tokenize(self.backbone, self.listwise_prompt(query, candidates, instruction), images, videos,
                        item_id=query.id)

    # -- pointwise ----------------------------------------------------------------------------

    def yes_no_logits(self, query: Any, candidates: Sequence[Any], instruction: str | None = None, *,
                      batch_size: int | None = None, shared_prefix: bool = True):
        """(K, 2) float32 [Yes, No] logits as the scores read them (penalised in "official" mode)."""
        import torch

        query, candidates = as_item(query), [as_item(c) for c in candidates]
        if not candidates:
            return torch.zeros((0, 2))
        prompts = self._pointwise_inputs(query, candidates, instruction)
        token_ids = [self.yes_id, self.no_id]
        batch_size = batch_size or self.batch_size
        if shared_prefix:
            logits = shared_prefix_answer_logits(self.backbone, prompts, token_ids, prefix_images=len(query.images),
                                                 batch_size=batch_size)
        else:
            logits = plain_answer_logits(self.backbone, prompts, token_ids, batch_size=batch_size)
        return penalize_repeated(logits, token_ids, [p.input_ids for p in prompts], self.repetition_penalty)

    def score(self, query: Any, candidates: Sequence[Any], instruction: str | None = None, *,
              batch_size: int | None = None, shared_prefix: bool = True) -> np.ndarray:
        """P("Yes") for each candidate: softmax over its [Yes, No] answer logits (float32, K).

        ``shared_prefix=False`` runs one full forward per candidate (the reference path).
        """
        logits = self.yes_no_logits(query, candidates, instruction, batch_size=batch_size,
                                    shared_prefix=shared_prefix)
        return yes_probability(logits) if len(logits) else np.zeros(0, dtype=np.float32)

    # -- listwise -----------------------------------------------------------------------------

    def pick(self, query: Any, candidates: Sequence[Any], instruction: str | None = None, *,
             window: int | None = None, batch_size: int | None = None) -> tuple[int, np.ndarray]:
        """Listwise: the 0-based position of the best candidate and a probability per position.

        A list that fits one prompt (at most ``window`` candidates, ``listwise_max_tokens``
        tokens) is one forward: the probabilities are the softmax over the digits 1..K after
        ``Ans: (``. A longer list is played as a tournament of windows (see
        :mod:`lamra.reranker.listwise` for how the probabilities combine).
        """
        query, items = as_item(query), [as_item(c) for c in candidates]
        if not items:
            raise ValueError("listwise reranking needs at least one candidate, got none")
        window = window or self.listwise_window
        if not 1 <= window <= MAX_LISTWISE_CANDIDATES:
            raise ValueError(f"window must be 1 to {MAX_LISTWISE_CANDIDATES}, got {window}")
        prompts: dict[tuple, Any] = {}

        def prompt(indices: list[int]):
            key = tuple(indices)
            if key not in prompts:
                prompts[key] = self._listwise_input(query, [items[i] for i in indices], instruction)
            return prompts[key]

        def fits(indices: list[int]) -> bool:
            return len(prompt(indices).input_ids) <= self.listwise_max_tokens

        def score_windows(windows: list[list[int]]) -> list[np.ndarray]:
            return self._listwise_log_probs(query, [prompt(w) for w in windows], [len(w) for w in windows],
                                            batch_size=batch_size)

        return tournament(len(items), score_windows, window=window, fits=fits)

    def rank_listwise(self, query: Any, candidates: Sequence[Any], instruction: str | None = None, *,
                      window: int | None = None, batch_size: int | None = None) -> tuple[list[int], np.ndarray]:
        """A full listwise ranking: candidate positions best first, and the probabilities of :meth:`pick`."""
        if not candidates:
            return [], np.zeros(0, dtype=np.float32)
        _, probabilities = self.pick(query, candidates, instruction, window=window, batch_size=batch_size)
        return ranking(probabilities), probabilities

    def _listwise_log_probs(self, query: Item, prompts: list, sizes: list[int], *, batch_size: int | None):
        import torch

        if not prompts:
            return []
        token_ids = self.digit_ids
        batch_size = batch_size or self.batch_size
        if len(prompts) > 1:  # windows of one round share the query part of the prompt
            logits = shared_prefix_answer_logits(self.backbone, prompts, token_ids, prefix_images=len(query.images),
                                                 batch_size=batch_size)
        else:
            logits = plain_answer_logits(self.backbone, prompts, token_ids, batch_size=batch_size)
        logits = penalize_repeated(logits, token_ids, [p.input_ids for p in prompts], self.repetition_penalty)
        return [torch.log_softmax(row[:size], dim=0).double().numpy() for row, size in zip(logits, sizes)]
