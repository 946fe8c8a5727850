"""Model inputs shared by the retriever and the reranker: prompt text + images -> padded tensors."""

from __future__ import annotations

from dataclasses import dataclass

from ..backbone import Backbone
from ..items import image_size, load_image


@dataclass
class PromptInput:
    """One prompt as token ids (image placeholders expanded) and its image sources, in order."""

    input_ids: list[int]
    images: list
    item_id: str | None = None


def tokenize_prompt(backbone: Backbone, text: str, images: list, *, pixel_limit: int,
                    item_id: str | None = None) -> PromptInput:
    """Tokenize rendered chat text; each ``<|image_pad|>`` becomes as many as its image needs.

    Only image headers are read here (for their size); pixels are decoded at batch time.
    """
    sizes = [image_size(image, pixel_limit=pixel_limit, item=item_id) for image in images]
    ids = backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
    image_token = backbone.image_token_id
    counts = iter(backbone.image_token_count(size) for size in sizes)
    expanded: list[int] = []
    for token in ids:
        expanded.extend([image_token] * next(counts) if token == image_token else [token])
    return PromptInput(expanded, list(images), item_id)


def collate(backbone: Backbone, batch: list[PromptInput], *, pixel_limit: int) -> dict:
    """Right-padded ids, attention mask and, if any image, pixel patches and M-RoPE types."""
    import torch

    pad_id = backbone.tokenizer.pad_token_id
    longest = max(len(p.input_ids) for p in batch)
    input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for row, p in enumerate(batch):
        input_ids[row, : len(p.input_ids)] = torch.tensor(p.input_ids)
        attention_mask[row, : len(p.input_ids)] = 1
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    images = [load_image(src, pixel_limit=pixel_limit, item=p.item_id) for p in batch for src in p.images]
    if images:
        inputs.update(backbone.pixel_inputs(images))
        inputs["mm_token_type_ids"] = (input_ids == backbone.image_token_id).int()
    return inputs


def last_hidden_states(backbone: Backbone, inputs: dict):
    """The language model's last hidden states (B, L, H) for collated inputs (no grad)."""
    import torch

    device, dtype = backbone.device, backbone.dtype
    inputs = {k: v.to(device) for k, v in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    with torch.inference_mode():
        return backbone.language_model()(**inputs, use_cache=False).last_hidden_state, inputs

