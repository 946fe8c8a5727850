"""One optimisation step's forward and backward: the plain path and gradient caching.

Gradient caching (Gao et al., 2021) lets one GPU train with the paper's global batch: embed
every chunk without a graph, compute the loss and its gradient with respect to the embeddings
on the whole batch, then forward each chunk again with a graph and push those gradients
through it. Same loss, same gradients as the plain path, memory of one chunk.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from .collator import SIDES
from .loss import info_nce


class EmbeddingModel(torch.nn.Module):
    """The retriever as one module, so DDP / FSDP / DeepSpeed see every forward they must sync."""

    def __init__(self, retriever):
        super().__init__()
        self.retriever = retriever
        self.model = retriever.backbone.model  # registers the parameters

    def forward(self, *batches: dict) -> tuple:
        return tuple(self.retriever.embed(batch) for batch in batches)


def _sides(batch: dict) -> list[list[dict]]:
    return [batch[side] for side in SIDES if side in batch]


def plain_step(accelerator, model, batch: dict, *, temperature: float) -> torch.Tensor:
    """Every side in one forward (one chunk each), one backward."""
    sides = _sides(batch)
    if any(len(chunks) != 1 for chunks in sides):
        raise ValueError("the plain step takes one chunk per side; set chunk_size for gradient caching")
    with accelerator.autocast():
        embeddings = model(*[chunks[0] for chunks in sides])
    loss = info_nce(*embeddings, temperature=temperature)
    accelerator.backward(loss)
    return loss.detach()


class _RandomState:
    """CPU and current-GPU generator states, so a chunk's second forward draws the same dropout."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda)


def gradient_cache_step(accelerator, model, batch: dict, *, temperature: float) -> torch.Tensor:
    sides = _sides(batch)
    states, embeddings = [], []
    with torch.no_grad():
        for chunks in sides:
            side = []
            for chunk in chunks:
                states.append(_RandomState())
                with accelerator.autocast():
                    side.append(model(chunk)[0])
            embeddings.append(torch.cat(side))
    leaves = [e.detach().requires_grad_() for e in embeddings]
    loss = info_nce(*leaves, temperature=temperature)
    loss.backward()  # gradients of the loss with respect to the embeddings only
    work = [(side_index, chunk) for side_index, chunks in enumerate(sides) for chunk in chunks]
    offsets = [0] * len(sides)
    for number, ((side_index, chunk), state) in enumerate(zip(work, states)):
        last = number == len(work) - 1
        rows = chunk["input_ids"].shape[0]
        gradient = leaves[side_index].grad[offsets[side_index] : offsets[side_index] + rows]
        offsets[side_index] += rows
        after = _RandomState()
        state.restore()
        # DDP all-reduces on the last backward only; the earlier ones accumulate locally.
        with nullcontext() if last else accelerator.no_sync(model):
            with accelerator.autocast():
                embedding = model(chunk)[0]
            accelerator.backward((embedding * gradient.to(embedding.dtype)).sum())
        after.restore()
    return loss.detach()
