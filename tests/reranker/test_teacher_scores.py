"""The teacher-scores file: made from a mined file with the reranker's P(Yes), refused when another
retriever or reranker made it, resumed after kill -9; filtering never drops a positive."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lamra.errors import InputError
from lamra.training.distill_data import (
    TeacherRecord,
    check_teacher_models,
    filter_negatives,
    read_teacher_scores,
    sample_fraction,
)

LAMRA = Path(sys.executable).with_name("lamra")


def record(scores: dict[str, float], positives=("p",)) -> TeacherRecord:
    return TeacherRecord("q1", list(positives), [(did, 0.5, p) for did, p in scores.items()], "task")


def test_filtering_never_drops_a_positive():
    sure = record({"p": 1.0, "a": 0.9, "b": 0.2, "p2": 1.0}, positives=("p", "p2"))
    for options in ({"threshold": 0.0}, {"margin": 1.0}, {"threshold": 0.0, "margin": 1.0}):
        kept, dropped = filter_negatives(sure, **options)
        assert not {"p", "p2"} & set(kept + dropped)
        assert sorted(kept + dropped) == ["a", "b"]


def test_threshold_one_drops_nothing_and_a_lower_one_drops_the_reranker_judged_relevant():
    sure = record({"p": 0.7, "a": 1.0, "b": 0.95, "c": 0.1})
    assert filter_negatives(sure, threshold=1.0) == (["a", "b", "c"], [])
    assert filter_negatives(sure, threshold=0.5) == (["c"], ["a", "b"])
    # margin: above the positive's P(Yes) minus 0.1 (0.6) is dropped
    assert filter_negatives(sure, margin=0.1) == (["c"], ["a", "b"])
    assert filter_negatives(record({"a": 0.99, "b": 0.1}), margin=0.1) == (["a", "b"], [])  # positive not retrieved


def test_the_fraction_is_drawn_per_task_and_seeded():
    by_task = {"t1": [f"1:{n}" for n in range(40)], "t2": [f"2:{n}" for n in range(10)], "t3": ["3:0"]}
    chosen = sample_fraction(by_task, 0.1, 42)
    assert chosen == sample_fraction(by_task, 0.1, 42) != sample_fraction(by_task, 0.1, 7)
    assert [len(chosen & set(q)) for q in by_task.values()] == [4, 1, 1]
    assert sample_fraction(by_task, 1.0, 0) == {q for qs in by_task.values() for q in qs}


def write_scores(path: Path, retriever: dict, reranker: dict) -> Path:
    header = {"format": "lamra-teacher-scores-1", "retriever": retriever, "reranker": reranker, "k": 2}
    line = {"qid": "1:1", "task": "t", "positives": ["1:2"], "candidates": [["1:2", 0.5, 0.9], ["1:3", 0.4, 0.1]]}
    path.write_text(json.dumps(header) + "\n" + json.dumps(line) + "\n")
    return path


def test_a_file_made_by_another_retriever_or_reranker_is_refused_naming_which(tmp_path):
    retriever, reranker = {"model": "ret@aaa", "adapter": None}, {"model": "rank@bbb", "adapter": None}
    path = write_scores(tmp_path / "scores.jsonl", retriever, reranker)
    header, records = read_teacher_scores(path)
    check_teacher_models(header, path, retriever=retriever, reranker=reranker)  # the makers: accepted
    with pytest.raises(InputError, match=r"another retriever.*ret@aaa.*ret@ccc") as error:
        check_teacher_models(header, path, retriever={"model": "ret@ccc", "adapter": None}, reranker=reranker)
    assert error.value.field == "retriever" and error.value.file == str(path)
    with pytest.raises(InputError, match=r"another reranker.*rank@bbb.*rank@ddd") as error:
        check_teacher_models(header, path, retriever=retriever, reranker={"model": "rank@ddd"})
    assert error.value.field == "reranker"


def test_a_bad_line_is_named(tmp_path):
    path = write_scores(tmp_path / "scores.jsonl", {}, {})
    path.write_text(path.read_text() + json.dumps({"qid": "1:5", "positives": ["1:2"],
                                                   "candidates": [["1:2", 0.5, 1.7]]}) + "\n")
    with pytest.raises(InputError, match="outside") as error:
        read_teacher_scores(path)
    assert (error.value.line, error.value.field, error.value.item) == (3, "candidates", "1:5")


# -- made end to end from a mined file, and resumed ---------------------------------------------

@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    """A mined file written by hand (as `lamra mine` writes it, with its summary): the 16 training
    queries of the synthetic M-BEIR in two tasks, each with its positive and 3 hard negatives."""
    from lamra.data.synthetic import SynthConfig, synthesize

    folder = tmp_path_factory.mktemp("teacher")
    root = folder / "mb"
    synthesize(root, SynthConfig(test_queries=0, train_queries=1, pool_size=0, train_negatives=3))
    queries = [json.loads(line) for line in (root / "query" / "union_train" / "mbeir_union_up_train.jsonl")
               .read_text().splitlines()]
    out = folder / "mined.jsonl"
    lines = []
    for n, query in enumerate(queries):
        top = [query["pos_cand_list"][0]] + query["neg_cand_list"][:3]
        top = top[n % 4:] + top[: n % 4]  # the positive first, fourth, third or second
        scores = {d: 0.9 - 0.1 * i for i, d in enumerate(top)}
        lines.append(json.dumps({"qid": query["qid"], "task": f"task{n % 2}", "instruction": None,
                                 "positives": query["pos_cand_list"], "top": [[d, scores[d]] for d in top],
                                 "negatives": [d for d in top if d not in query["pos_cand_list"]],
                                 "positive_scores": [[d, scores.get(d, 0.3)] for d in query["pos_cand_list"]]}) + "\n")
    out.write_text("".join(lines))
    summary = {"fingerprint": {"model": "retriever@abc", "adapter": None}}
    Path(str(out) + ".summary.json").write_text(json.dumps(summary))
    return root, out


@pytest.fixture(scope="module")
def scored(mined, sharp_reranker, tmp_path_factory):
    from lamra.reranker.teacher_scores import score_teacher

    root, mined_file = mined
    out = tmp_path_factory.mktemp("scored") / "scores.jsonl"
    summary = score_teacher(sharp_reranker, root, mined_file, out, k=3, fraction=0.5, seed=1, show_progress=False)
    return out, summary


def test_scores_are_the_mined_top_k_with_the_rerankers_p_yes(mined, scored, sharp_reranker):
    from lamra.data.mbeir import iter_candidates, read_queries

    root, mined_file = mined
    out, summary = scored
    header, records = read_teacher_scores(out)
    assert header["retriever"] == {"model": "retriever@abc", "adapter": None}  # the mined file's
    assert header["reranker"] == json.loads(json.dumps(sharp_reranker.fingerprint()))
    tasks = {json.loads(line)["task"] for line in mined_file.read_text().splitlines()}
    assert len(tasks) == 2 and len(records) == summary.queries == 8  # half of each task's 8 queries
    assert {r.task for r in records} == tasks
    mined_lines = {json.loads(line)["qid"]: json.loads(line) for line in mined_file.read_text().splitlines()}
    queries = {q.qid: q for q in read_queries(root / "query" / "union_train" / "mbeir_union_up_train.jsonl")}
    pool = {c.did: c for c in iter_candidates(root / "cand_pool" / "global" / "mbeir_union_train_cand_pool.jsonl")}
    for scored_query in records:
        top = mined_lines[scored_query.qid]["top"][:3]
        assert [(d, r) for d, r, _ in scored_query.candidates] == [(d, pytest.approx(r, abs=1e-6)) for d, r in top]
        expected = sharp_reranker.score(queries[scored_query.qid].item(root), [pool[d].item(root) for d, _ in top],
                                        mined_lines[scored_query.qid]["instruction"])
        np.testing.assert_allclose([p for _, _, p in scored_query.candidates], expected, atol=1e-5)
        # The positives are scored too, retrieved in the top 3 or not, with the mined cosine.
        positives = mined_lines[scored_query.qid]["positive_scores"]
        assert [(d, r) for d, r, _ in scored_query.positive_scores] == [(d, pytest.approx(r)) for d, r in positives]
        expected = sharp_reranker.score(queries[scored_query.qid].item(root),
                                        [pool[d].item(root) for d, _ in positives],
                                        mined_lines[scored_query.qid]["instruction"])
        np.testing.assert_allclose([p for _, _, p in scored_query.positive_scores], expected, atol=1e-5)
    assert any(r.positive_scores[0][0] not in {d for d, _, _ in r.candidates} for r in records)  # one unretrieved


def test_filtered_queries_keep_the_query_lines_with_the_kept_negatives(mined, scored, tmp_path):
    from lamra.reranker.teacher_scores import write_filtered_queries

    root, _ = mined
    out, _ = scored
    _, records = read_teacher_scores(out)
    filtered = tmp_path / "filtered.jsonl"
    counts = write_filtered_queries(out, root, filtered, threshold=1.0)
    assert sum(row["dropped"] for row in counts.values()) == 0
    lines = [json.loads(line) for line in filtered.read_text().splitlines()]
    assert [line["qid"] for line in lines] == [r.qid for r in records]
    for line, scored_query in zip(lines, records):
        assert line["neg_cand_list"] == [d for d, _, _ in scored_query.candidates if d not in line["pos_cand_list"]]
    median = float(np.median([p for r in records for _, _, p in r.candidates]))
    counts = write_filtered_queries(out, root, filtered, threshold=median)
    assert sum(row["dropped"] for row in counts.values()) > 0
    # use_hard_negatives training draws from what is left (a query left with none is left out)
    from lamra.retriever.data import MBEIRTrainDataset

    dataset = MBEIRTrainDataset(root, queries=filtered, use_hard_negatives=True)
    assert len(dataset) == len(records) - sum(row["left_out"] for row in counts.values()) > 0
    by_qid = {r.qid: r for r in records}
    for index in range(len(dataset)):
        example = dataset.example(index)
        kept, _ = filter_negatives(by_qid[example.query.id], threshold=median)
        assert example.hard_negative.id in kept


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_result(mined, sharp_reranker, sharp_reranker_folder, tmp_path):
    """`lamra score-teacher` killed mid-run, started again: the same file as one uninterrupted run."""
    from lamra.reranker.teacher_scores import score_teacher

    root, mined_file = mined
    reference = tmp_path / "reference.jsonl"
    score_teacher(sharp_reranker, root, mined_file, reference, k=3, part_size=2, show_progress=False)  # 8 parts
    out = tmp_path / "scores.jsonl"
    command = [str(LAMRA), "score-teacher", "--data", str(root), "--mined", str(mined_file), "--reranker",
               str(sharp_reranker_folder), "--out", str(out), "--k", "3", "--part-size", "2", "--device", "cpu",
               "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    work = out.with_name(out.name + ".work")
    deadline = time.time() + 300
    while not list(work.glob("part-*.jsonl")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(work.glob("part-*.jsonl")) and not out.exists()
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "resuming" in run.stderr
    assert read_teacher_scores(out)[1] == read_teacher_scores(reference)[1]


def test_filter_negatives_command_reports_the_drops_per_task(mined, scored, tmp_path, capsys):
    from lamra.cli import main

    root, _ = mined
    out, _ = scored
    code = main(["filter-negatives", "--scores", str(out), "--data", str(root), "--out", str(tmp_path / "f.jsonl"),
                 "--threshold", "1.0"])
    printed = capsys.readouterr().out
    assert code == 0 and "task0" in printed and "task1" in printed
    assert "dropped 0 negative(s)" in printed
    code = main(["filter-negatives", "--scores", str(tmp_path / "missing.jsonl"), "--data", str(root),
                 "--out", str(tmp_path / "g.jsonl"), "--threshold", "0.5"])
    error = capsys.readouterr().err
    assert code == 2 and error.startswith("error:") and "missing.jsonl" in error and "Traceback" not in error


def test_queries_without_positives_are_scored_and_left_out_of_the_filtered_queries(mined, sharp_reranker, tmp_path):
    """A query log without labels: its top-k is scored (what distillation learns from), the
    positive / negative means leave it out, and filtering (for InfoNCE) leaves the query out."""
    from lamra.reranker.teacher_scores import score_teacher, write_filtered_queries

    root, mined_file = mined
    lines = [json.loads(line) for line in mined_file.read_text().splitlines()]
    unlabelled = {lines[0]["qid"], lines[3]["qid"]}
    for line in lines:
        if line["qid"] in unlabelled:
            line.update(positives=[], positive_scores=[], negatives=[did for did, _ in line["top"]])
    mined_copy = tmp_path / "mined.jsonl"
    mined_copy.write_text("".join(json.dumps(line) + "\n" for line in lines))
    Path(str(mined_copy) + ".summary.json").write_text(Path(str(mined_file) + ".summary.json").read_text())
    queries = [json.loads(line) for line in (root / "query" / "union_train" / "mbeir_union_up_train.jsonl")
               .read_text().splitlines()]
    query_file = tmp_path / "q.jsonl"
    query_file.write_text("".join(json.dumps({**q, "pos_cand_list": [] if q["qid"] in unlabelled
                                                     else q["pos_cand_list"]}) + "\n" for q in queries))
    out = tmp_path / "scores.jsonl"
    summary = score_teacher(sharp_reranker, root, mined_copy, out, k=3, queries=[query_file], show_progress=False)
    _, records = read_teacher_scores(out)
    by_qid = {r.qid: r for r in records}
    for qid in unlabelled:
        assert by_qid[qid].positives == [] and [d for d, _, _ in by_qid[qid].candidates] == \
            [d for d, _ in next(line for line in lines if line["qid"] == qid)["top"][:3]]
    assert sum(stats["unlabelled"] for stats in summary.tasks.values()) == 2
    for task, stats in summary.tasks.items():
        negatives = [p for r in records if r.task == task and r.positives
                     for d, _, p in r.candidates if d not in r.positives]
        assert stats["p_yes_negatives"] == pytest.approx(round(sum(negatives) / len(negatives), 4))
    filtered = tmp_path / "filtered.jsonl"
    counts = write_filtered_queries(out, root, filtered, threshold=1.0, queries=[query_file])
    assert sum(row["unlabelled"] for row in counts.values()) == 2
    assert not {json.loads(line)["qid"] for line in filtered.read_text().splitlines()} & unlabelled
