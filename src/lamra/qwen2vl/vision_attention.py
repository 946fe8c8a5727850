"""The vision tower's attention with sdpa: images of one size in one call per layer.

Qwen2-VL's vision tower attends within each image (or video frame). With sdpa, transformers
runs that as a Python loop, one attention call per image in every layer, and reads the image
lengths back from the GPU in every layer: for a top-50 of images on an H200 that was 1,600
small calls per batch and left the GPU mostly idle (profile in docs/benchmarks.md). Only an
implementation whose name contains "flash" is handed the whole batch with its boundaries
(``cu_seq_lens_q``), so lamra registers one under such a name (:data:`NAME`): when every image
in the batch has the same number of patches (a top-K or a corpus at one resolution), it is one
batched sdpa call; otherwise it is transformers' own per-image sdpa, as before. The language
model keeps its attention implementation.
"""

from __future__ import annotations

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

# "flash" in the name is what makes transformers pass the packed boundaries (see above).
NAME = "lamra_sdpa_packed_flash_path"


def packed_sdpa(module, query, key, value, attention_mask=None, *, scaling=None, dropout=0.0,
                cu_seq_lens_q=None, max_length_q=None, **kwargs):
    """Attention within each packed segment: query / key / value (1, heads, total, dim) ->
    (1, total, heads, dim), as transformers' per-segment sdpa loop returns it. Runs in every
    vision layer, so its imports are at module level (the module loads with a model)."""
    heads, total, dim = query.shape[1:]
    segments = cu_seq_lens_q.numel() - 1
    if max_length_q is not None and segments * int(max_length_q) == total:
        # Every segment is max_length_q long: (1, heads, segments * L, dim) -> (segments, heads, L, dim).
        length = int(max_length_q)
        q, k, v = (t.reshape(heads, segments, length, dim).transpose(0, 1) for t in (query, key, value))
        out, _ = sdpa_attention_forward(module, q, k, v, None, dropout=dropout, scaling=scaling, is_causal=False)
        return out.reshape(1, total, heads, dim), None
    lengths = (cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]).tolist()
    parts = zip(*(torch.split(t, lengths, dim=2) for t in (query, key, value)))
    outs = [sdpa_attention_forward(module, q, k, v, None, dropout=dropout, scaling=scaling, is_causal=False)[0]
            for q, k, v in parts]
    return torch.cat(outs, dim=1), None


def use_packed_vision_attention(network) -> bool:
    """Switch ``network``'s vision tower from sdpa to :func:`packed_sdpa`; other choices
    (flash-attention, eager) are left alone. Returns whether it switched."""
    from transformers import AttentionInterface

    vision_config = getattr(network.config, "vision_config", None)
    if vision_config is None or vision_config._attn_implementation != "sdpa":
        return False
    AttentionInterface.register(NAME, packed_sdpa)
    vision_config._attn_implementation = NAME
    return True
