"""LamRA-Rank prompts (exact), P(Yes) scoring, listwise pick and score fusion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lamra.items import Item
from lamra.modeling.reranker import Reranker, fuse
from lamra.prompts import LISTWISE_INSTRUCTION, POINTWISE_INSTRUCTION, listwise_messages, pointwise_messages, render_chat

IMG = "<|vision_start|><|image_pad|><|vision_end|>"


def test_instructions_keep_the_released_spacing_and_spelling():
    assert "candidate" + " " * 24 + "meets" in POINTWISE_INSTRUCTION and "responed with 'No'." in POINTWISE_INSTRUCTION
    assert "others." + " " * 25 + "Evaluate" in LISTWISE_INSTRUCTION


def test_pointwise_prompt_layout():
    query = Item(text="a dog", images=[Path("q.jpg")])
    text = render_chat(pointwise_messages(query, "A brown dog runs.", "Find a caption."))
    user = f"{POINTWISE_INSTRUCTION}Query:{IMG}Find a caption. a dog.Candidate:A brown dog runs."
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" + user
                    + "<|im_end|>\n<|im_start|>assistant\n")


def test_listwise_prompt_layout():
    text = render_chat(listwise_messages("a cat", [Item(images=[Path("a.jpg")]), "a tabby"]))
    assert f"{LISTWISE_INSTRUCTION}Query:A cat.Candidates:(1) {IMG}(2) A tabby.<|im_end|>" in text


@pytest.fixture(scope="module")
def reranker(tiny_checkpoint):
    return Reranker.from_pretrained(tiny_checkpoint, device="cpu")


def test_score_is_softmax_of_yes_no_logits_of_the_full_model(reranker, image_files):
    import torch

    from lamra.modeling.inputs import collate, tokenize_prompt

    query = Item(text="a red circle", images=[image_files[0]])
    candidates = ["a green ellipse", Item(images=[image_files[1]]), Item(text="blue", images=[image_files[2]])]
    scores = reranker.score(query, candidates)
    assert scores.shape == (3,) and ((scores > 0) & (scores < 1)).all()
    # Reference: the whole model's logits at the answer position, one pair at a time.
    for candidate, score in zip(candidates, scores):
        candidate = Item(text=candidate) if isinstance(candidate, str) else candidate
        prompt = tokenize_prompt(reranker.backbone, reranker.pointwise_prompt(query, candidate),
                                 query.images + candidate.images, pixel_limit=10**8)
        inputs = collate(reranker.backbone, [prompt], pixel_limit=10**8)
        with torch.inference_mode():
            logits = reranker.backbone.model(**inputs).logits[0, -1]
        expected = torch.softmax(torch.stack([logits[reranker.yes_id], logits[reranker.no_id]]), 0)[0]
        assert abs(float(expected) - float(score)) < 1e-5
    np.testing.assert_allclose(reranker.score(query, candidates, batch_size=1), scores, atol=1e-5)


def test_pick_returns_a_position_and_probabilities(reranker):
    best, probabilities = reranker.pick("a cat", ["a dog", "a tabby cat", "a car"])
    assert 0 <= best < 3 and probabilities.shape == (3,) and abs(probabilities.sum() - 1) < 1e-5
    assert best == int(probabilities.argmax())
    with pytest.raises(ValueError):
        reranker.pick("a cat", [])


def test_real_tokenizer_answer_ids(tmp_path, qwen_tokenizer):
    from types import SimpleNamespace

    reranker = Reranker.__new__(Reranker)
    Reranker.__init__(reranker, SimpleNamespace(tokenizer=qwen_tokenizer))
    assert (reranker.yes_id, reranker.no_id) == (9454, 2753)
    assert reranker.digit_ids[:3] == [16, 17, 18]


def test_fuse():
    np.testing.assert_allclose(fuse([0.8, 0.2], [0.4, 1.0]), [0.6, 0.6])
    np.testing.assert_allclose(fuse([0.8], [0.4], alpha=1.0), [0.8])
