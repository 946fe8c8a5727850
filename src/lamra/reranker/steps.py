"""LamRA-Rank's training step: next-token cross-entropy on the labelled answer tokens.

``loss="sum"`` (docs/format.md#reranker-prompts, the paper's L_rank = L_point + L_list): the mean cross-entropy over the
labelled tokens of the pointwise rows plus the mean over those of the listwise rows.
``loss="joint"``: one mean over every labelled token of the batch - what the released code
computes (its collator puts the pointwise and listwise samples of a micro-batch in one batch
and the stock model's loss averages over all labelled tokens).

The batch's rows are forwarded chunk by chunk (``chunk_size`` queries at a time) and each
chunk's backward runs at once: the denominators (labelled tokens per kind in the whole batch)
are known from the collator, so the accumulated gradient is that of the whole batch's loss.
Only the output-head rows of the labelled positions are computed, not the full vocabulary
for every position.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from ..training.args import RERANK_LOSSES
from .collator import IGNORE, KINDS


class AnswerModel(torch.nn.Module):
    """The reranker's LM as one module (so DDP / FSDP / DeepSpeed see its forwards):
    collated rows with ``labels`` in, the cross-entropy of each labelled token out (in order)."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.model = backbone.model  # registers the parameters

    def forward(self, batch: dict) -> torch.Tensor:
        hidden = self.backbone.hidden_states(batch)  # M-RoPE from mm_token_type_ids, as the stock model
        labels = batch["labels"].to(hidden.device)
        targets = labels[:, 1:]
        where = targets != IGNORE  # position t predicts token t + 1
        states = hidden[:, :-1][where]
        logits = self.backbone.output_head()(states).float()
        return torch.nn.functional.cross_entropy(logits, targets[where], reduction="none")


def answer_loss_step(accelerator, model, batch: dict, *, loss: str = "sum") -> dict:
    """Forward and backward of one batch (all its chunks); the loss and its two parts, detached."""
    if loss not in RERANK_LOSSES:
        raise ValueError(f"loss must be one of {RERANK_LOSSES}, got {loss!r}")
    counts = batch["label_counts"]
    total = sum(counts.values())
    work = [(kind, chunk) for kind in KINDS for chunk in batch[kind]]
    sums = {kind: torch.zeros((), dtype=torch.float32) for kind in KINDS}
    for number, (kind, chunk) in enumerate(work):
        last = number == len(work) - 1
        denominator = counts[kind] if loss == "sum" else total
        # DDP all-reduces on the last backward only; the earlier ones accumulate locally.
        with nullcontext() if last else accelerator.no_sync(model):
            with accelerator.autocast():
                token_losses = model(chunk)
            accelerator.backward(token_losses.sum() / max(1, denominator))
        sums[kind] = sums[kind] + token_losses.detach().sum().cpu()
    parts = {f"{kind}_loss": sums[kind] / max(1, counts[kind]) for kind in KINDS}
    # "sum": L_point + L_list, a mean per kind; "joint": one mean over every labelled token.
    value = sum(parts.values()) if loss == "sum" else sum(sums.values()) / max(1, total)
    return {"loss": value, **parts}
