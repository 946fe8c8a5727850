"""M-BEIR reader and synthetic generator: every field round-trips; the generator is deterministic."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from lamra.data.mbeir import (
    TASK_MODALITIES,
    TASKS,
    MBEIRLayout,
    iter_candidates,
    iter_queries,
    read_qrels,
    read_queries,
)
from lamra.data.mbeir_instructions import BUILTIN_INSTRUCTIONS, load_instructions, read_instructions
from lamra.data.synthetic import Concept, SynthConfig, render, synthesize
from lamra.errors import InputError

# Lines in the published M-BEIR format (spec section 6), nulls and an unknown extra field included.
SAMPLE_QUERIES = [
    {"qid": "9:1", "query_txt": "A man riding a wave on top of a surfboard.", "query_img_path": None,
     "query_modality": "text", "query_src_content": "{\"id\": \"391895\"}", "pos_cand_list": ["9:7", "9:8"],
     "neg_cand_list": [], "task_id": 0},
    {"qid": "9:2", "query_txt": None, "query_img_path": "mbeir_images/mscoco_images/val2014/a.jpg",
     "query_modality": "image", "query_src_content": None, "pos_cand_list": ["9:9"], "neg_cand_list": ["9:7"],
     "task_id": 3},
    {"qid": "8:3", "query_txt": "is blue and has long sleeves", "query_img_path": "mbeir_images/cirr_images/b.png",
     "query_modality": "image,text", "query_src_content": "{}", "pos_cand_list": ["8:1"], "neg_cand_list": [],
     "task_id": 7, "note": "kept"},
]
SAMPLE_CANDIDATES = [
    {"txt": None, "img_path": "mbeir_images/mscoco_images/val2014/c.jpg", "modality": "image", "did": "9:7",
     "src_content": "{\"image_id\": \"1\"}"},
    {"txt": "Two dogs play in the snow.", "img_path": None, "modality": "text", "did": "9:9", "src_content": None},
    {"txt": "A Wikipedia paragraph.", "img_path": "mbeir_images/oven_images/d.jpg", "modality": "image,text",
     "did": "5:12", "src_content": "{}", "extra_field": [1, 2]},
]


def write_lines(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_hand_written_mbeir_lines_round_trip_every_field(tmp_path):
    queries = list(iter_queries(write_lines(tmp_path / "q.jsonl", SAMPLE_QUERIES)))
    assert [q.to_record() for q in queries] == SAMPLE_QUERIES
    assert [q.line for q in queries] == [1, 2, 3]
    assert queries[0].positives == ["9:7", "9:8"] and queries[0].dataset_id == 9
    assert queries[2].extra == {"note": "kept"}
    candidates = list(iter_candidates(write_lines(tmp_path / "c.jsonl", SAMPLE_CANDIDATES)))
    assert [c.to_record() for c in candidates] == SAMPLE_CANDIDATES

    # What the retriever reads follows the modality; image paths are relative to the root.
    root = tmp_path / "root"
    text_query, image_query, composed = (q.item(root) for q in queries)
    assert text_query.text == SAMPLE_QUERIES[0]["query_txt"] and text_query.images == []
    assert image_query.text is None and image_query.images == [root / SAMPLE_QUERIES[1]["query_img_path"]]
    assert composed.modality == "image,text" and composed.id == "8:3"
    assert [c.item(root).modality for c in candidates] == ["image", "text", "image,text"]


def test_qrels_and_instructions_are_read_as_uniir_reads_them(tmp_path):
    qrels_path = tmp_path / "qrels.txt"
    qrels_path.write_text("9:1 0 9:7 1 0\n9:1 0 9:8 1 0\n\n9:2 0 9:9 1 3\n9:2 0 9:5 0 3\n")
    qrels = read_qrels(qrels_path)
    assert qrels.positives == {"9:1": ["9:7", "9:8"], "9:2": ["9:9"]}  # relevance 0 is not a positive
    assert qrels.task_ids == {"9:1": 0, "9:2": 3}
    qrels_path.write_text("9:1 0 9:7 yes 0\n")
    with pytest.raises(InputError) as caught:
        read_qrels(qrels_path)
    assert caught.value.line == 1 and caught.value.field == "relevance"

    tsv = tmp_path / "instructions" / "query_instructions.tsv"
    tsv.parent.mkdir()
    tsv.write_text("query_modality\tcand_modality\tdataset\tdataset_id\tprompt_1\tprompt_2\tprompt_3\tprompt_4\n"
                   "text\timage\tMSCOCO\t9\tfind the picture\tSecond one.\t\t\n")
    instructions = read_instructions(tsv)
    assert instructions.prompts[(9, "text", "image")] == ["find the picture", "Second one."]
    query = next(iter_queries(write_lines(tmp_path / "q.jsonl", SAMPLE_QUERIES[:1])))
    assert instructions.for_query(query) == "Find the picture."  # the first, formatted as UniIR does
    with pytest.raises(InputError, match="no instruction"):
        instructions.first(9, "image", "text")
    tsv.write_text("header\ntext\tvideo\tMSCOCO\t9\tfind\n")
    with pytest.raises(InputError) as caught:
        read_instructions(tsv)
    assert caught.value.line == 2 and caught.value.field == "cand_modality"
    # Without a tsv the built-in first instructions of spec section 6 are used.
    assert load_instructions(tmp_path / "nowhere").source == "built-in"
    assert len(BUILTIN_INSTRUCTIONS) == 16


def test_bad_query_lines_name_file_line_and_field(tmp_path):
    bad = dict(SAMPLE_QUERIES[0], query_modality="video")
    path = write_lines(tmp_path / "q.jsonl", [SAMPLE_QUERIES[1], bad])
    with pytest.raises(InputError) as caught:
        list(iter_queries(path))
    assert (caught.value.file, caught.value.line, caught.value.field) == (str(path), 2, "query_modality")
    path = write_lines(tmp_path / "dup.jsonl", [SAMPLE_QUERIES[0], SAMPLE_QUERIES[1], SAMPLE_QUERIES[0]])
    with pytest.raises(InputError, match="duplicate qid") as caught:
        read_queries(path)
    assert caught.value.line == 3
    path = write_lines(tmp_path / "img.jsonl", [dict(SAMPLE_QUERIES[1], query_img_path=None)])
    with pytest.raises(InputError) as caught:
        list(iter_queries(path))
    assert caught.value.field == "query_img_path"


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "mbeir"
    synthesize(root, SynthConfig(seed=3, test_queries=4, train_queries=3, pool_size=10, image_size=32))
    return root


def test_synthetic_dataset_reads_back_field_for_field(synthetic_root):
    layout = MBEIRLayout(synthetic_root)
    assert {task.task_id for task in TASKS} == set(TASK_MODALITIES)  # all 8 task types
    union = [json.loads(line) for line in layout.global_pool("test").read_text().splitlines()]
    local_lines = []
    for task in TASKS:
        raw_queries = [json.loads(line) for line in layout.query_file(task.name).read_text().splitlines()]
        queries = read_queries(layout.query_file(task.name))
        assert [q.to_record() for q in queries] == raw_queries and len(queries) == 4
        raw_pool = [json.loads(line) for line in layout.local_pool(task.name).read_text().splitlines()]
        pool = list(iter_candidates(layout.local_pool(task.name)))
        assert [c.to_record() for c in pool] == raw_pool and len(pool) == 10
        local_lines.extend(raw_pool)
        dids = {c.did for c in pool}
        qrels = read_qrels(layout.qrels_file(task.name))
        for query in queries:
            assert query.task_id == task.task_id and query.modality == task.query_modality
            assert query.dataset_id == task.dataset_id
            assert qrels.positives[query.qid] == query.positives and set(query.positives) <= dids
            assert query.item(synthetic_root).images == ([synthetic_root / query.image] if query.image else [])
            for image in query.item(synthetic_root).images:
                assert image.is_file()
        assert {c.modality for c in pool} == {task.cand_modality}
    assert union == local_lines  # the union pool is the local pools together
    train_files = sorted(p.name for p in (synthetic_root / "query" / "train").glob("mbeir_*_train.jsonl"))
    assert len(train_files) == 10
    train_queries = read_queries(synthetic_root / "query" / "union_train" / "mbeir_union_up_train.jsonl")
    train_pool = {c.did for c in iter_candidates(layout.global_pool("train"))}
    assert len(train_queries) == 16 * 3
    assert all(set(q.positives) | set(q.negatives) <= train_pool for q in train_queries)
    assert all(q.negatives for q in train_queries)
    # (The tsv's first instructions are checked against the released strings, written out, in
    # test_mbeir_instruction_literals.py.)
    instructions = load_instructions(synthetic_root)
    assert instructions.source.endswith("query_instructions.tsv")
    for task in TASKS:
        assert len(instructions.prompts[(task.dataset_id, task.query_modality, task.cand_modality)]) == 3


def test_synthetic_dataset_is_deterministic_from_its_seed(tmp_path):
    config = SynthConfig(seed=11, test_queries=2, train_queries=1, pool_size=5, image_size=32)
    first, second = _digest_of(tmp_path / "a", config), _digest_of(tmp_path / "b", config)
    assert first == second
    other = _digest_of(tmp_path / "c", SynthConfig(seed=12, test_queries=2, train_queries=1, pool_size=5,
                                                   image_size=32))
    assert other != first


def _digest_of(root: Path, config) -> dict:
    synthesize(root, config)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_content_is_learnable_and_sized(synthetic_root, tmp_path):
    # Images show what the texts say: the named colour dominates the rendered shape.
    image = render(Concept("square", "green", "plain"), size=64)
    assert image.size == (64, 64) and image.getpixel((32, 32)) == (40, 160, 60)
    moved = render(Concept("square", "green", "plain"), size=64, variant=1)
    assert moved.tobytes() != image.tobytes()  # NIGHTS pairs are two renderings, not one file
    composed = read_queries(MBEIRLayout(synthetic_root).query_file("fashioniq_task7"))[0]
    source = json.loads(composed.src_content)
    assert source["concept"] != source["target"] and "instead of" in composed.text
    with pytest.raises(InputError, match="exists"):
        synthesize(synthetic_root, SynthConfig(test_queries=1))
    (tmp_path / "mine").mkdir()
    with pytest.raises(InputError, match="not a synthetic dataset"):
        synthesize(tmp_path / "mine", SynthConfig(test_queries=1), overwrite=True)
    with pytest.raises(InputError, match="fit the concept space"):
        synthesize(tmp_path / "big", SynthConfig(test_queries=400, train_queries=0))
