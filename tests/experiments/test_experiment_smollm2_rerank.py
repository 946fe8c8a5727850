"""experiments/smollm2_rerank.py: the WordNet-only view of the demo data it trains on."""

from __future__ import annotations

import json
from pathlib import Path

from experiment_scripts import load_experiment, write_jsonl


def load():
    return load_experiment("smollm2_rerank")


def test_data_keeps_only_the_wordnet_training_queries_and_links_the_rest(tmp_path):
    demo = tmp_path / "demo"
    queries = [{"qid": "22:1", "query_txt": "canvas: cover with canvas"}, {"qid": "21:7", "query_txt": "a coat"},
               {"qid": "22:2", "query_txt": "dog: a domestic animal"}]
    write_jsonl(demo / "query" / "union_train" / "mbeir_union_up_train.jsonl", queries)
    write_jsonl(demo / "query" / "test" / "mbeir_wordnet_task1_test.jsonl", [{"qid": "22:9"}])
    write_jsonl(demo / "cand_pool" / "local" / "mbeir_wordnet_task1_cand_pool.jsonl", [{"did": "22:9"}])
    mined = tmp_path / "mined.jsonl"
    write_jsonl(mined, [{"qid": "22:1", "task": "wordnet_task1"}, {"qid": "21:7", "task": "fashionmnist_task0"},
                        {"qid": "22:2", "task": "wordnet_task1"}])
    out = tmp_path / "out"

    load().data(demo, mined, out)

    view = out / "rerank-data"
    kept = [json.loads(line)["qid"] for line in open(view / "query" / "union_train" / "mbeir_union_up_train.jsonl")]
    assert kept == ["22:1", "22:2"]
    assert [json.loads(line)["qid"] for line in open(out / "rerank-mined.jsonl")] == ["22:1", "22:2"]
    assert (view / "cand_pool").is_symlink() and (view / "query" / "test").is_symlink()
    assert (view / "query" / "test" / "mbeir_wordnet_task1_test.jsonl").is_file()
    # The original demo data is left as it was.
    assert len((demo / "query" / "union_train" / "mbeir_union_up_train.jsonl").read_text().splitlines()) == 3


def test_val_candidates_are_the_tasks_own_from_the_union_val_pool(tmp_path):
    demo = tmp_path / "demo"
    query = {"qid": "22:5", "query_txt": "dog: a domestic animal", "query_img_path": None, "query_modality": "text",
             "query_src_content": None, "pos_cand_list": ["22:5"], "neg_cand_list": [], "task_id": 1}
    write_jsonl(demo / "query" / "val" / "mbeir_wordnet_task1_val.jsonl", [query])

    def text(did: str) -> dict:
        return {"txt": f"candidate {did}", "img_path": None, "modality": "text", "did": did, "src_content": None}

    write_jsonl(demo / "cand_pool" / "global" / "mbeir_union_val_cand_pool.jsonl",
                [text("21:1"), text("22:5"), text("20:3"), text("22:6")])
    queries, candidates = load()._split(demo, "val")
    assert [q.qid for q in queries] == ["22:5"]
    assert [c.did for c in candidates] == ["22:5", "22:6"]
