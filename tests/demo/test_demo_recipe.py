"""The default model's recipe on the real demo data (issue 10).

The same code path as ``make demo`` (``train_default_model``: ``lamra data demo`` from Debian's
packages, SmolLM2 token vectors on the real Qwen2 BPE, stage 1, stage 2, held-out evaluation
against the untrained starting weights). Skipped only off CI when the Debian packages, cairo or
the SmolLM2 file are missing; on CI a missing source fails.

A small version of the recipe (a 1-layer, width-64 model; 70-85 s on 2 CPU cores, data
included; slow since 2026-12-07, to keep the default suite under 5 minutes) checks that it
learns WordNet: the task a model this small can learn in 800 steps, because its words come with
SmolLM2's vectors (its image rows move above and below the untrained model's from seed to seed:
they need the real recipe's width and 700 steps). The other slow test trains the real recipe
and checks the margins the README reports.
"""

from __future__ import annotations

import copy
import json
import os

import pytest

from lamra.demo.default_model import DEFAULT_MODEL_FILE, RECIPE, recipe_fingerprint, train_default_model

SMALL = copy.deepcopy(RECIPE)
SMALL["data"].update(test_pool=100, test_queries=50, val_pool=20, val_queries=5, train_queries=200,
                     pairs_train=8000, pairs_test=100)
SMALL["model"].update(hidden_size=64, layers=1, vision_width=32)
SMALL["stage1"].update(global_batch_size=32, learning_rate=2e-3, epochs=3)  # 750 steps
SMALL["stage2"].update(global_batch_size=32, learning_rate=2e-3, epochs=2)  # 86 steps
# Held-out WordNet after SMALL (50 queries, pool 100), trained vs untrained, R@1 / R@5: 18 / 30 vs
# 0 / 10, 12 / 38 vs 0 / 8, 22 / 34 vs 2 / 10 with model seeds 0, 1, 2 (one torch thread); the test
# asks for margins of 8 (R@1) and 12 (R@5) points.
SMALL_WORDNET_MARGINS = {"R@1": 8.0, "R@5": 12.0}

# The real recipe's held-out margins (R@5, percentage points over the untrained starting
# weights) on the tasks it learns; make demo measured 60, 39, 18 and 23 (version 4,
# docs/demo-model.md).
LEARNED = {"fashionmnist_task0": 20.0, "fashionmnist_task3": 20.0, "fashionmnist_task4": 10.0,
           "wordnet_task1": 15.0}


def _sources_or_skip() -> None:
    from lamra.demo.data import DemoSources
    from lamra.demo.token_embeddings import find_gguf

    problems = [f"Debian package {name}" for name in DemoSources().missing()]
    try:
        import cairosvg  # noqa: F401
    except (ImportError, OSError) as exc:
        problems.append(f"cairo ({exc})")
    try:
        find_gguf()
    except Exception as exc:  # noqa: BLE001 - the message says what to install
        problems.append(str(exc))
    if problems:
        message = "; ".join(problems) + " (make install data-packages)"
        if os.environ.get("CI"):
            pytest.fail(f"the demo recipe's sources are missing on CI: {message}")
        pytest.skip(message)


@pytest.mark.slow  # 70-85 s on 2 cores: the default suite's largest test, moved out to keep it under 5 minutes
def test_a_small_recipe_learns_wordnet_with_frozen_smollm2_vectors(tmp_path):
    import torch
    from safetensors.torch import load_file

    from lamra.demo.tiny import qwen2_tokenizer
    from lamra.demo.token_embeddings import smollm2_embeddings

    _sources_or_skip()
    messages: list[str] = []
    out = train_default_model(tmp_path / "model", recipe=SMALL, announce=messages.append, show_progress=False,
                              work_dir=tmp_path / "work")
    record = json.loads((out / DEFAULT_MODEL_FILE).read_text())
    assert record["fingerprint"] == recipe_fingerprint(SMALL) != recipe_fingerprint(RECIPE)
    assert set(record["evaluation"]) == {"clipart_task0", "clipart_task3", "clipart_task4", "fashionmnist_task0",
                                         "fashionmnist_task3", "fashionmnist_task4", "wordnet_task1"}
    assert all(set(rows) == {"trained", "untrained", "chance"} for rows in record["evaluation"].values())
    wordnet = record["evaluation"]["wordnet_task1"]
    for metric, margin in SMALL_WORDNET_MARGINS.items():
        trained, untrained = wordnet["trained"][metric], wordnet["untrained"][metric]
        assert trained >= untrained + margin, (
            f"held-out WordNet {metric}: {trained:.1f} trained vs {untrained:.1f} untrained; the test asks for a "
            f"margin of {margin} points. Every task: {record['evaluation']}")

    def embeddings(folder):
        weights = {}
        for path in sorted(folder.glob("*.safetensors")):
            weights.update(load_file(path))
        return next(v for k, v in weights.items() if k.endswith("embed_tokens.weight")), weights

    tokenizer = qwen2_tokenizer()
    expected = smollm2_embeddings(tokenizer, len(tokenizer) + 1, SMALL["model"]["hidden_size"])
    base, _ = embeddings(tmp_path / "work" / "base")
    trained, trained_weights = embeddings(out)
    torch.testing.assert_close(base, expected)  # the SmolLM2 vectors went into the base model
    # frozen through both stages (the <emb> row the retriever adds is the only new one)
    torch.testing.assert_close(trained[: len(tokenizer)], expected[: len(tokenizer)])
    base_all = embeddings(tmp_path / "work" / "base")[1]
    moved = [k for k, v in trained_weights.items() if k in base_all and v.shape == base_all[k].shape
             and not torch.equal(v, base_all[k])]
    assert any(".layers." in k for k in moved), moved
    # the vision tower stays as it started (random and frozen, RECIPE["train_vision"] is False)
    assert not any("visual" in k for k in moved), moved


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_recipe_learns_the_demo_tasks(tmp_path):
    _sources_or_skip()
    out = train_default_model(tmp_path / "model", recipe=RECIPE, announce=lambda message: None, show_progress=False)
    evaluation = json.loads((out / DEFAULT_MODEL_FILE).read_text())["evaluation"]
    report = {task: (rows["trained"]["R@5"], rows["untrained"]["R@5"]) for task, rows in evaluation.items()}
    for task, margin in LEARNED.items():
        trained, untrained = report[task]
        assert trained >= untrained + margin, (
            f"{task}: held-out R@5 {trained:.1f} trained vs {untrained:.1f} untrained; the test asks for a "
            f"margin of {margin} points. All tasks (trained, untrained): {report}")
