"""``lamra index build | add | info`` and ``lamra search``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from .options import DEVICE, DTYPE, LORA, MODEL

index_app = typer.Typer(help="Build, extend and inspect a vector index of a collection.", no_args_is_help=True)

COLLECTION = typer.Argument(..., help="A folder of images (recursive), a jsonl of {\"id\", \"text\", \"image\"} "
                                      "items, or an M-BEIR candidate pool jsonl.")
KIND = typer.Option("auto", "--kind", help="Collection kind: auto, images, jsonl or mbeir.")
MBEIR_ROOT = typer.Option(None, "--mbeir-root", help="M-BEIR root (image paths of a pool are relative to it; "
                                                     "default: the folder above cand_pool/).")
SKIP_BAD = typer.Option(False, "--skip-bad", help="Index the good items and list the bad ones in the manifest, "
                                                  "instead of stopping at the first.")
SHARD_SIZE = typer.Option(1024, "--shard-size", help="Items per checkpointed shard.")
BATCH_SIZE = typer.Option(64, "--batch-size", help="Most items in one forward pass.")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar.")


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")
    app.command("search")(search)


@index_app.command("build")
def build(
    collection: Path = COLLECTION,
    model: str = MODEL,
    out: Path = typer.Option(..., "--out", "-o", help="Index folder to create (an interrupted build there resumes)."),
    lora: Optional[Path] = LORA,
    backend: str = typer.Option("flat", help="flat (exact), ivf or hnsw (approximate, for large collections)."),
    vector_dtype: str = typer.Option("float16", "--vector-dtype", help="Stored vectors: float16 or float32."),
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
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    quiet: bool = QUIET,
) -> None:
    """Encode a collection into an index folder, in checkpointed shards.

    Killed and started again, the same command resumes. Under ``torchrun --nproc_per_node N``
    every process encodes its share and rank 0 writes the index.
    """
    from ..data.collections import open_collection
    from ..index import Index

    items = open_collection(collection, kind=kind, mbeir_root=mbeir_root, skip_bad=skip_bad)
    _report_bad_lines(items.bad)
    retriever = _retriever(model, lora, device, dtype)
    params = {"nlist": nlist, "nprobe": nprobe, "M": hnsw_m, "ef_construction": ef_construction,
              "ef_search": ef_search, "encoding": encoding}
    params = {k: v for k, v in params.items() if v is not None}
    try:
        index = Index.build(items.records, retriever, out, backend=backend, dtype=vector_dtype,
                            shard_size=shard_size, show_progress=not quiet, skip_bad=skip_bad,
                            batch_size=batch_size, **params)
    except ValueError as exc:
        _usage_error(exc)
    if _rank() == 0:
        skipped = len(index.manifest.get("skipped", []))
        typer.echo(f"indexed {len(index)} items ({index.manifest['backend']}, dimension {index.dim}) in {out}"
                   + (f"; {skipped} bad item(s) skipped (see `lamra index info`)" if skipped else ""))


@index_app.command("add")
def add(
    index_path: Path = typer.Argument(..., metavar="INDEX", help="Index folder."),
    collection: Path = COLLECTION,
    model: str = MODEL,
    lora: Optional[Path] = LORA,
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Leave out items whose id is already indexed."),
    kind: str = KIND,
    mbeir_root: Optional[Path] = MBEIR_ROOT,
    skip_bad: bool = SKIP_BAD,
    shard_size: int = SHARD_SIZE,
    batch_size: int = BATCH_SIZE,
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    quiet: bool = QUIET,
) -> None:
    """Append the items of a collection to an index (resumable like build)."""
    from ..data.collections import open_collection
    from ..index import Index

    index = Index.open(index_path)
    items = open_collection(collection, kind=kind, mbeir_root=mbeir_root, skip_bad=skip_bad)
    _report_bad_lines(items.bad)
    retriever = _retriever(model, lora, device, dtype)
    before = len(index)
    index.add(items.records, retriever, show_progress=not quiet, shard_size=shard_size, skip_bad=skip_bad,
              skip_existing=skip_existing, batch_size=batch_size)
    if _rank() == 0:
        typer.echo(f"added {len(index) - before} items; {index_path} now holds {len(index)}")


@index_app.command("info")
def info(
    index_path: Path = typer.Argument(..., metavar="INDEX", help="Index folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON."),
    verify: bool = typer.Option(False, "--verify", help="Also check every file's checksum."),
) -> None:
    """Print an index's manifest: model, prompt format, dimension, count, backend, files."""
    from ..index import Index
    from ..index.files import read_manifest

    manifest = Index.open(index_path, verify=True).manifest if verify else read_manifest(index_path)
    if as_json:
        typer.echo(json.dumps(manifest, indent=2, ensure_ascii=False))
        return
    size = sum(entry["bytes"] for seg in manifest["segments"] for entry in (seg["vectors"], seg["ids"], seg["items"]))
    size += (manifest.get("backend_file") or {}).get("bytes", 0)
    rows = [("model", manifest.get("model")), ("adapter", manifest.get("adapter")),
            ("prompt format", manifest.get("prompt_format")), ("dimension", manifest.get("dim")),
            ("items", manifest.get("count")), ("vectors", manifest.get("dtype")),
            ("backend", manifest.get("backend")),
            ("backend parameters", json.dumps(manifest.get("backend_params", {}))),
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


def search(
    index_path: Path = typer.Argument(..., metavar="INDEX", help="Index folder."),
    text: Optional[str] = typer.Option(None, "--text", "-t", help="Query text."),
    image: Optional[Path] = typer.Option(None, "--image", "-i", help="Query image file."),
    instruction: Optional[str] = typer.Option(None, help="Task instruction, e.g. \"Find me an everyday image "
                                                         "that matches the given caption.\""),
    k: int = typer.Option(10, "-k", help="How many results."),
    model: str = MODEL,
    lora: Optional[Path] = LORA,
    nprobe: Optional[int] = typer.Option(None, help="ivf: lists visited (overrides the index's setting)."),
    ef_search: Optional[int] = typer.Option(None, help="hnsw: search beam width (overrides the index's)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
) -> None:
    """Search an index with a text and / or image query."""
    from ..index import Index
    from ..items import Item

    if text is None and image is None:
        _usage_error("give --text and/or --image")
    retriever = _retriever(model, lora, device, dtype)
    index = Index.open(index_path, expect=retriever.fingerprint())
    query = Item(text=text, images=[image] if image else [])
    vectors = retriever.encode([query], instruction, show_progress=False)
    overrides = {k_: v for k_, v in {"nprobe": nprobe, "ef_search": ef_search}.items() if v is not None}
    try:
        scores, ids = index.search(vectors, k, **overrides)
    except ValueError as exc:
        _usage_error(exc)
    hits = [{"rank": n + 1, "id": item_id, "score": float(score), "text": meta.get("text"), "image": meta.get("image")}
            for n, (item_id, score) in enumerate(zip(ids[0], scores[0]))
            for meta in [index.metadata(item_id)]]
    if as_json:
        typer.echo(json.dumps({"query": {"text": text, "image": str(image) if image else None,
                                         "instruction": instruction}, "results": hits}, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"top {len(hits)} of {len(index)} in {index_path}")
    for column, style in (("#", "dim"), ("id", "cyan"), ("score", "green"), ("text", None), ("image", "magenta")):
        table.add_column(column, style=style, overflow="fold")
    for hit in hits:
        table.add_row(str(hit["rank"]), hit["id"], f"{hit['score']:.4f}", _short(hit["text"]), hit["image"] or "")
    Console().print(table)


def _retriever(model, lora, device, dtype):
    from ..modeling.retriever import Retriever

    if device is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        if torch.cuda.is_available():  # one GPU per torchrun process
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return Retriever.from_pretrained(model, lora=lora, device=device, dtype=dtype)


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


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


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
