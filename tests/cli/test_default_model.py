"""Commands without --model: lamra's default model (from the cache), or the model an index was built with."""

from __future__ import annotations

import json
import shutil

import pytest

from lamra.cli import main


def test_commands_without_model_use_the_default_and_the_index_model(tmp_path, cached_default, capsys,
                                                                     tiny_checkpoint):
    from lamra.retriever.model import Retriever

    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n"
                             for i, t in enumerate(["a red car", "a blue boat", "a green tree"])))
    assert main(["embed", str(items), "--out", str(tmp_path / "e.npy"), "-q"]) == 0
    err = capsys.readouterr().err
    assert f"using lamra's default model {cached_default}" in err
    stored = json.loads((tmp_path / "e.json").read_text())
    assert stored["model"] == Retriever.from_pretrained(cached_default, device="cpu").fingerprint()["model"]

    index = tmp_path / "idx"
    assert main(["index", "build", str(items), "--out", str(index), "-q"]) == 0
    assert f"using lamra's default model {cached_default}" in capsys.readouterr().err
    # An index built with another model: search needs no --model, the index says which one built it.
    other = tmp_path / "other-idx"
    assert main(["index", "build", str(items), "--out", str(other), "--model", str(tiny_checkpoint), "-q"]) == 0
    capsys.readouterr()
    assert main(["search", str(other), "--text", "a car", "--json"]) == 0
    captured = capsys.readouterr()
    assert f"using the model {other} was built with: {tiny_checkpoint.resolve()}" in captured.err
    assert len(json.loads(captured.out)["results"]) == 3


def test_a_cache_from_another_recipe_is_not_reused(cached_default, monkeypatch):
    from lamra.demo import default_model

    assert default_model.cached_default_model() == cached_default
    changed = {**default_model.RECIPE, "stage2": {**default_model.RECIPE["stage2"], "epochs": 3}}
    assert default_model.recipe_fingerprint(changed) != default_model.recipe_fingerprint()
    assert default_model.cached_default_model(changed) is None
    assert default_model.default_model_dir(changed) != cached_default
