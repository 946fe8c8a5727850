"""Packed (padding-free) encoding: several text prompts in one row, the same vectors as padded batches.

Under 1-D positions (the ``lamra-qwen2vl`` rule set, docs/format.md "Positions") a prompt's
vector depends only on its own tokens and their positions 0, 1, 2, ...; so prompts can share a
row when positions restart at 0 for each of them and each attends only to itself, causally
(qwen2vl/text_attention.py). Each prompt's last token is pooled, as in a padded batch.

Only text-only prompts are packed: items with images or videos keep the padded path (the vision
tower's features are placed by the model's own code, per padded row). M-RoPE settings are refused:
packing computes 1-D positions only.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .pooling import l2_normalize


def check_packing(settings, network) -> None:
    """Refuse packing where it would not give the padded path's vectors; ready the attention."""
    from ..qwen2vl.text_attention import use_packed_text_attention  # loads transformers' attention code

    if settings.positions != "1d":
        raise ValueError(f"packing=True needs 1-D positions (positions='1d', the lamra-qwen2vl rule set); this "
                         f"model uses positions={settings.positions!r} (rule set {settings.rules!r}), whose M-RoPE "
                         "positions packing does not compute: encode with packing=False")
    use_packed_text_attention(network)


def plan_packing(prompts: Sequence, max_tokens: int) -> tuple[list[list[int]], list[int]]:
    """Packed rows of the text-only prompts' indices (:func:`plan_rows`), and the indices of the
    others (images, videos), in input order, for padded batches."""
    text = [i for i, p in enumerate(prompts) if not p.images and not p.videos]
    rows = plan_rows([len(prompts[i].input_ids) for i in text], max_tokens)
    others = [i for i, p in enumerate(prompts) if p.images or p.videos]
    return [[text[i] for i in row] for row in rows], others


def plan_rows(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group indices into packed rows of at most ``max_tokens`` tokens (a longer prompt gets a row
    of its own). Longest first, so a row holds prompts of similar length: the CPU attention pads
    within a row (text_attention.py)."""
    if max_tokens < 1:
        raise ValueError("the packed row budget must be at least 1 token")
    rows: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if current and used + lengths[index] > max_tokens:
            rows.append(current)
            current, used = [], 0
        current.append(index)
        used += lengths[index]
    if current:
        rows.append(current)
    return rows


def packed_inputs(prompts: Sequence) -> dict:
    """One row of the prompts' ids, positions restarting at 0 for each (all three M-RoPE sections),
    and the boundaries the attention keeps them apart by (transformers' flash-attention keywords)."""
    lengths = [len(p.input_ids) for p in prompts]
    input_ids = torch.tensor([[token for p in prompts for token in p.input_ids]], dtype=torch.long)
    positions = torch.cat([torch.arange(length) for length in lengths])
    bounds = torch.zeros(len(prompts) + 1, dtype=torch.int32)
    bounds[1:] = torch.tensor(lengths).cumsum(0)
    longest = max(lengths)
    return {"input_ids": input_ids, "position_ids": positions.view(1, 1, -1).expand(3, 1, -1),
            "cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds, "max_length_q": longest, "max_length_k": longest}


def embed_packed(backbone, inputs: dict) -> torch.Tensor:
    """Unit vectors (N, D) in float32 for a packed row: each sequence's last token, normalized."""
    hidden = backbone.hidden_states(inputs)[0]
    last = inputs["cu_seq_lens_q"][1:].long() - 1
    return l2_normalize(hidden[last.to(hidden.device)])
