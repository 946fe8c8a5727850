"""``lamra data validate`` and ``lamra data synth``: M-BEIR folders, checked or made."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

data_app = typer.Typer(help="M-BEIR data: check a dataset folder, or write a synthetic mini M-BEIR.",
                       no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


@data_app.command("validate")
def validate(
    root: Path = typer.Argument(..., help="M-BEIR root (query/, cand_pool/, qrels/, instructions/, images)."),
    tasks: Optional[list[str]] = typer.Option(None, "--task", "-t", help="Check only this task's files (repeat); "
                                                                          "default: every task and file."),
    images: bool = typer.Option(True, "--images/--no-images", help="Check that every image file exists."),
    limit: int = typer.Option(0, help="Print at most this many problems (0: all of them)."),
) -> None:
    """Check an M-BEIR folder; print every problem as file:line field: message. Exit 1 if any."""
    from ..data.mbeir_validate import validate_mbeir

    report = validate_mbeir(root, tasks=tasks or None, check_images=images)
    shown = report.problems if limit <= 0 else report.problems[:limit]
    for problem in shown:
        typer.echo(str(problem))
    for note in report.notes:
        typer.echo(f"note: {note}", err=True)
    lines = sum(report.lines.values())
    if report.problems:
        hidden = len(report.problems) - len(shown)
        typer.echo(f"{len(report.problems)} problem(s) in {root}" + (f" ({hidden} not shown)" if hidden else "")
                   + f"; {len(report.lines)} files, {lines} lines read.", err=True)
        raise typer.Exit(1)
    typer.echo(f"ok: {root} ({len(report.lines)} files, {lines} lines)")


@data_app.command("synth")
def synth(
    out: Path = typer.Argument(..., help="Folder to create (an M-BEIR root)."),
    seed: int = typer.Option(0, help="Random seed: the same seed writes the same files."),
    test_queries: int = typer.Option(20, help="Test queries per task (16 tasks)."),
    train_queries: int = typer.Option(40, help="Train queries per task."),
    pool_size: int = typer.Option(60, help="Candidates in each task's local pool."),
    image_size: int = typer.Option(64, help="Side of the rendered images, in pixels."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it is an earlier synthetic dataset."),
) -> None:
    """Write a synthetic mini M-BEIR (16 tasks, 8 task types, rendered images) for tests and demos."""
    from ..data.synthetic import SynthConfig, synthesize

    config = SynthConfig(seed=seed, test_queries=test_queries, train_queries=train_queries, pool_size=pool_size,
                         image_size=image_size)
    manifest = synthesize(out, config, overwrite=force)
    counts = manifest["counts"]
    typer.echo(f"wrote {out}: {counts['test_query_lines']} test and {counts['train_query_lines']} train queries, "
               f"{counts['union_test_pool_lines']} test candidates, {counts['images']} images")
