"""The packed vision attention computes what transformers' per-image sdpa loop computes."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from lamra.demo.tiny import image_processor, small_tokenizer, tiny_model
from lamra.qwen2vl import vision_attention


def _images(sides, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sides]


def _stock_and_packed(family):
    stock = tiny_model(small_tokenizer(), family=family, vision_width=64)
    stock.config._attn_implementation = "sdpa"
    packed = copy.deepcopy(stock)
    assert vision_attention.use_packed_vision_attention(packed)
    assert packed.config.vision_config._attn_implementation == vision_attention.NAME
    assert packed.config.text_config._attn_implementation == "sdpa"  # the language model keeps its own
    return stock, packed


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("sides", [[(112, 112)] * 3, [(112, 112), (224, 168), (56, 112)]],
                         ids=["same size", "mixed sizes"])
def test_packed_vision_attention_matches_the_per_image_loop(family, sides, monkeypatch):
    stock, packed = _stock_and_packed(family)
    batched_calls = []
    original = vision_attention.packed_sdpa

    def counting(module, query, *args, **kwargs):
        segments = kwargs["cu_seq_lens_q"].numel() - 1
        batched_calls.append(kwargs.get("max_length_q") is not None
                             and segments * int(kwargs["max_length_q"]) == query.shape[2])
        return original(module, query, *args, **kwargs)

    from transformers import AttentionInterface

    AttentionInterface.register(vision_attention.NAME, counting)
    try:
        pixels = image_processor()(images=_images(sides), return_tensors="pt")
        with torch.no_grad():
            expected = stock.model.visual(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"]).pooler_output
            got = packed.model.visual(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"]).pooler_output
    finally:
        AttentionInterface.register(vision_attention.NAME, original)
    assert batched_calls, "the packed attention was never called"
    if len(set(sides)) == 1:
        assert all(batched_calls)  # one batched call per layer
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_packed_vision_attention_gives_the_same_gradients():
    stock, packed = _stock_and_packed("qwen2_vl")
    pixels = image_processor()(images=_images([(112, 112)] * 2), return_tensors="pt")
    grads = []
    for model in (stock, packed):
        output = model.model.visual(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"]).pooler_output
        output.pow(2).sum().backward()
        grads.append(model.model.visual.blocks[0].attn.qkv.weight.grad)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


def test_only_sdpa_is_switched():
    model = tiny_model(small_tokenizer())
    model.config._attn_implementation = "eager"
    assert not vision_attention.use_packed_vision_attention(model)
    assert model.config.vision_config._attn_implementation == "eager"


def test_loaded_backbones_use_it_and_saved_configs_do_not_record_it(tmp_path):
    from lamra.demo.tiny import save_tiny_checkpoint
    from lamra.qwen2vl.backbone import load_backbone

    folder = save_tiny_checkpoint(tmp_path / "tiny")
    backbone = load_backbone(folder, device="cpu")
    assert backbone.model.config.vision_config._attn_implementation == vision_attention.NAME
    backbone.model.save_pretrained(tmp_path / "saved")
    assert vision_attention.NAME not in (tmp_path / "saved" / "config.json").read_text()
