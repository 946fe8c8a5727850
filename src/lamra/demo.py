"""``make demo``: lamra's default model on real, held-out images, with numbers you can check.

    python -m lamra.demo [--model PATH_OR_HUB_ID] [--lora DIR] [--out demo-out] [--untrained]

Without ``--model`` it uses lamra's default model: a small LamRA-Ret trained by lamra's own
recipe on Debian's cliparts, Fashion-MNIST and WordNet (trained once, on first use, and cached;
see docs/demo-model.md). It indexes held-out images (test cliparts and Fashion-MNIST *test* images,
never seen in training), runs text and image queries and prints the rankings, and the held-out
R@1 / R@5 of every task beside an untrained model and chance. ``--untrained`` (or a machine
without the Debian packages) shows the pipeline on the bundled sample collection with a tiny
random model instead, and says so.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ASSETS = Path(__file__).parent / "assets" / "demo"
SAMPLE_QUERIES = [
    ("a photo of a cat", None, "Find me an everyday image that matches the given caption."),
    (None, "images/coffee.jpg", "Find an image caption describing the following everyday image."),
]
TEXT_TO_IMAGE = "Find me an everyday image that matches the given caption."
IMAGE_TO_IMAGE = "Find a day-to-day image that looks similar to the provided image."
DEMO_TEXT_QUERIES = ["an ankle boot", "a pair of trousers", "a handbag", "a flag", "a car", "a cat"]
# The held-out pools indexed by the demo: every clipart and Fashion-MNIST test image.
DEMO_POOLS = ("clipart_task0", "fashionmnist_task0")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint (default: lamra's default model)")
    parser.add_argument("--lora", default=None)
    parser.add_argument("--out", default="demo-out", type=Path)
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--untrained", action="store_true", help="a tiny random model on the sample collection")
    args = parser.parse_args(argv)

    from rich.console import Console
    from transformers.utils import logging as hf_logging

    from .data.demo_data import DemoSources

    hf_logging.disable_progress_bar()  # the demo shows its own progress
    console = Console()
    missing = DemoSources().missing()
    if args.untrained or (args.model is None and missing):
        if missing and not args.untrained:
            console.print(f"[bold yellow]The default model is trained on Debian's {', '.join(missing)}[/], "
                          "which are not installed (`make data-packages` as root installs them): showing the "
                          "pipeline with an untrained model instead.")
        _sample_demo(console, args)
        return
    _trained_demo(console, args)


# -- the trained default model on held-out data ---------------------------------------------------

def _trained_demo(console, args) -> None:
    from .default_model import DEFAULT_MODEL_FILE, ensure_default_model
    from .modeling.retriever import Retriever

    if args.model is None:
        model = ensure_default_model(announce=lambda message: console.print(f"[dim]{message}[/]"))
        record = json.loads((model / DEFAULT_MODEL_FILE).read_text())
        console.print(f"Default model: {model} (trained by lamra in {record['train_seconds']:.0f} s on real "
                      "offline data; docs/demo-model.md)")
        _print_evaluation(console, record["evaluation"])
        data = Path(record["data"])
    else:
        from .default_model import cached_default_model

        model = args.model
        cached = cached_default_model()
        if cached is None:
            raise SystemExit("the demo collection comes with the default model's data: run `make demo` once "
                             "without --model first")
        data = Path(json.loads((cached / DEFAULT_MODEL_FILE).read_text())["data"])
    retriever = Retriever.from_pretrained(model, lora=args.lora)
    index = _demo_index(console, retriever, data, args.out / "index", model, args.lora)
    for text in DEMO_TEXT_QUERIES:
        _show(console, index, retriever, text, None, TEXT_TO_IMAGE, args.top)
    for image in _example_query_images(data):
        _show(console, index, retriever, None, image, IMAGE_TO_IMAGE, args.top)
    console.print(f"Try it in a browser: [bold].venv/bin/lamra serve {args.out / 'index'}[/] "
                  "(the index remembers its model)")


def _print_evaluation(console, evaluation: dict) -> None:
    from rich.table import Table

    table = Table(title="Held-out test split: Recall@1 / Recall@5 (%), trained vs untrained vs chance")
    for column in ("task", "trained R@1", "R@5", "untrained R@1", "R@5", "chance R@1", "R@5"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for task, rows in evaluation.items():
        cells = [f"{rows[name][k]:.1f}" for name in ("trained", "untrained", "chance") for k in ("R@1", "R@5")]
        table.add_row(task, *cells)
    console.print(table)


def _demo_index(console, retriever, data: Path, path: Path, model, lora):
    from .index.source import record_model
    from .data.mbeir import MBEIRLayout, iter_candidates
    from .index import Index

    if (path / "manifest.json").is_file():
        try:
            index = Index.open(path, expect=retriever.fingerprint())
            console.print(f"Opened the index built earlier: {path} ({len(index)} held-out images)")
            return index
        except Exception as exc:  # another model: rebuild
            console.print(f"[dim]{exc}; rebuilding[/]")
            import shutil

            shutil.rmtree(path)
    layout = MBEIRLayout(data)
    records = []
    for task in DEMO_POOLS:
        for candidate in iter_candidates(layout.local_pool(task)):
            source = json.loads(candidate.src_content or "{}")
            label = source.get("title") or source.get("class") or ""
            records.append({"id": candidate.did, "image": str(data / candidate.image), "label": label})
    console.print(f"Indexing {len(records)} held-out images (test cliparts and Fashion-MNIST test images)")
    index = Index.build(records, retriever, path)
    record_model(path, model, lora)
    return index


def _example_query_images(data: Path) -> list[Path]:
    """Two test images that are queries of the image -> image tasks (not in the indexed pools)."""
    from .data.mbeir import MBEIRLayout, read_queries

    layout = MBEIRLayout(data)
    picks = []
    for task in ("fashionmnist_task4", "clipart_task4"):
        queries = read_queries(layout.query_file(task, "test"))
        if queries:
            picks.append(data / queries[0].image)
    return picks


def _show(console, index, retriever, text, image, instruction, top: int) -> None:
    from rich.table import Table

    from .items import Item

    query = Item(text=text, images=[image] if image else [], id="query")
    scores, ids = index.search(retriever.encode([query], instruction, show_progress=False), k=top)
    table = Table(title=f"query: {text or Path(image).name}  (instruction: {instruction})")
    for column in ("rank", "id", "score", "label", "image"):
        table.add_column(column)
    for rank, (item_id, score) in enumerate(zip(ids[0], scores[0]), start=1):
        meta = index.metadata(item_id)
        table.add_row(str(rank), item_id, f"{score:.3f}", meta.get("label") or meta.get("text") or "",
                      Path(meta["image"]).name if meta.get("image") else "")
    console.print(table)


# -- the pipeline on the bundled sample, with a tiny random model ---------------------------------

def _tiny_untrained_model(folder: Path) -> Path:
    from .tiny import qwen2_tokenizer, save_tiny_checkpoint, small_tokenizer

    if not (folder / "config.json").is_file():
        try:
            tokenizer = qwen2_tokenizer()  # the real Qwen2 BPE, so the prompts are the real ones
        except ImportError:
            tokenizer = small_tokenizer()
        save_tiny_checkpoint(folder, tokenizer=tokenizer, seed=0)
    return folder


def _sample_demo(console, args) -> None:
    from .index.source import record_model
    from .data.jsonl import read_item_lines
    from .index import Index
    from .modeling.retriever import Retriever

    model = args.model or _tiny_untrained_model(args.out / "tiny-untrained-qwen2vl")
    if args.model is None:
        console.print("[bold yellow]NOTE: this demo model is UNTRAINED[/]: a 2-layer Qwen2-VL with random "
                      "weights, built in code. The rankings below show the pipeline working end to end "
                      "(prompts, images, batching, pooling, on-disk index, search), not retrieval quality.")
    retriever = Retriever.from_pretrained(model, lora=args.lora)
    index_path = args.out / "sample-index"
    if (index_path / "manifest.json").is_file():
        index = Index.open(index_path, expect=retriever.fingerprint())
        console.print(f"Opened the index built earlier: {index_path} ({len(index)} items)")
    else:
        lines = read_item_lines(ASSETS / "collection.jsonl")
        collection = [entry.item for entry in lines if entry.error is None]
        console.print(f"Indexing {len(collection)} items from {ASSETS / 'collection.jsonl'}")
        index = Index.build(collection, retriever, index_path)
        record_model(index_path, model, args.lora)
    for text, image, instruction in SAMPLE_QUERIES:
        _show(console, index, retriever, text, ASSETS / image if image else None, instruction, args.top)
    console.print(f"Try it in a browser: [bold].venv/bin/lamra serve {index_path}[/]")


if __name__ == "__main__":
    main()
