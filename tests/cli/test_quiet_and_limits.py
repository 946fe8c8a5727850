"""What a command prints: no library noise without -v, hints that name real options, one pixel limit."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from PIL import Image

from lamra.cli import main

DEFAULT_LIMIT = "89,478,485"  # settings.DEFAULT_IMAGE_PIXEL_LIMIT, written out


@pytest.fixture(scope="module")
def palette_items(tmp_path_factory):
    folder = tmp_path_factory.mktemp("palette")
    icon = Image.new("P", (32, 32), 0)
    icon.putpalette([0, 0, 0, 250, 200, 0] + [0] * 762)
    icon.paste(1, (8, 8, 24, 24))
    icon.save(folder / "icon.png", transparency=bytes([0, 255]))
    (folder / "items.jsonl").write_text(json.dumps({"id": "icon", "image": "icon.png"}) + "\n"
                                        + json.dumps({"id": "t", "text": "a yellow square"}) + "\n")
    return folder / "items.jsonl"


def run_quietly(argv):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(argv)
    return code, [str(w.message) for w in caught]


def test_no_loading_bar_and_no_palette_warning_without_verbose(palette_items, tiny_checkpoint, tmp_path, capsys):
    argv = ["embed", str(palette_items), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "e.npy"), "-q",
            "--device", "cpu"]
    code, caught = run_quietly(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Loading weights" not in err and "Loading weights" not in out
    assert not [message for message in caught if "Palette images" in message]
    assert "wrote 2 vectors" in out
    # The untrained tiny model is named as such (the same warning as the web page's).
    assert "warning:" in err and "UNTRAINED" in err
    # -v brings the libraries' progress bars back.
    code, _ = run_quietly(["-v", *argv])
    assert code == 0 and "Loading weights" in capsys.readouterr().err


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    """Two 1-bit PNGs (a few kB each): 90 M pixels, and 182 M pixels (over twice PIL's default guard)."""
    folder = tmp_path_factory.mktemp("bombs")
    Image.new("1", (10_000, 9_000), 1).save(folder / "big.png", optimize=True)
    Image.new("1", (14_000, 13_000), 1).save(folder / "huge.png", optimize=True)
    lines = [{"id": "big", "image": "big.png"}, {"id": "huge", "image": "huge.png"}]
    (folder / "items.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def test_one_pixel_limit_and_a_hint_that_names_the_option(bombs, tiny_checkpoint, tmp_path, capsys):
    code = main(["embed", str(bombs / "items.jsonl"), "--model", str(tiny_checkpoint), "--out",
                 str(tmp_path / "e.npy"), "-q", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    big, huge = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "10000x9000 = 90,000,000 pixels" in big and "182,000,000 pixels" in huge
    for line in (big, huge):
        assert f"over the limit of {DEFAULT_LIMIT}" in line and "--image-pixel-limit" in line
    assert "178956970" not in err and "178,956,970" not in err  # PIL's own number never shows


def test_image_pixel_limit_option_changes_the_limit(image_files, tiny_checkpoint, tmp_path, capsys):
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"id": "small", "image": str(image_files[0])}) + "\n")  # 64x48 = 3072 pixels
    argv = ["embed", str(items), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "e.npy"), "-q",
            "--device", "cpu"]
    assert main([*argv, "--image-pixel-limit", "3000"]) == 2
    assert "64x48 = 3,072 pixels, over the limit of 3,000" in capsys.readouterr().err
    assert main([*argv, "--image-pixel-limit", "3072"]) == 0


def test_bad_model_settings_are_usage_errors(image_files, tiny_checkpoint, tmp_path, capsys):
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"id": "t", "text": "x"}) + "\n")
    argv = ["embed", str(items), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "e.npy")]
    assert main([*argv, "--positions", "3d"]) == 2
    assert "--positions" in capsys.readouterr().err
    assert main([*argv, "--min-pixels", "100000", "--max-pixels", "50000"]) == 2
    assert "--min-pixels" in capsys.readouterr().err


def test_settings_reach_the_retriever(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from lamra.retriever.model import Retriever

    seen = []
    original = Retriever.from_pretrained.__func__
    monkeypatch.setattr(Retriever, "from_pretrained", classmethod(
        lambda cls, model, **options: seen.append(options["settings"]) or original(cls, model, **options)))
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"id": "t", "text": "a red car"}) + "\n")
    out = tmp_path / "e.npy"
    assert main(["embed", str(items), "--model", str(tiny_checkpoint), "--out", str(out), "-q", "--device", "cpu",
                 "--max-pixels", "50176", "--min-pixels", "3136", "--positions", "mrope", "--max-tokens", "256",
                 "--image-pixel-limit", "1000000"]) == 0
    (settings,) = seen
    assert (settings.max_pixels, settings.min_pixels, settings.positions, settings.max_tokens,
            settings.image_pixel_limit) == (50176, 3136, "mrope", 256, 1_000_000)
    stored = json.loads(out.with_suffix(".json").read_text())
    assert "mrope" in json.dumps(stored)  # the settings that change vectors are recorded with them


def test_a_bad_query_image_is_called_the_query_image(tmp_path, tiny_checkpoint, capsys):
    code = main(["search", str(tmp_path / "idx"), "--image", str(tmp_path / "missing.png"), "--model",
                 str(tiny_checkpoint)])
    err = capsys.readouterr().err
    assert code == 2 and "error: query image (--image): image file not found" in err
    assert "#0" not in err and "item" not in err
    Path(tmp_path / "fake.png").write_text("not a picture")
    assert main(["search", str(tmp_path / "idx"), "--image", str(tmp_path / "fake.png"), "--model",
                 str(tiny_checkpoint)]) == 2
    assert "query image (--image): not a readable image" in capsys.readouterr().err
