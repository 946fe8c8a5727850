"""The reranker's forward passes: prompts -> logits of a few answer tokens ("Yes" / "No", digits).

Two ways to the same numbers (the official code reads the next-token logits right after the prompt):

- :func:`plain_answer_logits` - one full forward per prompt (right-padded batches), M-RoPE
  computed by the stock model from ``mm_token_type_ids``: what the official code's forward /
  first ``generate`` step computes. The reference, and the benchmark baseline.
- :func:`shared_prefix_answer_logits` - for prompts that start with the same tokens (the
  pointwise prompts of one query share everything up to ``Candidate:``): the prefix runs once
  and keeps its key/value cache; the candidate parts then run in right-padded batches on
  copies of that cache (expanded along the batch), with M-RoPE positions continuing from the
  prefix's next position (:mod:`.positions`), and the logit read at each row's last real
  token.

Only the output-head rows of the answer tokens are computed (``hidden @ W[ids].T``), not the
whole vocabulary.
"""

from __future__ import annotations

from typing import Sequence

from ..errors import InputError
from ..qwen2vl.backbone import Backbone
from ..qwen2vl.batching import plan_batches
from ..qwen2vl.images import load_image
from ..qwen2vl.processor import VISION_START, PromptInput
from .positions import mrope_positions

VISION_END = "<|vision_end|>"


def tokenize(backbone: Backbone, text: str, images: Sequence = (), videos: Sequence = (), *,
             item_id: str | None = None) -> PromptInput:
    """The processor's tokenization, checked: one image / video per placeholder in ``text``."""
    processor = backbone.processor
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    for name, token, media in (("image", processor.image_token_id, images),
                               ("video", processor.video_token_id, videos)):
        placeholders = sum(1 for t in ids if t == token)
        if placeholders != len(media):
            raise InputError(f"the reranker's prompt shows {placeholders} {name}(s) but the items hold {len(media)}",
                             item=item_id, field=name)
    return processor.tokenize(text, list(images), list(videos), item_id=item_id)


def answer_logits(backbone: Backbone, hidden, token_ids: Sequence[int]):
    """(B, len(token_ids)) float32 logits on the CPU from final hidden states (B, H)."""
    import torch

    head = backbone.output_head()
    index = torch.as_tensor(list(token_ids), device=hidden.device)
    if type(head) is not torch.nn.Linear:  # a wrapped head (e.g. an adapter on it): run it whole
        return head(hidden)[:, index].float().cpu()
    logits = hidden.to(head.weight.dtype) @ head.weight[index].T
    if head.bias is not None:
        logits = logits + head.bias[index]
    return logits.float().cpu()


def _last_rows(hidden, attention_mask):
    import torch

    last = attention_mask.sum(dim=1).to(hidden.device) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def plain_answer_logits(backbone: Backbone, prompts: Sequence[PromptInput], token_ids: Sequence[int], *,
                        batch_size: int = 8):
    """(N, len(token_ids)) float32 logits of the token after each prompt: full forwards."""
    import torch

    out: list = [None] * len(prompts)
    for rows in plan_batches([len(p.input_ids) for p in prompts], max_batch_size=batch_size):
        # The processor's M-RoPE inputs: the stock model computes the 3-D positions (docs/format.md).
        inputs = backbone.processor.collate([prompts[i] for i in rows], positions="mrope")
        with torch.inference_mode():
            hidden = backbone.hidden_states(inputs)
            logits = answer_logits(backbone, _last_rows(hidden, inputs["attention_mask"]), token_ids)
        for row, index in enumerate(rows):
            out[index] = logits[row]
    return torch.stack(out) if out else torch.zeros((0, len(token_ids)))


def shared_prefix_length(prompts: Sequence[PromptInput], backbone: Backbone, *, max_images: int) -> int:
    """How many leading tokens all prompts share and the cached prefix may hold.

    Token ids cannot tell two images of the same size apart, so the prefix holds at most the
    first ``max_images`` images (those every prompt shares by construction: the query's). It
    never ends inside a vision span and leaves every prompt at least one token of its own.
    """
    first = prompts[0].input_ids
    length = min(len(p.input_ids) for p in prompts) - 1
    for prompt in prompts[1:]:
        ids, common = prompt.input_ids, 0
        while common < length and ids[common] == first[common]:
            common += 1
        length = common
    start_id, end_id = (backbone.tokenizer.convert_tokens_to_ids(t) for t in (VISION_START, VISION_END))
    spans, open_at = 0, None
    for index in range(max(length, 0)):
        if first[index] == start_id:
            if spans == max_images:
                return index
            open_at = index
        elif first[index] == end_id and open_at is not None:
            spans, open_at = spans + 1, None
    return open_at if open_at is not None else max(length, 0)


def _pixels(backbone: Backbone, sources: list, item_ids: list) -> dict:
    limit = backbone.settings.image_pixel_limit
    rgba = backbone.settings.rgba
    images = [load_image(src, pixel_limit=limit, item=item_id, rgba=rgba) for src, item_id in zip(sources, item_ids)]
    if not images:
        return {}
    out = backbone.pixel_inputs(images)
    return {"pixel_values": out["pixel_values"].to(backbone.device, backbone.dtype),
            "image_grid_thw": out["image_grid_thw"].to(backbone.device)}


def _cache_keyword(model) -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache`` (the old name is deprecated)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_copies(prefix_cache, batch: int, config):
    """A fresh cache holding ``batch`` copies of the prefix's keys and values."""
    from transformers import DynamicCache

    layers = [(layer.keys.expand(batch, -1, -1, -1), layer.values.expand(batch, -1, -1, -1))
              for layer in prefix_cache.layers]
    return DynamicCache(layers, config=config)


def shared_prefix_answer_logits(backbone: Backbone, prompts: Sequence[PromptInput], token_ids: Sequence[int], *,
                                prefix_images: int, batch_size: int = 16):
    """The logits of :func:`plain_answer_logits`, the common prefix computed once.

    ``prefix_images``: how many leading images every prompt shares (the query's images).
    Prompts with videos, or with no common prefix, take the plain path.
    """
    import torch

    if not prompts:
        return torch.zeros((0, len(token_ids)))
    length = shared_prefix_length(prompts, backbone, max_images=prefix_images)
    if length == 0 or any(p.videos for p in prompts):
        return plain_answer_logits(backbone, prompts, token_ids, batch_size=batch_size)
    model = backbone.language_model()
    device = backbone.device
    start_id = backbone.tokenizer.convert_tokens_to_ids(VISION_START)
    positions_of = dict(vision_token_ids=(backbone.image_token_id,), spatial_merge_size=backbone.merge_size)

    # The prefix, once.
    first = prompts[0]
    prefix_ids = first.input_ids[:length]
    shared = sum(1 for token in prefix_ids if token == start_id)
    pixels = _pixels(backbone, first.images[:shared], [first.item_id] * shared)
    positions, next_position = mrope_positions(prefix_ids, pixels["image_grid_thw"].tolist() if pixels else [],
                                               **positions_of)
    with torch.inference_mode():
        prefix = model(input_ids=torch.tensor([prefix_ids], device=device),
                       attention_mask=torch.ones((1, length), dtype=torch.long, device=device),
                       position_ids=positions[:, None, :].to(device), use_cache=True, **pixels)
    cache_keyword = _cache_keyword(model)
    prefix_cache = getattr(prefix, cache_keyword)

    # The candidate parts, batched on copies of the prefix's cache.
    out: list = [None] * len(prompts)
    suffixes = [p.input_ids[length:] for p in prompts]
    for rows in plan_batches([len(s) for s in suffixes], max_batch_size=batch_size):
        batch = [prompts[i] for i in rows]
        tokens = [suffixes[i] for i in rows]
        width = max(len(t) for t in tokens)
        ids = torch.full((len(rows), width), backbone.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length + width), dtype=torch.long)
        mask[:, :length] = 1
        pixels = _pixels(backbone, [s for p in batch for s in p.images[shared:]],
                         [p.item_id for p in batch for _ in p.images[shared:]])
        grids = iter(pixels["image_grid_thw"].tolist() if pixels else [])
        position_ids = torch.zeros((3, len(rows), width), dtype=torch.long)
        for row, (prompt, row_tokens) in enumerate(zip(batch, tokens)):
            size = len(row_tokens)
            ids[row, :size] = torch.tensor(row_tokens, dtype=torch.long)
            mask[row, length: length + size] = 1
            row_grids = [next(grids) for _ in prompt.images[shared:]]
            row_positions, after = mrope_positions(row_tokens, row_grids, start=next_position, **positions_of)
            position_ids[:, row, :size] = row_positions
            position_ids[:, row, size:] = torch.arange(after, after + width - size)  # padding: never read
        with torch.inference_mode():
            hidden = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           position_ids=position_ids.to(device),
                           **{cache_keyword: _cache_copies(prefix_cache, len(rows), model.config)},
                           use_cache=True, **pixels).last_hidden_state
            logits = answer_logits(backbone, _last_rows(hidden, mask[:, length:]), token_ids)
        for row, index in enumerate(rows):
            out[index] = logits[row]
    return torch.stack(out)
