"""LamRA-Ret: one vector per item, from the hidden state just before ``<emb>``."""

from __future__ import annotations

import logging
import os
from typing import Any, Iterable, Sequence

import numpy as np

from ..backbone import Backbone, load_backbone
from ..errors import InputError
from ..items import DEFAULT_IMAGE_PIXEL_LIMIT, Item, as_item
from ..progress import progress_bar
from ..prompts import MAX_RETRIEVAL_TEXT_TOKENS, PROMPT_FORMAT_VERSION, render_prompt, truncate_text
from .batching import plan_batches, prefetch
from .inputs import PromptInput, collate, last_hidden_states, tokenize_prompt
from .pooling import gather_rows, l2_normalize, last_positions, positions_before_token

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64
# Padded tokens per batch when max_batch_tokens="auto": GPUs like big batches; on CPUs smaller
# ones stay in cache (measured in benchmarks/encode_throughput.py, docs/benchmarks.md).
AUTO_MAX_BATCH_TOKENS = {"cuda": 16384, "cpu": 4096}


class Retriever:
    """Embeds text, images, image+text, several images or video frames into one space.

    >>> retriever = Retriever.from_pretrained("path/or/hub-id", lora="adapter/")
    >>> vectors = retriever.encode(["a red car", Path("car.jpg")])   # (2, D) float32, unit norm
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        max_text_tokens: int = MAX_RETRIEVAL_TEXT_TOKENS,
        cut_at_emb: bool = True,
        image_pixel_limit: int = DEFAULT_IMAGE_PIXEL_LIMIT,
    ):
        self.backbone = backbone
        self.max_text_tokens = max_text_tokens
        # Cutting the prompt before <emb> gives the same vector with fewer tokens (spec 2).
        self.cut_at_emb = cut_at_emb
        self.image_pixel_limit = image_pixel_limit

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike,
        *,
        lora: str | os.PathLike | None = None,
        merge_lora: bool = False,
        device: str | None = None,
        dtype: Any = None,
        attn_implementation: str | None = None,
        **kwargs,
    ) -> "Retriever":
        """Load a Qwen2-VL checkpoint (hub id or folder), optionally with a LoRA adapter."""
        backbone = load_backbone(model, lora=lora, merge_lora=merge_lora, device=device, dtype=dtype,
                                 attn_implementation=attn_implementation)
        return cls(backbone, **kwargs)

    # -- what the model reads -------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self.backbone.hidden_size

    @property
    def prompt_version(self) -> str:
        return PROMPT_FORMAT_VERSION

    def fingerprint(self) -> dict:
        """Model, adapter, prompt format and dimension: stored with every artefact."""
        return {**self.backbone.fingerprint(), "prompt_format": PROMPT_FORMAT_VERSION, "dim": self.dim}

    def _truncate(self, text: str) -> str:
        return truncate_text(text, self.backbone.tokenizer, self.max_text_tokens)

    def prompt(self, item: Any, instruction: str | None = None) -> str:
        """The exact chat text the model reads for ``item`` (full LamRA form, with ``<emb>``)."""
        return render_prompt(item, instruction, truncate=self._truncate)

    def tokenize(self, item: Any, instruction: str | None = None) -> list[int]:
        """Token ids fed to the model, image placeholders expanded to each image's size."""
        return self._prepare(as_item(item), instruction).input_ids

    def _prepare(self, item: Item, instruction: str | None) -> PromptInput:
        if item.is_empty() and not instruction:
            raise InputError("empty item: it has no text and no image", item=item.id, field="text")
        text = render_prompt(item, instruction, cut_at_emb=self.cut_at_emb, truncate=self._truncate)
        return tokenize_prompt(self.backbone, text, item.images, pixel_limit=self.image_pixel_limit, item_id=item.id)

    # -- encoding ---------------------------------------------------------------------------

    def encode(
        self,
        items: Iterable[Any],
        instruction: str | Sequence[str | None] | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_batch_tokens: int | str | None = "auto",
        sort_by_length: bool = True,
        show_progress: bool = True,
        convert_to: str = "numpy",
    ):
        """Embed ``items`` into an (N, D) float32 array of unit vectors, in input order.

        ``instruction`` is one task instruction for all items (queries) or one per item;
        candidates take none. Batches are cut by ``max_batch_tokens`` padded tokens after
        sorting by length (``sort_by_length=False`` and ``max_batch_tokens=None`` give plain
        fixed-size batches in input order). ``"auto"`` picks a budget for the device.
        """
        import torch

        items = [as_item(x) for x in items]
        instructions = per_item_instructions(instruction, len(items))
        prepared = []
        for position, (item, instr) in enumerate(zip(items, instructions)):
            try:
                prepared.append(self._prepare(item, instr))
            except InputError as exc:
                raise exc.located(item=item.id if item.id is not None else f"#{position}") from None
        if max_batch_tokens == "auto":
            max_batch_tokens = AUTO_MAX_BATCH_TOKENS.get(self.backbone.device.type, AUTO_MAX_BATCH_TOKENS["cuda"])
        out = torch.empty((len(items), self.dim), dtype=torch.float32)
        batches = plan_batches([len(p.input_ids) for p in prepared], max_batch_size=batch_size,
                               max_batch_tokens=max_batch_tokens, sort_by_length=sort_by_length)
        with progress_bar(len(items), "encoding", enabled=show_progress and len(items) > 0) as bar:
            collated = prefetch(lambda rows: (rows, self._collate([prepared[i] for i in rows])), batches)
            for rows, inputs in collated:
                out[rows] = self._forward(inputs)
                bar.advance(len(rows))
        return out.numpy() if convert_to == "numpy" else out

    def _collate(self, batch: list[PromptInput]) -> dict:
        return collate(self.backbone, batch, pixel_limit=self.image_pixel_limit)

    def _forward(self, inputs: dict):
        hidden, inputs = last_hidden_states(self.backbone, inputs)
        if self.cut_at_emb:
            positions = last_positions(inputs["attention_mask"])
        else:
            positions = positions_before_token(inputs["input_ids"], self.backbone.emb_token_id)
        return l2_normalize(gather_rows(hidden, positions)).cpu()

    @staticmethod
    def similarity(queries, candidates) -> np.ndarray:
        """Cosine similarity of unit vectors: (Q, D) x (C, D) -> (Q, C)."""
        return np.asarray(queries, dtype=np.float32) @ np.asarray(candidates, dtype=np.float32).T


def per_item_instructions(instruction, count: int) -> list:
    """One instruction for every item, or a list with one per item (checked)."""
    if instruction is None or isinstance(instruction, str):
        return [instruction] * count
    instruction = list(instruction)
    if len(instruction) != count:
        raise ValueError(f"got {len(instruction)} instructions for {count} items")
    return instruction

