"""Pure tensor functions that turn hidden states into embeddings."""

from __future__ import annotations

import torch


def positions_before_token(input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """Index of the token just before the first ``token_id`` in each row (LamRA's pooling)."""
    is_token = input_ids == token_id
    if not bool(is_token.any(dim=1).all()):
        raise ValueError(f"every row must contain token id {token_id} to pool before it")
    return is_token.int().argmax(dim=1) - 1


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each right-padded row."""
    return attention_mask.sum(dim=1) - 1


def gather_rows(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``hidden[b, positions[b]]`` for every row b: (B, L, D) -> (B, D)."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), positions.to(hidden.device)]


def l2_normalize(vectors: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return torch.nn.functional.normalize(vectors.float(), p=2, dim=-1, eps=eps)
