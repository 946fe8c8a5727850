"""The model-free half of lamra: tokenizer + image / video processing + prompts -> tensors.

A :class:`LamraProcessor` holds no model, so a DataLoader collator in a worker process can
build batches with it (it pickles), and the retriever, the reranker, training and the server
all turn items into tensors the same way. Its two loaders (:func:`load_tokenizer`,
:func:`load_image_processor`) live here too, so backbone.py imports this module and never the
reverse.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..errors import InputError
from ..items import as_item
from ..settings import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, ModelSettings
from .images import image_size, load_image
from .prompts import EMB_TOKEN, format_text, render_prompt

IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
VISION_START = "<|vision_start|>"


@dataclass
class PromptInput:
    """One prompt as token ids (vision placeholders expanded) and its media, in prompt order."""

    input_ids: list[int]
    images: list = field(default_factory=list)
    videos: list = field(default_factory=list)
    item_id: str | None = None


class LamraProcessor:
    """Turns items and rendered prompts into the tensors a Qwen2-VL forward takes."""

    def __init__(self, tokenizer, image_processor, settings: ModelSettings | None = None):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        # A processor without a model behind it gets the default rule set (load_backbone gives
        # the checkpoint's).
        self.settings = (settings or ModelSettings()).for_model_type(None)
        convert = tokenizer.convert_tokens_to_ids
        self.emb_token_id = convert(EMB_TOKEN)
        self.image_token_id = convert(IMAGE_PAD)
        self.video_token_id = convert(VIDEO_PAD)
        self.vision_start_id = convert(VISION_START)
        self.pad_token_id = tokenizer.pad_token_id

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, settings: ModelSettings | None = None,
                        **hub_kwargs) -> "LamraProcessor":
        settings = (settings or ModelSettings()).for_model_type(None)
        return cls(load_tokenizer(path, **hub_kwargs),
                   load_image_processor(path, max_pixels=settings.max_pixels, min_pixels=settings.min_pixels,
                                        **hub_kwargs),
                   settings)

    # -- sizes ----------------------------------------------------------------------------

    @property
    def merge_size(self) -> int:
        return int(self.image_processor.merge_size)

    def image_token_count(self, size: tuple[int, int]) -> int:
        """How many ``<|image_pad|>`` tokens an image of (width, height) becomes."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        width, height = size
        patch = int(self.image_processor.patch_size)
        pixels = self.image_processor.size
        height, width = smart_resize(height, width, factor=patch * self.merge_size,
                                     min_pixels=pixels["shortest_edge"], max_pixels=pixels["longest_edge"])
        return (height // patch) * (width // patch) // (self.merge_size**2)

    # -- tokens ---------------------------------------------------------------------------

    def tokenize(self, text: str, images: Sequence = (), videos: Sequence = (), *,
                 item_id: str | None = None) -> PromptInput:
        """Tokenize rendered chat text; each image / video pad becomes as many as its media needs.

        Only image headers and video metadata are read here; pixels are decoded at batch time.
        """
        limit = self.settings.image_pixel_limit
        counts = {self.image_token_id: iter([self.image_token_count(image_size(i, pixel_limit=limit, item=item_id))
                                             for i in images])}
        if videos:
            from .video import video_layout

            counts[self.video_token_id] = iter([video_layout(v, self.settings, item=item_id).tokens for v in videos])
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        expanded: list[int] = []
        for token in ids:
            expanded.extend([token] * next(counts[token]) if token in counts else [token])
        return PromptInput(expanded, list(images), list(videos), item_id)

    def embedding_input(self, item: Any, instruction: str | None = None, *,
                        prepare_text: Callable[[str], str] = format_text) -> PromptInput:
        """The LamRA-Ret prompt of ``item``, cut right before ``<emb>``; its last token is pooled.

        Sequences longer than ``settings.max_tokens`` (0: no cap, the Qwen2.5-VL release) are cut
        there and their last kept token is pooled: exactly the Qwen2-VL release's evaluation, which
        truncates the whole prompt and, when the cut removed ``<emb>``, pools index -1
        (docs/format.md, "Truncation").
        """
        item = as_item(item)
        if item.is_empty() and not instruction:
            raise InputError("empty item: it has no text, image or video", item=item.id, field="text")
        text = render_prompt(item, instruction, cut_at_emb=True, prepare_text=prepare_text)
        prompt = self.tokenize(text, item.images, item.videos, item_id=item.id)
        cap = self.settings.max_tokens
        if cap and len(prompt.input_ids) >= cap:
            prompt = self._cut(prompt, cap)
        return prompt

    def _cut(self, prompt: PromptInput, cap: int) -> PromptInput:
        kept, dropped = prompt.input_ids[:cap], prompt.input_ids[cap:]
        if self.image_token_id in dropped or self.video_token_id in dropped:
            raise InputError(f"the prompt is {len(prompt.input_ids)} tokens and the cut at max_tokens={cap} "
                             "would split an image or video; use fewer or smaller images, or raise max_tokens",
                             item=prompt.item_id, field="text")
        return PromptInput(kept, prompt.images, prompt.videos, prompt.item_id)

    # -- tensors --------------------------------------------------------------------------

    def pixel_inputs(self, images: list) -> dict:
        """Pixel patches and grids for RGB PIL images, in order."""
        out = self.image_processor(images=images, return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

    def collate(self, batch: Sequence[PromptInput], *, positions: str | None = None) -> dict:
        """Right-padded ids and mask, pixels of every image and video, and positions.

        ``positions="1d"`` (the Qwen2-VL LamRA-Ret) adds explicit ``position_ids`` 0, 1, 2, ...
        per row in all three M-RoPE sections; ``"mrope"`` (the Qwen2.5-VL LamRA-Ret, the
        reranker) adds ``mm_token_type_ids``, without which transformers 5 silently falls back
        to 1-D positions, so that the model computes its own 3-D positions (following the
        attention mask, as the official left-padded evaluation's did).
        """
        import torch

        positions = positions or self.settings.positions
        longest = max(len(p.input_ids) for p in batch)
        input_ids = torch.full((len(batch), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, prompt in enumerate(batch):
            input_ids[row, : len(prompt.input_ids)] = torch.tensor(prompt.input_ids)
            attention_mask[row, : len(prompt.input_ids)] = 1
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        limit = self.settings.image_pixel_limit
        images = [load_image(src, pixel_limit=limit, item=p.item_id, rgba=self.settings.rgba)
                  for p in batch for src in p.images]
        if images:
            inputs.update(self.pixel_inputs(images))
        videos = [(v, p.item_id) for p in batch for v in p.videos]
        if videos:
            from .video import load_video, video_pixel_inputs

            videos = [load_video(v, self.settings, item=item_id) for v, item_id in videos]
            inputs.update(video_pixel_inputs(videos, self.image_processor))
        if positions == "1d":
            inputs["position_ids"] = one_d_positions(attention_mask)
        elif images or videos:
            types = torch.zeros_like(input_ids, dtype=torch.int)
            types[input_ids == self.image_token_id] = 1
            types[input_ids == self.video_token_id] = 2
            inputs["mm_token_type_ids"] = types
        return inputs


def load_tokenizer(path: str | os.PathLike, **hub_kwargs):
    """The checkpoint's tokenizer with ``<emb>`` added (or found, if the checkpoint saved it)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), **hub_kwargs)
    if EMB_TOKEN not in tokenizer.get_vocab():
        # A plain added token, as LamRA does: it lands right after the last existing token.
        tokenizer.add_tokens([EMB_TOKEN])
    tokenizer.padding_side = "right"
    return tokenizer


def load_image_processor(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                         min_pixels: int = DEFAULT_MIN_PIXELS, **hub_kwargs):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil.from_pretrained(str(path), min_pixels=min_pixels, max_pixels=max_pixels,
                                                    **hub_kwargs)


def one_d_positions(attention_mask):
    """Plain positions 0, 1, 2, ... of each right-padded row, in all three M-RoPE sections.

    This is what the Qwen2-VL LamRA-Ret computed (docs/format.md, "Positions"): the decoder called with
    ``position_ids=None`` numbers every token, image tokens included, by its place in the row.
    """
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return positions.unsqueeze(0).expand(3, -1, -1).contiguous()
