"""LamRA-Ret's training knobs away from their defaults: a bug that ignores a knob is invisible
when every test runs it at the default (temperature 0.05, LoRA dropout 0, alpha = 2r, the
instruction row of the query's own modalities)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lamra import Item, Retriever
from lamra.retriever.data import Example


def lora_retriever(checkpoint, *, dropout=0.0, seed=0):
    """The tiny model with a LoRA whose B matrices are non-zero (as after some training)."""
    retriever = Retriever.from_pretrained(checkpoint, device="cpu")
    torch.manual_seed(seed)
    retriever.backbone.add_lora(r=4, alpha=8, dropout=dropout)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in retriever.backbone.model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    retriever.backbone.train()
    return retriever


TEXT_PAIRS = [("a red circle", "the circle is red"), ("a green square", "the square is green"),
              ("a blue star", "the star is blue"), ("a black ring", "the ring is black"),
              ("a white cross", "the cross is white")]


def write_pairs(path: Path, *, hard_negatives: bool = False) -> Path:
    rows = [{"sent0": q, "sent1": p, **({"hard_neg": f"not {p}"} if hard_negatives else {})} for q, p in TEXT_PAIRS]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def grads_of(retriever):
    return {n: p.grad.clone() for n, p in retriever.backbone.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_the_step_uses_the_configured_temperature(tmp_path, tiny_checkpoint, chunk_size):
    """A step built from args with temperature 0.2 gives info_nce(..., temperature=0.2) on the
    same embeddings (plain and gradient-cache steps, hard negatives and chunking from the args)."""
    from accelerate import Accelerator

    from lamra.retriever.loss import info_nce
    from lamra.retriever.trainer import retriever_recipe
    from lamra.training.args import load_args

    pairs = write_pairs(tmp_path / "p.jsonl", hard_negatives=True)
    args = load_args(None, model=str(tiny_checkpoint), data=str(pairs), output_dir=str(tmp_path / "out"),
                     temperature=0.2, chunk_size=chunk_size, use_hard_negatives=True)
    recipe = retriever_recipe(args)
    retriever = lora_retriever(tiny_checkpoint)
    model = recipe.wrap(retriever.backbone)
    batch = recipe.collator(retriever.processor)([recipe.dataset.example(i) for i in range(len(TEXT_PAIRS))])
    assert "hard_negative" in batch  # use_hard_negatives reached the dataset and the collator
    assert [len(batch[side]) for side in ("query", "positive")] == ([3, 3] if chunk_size else [1, 1])
    loss = float(recipe.step(Accelerator(cpu=True), model, batch))
    with torch.no_grad():
        sides = [torch.cat([model(chunk)[0] for chunk in batch[side]]) for side in ("query", "positive",
                                                                                     "hard_negative")]
    assert loss == pytest.approx(float(info_nce(*sides, temperature=0.2)), abs=1e-5)
    assert loss != pytest.approx(float(info_nce(*sides, temperature=0.05)), abs=1e-3)


@pytest.mark.parametrize("text_rule, shown", [(None, "user\na red circle\n"), ("lamra", "user\nA red circle.\n")])
def test_the_text_rule_reaches_the_collator(tmp_path, tiny_retriever, text_rule, shown):
    """Pairs default to "raw" (stage 1 fed sentences as they are); "lamra" formats them."""
    from lamra.retriever.trainer import retriever_recipe
    from lamra.training.args import load_args

    args = load_args(None, model="unused", data=str(write_pairs(tmp_path / "p.jsonl")), text_rule=text_rule)
    recipe = retriever_recipe(args)
    batch = recipe.collator(tiny_retriever.processor)([recipe.dataset.example(0)])
    assert shown in tiny_retriever.processor.tokenizer.decode(batch["query"][0]["input_ids"][0])


def test_gradient_cache_replays_the_dropout_masks(tiny_checkpoint):
    """With LoRA dropout 0.3 (the presets train at 0.05; at 0 replay is a no-op), gradient caching
    gives the plain step's loss and gradients: the second forward of a chunk must draw the masks
    the first one drew. One chunk per side, so both paths draw the same masks in the same order."""
    from accelerate import Accelerator

    from lamra.retriever.collator import RetrievalCollator
    from lamra.retriever.steps import EmbeddingModel, gradient_cache_step, plain_step

    accelerator = Accelerator(cpu=True)
    examples = [Example(Item(text=q), Item(text=p)) for q, p in TEXT_PAIRS]
    results = {}
    for name, step, seed in (("plain", plain_step, 7), ("cached", gradient_cache_step, 7),
                             ("plain, other masks", plain_step, 8)):
        retriever = lora_retriever(tiny_checkpoint, dropout=0.3)
        batch = RetrievalCollator(retriever.processor, chunk_size=len(examples))(examples)
        torch.manual_seed(seed)
        loss = step(accelerator, EmbeddingModel(retriever), batch, temperature=0.05)
        results[name] = (float(loss), grads_of(retriever))
    (loss, grads), (cached_loss, cached_grads) = results["plain"], results["cached"]
    assert results["plain, other masks"][0] != pytest.approx(loss, abs=1e-4)  # dropout is at work
    assert cached_loss == pytest.approx(loss, abs=1e-5)
    for name, gradient in grads.items():
        torch.testing.assert_close(cached_grads[name], gradient, atol=1e-5, rtol=1e-4, msg=name)


def test_add_lora_scales_every_layer_by_alpha_over_r(tiny_checkpoint):
    from peft.tuners.lora import LoraLayer

    from lamra.qwen2vl.backbone import load_backbone

    backbone = load_backbone(tiny_checkpoint, device="cpu")
    backbone.add_lora(r=4, alpha=8, dropout=0.3)
    layers = [module for module in backbone.model.modules() if isinstance(module, LoraLayer)]
    assert layers
    for layer in layers:
        assert layer.r["default"] == 4 and layer.scaling["default"] == 2.0
        assert layer.lora_dropout["default"].p == 0.3


# -- the instruction a stage-2 example draws ------------------------------------------------------

@pytest.fixture(scope="module")
def mbeir_root(tmp_path_factory):
    from lamra.data.synthetic import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("knobs") / "mb"
    synthesize(root, SynthConfig(test_queries=0, train_queries=3, pool_size=0, train_negatives=2, image_size=16))
    return root


def modality_of(root: Path) -> dict[str, str]:
    lines = (root / "cand_pool/global/mbeir_union_train_cand_pool.jsonl").read_text().splitlines()
    return {record["did"]: record["modality"] for record in map(json.loads, lines)}


def test_an_example_draws_its_instruction_from_the_row_of_its_query_and_positive_modalities(mbeir_root):
    """Over several epochs and seeds, each instruction comes from the row (dataset, query modality,
    drawn positive's modality); for text -> image queries that row differs from (dataset, image,
    text), which a lookup with the modalities swapped would read without failing."""
    from lamra.data.mbeir import read_queries
    from lamra.data.mbeir_instructions import load_instructions
    from lamra.retriever.data import MBEIRTrainDataset

    table = load_instructions(mbeir_root).prompts
    modality = modality_of(mbeir_root)
    queries = read_queries(mbeir_root / "query/union_train/mbeir_union_up_train.jsonl")
    swappable = 0
    for seed in (0, 1):
        dataset = MBEIRTrainDataset(mbeir_root, seed=seed, use_hard_negatives=True)
        for epoch in range(3):
            for index, query in enumerate(queries):
                drawn = dataset.example(index, epoch)
                key = (query.dataset_id, query.modality, modality[drawn.positive.id])
                assert drawn.instruction in table[key], (query.qid, key, drawn.instruction)
                swapped = (key[0], key[2], key[1])
                if swapped in table and swapped != key:
                    assert not set(table[swapped]) & set(table[key])
                    swappable += 1
                assert drawn.hard_negative is not None and drawn.hard_negative.id in query.negatives
    assert swappable >= 2 * 3 * 3 * 3  # VisualNews, Fashion200K, MSCOCO text <-> image, 3 queries each


def test_a_short_run_follows_the_schedule_optimizer_and_bookkeeping_knobs(tmp_path, tiny_checkpoint, monkeypatch):
    """Four steps with every loop knob away from its default: the logged learning rates follow the
    cosine schedule of learning_rate and warmup_ratio, epochs sets the step count, the optimizer
    gets weight_decay, clipping max_grad_norm, the log every logging_steps, one checkpoint kept,
    the adapter the LoRA's r, alpha and dropout and the tower (train_vision)."""
    import math

    import accelerate

    from lamra.retriever.trainer import train_retriever
    from lamra.training.args import load_args

    seen: dict = {"max_norm": []}

    class AdamW(torch.optim.AdamW):
        def __init__(self, params, **options):
            seen["weight_decay"] = options.get("weight_decay")
            super().__init__(params, **options)

    clip = accelerate.Accelerator.clip_grad_norm_

    def clipping(self, parameters, max_norm, *more, **options):
        seen["max_norm"].append(max_norm)
        return clip(self, parameters, max_norm, *more, **options)

    monkeypatch.setattr(torch.optim, "AdamW", AdamW)
    monkeypatch.setattr(accelerate.Accelerator, "clip_grad_norm_", clipping)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"sent0": f"pair {n} query", "sent1": f"pair {n} answer"}) + "\n"
                             for n in range(16)))
    args = load_args(None, model=str(tiny_checkpoint), data=str(pairs), output_dir=str(tmp_path / "out"),
                     global_batch_size=2, epochs=0.5, learning_rate=1e-3, warmup_ratio=0.5, weight_decay=0.1,
                     max_grad_norm=0.5, logging_steps=1, save_steps=1, save_total_limit=1, lora_r=4,
                     lora_alpha=12, lora_dropout=0.2, train_vision=True, gradient_checkpointing=False,
                     show_progress=False)
    train_retriever(args)
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [1, 2, 3, 4] and log[-1]["total_steps"] == 4  # 8 steps an epoch
    # Two warm-up steps (0.5 of 4), then the cosine down to 0: lr * (1/2, 1, 1/2, 0).
    expected = [1e-3 * 0.5, 1e-3, 1e-3 * 0.5 * (1 + math.cos(math.pi / 2)), 0.0]
    assert [record["lr"] for record in log] == pytest.approx(expected, abs=1e-9)
    assert seen["weight_decay"] == 0.1 and seen["max_norm"] == [0.5] * 4
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").glob("step-*")) == ["step-3"]
    config = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 12, 0.2)
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "out" / "adapter" / "adapter_model.safetensors")
    assert any(".visual." in name for name in saved)  # train_vision: the tower travels with the adapter


def test_a_lora_with_train_vision_saves_the_trained_tower(tmp_path, tiny_checkpoint, image_files):
    """train_vision beside a LoRA: the tower's trained weights travel with the adapter and into a
    merged folder (before, the adapter held the LoRA alone: a loaded model saw the untrained tower)."""
    import numpy as np

    from lamra.training.args import RetrieverTrainingArgs
    from lamra.training.loop import save_trained

    retriever = Retriever.from_pretrained(tiny_checkpoint, device="cpu")
    retriever.backbone.add_lora(r=4, alpha=8, dropout=0.0, train_vision=True)
    tower = [p for n, p in retriever.backbone.model.named_parameters() if p.requires_grad and ".visual." in n]
    assert tower
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # as if trained
        for parameter in tower:
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    save_trained(retriever.backbone, tmp_path / "adapter", RetrieverTrainingArgs())
    items = [Item(images=[image_files[0]]), Item(text="a red circle", images=[image_files[1]])]
    trained = retriever.encode(items, show_progress=False)
    loaded = Retriever.from_pretrained(tiny_checkpoint, lora=tmp_path / "adapter", device="cpu")
    np.testing.assert_allclose(loaded.encode(items, show_progress=False), trained, atol=1e-5)
    from lamra.training.merge import merge_lora

    merged = Retriever.from_pretrained(merge_lora(tiny_checkpoint, tmp_path / "adapter", tmp_path / "merged"),
                                       device="cpu")
    np.testing.assert_allclose(merged.encode(items, show_progress=False), trained, atol=1e-5)
    untrained = Retriever.from_pretrained(tiny_checkpoint, device="cpu").encode(items, show_progress=False)
    assert np.abs(untrained - trained).max() > 1e-3  # the tower's change shows in the vectors


def test_stage2_data_knobs_reach_the_dataset(mbeir_root, tmp_path):
    """train_queries, train_pool and seed from the args: the queries of that file only, positives
    looked up in that pool (a pool without one is reported by its own name), draws of that seed."""
    from lamra.errors import InputError
    from lamra.retriever.data import MBEIRTrainDataset
    from lamra.retriever.trainer import build_dataset
    from lamra.training.args import load_args

    lines = (mbeir_root / "query/union_train/mbeir_union_up_train.jsonl").read_text().splitlines()
    queries = tmp_path / "some.jsonl"
    queries.write_text("\n".join(lines[:5]) + "\n")
    pool_lines = (mbeir_root / "cand_pool/global/mbeir_union_train_cand_pool.jsonl").read_text().splitlines()
    pool = tmp_path / "pool.jsonl"
    pool.write_text("\n".join(pool_lines) + "\n")
    common = dict(data=str(mbeir_root), data_kind="mbeir", train_queries=str(queries), train_pool=str(pool))
    dataset = build_dataset(load_args(None, seed=3, **common))
    assert len(dataset) == 5
    same = MBEIRTrainDataset(mbeir_root, queries=queries, seed=3)
    other = MBEIRTrainDataset(mbeir_root, queries=queries, seed=0)
    draws = [(dataset.example(i, e), same.example(i, e), other.example(i, e)) for i in range(5) for e in range(3)]
    assert all(mine == expected for mine, expected, _ in draws)
    assert any(mine != seed_0 for mine, _, seed_0 in draws)
    positive = json.loads(lines[0])["pos_cand_list"][0]
    pool.write_text("\n".join(line for line in pool_lines if json.loads(line)["did"] != positive) + "\n")
    with pytest.raises(InputError, match=str(pool)):
        build_dataset(load_args(None, **common))
