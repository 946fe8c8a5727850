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

``--unlabelled N`` adds a query log without labels (semi-supervised distillation): N more WordNet
definitions, of lemmas no split of the demo data uses, as queries with ``pos_cand_list: []``, and
their example sentences added to the training pool (a corpus the queries were never linked to).
They are mined and scored with the labelled queries; the KL runs learn from them by the KL term
alone, the no-KL runs leave them out (nothing to learn from without the teacher). The report
says how often the teacher's and the retriever's top candidate is the query's own sentence.

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
UNLABELLED_DID, UNLABELLED_QID = 100000, 200000  # numbering of the added sentences and queries (dataset 22)


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
    train_root = data  # where mining, scoring and training read; evaluation reads the demo data
    if args.unlabelled:
        train_root, train_queries = with_unlabelled_queries(data, out / "data", args.unlabelled)
        queries = [train_queries]
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    mined = out / "mined.jsonl"
    if not mined.is_file():
        print(f"mining the top {args.k} of the WordNet training queries with {retriever_dir}", flush=True)
        mine(Retriever.from_pretrained(retriever_dir, device="cpu"), train_root, mined, k=args.k, queries=queries,
             show_progress=args.progress)
    seconds["mine"] = round(time.perf_counter() - started, 1)
    scores = out / "scores.jsonl"
    if not scores.is_file():
        print(f"scoring them with the reranker {reranker_dir}", flush=True)
        score_teacher(Reranker.from_pretrained(reranker_dir, device="cpu"), train_root, mined, scores, k=args.k,
                      fraction=args.fraction, queries=queries, show_progress=args.progress)
    seconds["score"] = round(time.perf_counter() - started - sum(seconds.values()), 1)

    filtered = None
    if args.filtered_threshold is not None:
        filtered = out / "filtered.jsonl"
        if not filtered.is_file():
            counts = write_filtered_queries(scores, train_root, filtered, threshold=args.filtered_threshold,
                                            queries=queries)
            print(f"filtered negatives (P(Yes) > {args.filtered_threshold} dropped): {counts}", flush=True)
    runs = {}
    for seed in args.seeds:
        for name, weight in (("kl", args.weight), ("no-kl", 0.0)):
            runs[f"{name}-s{seed}"] = train(args, retriever_dir, reranker_dir, train_root, queries[0], scores, weight,
                                            seed, out / f"{name}-s{seed}")
        if filtered is not None:
            runs[f"hn-s{seed}"] = train(args, retriever_dir, reranker_dir, train_root, filtered, None, 0.0, seed,
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
               "test": table, "val": val, "ret+rank": (record or {}).get("test", {}).get(TASK, {}).get("Ret+Rank"),
               "unlabelled": unlabelled_top1(scores, args.k, args.unlabelled_min_p) if args.unlabelled else None}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(report(results, args.seeds))
    return results


def with_unlabelled_queries(data: Path, root: Path, count: int, wordnet_root: Path | None = None) -> tuple[Path, Path]:
    """A copy of the demo data at ``root`` (pictures linked) whose union training pool also holds
    the first example sentence of ``count`` WordNet synsets no split uses (lemmas absent from every
    query, pool and pair file; no text seen there), and a query file: the labelled WordNet training
    queries, then those synsets' "lemma: definition" without positives. Made once, deterministic."""
    import random
    import shutil

    from lamra.demo.sources import wordnet

    query_file = root / "query" / "train" / "mbeir_wordnet_with_unlabelled.jsonl"
    if query_file.is_file():
        return root, query_file
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(data, partial, ignore=shutil.ignore_patterns("mbeir_images"))
    (partial / "mbeir_images").symlink_to((data / "mbeir_images").resolve())
    used_lemmas, used_texts = set(), set()
    for path in [*data.glob("query/*/*.jsonl"), *data.glob("cand_pool/*/*.jsonl")]:
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            source = json.loads(record.get("query_src_content") or record.get("src_content") or "{}")
            if "lemma" in source:
                used_lemmas.add(source["lemma"].casefold())
            used_texts.add((record.get("query_txt") or record.get("txt") or "").strip().casefold())
    for path in data.glob("pairs/*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            pair = json.loads(line)
            used_lemmas.add(pair["sent0"].split(":")[0].casefold())
            used_texts.update(pair[key].strip().casefold() for key in ("sent0", "sent1", "hard_neg"))
    groups: dict[str, list] = {}
    for synset in wordnet.read_synsets(wordnet_root or wordnet.DEBIAN_ROOT):
        if synset.examples and synset.lemma.casefold() not in used_lemmas:
            groups.setdefault(synset.lemma.casefold(), []).append(synset)
    lemmas = sorted(groups)
    random.Random(1).shuffle(lemmas)
    chosen = []
    for lemma in lemmas:
        for synset in groups[lemma]:
            texts = [t.casefold() for t in (synset.defined, *synset.examples)]
            if not any(t in used_texts for t in texts):
                used_texts.update(texts)
                chosen.append(synset)
        if len(chosen) >= count:
            break
    candidates, queries = [], []
    for n, synset in enumerate(chosen[:count]):
        source = json.dumps({"lemma": synset.lemma, "source": "wordnet-base", "synset": synset.key}, sort_keys=True)
        candidates.append({"txt": synset.examples[0], "img_path": None, "modality": "text",
                           "did": f"22:{UNLABELLED_DID + n}", "src_content": source})
        queries.append({"qid": f"22:{UNLABELLED_QID + n}", "query_txt": synset.defined, "query_img_path": None,
                        "query_modality": "text", "query_src_content": source, "pos_cand_list": [],
                        "neg_cand_list": [], "task_id": 1})
    with (partial / "cand_pool" / "global" / "mbeir_union_train_cand_pool.jsonl").open("a", encoding="utf-8") as f:
        f.writelines(json.dumps(c) + "\n" for c in candidates)
    labelled = (data / QUERY_FILE).read_text(encoding="utf-8")
    (partial / query_file.relative_to(root)).write_text(labelled + "".join(json.dumps(q) + "\n" for q in queries),
                                                        encoding="utf-8")
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(root)
    print(f"{len(queries)} unlabelled WordNet queries and their sentences added in {root}", flush=True)
    return root, query_file


def unlabelled_top1(scores: Path, k: int = 10, min_p: float = 0.0) -> dict:
    """Over the unlabelled queries the KL runs learn from (``scored`` of them; those whose best
    P(Yes) in the top ``k`` reaches ``min_p``): how often their own sentence (numbered alike) is in
    the top k, first by the retriever, and first by the teacher (the fused score the KL term learns)."""
    import torch

    from lamra.retriever.distill import teacher_logits
    from lamra.training.distill_data import read_teacher_scores

    counts = {"queries": 0, "in_top_k": 0, "retriever_top1": 0, "teacher_top1": 0}
    scored = 0
    for record in read_teacher_scores(scores)[1]:
        if record.positives:
            continue
        scored += 1
        if record.best_p_yes(k) < min_p:  # left out of the KL runs (distill_unlabelled_min_p)
            continue
        top = record.candidates[:k]
        own = f"22:{int(record.qid.split(':')[1]) - UNLABELLED_QID + UNLABELLED_DID}"
        dids = [did for did, _, _ in top]
        fused = teacher_logits(torch.tensor([r for _, r, _ in top]), torch.tensor([p for _, _, p in top]))
        counts["queries"] += 1
        counts["in_top_k"] += own in dids
        counts["retriever_top1"] += dids[0] == own
        counts["teacher_top1"] += dids[int(fused.argmax())] == own
    return {"scored": scored, **{name: value if name == "queries" else round(100 * value / max(1, counts["queries"]), 1)
                                 for name, value in counts.items()}}


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
                      distill_retrieval_weight=args.retrieval_weight,
                      distill_unlabelled_min_p=args.unlabelled_min_p,
                      distill_batch_negatives=args.batch_negatives)
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
    unlabelled = results.get("unlabelled")
    if unlabelled:
        lines.append(f"{unlabelled['queries']} of {unlabelled['scored']} unlabelled queries learnt from: own "
                     f"sentence in the top k {unlabelled['in_top_k']} %, first by the retriever "
                     f"{unlabelled['retriever_top1']} %, by the teacher {unlabelled['teacher_top1']} %")
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
    parser.add_argument("--unlabelled", type=int, default=0,
                        help="also distil on this many WordNet queries without labels, their sentences added to "
                             "the training pool (the KL runs only)")
    parser.add_argument("--unlabelled-min-p", type=float, default=0.0,
                        help="distill_unlabelled_min_p: learn only from the unlabelled queries whose best P(Yes) "
                             "in the top k reaches this")
    parser.add_argument("--batch-negatives", action="store_true",
                        help="distill_batch_negatives: the KL term also pushes each query from the batch's other "
                             "positives")
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
