"""``make demo``: lamra's default model on real, held-out images, with numbers you can check.

    python -m lamra.demo [--model PATH_OR_HUB_ID] [--lora DIR] [--out demo-out] [--untrained]
                         [--train-reranker] [--no-rerank]

Without ``--model`` it uses lamra's default model: a small LamRA-Ret trained by lamra's own
recipe on Debian's cliparts, Fashion-MNIST and WordNet (trained once, on first use, and cached;
see docs/demo-model.md). It indexes held-out images (test cliparts and Fashion-MNIST *test* images,
never seen in training), runs text and image queries and prints the rankings, and the held-out
R@1 / R@5 of every task beside an untrained model and chance. When the demo reranker (a
LamRA-Rank from SmolLM2-135M-Instruct trained on the same data for the text task;
``--train-reranker`` or ``make demo-rerank`` trains it once) is in the cache, its Ret vs Ret+Rank
table is printed and a held-out query of its task is shown reranked.
``--untrained`` (or a machine without the Debian packages) shows the pipeline on the bundled
sample collection with a tiny random model instead, and says so.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
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
    parser.add_argument("--train-reranker", action="store_true",
                        help="train the demo reranker first if it is not cached (about 20 minutes, once)")
    parser.add_argument("--no-rerank", action="store_true", help="show retrieval alone, even with a demo reranker")
    args = parser.parse_args(argv)

    from rich.console import Console
    from transformers.utils import logging as hf_logging

    from .data import DemoSources

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
    from ..retriever.model import Retriever
    from .default_model import DEFAULT_MODEL_FILE, ensure_default_model

    if args.model is None:
        model = ensure_default_model(announce=lambda message: console.print(f"[dim]{message}[/]"))
        record = json.loads((model / DEFAULT_MODEL_FILE).read_text())
        took = f", in {record['train_seconds']:.0f} s on this machine" if record.get("train_seconds", 0) >= 1 else ""
        console.print(f"Default model: {model} (trained by lamra on real offline data{took}; docs/demo-model.md)")
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
    rerank = None if args.model is not None or args.no_rerank else _demo_reranker(console, model, args.train_reranker)
    retriever = Retriever.from_pretrained(model, lora=args.lora)
    index = _demo_index(console, retriever, data, args.out / "index", model, args.lora)
    for text in DEMO_TEXT_QUERIES:
        _show(console, index, retriever, text, None, TEXT_TO_IMAGE, args.top, rerank, "fashionmnist_task0")
    for image in _example_query_images(data):
        _show(console, index, retriever, None, image, IMAGE_TO_IMAGE, args.top, rerank, "fashionmnist_task4")
    if rerank is not None:
        for task in rerank[1]:
            _show_reranked_task(console, retriever, rerank, data, task, args.top)
    console.print(f"Try it in a browser: [bold].venv/bin/lamra serve {args.out / 'index'}[/] "
                  "(the index remembers its model)")


def _print_evaluation(console, evaluation: dict) -> None:
    from rich.table import Table

    table = Table(title="Held-out test split: Recall@1 / Recall@5 (%), trained vs untrained vs chance")
    for column in ("task", "trained R@1", "R@5", "untrained R@1", "R@5", "chance R@1", "R@5"):
        # task names whole (fashionmnist_task0 / 3 / 4 must not all read "fashionmnist…"); headers wrap
        table.add_column(column, justify="left" if column == "task" else "right", no_wrap=column == "task")
    for task, rows in evaluation.items():
        cells = [f"{rows[name][k]:.1f}" for name in ("trained", "untrained", "chance") for k in ("R@1", "R@5")]
        table.add_row(task, *cells)
    console.print(table)


def _demo_reranker(console, model: Path, train: bool):
    """(Reranker, {task: alpha}, K reranked) of the cached demo reranker of ``model``, trained
    first with ``train``; None (and a line saying how to get one) when there is none."""
    from ..reranker.model import Reranker
    from .reranker import STARTS, cached_demo_reranker, ensure_demo_reranker, read_demo_record

    if train:
        folder = ensure_demo_reranker(model, announce=lambda message: console.print(f"[dim]{message}[/]"))
    else:
        folder = cached_demo_reranker(model)
    if folder is None:
        console.print("No demo reranker yet: [bold]make demo-rerank[/] trains one on the same data (about 20 "
                      "minutes on 2 CPU cores, once); make demo then reranks with it (docs/training-rerank.md).")
        return None
    record = read_demo_record(folder)
    reranked = [task for task, row in record["test"].items() if row.get("reranked", True)]
    start = record["recipe"].get("start", "retriever")
    console.print(f"Demo reranker: {folder} (LamRA-Rank trained by lamra on the same data, starting from "
                  f"{STARTS.get(start, start)}; top {record['recipe']['eval']['top_k']} reranked "
                  f"for {', '.join(reranked)}, alpha chosen on the val split; other tasks keep the retrieval ranking)")
    _print_rerank_evaluation(console, record["test"])
    return Reranker.from_pretrained(folder, device="cpu"), dict(record["alphas"]), record["recipe"]["eval"]["top_k"]


def _print_rerank_evaluation(console, test: dict) -> None:
    from rich.table import Table

    table = Table(title="Held-out test split: retrieval alone vs retrieval + rerank, Recall@1 / Recall@5 (%)",
                  caption="alpha -: the task is not reranked (Ret+Rank = Ret)")
    for column in ("task", "Ret R@1", "Ret+Rank R@1", "Ret R@5", "Ret+Rank R@5", "alpha"):
        table.add_column(column, justify="left" if column == "task" else "right", no_wrap=column == "task")
    for task, row in test.items():
        alpha = f"{row['alpha']:g}" if row.get("reranked", True) else "-"
        table.add_row(task, f"{row['Ret']['R@1']:.1f}", f"{row['Ret+Rank']['R@1']:.1f}", f"{row['Ret']['R@5']:.1f}",
                      f"{row['Ret+Rank']['R@5']:.1f}", alpha)
    console.print(table)


def _demo_index(console, retriever, data: Path, path: Path, model, lora):
    from ..data.mbeir import MBEIRLayout, iter_candidates
    from ..index import Index
    from ..index.source import record_model

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
    from ..data.mbeir import MBEIRLayout, read_queries

    layout = MBEIRLayout(data)
    picks = []
    for task in ("fashionmnist_task4", "clipart_task4"):
        queries = read_queries(layout.query_file(task, "test"))
        if queries:
            picks.append(data / queries[0].image)
    return picks


def _show(console, index, retriever, text, image, instruction, top: int, rerank=None, task: str | None = None) -> None:
    """One query's top hits; with ``rerank`` (reranker, alphas, K) the top K reranked and fused."""
    from rich.table import Table

    from ..items import Item

    query = Item(text=text, images=[image] if image else [], id="query")
    if rerank is not None and task not in rerank[1]:
        rerank = None  # the reranker was not trained or validated for this task
    if rerank is None:
        scores, ids = index.search(retriever.encode([query], instruction, show_progress=False), k=top)
        hits = [(item_id, float(score), None) for item_id, score in zip(ids[0], scores[0])]
        title = f"query: {text or Path(image).name}  (instruction: {instruction})"
    else:
        from ..pipeline import search

        reranker, alphas, top_k = rerank
        ranked = search(retriever, index, reranker, [query], top_k=top_k, k=top, alpha=alphas, task=task,
                        instruction=instruction)[0]
        hits = [(hit.id, hit.score, hit) for hit in ranked]
        title = (f"query: {text or Path(image).name}  (instruction: {instruction}; top {top_k} reranked, "
                 f"alpha {alphas.get(task, 0.5):g})")
    table = Table(title=title)
    columns = ("rank", "id", "score", "label", "image") if rerank is None else \
        ("rank", "id", "fused", "retrieval", "P(Yes)", "label", "image")
    for column in columns:
        table.add_column(column)
    for rank, (item_id, score, hit) in enumerate(hits, start=1):
        meta = index.metadata(item_id)
        scores = [f"{score:.3f}"] if hit is None else [f"{score:.3f}", f"{hit.retrieval:.3f}",
                                                       f"{hit.rerank:.3f}" if hit.rerank is not None else "-"]
        table.add_row(str(rank), item_id, *scores, meta.get("label") or meta.get("text") or "",
                      Path(meta["image"]).name if meta.get("image") else "")
    console.print(table)


def _show_reranked_task(console, retriever, rerank, data: Path, task: str, top: int) -> None:
    """A held-out test query of a reranked task, ranked in the task's own test pool: retrieval
    alone beside retrieval + rerank. The query is the first whose right answer is in the
    retriever's top K (reranking can only reorder those), whatever the reranker then does."""
    from rich.table import Table

    from ..data.mbeir import MBEIRLayout, iter_candidates, read_queries
    from ..data.mbeir_instructions import load_instructions
    from ..evaluation.metrics import rank_by_scores
    from ..pipeline import rerank_hits

    reranker, alphas, top_k = rerank
    layout = MBEIRLayout(data)
    queries = read_queries(layout.query_file(task, "test"))
    candidates = {c.did: c.item(data) for c in iter_candidates(layout.local_pool(task))}
    ids = list(candidates)
    table_of_instructions = load_instructions(data)
    candidate_vectors = retriever.encode(list(candidates.values()), show_progress=False)
    for query in queries:
        instruction = table_of_instructions.for_query(query)
        scores = (retriever.encode([query.item(data)], instruction, show_progress=False) @ candidate_vectors.T)[0]
        head = rank_by_scores(scores, ids, top_k)
        if set(query.positives) & set(head):
            break
    else:
        return
    position = {did: index for index, did in enumerate(ids)}
    retrieved = [(did, float(scores[position[did]])) for did in head]
    fused = rerank_hits(reranker, query.item(data), retrieved, candidates, top_k=top_k, alpha=alphas, task=task,
                        instruction=instruction)
    positives = set(query.positives)

    def first_right(order: list[str]) -> int:
        return next(rank for rank, did in enumerate(order, start=1) if did in positives)

    table = Table(title=f"{task}, held-out test query {query.qid}: {query.text!r} (instruction: {instruction}; "
                        f"top {top_k} of {len(ids)} reranked, alpha {alphas[task]:g}; * = the right answer, ranked "
                        f"{first_right(head)} by retrieval alone and {first_right([h.id for h in fused])} "
                        "after reranking)")
    for column in ("rank", "retrieval alone", "retrieval + rerank", "fused", "P(Yes)"):
        table.add_column(column)

    def label(item_id):
        return ("* " if item_id in positives else "") + (candidates[item_id].text or item_id)[:60]

    for rank, ((did, _), hit) in enumerate(zip(retrieved[:top], fused[:top]), start=1):
        table.add_row(str(rank), label(did), label(hit.id), f"{hit.score:.3f}",
                      f"{hit.rerank:.3f}" if hit.rerank is not None else "-")
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
    from ..data.jsonl import read_item_lines
    from ..index import Index
    from ..index.source import record_model
    from ..retriever.model import Retriever

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
