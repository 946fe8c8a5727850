"""``Retriever.encode(num_workers=N)``: batches collated in DataLoader worker processes give the
in-process path's vectors, in input order, with the same errors (naming the bad item)."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lamra.errors import InputError
from lamra.items import Item
from lamra.qwen2vl.loader import collate_in_workers

WORDS = "the red car a small dog by the old house near a tree on the river in the city".split()


def texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))) for _ in range(count)]


def workloads(image_files):
    """name -> (items, instruction): text of mixed lengths, images, and a mixed list with instructions."""
    images = [image_files[n % len(image_files)] for n in range(7)]
    mixed = [Item(text="a red car", images=[image_files[0]]), "a dog by the river", image_files[2],
             Item(text="two pictures", images=[image_files[1], image_files[3]]), *texts(5, seed=1)]
    instructions = ["Find the image.", None, "Find a caption.", None, "Retrieve a passage.", None, None, "Q:", None]
    return {"text": (texts(23), None), "images": (images, None), "mixed with instructions": (mixed, instructions)}


@pytest.mark.parametrize("workload", ["text", "images", "mixed with instructions"])
def test_workers_give_the_in_process_vectors(tiny_retriever, image_files, workload):
    items, instruction = workloads(image_files)[workload]
    options = dict(instruction=instruction, batch_size=3, show_progress=False)
    expected = tiny_retriever.encode(items, **options)
    got = tiny_retriever.encode(items, num_workers=2, **options)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("sort_by_length", [True, False])
def test_several_workers_keep_the_input_order(tiny_retriever, image_files, sort_by_length):
    items, instruction = workloads(image_files)["mixed with instructions"]
    items = items + texts(12, seed=2)
    instruction = instruction + [None] * 12
    # One item per batch, the batches dealt to the workers in turn: any mix-up moves whole vectors.
    options = dict(instruction=instruction, batch_size=1, sort_by_length=sort_by_length, show_progress=False)
    expected = tiny_retriever.encode(items, **options)
    assert len({tuple(np.round(v, 5)) for v in expected}) == len(items)  # distinct vectors: a swap shows
    np.testing.assert_allclose(tiny_retriever.encode(items, num_workers=2, **options), expected, rtol=0, atol=1e-5)


def count_rows(prompts):  # (module level: a collate_fn that a spawned worker could import)
    return torch.tensor([len(p) for p in prompts])


def test_the_loader_yields_every_planned_batch_once_in_plan_order_with_its_rows():
    prompts = [[0] * n for n in (5, 1, 4, 2, 3, 6, 7)]
    batches = [[6, 5], [0], [2, 4, 3], [1]]
    got = list(collate_in_workers(count_rows, prompts, batches, num_workers=2))
    assert [rows for rows, _ in got] == batches
    for rows, lengths in got:
        assert lengths.tolist() == [len(prompts[r]) for r in rows]
    assert list(collate_in_workers(count_rows, prompts, [], num_workers=2)) == []


def test_a_bad_image_in_a_worker_names_the_item(tiny_retriever, image_files, tmp_path):
    truncated = tmp_path / "truncated.jpg"
    whole = Path(image_files[3]).read_bytes()  # a 300x280 JPEG, cut in half: its header reads, its pixels do not
    truncated.write_bytes(whole[: len(whole) // 2])
    items = ["fine", Item(text="x", images=[image_files[0]], id="good"),
             Item(text="y", images=[truncated], id="broken"), *texts(6)]
    prepared = tiny_retriever.prepare(items)  # tokenizing reads the header only: the error comes in collation
    with pytest.raises(InputError, match="truncated") as info:
        tiny_retriever.encode_prepared(prepared, batch_size=2, num_workers=2, show_progress=False)
    assert type(info.value) is InputError
    assert info.value.item == "broken" and info.value.field == "image"
    assert "(item 'broken') field 'image'" in str(info.value) and str(truncated) in str(info.value)


def test_the_processor_pickles_and_collates_the_same_after(tiny_retriever, image_files):
    """Workers started by spawn (not fork) get the processor pickled."""
    processor = tiny_retriever.processor
    copy = pickle.loads(pickle.dumps(processor))
    prompts = tiny_retriever.prepare(["a dog", Item(text="a red car", images=[image_files[1]]), image_files[2]],
                                     ["Find it.", None, None])
    expected, got = processor.collate(prompts), copy.collate(prompts)
    assert got.keys() == expected.keys() and "pixel_values" in got
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_a_negative_worker_count_is_refused(tiny_retriever):
    with pytest.raises(ValueError, match="num_workers"):
        tiny_retriever.encode(["a dog"], num_workers=-1, show_progress=False)
