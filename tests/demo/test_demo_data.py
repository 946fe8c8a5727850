"""``lamra data demo``: built from a tiny fake source tree (SVGs, idx gz, WordNet lines written
here) through the same code as from the Debian packages, and once from the real packages when
they are installed (skipped only when they are absent and CI is not set)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from lamra.cli import main
from lamra.data.mbeir import MBEIRLayout, declared_tasks, get_task, root_tasks
from lamra.data.mbeir_validate import validate_mbeir
from lamra.demo.data import DemoConfig, DemoSize, DemoSources, SourcesMissing, build_demo_data
from lamra.errors import InputError


def _need_cairo():
    try:
        import cairosvg  # noqa: F401
    except (ImportError, OSError) as exc:  # OSError: the cairo C library is missing
        if os.environ.get("CI"):
            raise
        pytest.skip(f"cairosvg cannot run here ({exc}); pip install 'lamra[demo]' and apt-get install libcairo2")


SIZE = DemoSize(test_pool=6, test_queries=4, val_pool=4, val_queries=2, train_queries=8, pairs_train=10,
                pairs_test=4)
COLOURS = {"red": "#d22", "blue": "#22d", "green": "#2a2", "orange": "#f90", "purple": "#92c", "black": "#111"}
SHAPES = {
    "circle": '<circle cx="50" cy="50" r="{r}" fill="{c}"/>',
    "square": '<rect x="{o}" y="{o}" width="{w}" height="{w}" fill="{c}"/>',
    "bar": '<rect x="10" y="{o}" width="80" height="{h}" fill="{c}"/>',
    "diamond": '<polygon points="50,{o} {e},50 50,{e} {o},50" fill="{c}"/>',
    "ring": '<circle cx="50" cy="50" r="{r}" fill="none" stroke="{c}" stroke-width="9"/>',
}


def svg(title: str | None, keywords: list[str], body: str) -> str:
    title_xml = f"<dc:title>{title}</dc:title>" if title is not None else ""
    items = "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100" viewBox="0 0 100 100">
  <metadata>
    <rdf:RDF xmlns:cc="http://web.resource.org/cc/" xmlns:dc="http://purl.org/dc/elements/1.1/"
             xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
      <cc:Work rdf:about="">{title_xml}
        <dc:subject><rdf:Bag>{items}</rdf:Bag></dc:subject>
        <dc:creator><cc:Agent><dc:title>Some Author</dc:title></cc:Agent></dc:creator>
      </cc:Work>
    </rdf:RDF>
  </metadata>
  {body}
</svg>
"""


def write_cliparts(root: Path) -> dict[str, int]:
    """30 distinct drawable cliparts in 5 category folders, plus one file of each kind to skip."""
    for number, (shape, template) in enumerate(SHAPES.items()):
        for k, (colour, code) in enumerate(COLOURS.items()):
            body = template.format(c=code, r=20 + 4 * k, o=10 + 3 * k, w=50 - 4 * k, e=90 - 3 * k, h=20 + 5 * k)
            if k % 2 == 0:  # a label: cairo's font caches once made a text's pixels depend on earlier texts
                font = ("Times", "Bitstream Vera Sans", "monospace")[(number + k) % 3]
                body += f'<text x="8" y="96" style="font-family:{font};font-size:11px">{colour} {shape}</text>'
            folder = root / "shapes" / f"{shape}s"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{colour}_{shape}_01.svg").write_text(svg(f"{colour} {shape}", [shape, "hash", colour], body))
    odd = root / "unsorted"
    odd.mkdir()
    for k in range(4):  # one collection title on 4 files (more than 3): not captions
        (odd / f"icon{k}.svg").write_text(svg("Lemon SVG theme", ["icons"], f'<circle cx="{20 + 10 * k}" cy="50" '
                                                                        'r="9" fill="#333"/>'))
    (odd / "untitled.svg").write_text(svg(None, ["x"], '<circle cx="50" cy="50" r="9" fill="#333"/>'))
    (odd / "broken.svg").write_text(svg("broken picture", [], '<rect width="100%" height="10%" fill="#333"/>')
                                    .replace('width="100" height="100"', 'width="0" height="0"'))
    (odd / "empty.svg").write_text(svg("white picture", [], '<rect x="0" y="0" width="100" height="100" fill="#fff"/>'))
    (root / "shapes" / "copy").mkdir()
    (root / "shapes" / "copy" / "red_circle_01.svg").write_bytes((root / "shapes/circles/red_circle_01.svg")
                                                                 .read_bytes())
    return {"collection title": 4, "no title": 1, "duplicate file": 1}


def write_idx(path: Path, array) -> None:
    """An idx gz file, written here by hand (big-endian magic and sizes, then the bytes)."""
    import numpy as np

    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(f">{1 + array.ndim}I", 0x800 + array.ndim, *array.shape)
    with gzip.GzipFile(path, "wb", mtime=0) as handle:
        handle.write(header + array.tobytes())


def write_fashion_mnist(root: Path) -> None:
    """Random 28x28 images; the held-out t10k ones are marked by a white top-left 10x10 block and
    the train ones by a black one, so a PNG tells which file it came from by its corner alone."""
    import numpy as np

    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for name, count, corner in (("train", 80, 0), ("t10k", 40, 255)):
        images = rng.integers(40, 200, size=(count, 28, 28), dtype=np.uint8)
        images[:, :10, :10] = corner
        write_idx(root / f"{name}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{name}-labels-idx1-ubyte.gz", np.arange(count) % 10)


LEMMAS = ("apple", "boat", "cloud", "drum", "engine", "forest", "guitar", "harbour", "island", "jacket", "kettle",
          "ladder", "mirror", "needle", "orchard", "pillow", "quarry", "river", "saddle", "tunnel", "umbrella",
          "valley", "window", "yacht", "zebra", "anchor", "bridge", "candle", "desert", "feather")


def write_wordnet(root: Path) -> None:
    """data.{noun,verb,adj,adv} lines in WordNet's format: a licence header, synsets with examples
    (two senses for some lemmas), and synsets without any (never used)."""
    root.mkdir(parents=True)
    lines = {pos: ["  1 This software and database is being provided to you, the LICENSEE, by  "]
             for pos in ("noun", "verb", "adj", "adv")}
    for number, lemma in enumerate(LEMMAS):
        offset = 1000 + 100 * number
        lines["noun"].append(f"{offset:08d} 06 n 02 {lemma} 0 big_{lemma} 0 000 | the thing called {lemma} in "
                             f"sense one; \"I saw the {lemma} today\"; \"a {lemma} is here\"  ")
        if number % 3 == 0:
            lines["noun"].append(f"{offset + 50:08d} 07 n 01 {lemma} 1 000 | a second meaning of {lemma}; "
                                 f"\"that {lemma} was another kind\"  ")
        lines["verb"].append(f"{offset:08d} 30 v 01 {lemma}ify 0 000 | to make into a {lemma} (no example)  ")
    lines["adj"].append('00009000 00 a 01 shiny(a) 0 000 | reflecting light; "a shiny coin"  ')
    lines["adv"].append('00009000 02 r 01 quickly 0 000 | with speed; "she answered quickly"  ')
    for pos, rows in lines.items():
        (root / f"data.{pos}").write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def fake_sources(tmp_path_factory) -> tuple[DemoSources, dict]:
    _need_cairo()
    base = tmp_path_factory.mktemp("sources")
    skipped = write_cliparts(base / "svg")
    write_fashion_mnist(base / "fashion-mnist")
    write_wordnet(base / "wordnet")
    return DemoSources(base / "svg", base / "fashion-mnist", base / "wordnet"), skipped


@pytest.fixture(scope="module")
def built(fake_sources, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "data"
    build_demo_data(out, DemoConfig(seed=3, size=SIZE, image_size=32), fake_sources[0], workers=1,
                    show_progress=False)
    return out


def file_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


TASK_NAMES = ["clipart_task0", "clipart_task3", "clipart_task4", "fashionmnist_task0", "fashionmnist_task3",
              "fashionmnist_task4", "wordnet_task1"]


def test_same_seed_same_bytes_whatever_the_workers(built, fake_sources, tmp_path):
    again = tmp_path / "again"
    build_demo_data(again, DemoConfig(seed=3, size=SIZE, image_size=32), fake_sources[0], workers=2,
                    show_progress=False)
    first, second = file_hashes(built), file_hashes(again)
    assert len([name for name in first if name.endswith(".png")]) > 40
    assert first == second
    other = tmp_path / "other"
    build_demo_data(other, DemoConfig(seed=4, size=SIZE, image_size=32), fake_sources[0], workers=1,
                    show_progress=False)
    assert file_hashes(other) != first


def test_validate_accepts_it_and_every_task_has_queries(built, capsys):
    report = validate_mbeir(built)
    assert report.ok, [str(p) for p in report.problems]
    assert main(["data", "validate", str(built)]) == 0
    assert "ok:" in capsys.readouterr().out
    assert [t.name for t in root_tasks(built)] == TASK_NAMES
    layout = MBEIRLayout(built)
    for name in TASK_NAMES:
        assert lines(layout.query_file(name, "test")), name
        assert lines(layout.local_pool(name)), name
        assert layout.qrels_file(name, "test").read_text().strip(), name
        assert lines(layout.query_file(name, "val")), name
    train = lines(built / "query" / "union_train" / "mbeir_union_up_train.jsonl")
    assert {q["task_id"] for q in train} == {0, 1, 3, 4}
    assert {q["qid"].split(":")[0] for q in train} == {"20", "21", "22"}


def test_tasks_use_their_own_dataset_ids_and_the_mscoco_instructions(built):
    document = json.loads((built / "tasks.json").read_text())
    assert [(d["name"], d["id"]) for d in document["datasets"]] == [("clipart", 20), ("fashionmnist", 21),
                                                                    ("wordnet", 22)]
    rows = [line.split("\t") for line in (built / "instructions" / "query_instructions.tsv").read_text().splitlines()]
    by_key = {(r[3], r[0], r[1]): r[4] for r in rows[1:]}
    for dataset_id in ("20", "21"):
        assert by_key[(dataset_id, "text", "image")] == "Find me an everyday image that matches the given caption."
        assert by_key[(dataset_id, "image", "text")] == "Find an image caption describing the following everyday image."
    assert ("22", "text", "text") in by_key
    for name in TASK_NAMES:
        for query in lines(MBEIRLayout(built).query_file(name, "test")):
            assert query["qid"].split(":")[0] == {"clipart": "20", "fashionmnist": "21", "wordnet": "22"}[
                name.split("_")[0]]


def _split_contents(root: Path, split: str) -> tuple[set[str], set[str]]:
    """(texts, image content hashes) of every query and candidate of a split, pairs included."""
    texts, images = set(), set()
    files = list((root / "query" / split).glob("*.jsonl")) + [root / "cand_pool" / "global" /
                                                              f"mbeir_union_{split}_cand_pool.jsonl"]
    if split == "train":
        files.append(root / "query" / "union_train" / "mbeir_union_up_train.jsonl")
    for path in files:
        for record in lines(path):
            text = record.get("query_txt", record.get("txt"))
            image = record.get("query_img_path", record.get("img_path"))
            if text:
                texts.add(text.casefold())
            if image:
                images.add(hashlib.sha256((root / image).read_bytes()).hexdigest())
    if split in ("train", "test"):
        for pair in lines(root / "pairs" / f"{split}.jsonl"):
            texts.update(pair[k].casefold() for k in ("sent0", "sent1", "hard_neg"))
    return texts, images


def test_splits_share_no_image_and_no_text(built):
    contents = {split: _split_contents(built, split) for split in ("train", "val", "test")}
    for split, (texts, images) in contents.items():
        assert texts and images, split
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not contents[a][0] & contents[b][0], (a, b, sorted(contents[a][0] & contents[b][0])[:5])
        assert not contents[a][1] & contents[b][1], (a, b)


def test_held_out_fashion_mnist_images_feed_only_the_test_split(built):
    from PIL import Image

    seen = {"train": 0, "val": 0, "test": 0}
    for split in seen:
        for path in sorted((built / "mbeir_images" / "fashionmnist_images" / split).glob("*.png")):
            corner = Image.open(path).convert("L").getpixel((2, 2))
            assert (corner > 200) == (split == "test"), (path, corner)  # white corner: a t10k image
            seen[split] += 1
    assert all(seen.values()), seen


def test_positives_follow_titles_classes_and_categories(built):
    layout = MBEIRLayout(built)
    pool = {c["did"]: c for name in TASK_NAMES for c in lines(layout.local_pool(name))}
    for query in lines(layout.query_file("fashionmnist_task0", "test")):
        classes = {json.loads(pool[d]["src_content"])["class"] for d in query["pos_cand_list"]}
        assert len(classes) == 1
        assert len(query["pos_cand_list"]) == 1  # 6 pool images, one per class (10 classes, 6 taken)
    for query in lines(layout.query_file("clipart_task0", "test")):
        title = query["query_txt"].split(" (")[0]
        assert [json.loads(pool[d]["src_content"])["title"] for d in query["pos_cand_list"]] == [title]
    for query in lines(layout.query_file("clipart_task4", "test")):
        category = json.loads(query["query_src_content"])["category"]
        assert category.startswith("shapes/")
        assert {json.loads(pool[d]["src_content"])["category"] for d in query["pos_cand_list"]} == {category}
        assert query["query_img_path"] not in {pool[d]["img_path"] for d in query["pos_cand_list"]}


def test_train_queries_list_every_training_picture_of_their_class_or_category(fake_sources, tmp_path):
    """Mining takes the top-k minus the listed positives as hard negatives: a same-class picture
    left off the list would be trained on as a negative of its own class."""
    built = tmp_path / "data"  # enough training pictures for classes of more than 5
    build_demo_data(built, DemoConfig(seed=3, size=replace(SIZE, train_queries=70), image_size=32),
                    fake_sources[0], workers=1, show_progress=False)
    pool = lines(built / "cand_pool" / "global" / "mbeir_union_train_cand_pool.jsonl")
    images = [c for c in pool if c["modality"] == "image"]
    did_of_path = {c["img_path"]: c["did"] for c in images}

    def group(record: dict, field: str) -> str:
        src = json.loads(record[field])
        return src["class"] if src["source"] in ("dataset-fashion-mnist", "lamra") else src["category"]

    checked = 0
    for query in lines(built / "query" / "union_train" / "mbeir_union_up_train.jsonl"):
        dataset = query["qid"].split(":")[0]
        if query["task_id"] == 4 or (query["task_id"] == 0 and dataset == "21"):
            same = {c["did"] for c in images if c["did"].startswith(dataset + ":")
                    and group(c, "src_content") == group(query, "query_src_content")}
            same.discard(did_of_path.get(query["query_img_path"]))
            assert set(query["pos_cand_list"]) == same, query["qid"]
            checked = max(checked, len(same))
    assert checked > 5  # some class holds more pictures than the 5 positives listed before version 4


def test_pairs_have_the_simcse_layout(built):
    for split, count in (("train", 10), ("test", 4)):
        pairs = lines(built / "pairs" / f"{split}.jsonl")
        assert len(pairs) == count
        for pair in pairs:
            assert sorted(pair) == ["hard_neg", "sent0", "sent1"]
            assert all(isinstance(v, str) and v for v in pair.values())
            assert pair["hard_neg"] != pair["sent1"]
            lemma = pair["sent0"].split(":")[0]
            assert lemma in pair["sent1"]  # the fake examples name their lemma


def test_skipped_sources_are_counted(built, fake_sources):
    manifest = json.loads((built / "demo-data.json").read_text())
    skipped = manifest["skipped"]
    for reason, count in fake_sources[1].items():
        assert skipped[f"clipart: {reason}"] == count, (reason, skipped)
    assert skipped.get("clipart: render failed", 0) + skipped.get("clipart: blank render", 0) == 2
    assert (built / "LICENSES.txt").read_text().count("WordNet 3.0 Copyright 2006 by Princeton University") == 1


def test_oracle_scores_100_on_every_task(built, tmp_path):
    from lamra.evaluation.baselines import OracleEncoder
    from lamra.evaluation.mbeir import evaluate_mbeir, oracle_positives

    results = evaluate_mbeir(built, OracleEncoder(oracle_positives(built)), tmp_path / "eval", show_progress=False)
    assert [r.task for r in results.results] == TASK_NAMES
    assert [r.score for r in results.results] == [100.0] * 7


def test_missing_packages_say_what_to_install(tmp_path, capsys):
    nothing = tmp_path / "nothing"
    code = main(["data", "demo", str(tmp_path / "out"), "--clipart-dir", str(nothing), "--fashion-mnist-dir",
                 str(nothing), "--wordnet-dir", str(nothing)])
    err = capsys.readouterr().err
    assert code == 1
    assert "apt-get install -y openclipart-svg dataset-fashion-mnist wordnet-base" in err
    assert "lamra data synth" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SourcesMissing) as caught:
        build_demo_data(tmp_path / "out", sources=DemoSources(nothing, nothing, nothing))
    assert caught.value.missing == ["openclipart-svg", "dataset-fashion-mnist", "wordnet-base"]


def test_refuses_to_replace_another_folder(built, fake_sources, tmp_path):
    (tmp_path / "mine").mkdir()
    with pytest.raises(InputError, match="not a demo data set"):
        build_demo_data(tmp_path / "mine", DemoConfig(size=SIZE), fake_sources[0], overwrite=True,
                        show_progress=False)
    with pytest.raises(InputError, match="exists"):
        build_demo_data(built, DemoConfig(size=SIZE), fake_sources[0], show_progress=False)


@pytest.mark.parametrize("document, field", [
    ({"datasets": [{"name": "mine", "id": 9}], "tasks": []}, "datasets[0]"),  # MSCOCO's id
    ({"datasets": [{"name": "mine", "id": 30}], "tasks": [{"name": "mscoco_task0", "dataset": "mine",
                                                          "task_id": 0, "recall_k": 5}]}, "tasks[0]"),
    ({"datasets": [{"name": "mine", "id": 30}], "tasks": [{"name": "mine_task5", "dataset": "mine",
                                                          "task_id": 5, "recall_k": 5}]}, "tasks[0]"),
    ({"datasets": [{"name": "mine", "id": 30}], "tasks": [{"name": "x", "dataset": "yours", "task_id": 0,
                                                          "recall_k": 5}]}, "tasks[0]"),
    ({"datasets": {}, "tasks": []}, "datasets"),
])
def test_a_bad_tasks_json_names_its_field(tmp_path, document, field):
    (tmp_path / "tasks.json").write_text(json.dumps(document))
    with pytest.raises(InputError) as caught:
        declared_tasks(tmp_path)
    assert caught.value.field == field
    assert caught.value.file == str(tmp_path / "tasks.json")


def test_declared_tasks_are_found_beside_mbeir_ones(tmp_path):
    (tmp_path / "tasks.json").write_text(json.dumps({
        "datasets": [{"name": "mine", "id": 30, "display": "Mine"}],
        "tasks": [{"name": "mine_task4", "dataset": "mine", "task_id": 4, "recall_k": 10}]}))
    task = get_task("mine_task4", tmp_path)
    assert (task.dataset_id, task.display_dataset, task.query_modality, task.metric) == (30, "Mine", "image",
                                                                                          "Recall@10")
    assert get_task("cirr_task7", tmp_path).dataset_id == 8
    expected = tmp_path / "cand_pool" / "local" / "mbeir_mine_task4_cand_pool.jsonl"
    assert MBEIRLayout(tmp_path).local_pool("mine_task4") == expected
    with pytest.raises(InputError, match="mine_task4"):
        get_task("nope", tmp_path)
    assert len(root_tasks(tmp_path.parent)) == 16  # no tasks.json: M-BEIR's


DRAW = """import hashlib, sys
from lamra.demo.sources.clipart import render_png
print(" ".join(hashlib.sha256(render_png((path, 112))[0]).hexdigest() for path in sys.argv[1:]))"""


def test_a_drawing_does_not_depend_on_what_the_process_drew_before(tmp_path):
    """cairo once kept the face of the first bold label it drew (tiny, on a big page), which
    changed a later bold title's pixels: each order, in a fresh process, must draw the same."""
    _need_cairo()
    title, label = tmp_path / "title.svg", tmp_path / "label.svg"
    title.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"><rect x="5" y="5" '
                     'width="90" height="40" fill="#c33"/><text x="50" y="80" style="font-size:20px;'
                     'font-weight:bold;font-family:Bitstream Vera Sans;text-anchor:middle">No parking</text></svg>')
    label.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="800" height="1100"><circle cx="400" cy="300" '
                     'r="200" fill="#33c"/><text x="10" y="1040" style="font-size:10px;font-weight:bold;'
                     'font-family:Bitstream Vera Sans">Author: someone</text></svg>')

    def draw(*paths):
        done = subprocess.run([sys.executable, "-c", DRAW, *map(str, paths)], capture_output=True, text=True,
                              check=True)
        return done.stdout.split()

    first_title, first_label = draw(title, label)
    second_label, second_title = draw(label, title)
    assert (first_title, first_label) == (second_title, second_label)


REAL = DemoSources()


def test_real_debian_sources(tmp_path):
    missing = REAL.missing()
    if missing and not os.environ.get("CI"):
        pytest.skip(f"Debian packages not installed: {', '.join(missing)} (make data-packages)")
    _need_cairo()
    size = DemoSize(test_pool=20, test_queries=5, val_pool=10, val_queries=3, train_queries=20, pairs_train=50,
                    pairs_test=20)
    out = tmp_path / "real"
    manifest = build_demo_data(out, DemoConfig(seed=0, size=size, image_size=56), REAL, workers=1,
                               show_progress=False)
    report = validate_mbeir(out)
    assert report.ok, [str(p) for p in report.problems[:5]]
    counts = manifest["counts"]
    assert counts["pools"] == {"clipart_task0": 20, "clipart_task3": counts["pools"]["clipart_task3"],
                               "clipart_task4": 20, "fashionmnist_task0": 20, "fashionmnist_task3": 20,
                               "fashionmnist_task4": 20, "wordnet_task1": 20}
    assert 12 <= counts["pools"]["clipart_task3"] <= 20  # one caption per title
    assert manifest["skipped"]["clipart: collection title"] > 1000  # "gramastar" on 1,375 stars ...
    for split in ("train", "val", "test"):
        for path in (out / "mbeir_images" / "fashionmnist_images" / split).glob("*.png"):
            assert path.name.startswith("t10k-" if split == "test" else "train-"), path
