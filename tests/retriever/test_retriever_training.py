"""LamRA-Ret training: gradient caching, the shared forward, bad data, resume after kill -9, learning."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torchrun_steps import run_torchrun

from lamra import Item, Retriever
from lamra.retriever.collator import RetrievalCollator
from lamra.retriever.data import Example

LAMRA = shutil.which("lamra") or str(Path(sys.executable).with_name("lamra"))


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
    return retriever


def examples(image_files):
    return [
        Example(Item(text="a red circle"), Item(images=[image_files[0]]), "Find me an everyday image."),
        Example(Item(images=[image_files[1]]), Item(text="a green ellipse"), "Find a caption."),
        Example(Item(text="blue"), Item(text="a blue shape", images=[image_files[2]])),
        Example(Item(text="yellow disc", images=[image_files[3]]), Item(text="the yellow one")),
        Example(Item(text="a short one"), Item(text="short text")),
    ]


def grads_of(retriever):
    return {n: p.grad.clone() for n, p in retriever.backbone.model.named_parameters() if p.requires_grad}


def test_gradient_cache_gives_the_plain_loss_and_gradients(tiny_checkpoint, image_files):
    from accelerate import Accelerator

    from lamra.retriever.steps import EmbeddingModel, gradient_cache_step, plain_step

    accelerator = Accelerator(cpu=True)
    results = []
    for chunk_size in (None, 2):
        retriever = lora_retriever(tiny_checkpoint)
        retriever.backbone.train()
        batch = RetrievalCollator(retriever.processor, chunk_size=chunk_size)(examples(image_files))
        model = EmbeddingModel(retriever)
        step = gradient_cache_step if chunk_size else plain_step
        loss = step(accelerator, model, batch, temperature=0.05)
        results.append((float(loss), grads_of(retriever)))
        if chunk_size:
            assert len(batch["query"]) == 3  # 5 rows in chunks of 2
    (plain_loss, plain_grads), (cached_loss, cached_grads) = results
    assert cached_loss == pytest.approx(plain_loss, abs=1e-5)
    assert any(g.abs().max() > 1e-3 for g in plain_grads.values())
    for name, gradient in plain_grads.items():
        torch.testing.assert_close(cached_grads[name], gradient, atol=1e-5, rtol=1e-4, msg=name)


def test_training_forward_gives_the_vectors_of_encode(tiny_checkpoint, image_files):
    retriever = lora_retriever(tiny_checkpoint, dropout=0.0)
    items = [e.query for e in examples(image_files)]
    instructions = [e.instruction for e in examples(image_files)]
    retriever.backbone.train()
    batch = RetrievalCollator(retriever.processor, text_rule="lamra")(
        [Example(q, q, i) for q, i in zip(items, instructions)])
    trained = retriever.embed(batch["query"][0])
    assert trained.requires_grad  # the training forward keeps the graph
    encoded = retriever.encode(items, instruction=instructions, show_progress=False)
    np.testing.assert_allclose(trained.detach().numpy(), encoded, atol=1e-5)
    assert retriever.backbone.model.training  # encode restored the mode it found


def write_pairs(path: Path, count: int = 48) -> Path:
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
    shapes = ["circle", "square", "star", "cross", "triangle", "ring"]
    with open(path, "w") as handle:
        for number in range(count):
            colour, shape = colours[number % 8], shapes[(number // 8) % 6]
            handle.write(json.dumps({"sent0": f"a {colour} {shape}", "sent1": f"the {shape} is {colour}"}) + "\n")
    return path


def run_lamra(*args, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([LAMRA, *map(str, args)], capture_output=True, text=True, env=env, timeout=300, **kwargs)


def test_bad_training_data_fails_before_the_first_step(tmp_path, tiny_checkpoint):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 8)
    with open(pairs, "a") as handle:
        handle.write(json.dumps({"sent0": "fine", "sent1": ""}) + "\n")
    result = run_lamra("train", "retriever", "--config", "configs/stage1.yaml", "--model", tiny_checkpoint,
                       "--data", pairs, "--output-dir", tmp_path / "out", "--global-batch-size", "4")
    assert result.returncode == 2, result.stderr
    assert f"{pairs}:9" in result.stderr and "'sent1'" in result.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_mbeir_positive_missing_from_the_pool_is_reported(tmp_path, tiny_checkpoint):
    from lamra.data.synthetic import SynthConfig, synthesize
    from lamra.errors import InputError
    from lamra.retriever.data import MBEIRTrainDataset

    root = tmp_path / "mb"
    synthesize(root, SynthConfig(test_queries=2, train_queries=3, pool_size=8))
    queries = root / "query" / "union_train" / "mbeir_union_up_train.jsonl"
    lines = queries.read_text().splitlines()
    record = json.loads(lines[4])
    record["pos_cand_list"] = ["9:999999"]
    lines[4] = json.dumps(record)
    queries.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as error:
        MBEIRTrainDataset(root)
    assert f"{queries}:5" in str(error.value) and "pos_cand_list" in str(error.value) and "9:999999" in str(error.value)


def adapter_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "adapter" / "adapter_model.safetensors")


def test_resume_after_kill_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, tiny_checkpoint):
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    common = ["train", "retriever", "--config", "configs/stage1.yaml", "--model", tiny_checkpoint, "--data", pairs,
              "--global-batch-size", "8", "--max-steps", "12", "--set", "save_steps=2", "--set", "lora_r=4",
              "--set", "lora_alpha=12", "--set", "lora_dropout=0.1", "--set", "gradient_checkpointing=false",
              "--set", "show_progress=false"]
    straight = run_lamra(*common, "--output-dir", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    # The adapter records the LoRA the args asked for (alpha is not 2r, dropout not the preset's).
    config = json.loads((tmp_path / "straight" / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 12, 0.1)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    killed_dir = tmp_path / "killed"
    process = subprocess.Popen([LAMRA, *map(str, common), "--output-dir", str(killed_dir)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (killed_dir / "checkpoints" / "step-4").is_dir():
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed_dir / "adapter").exists()
    resumed = run_lamra(*common, "--output-dir", killed_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    expected, got = adapter_weights(tmp_path / "straight"), adapter_weights(killed_dir)
    assert expected.keys() == got.keys() and expected
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=0, msg=name)
    # The loss log continues where it stopped: every step logged once by one of the runs.
    steps = [json.loads(line)["step"] for line in (killed_dir / "train_log.jsonl").read_text().splitlines()]
    assert steps[-1] == 12


FRENCH_COLOURS = {"red": "rouge", "green": "vert", "blue": "bleu", "yellow": "jaune", "purple": "violet",
                  "orange": "orange", "black": "noir", "white": "blanc"}
FRENCH_SHAPES = {"circle": "cercle", "square": "carré", "star": "étoile", "cross": "croix", "triangle": "triangle",
                 "ring": "anneau"}


def test_small_recipe_learns_held_out_text_pairs(tmp_path, tiny_checkpoint):
    """French -> English colour/shape phrases: trained on 36 combinations, tested on 12 unseen ones.

    No word is shared between a query and its target, so the untrained model sits at chance
    (1/12); 40 steps must lift held-out top-1 accuracy by at least 0.25 (measured: 0.08 -> 0.50).
    """
    import random

    from lamra.retriever.trainer import train_retriever
    from lamra.training.args import load_args

    combos = [(c, s) for c in FRENCH_COLOURS for s in FRENCH_SHAPES]
    random.Random(0).shuffle(combos)
    held_out, train = combos[:12], combos[12:]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"sent0": f"un {FRENCH_SHAPES[s]} {FRENCH_COLOURS[c]}", "sent1": f"a {c} {s}"})
                             + "\n" for c, s in train))
    args = load_args("configs/stage1.yaml", model=str(tiny_checkpoint), data=str(pairs),
                     output_dir=str(tmp_path / "out"), global_batch_size=12, max_steps=40, learning_rate=3e-3,
                     lora_r=16, lora_alpha=32, gradient_checkpointing=False, show_progress=False)
    adapter = train_retriever(args)
    queries = [f"un {FRENCH_SHAPES[s]} {FRENCH_COLOURS[c]}" for c, s in held_out]
    targets = [f"a {c} {s}" for c, s in held_out]

    def accuracy(retriever):
        scores = retriever.similarity(retriever.encode(queries, show_progress=False),
                                      retriever.encode(targets, show_progress=False))
        return float((scores.argmax(axis=1) == np.arange(len(queries))).mean())

    before = accuracy(Retriever.from_pretrained(tiny_checkpoint, device="cpu"))
    after = accuracy(Retriever.from_pretrained(tiny_checkpoint, lora=adapter, device="cpu"))
    assert after >= before + 0.25, (before, after)


@pytest.mark.parametrize("chunk_size", [None, pytest.param(2, marks=pytest.mark.slow)])
def test_two_processes_give_the_loss_and_gradients_of_one(tmp_path, tiny_checkpoint, chunk_size):
    """torchrun, gloo, CPU: the global batch split over 2 ranks equals 1 rank holding all of it
    (queries, positives and one hard negative per example, all gathered across the ranks)."""
    script = Path(__file__).with_name("ddp_equivalence.py")
    results = []
    for processes in (1, 2):
        out = tmp_path / f"ddp{processes}.pt"
        extra = ["--chunk-size", chunk_size] if chunk_size else []
        run_torchrun(script, processes, 29500 + processes + (10 if chunk_size else 0), tiny_checkpoint, out, *extra)
        results.append(torch.load(out))
    one, two = results
    assert two["world"] == 2
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-5)
    assert any(g.abs().max() > 1e-3 for g in one["grads"].values())
    for name, gradient in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], gradient, atol=1e-5, rtol=1e-4, msg=name)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_checkpoint, image_files):
    from accelerate import Accelerator

    from lamra.retriever.steps import EmbeddingModel, plain_step

    accelerator = Accelerator(cpu=True)
    results = []
    for checkpointing in (False, True):
        retriever = lora_retriever(tiny_checkpoint)
        if checkpointing:
            retriever.backbone.enable_gradient_checkpointing()
            network = retriever.backbone.base_model()
            assert getattr(network, "is_activation_checkpointing", None) or network.is_gradient_checkpointing
        retriever.backbone.train()
        batch = RetrievalCollator(retriever.processor)(examples(image_files))
        loss = plain_step(accelerator, EmbeddingModel(retriever), batch, temperature=0.05)
        results.append((float(loss), grads_of(retriever)))
    (loss, grads), (checkpointed_loss, checkpointed_grads) = results
    assert checkpointed_loss == pytest.approx(loss, abs=1e-5)
    for name, gradient in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], gradient, atol=1e-5, rtol=1e-4, msg=name)


def test_full_training_can_keep_the_token_embeddings(tiny_checkpoint):
    for train_embeddings in (True, False):
        retriever = Retriever.from_pretrained(tiny_checkpoint, device="cpu")
        retriever.backbone.add_lora(full=True, train_vision=True, train_embeddings=train_embeddings)
        network = retriever.backbone.base_model()
        assert network.get_input_embeddings().weight.requires_grad is train_embeddings
        assert network.get_output_embeddings().weight.requires_grad is train_embeddings  # tied
        trainable = {name for name, p in network.named_parameters() if p.requires_grad}
        # Every nn.Linear of the language model (found here with plain torch, not lamra's helper).
        language = network.get_decoder()
        prefix = next(name for name, module in network.named_modules() if module is language)
        linears = {f"{prefix}.{name}.weight" for name, module in language.named_modules()
                   if isinstance(module, torch.nn.Linear)}
        assert linears and linears <= trainable
        assert any(".visual." in f".{name}" for name in trainable)
