"""``lamra eval mbeir`` and ``lamra eval zeroshot``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError
from .options import (DEVICE, DTYPE, IMAGE_PIXEL_LIMIT, LORA, MAX_PIXELS, MAX_TOKENS, MIN_PIXELS, POSITIONS,
                      model_settings)

eval_app = typer.Typer(help="Evaluate a retriever: M-BEIR (local / global pools) or a zero-shot folder.",
                       no_args_is_help=True)

MODEL = typer.Option(None, "--model", "-m", help="Qwen2-VL checkpoint: hub id or local folder.")
BASELINE = typer.Option(None, "--baseline", help="Instead of a model: 'random' (chance level) or 'oracle' "
                                                 "(perfect by construction; less than 100 means broken data).")
CACHE_DIR = typer.Option(None, "--cache-dir", help="Where the query and candidate embeddings are kept "
                                                   "(default OUT/embeddings); a rerun with the same model and "
                                                   "data reuses them.")
INDEX_DTYPE = typer.Option("float16", help="Storage of candidate vectors: float16 (half the memory) or float32.")
BATCH_SIZE = typer.Option(None, help="Most items per encoding batch (default: the retriever's).")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bars.")


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")


def _encoder(model, lora, baseline, device, dtype, positives=None, settings=None, quiet=False):
    if model is None and baseline is None:
        raise typer.BadParameter("one of --model (a checkpoint, with optional --lora) or --baseline "
                                 "(random or oracle) is needed")
    if model is not None and baseline is not None:
        raise typer.BadParameter("give --model (with optional --lora) or --baseline, not both")
    if baseline is not None:
        from ..evaluation.baselines import OracleEncoder, RandomEncoder

        if baseline == "random":
            return RandomEncoder()
        if baseline == "oracle":
            return OracleEncoder(positives() if positives else {})
        raise typer.BadParameter(f"--baseline is 'random' or 'oracle', not {baseline!r}")
    from .models import load_retriever  # (a wrong --model fails in one line; under torchrun, a GPU per process)

    return load_retriever(model, lora=lora, device=device, dtype=dtype, settings=settings, quiet=quiet)


def _task_names(values: Optional[list[str]]) -> list[str] | None:
    names = [name.strip() for value in values or [] for name in value.split(",") if name.strip()]
    return names or None


def _is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@eval_app.command("mbeir")
def mbeir(
    root: Path = typer.Argument(..., help="M-BEIR root (query/, cand_pool/, qrels/, instructions/, images)."),
    model: Optional[str] = MODEL,
    lora: Optional[Path] = LORA,
    baseline: Optional[str] = BASELINE,
    tasks: Optional[list[str]] = typer.Option(None, "--tasks", "--task", "-t",
                                              help="Tasks to run, comma-separated or repeated (default: all 16)."),
    pool: str = typer.Option("local", help="'local' (each task's own pool), 'global-union' (UniIR's union pool "
                                           "file, each candidate once; 'global' is an alias) or 'global-lamra' (the "
                                           "16 local pools concatenated: the official LamRA / paper global numbers)."),
    instructions: str = typer.Option("first", "--instructions",
                                     help="'first' (the first instruction of each task, deterministic) or 'random' "
                                          "(the released code's choice: a random instruction per query, keyed on "
                                          "a random positive's modality; repeatable with --seed)."),
    seed: int = typer.Option(0, help="Seed of --instructions random (the same seed gives the same instructions)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave out candidates and queries whose image cannot "
                                                           "be read, count them and list them in results.json (a "
                                                           "left-out query counts as a miss) instead of stopping."),
    split: str = typer.Option("test", help="Query split."),
    top_k: int = typer.Option(50, help="Candidates retrieved per query (and written to the run files)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder for the reports, runs and "
                                                                 "embeddings (default ./lamra-eval/mbeir-POOL)."),
    cache_dir: Optional[Path] = CACHE_DIR,
    index_dtype: str = INDEX_DTYPE,
    batch_size: Optional[int] = BATCH_SIZE,
    shard_size: int = typer.Option(1024, help="Items per checkpointed shard of an encoding: an interrupted run "
                                              "resumes from its last shard; under torchrun the shards are shared "
                                              "out."),
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    quiet: bool = QUIET,
    max_pixels: Optional[int] = MAX_PIXELS,
    min_pixels: Optional[int] = MIN_PIXELS,
    positions: Optional[str] = POSITIONS,
    max_tokens: Optional[int] = MAX_TOKENS,
    image_pixel_limit: Optional[int] = IMAGE_PIXEL_LIMIT,
) -> None:
    """Evaluate on M-BEIR: a per-task table (the paper's Table 2), TREC runs, cached embeddings.

    Queries use the first instruction of their task unless --instructions random. Under torchrun,
    every process encodes a share of each pool; the first one searches and writes.
    """
    from rich.console import Console

    from ..data.mbeir import describe_pool, resolve_pool
    from ..data.mbeir_instructions import INSTRUCTION_CHOICES
    from ..evaluation.mbeir import evaluate_mbeir, oracle_positives
    from ..evaluation.report import rich_table

    try:
        pool = resolve_pool(pool)
    except InputError as exc:
        raise typer.BadParameter(exc.reason, param_hint="--pool") from None
    if instructions not in INSTRUCTION_CHOICES:
        raise typer.BadParameter(f"'first' or 'random', not {instructions!r}", param_hint="--instructions")
    names = _task_names(tasks)
    out = out or Path("lamra-eval") / f"mbeir-{pool}"
    settings = model_settings(model, max_pixels=max_pixels, min_pixels=min_pixels, positions=positions,
                              max_tokens=max_tokens, image_pixel_limit=image_pixel_limit)
    encoder = _encoder(model, lora, baseline, device, dtype, positives=lambda: oracle_positives(root, names, split),
                       settings=settings, quiet=quiet)
    console = Console(stderr=True, quiet=quiet or not _is_rank_zero())
    console.print(f"output folder: {out.resolve()}", markup=False, highlight=False, soft_wrap=True)
    results = evaluate_mbeir(root, encoder, out, tasks=names, pool=pool, split=split, top_k=top_k,
                             cache_dir=cache_dir, index_dtype=index_dtype, batch_size=batch_size,
                             show_progress=not quiet, announce=lambda message: console.print(message, style="dim"),
                             instructions=instructions, seed=seed, skip_bad=skip_bad, shard_size=shard_size)
    if not _is_rank_zero():
        return
    Console().print(rich_table(results.results, f"M-BEIR, {pool} pool ({split})"))
    typer.echo(f"pool: {pool}, {describe_pool(pool, split)}")
    bad_queries = sum(len(v) for v in results.skipped["queries"].values())
    bad_candidates = sum(len(v) for v in results.skipped["candidates"].values())
    if bad_queries or bad_candidates:
        typer.echo(f"left out {bad_queries} bad queries (scored as misses) and {bad_candidates} bad candidates; "
                   f"listed under 'skipped' in {results.files['json']}")
    encoded = f"encoded {len(results.built)}, reused {len(results.reused)} cached embedding sets"
    typer.echo(f"{encoded}; wrote results.json, results.csv, results.md and runs/ to {out.resolve()}")


@eval_app.command("zeroshot")
def zeroshot(
    data: Path = typer.Argument(..., help="Folder with queries.jsonl, candidates.jsonl and qrels.txt "
                                          "(see docs/mbeir.md)."),
    model: Optional[str] = MODEL,
    lora: Optional[Path] = LORA,
    baseline: Optional[str] = BASELINE,
    metrics: Optional[list[str]] = typer.Option(None, "--metric", "--metrics",
                                                help="R@K, MAP@K or ITM; comma-separated or repeated "
                                                     "(default: R@1,R@5,R@10,MAP@5, or R@1,ITM with candidate lists)."),
    instruction: Optional[str] = typer.Option(None, help="Instruction for queries without their own."),
    top_k: Optional[int] = typer.Option(None, help="Candidates kept per query in the run file (default 10)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default ./lamra-eval/zeroshot-DATA)."),
    cache_dir: Optional[Path] = CACHE_DIR,
    index_dtype: str = INDEX_DTYPE,
    batch_size: Optional[int] = BATCH_SIZE,
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    quiet: bool = QUIET,
    max_pixels: Optional[int] = MAX_PIXELS,
    min_pixels: Optional[int] = MIN_PIXELS,
    positions: Optional[str] = POSITIONS,
    max_tokens: Optional[int] = MAX_TOKENS,
    image_pixel_limit: Optional[int] = IMAGE_PIXEL_LIMIT,
) -> None:
    """Evaluate on a zero-shot folder (Flickr30K-, CIRCO-, CC-Neg-style data in lamra's plain layout)."""
    from rich.console import Console
    from rich.table import Table

    from ..data.mbeir import read_qrels
    from ..evaluation.zeroshot import QRELS, evaluate_zeroshot

    out = out or Path("lamra-eval") / f"zeroshot-{data.name}"
    settings = model_settings(model, max_pixels=max_pixels, min_pixels=min_pixels, positions=positions,
                              max_tokens=max_tokens, image_pixel_limit=image_pixel_limit)
    encoder = _encoder(model, lora, baseline, device, dtype, positives=lambda: read_qrels(data / QRELS).positives,
                       settings=settings, quiet=quiet)
    results = evaluate_zeroshot(data, encoder, out, metrics=_task_names(metrics), instruction=instruction,
                                top_k=top_k, cache_dir=cache_dir, index_dtype=index_dtype, batch_size=batch_size,
                                show_progress=not quiet)
    table = Table(title=f"{data.name}: {results.queries} queries, {results.candidates} candidates ({results.mode})")
    table.add_column("Metric")
    table.add_column("Score", justify="right")
    for name, value in results.metrics.items():
        table.add_row(name, f"{value:.1f}")
    Console().print(table)
    typer.echo(f"wrote {', '.join(str(p) for p in results.files.values())}")
