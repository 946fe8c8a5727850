"""Slow: on the synthetic mini M-BEIR, does a retriever distilled from a teacher beat the same
retriever trained without the KL term, on held-out (test) queries? On the WebQA text task, with
a teacher that knows the answers and queries without labels, yes (the last test: +13.2 R@1 over
5 seeds, the KL term with batch negatives). On all 16 tasks with the attribute teacher, not yet
(two strict xfails): there even the true labels of more queries do not raise R@1 at this size.

As in U-MARVEL, distillation continues a trained retriever: a tiny model is first trained with
InfoNCE alone (``WARM_STEPS``), mines its top ``K``, and both runs continue from it for the
same steps on the same examples, one with the KL term and one with weight 0.

The teacher stands in for a reranker: its P(Yes) is the share of the four attributes (shape,
colour, texture, exhibit number) a candidate's concept has in common with the query's target
concept, read from the data's ``src_content`` (graded relevance, which a real reranker gives and
InfoNCE's one-hot positives do not). It goes through the real pipeline: ``mine`` -> ``score_teacher``
(the stand-in in the reranker's place) -> ``train_retriever`` with ``distill`` -> ``evaluate_mbeir``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from lamra import Retriever

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

SETTINGS = {"max_pixels": 112 * 112, "min_pixels": 112 * 112}
K = 8
WARM_STEPS = 150
STEPS = 200
TEACHER_TEMPERATURE = 0.05  # U-MARVEL's
# Points of mean Recall@1 (percent, over the 16 test tasks) the distilled retriever must gain over
# the same recipe with distill_weight 0 (same queries, same steps, same seed).
MARGIN = 2.0
# Measured on the 2-core CPU (mean over the 16 test tasks, R@1 / R@5, distilled vs no KL):
# - the top 8 alone (no positive added): 7.2 / 31.3 vs 12.5 / 40.0; with TEACHER_TEMPERATURE 0.5:
#   8.4 / 34.4 vs 12.5 / 40.0; with STEPS 120: 7.2 / 29.1 vs 5.3 / 27.8 (+1.9 R@1, below the margin);
# - distilling from the untrained model instead (its top 5, 200 steps of 16): R@5 30.0 vs 30.9;
# - with the positive in the distilled list (distill_with_positive, as below: the drawn positive, then
#   the top 8 without it, other positives included): 4.4 / 32.2 vs 12.5 / 40.0; an earlier version
#   that left the other positives out of the list: 10.6 / 39.7, and 8.8 / 37.2 with
#   TEACHER_TEMPERATURE 0.02; the positive in the list with the teacher P(Yes) alone
#   (distill_retrieval_weight 0): 6.6 / 31.3 vs 12.5 / 43.1.
# The KL term does not beat InfoNCE alone here: the claim is open, so the test is a strict xfail
# (it fails the day distillation starts winning, to be turned into a plain assertion).
MISSED = "distillation does not beat the no-KL recipe on the synthetic data yet (docs/training.md)"
UNLABELLED_PER_TASK = 40  # queries without positives added per task (20 labelled per task)
UNLABELLED_MIN_P = 0.99  # distill_unlabelled_min_p, as on the demo (docs/training.md)


class ConceptTeacher:
    """A reranker stand-in: P(Yes) = attributes shared by the query's target and the candidate."""

    def __init__(self, root):
        self.concepts = {}
        for path in list((root / "query" / "union_train").glob("*.jsonl")):
            for line in path.read_text().splitlines():
                record = json.loads(line)
                src = json.loads(record["query_src_content"])
                self.concepts[record["qid"]] = src.get("target") or src["concept"]
        for line in (root / "cand_pool" / "global" / "mbeir_union_train_cand_pool.jsonl").read_text().splitlines():
            record = json.loads(line)
            self.concepts[record["did"]] = json.loads(record["src_content"])["concept"]

    def fingerprint(self) -> dict:
        return {"model": "concept-teacher", "adapter": None}

    def score(self, query, candidates, instruction=None, *, batch_size=None):
        target = self.concepts[query.id].split("_")
        return np.array([np.mean([a == b for a, b in zip(target, self.concepts[c.id].split("_"))])
                         for c in candidates], dtype=np.float32)


def without_positives(data, out, *, labelled_per_task: int):
    """The union training queries with the positives of all but the first ``labelled_per_task`` of
    each task taken away (a query log without labels beside the labelled queries), and the
    labelled ones alone."""
    lines = [json.loads(line) for line in (data / "query" / "union_train" / "mbeir_union_up_train.jsonl")
             .read_text().splitlines()]
    seen: dict = {}
    mixed, labelled = [], []
    for record in lines:
        task = (record["qid"].split(":")[0], record["task_id"])
        seen[task] = seen.get(task, 0) + 1
        if seen[task] <= labelled_per_task:
            labelled.append(record)
            mixed.append(record)
        else:
            mixed.append({**record, "pos_cand_list": [], "neg_cand_list": []})
    files = out / "mixed.jsonl", out / "labelled.jsonl"
    for path, records in zip(files, (mixed, labelled)):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return files


def warm_mined_scored(tmp_path, model, teacher, *, labelled, mixed, k: int, steps: int, common: dict):
    """The warm retriever (``steps`` of InfoNCE on the ``labelled`` queries from ``model``), its top
    ``k`` of every query of ``mixed`` and the ``teacher``'s scores of them: (its folder, the scores)."""
    from lamra.reranker.mining import mine
    from lamra.reranker.teacher_scores import score_teacher
    from lamra.retriever.trainer import train_retriever
    from lamra.training.args import load_args

    warm = train_retriever(load_args(None, model=str(model), output_dir=str(tmp_path / "warm"), max_steps=steps,
                                     train_queries=str(labelled), **common))
    root = common["data"]
    mine(Retriever.from_pretrained(warm, device="cpu"), root, tmp_path / "mined.jsonl", k=k, queries=[mixed],
         show_progress=False)
    scores = tmp_path / "scores.jsonl"
    score_teacher(teacher, root, tmp_path / "mined.jsonl", scores, k=k, queries=[mixed], show_progress=False)
    return warm, scores


def distil_and_compare(tmp_path, small_tokenizer, *, unlabelled_per_task: int = 0,
                       unlabelled_min_p: float = 0.0, **options) -> dict:
    """Warm model (InfoNCE on the labelled queries) -> its top K of every training query -> the
    concept teacher's scores -> two runs from it, KL weight 1 and 0; mean test R@1 / R@5 of each."""
    from lamra.data.synthetic import SynthConfig, synthesize
    from lamra.demo.tiny import save_tiny_checkpoint
    from lamra.evaluation.mbeir import evaluate_mbeir
    from lamra.retriever.trainer import train_retriever
    from lamra.training.args import load_args

    data = tmp_path / "mb"
    synthesize(data, SynthConfig(test_queries=20, train_queries=20 + unlabelled_per_task, pool_size=40))
    mixed, labelled = without_positives(data, tmp_path, labelled_per_task=20)
    untrained = save_tiny_checkpoint(tmp_path / "base", tokenizer=small_tokenizer, hidden_size=64, vision_width=64)
    common = dict(data=str(data), data_kind="mbeir", full=True, train_vision=True, settings=SETTINGS,
                  global_batch_size=16, learning_rate=1e-3, show_progress=False, save_steps=10_000)
    base, scores = warm_mined_scored(tmp_path, untrained, ConceptTeacher(data), labelled=labelled, mixed=mixed, k=K,
                                     steps=WARM_STEPS, common=common)
    recall = {}
    for name, weight in (("distilled", 1.0), ("no-kl", 0.0)):
        args = load_args(None, model=str(base), output_dir=str(tmp_path / name), distill=str(scores),
                         distill_weight=weight, distill_top_k=K, distill_temperature=TEACHER_TEMPERATURE,
                         distill_with_positive=True, distill_unlabelled_min_p=unlabelled_min_p,
                         train_queries=str(mixed), **{"max_steps": STEPS, **common, **options})
        trained = train_retriever(args)
        results = evaluate_mbeir(data, Retriever.from_pretrained(trained, device="cpu"), tmp_path / f"eval-{name}",
                                 show_progress=False)
        recall[name] = {metric: float(np.mean([row.metrics[metric] for row in results.results]))
                        for metric in ("Recall@1", "Recall@5")}
    print(recall)
    return recall


@pytest.mark.xfail(strict=True, reason=MISSED)
def test_distillation_beats_the_same_recipe_without_the_kl_term(tmp_path, small_tokenizer):
    recall = distil_and_compare(tmp_path, small_tokenizer)
    assert recall["distilled"]["Recall@1"] >= recall["no-kl"]["Recall@1"] + MARGIN, recall


@pytest.mark.xfail(strict=True, reason=MISSED)
def test_distillation_on_unlabelled_queries_beats_the_labelled_recipe_without_the_kl_term(tmp_path, small_tokenizer):
    """The same, with UNLABELLED_PER_TASK more training queries per task without positives: the
    distilled run learns by the KL term alone from those the teacher is sure of (best P(Yes) at
    least UNLABELLED_MIN_P: for the stand-in, those whose target the warm model retrieved), the
    no-KL run has only the labelled ones. Measured (2-core CPU, seed 0, mean over the 16 tasks,
    R@1 / R@5, distilled vs no KL): 9.7 / 36.3 vs 12.8 / 45.3; every unlabelled query kept (no
    bar): 8.1 / 26.9 vs 13.1 / 47.8; the bar with the teacher P(Yes) alone
    (distill_retrieval_weight 0): 10.0 / 33.1; the bar with 10 epochs over each run's queries
    instead of fixed steps (so the distilled run sees every labelled query as often): 8.1 / 38.1;
    the bar with 120 unlabelled queries per task: 8.1 / 30.3 vs 15.9 / 55.0; the bar with KL weight
    0.05, seeds 0 / 1 / 2: 15.3 / 12.2 / 16.6 vs 12.8 / 17.5 / 15.6 R@1 (the seeds alone move the
    no-KL run by 5 points: one seed cannot show the margin); the bar with batch negatives
    (distill_batch_negatives): 10.3 / 38.1. The true positives of all 640 unlabelled queries, InfoNCE
    alone: 12.8 / 35.3, so more right labels do not help here, and the stand-in is right for 19 of
    the 41 queries it scores 1."""
    recall = distil_and_compare(tmp_path, small_tokenizer, unlabelled_per_task=UNLABELLED_PER_TASK,
                                unlabelled_min_p=UNLABELLED_MIN_P)
    assert recall["distilled"]["Recall@1"] >= recall["no-kl"]["Recall@1"] + MARGIN, recall


# -- a teacher that knows the answers, taught through queries without labels --------------------

TEXT_TASK = "webqa_task1"   # text -> text: a question naming shape, background and exhibit -> the passage
TEXT_LABELLED = 20          # of its 180 training queries; the other 160 lose their positives
TEXT_WARM_STEPS = 8         # InfoNCE on the labelled ones: held-out R@1 24-42 (seeds 0-4)
TEXT_STEPS = 60
TEXT_K = 10
TEXT_SEEDS = (0, 1, 2, 3, 4)
# Points of held-out R@1, mean over TEXT_SEEDS, the distilled retriever (KL term with batch
# negatives) must gain over the no-KL recipe. Measured (2-core CPU, 59 s): 85.6 vs 72.4
# (+13.2; seeds 0-4: 78 / 84 / 86 / 90 / 90 vs 82 / 74 / 80 / 60 / 66). U-MARVEL's term without
# batch negatives: 32.0 (10 / 22 / 40 / 26 / 62), below the warm model.
TEXT_MARGIN = 5.0


class AnswerTeacher:
    """A reranker stand-in that knows the answers: P(Yes) 1 for a query's positive, 0 for the rest."""

    def __init__(self, answers: dict[str, list[str]]):
        self.answers = answers

    def fingerprint(self) -> dict:
        return {"model": "answer-teacher", "adapter": None}

    def score(self, query, candidates, instruction=None, *, batch_size=None):
        return np.array([float(c.id in self.answers[query.id]) for c in candidates], dtype=np.float32)


def text_task_recall(tmp_path, seed: int, *, batch_negatives: bool = True) -> dict:
    """Warm retriever (InfoNCE on the labelled queries) -> its top TEXT_K of every training query
    -> the answer teacher's scores -> two runs from it, KL weight 1 (batch negatives, the bar
    0.99) and 0; held-out R@1 of each. ``batch_negatives=False``: U-MARVEL's term (docs)."""
    from word_tokens import word_tokenizer  # tests/ is on sys.path (its conftest)

    from lamra.data.synthetic import SynthConfig, synthesize
    from lamra.demo.tiny import save_tiny_checkpoint
    from lamra.evaluation.mbeir import evaluate_mbeir
    from lamra.retriever.trainer import train_retriever
    from lamra.training.args import load_args

    root = tmp_path / "mb"
    synthesize(root, SynthConfig(test_queries=50, train_queries=180, pool_size=60, train_negatives=2, image_size=16))
    lines = (root / "query/union_train/mbeir_union_up_train.jsonl").read_text().splitlines()
    queries = [q for q in map(json.loads, lines) if q["task_id"] == 1]
    answers = {q["qid"]: q["pos_cand_list"] for q in queries}
    labelled, mixed = tmp_path / "labelled.jsonl", tmp_path / "mixed.jsonl"
    labelled.write_text("".join(json.dumps(q) + "\n" for q in queries[:TEXT_LABELLED]))
    mixed.write_text("".join(json.dumps(q if n < TEXT_LABELLED else {**q, "pos_cand_list": [], "neg_cand_list": []})
                             + "\n" for n, q in enumerate(queries)))
    pool = (root / "cand_pool/global/mbeir_union_train_cand_pool.jsonl").read_text().splitlines()
    texts = [q["query_txt"] for q in queries] + [json.loads(line)["txt"] or "" for line in pool]
    texts += (root / "instructions/query_instructions.tsv").read_text().splitlines()
    base = save_tiny_checkpoint(tmp_path / "base", tokenizer=word_tokenizer(texts), hidden_size=64)
    common = dict(data=str(root), data_kind="mbeir", full=True, global_batch_size=16, learning_rate=1e-3,
                  show_progress=False, save_steps=10_000, seed=seed)
    warm, scores = warm_mined_scored(tmp_path, base, AnswerTeacher(answers), labelled=labelled, mixed=mixed, k=TEXT_K,
                                     steps=TEXT_WARM_STEPS, common=common)
    recall = {}
    for name, weight in (("distilled", 1.0), ("no-kl", 0.0)):
        trained = train_retriever(load_args(
            None, model=str(warm), output_dir=str(tmp_path / name), train_queries=str(mixed), max_steps=TEXT_STEPS,
            distill=str(scores), distill_weight=weight, distill_top_k=TEXT_K, distill_with_positive=True,
            distill_unlabelled_min_p=UNLABELLED_MIN_P, distill_batch_negatives=batch_negatives, **common))
        results = evaluate_mbeir(root, Retriever.from_pretrained(trained, device="cpu"), tmp_path / f"eval-{name}",
                                 tasks=[TEXT_TASK], show_progress=False)
        recall[name] = results.results[0].metrics["Recall@1"]
    return recall


def test_a_teacher_that_knows_the_answers_teaches_the_retriever_through_queries_without_labels(tmp_path):
    """TEXT_LABELLED labelled queries and the rest without labels: the no-KL run learns from the
    labelled ones alone; the distilled one also from the queries whose answer the teacher finds in
    their top TEXT_K (the bar keeps those), by the KL term with the batch's other positives as
    negatives. Held-out R@1, mean over TEXT_SEEDS."""
    runs = [text_task_recall(tmp_path / f"seed{seed}", seed) for seed in TEXT_SEEDS]
    print(runs)
    distilled, no_kl = (float(np.mean([run[name] for run in runs])) for name in ("distilled", "no-kl"))
    assert distilled >= no_kl + TEXT_MARGIN, runs
