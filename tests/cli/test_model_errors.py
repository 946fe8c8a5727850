"""A wrong --model / --lora: one or two lines that say what was looked for, exit 2, no traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lamra.cli import main

UNCACHED_HUB_ID = "lamra-tests/no-such-model"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, image_files):
    folder = tmp_path_factory.mktemp("cli-models")
    (folder / "items.jsonl").write_text(json.dumps({"id": "a", "text": "a red car"}) + "\n")
    (folder / "demo-out" / "index").mkdir(parents=True)  # a folder that is not a checkpoint
    shutil.copy(image_files[0], folder / "q.png")
    return folder


def commands(workdir: Path, model: str) -> dict[str, list[str]]:
    index = str(workdir / "no-index")
    return {
        "embed": ["embed", str(workdir / "items.jsonl"), "--out", str(workdir / "e.npy"), "--model", model],
        "index build": ["index", "build", str(workdir / "items.jsonl"), "--out", str(workdir / "idx"), "--model", model],
        "search": ["search", index, "--text", "a car", "--model", model],
        "serve": ["serve", index, "--model", model, "--port", "0"],
    }


@pytest.mark.parametrize("model, expected", [
    ("/nonexistent/model", "model '/nonexistent/model' not found: there is no such folder"),
    ("demo-out", "is not a checkpoint: it has no config.json"),
    (UNCACHED_HUB_ID, "not in the Hugging Face cache"),
])
def test_a_wrong_model_is_one_clear_line_for_every_command(workdir, model, expected, capsys, monkeypatch):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name, argv in commands(workdir, model).items():
        started = time.monotonic()
        assert main(argv) == 2, name
        took = time.monotonic() - started
        out, err = capsys.readouterr()
        assert err.startswith("error: ") and expected in err, (name, err)
        assert "Traceback" not in err and "Repo id must be" not in err and len(err.splitlines()) <= 2, (name, err)
        assert took < 5, f"{name} took {took:.1f} s"
    assert not (workdir / "e.npy").exists() and not (workdir / "idx").exists()


def test_a_hub_id_offline_says_what_to_do(workdir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(commands(workdir, UNCACHED_HUB_ID)["embed"]) == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE" in err and f"hf download {UNCACHED_HUB_ID}" in err


def test_a_bad_lora_and_a_folder_inside_are_named(workdir, tiny_checkpoint, capsys):
    argv = commands(workdir, str(tiny_checkpoint))["embed"]
    assert main([*argv, "--lora", str(workdir / "demo-out")]) == 2
    assert "LoRA adapter folder" in capsys.readouterr().err
    shutil.copytree(tiny_checkpoint, workdir / "demo-out" / "model", dirs_exist_ok=True)
    assert main(commands(workdir, str(workdir / "demo-out"))["embed"]) == 2
    assert str(workdir / "demo-out" / "model") in capsys.readouterr().err  # "... inside it is one"


def test_verbose_shows_the_traceback(workdir, capsys):
    assert main(["-v", *commands(workdir, "/nonexistent/model")["embed"]]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ModelSourceError" in err and "error: model '/nonexistent/model'" in err


def lamra_script() -> str:
    script = Path(sys.executable).with_name("lamra")
    return str(script) if script.exists() else shutil.which("lamra")


def test_the_console_script_fails_fast_offline_and_without_network(workdir):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    cases = [
        ({**env, "HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
        # Online, but the hub cannot be reached (a closed local port): asked once, no retries.
        ({**env, "HF_ENDPOINT": "http://127.0.0.1:9"}, "cannot be reached"),
    ]
    for environment, expected in cases:
        started = time.monotonic()
        result = subprocess.run([lamra_script(), *commands(workdir, UNCACHED_HUB_ID)["embed"]], capture_output=True,
                                text=True, env=environment, timeout=60)
        took = time.monotonic() - started
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert took < 15, f"took {took:.1f} s"  # (interpreter start-up included; it used to retry for 49 s)


def test_python_dash_m_lamra_runs_the_cli(workdir):
    result = subprocess.run([sys.executable, "-m", "lamra", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Usage: lamra" in result.stdout
    result = subprocess.run([sys.executable, "-m", "lamra", *commands(workdir, "/nonexistent/model")["embed"]],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "error: model '/nonexistent/model' not found" in result.stderr


@pytest.mark.parametrize("kind", ["retriever", "reranker"])
def test_an_argument_given_as_an_option_and_with_set_is_one_clear_line(tmp_path, kind, capsys):
    """`--global-batch-size 4 --set global_batch_size=8` once raised a TypeError traceback."""
    code = main(["train", kind, "--global-batch-size", "4", "--set", "global_batch_size=8",
                 "--output-dir", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2 and error.startswith("error:") and "Traceback" not in error
    assert "global_batch_size is given twice: --global-batch-size 4 and --set global_batch_size=8" in error
    assert not (tmp_path / "out").exists()
