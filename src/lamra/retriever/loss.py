"""Losses: tensors in, scalar out. Embeddings are L2-normalised before they get here."""

from __future__ import annotations

import torch

from ..training.args import DEFAULT_TEMPERATURE


def info_nce(queries: torch.Tensor, positives: torch.Tensor, hard_negatives: torch.Tensor | None = None, *,
             temperature: float = DEFAULT_TEMPERATURE, gather: bool = True,
             labelled: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE with in-batch negatives: query i's positive is candidate i, every other candidate
    (other queries' positives, then any explicit hard negatives) is a negative.

    Inputs are unit vectors (B, D). With ``gather`` and a process group, every rank's queries
    and candidates join one global batch (gradients flow back to their owners), so all ranks
    compute the same loss: the paper's global-batch negatives. ``labelled`` (B,) bool: the mean
    is over the rows where it is true (a query without a known positive brings a stand-in that
    is only a negative for the others); zero, with a graph, when no row is.
    """
    if gather:
        queries, positives, hard_negatives, labelled = gather_batch(queries, positives, hard_negatives, labelled)
    candidates = positives if hard_negatives is None else torch.cat([positives, hard_negatives])
    logits = queries.float() @ candidates.float().T / temperature
    labels = torch.arange(queries.shape[0], device=queries.device)
    if labelled is None:
        return torch.nn.functional.cross_entropy(logits, labels)
    labelled = labelled.to(queries.device).bool()
    if not labelled.any():
        return logits.sum() * 0.0
    return torch.nn.functional.cross_entropy(logits[labelled], labels[labelled])


def gather_batch(queries: torch.Tensor, positives: torch.Tensor, hard_negatives: torch.Tensor | None = None,
                 labelled: torch.Tensor | None = None) -> tuple:
    """Every rank's rows of InfoNCE's inputs, concatenated (gradients flow back to their owners);
    the inputs themselves without a process group."""
    from ..distributed import all_gather_with_grad

    queries, positives = all_gather_with_grad(queries), all_gather_with_grad(positives)
    if hard_negatives is not None:
        hard_negatives = all_gather_with_grad(hard_negatives)
    if labelled is not None:
        labelled = all_gather_with_grad(labelled.to(queries.device, torch.float32)) > 0.5
    return queries, positives, hard_negatives, labelled
