"""experiments/clipart_ceiling.py: its recall count, its held-out split and its trained features."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from experiment_scripts import load_experiment, write_jsonl
from PIL import Image

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 180, 30)}


def load():
    return load_experiment("clipart_ceiling")


def picture(data: Path, name: str, colour: str) -> str:
    relative = f"mbeir_images/clipart_images/{name}.png"
    (data / relative).parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (56, 56), COLOURS[colour]).save(data / relative)
    return relative


def test_recall_counts_the_positives_in_the_top_1_and_top_5(tmp_path):
    data = tmp_path / "data"
    pool = [{"did": f"20:{k}", "img_path": picture(data, f"p{k}", colour), "src_content": "{}"}
            for k, colour in enumerate(["red", "red", "red", "blue", "blue", "blue"])]
    write_jsonl(data / "cand_pool" / "local" / "mbeir_clipart_task4_cand_pool.jsonl", pool)
    write_jsonl(data / "query" / "test" / "mbeir_clipart_task4_test.jsonl", [
        {"qid": "20:100", "query_img_path": picture(data, "q0", "red"), "pos_cand_list": ["20:0", "20:1", "20:2"]},
        # Green looks most like red under the features below, but its positives are the blue ones:
        # all three reds come first, the blues at ranks 4 to 6 (two of them in the top 5).
        {"qid": "20:101", "query_img_path": picture(data, "q1", "green"), "pos_cand_list": ["20:3", "20:4", "20:5"]},
    ])
    import torch

    def features(images):  # red (1, 0), blue (0, 1), green (1, 0.5)
        vectors = {COLOURS["red"]: [1.0, 0.0], COLOURS["blue"]: [0.0, 1.0], COLOURS["green"]: [1.0, 0.5]}
        return torch.tensor([vectors[image.getpixel((0, 0))] for image in images])

    assert load().TestTask(data).recall(features) == (50.0, 100.0)


def _need_cairo():
    try:
        import cairosvg  # noqa: F401
    except (ImportError, OSError) as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"cairosvg cannot run here ({exc})")


SVG = """<?xml version="1.0"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
     xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns:cc="http://creativecommons.org/ns#"
     width="100" height="100" viewBox="0 0 100 100">
  <metadata><rdf:RDF><cc:Work><dc:title>{title}</dc:title></cc:Work></rdf:RDF></metadata>
  <circle cx="50" cy="50" r="30" fill="{fill}"/>
</svg>
"""


def test_every_other_clipart_leaves_out_what_val_and_test_use(tmp_path):
    _need_cairo()
    root = tmp_path / "svg"
    files = {"animals/mammals/cat.svg": "#d22", "animals/birds/owl.svg": "#22d", "food/pear.svg": "#2a2",
             "food/fruit/plum.svg": "#92c"}
    for relative, fill in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(SVG.format(title=Path(relative).stem + " drawing", fill=fill))
    data = tmp_path / "data"
    (data / "demo-data.json").parent.mkdir(parents=True)
    (data / "demo-data.json").write_text(json.dumps({"config": {"image_size": 32}}))
    source = json.dumps  # the files named by a val query and by a test pool are held out
    write_jsonl(data / "query" / "val" / "mbeir_clipart_task0_val.jsonl",
                [{"query_src_content": source({"file": "animals/mammals/cat.svg"})}])
    write_jsonl(data / "query" / "test" / "mbeir_clipart_task4_test.jsonl",
                [{"query_src_content": source({"file": "food/fruit/plum.svg"})}])
    write_jsonl(data / "cand_pool" / "local" / "mbeir_clipart_task3_cand_pool.jsonl",
                [{"src_content": source({"file": "animals/birds/owl.svg"})}])

    images, categories = load().every_other_clipart(data, root)

    assert categories == ["food"]
    assert images[0].size == (32, 32) and images[0].getpixel((16, 16)) == (34, 170, 34)


def test_training_makes_features_of_one_category_closer(tmp_path):
    """The CNN, trained on noisy reddish and bluish squares, puts unseen ones of the same colour
    closer together than ones of the other colour (before training it does not separate them)."""
    import numpy as np
    import torch

    module = load()
    rng = np.random.default_rng(0)

    def squares(count: int, base: tuple) -> list:
        return [Image.fromarray(np.clip(rng.normal(base, 60, size=(56, 56, 3)), 0, 255).astype(np.uint8))
                for _ in range(count)]

    train = squares(24, (160, 90, 90)) + squares(24, (90, 90, 160))
    test = squares(6, (160, 90, 90)) + squares(6, (90, 90, 160))
    same = torch.tensor([[(i < 6) == (j < 6) for j in range(12)] for i in range(12)])

    def margin(cnn) -> float:
        with torch.no_grad():
            vectors = torch.nn.functional.normalize(module.cnn_features(cnn)(test), dim=-1)
        similarity = vectors @ vectors.T
        return float(similarity[same].mean() - similarity[~same].mean())

    torch.manual_seed(0)
    untrained = module.SmallCNN().eval()
    trained = module.train_classifier(module.SmallCNN, module.cnn_features, train, ["r"] * 24 + ["b"] * 24, epochs=4,
                                      batch_size=16)
    assert margin(trained) > margin(untrained) + 0.05


def test_recall_at_5_stops_at_rank_5(tmp_path):
    """Features at distinct angles rank the pool in a known order: positives at ranks 6, 2 and 1
    give R@1 1/3 and R@5 2/3 (a sixth candidate counted would make it 3/3)."""
    import math

    import torch

    data = tmp_path / "data"
    shades = {k: (20 * k, 0, 0) for k in range(8)}  # pool k sits at 10 k degrees from the query (shade 0)
    pool = []
    for k in range(1, 8):
        relative = f"mbeir_images/clipart_images/p{k}.png"
        (data / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (56, 56), shades[k]).save(data / relative)
        pool.append({"did": f"20:{k}", "img_path": relative, "src_content": "{}"})
    query_image = "mbeir_images/clipart_images/q.png"
    Image.new("RGB", (56, 56), shades[0]).save(data / query_image)
    write_jsonl(data / "cand_pool" / "local" / "mbeir_clipart_task4_cand_pool.jsonl", pool)
    write_jsonl(data / "query" / "test" / "mbeir_clipart_task4_test.jsonl", [
        {"qid": f"20:{100 + n}", "query_img_path": query_image, "pos_cand_list": [f"20:{rank}"]}
        for n, rank in enumerate((6, 2, 1))])

    def features(images):
        angles = [math.radians(image.getpixel((0, 0))[0] / 2) for image in images]
        return torch.tensor([[math.cos(a), math.sin(a)] for a in angles])

    assert load().TestTask(data).recall(features) == (33.3, 66.7)


def test_tower_features_of_a_batch_are_each_images_own(tiny_checkpoint):
    """The tower's merged tokens are averaged per image: a batch of two gives what each image gives
    alone, for two pictures of one size and for two of different sizes (different token counts)."""
    import torch

    module = load()
    features = module.tower_features(module.load_tower(tiny_checkpoint))
    red = Image.new("RGB", (80, 60), COLOURS["red"])
    striped = Image.new("RGB", (56, 56), COLOURS["blue"])
    for x in range(0, 56, 8):
        striped.paste(COLOURS["green"], (x, 0, x + 4, 56))
    square = Image.new("RGB", (56, 56), COLOURS["red"])
    with torch.no_grad():
        for pair in ((square, striped), (red, striped)):  # the same size, then two sizes (token counts)
            both = features(list(pair))
            alone = torch.cat([features([image]) for image in pair])
            assert not torch.allclose(alone[0], alone[1], atol=1e-3)  # two different pictures
            torch.testing.assert_close(both, alone, atol=1e-5, rtol=1e-4)
