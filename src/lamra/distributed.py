"""The one module that knows torchrun: rank, world size, device, process group, gathers.

Everything here works unchanged in a single process (rank 0 of 1), so callers never branch.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from datetime import timedelta


def _joined_group():
    """torch.distributed when a process group exists, else None. Without torch imported there can
    be no group, so rank checks stay cheap (the CLI makes them before any model loads)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None


def world_size() -> int:
    dist = _joined_group()
    if dist is not None:
        return dist.get_world_size()
    return _launched_world_size()


def rank() -> int:
    dist = _joined_group()
    if dist is not None:
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def _launched_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun), group or no group."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def device_for_rank(device: str | None = None) -> str | None:
    """``device`` as given; else, under torchrun with GPUs, ``cuda:LOCAL_RANK`` (None: library default)."""
    if device is not None:
        return device
    if _launched_world_size() > 1:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{local_rank()}"
    return None


def init_process_group(backend: str | None = None, *, hours: float = 24) -> bool:
    """Join torchrun's process group if WORLD_SIZE > 1 and none exists; True if this call made it.

    gloo by default (barriers and CPU gathers work everywhere); nccl when asked, for GPU gathers.
    The long timeout lets a slow rank finish its share of a long job.
    """
    if _launched_world_size() <= 1:
        return False
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    dist.init_process_group(backend or "gloo", timeout=timedelta(hours=hours))
    return True


def destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(backend: str | None = None):
    """Hold a process group for the ``with`` block (a no-op in one process); yields the rank."""
    owned = init_process_group(backend)
    try:
        yield rank()
    finally:
        if owned:
            destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_gather_with_grad(tensor):
    """Concatenate every rank's ``tensor`` (same shape on every rank) along dim 0; gradients flow
    back to each rank's own rows.

    This is how in-batch negatives span the global batch (LamRA, docs/format.md#training-hyper-parameters). Each rank computes its
    loss on the gathered tensor; the backward pass sums, over ranks, the gradient every loss
    sends to a rank's rows. With DDP's gradient averaging that equals the gradient of the mean
    of the ranks' losses computed in one process on the concatenated batch.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor.contiguous())


def _gather_function():
    import torch
    import torch.distributed as dist

    class GatherWithGrad(torch.autograd.Function):
        # all_reduce in the backward (not reduce_scatter) so that it runs on gloo too.
        @staticmethod
        def forward(ctx, tensor):
            ctx.rows = tensor.shape[0]
            parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, tensor)
            return torch.cat(parts, dim=0)

        @staticmethod
        def backward(ctx, grad):
            grad = grad.contiguous()
            dist.all_reduce(grad, op=dist.ReduceOp.SUM)
            start = dist.get_rank() * ctx.rows
            return grad[start : start + ctx.rows]

    return GatherWithGrad


class _LazyFunction:
    """Builds the autograd Function on first use, so importing this module needs no torch."""

    def __init__(self, build):
        self._build, self._function = build, None

    def apply(self, *args):
        if self._function is None:
            self._function = self._build()
        return self._function.apply(*args)


_GatherWithGrad = _LazyFunction(_gather_function)


def all_gather_object(value) -> list:
    """Every rank's ``value`` (picklable), in rank order."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out
