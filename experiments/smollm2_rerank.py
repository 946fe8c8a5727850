"""LamRA-Rank on real weights: a SmolLM2-135M-Instruct reranker for the demo's WordNet task.

LamRA trains its reranker from a pretrained instruction-tuned model, not from the retriever.
The demo reranker (``lamra.demo.reranker``) used to start from the tiny demo retriever, which has
never learned to judge relevance; this experiment, now its recipe (``RERANK_RECIPE``), starts from
SmolLM2-135M-Instruct instead (the Qwen2-VL checkpoint that ``smollm2_stage1.py build`` writes),
trains it with ``lamra train reranker`` on the demo data's WordNet training queries (the text
task: SmolLM2's vision tower is a tiny random one) with the demo retriever's mined top 100, then
reranks the demo retriever's top 10 of the WordNet val and test queries.

    python experiments/smollm2_stage1.py build --out /work/exp-smollm2          # OUT/base
    python experiments/smollm2_rerank.py data --demo-data DATA --mined MINED --out /work/exp-smollm2
    python experiments/smollm2_rerank.py train --out /work/exp-smollm2 --steps 75 --batch 8
    python experiments/smollm2_rerank.py evaluate --out /work/exp-smollm2 --retriever RET --demo-data DATA
    python experiments/smollm2_rerank.py evaluate ... --adapter none              # zero-shot

DATA: the default model's demo data (``$LAMRA_HOME/models/.lamra-demo-*.work/data``, written by
``make demo``); RET: the default model (``$LAMRA_HOME/models/lamra-demo-*``); MINED: its top 100
(``$LAMRA_HOME/models/.lamra-demo-rerank-*.work/mined.jsonl``, written by ``make demo-rerank``).
Alpha is chosen on val (best R@1, ties to the larger alpha) and the test split is read once
with it. Results: ``OUT/rerank_results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TASK = "wordnet_task1"
TASK_FILE = "mbeir_wordnet_task1"
ALPHAS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
TOP_K = 10


def data(demo_data: Path, mined: Path, out: Path) -> None:
    """OUT/rerank-data: the demo data with only the WordNet training queries (links to the rest)."""
    view = out / "rerank-data"
    (view / "query" / "union_train").mkdir(parents=True, exist_ok=True)
    for entry in demo_data.iterdir():
        if entry.name != "query" and not (view / entry.name).exists():
            os.symlink(entry.resolve(), view / entry.name)
    for entry in (demo_data / "query").iterdir():
        if entry.name != "union_train" and not (view / "query" / entry.name).exists():
            os.symlink(entry.resolve(), view / "query" / entry.name)
    wordnet = set()
    with open(mined) as lines, open(out / "rerank-mined.jsonl", "w") as kept:
        for line in lines:
            record = json.loads(line)
            if record["task"] == TASK:
                wordnet.add(record["qid"])
                kept.write(line)
    for source in (demo_data / "query" / "union_train").glob("*.jsonl"):
        rows = [line for line in open(source) if json.loads(line)["qid"] in wordnet]
        (view / "query" / "union_train" / source.name).write_text("".join(rows))
        print(f"{source.name}: {len(rows)} WordNet training queries (of the {len(wordnet)} mined)")


def train(out: Path, steps: int, batch: int, lr: float) -> None:
    if (out / "rerank").exists():
        sys.exit(f"{out / 'rerank'} exists: lamra would resume that run; remove it to start again")
    command = [sys.executable, "-m", "lamra", "train", "reranker", "--config", "configs/rerank.yaml",
               "--model", str(out / "base"), "--data", str(out / "rerank-data"),
               "--mined", str(out / "rerank-mined.jsonl"), "--output-dir", str(out / "rerank"),
               "--max-steps", str(steps), "--global-batch-size", str(batch), "--chunk-size", str(batch),
               "--device", "cpu", "--set", f"learning_rate={lr}", "--set", "gradient_checkpointing=false",
               "--set", "lora_r=64", "--set", "lora_alpha=128", "--set", "max_negatives=2",
               "--set", "save_steps=25", "--set", "logging_steps=5"]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=Path(__file__).resolve().parents[1])


def _split(demo_data: Path, split: str) -> tuple[list, list]:
    """The task's queries and the candidates it is ranked among: its own from the union val pool
    (val), its local pool (test)."""
    from lamra.data.mbeir import MBEIRLayout, iter_candidates, read_queries

    layout = MBEIRLayout(demo_data)
    queries = read_queries(layout.query_file(TASK, split))
    pool = layout.global_pool("val") if split == "val" else layout.local_pool(TASK)
    dataset = queries[0].dataset_id  # the task's data set: its candidates in the union pool
    return queries, [c for c in iter_candidates(pool) if c.dataset_id == dataset]


def evaluate(out: Path, retriever_dir: str, demo_data: Path, adapter: str | None) -> dict:
    from lamra.evaluation.metrics import r_at_1, rank_by_scores
    from lamra.reranker.model import Reranker, fuse
    from lamra.retriever.model import Retriever

    instruction = next(json.loads(line)["instruction"] for line in open(out / "rerank-mined.jsonl"))
    retriever = Retriever.from_pretrained(retriever_dir, device="cpu")
    reranker = Reranker.from_pretrained(out / "base", lora=adapter, device="cpu")
    hits = {}
    for split in ("val", "test"):
        queries, candidates = _split(demo_data, split)
        ids = [c.did for c in candidates]
        position = {did: index for index, did in enumerate(ids)}
        items = {c.did: c.item(demo_data) for c in candidates}
        query_vectors = retriever.encode([q.item(demo_data) for q in queries], instruction=instruction,
                                         show_progress=False)
        candidate_vectors = retriever.encode(list(items.values()), show_progress=False)
        similarity = query_vectors @ candidate_vectors.T
        runs, started = {alpha: {} for alpha in ALPHAS}, time.perf_counter()
        for row, query in enumerate(queries):
            top = rank_by_scores(similarity[row], ids, TOP_K)
            retrieval = similarity[row, [position[did] for did in top]]
            p_yes = reranker.score(query.item(demo_data), [items[did] for did in top], instruction)
            for alpha in ALPHAS:
                runs[alpha][query.qid] = rank_by_scores(fuse(retrieval, p_yes, alpha), top, 1)
        positives = {q.qid: q.positives for q in queries}
        hits[split] = {alpha: round(100 * r_at_1(run, positives), 1) for alpha, run in runs.items()}
        print(f"{split}: {len(queries)} queries, {len(candidates)} candidates, {time.perf_counter() - started:.0f} s; "
              "R@1 by alpha: " + " ".join(f"{a:g}:{r:g}" for a, r in hits[split].items()), flush=True)
    chosen = max(ALPHAS, key=lambda alpha: (hits["val"][alpha], alpha))
    result = {"adapter": adapter, "alpha": chosen, "val": hits["val"], "test": hits["test"],
              "test_Ret_R@1": hits["test"][1.0], "test_Ret+Rank_R@1": hits["test"][chosen]}
    print(f"alpha {chosen:g} (chosen on val): test R@1 Ret {hits['test'][1.0]:g} -> Ret+Rank {hits['test'][chosen]:g}")
    results = out / "rerank_results.json"
    everything = json.loads(results.read_text()) if results.is_file() else {}
    everything["trained" if adapter else "zero_shot"] = result
    results.write_text(json.dumps(everything, indent=2))
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["data", "train", "evaluate"])
    parser.add_argument("--out", type=Path, default=Path("/work/exp-smollm2"), help="artefacts (outside the repo)")
    parser.add_argument("--demo-data", type=Path, help="the demo data folder (data, evaluate)")
    parser.add_argument("--mined", type=Path, help="the demo retriever's mined top 100 (data)")
    parser.add_argument("--retriever", help="the demo retriever folder (evaluate)")
    parser.add_argument("--adapter", default=None, help="evaluate: the LoRA adapter (default OUT/rerank/adapter; none: zero-shot)")
    parser.add_argument("--steps", type=int, default=75)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    args = parser.parse_args(argv)
    if args.step == "data":
        data(args.demo_data, args.mined, args.out)
    elif args.step == "train":
        train(args.out, args.steps, args.batch, args.lr)
    else:
        adapter = None if args.adapter == "none" else (args.adapter or str(args.out / "rerank" / "adapter"))
        evaluate(args.out, args.retriever, args.demo_data, adapter)


if __name__ == "__main__":
    main()
