"""Retriever: loading paths, LoRA, and invariance of the vectors to batching."""

from __future__ import annotations

import random

import numpy as np
import pytest

from lamra import Item, Retriever
from lamra.qwen2vl.backbone import Backbone
from lamra.qwen2vl.processor import LamraProcessor


def mixed_items(image_files):
    return [
        "a red circle on a white background",
        Item(images=[image_files[0]], id="img0"),
        Item(text="a green ellipse", images=[image_files[1]]),
        "short",
        "a much longer sentence that goes on about many things " * 12,
        Item(images=[image_files[2], image_files[3]]),
        Item.interleaved(["before", image_files[0], "after", image_files[1]]),
        "q?",
    ]


def encode(retriever, items, **kwargs):
    return retriever.encode(items, show_progress=False, **kwargs)


def test_vectors_are_unit_float32_in_input_order(tiny_retriever, image_files):
    items = mixed_items(image_files)
    vectors = encode(tiny_retriever, items)
    assert vectors.shape == (len(items), tiny_retriever.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Different items give different vectors (a random model still separates inputs).
    assert np.abs(vectors[0] - vectors[3]).max() > 1e-3
    assert encode(tiny_retriever, []).shape == (0, tiny_retriever.dim)


def test_invariant_to_batch_size_order_and_padding(tiny_retriever, image_files):
    items = mixed_items(image_files)
    reference = encode(tiny_retriever, items, batch_size=64)
    for batch_size in (1, 2, 3):
        np.testing.assert_allclose(encode(tiny_retriever, items, batch_size=batch_size), reference, atol=1e-5)
    order = list(range(len(items)))
    random.Random(0).shuffle(order)
    shuffled = encode(tiny_retriever, [items[i] for i in order])
    np.testing.assert_allclose(shuffled, reference[order], atol=1e-5)
    # Alone vs padded next to the longest item, in the plain unsorted batching too.
    alone = np.stack([encode(tiny_retriever, [item])[0] for item in items])
    np.testing.assert_allclose(alone, reference, atol=1e-5)
    plain = encode(tiny_retriever, items, sort_by_length=False, max_batch_tokens=None)
    np.testing.assert_allclose(plain, reference, atol=1e-5)


def test_instruction_changes_query_vector(tiny_retriever):
    plain = encode(tiny_retriever, ["a cat"])
    with_instruction = encode(tiny_retriever, ["a cat"], instruction="Find an image.")
    per_item = encode(tiny_retriever, ["a cat", "a cat"], instruction=[None, "Find an image."])
    assert np.abs(plain - with_instruction).max() > 1e-4
    np.testing.assert_allclose(per_item, np.concatenate([plain, with_instruction]), atol=1e-5)


def test_saved_then_reloaded_model_gives_same_vectors(tmp_path, small_tokenizer, image_files):
    from lamra.demo.tiny import image_processor, save_tiny_checkpoint, tiny_model
    from lamra.qwen2vl.processor import load_image_processor

    folder = save_tiny_checkpoint(tmp_path / "ckpt", tokenizer=small_tokenizer, seed=3)
    # The same weights in memory, never saved: built again from the seed.
    tokenizer = small_tokenizer.__class__.from_pretrained(folder)
    tokenizer.add_tokens(["<emb>"])
    in_memory = Retriever(Backbone(model=tiny_model(small_tokenizer, seed=3),
                                   processor=LamraProcessor(tokenizer, image_processor()), model_id="memory"))
    reloaded = Retriever.from_pretrained(folder, device="cpu")
    items = mixed_items(image_files)
    np.testing.assert_allclose(encode(reloaded, items), encode(in_memory, items), atol=1e-5)
    assert load_image_processor(folder).size["longest_edge"] == 300 * 28 * 28


def test_lora_adapter_saved_reloaded_and_merged(tmp_path, tiny_checkpoint, image_files):
    import torch
    from peft import LoraConfig, get_peft_model

    base = Retriever.from_pretrained(tiny_checkpoint, device="cpu")
    items = mixed_items(image_files)
    base_vectors = encode(base, items)
    # A LoRA on every linear of the language model, with non-zero weights (as after training).
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, init_lora_weights=False,
                        target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")
    torch.manual_seed(0)
    peft_model = get_peft_model(base.backbone.model, config)
    peft_model.eval()
    trained = Retriever(Backbone(model=peft_model, processor=base.processor, model_id="memory"))
    expected = encode(trained, items)
    assert np.abs(expected - base_vectors).max() > 1e-3  # the adapter really changes the vectors
    peft_model.save_pretrained(tmp_path / "adapter")

    reloaded = Retriever.from_pretrained(tiny_checkpoint, lora=tmp_path / "adapter", device="cpu")
    np.testing.assert_allclose(encode(reloaded, items), expected, atol=1e-5)
    merged = Retriever.from_pretrained(tiny_checkpoint, lora=tmp_path / "adapter", merge_lora=True, device="cpu")
    assert not hasattr(merged.backbone.model, "peft_config")
    np.testing.assert_allclose(encode(merged, items), expected, atol=1e-5)
    assert reloaded.fingerprint()["adapter"] != merged.fingerprint()["adapter"] != None


def test_fingerprint_is_stable_and_relocatable(tmp_path, tiny_checkpoint):
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(tiny_checkpoint, moved)
    original = Retriever.from_pretrained(tiny_checkpoint, device="cpu").fingerprint()
    assert original["prompt_format"] and original["dim"] == 32
    assert Retriever.from_pretrained(moved, device="cpu").fingerprint()["model"].split("@")[1] == \
        original["model"].split("@")[1]


def test_unsupported_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    from lamra.qwen2vl.backbone import _model_class

    with pytest.raises(ValueError, match="not supported"):
        _model_class(str(tmp_path), {})


def test_qwen2_5_vl_is_served_by_the_same_code(tmp_path, small_tokenizer, image_files):
    from lamra.demo.tiny import save_tiny_checkpoint

    folder = save_tiny_checkpoint(tmp_path / "qwen25", tokenizer=small_tokenizer, family="qwen2_5_vl")
    retriever = Retriever.from_pretrained(folder, device="cpu")
    assert type(retriever.backbone.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    items = mixed_items(image_files)
    together = encode(retriever, items)
    alone = np.stack([encode(retriever, [item])[0] for item in items])
    np.testing.assert_allclose(together, alone, atol=1e-5)
