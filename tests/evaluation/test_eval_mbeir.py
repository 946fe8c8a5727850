"""M-BEIR evaluation: oracle = 100, random = chance from pool sizes, caches, and one tiny-model run."""

from __future__ import annotations

import json
from math import comb

import numpy as np
import pytest

from lamra.cli import main
from lamra.data.mbeir import TASKS, MBEIRLayout, count_lines, read_qrels
from lamra.data.synthetic import SynthConfig, synthesize
from lamra.errors import InputError
from lamra.evaluation.baselines import OracleEncoder, RandomEncoder
from lamra.evaluation.mbeir import evaluate_mbeir, oracle_positives
from lamra.evaluation.metrics import evaluate_run
from lamra.evaluation.report import read_trec_run


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("mbeir-eval") / "mbeir"
    synthesize(path, SynthConfig(seed=1, test_queries=30, train_queries=0, pool_size=40, image_size=32))
    return path


class Counting:
    """Wraps an encoder: counts the items it encodes; adapter / prompt format set the fingerprint."""

    def __init__(self, inner, adapter=None, prompt_format="none"):
        self.inner, self.adapter, self.prompt_format, self.items = inner, adapter, prompt_format, 0

    def fingerprint(self):
        return {**self.inner.fingerprint(), "adapter": self.adapter, "prompt_format": self.prompt_format}

    def encode(self, items, instruction=None, **options):
        items = list(items)
        self.items += len(items)
        return self.inner.encode(items, instruction, **options)


def chance(pool_size: int, positives: int, k: int) -> float:
    """P(a uniformly random order puts one of the positives in the top k)."""
    return 1 - comb(pool_size - positives, k) / comb(pool_size, k)


@pytest.mark.parametrize("pool", ["local", "global", "global-union", "global-lamra"])
def test_an_oracle_scores_100_on_every_task(root, tmp_path, pool):
    evaluation = evaluate_mbeir(root, OracleEncoder(oracle_positives(root)), tmp_path, pool=pool, show_progress=False)
    assert [r.task for r in evaluation.results] == [t.name for t in TASKS]
    assert all(r.score == 100.0 for r in evaluation.results), [(r.task, r.score) for r in evaluation.results]
    assert evaluation.average == 100.0
    sizes = {r.pool_size for r in evaluation.results}
    layout = MBEIRLayout(root)
    union = count_lines(layout.global_pool())
    local = {t.name: count_lines(layout.local_pool(t.name)) for t in TASKS}
    if pool in ("global", "global-union"):
        assert sizes == {union}
    elif pool == "global-lamra":  # the 16 local pools concatenated (here disjoint, so as many as the union)
        assert sizes == {sum(local.values())}
    else:
        assert [r.pool_size for r in evaluation.results] == [local[t.name] for t in TASKS]


def test_a_random_encoder_scores_the_chance_level_of_the_pool_sizes(root, tmp_path):
    layout = MBEIRLayout(root)
    expected = {}
    for task in TASKS:
        pool_size = count_lines(layout.local_pool(task.name))
        positives = read_qrels(layout.qrels_file(task.name)).positives.values()
        expected[task.name] = 100 * np.mean([chance(pool_size, len(p), task.recall_k) for p in positives])
    seeds = range(8)
    scores = np.array([[r.score for r in evaluate_mbeir(root, RandomEncoder(seed), tmp_path / str(seed),
                                                        show_progress=False).results] for seed in seeds])
    want = np.array([expected[t.name] for t in TASKS])
    # 8 seeds x 480 queries: the mean is within ~0.5 points of chance (1 sd); allow 4 sd.
    assert abs(scores.mean() - want.mean()) < 2.0, (scores.mean(), want.mean())
    assert np.all(np.abs(scores.mean(axis=0) - want) < 12.0)
    assert 10 < want.mean() < 25  # the pools are small enough for chance to be measurable


def test_second_run_reuses_every_embedding_and_a_new_adapter_or_prompt_reencodes_all(root, tmp_path):
    tasks = ["mscoco_task0", "cirr_task7", "nights_task4"]
    layout = MBEIRLayout(root)
    total = sum(count_lines(layout.query_file(t)) + count_lines(layout.local_pool(t)) for t in tasks)
    cache = tmp_path / "cache"
    oracle = OracleEncoder(oracle_positives(root, tasks))

    def run(encoder, out):
        return evaluate_mbeir(root, encoder, tmp_path / out, tasks=tasks, cache_dir=cache, show_progress=False)

    first = Counting(oracle)
    result = run(first, "a")
    assert first.items == total and len(result.built) == 6 and result.reused == []
    again = Counting(oracle)
    result = run(again, "b")
    assert again.items == 0 and result.built == [] and len(result.reused) == 6  # a cache hit: nothing encoded
    assert [r.score for r in result.results] == [100.0] * 3
    for changed in (Counting(oracle, adapter="lora-v2"), Counting(oracle, prompt_format="lamra-ret-2")):
        result = run(changed, "c")
        assert changed.items == total and result.reused == []  # everything encoded again
    # Changing a data file re-encodes that file only.
    pool = layout.local_pool("cirr_task7")
    lines = pool.read_text().splitlines(keepends=True)
    pool.write_text("".join(reversed(lines)))
    try:
        edited = Counting(oracle)
        result = run(edited, "d")
        assert edited.items == len(lines) and result.built == [pool.stem]
    finally:
        pool.write_text("".join(lines))


def test_run_files_and_reports_agree(root, tmp_path):
    evaluation = evaluate_mbeir(root, RandomEncoder(3), tmp_path, tasks=["fashion200k_task0", "webqa_task1"],
                                top_k=20, show_progress=False)
    for result in evaluation.results:
        run = read_trec_run(result.run_file)
        assert all(len(ranked) == 20 for ranked in run.values()) and len(run) == result.queries
        assert all(all(a[1] >= b[1] for a, b in zip(r, r[1:])) for r in run.values())  # best first
        qrels = read_qrels(MBEIRLayout(root).qrels_file(result.task)).positives
        recomputed = evaluate_run({q: [d for d, _ in r] for q, r in run.items()}, qrels, [result.metric])
        assert 100 * recomputed[result.metric] == pytest.approx(result.score)
    report = json.loads(evaluation.files["json"].read_text())
    assert report["average"] == pytest.approx(evaluation.average)
    assert [t["metric"] for t in report["tasks"]] == ["Recall@10", "Recall@5"]
    assert report["instruction_choice"] == "first" and report["instructions"].endswith(".tsv")
    markdown = evaluation.files["markdown"].read_text()
    assert "| 3. qt→ci | Fashion200K | Recall@10 |" not in markdown and "| 1. qt→ci | Fashion200K |" in markdown
    assert "Average (2 tasks)" in markdown
    assert evaluation.files["csv"].read_text().splitlines()[0].startswith("task,task_type,dataset,metric,score")


def test_bad_requests_fail_clearly(root, tmp_path):
    with pytest.raises(InputError, match="unknown M-BEIR task 'coco'"):
        evaluate_mbeir(root, RandomEncoder(), tmp_path, tasks=["coco"])
    with pytest.raises(InputError, match="below the Recall@K cut-off of fashion200k_task0"):
        evaluate_mbeir(root, RandomEncoder(), tmp_path, tasks=["fashion200k_task0"], top_k=5)
    with pytest.raises(InputError, match="missing file") as caught:
        evaluate_mbeir(tmp_path / "nowhere", RandomEncoder(), tmp_path, tasks=["cirr_task7"])
    assert caught.value.file.endswith("mbeir_cirr_task7_test.jsonl")


def test_lamra_eval_mbeir_end_to_end_with_a_tiny_model(tmp_path, tiny_checkpoint, capsys):
    data = tmp_path / "mini"
    assert main(["data", "synth", str(data), "--test-queries", "2", "--train-queries", "0", "--pool-size", "6",
                 "--image-size", "32"]) == 0
    out = tmp_path / "out"
    args = ["eval", "mbeir", str(data), "--model", str(tiny_checkpoint), "--out", str(out), "--device", "cpu", "-q"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "M-BEIR, local pool" in printed and "Average" in printed and "encoded 32, reused 0" in printed
    report = json.loads((out / "results.json").read_text())
    assert len(report["tasks"]) == 16 and report["encoder"]["prompt_format"].startswith("lamra")
    assert all(0 <= t["score"] <= 100 for t in report["tasks"])
    for task in report["tasks"]:
        run = read_trec_run(task["run_file"])
        assert len(run) == 2 and all(len(r) == task["pool_size"] for r in run.values())  # pool < top 50
    assert main(args) == 0  # the second run reuses every embedding
    assert "encoded 0, reused 32" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["average"] == pytest.approx(report["average"])


def test_queries_are_encoded_with_their_first_instruction(root, tmp_path, tiny_retriever):
    from lamra.data.mbeir import read_queries
    from lamra.data.mbeir_instructions import load_instructions
    from lamra.index import Index

    evaluation = evaluate_mbeir(root, tiny_retriever, tmp_path, tasks=["cirr_task7"], show_progress=False)
    queries = read_queries(MBEIRLayout(root).query_file("cirr_task7"))[:3]
    first = load_instructions(root).for_query(queries[0])
    assert first == "Retrieve a day-to-day image that aligns with the modification instructions of the provided image."
    index = Index.open(evaluation.results[0].query_index)
    stored = index.vectors()[[index.position(q.qid) for q in queries]]
    direct = tiny_retriever.encode([q.item(root) for q in queries], first, show_progress=False)
    assert np.allclose(stored, direct, atol=1e-5)
    assert not np.allclose(stored, tiny_retriever.encode([q.item(root) for q in queries], show_progress=False),
                           atol=1e-3)  # the instruction does change the vectors


def test_an_unreadable_image_is_named_by_pool_file_and_line(tmp_path, tiny_retriever):
    root = tmp_path / "mini"
    synthesize(root, SynthConfig(seed=2, test_queries=2, train_queries=0, pool_size=4, image_size=32))
    pool = MBEIRLayout(root).local_pool("nights_task4")
    lines = pool.read_text().splitlines(keepends=True)
    record = json.loads(lines[2])
    (root / record["img_path"]).write_bytes(b"not a png")
    with pytest.raises(InputError) as caught:
        evaluate_mbeir(root, tiny_retriever, tmp_path / "out", tasks=["nights_task4"], show_progress=False)
    error = caught.value
    assert (error.file, error.line, error.item, error.field) == (str(pool), 3, record["did"], "image")
