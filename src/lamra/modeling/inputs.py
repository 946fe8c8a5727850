"""Thin wrappers over :class:`lamra.processor.LamraProcessor` for code that holds a Backbone.

The reranker keeps Qwen2-VL's M-RoPE (the official rerank code uses the stock model class,
spec 2), so these build M-RoPE inputs.
"""

from __future__ import annotations

from ..backbone import Backbone
from ..processor import PromptInput

__all__ = ["PromptInput", "tokenize_prompt", "collate", "last_hidden_states"]


def tokenize_prompt(backbone: Backbone, text: str, images: list, *, pixel_limit: int | None = None,
                    item_id: str | None = None, videos: list = ()) -> PromptInput:
    """Tokenize rendered chat text; each vision pad becomes as many as its media needs."""
    return backbone.processor.tokenize(text, images, videos, item_id=item_id)


def collate(backbone: Backbone, batch: list[PromptInput], *, pixel_limit: int | None = None) -> dict:
    """Right-padded ids, attention mask, pixels and M-RoPE token types."""
    return backbone.processor.collate(batch, positions="mrope")


def last_hidden_states(backbone: Backbone, inputs: dict):
    """The language model's last hidden states (B, L, H) for collated inputs (no grad)."""
    import torch

    with torch.inference_mode():
        return backbone.hidden_states(inputs), inputs
