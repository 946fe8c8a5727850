"""``lamra index build / add / info`` and ``lamra search``, run in-process through main()."""

from __future__ import annotations

import json
import shutil

import numpy as np

from lamra.cli import main
from lamra.index import Index


def test_build_info_search_add(tmp_path, tiny_checkpoint, tiny_retriever, image_files, capsys):
    pics = tmp_path / "pics"
    (pics / "sub").mkdir(parents=True)
    for n, image in enumerate(image_files):
        shutil.copy(image, pics / ("sub" if n % 2 else "") / image.name)
    out = tmp_path / "idx"
    model = ["--model", str(tiny_checkpoint), "--device", "cpu"]
    assert main(["index", "build", str(pics), "--out", str(out), "-q", *model]) == 0
    assert "indexed 4 items" in capsys.readouterr().out

    assert main(["index", "info", str(out), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["count"] == 4 and manifest["model"] == tiny_retriever.fingerprint()["model"]
    assert main(["index", "info", str(out), "--verify"]) == 0
    assert "checksums" in capsys.readouterr().out

    assert main(["search", str(out), "--image", str(pics / "img0.png"), "-k", "2", "--json", *model]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["rank"] for r in results] == [1, 2]
    assert results[0]["id"] == "img0.png" and results[0]["image"] == str((pics / "img0.png").resolve())
    query = tiny_retriever.encode([pics / "img0.png"], show_progress=False)
    assert [r["id"] for r in results] == Index.open(out).search(query, 2)[1][0]
    assert abs(results[0]["score"] - float(query[0] @ Index.open(out).vectors()[0])) < 1e-2

    items = tmp_path / "more.jsonl"
    items.write_text(json.dumps({"id": "note", "text": "a red car"}) + "\n")
    assert main(["index", "add", str(out), str(items), "-q", *model]) == 0
    assert "now holds 5" in capsys.readouterr().out
    assert main(["search", str(out), "--text", "a red car", "-k", "3", *model]) == 0
    table = capsys.readouterr().out
    assert "note" in table and "score" in table


def test_search_refuses_another_model_and_needs_a_query(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "idx"
    Index.from_vectors(np.eye(4, 32, dtype=np.float32), list("abcd"),
                       {"model": "other@1", "adapter": None, "prompt_format": "lamra-ret-1", "dim": 32}, path=out)
    assert main(["search", str(out), "--text", "x", "--model", str(tiny_checkpoint), "--device", "cpu"]) == 2
    assert "other@1" in capsys.readouterr().err
    assert main(["search", str(out), "--model", str(tiny_checkpoint)]) != 0


def test_build_reports_a_bad_collection_line(tmp_path, tiny_checkpoint, capsys):
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "image": "nope.png"}\n')
    code = main(["index", "build", str(items), "--out", str(tmp_path / "idx"), "--model", str(tiny_checkpoint),
                 "--device", "cpu", "-q"])
    assert code == 2
    error = capsys.readouterr().err
    assert "'b'" in error and "nope.png" in error
