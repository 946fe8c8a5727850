"""``make demo``: index the bundled sample collection on disk and search it with two queries.

    python -m lamra.demo [--model PATH_OR_HUB_ID] [--lora DIR] [--out demo-out]

Without ``--model`` it uses a tiny Qwen2-VL with RANDOM weights, built in code (nothing can be
downloaded here): the run shows the whole pipeline working, not retrieval quality.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ASSETS = Path(__file__).parent / "assets" / "demo"
QUERIES = [
    ("a photo of a cat", None, "Find me an everyday image that matches the given caption."),
    (None, "images/coffee.jpg", "Find an image caption describing the following everyday image."),
]


def _tiny_untrained_model(folder: Path) -> Path:
    from .tiny import qwen2_tokenizer, save_tiny_checkpoint, small_tokenizer

    if not (folder / "config.json").is_file():
        try:
            tokenizer = qwen2_tokenizer()  # the real Qwen2 BPE, so the prompts are the real ones
        except ImportError:
            tokenizer = small_tokenizer()
        save_tiny_checkpoint(folder, tokenizer=tokenizer, seed=0)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint (default: a tiny untrained model)")
    parser.add_argument("--lora", default=None)
    parser.add_argument("--out", default="demo-out", type=Path)
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from .data.jsonl import read_item_lines
    from .index import Index
    from .items import Item
    from .modeling.retriever import Retriever

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the demo shows its own progress
    console = Console()
    untrained = args.model is None
    model = args.model or _tiny_untrained_model(args.out / "tiny-untrained-qwen2vl")
    if untrained:
        console.print("[bold yellow]NOTE: this demo model is UNTRAINED[/]: a 2-layer Qwen2-VL with random "
                      "weights, built in code. The rankings below show the pipeline working end to end "
                      "(prompts, images, batching, pooling, on-disk index, search), not retrieval quality. "
                      "Pass --model with a LamRA checkpoint for real results.")
    retriever = Retriever.from_pretrained(model, lora=args.lora)
    index_path = args.out / "index"
    if (index_path / "manifest.json").is_file():
        index = Index.open(index_path, expect=retriever.fingerprint())
        console.print(f"Opened the index built earlier: {index_path} ({len(index)} items)")
    else:
        lines = read_item_lines(ASSETS / "collection.jsonl")
        collection = [entry.item for entry in lines if entry.error is None]
        console.print(f"Indexing {len(collection)} items from {ASSETS / 'collection.jsonl'}")
        index = Index.build(collection, retriever, index_path)
        console.print(f"Built {index_path} ({len(index)} items, model {retriever.fingerprint()['model']})")

    for text, image, instruction in QUERIES:
        query = Item(text=text, images=[ASSETS / image] if image else [])
        scores, ids = index.search(retriever.encode([query], instruction, show_progress=False), k=args.top)
        table = Table(title=f"query: {text or image}  (instruction: {instruction})")
        for column in ("rank", "id", "score", "text", "image"):
            table.add_column(column)
        for rank, (item_id, score) in enumerate(zip(ids[0], scores[0]), start=1):
            meta = index.metadata(item_id)
            table.add_row(str(rank), item_id, f"{score:.4f}", meta.get("text") or "",
                          Path(meta["image"]).name if meta.get("image") else "")
        console.print(table)
        console.print("[dim]Prompt the model read for this query:[/]")
        console.print(retriever.prompt(query, instruction).replace("[", r"\["), highlight=False, soft_wrap=True)
    console.print(f"Try it in a browser: [bold].venv/bin/lamra serve {index_path} --model {model}[/]")


if __name__ == "__main__":
    main()
