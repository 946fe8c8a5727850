"""Distilling the demo reranker into the default retriever (U-MARVEL's last stage), on held-out WordNet.

The demo reranker (SmolLM2-135M-Instruct trained on the demo's WordNet task, ``make demo-rerank``)
lifts the default retriever's held-out WordNet R@1 when it reranks the top 10. Can the retriever
alone learn some of that? This script:

1. **mine**: the default retriever's top ``k`` of every WordNet training query (``lamra mine``'s
   library call, its task pool);
2. **score**: those candidates scored by the demo reranker (``lamra score-teacher``: P(Yes),
   shared-prefix), a ``--fraction`` of the queries (U-MARVEL: 0.1; default here 1.0: 600 queries);
3. **train**: from the default retriever, on the scored queries, the same recipe twice per seed:
   with the KL term (``distill_weight`` ``--weight``) and without it (weight 0: InfoNCE alone on
   the same examples, the same steps);
4. **evaluate**: every demo task's test split (local pools) for the retriever before, each trained
   one, and Ret+Rank (the demo reranker's own record, top 10 fused with the alpha chosen on val);
5. **report**: ``OUT/results.json`` and a table: WordNet R@1 / R@5 per run and seed, the KL - no-KL
   difference on every task, and the share of the reranker's R@1 gain the distilled retriever keeps.

``--filtered-threshold T`` adds a third run per seed: InfoNCE alone with one hard negative per
query drawn from its top ``k`` minus the negatives the reranker judges relevant (P(Yes) > T:
``lamra filter-negatives``), no KL term: what the mined negatives give without distillation.

    python experiments/distill_demo.py --out /tmp/distill-demo            # the cached demo models
    python experiments/distill_demo.py --out OUT --retriever R --reranker K --data D   # any others

Each stage keeps its result in OUT, so a run started again continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

TASK = "wordnet_task1"
QUERY_FILE = "query/train/mbeir_wordnet_train.jsonl"


def locate(args) -> tuple[Path, Path, Path, dict | None]:
    """The retriever, the reranker, the demo data and the reranker's record (Ret+Rank on test)."""
    from lamra.demo.default_model import cached_default_model
    from lamra.demo.reranker import cached_demo_reranker, read_demo_record

    retriever = Path(args.retriever) if args.retriever else cached_default_model()
    if retriever is None:
        raise SystemExit("no default model in the cache: run `make demo` (or pass --retriever)")
    reranker = Path(args.reranker) if args.reranker else cached_demo_reranker(retriever)
    if reranker is None:
        raise SystemExit("no demo reranker for this retriever in the cache: run `make demo-rerank` "
                         "(or pass --reranker)")
    record = read_demo_record(reranker) if (reranker / "lamra_demo_reranker.json").is_file() else None
    data = Path(args.data) if args.data else Path(record["data"])
    return retriever, reranker, data, record


def run(args) -> dict:
    from lamra.reranker.mining import mine
    from lamra.reranker.model import Reranker
    from lamra.reranker.teacher_scores import score_teacher, write_filtered_queries
    from lamra.retriever.model import Retriever

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    retriever_dir, reranker_dir, data, record = locate(args)
    queries = [data / QUERY_FILE]
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    mined = out / "mined.jsonl"
    if not mined.is_file():
        print(f"mining the top {args.k} of the WordNet training queries with {retriever_dir}", flush=True)
        mine(Retriever.from_pretrained(retriever_dir, device="cpu"), data, mined, k=args.k, queries=queries,
             show_progress=args.progress)
    seconds["mine"] = round(time.perf_counter() - started, 1)
    scores = out / "scores.jsonl"
    if not scores.is_file():
        print(f"scoring them with the reranker {reranker_dir}", flush=True)
        score_teacher(Reranker.from_pretrained(reranker_dir, device="cpu"), data, mined, scores, k=args.k,
                      fraction=args.fraction, queries=queries, show_progress=args.progress)
    seconds["score"] = round(time.perf_counter() - started - sum(seconds.values()), 1)

    filtered = None
    if args.filtered_threshold is not None:
        filtered = out / "filtered.jsonl"
        if not filtered.is_file():
            counts = write_filtered_queries(scores, data, filtered, threshold=args.filtered_threshold, queries=queries)
            print(f"filtered negatives (P(Yes) > {args.filtered_threshold} dropped): {counts}", flush=True)
    runs = {}
    for seed in args.seeds:
        for name, weight in (("kl", args.weight), ("no-kl", 0.0)):
            runs[f"{name}-s{seed}"] = train(args, retriever_dir, reranker_dir, data, queries[0], scores, weight, seed,
                                            out / f"{name}-s{seed}")
        if filtered is not None:
            runs[f"hn-s{seed}"] = train(args, retriever_dir, reranker_dir, data, filtered, None, 0.0, seed,
                                        out / f"hn-s{seed}")
    seconds["train"] = round(time.perf_counter() - started - sum(seconds.values()), 1)

    table = {"before": evaluate(retriever_dir, data, out / "eval" / "before", args)}
    val = {"before": evaluate(retriever_dir, data, out / "eval-val" / "before", args, split="val")}
    for name, model in runs.items():
        table[name] = evaluate(model, data, out / "eval" / name, args)
        val[name] = evaluate(model, data, out / "eval-val" / name, args, split="val")
    seconds["evaluate"] = round(time.perf_counter() - started - sum(seconds.values()), 1)
    results = {"retriever": str(retriever_dir), "reranker": str(reranker_dir), "data": str(data),
               "options": {k: v for k, v in vars(args).items() if k != "func"}, "seconds": seconds,
               "test": table, "val": val, "ret+rank": (record or {}).get("test", {}).get(TASK, {}).get("Ret+Rank")}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(report(results, args.seeds))
    return results


def train(args, retriever_dir: Path, reranker_dir: Path, data: Path, queries: Path, scores: Path | None,
          weight: float, seed: int, output: Path) -> Path:
    """One run from the retriever on ``queries``: with ``scores``, InfoNCE + ``weight`` x KL on the
    scored queries; without, InfoNCE with one of each query's ``neg_cand_list`` as hard negative."""
    from lamra.retriever.trainer import train_retriever
    from lamra.training.args import load_args

    adapter = output / "adapter"
    if (adapter / "config.json").is_file():
        return adapter
    settings = json.loads((retriever_dir / "lamra_settings.json").read_text()) \
        if (retriever_dir / "lamra_settings.json").is_file() else {}
    print(f"training {output.name}: distill_weight {weight}, seed {seed}", flush=True)
    if scores is not None:
        recipe = dict(distill=str(scores), distill_weight=weight, distill_top_k=args.k,
                      distill_reranker=str(reranker_dir), distill_with_positive=args.with_positive,
                      distill_retrieval_weight=args.retrieval_weight)
    else:
        recipe = dict(use_hard_negatives=True)
    options = dict(model=str(retriever_dir), data=str(data), data_kind="mbeir", train_queries=str(queries),
                   **recipe, output_dir=str(output), full=True, train_vision=False, train_embeddings=False,
                   settings={k: settings[k] for k in ("max_pixels", "min_pixels") if k in settings},
                   global_batch_size=args.batch, chunk_size=args.chunk_size, learning_rate=args.lr, epochs=args.epochs,
                   warmup_ratio=0.1, seed=seed, device="cpu", gradient_checkpointing=False, save_steps=25,
                   logging_steps=5, show_progress=args.progress)
    return train_retriever(load_args(args.config, **options),
                           on_log=lambda r: print(f"  step {r['step']}/{r['total_steps']} loss {r['loss']:.3f}"
                                                  + (f" (info_nce {r['info_nce']:.3f}, kl {r['kl']:.3f})"
                                                     if "kl" in r else ""), flush=True))


def evaluate(model: Path, data: Path, out: Path, args, *, split: str = "test") -> dict:
    """Per task: R@1 and R@5 (percent), local pools; on "val" only WordNet's, in the union pool (to
    choose settings on)."""
    from lamra.evaluation.mbeir import evaluate_mbeir
    from lamra.retriever.model import Retriever

    # The demo's val queries have their positives in the union pool (as the demo reranker's alpha search).
    results = evaluate_mbeir(data, Retriever.from_pretrained(model, device="cpu"), out, split=split,
                             pool="global-union" if split == "val" else "local",
                             tasks=[TASK] if split == "val" else None, show_progress=args.progress)
    return {row.task: {name: round(row.metrics.get(f"Recall@{name[2:]}", 0.0), 2) for name in ("R@1", "R@5")}
            for row in results.results}


def report(results: dict, seeds) -> str:
    test = results["test"]
    tasks = list(test["before"])
    arms = [name for name in ("kl", "no-kl", "hn") if f"{name}-s{seeds[0]}" in test]
    runs = [f"{name}-s{s}" for s in seeds for name in arms]
    lines = [f"{'task':<22}{'before':>14}" + "".join(f"{run:>14}" for run in runs) + f"{'KL - no-KL (R@1)':>18}"]
    for task in tasks:
        cells = [test["before"][task]] + [test[run][task] for run in runs]
        gain = sum(test[f"kl-s{s}"][task]["R@1"] - test[f"no-kl-s{s}"][task]["R@1"] for s in seeds) / len(seeds)
        lines.append(f"{task:<22}" + "".join(f"{c['R@1']:>6.1f} / {c['R@5']:>5.1f}" for c in cells) + f"{gain:>+18.1f}")
    val = results.get("val")
    if val:
        lines.append(f"{TASK} on val, R@1: before {val['before'][TASK]['R@1']:.1f}; "
                     + ", ".join(f"{run} {val[run][TASK]['R@1']:.1f}" for run in runs))
    rank = results.get("ret+rank")
    if rank:
        before = test["before"][TASK]["R@1"]
        kl = sum(test[f"kl-s{s}"][TASK]["R@1"] for s in seeds) / len(seeds)
        lines.append(f"Ret+Rank {TASK}: R@1 {rank['R@1']:.1f} / R@5 {rank['R@5']:.1f}; the distilled retriever "
                     f"keeps {100 * (kl - before) / max(rank['R@1'] - before, 1e-9):.0f} % of the reranker's R@1 gain")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--retriever", help="default: the cached default model")
    parser.add_argument("--reranker", help="default: the cached demo reranker of that retriever")
    parser.add_argument("--data", help="default: the demo data the reranker was trained on")
    parser.add_argument("--config", help="a retriever training preset under the options below "
                                         "(e.g. configs/distill.yaml)")
    parser.add_argument("--k", type=int, default=10, help="candidates per query, mined, scored and distilled "
                                                          "(the demo reranks a top 10)")
    parser.add_argument("--fraction", type=float, default=1.0, help="share of the WordNet training queries scored")
    parser.add_argument("--weight", type=float, default=1.0, help="distill_weight of the KL runs")
    parser.add_argument("--retrieval-weight", type=float, default=1.0,
                        help="distill_retrieval_weight: the retriever's share of the teacher (0: the reranker alone)")
    parser.add_argument("--with-positive", action="store_true",
                        help="distil over the drawn positive, then the top k without it "
                             "(U-MARVEL's has_distill_with_pos)")
    parser.add_argument("--filtered-threshold", type=float, default=None,
                        help="also train InfoNCE with hard negatives, those above this P(Yes) dropped (no KL)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--progress", action="store_true", help="progress bars")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
