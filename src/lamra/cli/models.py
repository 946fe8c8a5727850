"""Loading the models of a command: source checks, settings, device under torchrun, quiet
loading, and the warning for an untrained model (shared by every command that takes --model)."""

from __future__ import annotations

import typer

from ..distributed import device_for_rank, is_main_process
from ..settings import ModelSettings
from .runtime import quiet_model_loading


def resolve_model(model, lora=None, *, index=None) -> tuple[str, object]:
    """The model a command uses: ``--model``; else the index's recorded model; else lamra's
    default model (trained once on first use). Says which in one line when it was not given."""
    from ..index.source import recorded_model

    if model is not None:
        return str(model), lora
    record = recorded_model(index) if index is not None else None
    if record is not None:
        typer.echo(f"using the model {index} was built with: {record['model']}"
                   + (f" + {record['lora']}" if record.get("lora") else ""), err=True)
        return record["model"], lora if lora is not None else record.get("lora")
    from ..demo.default_model import ensure_default_model

    folder = ensure_default_model(announce=lambda message: typer.echo(message, err=True))
    typer.echo(f"using lamra's default model {folder} (a small demo model; pass --model for another)", err=True)
    return str(folder), lora


def load_retriever(model, *, lora=None, device=None, dtype=None, settings: ModelSettings | None = None,
                   quiet: bool = False):
    """A :class:`~lamra.retriever.model.Retriever`; a bad ``--model`` fails in one line first."""
    _before_loading(model, lora, quiet)
    from ..retriever.model import Retriever  # (torch: after the cheap checks)

    return Retriever.from_pretrained(model, lora=lora, device=device_for_rank(device), dtype=dtype, settings=settings)


def load_reranker(model, *, lora=None, device=None, dtype=None, settings: ModelSettings | None = None,
                  quiet: bool = False):
    """A :class:`~lamra.reranker.model.Reranker`, loaded as :func:`load_retriever` loads."""
    _before_loading(model, lora, quiet)
    from ..reranker.model import Reranker

    return Reranker.from_pretrained(model, lora=lora, device=device_for_rank(device), dtype=dtype, settings=settings)


def warn_if_untrained(model) -> bool:
    """Print the untrained-model warning (stderr) for a folder marked as random weights."""
    from ..qwen2vl.model_source import UNTRAINED_WARNING, is_untrained

    if not is_untrained(model):
        return False
    typer.echo(f"warning: {model}: {UNTRAINED_WARNING}", err=True)
    return True


def check_sources(model, lora=None) -> None:
    """A wrong --model / --lora fails here, in one line, before anything slow (reading a collection,
    importing torch). ``load_backbone`` checks again; the hub is asked at most once per id."""
    from ..qwen2vl.model_source import check_adapter_source, check_model_source

    check_model_source(model)
    check_adapter_source(lora)


def _before_loading(model, lora, quiet: bool) -> None:
    check_sources(model, lora)
    if is_main_process():  # under torchrun, one warning, not one per process
        warn_if_untrained(model)
    quiet_model_loading(show_downloads=not quiet)


# -- lamra model: checkpoints for trying the commands --------------------------------------------

model_app = typer.Typer(help="Make model checkpoints to try the commands with.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")


@model_app.command("tiny")
def tiny(
    out: str = typer.Argument(..., help="Folder for the checkpoint (must not exist, or be empty)."),
    seed: int = typer.Option(0, help="Seed of the random weights."),
) -> None:
    """Save a tiny Qwen2-VL checkpoint with random weights (2 layers, the real Qwen2 BPE): a
    --model that every command loads in a second, to try training, mining and serving end to
    end. Its rankings mean nothing (it is marked UNTRAINED, and commands say so)."""
    from pathlib import Path

    from ..errors import InputError

    folder = Path(out)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InputError("exists and is not an empty folder: choose a new one", file=str(folder))
    from ..demo.tiny import qwen2_tokenizer, save_tiny_checkpoint

    quiet_model_loading()
    save_tiny_checkpoint(folder, tokenizer=qwen2_tokenizer(), seed=seed)
    typer.echo(f"wrote a tiny random Qwen2-VL checkpoint to {folder} (UNTRAINED: for trying the commands; "
               f"e.g. lamra train reranker --model {folder} ...)")
