"""The language model's attention for packed rows: several prompts in one row, each attending
causally to itself only.

A packed row (lamra.retriever.packing) comes with its sequences' boundaries as transformers'
flash-attention keywords (``cu_seq_lens_q`` / ``cu_seq_lens_k``, ``max_length_q`` /
``max_length_k``), which the Qwen2-VL decoder hands to its attention function unchanged.
transformers' flash-attention implementations read them natively; sdpa ignores them (it would
let every token attend to the whole row before it), so lamra registers :func:`packed_attention`
in its place (:func:`use_packed_text_attention`), as it does for the vision tower
(vision_attention.py):

- with boundaries, on a GPU in fp16 / bf16: torch's ``varlen_attn`` (flash-attention kernels in
  torch itself; the flash-attn package is not needed): no padding anywhere;
- with boundaries otherwise (CPU, fp32, a torch without ``varlen_attn``): the row's sequences are
  laid side by side, right-padded to the longest, for one causal sdpa call; right padding is
  never attended under a causal mask, so this is exact, and the packer puts prompts of similar
  length in a row, so this padding inside the attention stays small;
- without boundaries (every padded batch, training, the reranker): transformers' sdpa, with the
  mask sdpa gets (the mask function is registered under the same name): the same numbers.

The name holds no "flash": transformers treats such names as flash-attention (it would drop the
padding masks of ordinary batches).
"""

from __future__ import annotations

import inspect

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "lamra_sdpa_packed_text"


def _varlen_options() -> dict | None:
    """Keywords that make torch's ``varlen_attn`` causal with a given scale, or None where this
    torch has no such function (its keywords changed between releases: 2.9 had ``is_causal``,
    later ones ``window_size``)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    parameters = inspect.signature(varlen_attn).parameters
    if "scale" not in parameters:
        return None
    if "window_size" in parameters:
        causal = {"window_size": (-1, 0)}
    elif "is_causal" in parameters:
        causal = {"is_causal": True}
    else:
        return None
    return {"function": varlen_attn, "causal": causal, "gqa": "enable_gqa" in parameters}


_VARLEN = _varlen_options()


def packed_attention(module, query, key, value, attention_mask=None, *, scaling=None, dropout=0.0,
                     cu_seq_lens_q=None, max_length_q=None, **kwargs):
    """query (1, heads, total, dim), key / value (1, kv_heads, total, dim) -> (1, total, heads, dim).

    Runs in every layer of the language model, so its imports are at module level."""
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    # A packed row has no padding mask: attention_mask is None or plain causal over the row, which
    # the boundaries below replace.
    if _VARLEN is not None and _varlen_applies(query):
        return _varlen(query, key, value, cu_seq_lens_q, int(max_length_q), scaling), None
    return _padded_segments(module, query, key, value, cu_seq_lens_q, int(max_length_q), scaling, dropout), None


def _varlen_applies(query) -> bool:
    """torch's varlen attention runs flash-attention kernels: CUDA, 16-bit only."""
    return query.is_cuda and query.dtype in (torch.float16, torch.bfloat16)


def _varlen(query, key, value, cu_seq_lens, max_length, scaling):
    """torch's varlen_attn over the packed row: (total, heads, dim) in and out, causal per sequence."""
    groups = query.shape[1] // key.shape[1]
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (total, heads, dim)
    options = dict(_VARLEN["causal"], scale=scaling)
    if groups > 1:
        if _VARLEN["gqa"]:
            options["enable_gqa"] = True
        else:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    cu = cu_seq_lens.to(device=query.device, dtype=torch.int32)
    out = _VARLEN["function"](q, k, v, cu, cu, max_length, max_length, **options)
    return out.unsqueeze(0)


def _padded_segments(module, query, key, value, cu_seq_lens, max_length, scaling, dropout):
    """One causal sdpa call over the row's sequences side by side, each right-padded to the longest."""
    cu = cu_seq_lens.to(query.device).long()
    lengths = cu[1:] - cu[:-1]
    offsets = torch.arange(max_length, device=query.device)
    real = offsets < lengths[:, None]  # (sequences, max_length)
    # Padding slots read token 0: causal attention never lets a real token see them.
    index = torch.where(real, cu[:-1, None] + offsets, 0)
    # (1, heads, total, dim) -> (heads, sequences, max_length, dim) -> (sequences, heads, max_length, dim)
    q, k, v = (t[0][:, index].transpose(0, 1) for t in (query, key, value))
    out, _ = sdpa_attention_forward(module, q, k, v, None, scaling=scaling, dropout=dropout, is_causal=True)
    return out[real].unsqueeze(0)  # (sequences, max_length, heads, dim) -> (1, total, heads, dim), row order


def use_packed_text_attention(network) -> str:
    """Make ``network``'s language model take packed rows; returns its attention implementation.

    sdpa is switched to :func:`packed_attention` (same results for padded batches); flash-attention
    implementations read the boundaries themselves and stay; others (eager) are refused."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    text_config = network.config.text_config
    implementation = text_config._attn_implementation
    if implementation == "sdpa":
        AttentionInterface.register(NAME, packed_attention)
        AttentionMaskInterface.register(NAME, sdpa_mask)
        text_config._attn_implementation = NAME
        return NAME
    if implementation == NAME or "flash" in implementation:
        return implementation
    raise ValueError(f"packing needs the language model's attention to be 'sdpa' or a flash-attention; this model "
                     f"uses {implementation!r} (load it with attn_implementation='sdpa', or encode with packing=False)")
