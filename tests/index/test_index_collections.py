"""Collections: image folders, lamra jsonl files and M-BEIR candidate pools."""

from __future__ import annotations

import json
import shutil

import pytest

from lamra.data.collections import open_collection
from lamra.errors import InputError


def test_image_folder_is_read_recursively_with_stable_relative_ids(tmp_path, image_files):
    (tmp_path / "pics" / "deeper").mkdir(parents=True)
    (tmp_path / "pics" / ".hidden").mkdir()
    shutil.copy(image_files[0], tmp_path / "pics" / "b.png")
    shutil.copy(image_files[1], tmp_path / "pics" / "deeper" / "a.JPG")
    shutil.copy(image_files[2], tmp_path / "pics" / ".hidden" / "c.png")
    (tmp_path / "pics" / "notes.txt").write_text("not an image")
    collection = open_collection(tmp_path / "pics")
    assert collection.kind == "images"
    assert [r["id"] for r in collection] == ["b.png", "deeper/a.JPG"]
    assert collection.records[1]["image"] == str((tmp_path / "pics" / "deeper" / "a.JPG").resolve())
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        open_collection(tmp_path / "empty")


def test_jsonl_items_resolve_images_next_to_the_file(tmp_path, image_files):
    shutil.copy(image_files[0], tmp_path / "x.png")
    lines = [{"id": "a", "text": "hello"}, {"id": "b", "image": "x.png"}, {"text": "no id gets the line"}]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    collection = open_collection(tmp_path / "items.jsonl")
    assert collection.kind == "jsonl"
    assert [r["id"] for r in collection] == ["a", "b", "line:3"]
    assert collection.records[1]["images"] == [str((tmp_path / "x.png").resolve())]


def test_jsonl_bad_line_names_file_and_line_or_is_skipped(tmp_path):
    (tmp_path / "items.jsonl").write_text('{"id": "a", "text": "ok"}\n{"id": "b", "text": 5}\n{broken\n')
    with pytest.raises(InputError, match=r"items.jsonl:2.*'text'"):
        open_collection(tmp_path / "items.jsonl")
    collection = open_collection(tmp_path / "items.jsonl", skip_bad=True)
    assert [r["id"] for r in collection] == ["a"]
    assert [b["line"] for b in collection.bad] == [2, 3]


def write_pool(root, lines):
    pool = root / "cand_pool" / "local" / "mbeir_x_cand_pool.jsonl"
    pool.parent.mkdir(parents=True)
    pool.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return pool


def test_mbeir_pool_uses_dids_and_the_root_for_images(tmp_path, image_files):
    (tmp_path / "mbeir_images").mkdir()
    shutil.copy(image_files[0], tmp_path / "mbeir_images" / "1.png")
    pool = write_pool(tmp_path, [
        {"did": "9:1", "txt": "a caption", "img_path": "mbeir_images/1.png", "modality": "image,text",
         "src_content": None},
        {"did": "9:2", "txt": "only text", "img_path": None, "modality": "text", "src_content": '{"a": 1}'},
        {"did": "9:3", "txt": "caption not read", "img_path": "mbeir_images/1.png", "modality": "image",
         "src_content": None},
    ])
    collection = open_collection(pool)
    assert collection.kind == "mbeir"
    assert [r["id"] for r in collection] == ["9:1", "9:2", "9:3"]
    first, second, third = collection.records
    assert first["images"] == [str((tmp_path / "mbeir_images" / "1.png").resolve())] and first["text"] == "a caption"
    assert second["images"] == [] and second["src_content"] == '{"a": 1}' and second["modality"] == "text"
    assert third["text"] is None
    elsewhere = tmp_path / "pool.jsonl"
    shutil.copy(pool, elsewhere)
    with pytest.raises(InputError, match="--mbeir-root"):
        open_collection(elsewhere)
    assert len(open_collection(elsewhere, mbeir_root=tmp_path)) == 3


def test_mbeir_pool_bad_line_is_named(tmp_path):
    pool = write_pool(tmp_path, [{"did": "9:1", "txt": "x", "img_path": None, "modality": "text", "src_content": None},
                                 {"did": "9:1", "txt": "y", "img_path": None, "modality": "text", "src_content": None}])
    with pytest.raises(InputError, match=r"mbeir_x_cand_pool.jsonl:2.*duplicate"):
        open_collection(pool)
