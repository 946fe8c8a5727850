"""``lamra index build | add | info`` and ``lamra search``."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from ..distributed import rank
from ..pipeline import RERANK_TOP_K
from .options import (
    BATCH_SIZE,
    INDEX_MODEL,
    LORA,
    MILVUS_TOKEN,
    MILVUS_URI,
    MODEL,
    QUIET,
    RERANK_LORA,
    SHARD_SIZE,
    ModelOptions,
    model_options,
    rerank_options_without_rerank,
)

index_app = typer.Typer(help="Build, extend and inspect a vector index of a collection.", no_args_is_help=True)

COLLECTION = typer.Argument(..., help="A folder of images (recursive), a jsonl of {\"id\", \"text\", \"image\"} "
                                      "items, or an M-BEIR candidate pool jsonl.")
KIND = typer.Option("auto", "--kind", help="Collection kind: auto, images, jsonl or mbeir.")
MBEIR_ROOT = typer.Option(None, "--mbeir-root", help="M-BEIR root (image paths of a pool are relative to it; "
                                                     "default: the folder above cand_pool/).")
SKIP_BAD = typer.Option(False, "--skip-bad", help="Index the good items and list the bad ones, instead of "
                                                  "stopping (without it, every bad line is listed and nothing "
                                                  "is indexed).")
INDEX = typer.Argument(..., metavar="INDEX", help="Index folder (made by lamra index build).")


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")
    app.command("search")(search)


@index_app.command("build")
@model_options()
def build(
    collection: Path = COLLECTION,
    model: Optional[str] = MODEL,
    out: Path = typer.Option(..., "--out", "-o", help="Index folder to create (an interrupted build there resumes)."),
    lora: Optional[Path] = LORA,
    backend: str = typer.Option("flat", help="flat (exact), ivf or hnsw (approximate, for large collections), "
                                             "or milvus (a Milvus database: embedded, or a server by --milvus-uri)."),
    vector_dtype: Optional[str] = typer.Option(None, "--vector-dtype", help="Stored vectors: float16 or float32 "
                                                                            "(default float16; milvus: float32)."),
    milvus_uri: Optional[str] = MILVUS_URI,
    milvus_token: Optional[str] = MILVUS_TOKEN,
    milvus_collection: Optional[str] = typer.Option(None, "--milvus-collection", help="milvus: the collection's "
                                                    "name (default: lamra_<folder>_<random>, never another's)."),
    milvus_index: Optional[str] = typer.Option(None, "--milvus-index", help="milvus: index type (default FLAT, "
                                               "exact, embedded; HNSW on a server; IVF_FLAT, AUTOINDEX ...)."),
    nlist: Optional[int] = typer.Option(None, help="ivf: number of lists (default ~2 sqrt(N))."),
    nprobe: Optional[int] = typer.Option(None, help="ivf: lists visited per query (default 1% of the lists, at least 16)."),
    hnsw_m: Optional[int] = typer.Option(None, "--hnsw-m", help="hnsw: links per node (default 32)."),
    ef_construction: Optional[int] = typer.Option(None, help="hnsw: build beam width (default 200)."),
    ef_search: Optional[int] = typer.Option(None, help="hnsw: search beam width (default 128)."),
    encoding: Optional[str] = typer.Option(None, help="ivf / hnsw vector codes: flat, fp16, sq8 (int8) or pqM."),
    kind: str = KIND,
    mbeir_root: Optional[Path] = MBEIR_ROOT,
    skip_bad: bool = SKIP_BAD,
    shard_size: int = SHARD_SIZE,
    batch_size: int = BATCH_SIZE,
    workers: int = typer.Option(0, "--workers", min=0, help="Processes decoding and preparing the images of each "
                                "batch (0: one thread; the vectors do not depend on it). FAISS backends only."),
    quiet: bool = QUIET,
    *,
    model_options: ModelOptions,
) -> None:
    """Encode a collection into an index folder, in checkpointed shards.

    Killed and started again, the same command resumes. Under torchrun --nproc_per_node N
    every process encodes its share and rank 0 writes the index.
    """
    from ..index import Index
    from ..index.build import CLI_SKIP_HINT, WORK
    from ..index.source import record_model
    from .models import check_sources, load_retriever, resolve_model

    model, lora = resolve_model(model, lora)
    check_sources(model, lora)
    settings = model_options.settings(model, lora)
    items = _open_collection(collection, kind, mbeir_root, skip_bad, settings.image_pixel_limit,
                             show_progress=not quiet)
    _announce_resume(out / WORK, "build", [record["id"] for record in items.records])
    retriever = load_retriever(model, lora=lora, device=model_options.device, dtype=model_options.dtype,
                               settings=settings, quiet=quiet)
    params = {"nlist": nlist, "nprobe": nprobe, "M": hnsw_m, "ef_construction": ef_construction,
              "ef_search": ef_search, "encoding": encoding}
    params = {k: v for k, v in params.items() if v is not None}
    if backend == "milvus":
        if "encoding" in params:
            _usage_error("--encoding is for the FAISS backends (milvus: --milvus-index)")
        params.update(milvus_uri=milvus_uri, milvus_token=milvus_token, milvus_collection=milvus_collection,
                      index_type=milvus_index, source=str(collection.resolve()))
    elif any(v is not None for v in (milvus_uri, milvus_collection, milvus_index)):
        _usage_error("--milvus-uri, --milvus-collection and --milvus-index need --backend milvus")
    if workers:
        params["num_workers"] = workers
    try:
        index = Index.build(items.records, retriever, out, backend=backend, dtype=vector_dtype,
                            shard_size=shard_size, show_progress=not quiet, skip_bad=skip_bad,
                            skip_hint=CLI_SKIP_HINT, batch_size=batch_size, **params)
    except ValueError as exc:
        _usage_error(exc)
    if rank() == 0:
        record_model(out, model, lora)
        skipped = _record_skipped_lines(out, items.bad)
        typer.echo(f"indexed {len(index)} items ({index.manifest['backend']}, dimension {index.dim}) in {out}"
                   + (f"; {skipped} bad item(s) skipped (see lamra index info)" if skipped else ""))


@index_app.command("add")
@model_options()
def add(
    index_path: Path = INDEX,
    collection: Path = COLLECTION,
    model: Optional[str] = INDEX_MODEL,
    lora: Optional[Path] = LORA,
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Leave out items whose id is already indexed."),
    milvus_uri: Optional[str] = MILVUS_URI,
    milvus_token: Optional[str] = MILVUS_TOKEN,
    kind: str = KIND,
    mbeir_root: Optional[Path] = MBEIR_ROOT,
    skip_bad: bool = SKIP_BAD,
    shard_size: int = SHARD_SIZE,
    batch_size: int = BATCH_SIZE,
    quiet: bool = QUIET,
    *,
    model_options: ModelOptions,
) -> None:
    """Append the items of a collection to an index (resumable like build)."""
    from ..index import Index
    from ..index.build import CLI_SKIP_HINT, WORK
    from .models import check_sources, load_retriever, resolve_model

    model, lora = resolve_model(model, lora, index=index_path)
    check_sources(model, lora)
    settings = model_options.settings(model, lora)
    index = Index.open(index_path, milvus_uri=milvus_uri, milvus_token=milvus_token)
    items = _open_collection(collection, kind, mbeir_root, skip_bad, settings.image_pixel_limit,
                             show_progress=not quiet)
    ids = [record["id"] for record in items.records]
    _announce_resume(index_path / WORK, "add", [i for i in ids if i not in index] if skip_existing else ids)
    retriever = load_retriever(model, lora=lora, device=model_options.device, dtype=model_options.dtype,
                               settings=settings, quiet=quiet)
    before = len(index)
    extra = {"source": str(collection.resolve())} if index.manifest["backend"] == "milvus" else {}
    index.add(items.records, retriever, show_progress=not quiet, shard_size=shard_size, skip_bad=skip_bad,
              skip_hint=CLI_SKIP_HINT, skip_existing=skip_existing, batch_size=batch_size, **extra)
    if rank() == 0:
        _record_skipped_lines(index_path, items.bad)
        typer.echo(f"added {len(index) - before} items; {index_path} now holds {len(index)}")


@index_app.command("info")
def info(
    index_path: Path = INDEX,
    as_json: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON."),
    verify: bool = typer.Option(False, "--verify", help="Also check every file's checksum (milvus: and the "
                                                        "collection's owner, model and row count)."),
    milvus_uri: Optional[str] = MILVUS_URI,
    milvus_token: Optional[str] = MILVUS_TOKEN,
) -> None:
    """Print an index's manifest: model, prompt format, dimension, count, backend, files."""
    from ..index import Index
    from ..index.files import read_manifest

    if verify:
        opened = Index.open(index_path, verify=True, milvus_uri=milvus_uri, milvus_token=milvus_token)
        manifest = opened.manifest
        if manifest["backend"] == "milvus":
            opened.load()  # counts the collection's rows against the manifest
    else:
        manifest = read_manifest(index_path)
    if as_json:
        typer.echo(json.dumps(manifest, indent=2, ensure_ascii=False))
        return
    size = sum(entry["bytes"] for seg in manifest["segments"] for key, entry in seg.items() if key != "count")
    size += (manifest.get("backend_file") or {}).get("bytes", 0)
    rows = [("model", manifest.get("model")), ("adapter", manifest.get("adapter")),
            ("prompt format", manifest.get("prompt_format")), ("rule set", _rule_set(manifest)),
            ("dimension", manifest.get("dim")),
            ("items", manifest.get("count")), ("vectors", manifest.get("dtype")),
            ("backend", manifest.get("backend")),
            ("backend parameters", json.dumps(manifest.get("backend_params", {}))),
            *([("milvus collection", manifest["milvus"]["collection"]),
               ("milvus database", milvus_uri or manifest["milvus"]["uri"])] if manifest.get("milvus") else []),
            ("segments", len(manifest["segments"])), ("size on disk", _human(size)),
            ("created", manifest.get("created")), ("updated", manifest.get("updated")),
            ("skipped bad items", len(manifest.get("skipped", [])))]
    if verify:
        rows.append(("checksums", "ok"))
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, title=str(index_path))
    for key, value in rows:
        table.add_row(key, str(value))
    Console().print(table)
    for entry in manifest.get("skipped", [])[:10]:
        typer.echo(f"skipped: {entry['error']}")


def _rule_set(manifest: dict) -> str:
    """The LamRA release's rules the index's vectors were made under (docs/format.md#rule-sets)."""
    settings = manifest.get("settings")
    if not isinstance(settings, dict):
        return "none recorded"
    return settings.get("rules") or "lamra-qwen2vl (built before lamra named rule sets)"


@model_options(rerank_scores=True)
def search(
    index_path: Path = INDEX,
    text: Optional[str] = typer.Option(None, "--text", "-t", help="Query text."),
    image: Optional[Path] = typer.Option(None, "--image", "-i", help="Query image file."),
    instruction: Optional[str] = typer.Option(None, help="Task instruction, e.g. \"Find me an everyday image "
                                                         "that matches the given caption.\" (the retriever and "
                                                         "the reranker both read it). Default: the M-BEIR "
                                                         "instruction of the task closest to the query's and "
                                                         "the index's modalities; none: no instruction."),
    k: int = typer.Option(10, "-k", min=1, help="How many results."),
    model: Optional[str] = INDEX_MODEL,
    lora: Optional[Path] = LORA,
    rerank: Optional[str] = typer.Option(None, "--rerank", help="Reranker checkpoint (LamRA-Rank): hub id or folder. "
                                                                "The top --top-k hits are reranked and fused."),
    rerank_lora: Optional[Path] = RERANK_LORA,
    top_k: int = typer.Option(RERANK_TOP_K, "--top-k", min=1,
                              help=f"With --rerank: retrieved candidates the reranker scores (LamRA: {RERANK_TOP_K})."),
    alpha: Optional[float] = typer.Option(None, "--alpha", min=0.0, max=1.0,
                                          help="With --rerank: fused = alpha * retrieval + (1 - alpha) * rerank "
                                               "(default 0.5)."),
    listwise: bool = typer.Option(False, "--listwise", help="With --rerank: listwise reranking (windows of "
                                                            "candidates, one answer each) instead of pointwise "
                                                            "P(Yes)."),
    nprobe: Optional[int] = typer.Option(None, help="ivf: lists visited (overrides the index's setting)."),
    ef_search: Optional[int] = typer.Option(None, help="hnsw: search beam width (overrides the index's)."),
    where: Optional[str] = typer.Option(None, "--where", help="milvus: a filter on the items' fields, e.g. "
                                                              "\"modality == 'image'\" (fields: id, modality, "
                                                              "dataset_id, task_id, source, segment)."),
    milvus_uri: Optional[str] = MILVUS_URI,
    milvus_token: Optional[str] = MILVUS_TOKEN,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    *,
    model_options: ModelOptions,
) -> None:
    """Search an index with a text and / or image query; with --rerank, rerank the top hits and fuse.

    With --rerank the table shows three scores per hit: retrieval (cosine), rerank (P(Yes), or
    the listwise odds against the chosen candidate) and fused, which orders the results.
    """
    from ..data.default_instructions import choose_instruction, index_modality, modality
    from ..index import Index
    from ..items import Item
    from ..pipeline import LISTWISE, POINTWISE, Hit, Pipeline
    from ..qwen2vl.images import load_image
    from .models import check_sources, load_reranker, load_retriever, resolve_model

    if text is None and image is None:
        _usage_error("give --text and/or --image")
    unused = None if rerank is not None else rerank_options_without_rerank(
        rerank_lora=rerank_lora, alpha=alpha, listwise=listwise, rerank_scores=model_options.rerank_scores)
    if unused:
        _usage_error(unused)
    if where is not None:
        from ..index.files import read_manifest
        from ..index.milvus_filter import check_where

        if read_manifest(index_path).get("backend") != "milvus":
            _usage_error("--where filters need a Milvus index (lamra index build --backend milvus)")
        check_where(where)  # a bad expression fails before a model loads
    model, lora = resolve_model(model, lora, index=index_path)
    check_sources(model, lora)
    if rerank is not None:
        check_sources(rerank, rerank_lora)  # a wrong --rerank fails before anything loads
    settings = model_options.settings(model, lora)
    if image is not None:
        with _query_image_errors():  # a bad --image (missing, truncated, not an image) fails before a model loads
            load_image(image, pixel_limit=settings.image_pixel_limit)
    retriever = load_retriever(model, lora=lora, device=model_options.device, dtype=model_options.dtype,
                               settings=settings)
    index = Index.open(index_path, expect=retriever.fingerprint(), milvus_uri=milvus_uri, milvus_token=milvus_token)
    choice = choose_instruction(instruction, modality(text, 1 if image else 0),
                                index_modality(index) if instruction is None else None)
    instruction = choice.instruction
    typer.echo(choice.describe(), err=True)
    pipeline = Pipeline(retriever, index, top_k=top_k, alpha=alpha, mode=LISTWISE if listwise else POINTWISE)
    query = Item(text=text, images=[image] if image else [], id="query")
    with _query_image_errors():
        vectors = pipeline.encode([query], instruction)
    overrides = {k_: v for k_, v in {"nprobe": nprobe, "ef_search": ef_search, "where": where}.items() if v is not None}
    try:
        [found] = pipeline.nearest(vectors, pipeline.depth(k, reranking=rerank is not None), **overrides)
    except ValueError as exc:
        _usage_error(exc)
    fused_with = None
    if rerank is None:
        ranked = [Hit(item_id, score) for item_id, score in found]
    else:
        # The reranker loads once the retrieval is done (a bad --nprobe fails before it).
        pipeline.reranker = load_reranker(rerank, lora=rerank_lora, device=model_options.device,
                                          dtype=model_options.dtype, settings=model_options.reranker_settings(rerank, rerank_lora))
        # (The query image was read by the retriever already: an image error here is a candidate's.)
        ranked = pipeline.rerank(query, found, instruction=instruction)
        fused_with = {"model": pipeline.reranker.fingerprint().get("model"), "mode": pipeline.mode,
                      "alpha": pipeline.alpha_for(), "top_k": min(top_k, len(found))}
    hits = [_hit_record(n, hit, index.metadata(hit.id), reranked=rerank is not None)
            for n, hit in enumerate(ranked[:k])]
    if as_json:
        payload = {"query": {"text": text, "image": str(image) if image else None, "instruction": instruction},
                   "results": hits}
        if fused_with is not None:
            payload["rerank"] = fused_with
        typer.echo(json.dumps(payload, ensure_ascii=False))
        return
    _print_hits(hits, f"top {len(hits)} of {len(index)} in {index_path}"
                + (f", top {fused_with['top_k']} reranked ({fused_with['mode']}, alpha {fused_with['alpha']:g})"
                   if fused_with else ""), reranked=fused_with is not None)


def _hit_record(position: int, hit, meta: dict, *, reranked: bool) -> dict:
    record = {"rank": position + 1, "id": hit.id, "score": hit.score}
    if reranked:
        record.update(retrieval=hit.retrieval, rerank=hit.rerank, fused=hit.fused)
    record.update(text=meta.get("text"), image=meta.get("image"))
    return record


def _print_hits(hits: list[dict], title: str, *, reranked: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    scores = ("retrieval", "rerank", "fused") if reranked else ("score",)
    columns = [("#", "dim"), ("id", "cyan")] + [(name, "green") for name in scores] + [("text", None),
                                                                                       ("image", "magenta")]
    for column, style in columns:
        table.add_column(column, style=style, overflow="fold")
    for hit in hits:
        values = [_score(hit[name]) for name in scores]
        table.add_row(str(hit["rank"]), hit["id"], *values, _short(hit["text"]), hit["image"] or "")
    Console().print(table)


def _score(value) -> str:
    return "" if value is None else f"{value:.4f}"


def _open_collection(collection, kind, mbeir_root, skip_bad, pixel_limit=None, show_progress=False):
    """The collection's records, every image decoded once; every bad line listed (then exit 2
    unless --skip-bad), before a model loads or anything is written."""
    from ..data.collections import check_images, open_collection
    from ..errors import BadLinesError

    try:  # the lines' problems and the images' together, in one list
        items = open_collection(collection, kind=kind, mbeir_root=mbeir_root, skip_bad=True)
        items = check_images(items, pixel_limit=pixel_limit, skip_bad=skip_bad, show_progress=show_progress)
    except BadLinesError as exc:
        for entry in sorted(exc.problems, key=lambda entry: entry.get("line") or 0)[:20]:
            typer.echo(f"error: {entry['error']}", err=True)
        more = " (first 20 shown)" if len(exc.problems) > 20 else ""
        typer.echo(f"{len(exc.problems)} bad line(s){more}; nothing indexed. Fix them or pass --skip-bad.", err=True)
        raise typer.Exit(2) from None
    _report_bad_lines(items.bad)
    return items


def _record_skipped_lines(path: Path, bad: list[dict]) -> int:
    """Add the collection's bad lines (--skip-bad) to the manifest's skipped list, beside the items
    that failed while encoding, so lamra index info shows them all; returns the list's length."""
    from ..index.files import read_manifest, write_manifest

    manifest = read_manifest(path)
    skipped = list(manifest.get("skipped", []))
    known = {entry.get("error") for entry in skipped}
    new = [entry for entry in bad if entry["error"] not in known]
    if new:
        manifest["skipped"] = skipped + new
        write_manifest(path, manifest)
    return len(skipped) + len(new)


def _announce_resume(work: Path, kind: str, ids: list[str]) -> None:
    """Say so when an interrupted build / add of the same items is picked up (shown without -v)."""
    import hashlib

    from ..index.build import PLAN

    try:
        plan = json.loads((work / PLAN).read_text())
    except (OSError, ValueError):
        return
    if plan.get("kind") != kind or plan.get("ids_sha256") != hashlib.sha256("\n".join(ids).encode()).hexdigest():
        return  # not this job: the build itself says what is wrong
    done = 0
    for shard in sorted((work / "shards").glob("*.json")):
        upserted = shard.name.endswith(".upserted.json")  # (milvus: in the collection)
        if shard.with_suffix(".npy").is_file() or \
                upserted and not shard.with_name(shard.name.split(".")[0] + ".npy").is_file():
            record = json.loads(shard.read_text())
            done += len(record.get("ids", [])) + len(record.get("bad", []))
    if rank() == 0:
        typer.echo(f"resuming: {done} of {plan.get('count', len(ids))} items already indexed", err=True)


@contextmanager
def _query_image_errors():
    """Errors of the --image of a search say "query image" (it has no file line or item id)."""
    from ..errors import InputError

    try:
        yield
    except InputError as exc:
        if exc.field != "image":
            raise
        raise InputError(f"query image (--image): {exc.reason}") from None


def _usage_error(error) -> None:
    """A bad option value: say so and exit 2 (lamra's own errors go up to main() as they are)."""
    from ..errors import LamraError

    if isinstance(error, LamraError):
        raise error
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(2)


def _report_bad_lines(bad: list[dict]) -> None:
    for entry in bad[:20]:
        typer.echo(f"skipped: {entry['error']}", err=True)
    if len(bad) > 20:
        typer.echo(f"... {len(bad) - 20} more bad line(s) skipped", err=True)


def _short(text: str | None, limit: int = 120) -> str:
    if not text:
        return ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{size} B"
        size /= 1024
    return str(size)
