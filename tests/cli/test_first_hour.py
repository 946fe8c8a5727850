"""The first hour of training on one's own data (issue 24), through the real command: data that
cannot fill a batch, the default models, finished and resumed runs, errors that point at their
source, images checked before a model loads, default instructions, file modes."""

from __future__ import annotations

import json
import os
import stat
import warnings

import numpy as np
import pytest
from PIL import Image

from lamra.cli import main

MSCOCO_TEXT_TO_IMAGE = "Find me an everyday image that matches the given caption."


@pytest.fixture()
def no_model_loads(monkeypatch):
    """Any model load fails the test: the checks must come first."""
    import lamra.cli.models as models
    import lamra.qwen2vl.backbone as backbone
    import lamra.reranker.model  # noqa: F401 - imported first: they bind the real load_backbone
    import lamra.retriever.model  # noqa: F401

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the data's checks")

    monkeypatch.setattr(backbone, "load_backbone", refuse)  # the training loop's
    monkeypatch.setattr(models, "load_retriever", refuse)  # the other commands'
    monkeypatch.setattr(models, "load_reranker", refuse)


def write_pairs(path, count: int):
    path.write_text("".join(json.dumps({"sent0": f"question {i}", "sent1": f"answer {i}"}) + "\n"
                            for i in range(count)))
    return path


@pytest.fixture(scope="module")
def small_mbeir(tmp_path_factory):
    """A synthetic M-BEIR with 64 training queries and a mined file (positives first)."""
    from lamra.data.synthetic import SynthConfig, synthesize

    folder = tmp_path_factory.mktemp("first-hour-mbeir")
    root = folder / "mb"
    synthesize(root, SynthConfig(test_queries=0, train_queries=4, pool_size=0, train_negatives=3))
    pool = [json.loads(line) for line in (root / "cand_pool/global/mbeir_union_train_cand_pool.jsonl")
            .read_text().splitlines()]
    lines = []
    for line in (root / "query/union_train/mbeir_union_up_train.jsonl").read_text().splitlines():
        query = json.loads(line)
        others = [c["did"] for c in pool if c["did"].split(":")[0] == query["qid"].split(":")[0]
                  and c["did"] not in query["pos_cand_list"]]
        top = query["pos_cand_list"] + others
        lines.append({"qid": query["qid"], "positives": query["pos_cand_list"], "negatives": others,
                      "top": [[did, 1.0 - n / 100] for n, did in enumerate(top)]})
    mined = folder / "mined.jsonl"
    mined.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root, mined


# -- 1. too little data for the global batch -----------------------------------------------------

def test_too_little_data_for_the_batch_is_one_line_before_the_model_loads(tmp_path, tiny_checkpoint, small_mbeir,
                                                                          no_model_loads, capsys):
    root, mined = small_mbeir
    runs = {
        "pairs (stage 1)": (["train", "retriever", "--config", "configs/stage1.yaml", "--data",
                             str(write_pairs(tmp_path / "pairs.jsonl", 80))], 80, 576),
        "M-BEIR (stage 2)": (["train", "retriever", "--config", "configs/stage2.yaml", "--data", str(root)], 64, 960),
        "reranker": (["train", "reranker", "--config", "configs/rerank.yaml", "--data", str(root), "--mined",
                      str(mined)], 64, 128),
    }
    for name, (argv, examples, batch) in runs.items():
        out = tmp_path / name.split()[0]
        code = main([*argv, "--model", str(tiny_checkpoint), "--output-dir", str(out), "--device", "cpu"])
        err = capsys.readouterr().err
        assert code == 2, (name, err)
        [line] = [line for line in err.splitlines() if line.startswith("error:")]
        assert f"the data has {examples} training examples, fewer than one global batch of {batch}" in line, name
        assert "--global-batch-size" in line and "Traceback" not in err, name


# -- 2, 3. mine and train without --model -------------------------------------------------------

def test_mine_and_train_without_model_use_the_default_model(tmp_path, cached_default, small_mbeir, monkeypatch,
                                                            capsys):
    import lamra.cli.models as models
    import lamra.demo.reranker as demo_reranker
    import lamra.reranker.trainer as reranker_trainer
    import lamra.retriever.trainer as retriever_trainer
    from lamra.errors import LamraError

    root, mined = small_mbeir
    used = {}

    def stop(name):
        def record(*args, **kwargs):
            used[name] = args[0] if args else kwargs.get("model")
            raise LamraError(f"stopped at {name}")
        return record

    monkeypatch.setattr(models, "load_retriever", stop("mine"))
    assert main(["mine", "--data", str(root), "--out", str(tmp_path / "mined.jsonl")]) == 2
    assert f"using lamra's default model {cached_default}" in capsys.readouterr().err
    assert used["mine"] == str(cached_default)

    monkeypatch.setattr(retriever_trainer, "train_retriever", lambda args, **_: stop("retriever")(args.model))
    argv = ["train", "retriever", "--data", str(write_pairs(tmp_path / "pairs.jsonl", 8)), "--global-batch-size", "4",
            "--output-dir", str(tmp_path / "run")]
    assert main(argv) == 2
    assert f"using lamra's default model {cached_default}" in capsys.readouterr().err
    assert used["retriever"] == str(cached_default)

    # The reranker's default base is an instruction-tuned language model (SmolLM2-135M-Instruct, built
    # once); here a stand-in folder, so that no GGUF file is needed.
    base = tmp_path / "smollm2-stand-in"
    monkeypatch.setattr(demo_reranker, "default_reranker_base", lambda announce: base)
    monkeypatch.setattr(reranker_trainer, "train_reranker", lambda args, **_: stop("reranker")(args.model))
    assert main(["train", "reranker", "--data", str(root), "--mined", str(mined),
                 "--output-dir", str(tmp_path / "rerank")]) == 2
    assert f"using lamra's default reranker base {base}" in capsys.readouterr().err
    assert used["reranker"] == str(base)


# -- 6, 8. a finished run is a no-op; a resumed run logs each step once; no library noise ---------

def test_a_finished_run_is_a_no_op_and_a_resumed_run_logs_each_step_once(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "run"
    argv = ["train", "retriever", "--model", str(tiny_checkpoint), "--data",
            str(write_pairs(tmp_path / "pairs.jsonl", 16)), "--output-dir", str(out), "--global-batch-size", "4",
            "--max-steps", "4", "--device", "cpu", "--set", "save_steps=2", "--set", "logging_steps=1",
            "--set", "lora_r=4", "--set", "lora_alpha=8"]

    def logged_steps():
        return [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]

    with warnings.catch_warnings(record=True) as caught:  # (pytest would hide them from stderr)
        warnings.simplefilter("always")
        assert main(argv) == 0
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]  # peft's, not the user's
    assert "Loading weights" not in capsys.readouterr().err
    assert logged_steps() == [1, 2, 3, 4]
    record = out / "adapter" / "lamra_training.json"
    written = record.stat().st_mtime_ns

    assert main(argv) == 0  # the same command again: nothing to do, and it says so
    assert "this run has finished already (4 steps)" in capsys.readouterr().out
    assert record.stat().st_mtime_ns == written and logged_steps() == [1, 2, 3, 4]

    # Killed after the step-2 checkpoint, before the adapter was written: the rerun resumes at step 3
    # and the log holds every step once.
    import shutil

    shutil.rmtree(out / "adapter")
    assert main(argv) == 0
    assert logged_steps() == [1, 2, 3, 4]
    assert record.is_file()


# -- 7. errors that point at their source --------------------------------------------------------

def test_errors_name_where_the_bad_value_came_from(tmp_path, tiny_checkpoint, capsys):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 8)
    base = ["train", "retriever", "--model", str(tiny_checkpoint), "--output-dir", str(tmp_path / "run")]

    assert main([*base, "--config", "configs/stage1.yaml", "--data", str(pairs), "--set", "learning_rate=abc"]) == 2
    err = capsys.readouterr().err
    assert "learning_rate must be a number, got 'abc'" in err and "--set" in err
    assert "configs/stage1.yaml" not in err  # the file is fine

    assert main([*base, "--data", str(pairs), "--set", "learning_rat=1"]) == 2
    assert "did you mean 'learning_rate'?" in capsys.readouterr().err
    config = tmp_path / "mine.yaml"
    config.write_text("learnig_rate: 0.1\n")
    assert main([*base, "--config", str(config), "--data", str(pairs)]) == 2
    err = capsys.readouterr().err
    assert f"{config}" in err and "did you mean 'learning_rate'?" in err

    broken = tmp_path / "broken.jsonl"
    broken.write_text(pairs.read_text() + '{"sent0": "a",\n')
    assert main([*base, "--data", str(broken), "--global-batch-size", "4"]) == 2
    err = capsys.readouterr().err
    assert f"{broken}:9: not valid JSON" in err and "at the end of the line" in err
    assert "line 2" not in err and "column 1" not in err


# -- 4. unreadable images are found before a model loads, and nothing is left behind -------------

@pytest.fixture()
def bad_pictures(tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    Image.new("RGB", (40, 30), "red").save(folder / "good.jpg")
    whole = (folder / "good.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "text.png").write_text("not a picture")
    lines = [{"id": "good", "image": "pictures/good.jpg"}, {"id": "cut", "image": "pictures/truncated.jpg"},
             {"id": "words", "image": "pictures/text.png"}, {"id": "gone", "image": "pictures/missing.jpg"}]
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder, items


def test_index_build_lists_every_bad_image_before_the_model_and_leaves_nothing(bad_pictures, tiny_checkpoint,
                                                                               tmp_path, no_model_loads, capsys):
    folder, items = bad_pictures
    out = tmp_path / "idx"
    assert main(["index", "build", str(items), "--model", str(tiny_checkpoint), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{items}:2 (item 'cut') field 'image': corrupt or truncated image" in err
    assert f"{items}:3 (item 'words') field 'image': not a readable image" in err
    assert f"{items}:4 (item 'gone') field 'image': image file not found" in err
    assert "skip_bad=True" not in err and not out.exists()

    assert main(["index", "build", str(folder), "--model", str(tiny_checkpoint), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "(item 'truncated.jpg') field 'image': corrupt or truncated image" in err
    assert "(item 'text.png') field 'image': not a readable image" in err
    assert not out.exists()

    # A truncated query image of a search, likewise before a model loads.
    assert main(["search", str(tmp_path / "no-index"), "--model", str(tiny_checkpoint),
                 "--image", str(folder / "truncated.jpg")]) == 2
    assert "query image (--image): corrupt or truncated image" in capsys.readouterr().err


# -- 5. default instructions ---------------------------------------------------------------------

def test_search_uses_the_closest_m_beir_instruction_by_default(image_files, tiny_checkpoint, tmp_path, capsys):
    items = tmp_path / "pictures.jsonl"
    items.write_text("".join(json.dumps({"id": path.stem, "image": str(path)}) + "\n" for path in image_files))
    index = tmp_path / "idx"
    assert main(["index", "build", str(items), "--model", str(tiny_checkpoint), "--out", str(index), "-q"]) == 0
    capsys.readouterr()

    def search(*extra):
        assert main(["search", str(index), "--text", "a red circle", "--json", *extra]) == 0
        captured = capsys.readouterr()
        payload = json.loads(captured.out)
        return payload, [hit["score"] for hit in payload["results"]], captured.err

    default, default_scores, err = search()
    assert f"instruction: '{MSCOCO_TEXT_TO_IMAGE}'" in err and "MSCOCO text -> image" in err
    assert default["query"]["instruction"] == MSCOCO_TEXT_TO_IMAGE
    _, given_scores, _ = search("--instruction", MSCOCO_TEXT_TO_IMAGE)
    assert default_scores == given_scores
    bare, bare_scores, err = search("--instruction", "none")
    assert "instruction: none" in err and bare["query"]["instruction"] is None
    assert not np.allclose(default_scores, bare_scores)

    # lamra embed --against image: text queries get the same instruction.
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"id": "q", "text": "a red circle"}) + "\n")
    vectors = {}
    for name, extra in (("against", ["--against", "image"]), ("given", ["--instruction", MSCOCO_TEXT_TO_IMAGE]),
                        ("none", [])):
        out = tmp_path / f"{name}.npy"
        assert main(["embed", str(queries), "--model", str(tiny_checkpoint), "--out", str(out), "-q", *extra]) == 0
        vectors[name] = np.load(out)
    assert "MSCOCO text -> image" in capsys.readouterr().err
    np.testing.assert_array_equal(vectors["against"], vectors["given"])
    assert not np.allclose(vectors["against"], vectors["none"])


# -- 9, 10. a tiny model for trying commands; files, empty input, the demo's table ---------------

def test_model_tiny_writes_a_loadable_untrained_checkpoint(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert main(["model", "tiny", str(out)]) == 0
    assert (out / "config.json").is_file() and (out / "UNTRAINED.txt").is_file()
    assert main(["model", "tiny", str(out)]) == 2  # never over an existing checkpoint
    assert "not an empty folder" in capsys.readouterr().err


def test_outputs_get_the_usual_file_mode_and_an_empty_file_is_an_error(tiny_checkpoint, tmp_path, capsys):
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"id": "a", "text": "a red car"}) + "\n")
    old = os.umask(0o022)
    try:
        assert main(["embed", str(items), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "e.npy"), "-q"]) == 0
    finally:
        os.umask(old)
    for name in ("e.npy", "e.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(["embed", str(empty), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "x.npy")]) == 2
    assert "no items" in capsys.readouterr().err and not (tmp_path / "x.npy").exists()


def test_demo_table_keeps_task_names_whole_at_80_columns():
    from rich.console import Console

    from lamra.demo.show import _print_evaluation

    tasks = ["fashionmnist_task0", "fashionmnist_task3", "fashionmnist_task4", "wordnet_task1"]
    console = Console(width=80, record=True)
    _print_evaluation(console, {task: {name: {"R@1": 45.0, "R@5": 80.0} for name in ("trained", "untrained", "chance")}
                                for task in tasks})
    text = console.export_text()
    assert all(task in text for task in tasks) and "…" not in text


def test_a_preset_that_changes_a_recorded_setting_says_so(tmp_path, tiny_checkpoint, no_model_loads, caplog):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model)
    (model / "lamra_settings.json").write_text(json.dumps({"max_pixels": 3136, "min_pixels": 3136}))
    argv = ["train", "retriever", "--config", "configs/stage2.yaml", "--model", str(model), "--data",
            str(write_pairs(tmp_path / "pairs.jsonl", 8)), "--set", "data_kind=pairs", "--global-batch-size", "4",
            "--output-dir", str(tmp_path / "run"), "--device", "cpu"]
    with caplog.at_level("WARNING"):
        with pytest.raises(AssertionError, match="a model was loaded"):
            main(argv)
    assert "the run sets max_pixels = 235200, but" in caplog.text and "max_pixels = 3136" in caplog.text
