"""Loading the models of a command: source checks, settings, device under torchrun, quiet
loading, and the warning for an untrained model (shared by every command that takes --model)."""

from __future__ import annotations

import os

import typer

from ..settings import ModelSettings
from .runtime import quiet_model_loading


def load_retriever(model, *, lora=None, device=None, dtype=None, settings: ModelSettings | None = None,
                   quiet: bool = False):
    """A :class:`~lamra.modeling.retriever.Retriever`; a bad ``--model`` fails in one line first."""
    _before_loading(model, lora, quiet)
    from ..modeling.retriever import Retriever  # (torch: after the cheap checks)

    return Retriever.from_pretrained(model, lora=lora, device=_device(device), dtype=dtype, settings=settings)


def load_reranker(model, *, lora=None, device=None, dtype=None, settings: ModelSettings | None = None,
                  quiet: bool = False):
    """A :class:`~lamra.modeling.reranker.Reranker`, loaded as :func:`load_retriever` loads."""
    _before_loading(model, lora, quiet)
    from ..modeling.reranker import Reranker

    return Reranker.from_pretrained(model, lora=lora, device=_device(device), dtype=dtype, settings=settings)


def warn_if_untrained(model) -> bool:
    """Print the untrained-model warning (stderr) for a folder marked as random weights."""
    from ..checkpoints import UNTRAINED_WARNING, is_untrained

    if not is_untrained(model):
        return False
    typer.echo(f"warning: {model}: {UNTRAINED_WARNING}", err=True)
    return True


def check_sources(model, lora=None) -> None:
    """A wrong --model / --lora fails here, in one line, before anything slow (reading a collection,
    importing torch). ``load_backbone`` checks again; the hub is asked at most once per id."""
    from ..checkpoints import check_adapter_source, check_model_source

    check_model_source(model)
    check_adapter_source(lora)


def _before_loading(model, lora, quiet: bool) -> None:
    check_sources(model, lora)
    if int(os.environ.get("RANK", "0")) == 0:
        warn_if_untrained(model)
    quiet_model_loading(show_downloads=not quiet)


def _device(device):
    """Under torchrun, each process takes the GPU of its LOCAL_RANK (unless --device says)."""
    if device is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device
