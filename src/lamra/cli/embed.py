"""``lamra embed`` and ``lamra prompt``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .options import LORA, MODEL, QUIET, ModelOptions, model_options


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)
    app.command("prompt")(prompt)


@model_options()
def embed(
    input: Path = typer.Argument(..., help="jsonl file, one {\"id\", \"text\", \"image\"} object a line "
                                           "(image paths relative to the file)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npy (float32, one row per item); ids and "
                                                       "model information go to the .json beside it."),
    model: Optional[str] = MODEL,
    lora: Optional[Path] = LORA,
    instruction: Optional[str] = typer.Option(None, help="Task instruction (for queries; candidates have none)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Embed the good items and report the bad ones in "
                                                              "OUT.bad.jsonl, instead of stopping."),
    batch_size: int = typer.Option(64, help="Most items in one batch."),
    max_batch_tokens: Optional[int] = typer.Option(None, help="Most padded tokens in one batch "
                                                              "(default: 16384 on GPU, 4096 on CPU)."),
    quiet: bool = QUIET,
    *,
    model_options: ModelOptions,
) -> None:
    """Embed the items of a jsonl file with a LamRA retriever."""
    from ..embeddings import check_items, save_embeddings
    from .models import check_sources, load_retriever, resolve_model

    model, lora = resolve_model(model, lora)
    check_sources(model, lora)
    settings = model_options.settings(model)
    good, bad = check_items(input, pixel_limit=settings.image_pixel_limit)
    if bad and not skip_bad:
        for entry in bad[:20]:
            typer.echo(f"error: {entry['error']}", err=True)
        more = " (first 20 shown)" if len(bad) > 20 else ""
        typer.echo(f"{len(bad)} bad line(s){more}; nothing written. Fix them or pass --skip-bad.", err=True)
        raise typer.Exit(2)
    retriever = load_retriever(model, lora=lora, device=model_options.device, dtype=model_options.dtype,
                               settings=settings, quiet=quiet)
    vectors = retriever.encode([item for item in good], instruction, batch_size=batch_size,
                               max_batch_tokens=max_batch_tokens or "auto", show_progress=not quiet)
    written = save_embeddings(out, vectors, [item.id for item in good], retriever.fingerprint(), bad=bad)
    typer.echo(f"wrote {len(good)} vectors of dimension {vectors.shape[1]} to {written['vectors']}"
               + (f"; {len(bad)} bad line(s) reported in {written['bad']}" if bad else ""))


def prompt(
    text: Optional[str] = typer.Option(None, help="Text of the item."),
    image: list[Path] = typer.Option([], help="Image file(s) of the item (repeat for several)."),
    instruction: Optional[str] = typer.Option(None, help="Task instruction (queries only)."),
    cut: bool = typer.Option(False, help="Show the shorter form, cut before <emb>, that encoding uses."),
) -> None:
    """Print the exact chat text LamRA-Ret reads for an item (images shown as placeholders)."""
    from ..items import Item
    from ..qwen2vl.prompts import render_prompt

    item = Item(text=text, images=list(image))
    if item.is_empty() and not instruction:
        raise typer.BadParameter("give --text and/or --image")
    typer.echo(render_prompt(item, instruction, cut_at_emb=cut), nl=False)
