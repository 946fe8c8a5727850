"""``lamra mine``: hard negatives for reranker training (each training query's top-k)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..distributed import is_main_process
from .options import BATCH_SIZE, LORA, MILVUS_TOKEN, MODEL, QUIET, SHARD_SIZE, ModelOptions, model_options


def register(app: typer.Typer) -> None:
    app.command("mine")(mine)


@model_options()
def mine(
    model: Optional[str] = MODEL,
    data: Path = typer.Option(..., "--data", help="M-BEIR root (query/union_train or query/train, and "
                                                  "cand_pool/global/mbeir_union_train_cand_pool.jsonl)."),
    out: Path = typer.Option(..., "--out", "-o", help="The mined jsonl to write (an interrupted run there resumes)."),
    lora: Optional[Path] = LORA,
    k: int = typer.Option(100, "--k", min=1, help="Candidates kept per query (the released code: 100)."),
    queries: Optional[list[Path]] = typer.Option(None, "--queries", help="Query jsonl file(s) (default: "
                                                                         "query/union_train, else query/train/*)."),
    pool: Optional[Path] = typer.Option(None, "--pool", help="Candidate pool jsonl (default: the union train pool)."),
    pools: str = typer.Option("task", "--pools", help="task: each query ranks its task's part of the pool (its "
                                                      "dataset and candidate modality); union: the whole pool."),
    instructions: str = typer.Option("first", "--instructions", help="first: the first instruction of the task; "
                                                                     "random: the released code's seeded choice. "
                                                                     "A query line's own 'instruction' wins."),
    seed: int = typer.Option(0, help="Seed of --instructions random."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
    backend: str = typer.Option("flat", "--backend", help="Where the pool is indexed: flat, or milvus (a Milvus "
                                                          "database; each task searches it with a filter)."),
    milvus_uri: Optional[str] = typer.Option(None, "--milvus-uri", help="milvus: a server / cluster "
                                             "(http://host:19530); default: an embedded database."),
    milvus_token: Optional[str] = MILVUS_TOKEN,
    milvus_index: Optional[str] = typer.Option(None, "--milvus-index", help="milvus: index type (default FLAT: "
                                               "exact, like the flat pool)."),
    shard_size: int = SHARD_SIZE,
    batch_size: int = BATCH_SIZE,
    quiet: bool = QUIET,
    *,
    model_options: ModelOptions,
) -> None:
    """Embed the training queries with a retriever and store each one's top-k, its positives and
    its negatives (the top-k minus the positives), for `lamra train reranker`.

    Killed and started again with the same arguments, it resumes. Under torchrun every process
    encodes its share and rank 0 searches and writes.
    """
    from ..reranker.mining import plan_mining, work_folder
    from .models import check_sources, load_retriever, resolve_model

    model, lora = resolve_model(model, lora)
    check_sources(model, lora)
    if backend not in ("flat", "milvus"):
        raise typer.BadParameter(f"choose flat or milvus, not {backend!r}", param_hint="--backend")
    if backend == "flat" and (milvus_uri or milvus_index):
        raise typer.BadParameter("--milvus-uri and --milvus-index need --backend milvus", param_hint="--backend")
    pool_backend = None
    if backend == "milvus":
        pool_backend = {"backend": "milvus", "index_type": (milvus_index or "FLAT").upper()}
        pool_backend.update({k: v for k, v in {"milvus_uri": milvus_uri, "milvus_token": milvus_token}.items() if v})
    settings = model_options.settings(model, lora)
    # Bad data fails here, in one line, before the model loads.
    plan = plan_mining(data, queries=queries, pool=pool, pools=pools, instructions=instructions, seed=seed)
    if work_folder(out).is_dir() and is_main_process():
        typer.echo(f"resuming the interrupted run in {work_folder(out)}", err=True)
    retriever = load_retriever(model, lora=lora, device=model_options.device, dtype=model_options.dtype,
                               settings=settings, quiet=quiet)
    from ..reranker.mining import mine as run

    summary = run(retriever, data, out, k=k, queries=queries, pool=pool, pools=pools, instructions=instructions,
                  seed=seed, shard_size=shard_size, batch_size=batch_size, show_progress=not quiet, overwrite=force,
                  plan=plan, pool_backend=pool_backend)
    if not is_main_process():
        return
    typer.echo(f"{'task':<24}{'queries':>8}{'pool':>9}{'R@1':>8}{'R@5':>8}{'R@10':>8}")
    for name, stats in summary.tasks.items():
        typer.echo(f"{name:<24}{stats['queries']:>8}{stats['pool']:>9}{stats['recall@1']:>8.1f}"
                   f"{stats['recall@5']:>8.1f}{stats['recall@10']:>8.1f}")
    without = sum(stats["without_negatives"] for stats in summary.tasks.values())
    unlabelled = sum(stats.get("unlabelled", 0) for stats in summary.tasks.values())
    typer.echo(f"mined the top {k} of {summary.queries} queries into {out}"
               + (f"; {without} query(ies) have no negative in their top {k}" if without else "")
               + (f"; {unlabelled} query(ies) have no positive (recall is over the others; distillation "
                  "learns from their top-k alone)" if unlabelled else ""))
