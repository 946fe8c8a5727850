"""The built-in M-BEIR instructions, held literally (spec section 6): a one-character change fails.

The expected strings are written out here, per task, with the key the tsv uses - not read from
lamra's table - so swapping two of them (MSCOCO's t->i and i->t, say) or editing one fails.
"""

from __future__ import annotations

import pytest

from lamra.data.mbeir import TASKS, MBEIRLayout, read_queries
from lamra.data.mbeir_instructions import (BUILTIN_INSTRUCTIONS, builtin_instructions, load_instructions,
                                           query_instructions)
from lamra.data.synthetic import SynthConfig, synthesize

# task -> (dataset id, query modality, candidate modality, its first instruction), spec section 6.
RELEASED_FIRST_INSTRUCTIONS = {
    "visualnews_task0": (0, "text", "image", "Identify the news-related image in line with the described event."),
    "mscoco_task0": (9, "text", "image", "Find me an everyday image that matches the given caption."),
    "fashion200k_task0": (1, "text", "image",
                          "Based on the following fashion description, retrieve the best matching image."),
    "webqa_task1": (2, "text", "text",
                    "Retrieve passages from Wikipedia that provide answers to the following question."),
    "edis_task2": (3, "text", "image,text", "Find a news image that matches the provided caption."),
    "webqa_task2": (2, "text", "image,text", "Find a Wikipedia image that answers this question."),
    "visualnews_task3": (0, "image", "text", "Find a caption for the news in the given photo."),
    "mscoco_task3": (9, "image", "text", "Find an image caption describing the following everyday image."),
    "fashion200k_task3": (1, "image", "text", "Find a product description for the fashion item in the image."),
    "nights_task4": (4, "image", "image", "Find a day-to-day image that looks similar to the provided image."),
    "oven_task6": (5, "image,text", "text",
                   "Retrieve a Wikipedia paragraph that provides an answer to the given query about the image."),
    "infoseek_task6": (6, "image,text", "text",
                       "Retrieve a Wikipedia paragraph that provides an answer to the given query about the image."),
    "fashioniq_task7": (7, "image,text", "image",
                        "Find a fashion image that aligns with the reference image and style note."),
    "cirr_task7": (8, "image,text", "image",
                   "Retrieve a day-to-day image that aligns with the modification instructions of the provided "
                   "image."),
    "oven_task8": (5, "image,text", "image,text",
                   "Retrieve a Wikipedia image-description pair that provides evidence for the question of this "
                   "image."),
    "infoseek_task8": (6, "image,text", "image,text",
                       "Retrieve a Wikipedia image-description pair that provides evidence for the question of this "
                       "image."),
}


def test_the_literal_table_covers_the_16_tasks_in_the_papers_order():
    assert list(RELEASED_FIRST_INSTRUCTIONS) == [t.name for t in TASKS]
    for task in TASKS:
        dataset_id, query_modality, cand_modality, _ = RELEASED_FIRST_INSTRUCTIONS[task.name]
        assert (task.dataset_id, task.query_modality, task.cand_modality) == (dataset_id, query_modality, cand_modality)


@pytest.mark.parametrize("task", list(RELEASED_FIRST_INSTRUCTIONS))
def test_builtin_first_instruction_is_the_released_one(task):
    dataset_id, query_modality, cand_modality, expected = RELEASED_FIRST_INSTRUCTIONS[task]
    assert BUILTIN_INSTRUCTIONS[(dataset_id, query_modality, cand_modality)] == expected
    assert builtin_instructions().first(dataset_id, query_modality, cand_modality) == expected


def test_builtin_table_has_exactly_these_keys():
    expected = {(d, q, c): text for d, q, c, text in RELEASED_FIRST_INSTRUCTIONS.values()}
    assert BUILTIN_INSTRUCTIONS == expected


def test_mscoco_directions_are_not_swapped():
    table = builtin_instructions()
    assert table.first(9, "text", "image") == "Find me an everyday image that matches the given caption."
    assert table.first(9, "image", "text") == "Find an image caption describing the following everyday image."


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("literals") / "mbeir"
    synthesize(root, SynthConfig(seed=3, test_queries=2, train_queries=0, pool_size=4, image_size=16))
    return root


def test_every_query_gets_the_released_first_instruction_from_the_tsv_and_without_it(synthetic_root):
    layout = MBEIRLayout(synthetic_root)
    with_tsv = load_instructions(synthetic_root)
    assert with_tsv.source.endswith("query_instructions.tsv")
    for table in (with_tsv, builtin_instructions()):
        for task, (*_, expected) in RELEASED_FIRST_INSTRUCTIONS.items():
            queries = read_queries(layout.query_file(task))
            assert query_instructions(queries, table) == [expected] * len(queries), task


def test_the_synthetic_tsv_rows_start_with_the_released_instruction(synthetic_root):
    rows = (synthetic_root / "instructions" / "query_instructions.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[0].split("\t") == ["query_modality", "cand_modality", "dataset", "dataset_id",
                                   "prompt_1", "prompt_2", "prompt_3", "prompt_4"]
    firsts = {}
    for row in rows[1:]:
        columns = row.split("\t")
        firsts[(int(columns[3]), columns[0], columns[1])] = columns[4]
    expected = {(d, q, c): text for d, q, c, text in RELEASED_FIRST_INSTRUCTIONS.values()}
    assert firsts == expected
