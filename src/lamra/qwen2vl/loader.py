"""Batches collated in DataLoader worker processes (``Retriever.encode(num_workers=N)``).

Image decode, resize, normalize and padding run in ``N`` processes, off the main process that
drives the model; on a GPU the batches come back in pinned memory and go to the device with
non-blocking copies. The batches are the planned ones (``plan_batches``), collated by the
processor's own ``collate``, so the vectors are those of the in-process path.

Each batch carries its row numbers, so the caller writes its vectors where they belong whatever
the order; the loader still yields them in plan order (DataLoader's default).
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

from ..errors import InputError


class _Numbered:
    """The prompts as a map-style dataset of (row, prompt): the rows travel with their batch."""

    def __init__(self, prompts: Sequence):
        self.prompts = prompts

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, row: int):
        return row, self.prompts[row]


class _CollateRows:
    """``collate_fn``: one batch of (row, prompt) -> (rows, inputs).

    An :class:`InputError` (a bad image) comes back as the batch's value: DataLoader re-raises a
    worker's exception as a new one built from its text, which would lose ``item`` and ``field``
    (what the index build's ``skip_bad`` and the messages rely on). Pickled, the error keeps them.
    """

    def __init__(self, collate: Callable):
        self.collate = collate

    def __call__(self, batch):
        rows = [row for row, _ in batch]
        try:
            return rows, self.collate([prompt for _, prompt in batch])
        except InputError as exc:
            return rows, exc


def collate_in_workers(collate: Callable, prompts: Sequence, batches: Sequence[Sequence[int]], *,
                       num_workers: int, pin_memory: bool = False, prefetch_factor: int = 2) -> Iterator:
    """``(rows, inputs)`` for each planned batch, collated by ``num_workers`` worker processes
    (each ``prefetch_factor`` batches ahead). ``collate`` and ``prompts`` reach the workers by
    fork or, under spawn, pickled (:class:`~lamra.qwen2vl.processor.LamraProcessor` pickles)."""
    from torch.utils.data import DataLoader

    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1 here, got {num_workers}")
    if not batches:
        return
    loader = DataLoader(_Numbered(prompts), batch_sampler=[list(b) for b in batches],
                        collate_fn=_CollateRows(collate), num_workers=min(num_workers, len(batches)),
                        pin_memory=pin_memory, prefetch_factor=prefetch_factor)
    for rows, inputs in loader:
        if isinstance(inputs, InputError):
            raise inputs
        yield rows, inputs


def to_device(inputs: dict, device) -> dict:
    """The batch's tensors on ``device``, copied without waiting (safe from pinned memory: the
    forward queued after the copy on the same stream reads them once they are there)."""
    import torch

    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
