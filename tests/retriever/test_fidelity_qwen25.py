"""The Qwen2.5-VL release's retriever rules against a plain transformers forward written here.

A tiny Qwen2.5-VL checkpoint saved to disk (real Qwen2 BPE) is loaded with no options: lamra must
pick the "lamra-qwen25vl" rule set by itself and give the vectors of the official Qwen2.5-VL
LamRA-Ret: the stock model with ``position_ids=None`` (its own M-RoPE, which transformers 5
computes only when it is given ``mm_token_type_ids``), the prompt rendered by hand, RGBA
images pasted on white, no whole-sequence cut, and a left-padded batch as the official
evaluation pads it (docs/format.md, "Rule sets").
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lamra import Item, Retriever

HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
TAIL = "<|im_end|>\n<|im_start|>assistant\n<emb>.<|im_end|>\n<|im_start|>assistant\n"
IMG = "<|vision_start|><|image_pad|><|vision_end|>"
PIXELS = dict(min_pixels=4 * 28 * 28, max_pixels=300 * 28 * 28)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, qwen_tokenizer):
    from lamra.demo.tiny import save_tiny_checkpoint

    folder = tmp_path_factory.mktemp("tiny-qwen25vl")
    return save_tiny_checkpoint(folder, tokenizer=qwen_tokenizer, family="qwen2_5_vl", hidden_size=32, seed=3)


@pytest.fixture(scope="module")
def retriever(checkpoint):
    return Retriever.from_pretrained(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def stock(checkpoint):
    """The checkpoint as plain transformers objects (no lamra code): model, tokenizer, images."""
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokenizer.add_tokens(["<emb>"])
    return model, tokenizer, Qwen2VLImageProcessorPil(**PIXELS)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Two RGB files, and an RGBA file whose transparent pixels hold a colour (red)."""
    from PIL import Image, ImageDraw

    folder = tmp_path_factory.mktemp("qwen25-images")
    paths = []
    for number, (size, colour) in enumerate([((120, 90), "green"), ((84, 140), "blue")]):
        image = Image.new("RGB", size, "white")
        ImageDraw.Draw(image).ellipse([4, 4, size[0] - 4, size[1] - 4], fill=colour)
        paths.append(folder / f"rgb{number}.png")
        image.save(paths[-1])
    rgba = Image.new("RGBA", (112, 84), (255, 0, 0, 0))  # transparent red
    ImageDraw.Draw(rgba).rectangle([20, 10, 90, 70], fill=(0, 0, 255, 255))
    paths.append(folder / "rgba.png")
    rgba.save(paths[-1])
    return paths


def white_pasted(path):
    """The Qwen2.5-VL release's to_rgb, written out: RGBA on white with its alpha as the mask."""
    from PIL import Image

    image = Image.open(path)
    if image.mode != "RGBA":
        return image.convert("RGB")
    background = Image.new("RGB", image.size, (255, 255, 255))
    background.paste(image, mask=image.split()[3])
    return background


def reference_vectors(stock, prompts: list[tuple[str, list]], *, one_d: bool = False) -> np.ndarray:
    """Plain transformers, one left-padded batch: pool the state before <emb>, L2-normalise.

    ``one_d`` gives explicit 1-D positions instead (the Qwen2-VL release's rule), for contrast.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    model, tokenizer, processor = stock
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    rows, images = [], []
    for text, paths in prompts:
        pictures = [white_pasted(p) for p in paths]
        counts = iter([(h // 14) * (w // 14) // 4 for h, w in
                       (smart_resize(p.height, p.width, factor=28, **PIXELS) for p in pictures)])
        ids = []
        for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
            ids.extend([pad] * next(counts) if token == pad else [token])
        rows.append(ids)
        images += pictures
    longest = max(len(r) for r in rows)
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (longest - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (longest - len(r)) + [1] * len(r) for r in rows])
    inputs = {"input_ids": input_ids, "attention_mask": mask, "position_ids": None}
    if images:
        pixels = processor(images=images, return_tensors="pt")
        inputs.update(pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"],
                      mm_token_type_ids=(input_ids == pad).int())  # what the stock processor returns
    if one_d:
        inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).unsqueeze(0).expand(3, -1, -1)
    with torch.no_grad():
        hidden = model.model(**inputs).last_hidden_state
    emb = tokenizer.convert_tokens_to_ids("<emb>")
    pooled = hidden[torch.arange(len(rows)), (input_ids == emb).int().argmax(dim=1) - 1]
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def cases(pictures):
    """(item, instruction, hand-rendered prompt, image files) of every kind."""
    green, blue, rgba = pictures
    return [
        (Item(text="a dog on grass"), None, HEAD + "A dog on grass.\nSummarize above sentence in one word: " + TAIL,
         []),
        (Item(images=[green]), None, HEAD + IMG + "\nSummarize above image in one word: " + TAIL, [green]),
        (Item(images=[rgba]), None, HEAD + IMG + "\nSummarize above image in one word: " + TAIL, [rgba]),
        (Item(text="is darker", images=[blue]), "Find a similar image.",
         HEAD + IMG + "Find a similar image. is darker.\nSummarize above image and sentence in one word: " + TAIL,
         [blue]),
        (Item.interleaved(["before", green, "after", rgba]), None,
         HEAD + "before" + IMG + "after" + IMG + "\nSummarize above images and sentences in one word: " + TAIL,
         [green, rgba]),
    ]


def test_a_qwen25_checkpoint_picks_its_release_rules(retriever):
    settings = retriever.settings
    assert settings.rules == "lamra-qwen25vl"
    assert (settings.positions, settings.rgba, settings.max_tokens, settings.rerank_instructions) == \
        ("mrope", "white", 0, "single")
    assert retriever.fingerprint()["settings"]["rules"] == "lamra-qwen25vl"


@pytest.mark.parametrize("kind", ["text", "image", "rgba image", "text+image", "two images"])
def test_each_kind_equals_the_stock_forward(retriever, stock, pictures, kind):
    item, instruction, prompt, paths = cases(pictures)[["text", "image", "rgba image", "text+image",
                                                        "two images"].index(kind)]
    got = retriever.encode([item], instruction, show_progress=False)[0]
    np.testing.assert_allclose(got, reference_vectors(stock, [(prompt, paths)])[0], atol=1e-5)
    if paths:  # M-RoPE, not 1-D: the two are far apart for anything with an image
        assert np.abs(got - reference_vectors(stock, [(prompt, paths)], one_d=True)[0]).max() > 1e-4


def test_a_padded_mixed_batch_equals_the_left_padded_stock_batch(retriever, stock, pictures):
    all_cases = cases(pictures)
    got = retriever.encode([c[0] for c in all_cases], [c[1] for c in all_cases], show_progress=False,
                           sort_by_length=False, max_batch_tokens=None)
    expected = reference_vectors(stock, [(c[2], c[3]) for c in all_cases])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def with_settings(retriever, **overrides) -> Retriever:
    """The same loaded model under other settings (no second load)."""
    from dataclasses import replace

    from lamra.qwen2vl.processor import LamraProcessor

    processor = retriever.processor
    settings = retriever.settings.with_overrides(**overrides)
    return Retriever(replace(retriever.backbone,
                             processor=LamraProcessor(processor.tokenizer, processor.image_processor, settings)))


def test_rgba_is_pasted_on_white(retriever, stock, pictures):
    """The transparent pixels are red: PIL's convert keeps them red, the release's to_rgb makes them white."""
    rgba = pictures[2]
    prompt = HEAD + IMG + "\nSummarize above image in one word: " + TAIL
    other = with_settings(retriever, rgba="convert").encode([Item(images=[rgba])], show_progress=False)[0]
    assert np.abs(other - reference_vectors(stock, [(prompt, [rgba])])[0]).max() > 1e-4


def test_no_whole_sequence_cut(retriever, stock):
    """The Qwen2.5-VL release's evaluation sets no model_max_length: a text over 1024 tokens is read whole."""
    text = " ".join(f"w{i}" for i in range(300, 640))  # 4 tokens a word
    prompt = HEAD + text[0].upper() + text[1:] + ".\nSummarize above sentence in one word: " + TAIL
    assert len(retriever.tokenize(text)) > 1024
    np.testing.assert_allclose(retriever.encode([text], show_progress=False)[0],
                               reference_vectors(stock, [(prompt, [])])[0], atol=1e-5)


def test_the_rule_set_and_each_rule_can_be_overridden(checkpoint):
    from lamra.settings import ModelSettings

    own = ModelSettings.for_model(checkpoint)  # no lamra_settings.json: the config's model_type
    assert own.rules == "lamra-qwen25vl"
    qwen2 = own.with_overrides(rules="lamra-qwen2vl")
    assert (qwen2.positions, qwen2.rgba, qwen2.max_tokens, qwen2.rerank_instructions) == \
        ("1d", "convert", 1024, "spaced")
    one_d = own.with_overrides(positions="1d")
    assert one_d.rules == "lamra-qwen25vl" and (one_d.positions, one_d.rgba) == ("1d", "white")
    assert one_d.fingerprint() != qwen2.fingerprint() != own.fingerprint()
