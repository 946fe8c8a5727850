"""LamRA-Rank's training and mining knobs away from their defaults, and mining's summary numbers
recomputed: a bug that ignores a knob is invisible when every test runs it at the default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lamra import Item
from lamra.errors import InputError


@pytest.fixture(scope="module")
def mined_root(tmp_path_factory):
    """A synthetic M-BEIR (every task, 2 training queries each) and a mined file whose top-k holds
    the positives first, then every other candidate of the query's dataset."""
    from lamra.data.synthetic import SynthConfig, synthesize

    folder = tmp_path_factory.mktemp("rerank-knobs")
    root = folder / "mb"
    synthesize(root, SynthConfig(test_queries=0, train_queries=2, pool_size=0, train_negatives=2, image_size=16))
    pool = [json.loads(line) for line in (root / "cand_pool/global/mbeir_union_train_cand_pool.jsonl").read_text()
            .splitlines()]
    queries = [json.loads(line) for line in (root / "query/union_train/mbeir_union_up_train.jsonl").read_text()
               .splitlines()]
    lines = []
    for query in queries:
        same = [c["did"] for c in pool if c["did"].split(":")[0] == query["qid"].split(":")[0]]
        top = query["pos_cand_list"] + [d for d in same if d not in query["pos_cand_list"]]
        lines.append({"qid": query["qid"], "positives": query["pos_cand_list"],
                      "top": [[d, 1.0 - n / 100] for n, d in enumerate(top)],
                      "negatives": [d for d in top if d not in query["pos_cand_list"]]})
    mined = folder / "mined.jsonl"
    mined.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root, mined


def modality_of(root: Path) -> dict[str, str]:
    lines = (root / "cand_pool/global/mbeir_union_train_cand_pool.jsonl").read_text().splitlines()
    return {record["did"]: record["modality"] for record in map(json.loads, lines)}


def test_a_training_example_draws_its_instruction_from_its_own_modalities_row(mined_root):
    """The reranker's examples (instructions "random"): over several epochs and seeds each
    instruction comes from the row (dataset, query modality, drawn positive's modality), never
    from the row with the two modalities swapped (which exists for text <-> image tasks)."""
    from lamra.data.mbeir import read_queries
    from lamra.data.mbeir_instructions import load_instructions
    from lamra.reranker.data import RerankTrainDataset

    root, mined = mined_root
    table = load_instructions(root).prompts
    modality = modality_of(root)
    queries = read_queries(root / "query/union_train/mbeir_union_up_train.jsonl")
    swappable, drawn_texts = 0, set()
    for seed in (0, 1):
        dataset = RerankTrainDataset(root, mined, seed=seed)
        for epoch in range(3):
            for index, query in enumerate(queries):
                drawn = dataset.example(index, epoch)
                key = (query.dataset_id, query.modality, modality[drawn.positive.id])
                assert drawn.instruction in table[key], (query.qid, key, drawn.instruction)
                swapped = (key[0], key[2], key[1])
                if swapped in table and swapped != key:
                    assert not set(table[swapped]) & set(table[key])
                    swappable += 1
                drawn_texts.add(drawn.instruction)
    assert swappable >= 2 * 3 * 3 * 2  # VisualNews, Fashion200K, MSCOCO text <-> image: 2 queries each
    assert len(drawn_texts) > len(table)  # random: more than one instruction of a row gets drawn


def test_the_reranker_recipe_applies_every_knob(mined_root, tiny_checkpoint):
    """Args away from the defaults reach the dataset (train_queries, train_pool, seed, max_negatives
    1, instructions "first"), the collator (a 6-token cut, the answer_eos span, chunks of one
    query) and the step (loss "joint")."""
    from accelerate import Accelerator

    from lamra.data.mbeir import read_queries
    from lamra.data.mbeir_instructions import load_instructions
    from lamra.qwen2vl.backbone import load_backbone
    from lamra.reranker.collator import IGNORE
    from lamra.reranker.trainer import reranker_recipe
    from lamra.training.args import RerankerTrainingArgs, load_args

    root, mined = mined_root
    union = root / "query/union_train/mbeir_union_up_train.jsonl"
    some = mined.with_name("some-queries.jsonl")
    some.write_text("\n".join(union.read_text().splitlines()[:12]) + "\n")
    pool = mined.with_name("pool-copy.jsonl")
    pool.write_bytes((root / "cand_pool/global/mbeir_union_train_cand_pool.jsonl").read_bytes())
    args = load_args(None, args_class=RerankerTrainingArgs, model=str(tiny_checkpoint), data=str(root),
                     mined=str(mined), output_dir="unused", max_negatives=1, instructions="first",
                     max_text_tokens=6, label_span="answer_eos", chunk_size=1, loss="joint", seed=3,
                     train_queries=str(some), train_pool=str(pool))
    recipe = reranker_recipe(args)
    table = load_instructions(root)
    queries = read_queries(some)
    assert len(recipe.dataset) == len(queries) == 12
    examples = [recipe.dataset.example(index, epoch) for epoch in range(2) for index in range(len(queries))]
    assert {len(example.candidates) for example in examples} == {2}  # one negative beside the positive
    assert [e.instruction for e in examples] == [table.for_query(q) for q in queries] * 2
    from lamra.reranker.data import RerankTrainDataset

    seeded = RerankTrainDataset(root, mined, queries=some, seed=3, max_negatives=1, instructions="first")
    assert examples == [seeded.example(index, epoch) for epoch in range(2) for index in range(len(queries))]
    seed_0 = RerankTrainDataset(root, mined, queries=some, seed=0, max_negatives=1, instructions="first")
    assert examples != [seed_0.example(index, epoch) for epoch in range(2) for index in range(len(queries))]
    positive = queries[0].positives[0]  # a pool without it is reported by its own name
    pool.write_text("".join(line + "\n" for line in pool.read_text().splitlines()
                            if json.loads(line)["did"] != positive))
    with pytest.raises(InputError, match=str(pool)):
        reranker_recipe(args)

    backbone = load_backbone(tiny_checkpoint, device="cpu")
    collator = recipe.collator(backbone.processor)
    tokens = backbone.tokenizer(collator.prepared(Item(text="word " * 50)).text, add_special_tokens=False)
    assert len(tokens["input_ids"]) == 6
    batch = collator(examples[:2])
    assert [len(batch[kind]) for kind in ("pointwise", "listwise")] == [2, 2]  # a chunk per query
    im_end = backbone.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for chunk in batch["pointwise"]:
        for row in chunk["labels"]:
            labelled = row[row != IGNORE].tolist()
            assert labelled[-1] == im_end and backbone.tokenizer.decode(labelled[:-1]) in ("Yes", "No")

    from lamra.reranker.steps import AnswerModel

    values = recipe.step(Accelerator(cpu=True), AnswerModel(backbone), batch)
    parts = sorted(float(values[f"{kind}_loss"]) for kind in ("pointwise", "listwise"))
    # "joint": one mean over every labelled token lies between the two parts' means ("sum" adds them).
    assert parts[0] <= float(values["loss"]) <= parts[1]


# -- mining -----------------------------------------------------------------------------------

def test_mining_summary_recall_counts_the_top_k_only(tmp_path):
    """A positive at rank 2 is not in the top 1 and is in the top 5; one at rank 6 is in neither."""
    from lamra.reranker.mining import _task_stats

    results = tmp_path / "task.jsonl"
    ranked = [[f"1:{n}", 1.0 - n / 10] for n in range(1, 12)]
    lines = [{"qid": "1:100", "positives": ["1:2"], "top": ranked, "negatives": ["1:1"]},
             {"qid": "1:101", "positives": ["1:6"], "top": ranked, "negatives": []},
             {"qid": "1:102", "positives": ["1:1"], "top": ranked, "negatives": ["1:2"]},
             {"qid": "1:103", "positives": ["1:11"], "top": ranked, "negatives": ["1:3"]}]
    results.write_text("".join(json.dumps(line) + "\n" for line in lines))
    stats = _task_stats(results, pool_size=11)
    assert stats == {"queries": 4, "pool": 11, "unlabelled": 0, "recall@1": 25.0, "recall@5": 50.0,
                     "recall@10": 75.0, "without_negatives": 1}


def test_mining_plan_takes_union_pools_and_seeded_random_instructions(mined_root):
    """pools "union": every task searches the whole pool; instructions "random": the released
    code's choice (a random positive, then a random instruction of its row), seeded."""
    from lamra.data.mbeir import read_queries
    from lamra.data.mbeir_instructions import load_instructions
    from lamra.qwen2vl.prompts import format_text
    from lamra.reranker.mining import plan_mining

    root, _ = mined_root
    table = load_instructions(root)
    modality = modality_of(root)
    queries = read_queries(root / "query/union_train/mbeir_union_up_train.jsonl")
    by_task = plan_mining(root)
    union = plan_mining(root, pools="union", instructions="random", seed=5)
    assert all(sorted(rows) == list(range(len(union.candidates))) for rows in union.task_pools.values())
    assert len(union.candidates) == len(modality) > max(len(rows) for rows in by_task.task_pools.values())
    first = [table.for_query(q) for q in queries]
    assert by_task.instructions == first
    for query, text in zip(queries, union.instructions):
        rows = {modality[did] for did in query.positives}
        assert any(text in {format_text(p) for p in table.prompts[(query.dataset_id, query.modality, m)]}
                   for m in rows), (query.qid, text)
    assert union.instructions != first
    assert plan_mining(root, pools="union", instructions="random", seed=6).instructions != union.instructions
    assert plan_mining(root, pools="union", instructions="random", seed=5).instructions == union.instructions
