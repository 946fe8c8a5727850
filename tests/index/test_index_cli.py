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


def write_lines(path, lines):
    with open(path, "wb") as out:
        for line in lines:
            out.write(line if isinstance(line, bytes) else (json.dumps(line) + "\n").encode())
    return path


def test_ivf_search_returns_min_k_count_results(tmp_path, tiny_checkpoint, capsys):
    items = write_lines(tmp_path / "items.jsonl", [{"id": f"t{n}", "text": f"item number {n} of the list"}
                                                    for n in range(120)])
    model = ["--model", str(tiny_checkpoint), "--device", "cpu"]
    out = tmp_path / "idx-ivf"
    # 12 lists, 1 visited per query: about 10 vectors are seen, far fewer than asked.
    assert main(["index", "build", str(items), "--out", str(out), "--backend", "ivf", "--nlist", "12", "--nprobe", "1",
                 "-q", *model]) == 0
    capsys.readouterr()
    for k, expected in ((100000, 120), (50, 50)):
        assert main(["search", str(out), "--text", "item number 7", "-k", str(k), "--json", *model]) == 0
        results = json.loads(capsys.readouterr().out)["results"]
        assert len(results) == expected and len({r["id"] for r in results}) == expected
        scores = [r["score"] for r in results]
        assert scores == sorted(scores, reverse=True)


def test_build_lists_every_bad_line_and_indexes_nothing(tmp_path, tiny_checkpoint, image_files, capsys):
    shutil.copy(image_files[0], tmp_path / "ok.png")
    items = write_lines(tmp_path / "items.jsonl", [
        {"id": "a", "text": "fine"},
        {"id": "b", "image": "nope.png"},
        b"{not json\n",
        {"id": "", "text": "an empty id"},
        {"id": "c", "text": 5},
        b'{"id": "d", "text": "a\x01b"}\n',
        {"id": "e", "image": "ok.png"},
    ])
    out = tmp_path / "idx"
    code = main(["index", "build", str(items), "--out", str(out), "--model", str(tiny_checkpoint), "--device", "cpu",
                 "-q"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    name = str(items)
    for expected in (f"{name}:2 (item 'b') field 'image': image file not found", f"{name}:3: not valid JSON",
                     f"{name}:4 field 'id': empty id", f"{name}:5 (item 'c') field 'text'",
                     f"{name}:6: not valid JSON: Invalid control character at column"):
        assert expected in err, expected
    assert "at at" not in err
    assert "5 bad line(s); nothing indexed. Fix them or pass --skip-bad." in err
    assert main(["index", "build", str(items), "--out", str(out), "--model", str(tiny_checkpoint), "--device", "cpu",
                 "-q", "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert "indexed 2 items" in captured.out and "5 bad item(s) skipped" in captured.out
    assert captured.err.count("skipped: ") == 5
    assert main(["index", "info", str(out), "--json"]) == 0
    assert [entry["line"] for entry in json.loads(capsys.readouterr().out)["skipped"]] == [2, 3, 4, 5, 6]
    assert main(["index", "info", str(out), "--verify"]) == 0 and "checksums" in capsys.readouterr().out


def test_items_without_an_id_get_line_ids_that_cannot_collide(tmp_path, tiny_checkpoint, capsys):
    items = write_lines(tmp_path / "items.jsonl", [{"id": 2, "text": "explicit id 2"}, {"text": "no id, line 2"},
                                                   {"text": "no id, line 3"}])
    out = tmp_path / "idx"
    model = ["--model", str(tiny_checkpoint), "--device", "cpu"]
    assert main(["index", "build", str(items), "--out", str(out), "-q", *model]) == 0
    assert Index.open(out).ids == ["2", "line:2", "line:3"]
    capsys.readouterr()
    clash = write_lines(tmp_path / "clash.jsonl", [{"id": "line:3", "text": "taken"}])
    assert main(["index", "build", str(clash), "--out", str(tmp_path / "idx2"), "-q", *model]) == 2
    assert "ids of the form line:N are kept for items given without an id" in capsys.readouterr().err


def test_a_resumed_build_says_so_without_verbose(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    import lamra.index.build as build_module

    items = write_lines(tmp_path / "items.jsonl", [{"id": f"t{n}", "text": f"text {n}"} for n in range(5)])
    out = tmp_path / "idx"
    argv = ["index", "build", str(items), "--out", str(out), "--shard-size", "2", "-q", "--model",
            str(tiny_checkpoint), "--device", "cpu"]
    original, calls = build_module._encode_entries, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while encoding the second shard
        return original(*args, **kwargs)

    monkeypatch.setattr(build_module, "_encode_entries", interrupted)
    assert main(argv) == 130  # (Ctrl-C: "Aborted!", the shell's status for SIGINT)
    assert (out / ".work" / "shards" / "00000.npy").is_file() and not (out / "manifest.json").exists()
    capsys.readouterr()
    monkeypatch.setattr(build_module, "_encode_entries", original)
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "resuming: 2 of 5 items already indexed" in captured.err
    assert "indexed 5 items" in captured.out
