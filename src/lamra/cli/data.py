"""``lamra data validate``, ``lamra data synth`` and ``lamra data demo``: M-BEIR folders, checked or made."""

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


@data_app.command("demo")
def demo(
    out: Path = typer.Argument(..., help="Folder to create (an M-BEIR root with its own tasks.json)."),
    seed: int = typer.Option(0, help="Random seed: the same seed (and sources) writes the same files."),
    size: str = typer.Option("small", help="'small' (about 4,200 train queries, test pools of 300; ~1 min) "
                                           "or 'full' (test pools of 1,000, up to 20,000 train queries per "
                                           "task; ~4 min)."),
    image_size: int = typer.Option(112, help="Side of every image, in pixels."),
    workers: int = typer.Option(2, help="Processes rendering the cliparts (the output does not depend on it)."),
    clipart_dir: Optional[Path] = typer.Option(None, help="OpenClipart SVG folder "
                                                          "(default: the openclipart-svg package's)."),
    fashion_mnist_dir: Optional[Path] = typer.Option(None, help="Folder of the Fashion-MNIST idx gz files "
                                                                "(default: the dataset-fashion-mnist package's)."),
    wordnet_dir: Optional[Path] = typer.Option(None, help="Folder of WordNet's data.* files "
                                                          "(default: wordnet-base's)."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it is an earlier demo data set."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Write the demo data set from offline Debian packages: cliparts, Fashion-MNIST, WordNet
    (docs/demo-data.md). Without the packages, says what to install."""
    from ..demo.data import DemoConfig, DemoSources, SourcesMissing, build_demo_data

    defaults = DemoSources()
    sources = DemoSources(clipart=clipart_dir or defaults.clipart,
                          fashion_mnist=fashion_mnist_dir or defaults.fashion_mnist,
                          wordnet=wordnet_dir or defaults.wordnet)
    config = DemoConfig.preset(size, seed=seed, image_size=image_size)
    try:
        manifest = build_demo_data(out, config, sources, overwrite=force, workers=workers, show_progress=not quiet)
    except SourcesMissing as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    counts = manifest["counts"]
    test = sum(n for key, n in counts["queries"].items() if key.startswith("test/"))
    skipped = sum(manifest["skipped"].values())
    typer.echo(f"wrote {out}: {counts['queries']['train/union']} train and {test} test queries over "
               f"{len(manifest['tasks'])} tasks, {counts['images']} images, {counts['pairs'].get('train', 0)} "
               f"train text pairs; {skipped} source items skipped (see {out}/demo-data.json)")
