"""One optimisation step's forward and backward: the plain path and gradient caching.

Gradient caching (Gao et al., 2021) lets one GPU train with the paper's global batch: embed
every chunk without a graph, compute the loss and its gradient with respect to the embeddings
on the whole batch, then forward each chunk again with a graph and push those gradients
through it. Same loss, same gradients as the plain path, memory of one chunk. With a "distill"
side (each query's k candidates, :mod:`.distill`) the loss is InfoNCE plus the KL term, and the
step returns its parts.
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


def _loss(embeddings, batch: dict, *, temperature: float, distill_weight: float, distill_batch_negatives: bool):
    """InfoNCE; with a "distill" side, the dict of :func:`~.distill.distill_loss` (InfoNCE + KL)."""
    if "distill" not in batch:
        return info_nce(*embeddings, temperature=temperature)
    from .distill import distill_loss

    named = dict(zip([side for side in SIDES if side in batch], embeddings))
    return distill_loss(named, batch["teacher"], weight=distill_weight, temperature=temperature,
                        labelled=batch.get("labelled"), batch_negatives=distill_batch_negatives)


def _total(values) -> torch.Tensor:
    return values["loss"] if isinstance(values, dict) else values


def _detached(values):
    return {name: v.detach() for name, v in values.items()} if isinstance(values, dict) else values.detach()


def plain_step(accelerator, model, batch: dict, *, temperature: float, distill_weight: float = 0.0,
               distill_batch_negatives: bool = False):
    """Every side in one forward (one chunk each), one backward."""
    sides = _sides(batch)
    if any(len(chunks) != 1 for chunks in sides):
        raise ValueError("the plain step takes one chunk per side; set chunk_size for gradient caching")
    with accelerator.autocast():
        embeddings = model(*[chunks[0] for chunks in sides])
    values = _loss(embeddings, batch, temperature=temperature, distill_weight=distill_weight,
                   distill_batch_negatives=distill_batch_negatives)
    accelerator.backward(_total(values))
    return _detached(values)


class _RandomState:
    """CPU and current-GPU generator states, so a chunk's second forward draws the same dropout."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda)


def gradient_cache_step(accelerator, model, batch: dict, *, temperature: float, distill_weight: float = 0.0,
                        distill_batch_negatives: bool = False):
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
    values = _loss(leaves, batch, temperature=temperature, distill_weight=distill_weight,
                   distill_batch_negatives=distill_batch_negatives)
    _total(values).backward()  # gradients of the loss with respect to the embeddings only
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
    return _detached(values)
