"""``lamra score-teacher`` and ``lamra filter-negatives``: what reranker distillation learns from."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .options import QUIET, ModelOptions, model_options


def register(app: typer.Typer) -> None:
    app.command("score-teacher")(score_teacher)
    app.command("filter-negatives")(filter_negatives)


@model_options(rerank_scores=True)
def score_teacher(
    data: Path = typer.Option(..., "--data", help="M-BEIR root the mined file was made from."),
    mined: Path = typer.Option(..., "--mined", help="The jsonl `lamra mine` wrote (each training query's top-k "
                                                    "with the retriever's scores; its .summary.json beside it)."),
    reranker: str = typer.Option(..., "--reranker", "-r", help="Reranker checkpoint (LamRA-Rank): hub id or folder."),
    out: Path = typer.Option(..., "--out", "-o", help="The scores jsonl to write (an interrupted run there resumes)."),
    rerank_lora: Optional[Path] = typer.Option(None, "--rerank-lora", help="LoRA adapter of the reranker."),
    k: int = typer.Option(50, "--k", min=1, help="Candidates scored per query, best first (U-MARVEL: 50)."),
    fraction: float = typer.Option(1.0, "--fraction", min=0.0, max=1.0,
                                   help="Share of each task's queries to score (U-MARVEL distils on 0.1)."),
    seed: int = typer.Option(42, help="Seed of the --fraction draw (U-MARVEL's notebook: 42)."),
    queries: Optional[list[Path]] = typer.Option(None, "--queries", help="The query jsonl file(s) that were mined "
                                                                         "(default: as lamra mine's)."),
    pool: Optional[Path] = typer.Option(None, "--pool", help="Candidate pool jsonl (default: the union train pool)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Candidates per forward pass."),
    part_size: int = typer.Option(64, "--part-size", min=1, help="Queries per checkpointed part."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
    quiet: bool = QUIET,
    *,
    model_options: ModelOptions,
) -> None:
    """Score each mined query's top-k with the reranker (P(Yes), official) beside the retriever's
    scores: the file `lamra train retriever --distill` learns from.

    Killed and started again with the same arguments, it resumes.
    """
    from ..reranker.teacher_scores import score_teacher as run
    from ..reranker.teacher_scores import work_folder
    from .models import load_reranker

    if work_folder(out).is_dir():
        typer.echo(f"resuming the interrupted run in {work_folder(out)}", err=True)
    model = load_reranker(reranker, lora=rerank_lora, device=model_options.device, dtype=model_options.dtype,
                          settings=model_options.reranker_settings(reranker, rerank_lora), quiet=quiet)
    summary = run(model, data, mined, out, k=k, fraction=fraction, seed=seed, queries=queries, pool=pool,
                  batch_size=batch_size, part_size=part_size, show_progress=not quiet, overwrite=force)
    typer.echo(f"{'task':<24}{'queries':>8}{'P(Yes) pos':>12}{'P(Yes) neg':>12}")
    for name, stats in summary.tasks.items():
        typer.echo(f"{name:<24}{stats['queries']:>8}{_number(stats['p_yes_positives']):>12}"
                   f"{_number(stats['p_yes_negatives']):>12}")
    unlabelled = sum(stats.get("unlabelled", 0) for stats in summary.tasks.values())
    typer.echo(f"scored the top {k} of {summary.queries} queries into {out}"
               + (f"; {unlabelled} without a positive (P(Yes) pos / neg leave them out)" if unlabelled else ""))


def filter_negatives(
    scores: Path = typer.Option(..., "--scores", help="The file lamra score-teacher wrote."),
    data: Path = typer.Option(..., "--data", help="M-BEIR root of the training queries."),
    out: Path = typer.Option(..., "--out", "-o", help="Query jsonl to write: the scored queries' lines with "
                                                      "neg_cand_list their kept negatives."),
    threshold: Optional[float] = typer.Option(None, "--threshold", min=0.0, max=1.0,
                                              help="Drop a negative whose P(Yes) is above this (1.0 drops none)."),
    margin: Optional[float] = typer.Option(None, "--margin", help="Drop a negative whose P(Yes) is above the "
                                                                  "positive's minus this."),
    queries: Optional[list[Path]] = typer.Option(None, "--queries", help="The training query jsonl file(s) "
                                                                         "(default: as lamra mine's)."),
) -> None:
    """Hard negatives without those the reranker judges relevant, for `use_hard_negatives` training
    (train_queries: OUT); prints how many each task dropped."""
    from ..reranker.teacher_scores import write_filtered_queries

    counts = write_filtered_queries(scores, data, out, threshold=threshold, margin=margin, queries=queries)
    typer.echo(f"{'task':<24}{'queries':>8}{'kept':>8}{'dropped':>9}{'left out':>10}")
    for name, row in counts.items():
        typer.echo(f"{name:<24}{row['queries']:>8}{row['kept']:>8}{row['dropped']:>9}{row['left_out']:>10}")
    typer.echo(f"dropped {sum(r['dropped'] for r in counts.values())} negative(s) the reranker judges relevant; "
               f"wrote {out}")


def _number(value) -> str:
    return "-" if value is None else f"{value:.3f}"
