"""The default model's recipe on the real demo data (issue 10).

The same code path as ``make demo`` (``train_default_model``: ``lamra data demo`` from Debian's
packages, SmolLM2 token vectors on the real Qwen2 BPE, stage 1, stage 2, held-out evaluation
against the untrained starting weights). Skipped only off CI when the Debian packages, cairo or
the SmolLM2 file are missing; on CI a missing source fails.

A version small enough for the default suite runs the whole recipe in seconds but does not
learn: a from-scratch transformer of this kind sits on a loss plateau for its first ~150 steps
at width 128 (docs/demo-model.md), and every shrunk recipe we tried (width 64-128, 60-440
steps, batch 16-64, LR 1e-3 to 3e-3) stayed at the untrained level on held-out queries. So the
default suite checks the recipe's plumbing, and the learning test (slow, about 7 minutes)
trains the real recipe and checks the margins the README reports.
"""

from __future__ import annotations

import copy
import json
import os

import pytest

from lamra.default_model import DEFAULT_MODEL_FILE, RECIPE, recipe_fingerprint, train_default_model

TINY = copy.deepcopy(RECIPE)
TINY["data"].update(image_size=56, test_pool=12, test_queries=4, val_pool=6, val_queries=2, train_queries=16,
                    pairs_train=32, pairs_test=8)
TINY["model"].update(hidden_size=32, layers=1, vision_width=32)
TINY["stage1"].update(global_batch_size=8, epochs=1)
TINY["stage2"].update(global_batch_size=8, epochs=1)

# The real recipe's held-out margins (R@5, percentage points over the untrained starting
# weights) on the tasks it learns; make demo measured 45, 32, 23 and 29 (docs/demo-model.md).
LEARNED = {"fashionmnist_task0": 20.0, "fashionmnist_task3": 20.0, "fashionmnist_task4": 10.0,
           "wordnet_task1": 15.0}


def _sources_or_skip() -> None:
    from lamra.data.demo_data import DemoSources
    from lamra.token_embeddings import find_gguf

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


def test_the_recipe_runs_end_to_end_with_frozen_smollm2_vectors(tmp_path):
    import torch
    from safetensors.torch import load_file

    from lamra.tiny import qwen2_tokenizer
    from lamra.token_embeddings import smollm2_embeddings

    _sources_or_skip()
    messages: list[str] = []
    out = train_default_model(tmp_path / "model", recipe=TINY, announce=messages.append, show_progress=False,
                              work_dir=tmp_path / "work")
    record = json.loads((out / DEFAULT_MODEL_FILE).read_text())
    assert record["fingerprint"] == recipe_fingerprint(TINY) != recipe_fingerprint(RECIPE)
    assert set(record["evaluation"]) == {"clipart_task0", "clipart_task3", "clipart_task4", "fashionmnist_task0",
                                         "fashionmnist_task3", "fashionmnist_task4", "wordnet_task1"}
    assert all(set(rows) == {"trained", "untrained", "chance"} for rows in record["evaluation"].values())

    def embeddings(folder):
        weights = {}
        for path in sorted(folder.glob("*.safetensors")):
            weights.update(load_file(path))
        return next(v for k, v in weights.items() if k.endswith("embed_tokens.weight")), weights

    tokenizer = qwen2_tokenizer()
    expected = smollm2_embeddings(tokenizer, len(tokenizer) + 1, TINY["model"]["hidden_size"])
    base, _ = embeddings(tmp_path / "work" / "base")
    trained, trained_weights = embeddings(out)
    torch.testing.assert_close(base, expected)  # the SmolLM2 vectors went into the base model
    # frozen through both stages (the <emb> row the retriever adds is the only new one)
    torch.testing.assert_close(trained[: len(tokenizer)], expected[: len(tokenizer)])
    base_all = embeddings(tmp_path / "work" / "base")[1]
    moved = [k for k, v in trained_weights.items() if k in base_all and v.shape == base_all[k].shape
             and not torch.equal(v, base_all[k])]
    assert any(".layers." in k for k in moved) and any("visual" in k for k in moved), moved


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
