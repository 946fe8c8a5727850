"""``lamra eval mbeir`` and ``lamra eval zeroshot``.

What an M-BEIR evaluation runs (retrieval, or the stored runs alone, then reranking) is
:mod:`lamra.evaluation.workflow`'s; here are the options, the models to load and the tables.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Optional

import typer

from ..distributed import is_main_process
from ..errors import InputError
from ..evaluation import RETRIEVAL_TOP_K
from ..pipeline import RERANK_TOP_K
from .models import resolve_model
from .options import LORA, MILVUS_TOKEN, RERANK_LORA, ModelOptions, model_options, rerank_options_without_rerank

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


@eval_app.command("mbeir")
@model_options(rerank_scores=True)
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
    top_k: int = typer.Option(RETRIEVAL_TOP_K, help="Candidates retrieved per query (and written to the run files)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder for the reports, runs and "
                                                                 "embeddings (default ./lamra-eval/mbeir-POOL)."),
    cache_dir: Optional[Path] = CACHE_DIR,
    index_dtype: str = INDEX_DTYPE,
    backend: str = typer.Option("flat", "--backend", help="Where the candidate pools are indexed: flat (exact, in "
                                                          "the cache folder) or milvus (a Milvus database: for the "
                                                          "5.6M global pool; FLAT exact unless --milvus-index)."),
    milvus_uri: Optional[str] = typer.Option(None, "--milvus-uri", help="milvus: a server / cluster "
                                             "(http://host:19530); default: an embedded database per pool."),
    milvus_token: Optional[str] = MILVUS_TOKEN,
    milvus_index: Optional[str] = typer.Option(None, "--milvus-index", help="milvus: index type (default FLAT, "
                                               "exact like the paper's evaluation; IVF_FLAT / HNSW approximate)."),
    batch_size: Optional[int] = BATCH_SIZE,
    shard_size: int = typer.Option(1024, help="Items per checkpointed shard of an encoding: an interrupted run "
                                              "resumes from its last shard; under torchrun the shards are shared "
                                              "out."),
    quiet: bool = QUIET,
    rerank: Optional[str] = typer.Option(None, "--rerank", help="Reranker checkpoint (LamRA-Rank): rerank each "
                                                                "query's stored top --rerank-top-k, fuse, and show "
                                                                "Ret and Ret+Rank side by side. Without --model / "
                                                                "--baseline, the runs of the evaluation already in "
                                                                "--out are reranked."),
    rerank_lora: Optional[Path] = RERANK_LORA,
    rerank_top_k: int = typer.Option(RERANK_TOP_K, "--rerank-top-k", min=1,
                                     help=f"Retrieved candidates reranked per query (LamRA: {RERANK_TOP_K}; at "
                                          "most --top-k)."),
    alpha: Optional[float] = typer.Option(None, "--alpha", min=0.0, max=1.0,
                                          help="Fusion weight for every task: alpha * retrieval + (1 - alpha) * "
                                               "rerank (default: the released per-task weights: 0.5, but 2/3 for "
                                               "mscoco_task0 and 1/1.1 for mscoco_task3)."),
    listwise: bool = typer.Option(False, "--listwise", help="Listwise reranking instead of pointwise P(Yes)."),
    rerank_batch_size: Optional[int] = typer.Option(None, "--rerank-batch-size", min=1,
                                                     help="Candidates per reranker forward (default: 64 on a GPU, 16 on the CPU)."),
    *,
    model_options: ModelOptions,
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
    from ..evaluation.mbeir import oracle_positives
    from ..evaluation.report import rich_table
    from ..evaluation.workflow import Reranking, StoredEvaluationError, evaluate_and_rerank
    from ..pipeline import LISTWISE, POINTWISE
    from .models import check_sources, load_reranker

    try:
        pool = resolve_pool(pool)
    except InputError as exc:
        raise typer.BadParameter(exc.reason, param_hint="--pool") from None
    if instructions not in INSTRUCTION_CHOICES:
        raise typer.BadParameter(f"'first' or 'random', not {instructions!r}", param_hint="--instructions")
    names = _task_names(tasks)
    out = out or Path("lamra-eval") / f"mbeir-{pool}"
    reranking = None
    if _rerank_options(rerank, rerank_lora=rerank_lora, alpha=alpha, listwise=listwise,
                       rerank_scores=model_options.rerank_scores, rerank_top_k=rerank_top_k, top_k=top_k):
        def load_rerank_model():
            # Its own folder's settings, with the options given (positions do not apply: M-RoPE).
            return load_reranker(rerank, lora=rerank_lora, device=model_options.device, dtype=model_options.dtype,
                                 settings=model_options.reranker_settings(rerank, rerank_lora), quiet=quiet)

        reranking = Reranking(load_rerank_model, top_k=rerank_top_k, alpha=alpha,
                              mode=LISTWISE if listwise else POINTWISE, batch_size=rerank_batch_size)
    console = Console(stderr=True, quiet=quiet or not is_main_process())
    encoder = None  # --rerank without --model / --baseline: the runs already in --out are reranked
    if reranking is None or model is not None or baseline is not None:
        if model is None and baseline is None:  # lamra's default model (it says so)
            model, lora = resolve_model(None, lora)
        settings = model_options.settings(model, lora)
        if reranking:
            check_sources(rerank, rerank_lora)  # a wrong --rerank fails before the retrieval runs
        encoder = partial(_encoder, model, lora, baseline, model_options.device, model_options.dtype,
                          positives=lambda: oracle_positives(root, names, split), settings=settings, quiet=quiet)

    def started(stored: bool) -> None:
        console.print(f"output folder: {out.resolve()}" + (" (reranking its stored runs)" if stored else ""),
                      markup=False, highlight=False, soft_wrap=True)

    try:
        outcome = evaluate_and_rerank(
            root, out, encoder=encoder, rerank=reranking, tasks=names, pool=pool, split=split,
            instructions=instructions, seed=seed, show_progress=not quiet, started=started,
            announce=lambda message: console.print(message, style="dim"), top_k=top_k, cache_dir=cache_dir,
            index_dtype=index_dtype, batch_size=batch_size, skip_bad=skip_bad, shard_size=shard_size,
            pool_backend=_pool_backend(backend, milvus_uri, milvus_token, milvus_index))
    except StoredEvaluationError as exc:
        raise typer.BadParameter(exc.reason, param_hint=exc.option) from None
    results = outcome.retrieval
    if results is None:  # only the stored runs were reranked
        _print_reranked(outcome, out, top_k=rerank_top_k, alpha=alpha)
        typer.echo(f"nothing encoded; wrote results.json, results.csv, results.md and runs/ to {out.resolve()}")
        return
    if not is_main_process():
        return  # the other processes shared the encoding; the first one reports
    if outcome.reranked is not None:
        _print_reranked(outcome, out, top_k=rerank_top_k, alpha=alpha)
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


def _print_reranked(outcome, out: Path, *, top_k: int, alpha) -> None:
    """Ret and Ret+Rank side by side, and what the reranking did."""
    from rich.console import Console

    from ..evaluation.report import rich_side_by_side

    results, report = outcome.reranked, outcome.evaluation
    Console().print(rich_side_by_side(results.retrieval, results.reranked,
                                      f"M-BEIR, {report['pool']} pool ({report['split']}): Ret and Ret+Rank"))
    typer.echo(f"reranked the top {top_k} ({results.mode}); alpha: "
               + (f"{alpha:g}" if alpha is not None else "the released per-task weights"))
    scored, reused = sum(results.scored.values()), sum(results.reused.values())
    typer.echo(f"rerank scores: {scored} queries scored, {reused} reused from {out.resolve() / 'rerank-scores'}")


@eval_app.command("zeroshot")
@model_options(rerank_scores=True)
def zeroshot(
    data: Path = typer.Argument(..., help="With --set: the LamRA_Eval data root (the official scripts' ./data). "
                                          "Without: a folder with queries.jsonl, candidates.jsonl and qrels.txt "
                                          "(see docs/mbeir.md)."),
    sets: Optional[list[str]] = typer.Option(None, "--set", "-s",
                                             help="The paper's zero-shot sets, read as LamRA_Eval ships them and "
                                                  "scored as the official code does: comma-separated or repeated "
                                                  "names, or 'all' (every set found under ROOT). See "
                                                  "docs/zeroshot.md."),
    model: Optional[str] = MODEL,
    lora: Optional[Path] = LORA,
    baseline: Optional[str] = BASELINE,
    metrics: Optional[list[str]] = typer.Option(None, "--metric", "--metrics",
                                                help="R@K, MAP@K or ITM; comma-separated or repeated "
                                                     "(default: R@1,R@5,R@10,MAP@5, or R@1,ITM with candidate lists). "
                                                     "Not with --set (each set has its metrics)."),
    instruction: Optional[str] = typer.Option(None, help="Instruction for queries without their own (not with "
                                                         "--set: each set has its prompts)."),
    top_k: Optional[int] = typer.Option(None, help="Candidates kept per query in the run file (default 10)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default ./lamra-eval/zeroshot-DATA)."),
    cache_dir: Optional[Path] = CACHE_DIR,
    index_dtype: str = INDEX_DTYPE,
    batch_size: Optional[int] = BATCH_SIZE,
    quiet: bool = QUIET,
    rerank: Optional[str] = typer.Option(None, "--rerank", help="With --set: a reranker checkpoint (LamRA-Rank): "
                                                                "each task's top 10 reranked with the official "
                                                                "zero-shot prompts and fused as they are; Ret and "
                                                                "Ret+Rank side by side. Video sets stay retrieval "
                                                                "only (the official code never reranked them)."),
    rerank_lora: Optional[Path] = RERANK_LORA,
    rerank_batch_size: Optional[int] = typer.Option(None, "--rerank-batch-size", min=1,
                                                     help="Candidates per reranker forward (default: 64 on a GPU, "
                                                          "16 on the CPU)."),
    format: Optional[str] = typer.Option(None, "--format",
                                         help="'lamra' (default) or 'official': differs only where the official code "
                                              "has a plain bug (VIST: its query drops the last context caption and "
                                              "image; 'official' reproduces the paper's VIST row); see "
                                              "docs/zeroshot.md."),
    *,
    model_options: ModelOptions,
) -> None:
    """Evaluate zero-shot: the paper's sets (--set, LamRA_Eval layout) or a plain folder.

    With --set, every file of the chosen sets is checked before a model loads; the embeddings
    (OUT/SET/embeddings) and rerank scores (OUT/SET/rerank-scores) are kept, so an interrupted
    or repeated run encodes and scores only what is missing.
    """
    from rich.console import Console
    from rich.table import Table

    if sets:
        if metrics or instruction or top_k is not None:
            raise typer.BadParameter("--metric, --instruction and --top-k are for a plain folder; each set has its "
                                     "own", param_hint="--set")
        _official_sets(data, _task_names(sets), model=model, lora=lora, baseline=baseline, out=out,
                       cache_dir=cache_dir, batch_size=batch_size, quiet=quiet, rerank=rerank,
                       rerank_lora=rerank_lora, rerank_batch_size=rerank_batch_size, format=format or "lamra",
                       model_options=model_options)
        return
    unused = [name for name, value in (("--rerank", rerank), ("--rerank-lora", rerank_lora),
                                       ("--rerank-batch-size", rerank_batch_size),
                                       ("--rerank-scores", model_options.rerank_scores)) if value is not None]
    if unused or format is not None:
        raise typer.BadParameter(f"{(unused or ['--format'])[0]} is for the paper's sets: give --set",
                                 param_hint="--set")

    from ..data.mbeir import read_qrels
    from ..evaluation.zeroshot import QRELS, evaluate_zeroshot

    out = out or Path("lamra-eval") / f"zeroshot-{data.name}"
    if model is None and baseline is None:  # lamra's default model (it says so)
        model, lora = resolve_model(None, lora)
    settings = model_options.settings(model, lora)
    encoder = _encoder(model, lora, baseline, model_options.device, model_options.dtype,
                       positives=lambda: read_qrels(data / QRELS).positives, settings=settings, quiet=quiet)
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


def _official_sets(root: Path, names: list[str], *, model, lora, baseline, out, cache_dir, batch_size, quiet,
                   rerank, rerank_lora, rerank_batch_size, format, model_options: ModelOptions) -> None:
    """``lamra eval zeroshot ROOT --set ...``: read (and check) the sets, then evaluate, then print."""
    from rich.console import Console
    from rich.table import Table

    from ..evaluation.workflow import free_accelerator_memory
    from ..evaluation.zeroshot_sets import FORMATS, resolve_sets
    from ..evaluation.zeroshot_sets.run import ZeroShotReranking, evaluate_zeroshot_sets, table_rows
    from .models import check_sources, load_reranker

    if format not in FORMATS:
        raise typer.BadParameter(f"'official' or 'lamra', not {format!r}", param_hint="--format")
    if baseline == "oracle":
        raise typer.BadParameter("the paper's sets take a model or --baseline random", param_hint="--baseline")
    if rerank is None:
        unused = rerank_options_without_rerank(rerank_lora=rerank_lora, alpha=None, listwise=False,
                                               rerank_scores=model_options.rerank_scores)
        if unused or rerank_batch_size is not None:
            raise typer.BadParameter(unused or "--rerank-batch-size needs --rerank", param_hint="--rerank")
    try:
        names = resolve_sets(root, names)
    except InputError as exc:
        raise typer.BadParameter(exc.reason, param_hint="--set") from None
    out = out or Path("lamra-eval") / "zeroshot"
    if model is None and baseline is None:  # lamra's default model (it says so)
        model, lora = resolve_model(None, lora)
    reranking = None
    if rerank is not None:
        check_sources(rerank, rerank_lora)  # a wrong --rerank fails before anything runs
        reranking = ZeroShotReranking(lambda: load_reranker(rerank, lora=rerank_lora, device=model_options.device,
                                                            dtype=model_options.dtype, quiet=quiet,
                                                            settings=model_options.reranker_settings(rerank, rerank_lora)),
                                      batch_size=rerank_batch_size)
    settings = model_options.settings(model, lora)
    console = Console(stderr=True, quiet=quiet)
    results = evaluate_zeroshot_sets(
        root, names, partial(_encoder, model, lora, baseline, model_options.device, model_options.dtype,
                             settings=settings, quiet=quiet),
        out, reranking=reranking, format=format, cache_dir=cache_dir, batch_size=batch_size,
        show_progress=not quiet, announce=lambda message: console.print(message, style="dim", markup=False),
        free_memory=free_accelerator_memory)
    table = Table(title="Zero-shot (official LamRA evaluation)" + (": Ret and Ret+Rank" if rerank else ""))
    for column in ("Set", "Task", "Metric", "Ret") + (("Ret+Rank",) if rerank else ()):
        table.add_column(column, justify="right" if column.startswith("Ret") else "left")
    for result in results:
        for task, metric, ret, ranked in table_rows(result):
            table.add_row(result.name, task, metric, ret, *((ranked,) if rerank else ()))
    Console().print(table)
    for result in results:
        for note in result.notes:
            typer.echo(f"{result.name}: {note}")
    encoded = sum(len(r.built) for r in results)
    reused = sum(len(r.reused) for r in results)
    scored = sum(r.scored for r in results)
    typer.echo(f"encoded {encoded}, reused {reused} cached embedding sets"
               + (f"; reranked {scored} queries, {sum(r.rescored for r in results)} reused" if rerank else "")
               + f"; wrote results.json and results.md per set to {out.resolve()}")


def _pool_backend(backend: str, uri: Optional[str], token: Optional[str], index_type: Optional[str]) -> dict | None:
    """``Index.build`` options of the pools' backend (None: the default flat index)."""
    if backend == "flat":
        if uri or index_type:
            raise typer.BadParameter("--milvus-uri and --milvus-index need --backend milvus", param_hint="--backend")
        return None
    if backend != "milvus":
        raise typer.BadParameter(f"choose flat or milvus, not {backend!r}", param_hint="--backend")
    options = {"backend": "milvus", "index_type": (index_type or "FLAT").upper()}
    if uri:
        options["milvus_uri"] = uri
    if token:
        options["milvus_token"] = token
    return options
