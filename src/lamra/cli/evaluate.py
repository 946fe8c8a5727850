"""``lamra eval mbeir`` and ``lamra eval zeroshot``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError
from .models import resolve_model
from .options import (DEVICE, DTYPE, IMAGE_PIXEL_LIMIT, LORA, MAX_PIXELS, MAX_TOKENS, MIN_PIXELS, POSITIONS,
                      RERANK_SCORES, model_settings, rerank_options_without_rerank)

eval_app = typer.Typer(help="Evaluate a retriever: M-BEIR (local / global pools) or a zero-shot folder.",
                       no_args_is_help=True)

MODEL = typer.Option(None, "--model", "-m", help="Qwen2-VL checkpoint: hub id or local folder (default: lamra's "
                                                "demo model, unless --baseline is given).")
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
    rerank: Optional[str] = typer.Option(None, "--rerank", help="Reranker checkpoint (LamRA-Rank): rerank each "
                                                                "query's stored top --rerank-top-k, fuse, and show "
                                                                "Ret and Ret+Rank side by side. Without --model / "
                                                                "--baseline, the runs of the evaluation already in "
                                                                "--out are reranked."),
    rerank_lora: Optional[Path] = typer.Option(None, "--rerank-lora", help="LoRA adapter of the reranker."),
    rerank_top_k: int = typer.Option(50, "--rerank-top-k", min=1, help="Retrieved candidates reranked per query "
                                                                        "(LamRA: 50; at most --top-k)."),
    alpha: Optional[float] = typer.Option(None, "--alpha", min=0.0, max=1.0,
                                          help="Fusion weight for every task: alpha * retrieval + (1 - alpha) * "
                                               "rerank (default: the released per-task weights: 0.5, but 2/3 for "
                                               "mscoco_task0 and 1/1.1 for mscoco_task3)."),
    listwise: bool = typer.Option(False, "--listwise", help="Listwise reranking instead of pointwise P(Yes)."),
    rerank_batch_size: Optional[int] = typer.Option(None, "--rerank-batch-size", min=1,
                                                     help="Candidates per reranker forward (default: 64 on a GPU, 16 on the CPU)."),
    rerank_scores: Optional[str] = RERANK_SCORES,
) -> None:
    """Evaluate on M-BEIR: a per-task table (the paper's Table 2), TREC runs, cached embeddings.

    Queries use the first instruction of their task unless --instructions random. Under torchrun,
    every process encodes a share of each pool; the first one searches and writes. With --rerank,
    the stored runs are reranked (nothing is encoded again) and Ret and Ret+Rank are shown side by
    side; the rerank scores are kept in OUT/rerank-scores, so an interrupted or repeated run
    scores only what is missing.
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
    reranking = _rerank_options(rerank, rerank_lora=rerank_lora, alpha=alpha, listwise=listwise,
                                rerank_scores=rerank_scores, rerank_top_k=rerank_top_k, top_k=top_k)
    console = Console(stderr=True, quiet=quiet or not _is_rank_zero())
    # The reranker's settings: its own folder's, with the options given (positions do not apply: M-RoPE).
    rerank_settings = dict(max_pixels=max_pixels, min_pixels=min_pixels, max_tokens=max_tokens,
                           image_pixel_limit=image_pixel_limit, rerank_scores=rerank_scores)
    if reranking and model is None and baseline is None:  # rerank the runs already in --out
        _check_stored(out, root, pool=pool, split=split, instructions=instructions, seed=seed,
                      rerank_top_k=rerank_top_k)
        console.print(f"output folder: {out.resolve()} (reranking its stored runs)", markup=False,
                      highlight=False, soft_wrap=True)
        _rerank_and_report(out, root, names, console, model=rerank, lora=rerank_lora, device=device, dtype=dtype,
                           top_k=rerank_top_k, alpha=alpha, listwise=listwise, batch_size=rerank_batch_size,
                           quiet=quiet, settings=rerank_settings)
        typer.echo(f"nothing encoded; wrote results.json, results.csv, results.md and runs/ to {out.resolve()}")
        return
    if model is None and baseline is None:  # lamra's default model (it says so)
        model, lora = resolve_model(None, lora)
    settings = model_settings(model, max_pixels=max_pixels, min_pixels=min_pixels, positions=positions,
                              max_tokens=max_tokens, image_pixel_limit=image_pixel_limit)
    if reranking:
        _check_sources(rerank, rerank_lora)  # a wrong --rerank fails before the retrieval runs
    encoder = _encoder(model, lora, baseline, device, dtype, positives=lambda: oracle_positives(root, names, split),
                       settings=settings, quiet=quiet)
    console.print(f"output folder: {out.resolve()}", markup=False, highlight=False, soft_wrap=True)
    results = evaluate_mbeir(root, encoder, out, tasks=names, pool=pool, split=split, top_k=top_k,
                             cache_dir=cache_dir, index_dtype=index_dtype, batch_size=batch_size,
                             show_progress=not quiet, announce=lambda message: console.print(message, style="dim"),
                             instructions=instructions, seed=seed, skip_bad=skip_bad, shard_size=shard_size)
    if not _is_rank_zero():
        return
    if reranking:
        del encoder  # the retriever leaves memory before the reranker loads
        _free_accelerator_memory()
        _rerank_and_report(out, root, names, console, model=rerank, lora=rerank_lora, device=device, dtype=dtype,
                           top_k=rerank_top_k, alpha=alpha, listwise=listwise, batch_size=rerank_batch_size,
                           quiet=quiet, settings=rerank_settings)
    else:
        Console().print(rich_table(results.results, f"M-BEIR, {pool} pool ({split})"))
    typer.echo(f"pool: {pool}, {describe_pool(pool, split)}")
    bad_queries = sum(len(v) for v in results.skipped["queries"].values())
    bad_candidates = sum(len(v) for v in results.skipped["candidates"].values())
    if bad_queries or bad_candidates:
        typer.echo(f"left out {bad_queries} bad queries (scored as misses) and {bad_candidates} bad candidates; "
                   f"listed under 'skipped' in {results.files['json']}")
    encoded = f"encoded {len(results.built)}, reused {len(results.reused)} cached embedding sets"
    typer.echo(f"{encoded}; wrote results.json, results.csv, results.md and runs/ to {out.resolve()}")


def _rerank_options(rerank, *, rerank_lora, alpha, listwise, rerank_scores, rerank_top_k, top_k) -> bool:
    """Whether this run reranks; reranking options without --rerank, or a depth past --top-k, are usage errors."""
    if rerank is None:
        unused = rerank_options_without_rerank(rerank_lora=rerank_lora, alpha=alpha, listwise=listwise,
                                               rerank_scores=rerank_scores)
        if unused:
            raise typer.BadParameter(unused, param_hint="--rerank")
        return False
    if rerank_top_k > top_k:
        raise typer.BadParameter(f"{rerank_top_k} is more than the {top_k} candidates retrieved per query "
                                 "(raise --top-k)", param_hint="--rerank-top-k")
    return True


def _check_stored(out: Path, root: Path, *, pool: str, split: str, instructions: str, seed: int,
                  rerank_top_k: int) -> None:
    """--rerank alone: the evaluation in --out must be the one these options describe."""
    from ..evaluation.rerank import read_evaluation

    try:
        report = read_evaluation(out)
    except InputError as exc:
        raise typer.BadParameter(f"no evaluation to rerank in {out} ({exc}): give --model (or --baseline) to run "
                                 "the retrieval first, or --out with an earlier evaluation",
                                 param_hint="--rerank") from None
    stored_choice = report.get("instruction_choice", "first")
    stored_seed = report.get("instruction_seed") or 0
    mismatches = [(option, given, stored) for option, given, stored in (
        ("--pool", pool, report["pool"]), ("--split", split, report["split"]),
        ("--instructions", instructions, stored_choice),
        ("--seed", seed if instructions == "random" else 0, stored_seed if stored_choice == "random" else 0))
        if given != stored]
    if Path(report["root"]).resolve() != root.resolve():
        mismatches.append(("ROOT", str(root), report["root"]))
    if mismatches:
        said = "; ".join(f"{option} {stored} there, {given} here" for option, given, stored in mismatches)
        raise typer.BadParameter(f"{out} holds another evaluation ({said}): pass the same options, or --model to "
                                 "evaluate again", param_hint="--rerank")
    if rerank_top_k > int(report["top_k"]):
        raise typer.BadParameter(f"the stored runs hold the top {report['top_k']} per query; {rerank_top_k} is "
                                 "more", param_hint="--rerank-top-k")


def _check_sources(model, lora) -> None:
    from .models import check_sources

    check_sources(model, lora)


def _free_accelerator_memory() -> None:
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _rerank_and_report(out: Path, root: Path, names, console, *, model, lora, device, dtype, top_k, alpha, listwise,
                       batch_size, quiet, settings: dict) -> None:
    """Load the reranker, rerank the stored runs in ``out``, print Ret and Ret+Rank side by side."""
    from rich.console import Console

    from ..evaluation.rerank import read_evaluation, rerank_mbeir
    from ..evaluation.report import rich_side_by_side
    from .models import load_reranker

    report = read_evaluation(out)
    reranker = load_reranker(model, lora=lora, device=device, dtype=dtype, settings=model_settings(model, **settings),
                             quiet=quiet)
    results = rerank_mbeir(out, reranker, root=root, tasks=names, top_k=top_k, alpha=alpha,
                           mode="listwise" if listwise else "pointwise", batch_size=batch_size,
                           show_progress=not quiet, announce=lambda message: console.print(message, style="dim"))
    Console().print(rich_side_by_side(results.retrieval, results.reranked,
                                      f"M-BEIR, {report['pool']} pool ({report['split']}): Ret and Ret+Rank"))
    typer.echo(f"reranked the top {top_k} ({results.mode}); alpha: "
               + (f"{alpha:g}" if alpha is not None else "the released per-task weights"))
    scored, reused = sum(results.scored.values()), sum(results.reused.values())
    typer.echo(f"rerank scores: {scored} queries scored, {reused} reused from {out.resolve() / 'rerank-scores'}")


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
    if model is None and baseline is None:  # lamra's default model (it says so)
        model, lora = resolve_model(None, lora)
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
