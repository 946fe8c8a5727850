"""How LamRA-Rank's answer logits become scores (docs/format.md, "Rerank scores"): pure tensor functions.

The official evaluation read the pointwise logits from ``generate(..., do_sample=False,
output_scores=True).scores[0]``: the first step's logits *after* the checkpoint's logits
processors. Of those, only the repetition penalty acts under greedy decoding: Qwen2-VL-Instruct's
``generation_config.json`` sets ``repetition_penalty`` 1.05 and LamRA-Rank inherits it. It works
as transformers' ``RepetitionPenaltyLogitsProcessor``: every token id that occurs anywhere in
the input ids (the whole prompt, special and image tokens included) has its logit divided by
the penalty when positive and multiplied by it when negative. "Yes" and "No" both occur in the
pointwise instruction, so both are penalised; the function below checks occurrence per row
rather than assuming it.

The penalty is strictly increasing on each logit, so among tokens that are all penalised (or
all not) it never changes which one is larger: one query's candidates keep their order by
P(Yes) when Yes and No occur in every prompt. It does change the probabilities, hence fused
scores ``alpha * S_ret + (1 - alpha) * S_rank``.
"""

from __future__ import annotations

from typing import Sequence

# The answers: training teaches them (the collator), scoring reads their logits.
YES, NO = "Yes", "No"  # pointwise


def checkpoint_repetition_penalty(model) -> float:
    """The ``repetition_penalty`` of a model's generation config (the checkpoint's
    ``generation_config.json``, which transformers loads with the weights); 1.0 when unset."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "generation_config", None)
    penalty = getattr(config, "repetition_penalty", None) if config is not None else None
    penalty = 1.0 if penalty is None else float(penalty)
    if penalty <= 0:
        raise ValueError(f"repetition_penalty must be positive, got {penalty}")
    return penalty


def penalize_repeated(logits, token_ids: Sequence[int], prompt_ids: Sequence[Sequence[int]], penalty: float):
    """Apply the repetition penalty to selected logits, as ``generate`` would.

    ``logits`` (B, n) are the logits of ``token_ids`` (n vocabulary ids) after each of B prompts
    whose token ids are ``prompt_ids[b]``. A column is penalised in row b when its token id
    occurs in ``prompt_ids[b]``. Returns a new float tensor.
    """
    import torch

    logits = torch.as_tensor(logits, dtype=torch.float32)
    if penalty == 1.0:
        return logits.clone()
    if logits.shape != (len(prompt_ids), len(token_ids)):
        raise ValueError(f"logits have shape {tuple(logits.shape)}; expected ({len(prompt_ids)}, {len(token_ids)})")
    columns = torch.as_tensor(list(token_ids), dtype=torch.long)
    occurs = torch.stack([torch.isin(columns, torch.as_tensor(list(ids), dtype=torch.long)) for ids in prompt_ids]) \
        if len(prompt_ids) else torch.zeros((0, len(token_ids)), dtype=torch.bool)
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(occurs, penalised, logits)


def yes_probability(yes_no_logits):
    """P("Yes") = softmax over the [Yes, No] logits (B, 2), first column; float32 numpy."""
    import numpy as np
    import torch

    pair = torch.as_tensor(yes_no_logits, dtype=torch.float32)
    return torch.softmax(pair, dim=1)[:, 0].numpy().astype(np.float32)
