"""The reranker on a tiny Qwen2.5-VL checkpoint (real Qwen2 BPE): the Qwen2.5-VL release's
single-space instructions, P(Yes) as a plain stock forward with the repetition penalty gives it,
and the shared-prefix path equal to full forwards under Qwen2.5-VL's own M-RoPE and windowed
vision attention (docs/format.md, "Rule sets")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lamra.items import Item
from lamra.reranker.model import Reranker

# The Qwen2.5-VL release's strings, written out: single spaces, "responed" kept.
POINTWISE = ("I will provide you with a query and a candidate. Please evaluate whether the candidate meets the "
             "requirements of the query. If it does, respond with 'Yes'; if it doesn't, responed with 'No'.")
LISTWISE = ("I will provide you with a query followed by multiple candidates in the format: (1) cand1 (2) cand2, "
            "etc. Each candidate is independent of the others. Evaluate each candidate against the query, and "
            "respond with the number corresponding to the candidate that best meets the requirements of the query.")
HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
TAIL = "<|im_end|>\n<|im_start|>assistant\n"
IMG = "<|vision_start|><|image_pad|><|vision_end|>"
PENALTY = 1.05


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, qwen_tokenizer):
    """A tiny Qwen2.5-VL with large language-model weights (logits that move), penalty 1.05."""
    from lamra.demo.tiny import image_processor, tiny_model

    folder = tmp_path_factory.mktemp("sharp-qwen25")
    model = tiny_model(qwen_tokenizer, hidden_size=32, seed=5, family="qwen2_5_vl")
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2 and "visual" not in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.25)
    model.generation_config.repetition_penalty = PENALTY
    model.save_pretrained(folder)
    qwen_tokenizer.save_pretrained(folder)
    image_processor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reranker(checkpoint):
    return Reranker.from_pretrained(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """An RGB image and an RGBA one (transparent red, so the RGBA rule shows)."""
    from PIL import Image, ImageDraw

    folder = tmp_path_factory.mktemp("rerank-qwen25-images")
    rgb = Image.new("RGB", (140, 112), "white")
    ImageDraw.Draw(rgb).ellipse([8, 8, 130, 100], fill="green")
    rgba = Image.new("RGBA", (112, 84), (255, 0, 0, 0))
    ImageDraw.Draw(rgba).rectangle([20, 10, 90, 70], fill=(0, 0, 255, 255))
    paths = [folder / "rgb.png", folder / "rgba.png"]
    rgb.save(paths[0])
    rgba.save(paths[1])
    return paths


def test_the_checkpoint_renders_the_single_space_strings(reranker, images):
    assert reranker.settings.rules == "lamra-qwen25vl"
    text = reranker.pointwise_prompt(Item(text="a dog"), Item(text="a brown dog", images=[images[0]]), "Find it.")
    assert text == HEAD + POINTWISE + "Query:Find it. a dog.Candidate:" + IMG + "A brown dog." + TAIL
    text = reranker.listwise_prompt(Item(text="a cat"), [Item(text="a tabby"), Item(images=[images[1]])])
    assert text == HEAD + LISTWISE + "Query:A cat.Candidates:(1) A tabby.(2) " + IMG + TAIL + "Ans: ("


@pytest.fixture(scope="module")
def stock(checkpoint, reranker):
    """The checkpoint as the stock model class (no lamra code), and its tokenizer."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoint).eval(), reranker.backbone.tokenizer


def stock_penalised_yes(stock, text: str, paths: list) -> float:
    """P(Yes) from the stock model: white-pasted images, its M-RoPE, the penalty processor."""
    from PIL import Image
    from transformers import RepetitionPenaltyLogitsProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    model, tokenizer = stock
    inputs = {}
    if paths:
        pictures = []
        for path in paths:
            image = Image.open(path)
            if image.mode == "RGBA":
                background = Image.new("RGB", image.size, (255, 255, 255))
                background.paste(image, mask=image.split()[3])
                image = background
            pictures.append(image.convert("RGB"))
        pixels = Qwen2VLImageProcessorPil(min_pixels=4 * 28 * 28, max_pixels=300 * 28 * 28)(images=pictures,
                                                                                                return_tensors="pt")
        inputs.update(pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"])
        counts = iter((pixels["image_grid_thw"].prod(-1) // 4).tolist())
        pieces = text.split("<|image_pad|>")
        text = pieces[0] + "".join("<|image_pad|>" * next(counts) + piece for piece in pieces[1:])
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    inputs.update(input_ids=ids, attention_mask=torch.ones_like(ids))
    if paths:
        inputs["mm_token_type_ids"] = (ids == tokenizer.convert_tokens_to_ids("<|image_pad|>")).int()
    with torch.inference_mode():
        logits = model(**inputs).logits[:, -1].float()
    logits = RepetitionPenaltyLogitsProcessor(PENALTY)(ids, logits)[0]
    return torch.softmax(logits[[9454, 2753]], 0)[0].item()  # "Yes", "No"


def test_p_yes_equals_the_stock_forward_with_the_penalty(reranker, stock, images):
    query = Item(text="a red square", images=[images[0]])
    candidates = [Item(text="a green ellipse"), Item(images=[images[1]]), Item(text="blue", images=[images[0]])]
    parts = ["A green ellipse.", IMG, IMG + "Blue."]
    paths = [[images[0]], [images[0], images[1]], [images[0], images[0]]]
    scores = reranker.score(query, candidates, "Find it.", shared_prefix=False)
    for part, files, score in zip(parts, paths, scores):
        text = HEAD + POINTWISE + "Query:" + IMG + "Find it. a red square.Candidate:" + part + TAIL
        assert abs(score - stock_penalised_yes(stock, text, files)) < 1e-4


def test_shared_prefix_equals_full_forwards(reranker, images):
    candidates = [Item(text="a green ellipse"), Item(text="blue", images=[images[0]]),
                  Item(images=[images[0], images[1]]), Item(text="x")]
    query = Item(text="a red square", images=[images[1]])  # an image in the shared prefix
    plain = reranker.yes_no_logits(query, candidates, "Find it.", shared_prefix=False)
    fast = reranker.yes_no_logits(query, candidates, "Find it.", batch_size=2)
    np.testing.assert_allclose(fast.numpy(), plain.numpy(), atol=1e-4, rtol=0)
    assert float(plain.std(dim=0).max()) > 0.1  # the logits differ between candidates
