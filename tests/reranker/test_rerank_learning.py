"""Slow: a reranker trained on the synthetic mini M-BEIR raises held-out R@1 over retrieval alone.

The chain LamRA uses, end to end and small: train a retriever (briefly, so that it ranks most
held-out positives high but not all first), mine its hard negatives on the training queries,
train a reranker *started from the retriever's weights* (a tiny random model stays at chance on
relevance for thousands of steps, docs/training-rerank.md), then rerank the retriever's top 10
of the held-out test queries. Ret and Ret+Rank read the same retrieval run; the fusion weight is
LamRA's default, fixed in advance.
"""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

TASK = "webqa_task1"  # text -> text: a question naming shape, background and exhibit -> the passage
TOP_K = 10
ALPHA = 0.5           # LamRA's default fusion weight (spec 5), fixed before anything was measured
RETRIEVER_STEPS = 8   # R@1 74% on the held-out queries: room above it
RERANKER_STEPS = 1000
# Points of held-out R@1 that Ret+Rank adds over Ret. Measured (2-core CPU, ~150 s): Ret 74.0,
# Ret+Rank 94.0 (+20), the reranker alone 76.0. At 300 steps it had not yet left the ln 2
# plateau of the pointwise loss (Ret+Rank 34); at learning rate 3e-3 it never left it.
MARGIN = 10.0


def test_a_trained_reranker_raises_held_out_recall_at_1_over_retrieval(tmp_path):
    from word_tokens import word_tokenizer  # tests/ is on sys.path (its conftest)

    from lamra import Reranker, Retriever
    from lamra.data.synthetic import SynthConfig, synthesize
    from lamra.demo.tiny import save_tiny_checkpoint
    from lamra.evaluation.mbeir import evaluate_mbeir
    from lamra.evaluation.rerank import rerank_mbeir
    from lamra.reranker.mining import mine
    from lamra.reranker.trainer import train_reranker
    from lamra.retriever.trainer import train_retriever
    from lamra.training.args import RerankerTrainingArgs, load_args

    root = tmp_path / "mb"
    synthesize(root, SynthConfig(test_queries=50, train_queries=180, pool_size=60, train_negatives=2, image_size=16))
    lines = (root / "query/union_train/mbeir_union_up_train.jsonl").read_text().splitlines()
    queries = [q for q in map(json.loads, lines) if q["task_id"] == 1]  # WebQA's text-to-text queries
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps(q) + "\n" for q in queries))
    pool = (root / "cand_pool/global/mbeir_union_train_cand_pool.jsonl").read_text().splitlines()
    texts = [q["query_txt"] for q in queries] + [json.loads(line)["txt"] or "" for line in pool]
    texts += (root / "instructions/query_instructions.tsv").read_text().splitlines()
    base = save_tiny_checkpoint(tmp_path / "base", tokenizer=word_tokenizer(texts), hidden_size=64)

    retriever_dir = train_retriever(load_args(
        None, model=str(base), data=str(root), data_kind="mbeir", train_queries=str(train_file),
        output_dir=str(tmp_path / "ret"), full=True, global_batch_size=32, max_steps=RETRIEVER_STEPS,
        learning_rate=1e-3, show_progress=False, save_steps=10_000))
    retriever = Retriever.from_pretrained(retriever_dir, device="cpu")
    mine(retriever, root, tmp_path / "mined.jsonl", k=20, queries=[train_file], show_progress=False)
    reranker_dir = train_reranker(load_args(
        None, args_class=RerankerTrainingArgs, model=str(retriever_dir), data=str(root),
        mined=str(tmp_path / "mined.jsonl"), train_queries=str(train_file), output_dir=str(tmp_path / "rank"),
        full=True, global_batch_size=16, max_steps=RERANKER_STEPS, learning_rate=1e-3, max_negatives=2,
        show_progress=False, save_steps=10_000, logging_steps=50, gradient_checkpointing=False, device="cpu"))

    evaluation = tmp_path / "eval"  # one retrieval run of the held-out test queries, read by both
    evaluate_mbeir(root, retriever, evaluation, tasks=[TASK], top_k=TOP_K, show_progress=False)
    reranker = Reranker.from_pretrained(reranker_dir, device="cpu")
    results = rerank_mbeir(evaluation, reranker, top_k=TOP_K, alpha=ALPHA, show_progress=False)
    ret, ranked = results.retrieval[0].metrics["Recall@1"], results.reranked[0].metrics["Recall@1"]
    alone = rerank_mbeir(evaluation, reranker, top_k=TOP_K, alpha=0.0,
                         show_progress=False).reranked[0].metrics["Recall@1"]
    log = [json.loads(line) for line in (tmp_path / "rank/train_log.jsonl").read_text().splitlines()]
    report = (f"held-out R@1 of {TASK} (top {TOP_K} reranked): Ret {ret:.1f}, Ret+Rank {ranked:.1f} "
              f"(alpha {ALPHA}), reranker alone {alone:.1f}; pointwise loss {log[0]['pointwise_loss']:.2f} -> "
              f"{log[-1]['pointwise_loss']:.2f}. Expected Ret+Rank >= Ret + {MARGIN} points")
    print(report)
    assert ranked >= ret + MARGIN, report
