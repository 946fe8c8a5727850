"""Bad input: every case gives an error naming the item / line and field; nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lamra import InputError, Item
from lamra.cli import main
from lamra.qwen2vl.images import load_image


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory, image_files):
    from PIL import Image

    folder = tmp_path_factory.mktemp("bad")
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(Path(image_files[1]).read_bytes()[:300])
    not_image = folder / "notes.png"
    not_image.write_text("this is not a picture")
    bomb = folder / "bomb.png"  # 90 M pixels of 1-bit white: a few kB on disk
    Image.new("1", (10_000, 9_000), 1).save(bomb, optimize=True)
    return {"empty": empty, "truncated": truncated, "not_image": not_image, "bomb": bomb,
            "missing": folder / "missing.jpg"}


@pytest.mark.parametrize("kind, message", [("missing", "not found"), ("empty", "empty"),
                                           ("truncated", "truncated"), ("not_image", "not a readable image"),
                                           ("bomb", "decompression-bomb")])
def test_bad_image_errors(tiny_retriever, bad_images, kind, message):
    with pytest.raises(InputError, match=message) as info:
        tiny_retriever.encode(["fine", Item(text="x", images=[bad_images[kind]], id=f"item-{kind}")],
                              show_progress=False)
    assert info.value.item == f"item-{kind}" and info.value.field == "image"
    assert f"item-{kind}" in str(info.value)
    with pytest.raises(InputError, match=message):
        load_image(bad_images[kind])


def test_empty_item_is_refused(tiny_retriever):
    with pytest.raises(InputError, match="empty item") as info:
        tiny_retriever.encode(["fine", "   "], show_progress=False)
    assert info.value.item == "#1"


def write_jsonl(path: Path, lines: list) -> Path:
    with open(path, "wb") as out:
        for line in lines:
            out.write(line if isinstance(line, bytes) else (json.dumps(line) + "\n").encode())
    return path


@pytest.fixture
def mixed_jsonl(tmp_path, image_files, bad_images):
    import shutil

    shutil.copy(image_files[0], tmp_path / "ok.png")
    shutil.copy(bad_images["truncated"], tmp_path / "broken.jpg")
    return write_jsonl(tmp_path / "items.jsonl", [
        {"id": "a", "text": "a red circle"},
        {"id": "b", "image": "ok.png"},
        b"\xff\xfe not utf-8\n",
        b"{not json\n",
        {"id": "c", "text": 42},
        {"id": "d", "image": "broken.jpg"},
        {"id": "e"},
        {"id": "a", "text": "duplicate id"},
        {"id": "f", "text": "a caption", "image": "ok.png"},
        b"\n",
        ["not", "an", "object"],
    ])


def test_embed_stops_before_writing_on_bad_lines(tmp_path, tiny_checkpoint, mixed_jsonl, capsys):
    out = tmp_path / "out" / "emb.npy"
    code = main(["embed", str(mixed_jsonl), "--model", str(tiny_checkpoint), "--out", str(out), "-q",
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and not out.parent.exists()
    name = str(mixed_jsonl)
    for expected in [f"{name}:3: not valid UTF-8", f"{name}:4: not valid JSON",
                     f"{name}:5 (item 'c') field 'text'", f"{name}:6 (item 'd') field 'image'",
                     f"{name}:7 (item 'e') field 'text': empty item", f"{name}:8 (item 'a') field 'id': duplicate",
                     f"{name}:11: expected a JSON object"]:
        assert expected in err, expected


def test_embed_skip_bad_writes_good_items_and_report(tmp_path, tiny_checkpoint, tiny_retriever, mixed_jsonl, capsys):
    out = tmp_path / "emb.npy"
    code = main(["embed", str(mixed_jsonl), "--model", str(tiny_checkpoint), "--out", str(out), "-q",
                 "--skip-bad", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    vectors = np.load(out)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["ids"] == ["a", "b", "f"] and meta["count"] == 3 and vectors.shape == (3, 32)
    assert meta["model"] == tiny_retriever.fingerprint()["model"] and meta["prompt_format"]
    bad = [json.loads(line) for line in out.with_suffix(".bad.jsonl").read_text().splitlines()]
    assert [b["line"] for b in bad] == [3, 4, 5, 6, 7, 8, 11]
    assert bad[3]["field"] == "image" and bad[3]["id"] == "d"
    # The vectors are the library's vectors for those items.
    from lamra.data.jsonl import read_item_lines

    good = [entry.item for entry in read_item_lines(mixed_jsonl) if entry.error is None and entry.item.id in meta["ids"]]
    np.testing.assert_allclose(vectors, tiny_retriever.encode(good, show_progress=False), atol=1e-5)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


def test_prompt_command_prints_exact_text(capsys):
    assert main(["prompt", "--text", "a red car", "--instruction", "Find an image."]) == 0
    out = capsys.readouterr().out
    assert "<|im_start|>user\nFind an image. a red car.\nSummarize above sentence in one word: <|im_end|>" in out


def test_help_is_fast_and_lazy():
    import subprocess
    import sys

    code = "import sys, lamra.cli; sys.exit(int(any(m in sys.modules for m in ('torch', 'transformers', 'faiss'))))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, "lamra.cli imports heavy modules"


def test_embed_ids_empty_reserved_and_generated(tmp_path, tiny_checkpoint, capsys):
    items = write_jsonl(tmp_path / "items.jsonl", [
        {"id": 17, "text": "explicit integer id"},
        {"text": "no id"},
        {"id": "", "text": "empty id"},
        {"id": "   ", "text": "blank id"},
        {"id": "line:2", "text": "a generated id, given explicitly"},
        b'{"id": "x", "text": "tab\tinside"}\n',
    ])
    out = tmp_path / "emb.npy"
    code = main(["embed", str(items), "--model", str(tiny_checkpoint), "--out", str(out), "-q", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    name = str(items)
    assert f"{name}:3 field 'id': empty id" in err and f"{name}:4 field 'id': empty id" in err
    assert f"{name}:5 (item 'line:2') field 'id': ids of the form line:N are kept" in err
    assert f"{name}:6: not valid JSON: Invalid control character at column 25" in err and "at at" not in err
    assert main(["embed", str(items), "--model", str(tiny_checkpoint), "--out", str(out), "-q", "--device", "cpu",
                 "--skip-bad"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["ids"] == ["17", "line:2"]
