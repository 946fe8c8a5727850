"""``lamra embed`` and ``lamra prompt``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .options import LORA, MODEL, QUIET, RULES, ModelOptions, model_options


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
    instruction: Optional[str] = typer.Option(None, help="Task instruction for every item (queries; candidates "
                                                         "have none; none: no instruction)."),
    against: Optional[str] = typer.Option(None, "--against", help="The items are queries against a collection of "
                                                                  "this modality (text, image or image,text): each "
                                                                  "gets the M-BEIR instruction of the closest task "
                                                                  "(as lamra search does)."),
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
    settings = model_options.settings(model, lora)
    good, bad = check_items(input, pixel_limit=settings.image_pixel_limit)
    if not good and not bad:
        from ..errors import InputError

        raise InputError("no items: the file is empty (or has only blank lines); nothing written", file=str(input))
    if bad and not skip_bad:
        for entry in bad[:20]:
            typer.echo(f"error: {entry['error']}", err=True)
        more = " (first 20 shown)" if len(bad) > 20 else ""
        typer.echo(f"{len(bad)} bad line(s){more}; nothing written. Fix them or pass --skip-bad.", err=True)
        raise typer.Exit(2)
    if not good:
        typer.echo(f"error: all {len(bad)} line(s) are bad; nothing written", err=True)
        raise typer.Exit(2)
    instructions = _instructions(good, instruction, against)
    retriever = load_retriever(model, lora=lora, device=model_options.device, dtype=model_options.dtype,
                               settings=settings, quiet=quiet)
    vectors = retriever.encode([item for item in good], instructions, batch_size=batch_size,
                               max_batch_tokens=max_batch_tokens or "auto", show_progress=not quiet)
    written = save_embeddings(out, vectors, [item.id for item in good], retriever.fingerprint(), bad=bad)
    typer.echo(f"wrote {len(good)} vectors of dimension {vectors.shape[1]} to {written['vectors']}"
               + (f"; {len(bad)} bad line(s) reported in {written['bad']}" if bad else ""))


def _instructions(items, given: str | None, against: str | None):
    """The instruction of each item (said in one line per choice): ``--instruction`` as given,
    ``--against`` the closest M-BEIR task's for each item's modality, else none (candidates)."""
    from ..data.default_instructions import MODALITIES, choose_instruction, modality

    if against is not None and against not in MODALITIES:
        raise typer.BadParameter(f"--against takes one of {', '.join(MODALITIES)}, got {against!r}")
    if against is not None and given is not None:
        raise typer.BadParameter("give --instruction or --against, not both")
    if against is None:
        if given is None:
            typer.echo("instruction: none (the items are encoded as candidates; for queries give --instruction "
                       "TEXT, or --against MODALITY for the M-BEIR instruction of the closest task)", err=True)
            return None
        choice = choose_instruction(given, "text", None)
        typer.echo(choice.describe(), err=True)
        return choice.instruction
    chosen = {}
    for item in items:
        kind = modality(item.text, len(item.images) + len(item.videos))
        if kind not in chosen:
            chosen[kind] = choose_instruction(None, kind, against)
            typer.echo(f"{kind} items: {chosen[kind].describe()}", err=True)
    return [chosen[modality(item.text, len(item.images) + len(item.videos))].instruction for item in items]


def prompt(
    text: Optional[str] = typer.Option(None, help="Text of the item."),
    image: list[Path] = typer.Option([], help="Image file(s) of the item (repeat for several)."),
    instruction: Optional[str] = typer.Option(None, help="Task instruction (queries only)."),
    cut: bool = typer.Option(False, help="Show the shorter form, cut before <emb>, that encoding uses."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Checkpoint (hub id or folder) whose rule set "
                                                                    "to show (default: the Qwen2-VL release's)."),
    rules: Optional[str] = RULES,
) -> None:
    """Print the exact chat text LamRA-Ret reads for an item (images shown as placeholders); the
    rule set it is read under goes to stderr."""
    from ..items import Item
    from ..qwen2vl.prompts import render_prompt
    from .options import model_settings

    settings = model_settings(model, rules=rules)
    typer.echo(f"rule set: {settings.describe_rules() if model else settings.for_model_type(None).describe_rules()}",
               err=True)

    item = Item(text=text, images=list(image))
    if item.is_empty() and not instruction:
        raise typer.BadParameter("give --text and/or --image")
    typer.echo(render_prompt(item, instruction, cut_at_emb=cut), nl=False)
