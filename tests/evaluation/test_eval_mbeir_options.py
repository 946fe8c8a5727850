"""M-BEIR evaluation options: the two global pools, random (seeded) instructions, bad items left out."""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest

from lamra.data.mbeir import TASKS, MBEIRLayout, MBEIRQuery, count_lines, read_queries
from lamra.data.mbeir_instructions import Instructions, load_instructions, query_instructions
from lamra.data.synthetic import SynthConfig, synthesize
from lamra.errors import InputError
from lamra.evaluation.baselines import OracleEncoder, RandomEncoder
from lamra.evaluation.mbeir import evaluate_mbeir, oracle_positives
from lamra.evaluation.report import read_trec_run
from lamra.index.build import per_item_instructions
from lamra.items import as_item


def _root(tmp_path_factory, name, **sizes):
    path = tmp_path_factory.mktemp(name) / "mbeir"
    synthesize(path, SynthConfig(seed=4, train_queries=0, image_size=32, **sizes))
    return path


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory):
    """A synthetic root where one candidate of mscoco_task0's pool is also in cirr_task7's pool
    (as happens in M-BEIR): the union file has it once, the concatenated local pools twice."""
    root = _root(tmp_path_factory, "shared", test_queries=1, pool_size=8)
    layout = MBEIRLayout(root)
    query = read_queries(layout.query_file("mscoco_task0"))[0]
    pool = [json.loads(line) for line in layout.local_pool("mscoco_task0").read_text().splitlines()]
    duplicate = next(c for c in pool if c["did"] not in query.positives)
    with open(layout.local_pool("cirr_task7"), "a") as handle:
        handle.write(json.dumps(duplicate) + "\n")
    return root, query, duplicate["did"], [c["did"] for c in pool if c["did"] not in query.positives
                                          and c["did"] != duplicate["did"]]


class Scripted:
    """A query vector e0; chosen candidates at chosen cosines to it; everything else at ~0.

    The order of scores is set by hand, so the test knows the ranking of every pool."""

    def __init__(self, query_id: str, cosines: dict[str, float], dim: int = 64):
        self.query_id, self.cosines, self.dim = query_id, cosines, dim

    def fingerprint(self):
        digest = hashlib.sha256(repr(sorted(self.cosines.items())).encode()).hexdigest()[:12]
        return {"model": f"scripted@{digest}", "adapter": None, "prompt_format": "none", "dim": self.dim}

    def encode(self, items, instruction=None, **options):
        items = [as_item(x) for x in items]
        is_query = [i is not None for i in per_item_instructions(instruction, len(items))]  # qids and dids overlap
        rows = []
        for item, query in zip(items, is_query):
            vector = np.zeros(self.dim, np.float32)
            if query:
                vector[0 if item.id == self.query_id else self.dim - 1] = 1.0
            elif item.id in self.cosines:
                c = self.cosines[item.id]
                vector[0], vector[1] = c, np.sqrt(1 - c * c)
            else:  # orthogonal to the query: cosine 0, below every scripted one
                slot = 2 + int.from_bytes(item.id.encode(), "little") % (self.dim - 3)
                vector[slot] = 1.0
            rows.append(vector)
        return np.stack(rows)


def test_global_lamra_lets_a_repeated_candidate_take_two_places_and_global_union_does_not(shared_root, tmp_path):
    root, query, duplicate, others = shared_root
    positive = query.positives[0]
    # Ranking of the union: duplicate .9, three others .8/.79/.78, the positive .5 -> rank 5, a hit at 5.
    # Concatenated local pools: the duplicate twice -> the positive at rank 6, a miss at 5.
    cosines = {duplicate: 0.9, others[0]: 0.8, others[1]: 0.79, others[2]: 0.78, positive: 0.5}
    encoder = Scripted(query.qid, cosines)
    union = evaluate_mbeir(root, encoder, tmp_path / "u", tasks=["mscoco_task0"], pool="global-union",
                           show_progress=False)
    lamra = evaluate_mbeir(root, encoder, tmp_path / "l", tasks=["mscoco_task0"], pool="global-lamra",
                           show_progress=False)
    u, g = union.results[0], lamra.results[0]
    first = lambda result: read_trec_run(result.run_file)[query.qid]  # noqa: E731
    assert [d for d, _ in first(u)][:5] == [duplicate, *others[:3], positive]
    assert [d for d, _ in first(g)][:6] == [duplicate, duplicate, *others[:3], positive]
    assert (u.metrics["Recall@5"], g.metrics["Recall@5"]) == (100.0, 0.0)
    assert u.metrics["Recall@10"] == g.metrics["Recall@10"] == 100.0
    layout = MBEIRLayout(root)
    local_total = sum(count_lines(layout.local_pool(t.name)) for t in TASKS)
    assert u.pool_size == count_lines(layout.global_pool()) == local_total - 1
    assert g.pool_size == local_total


@pytest.mark.parametrize("pool, canonical", [("global", "global-union"), ("global-union", "global-union"),
                                             ("global-lamra", "global-lamra"), ("local", "local")])
def test_every_report_names_the_pool(shared_root, tmp_path, pool, canonical):
    root = shared_root[0]
    tasks = ["mscoco_task0", "nights_task4"]
    evaluation = evaluate_mbeir(root, OracleEncoder(oracle_positives(root, tasks)), tmp_path, tasks=tasks, pool=pool,
                                show_progress=False)
    assert evaluation.pool == canonical and evaluation.average == 100.0
    report = json.loads(evaluation.files["json"].read_text())
    assert report["pool"] == canonical and {t["pool"] for t in report["tasks"]} == {canonical}
    description = {"local": "each task's own pool", "global-union": "UniIR's union pool file",
                   "global-lamra": "the 16 local pools concatenated"}[canonical]
    assert description in report["pool_description"]
    markdown = evaluation.files["markdown"].read_text()
    assert markdown.startswith(f"# M-BEIR ({canonical} pool, test)") and description in markdown
    rows = evaluation.files["csv"].read_text().splitlines()[1:-1]
    assert all(row.split(",")[6] == canonical for row in rows)
    assert all(f"_{canonical}_test.trec" in r.run_file for r in evaluation.results)


def test_unknown_pool_and_missing_local_pool_for_global_lamra(shared_root, tmp_path_factory, tmp_path):
    with pytest.raises(InputError, match="unknown pool 'everything'.*global-lamra"):
        evaluate_mbeir(shared_root[0], RandomEncoder(), tmp_path, pool="everything")
    root = _root(tmp_path_factory, "missing", test_queries=1, pool_size=4)
    MBEIRLayout(root).local_pool("oven_task8").unlink()
    with pytest.raises(InputError, match="global-lamra pool is every local pool") as caught:
        evaluate_mbeir(root, RandomEncoder(), tmp_path, tasks=["mscoco_task0"], pool="global-lamra")
    assert caught.value.file.endswith("mbeir_oven_task8_cand_pool.jsonl")


# -- instructions -------------------------------------------------------------------------------


def _query(qid, positives, modality="text", task_id=0):
    return MBEIRQuery(qid=qid, text="a dog", image=None, modality=modality, src_content=None, positives=positives,
                      negatives=[], task_id=task_id)


def test_random_instructions_follow_a_random_positive_and_repeat_with_the_seed():
    table = Instructions({(9, "text", "image"): ["find a picture", "show an image", "an image please"],
                          (9, "text", "text"): ["find a text"]}, source="test")
    query = _query("9:7", ["9:1", "9:2"])
    modality_of = {"9:1": "image", "9:2": "text"}
    seen = set()
    for seed in range(60):
        chosen = query_instructions([query], table, choice="random", seed=seed, modality_of=modality_of)[0]
        # The released code's two draws, written out: a positive, then one of its key's instructions.
        rng = random.Random(f"{seed}:9:7")
        did = rng.choice(["9:1", "9:2"])
        prompts = {"9:1": ["Find a picture.", "Show an image.", "An image please."], "9:2": ["Find a text."]}[did]
        assert chosen == rng.choice(prompts)
        assert chosen == query_instructions([query], table, choice="random", seed=seed, modality_of=modality_of)[0]
        seen.add(chosen)
    # Both positives were drawn (a text positive picks the text key) and every instruction of the image key.
    assert seen == {"Find a picture.", "Show an image.", "An image please.", "Find a text."}
    assert query_instructions([query], table)[0] == "Find a picture."  # "first": the task's key, its first
    with pytest.raises(InputError, match="'9:3' is not in the pool") as caught:
        query_instructions([_query("9:8", ["9:3"])], table, choice="random", modality_of=modality_of, file="q.jsonl")
    assert (caught.value.file, caught.value.item, caught.value.field) == ("q.jsonl", "9:8", "pos_cand_list")


class Recording(RandomEncoder):
    """Remembers the instruction each query was encoded with."""

    def __init__(self):
        super().__init__(seed=0)
        self.instructions: dict[str, str] = {}

    def encode(self, items, instruction=None, **options):
        items = list(items)
        if isinstance(instruction, list):
            self.instructions.update({item.id: instr for item, instr in zip(items, instruction)})
        return super().encode(items, instruction, **options)


def test_evaluation_with_random_instructions_is_repeatable_and_recorded(tmp_path_factory, tmp_path):
    root = _root(tmp_path_factory, "instr", test_queries=12, pool_size=14)
    tasks = ["mscoco_task0", "cirr_task7"]
    runs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        encoder = Recording()
        result = evaluate_mbeir(root, encoder, tmp_path / name, tasks=tasks, instructions="random", seed=seed,
                                show_progress=False, cache_dir=tmp_path / "cache")
        runs[name] = (encoder.instructions, result)
    first_seed, again, other_seed = runs["a"], runs["b"], runs["c"]
    assert len(first_seed[0]) == 24 and again[0] == {}  # the same seed: the cached query vectors are reused
    assert set(first_seed[1].built) == {"query-mbeir_mscoco_task0_test", "query-mbeir_cirr_task7_test",
                                        "mbeir_mscoco_task0_test_cand_pool", "mbeir_cirr_task7_cand_pool"}
    assert sorted(other_seed[1].built) == ["query-mbeir_cirr_task7_test", "query-mbeir_mscoco_task0_test"]
    assert other_seed[0] != first_seed[0] and set(other_seed[0]) == set(first_seed[0])
    # Each instruction is one of the tsv's instructions of its key, formatted (synthetic: 3 per key).
    table = load_instructions(root)
    allowed = {f"{p[0].upper()}{p[1:]}" for key in [(9, "text", "image"), (8, "image,text", "image")]
               for p in table.prompts[key]}
    assert set(first_seed[0].values()) <= allowed and len(set(first_seed[0].values())) > 2
    report = json.loads(first_seed[1].files["json"].read_text())
    assert (report["instruction_choice"], report["instruction_seed"]) == ("random", 5)
    assert "seed 5" in first_seed[1].files["markdown"].read_text()
    first = evaluate_mbeir(root, RandomEncoder(), tmp_path / "d", tasks=tasks, show_progress=False)
    assert json.loads(first.files["json"].read_text())["instruction_seed"] is None
    # A query's instruction does not depend on the other queries (order, subset, process count).
    queries = read_queries(MBEIRLayout(root).query_file("cirr_task7"))
    modality_of = {did: "image" for q in queries for did in q.positives}
    together = query_instructions(queries, table, choice="random", seed=1, modality_of=modality_of)
    alone = [query_instructions([q], table, choice="random", seed=1, modality_of=modality_of)[0] for q in queries]
    assert together == alone and together[::-1] == query_instructions(queries[::-1], table, choice="random", seed=1,
                                                                      modality_of=modality_of)


# -- bad items --------------------------------------------------------------------------------


@pytest.fixture()
def broken_root(tmp_path):
    """nights_task4 (image -> image) with one unreadable pool image and one unreadable query image."""
    root = tmp_path / "mini"
    synthesize(root, SynthConfig(seed=2, test_queries=3, train_queries=0, pool_size=5, image_size=32))
    layout = MBEIRLayout(root)
    queries = read_queries(layout.query_file("nights_task4"))
    pool = [json.loads(line) for line in layout.local_pool("nights_task4").read_text().splitlines()]
    bad_candidate = next(c for c in pool if c["did"] not in {d for q in queries for d in q.positives})
    (root / bad_candidate["img_path"]).write_bytes(b"not a png")
    (root / queries[1].image).write_bytes(b"not a png either")
    return root, queries[1].qid, bad_candidate["did"]


def test_skip_bad_leaves_out_and_counts_bad_candidates_and_queries(broken_root, tiny_retriever, tmp_path):
    root, bad_query, bad_candidate = broken_root
    with pytest.raises(InputError, match="pass --skip-bad"):
        evaluate_mbeir(root, tiny_retriever, tmp_path / "a", tasks=["nights_task4"], show_progress=False)
    evaluation = evaluate_mbeir(root, tiny_retriever, tmp_path / "b", tasks=["nights_task4"], show_progress=False,
                                skip_bad=True)
    result = evaluation.results[0]
    assert (result.queries, result.skipped_queries, result.skipped_candidates, result.pool_size) == (3, 1, 1, 4)
    assert [e["id"] for e in evaluation.skipped["queries"]["nights_task4"]] == [bad_query]
    assert [e["id"] for e in evaluation.skipped["candidates"]["mbeir_nights_task4_cand_pool.jsonl"]] == [bad_candidate]
    run = read_trec_run(result.run_file)
    assert bad_query not in run and len(run) == 2
    assert result.score <= 100 * 2 / 3 + 1e-9  # the left-out query is a miss
    report = json.loads(evaluation.files["json"].read_text())
    assert report["skip_bad"] is True and report["skipped"]["queries"]["nights_task4"][0]["id"] == bad_query
    # A second run reuses both indexes, skipped items included.
    again = evaluate_mbeir(root, tiny_retriever, tmp_path / "c", tasks=["nights_task4"], show_progress=False,
                           skip_bad=True, cache_dir=tmp_path / "b" / "embeddings")
    assert again.built == [] and again.results[0].skipped_queries == 1
