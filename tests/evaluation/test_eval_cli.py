"""``lamra eval mbeir`` through the real CLI: hints that name real options, the output folder said."""

from __future__ import annotations

import json

import pytest
from terminal_text import plain

from lamra.cli import main
from lamra.data.mbeir import MBEIRLayout, read_queries
from lamra.data.synthetic import SynthConfig, synthesize


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "mini"
    synthesize(path, SynthConfig(seed=5, test_queries=2, train_queries=0, pool_size=4, image_size=32))
    return path


def test_neither_model_nor_baseline_uses_the_default_model(root, tmp_path, cached_default, capsys):
    assert main(["eval", "mbeir", str(root), "-t", "cirr_task7", "--out", str(tmp_path / "e"), "-q"]) == 0
    error = plain(capsys.readouterr().err)
    assert f"using lamra's default model {cached_default}" in error
    assert "not both" not in error and "is needed" not in error
    assert main(["eval", "mbeir", str(root), "--model", "x", "--baseline", "random"]) == 2
    assert "not both" in plain(capsys.readouterr().err)


def test_the_output_folder_is_said_and_defaults_to_lamra_eval(root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "mbeir", str(root), "--baseline", "oracle", "-t", "cirr_task7"]) == 0
    captured = capsys.readouterr()
    folder = tmp_path / "lamra-eval" / "mbeir-local"
    assert (folder / "results.json").is_file()
    assert f"output folder: {folder}" in plain(captured.err)  # said before the work starts
    assert str(folder) in plain(captured.out)  # and with the results
    out = tmp_path / "elsewhere"
    assert main(["eval", "mbeir", str(root), "--baseline", "oracle", "-t", "cirr_task7", "--out", str(out),
                 "--pool", "global"]) == 0
    captured = capsys.readouterr()
    assert str(out) in plain(captured.out) and (out / "results.json").is_file()
    assert "pool: global-union" in plain(captured.out)
    assert json.loads((out / "results.json").read_text())["pool"] == "global-union"


def test_a_bad_pool_or_instruction_choice_is_a_usage_error(root, capsys):
    assert main(["eval", "mbeir", str(root), "--baseline", "random", "--pool", "world"]) == 2
    assert "unknown pool 'world'" in plain(capsys.readouterr().err)
    assert main(["eval", "mbeir", str(root), "--baseline", "random", "--instructions", "best"]) == 2
    assert "'first' or 'random'" in plain(capsys.readouterr().err)


def test_a_missing_image_hint_names_skip_bad_which_eval_mbeir_takes(root, tmp_path, tiny_checkpoint, capsys):
    data = tmp_path / "broken"
    synthesize(data, SynthConfig(seed=5, test_queries=2, train_queries=0, pool_size=4, image_size=32))
    query = read_queries(MBEIRLayout(data).query_file("nights_task4"))[0]
    (data / query.image).unlink()  # a missing query image
    args = ["eval", "mbeir", str(data), "--model", str(tiny_checkpoint), "-t", "nights_task4", "--device", "cpu",
            "-q", "--out", str(tmp_path / "out")]
    assert main(args) == 2
    error = plain(capsys.readouterr().err)
    assert "pass --skip-bad" in error and query.qid in error
    assert main(args + ["--skip-bad"]) == 0
    printed = plain(capsys.readouterr().out)
    assert "left out 1 bad queries (scored as misses) and 0 bad candidates" in printed
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert report["tasks"][0]["skipped_queries"] == 1
    assert report["skipped"]["queries"]["nights_task4"][0]["id"] == query.qid


def test_zeroshot_names_the_bad_candidate_line_and_no_option_it_lacks(tmp_path, tiny_checkpoint, capsys):
    from PIL import Image

    data = tmp_path / "zs"
    data.mkdir()
    Image.new("RGB", (32, 32), "red").save(data / "a.png")
    (data / "b.png").write_bytes(b"not a png")
    (data / "queries.jsonl").write_text(json.dumps({"id": "q1", "text": "red", "instruction": "Find."}) + "\n")
    (data / "candidates.jsonl").write_text(json.dumps({"id": "c1", "image": "a.png"}) + "\n"
                                           + json.dumps({"id": "c2", "image": "b.png"}) + "\n")
    (data / "qrels.txt").write_text("q1 0 c1 1\n")
    args = ["eval", "zeroshot", str(data), "--model", str(tiny_checkpoint), "--device", "cpu", "-q",
            "--out", str(tmp_path / "out")]
    assert main(args) == 2
    error = plain(capsys.readouterr().err)
    assert "candidates.jsonl:2 (item 'c2') field 'image'" in error and "--skip-bad" not in error
