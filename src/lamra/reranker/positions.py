"""Qwen2-VL's 3-D M-RoPE positions for one token sequence, computed without the model.

The reranker keeps M-RoPE (docs/format.md, "Positions": the official rerank code of both releases
uses the stock model class). The rule, as in transformers' ``Qwen2VLModel.get_rope_index`` (and
Qwen2.5-VL's, the same for images; its videos space the time axis by ``tokens_per_second``, which
is why prompts with videos take the plain path):

- text tokens: one position per token, the same in the three sections (time, height, width),
  counting on from the previous token's next position;
- an image (or video) span of ``t * (h/m) * (w/m)`` tokens (``m`` the spatial merge size) laid
  out time-major, then row-major: time ``start + i_t``, height ``start + i_h``, width
  ``start + i_w``; the next token continues at ``start + max(h/m, w/m)`` (for images, ``t`` is 1).

So a sequence's positions only depend on where it starts: the positions of a sequence that
follows a prefix are its own positions from 0, shifted by the prefix's *next position*, which
is ``len(prefix) + rope_delta`` and not ``len(prefix)`` when the prefix holds an image. The
shared-prefix reranking path uses that to number the candidate part exactly as a full forward
would.
"""

from __future__ import annotations

from typing import Sequence


def mrope_positions(input_ids: Sequence[int], grids: Sequence[Sequence[int]], *, vision_token_ids: Sequence[int],
                    spatial_merge_size: int, start: int = 0):
    """(3, len(input_ids)) long positions, and the next position after the last token.

    ``grids`` holds one (t, h, w) patch grid per vision span, in order (an image or a video;
    consecutive vision tokens form one span, as ``<|vision_start|>`` / ``<|vision_end|>``
    always separate two spans in a rendered prompt).
    """
    import torch

    vision = set(int(v) for v in vision_token_ids)
    ids = [int(t) for t in input_ids]
    columns: list[torch.Tensor] = []
    grid_iter = iter(grids)
    position, index = int(start), 0
    while index < len(ids):
        end = index
        is_vision = ids[index] in vision
        while end < len(ids) and (ids[end] in vision) == is_vision:
            end += 1
        if not is_vision:
            columns.append(torch.arange(position, position + end - index).expand(3, -1))
            position += end - index
        else:
            try:
                t, h, w = (int(v) for v in next(grid_iter))
            except StopIteration:
                raise ValueError(f"vision span at token {index} has no grid ({len(grids)} given)") from None
            h, w = h // spatial_merge_size, w // spatial_merge_size
            if t * h * w != end - index:
                raise ValueError(f"vision span at token {index} has {end - index} tokens but its grid "
                                 f"({t}, {h * spatial_merge_size}, {w * spatial_merge_size}) needs {t * h * w}")
            grid_t, grid_h, grid_w = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
            columns.append(torch.stack([grid_t, grid_h, grid_w]).reshape(3, -1) + position)
            position += max(h, w)
        index = end
    if next(grid_iter, None) is not None:
        raise ValueError("more grids than vision spans in the sequence")
    positions = torch.cat(columns, dim=1) if columns else torch.zeros((3, 0), dtype=torch.long)
    return positions.long(), position
