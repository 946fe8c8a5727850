"""``lamra eval mbeir --rerank``: Ret equals the plain evaluation, Ret+Rank equals the fusion
computed here from the Reranker called directly, a second run encodes and scores nothing, and a
killed rerank resumes where it stopped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from terminal_text import plain

from lamra.cli import main
from lamra.data.mbeir import MBEIRLayout, read_queries
from lamra.data.mbeir_instructions import load_instructions
from lamra.data.synthetic import SynthConfig, synthesize
from lamra.items import Item

TASKS = ["cirr_task7", "webqa_task1", "mscoco_task0"]  # image+text, text and text queries; mscoco's own weight
# The released fusion S_ret + w * S_rank, as alpha = 1 / (1 + w): w = 1 except mscoco_task0 (0.5), mscoco_task3 (0.1).
ALPHA = {"cirr_task7": 0.5, "webqa_task1": 0.5, "mscoco_task0": 1 / 1.5}
TOP_K, RERANK_TOP_K = 6, 5  # the 6th candidate is the un-reranked tail


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("rerank-eval") / "mini"
    synthesize(path, SynthConfig(seed=3, test_queries=3, train_queries=0, pool_size=6, image_size=32))
    return path


def eval_args(root, out, *more):
    return ["eval", "mbeir", str(root), "-t", ",".join(TASKS), "--top-k", str(TOP_K), "-q", "--out", str(out), *more]


@pytest.fixture(scope="module")
def plain_out(root, tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "out"
    assert main(eval_args(root, out, "--model", str(tiny_checkpoint), "--device", "cpu")) == 0
    return out


@pytest.fixture(scope="module")
def rank_out(root, tiny_checkpoint, sharp_reranker_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("reranked") / "out"
    assert main(eval_args(root, out, "--model", str(tiny_checkpoint), "--device", "cpu", "--rerank",
                          str(sharp_reranker_folder), "--rerank-top-k", str(RERANK_TOP_K))) == 0
    return out


def report(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def trec(path: Path) -> dict[str, list[tuple[str, float]]]:
    run: dict[str, list[tuple[str, float]]] = {}
    for line in path.read_text().splitlines():
        qid, _, did, _, score, _ = line.split()
        run.setdefault(qid, []).append((did, float(score)))
    return run


def pool_items(root: Path, task: str) -> dict[str, Item]:
    items = {}
    for line in MBEIRLayout(root).local_pool(task).read_text().splitlines():
        record = json.loads(line)
        parts = record["modality"].split(",")
        items[record["did"]] = Item(text=record["txt"] if "text" in parts else None,
                                    images=[root / record["img_path"]] if "image" in parts else [], id=record["did"])
    return items


def positives(root: Path, task: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for line in MBEIRLayout(root).qrels_file(task).read_text().splitlines():
        qid, _, did, relevance, _ = line.split()
        if int(relevance) > 0:
            found.setdefault(qid, set()).add(did)
    return found


def test_ret_equals_the_plain_evaluation(plain_out, rank_out):
    plain_report, rank_report = report(plain_out), report(rank_out)
    assert [t["task"] for t in rank_report["tasks"]] == TASKS
    for ret, alone in zip(rank_report["tasks"], plain_report["tasks"]):
        assert (ret["task"], ret["score"], ret["metrics"]) == (alone["task"], alone["score"], alone["metrics"])
        name = Path(alone["run_file"]).name
        assert (rank_out / "runs" / name).read_text() == (plain_out / "runs" / name).read_text()
    assert rank_report["average"] == plain_report["average"]
    assert [t["task"] for t in rank_report["rerank"]["tasks"]] == TASKS


def test_ret_plus_rank_is_the_fusion_of_the_rerankers_scores(root, plain_out, rank_out, sharp_reranker):
    rank_report = report(rank_out)
    layout, table = MBEIRLayout(root), load_instructions(root)
    reordered = 0
    for task, result in zip(TASKS, rank_report["rerank"]["tasks"]):
        assert rank_report["rerank"]["alphas"][task] == pytest.approx(ALPHA[task])
        run = trec(plain_out / "runs" / f"mbeir_{task}_local_test.trec")
        candidates, wanted = pool_items(root, task), positives(root, task)
        queries = {q.qid: q for q in read_queries(layout.query_file(task))}
        written = trec(rank_out / "runs" / f"mbeir_{task}_local_test_rerank.trec")
        hits = []
        for qid, retrieved in run.items():
            head, tail = retrieved[:RERANK_TOP_K], retrieved[RERANK_TOP_K:]
            query = queries[qid]
            s_rank = sharp_reranker.score(query.item(root), [candidates[did] for did, _ in head],
                                          table.for_query(query))
            s_ret = np.array([score for _, score in head])
            fused = ALPHA[task] * s_ret + (1 - ALPHA[task]) * s_rank
            order = np.argsort(-fused, kind="stable")
            ranking = [head[i][0] for i in order] + [did for did, _ in tail]
            reordered += ranking[:RERANK_TOP_K] != [did for did, _ in head]
            hits.append(any(did in wanted.get(qid, set()) for did in ranking[:5]))  # Recall@5 is a hit rate
            assert [did for did, _ in written[qid]] == ranking[:RERANK_TOP_K]
            assert [score for _, score in written[qid]] == pytest.approx(fused[order], abs=2e-6)
        assert len(hits) == len(queries)
        assert result["metric"] == "Recall@5" and result["score"] == pytest.approx(100 * sum(hits) / len(hits))
    assert reordered > 0  # the reranker changed some rankings, so the check above means something


def test_tables_show_ret_and_ret_plus_rank_side_by_side(rank_out):
    rank_report = report(rank_out)
    markdown = (rank_out / "results.md").read_text()
    assert "| Task | Dataset | Metric | Ret | Ret+Rank |" in markdown
    ret = [t["score"] for t in rank_report["tasks"]]
    rank = [t["score"] for t in rank_report["rerank"]["tasks"]]
    assert f"| Ret+Rank | {rank[0]:.1f} | {rank[1]:.1f} | {rank[2]:.1f} | {sum(rank) / 3:.1f} |" in markdown
    rows = (rank_out / "results.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert header[4:6] == ["score", "rerank_score"]
    average = rows[-1].split(",")
    assert average[0] == "average" and float(average[4]) == pytest.approx(sum(ret) / 3, abs=1e-4)
    assert float(average[5]) == pytest.approx(sum(rank) / 3, abs=1e-4)


def count_model_calls(monkeypatch):
    from lamra.reranker.model import Reranker
    from lamra.retriever.model import Retriever

    calls = {"encode": 0, "score": 0}

    def counting(cls, name, key):
        original = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            calls[key] += 1
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, wrapper)

    counting(Retriever, "encode", "encode")
    counting(Retriever, "embed", "encode")
    counting(Reranker, "yes_no_logits", "score")
    counting(Reranker, "_listwise_log_probs", "score")
    return calls


def test_a_second_run_encodes_and_scores_nothing(root, rank_out, tiny_checkpoint, sharp_reranker_folder,
                                                 monkeypatch, capsys):
    before = report(rank_out)
    calls = count_model_calls(monkeypatch)
    capsys.readouterr()
    assert main(eval_args(root, rank_out, "--model", str(tiny_checkpoint), "--device", "cpu", "--rerank",
                          str(sharp_reranker_folder), "--rerank-top-k", str(RERANK_TOP_K))) == 0
    assert calls == {"encode": 0, "score": 0}
    printed = plain(capsys.readouterr().out)
    assert "rerank scores: 0 queries scored, 9 reused" in printed and "encoded 0, reused 6" in printed
    after = report(rank_out)
    assert after["encoded"] == [] and sum(after["rerank"]["scored"].values()) == 0
    assert [t["score"] for t in after["rerank"]["tasks"]] == [t["score"] for t in before["rerank"]["tasks"]]


def test_alpha_one_gives_ret_from_the_cached_scores_without_the_retriever(root, rank_out, sharp_reranker_folder,
                                                                          tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    shutil.copytree(rank_out, out)
    calls = count_model_calls(monkeypatch)
    # No --model: the runs already in --out are reranked; alpha is not part of the score cache.
    assert main(eval_args(root, out, "--rerank", str(sharp_reranker_folder), "--rerank-top-k", str(RERANK_TOP_K),
                          "--alpha", "1")) == 0
    assert calls == {"encode": 0, "score": 0}
    assert "nothing encoded" in plain(capsys.readouterr().out)
    result = report(out)
    assert [t["score"] for t in result["rerank"]["tasks"]] == [t["score"] for t in result["tasks"]]
    for task in TASKS:
        retrieval = trec(out / "runs" / f"mbeir_{task}_local_test.trec")
        reranked = trec(out / "runs" / f"mbeir_{task}_local_test_rerank.trec")
        assert {qid: [d for d, _ in hits[:RERANK_TOP_K]] for qid, hits in retrieval.items()} == \
            {qid: [d for d, _ in hits] for qid, hits in reranked.items()}


def test_reranking_some_tasks_keeps_every_tasks_retrieval_results(plain_out, sharp_reranker, tmp_path):
    from lamra.evaluation.rerank import rerank_mbeir

    out = tmp_path / "out"
    shutil.copytree(plain_out, out)
    before = report(plain_out)
    results = rerank_mbeir(out, sharp_reranker, tasks=["webqa_task1"], top_k=RERANK_TOP_K, alpha=0.5,
                           show_progress=False)
    assert [row.task for row in results.reranked] == ["webqa_task1"]
    after = report(out)
    assert after["tasks"] == before["tasks"]  # a later rerank of any task still finds its runs
    assert after["rerank"]["not_reranked"] == ["cirr_task7", "mscoco_task0"]
    by_task = {t["task"]: t for t in after["rerank"]["tasks"]}
    for row in before["tasks"]:
        if row["task"] != "webqa_task1":
            assert by_task[row["task"]]["score"] == row["score"]
    assert "Not reranked (Ret+Rank = Ret): cirr_task7, mscoco_task0" in (out / "results.md").read_text()
    rerank_mbeir(out, sharp_reranker, tasks=["cirr_task7"], top_k=RERANK_TOP_K, alpha=0.5, show_progress=False)
    assert report(out)["tasks"] == before["tasks"]


def test_a_killed_rerank_resumes_where_it_stopped(root, plain_out, rank_out, sharp_reranker_folder, tmp_path,
                                                  monkeypatch, capsys):
    from lamra.reranker.model import Reranker

    out = tmp_path / "out"
    shutil.copytree(plain_out, out)  # a finished retrieval evaluation, nothing reranked yet
    original = Reranker.yes_no_logits
    budget = {"left": 4}

    def dies_after_four_queries(self, *args, **kwargs):
        if budget["left"] == 0:
            raise RuntimeError("killed")
        budget["left"] -= 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Reranker, "yes_no_logits", dies_after_four_queries)
    args = eval_args(root, out, "--rerank", str(sharp_reranker_folder), "--rerank-top-k", str(RERANK_TOP_K))
    with pytest.raises(RuntimeError, match="killed"):
        main(args)
    scores = out / "rerank-scores"
    finished = sorted(p.name for p in scores.glob("*.jsonl"))
    partial = sorted(scores.glob("*.jsonl.partial"))
    assert len(finished) == 1 and finished[0].startswith("cirr_task7_") and len(partial) == 1
    assert len(partial[0].read_text().splitlines()) == 1
    with open(partial[0], "a") as handle:
        handle.write('{"qid": "9:1", "ids": ["9:')  # a line cut by the kill
    monkeypatch.setattr(Reranker, "yes_no_logits", original)
    calls = count_model_calls(monkeypatch)
    capsys.readouterr()
    assert main(args) == 0
    assert calls["score"] == 9 - 4 and calls["encode"] == 0
    assert "rerank scores: 5 queries scored, 4 reused" in plain(capsys.readouterr().out)
    assert not list(scores.glob("*.partial"))
    resumed, uninterrupted = report(out)["rerank"]["tasks"], report(rank_out)["rerank"]["tasks"]
    assert [t["score"] for t in resumed] == [t["score"] for t in uninterrupted]
    for task in TASKS:
        name = f"mbeir_{task}_local_test_rerank.trec"
        assert (out / "runs" / name).read_text() == (rank_out / "runs" / name).read_text()


def test_usage_errors(root, plain_out, sharp_reranker_folder, tiny_checkpoint, tmp_path, capsys):
    model = ["--model", str(tiny_checkpoint), "--device", "cpu"]
    assert main(eval_args(root, tmp_path / "a", *model, "--alpha", "0.3")) == 2
    assert "--alpha only work(s) with --rerank" in plain(capsys.readouterr().err)
    assert main(eval_args(root, tmp_path / "b", *model, "--rerank", str(sharp_reranker_folder),
                          "--rerank-top-k", "7")) == 2
    assert "7 is more than the 6 candidates retrieved per query" in plain(capsys.readouterr().err)
    assert main(eval_args(root, tmp_path / "empty", "--rerank", str(sharp_reranker_folder), "--rerank-top-k", "5")) == 2
    error = plain(capsys.readouterr().err)
    assert "no evaluation to rerank" in error and "--model" in error
    assert main(eval_args(root, plain_out, "--rerank", str(sharp_reranker_folder), "--rerank-top-k", "5",
                          "--pool", "global")) == 2
    assert "--pool local there, global-union here" in plain(capsys.readouterr().err)


def test_pointwise_scores_a_repeated_candidate_once():
    from lamra.evaluation.rerank import _score_query

    class Recorder:
        def __init__(self):
            self.seen = []

        def score(self, query, candidates, instruction=None, *, batch_size=16):
            self.seen.append([c.id for c in candidates])
            return np.array([{"a": 0.9, "b": 0.2, "c": 0.5}[c.id] for c in candidates], dtype=np.float32)

    recorder = Recorder()
    items = [Item(text=name, id=name) for name in ("a", "b", "a", "c", "b")]  # a global-lamra run repeats
    scores = _score_query(recorder, Item(text="q"), items, mode="pointwise", instruction=None, batch_size=4,
                          window=None)
    assert recorder.seen == [["a", "b", "c"]]
    assert scores.tolist() == pytest.approx([0.9, 0.2, 0.9, 0.5, 0.2])
