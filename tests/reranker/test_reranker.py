"""LamRA-Rank: the released prompts held literally, P(Yes) as the official evaluation reads it
(a plain transformers forward and ``generate`` written here, not lamra's helpers), listwise
``pick`` against the digit logits after "Ans: (", fusion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rerank_models import save_sharp_checkpoint

from lamra.items import Item
from lamra.qwen2vl.prompts import LISTWISE_ANSWER_PREFIX, LISTWISE_INSTRUCTION, POINTWISE_INSTRUCTION
from lamra.reranker.model import Reranker, fuse

# The released strings, written out (spec 3): 24 spaces after "candidate", "responed",
# 25 spaces after "others.".
POINTWISE = ("I will provide you with a query and a candidate. Please evaluate whether the candidate"
             "                        meets the requirements of the query. If it does, respond with 'Yes'; "
             "if it doesn't, responed with 'No'.")
LISTWISE = ("I will provide you with a query followed by multiple candidates in the format: (1) cand1 (2) cand2, "
            "etc. Each candidate is independent of the others.                         Evaluate each candidate "
            "against the query, and respond with the number corresponding to the candidate that best meets the "
            "requirements of the query.")
HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
TAIL = "<|im_end|>\n<|im_start|>assistant\n"
IMG = "<|vision_start|><|image_pad|><|vision_end|>"
PENALTY = 1.05  # Qwen2-VL-Instruct's generation_config.json


def test_released_instructions_literally():
    assert POINTWISE.count(" " * 24) == 1 and " " * 25 not in POINTWISE
    assert LISTWISE.count(" " * 25) == 1 and " " * 26 not in LISTWISE
    assert POINTWISE_INSTRUCTION == POINTWISE
    assert LISTWISE_INSTRUCTION == LISTWISE
    assert LISTWISE_ANSWER_PREFIX == "Ans: ("


QUERIES = {  # query item -> its rendered part, with the instruction "Find a caption."
    "text": (Item(text="a dog"), "Find a caption. a dog."),
    "image": (Item(images=[Path("q.jpg")]), IMG + "Find a caption."),
    "image,text": (Item(text="a dog", images=[Path("q.jpg")]), IMG + "Find a caption. a dog."),
}
CANDIDATES = {  # candidate item -> its rendered part (no instruction)
    "text": (Item(text="a brown dog runs"), "A brown dog runs."),
    "image": (Item(images=[Path("c.jpg")]), IMG),
    "image,text": (Item(text="\"a brown dog\"", images=[Path("c.jpg")]), IMG + "A brown dog."),
}


@pytest.mark.parametrize("query_kind", sorted(QUERIES))
@pytest.mark.parametrize("candidate_kind", sorted(CANDIDATES))
def test_pointwise_prompt_for_every_modality_pair(query_kind, candidate_kind):
    query, query_part = QUERIES[query_kind]
    candidate, candidate_part = CANDIDATES[candidate_kind]
    reranker = Reranker.__new__(Reranker)  # prompts need no model
    text = reranker.pointwise_prompt(query, candidate, "Find a caption.")
    assert text == HEAD + POINTWISE + "Query:" + query_part + "Candidate:" + candidate_part + TAIL


def test_listwise_prompt_literally():
    reranker = Reranker.__new__(Reranker)
    candidates = [Item(images=[Path("a.jpg")]), "a tabby", Item(text="x", images=[Path("b.jpg")])]
    text = reranker.listwise_prompt("a cat", candidates)
    assert text == (HEAD + LISTWISE + "Query:A cat.Candidates:(1) " + IMG + "(2) A tabby.(3) " + IMG + "X." + TAIL
                    + "Ans: (")


def test_real_tokenizer_answer_ids(qwen_tokenizer):
    from types import SimpleNamespace

    reranker = Reranker.__new__(Reranker)
    Reranker.__init__(reranker, SimpleNamespace(tokenizer=qwen_tokenizer, model=None), repetition_penalty=1.0)
    assert (reranker.yes_id, reranker.no_id) == (9454, 2753)
    assert reranker.digit_ids == [16, 17, 18, 19, 20, 21, 22, 23, 24]
    # Both answers occur in the pointwise instruction, so generate's penalty touches both (spec 3).
    ids = qwen_tokenizer(POINTWISE, add_special_tokens=False)["input_ids"]
    assert 9454 in ids and 2753 in ids


# -- the official score, computed independently ----------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, small_tokenizer):
    return save_sharp_checkpoint(tmp_path_factory.mktemp("rerank-ckpt"), small_tokenizer, repetition_penalty=PENALTY)


@pytest.fixture(scope="module")
def reranker(checkpoint):
    return Reranker.from_pretrained(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def stock(checkpoint):
    """The checkpoint as plain transformers objects: model, tokenizer, PIL image processor."""
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    model = Qwen2VLForConditionalGeneration.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    # LamRA's image range (spec 2): 4*28*28 to 300*28*28 pixels.
    images = Qwen2VLImageProcessorPil.from_pretrained(checkpoint, min_pixels=4 * 28 * 28, max_pixels=300 * 28 * 28)
    return model, tokenizer, images


def stock_inputs(stock, text: str, image_paths: list) -> dict:
    """Model inputs for one rendered prompt, built with transformers alone."""
    import torch
    from PIL import Image

    _, tokenizer, processor = stock
    inputs = {}
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    if image_paths:
        pixels = processor(images=[Image.open(p).convert("RGB") for p in image_paths], return_tensors="pt")
        inputs.update(pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"])
        counts = iter((pixels["image_grid_thw"].prod(-1) // 4).tolist())
        text = text.replace("<|image_pad|>", "<|placeholder|>")
        while "<|placeholder|>" in text:
            text = text.replace("<|placeholder|>", "<|image_pad|>" * next(counts), 1)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    inputs.update(input_ids=ids, attention_mask=torch.ones_like(ids))
    if image_paths:
        inputs["mm_token_type_ids"] = (ids == pad).int()  # the stock model computes M-RoPE
    return inputs


def stock_next_logits(stock, inputs: dict, penalty: float):
    """The full-vocabulary logits after the prompt, through transformers' own penalty processor."""
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor

    model = stock[0]
    with torch.inference_mode():
        logits = model(**inputs).logits[:, -1].float()
    return RepetitionPenaltyLogitsProcessor(penalty)(inputs["input_ids"], logits.clone())[0]


def pointwise_text(query_part: str, candidate_part: str) -> str:
    return HEAD + POINTWISE + "Query:" + query_part + "Candidate:" + candidate_part + TAIL


@pytest.fixture(scope="module")
def pairs(image_files):
    """(query, candidates, rendered query part, rendered candidate parts, images per candidate)."""
    query = Item(text="a red circle", images=[image_files[0]])
    candidates = [Item(text="a green ellipse"), Item(images=[image_files[1]]),
                  Item(text="blue", images=[image_files[2]])]
    parts = ["A green ellipse.", IMG, IMG + "Blue."]
    images = [[], [image_files[1]], [image_files[2]]]
    return query, candidates, IMG + "Find it. a red circle.", parts, [[image_files[0]] + i for i in images]


def test_official_score_is_softmax_of_the_penalised_yes_no_logits(reranker, stock, pairs):
    import torch

    query, candidates, query_part, parts, images = pairs
    assert reranker.repetition_penalty == PENALTY  # read from the checkpoint's generation_config.json
    tokenizer = stock[1]
    yes, no = (tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("Yes", "No"))
    official = reranker.score(query, candidates, "Find it.")
    plain = reranker.score(query, candidates, "Find it.", shared_prefix=False)
    raw_scores, expected_raw = [], []
    for candidate_part, paths, score, plain_score in zip(parts, images, official, plain):
        inputs = stock_inputs(stock, pointwise_text(query_part, candidate_part), paths)
        logits = stock_next_logits(stock, inputs, PENALTY)
        expected = torch.softmax(torch.stack([logits[yes], logits[no]]), 0)[0].item()
        assert abs(score - expected) < 1e-4 and abs(plain_score - expected) < 1e-4
        raw = stock_next_logits(stock, inputs, 1.0)
        expected_raw.append(torch.softmax(torch.stack([raw[yes], raw[no]]), 0)[0].item())
        raw_scores.append(expected)
    # The penalty is visible at this tolerance: the test tells "official" from "raw".
    assert np.abs(np.array(raw_scores) - np.array(expected_raw)).max() > 1e-3
    raw_reranker = Reranker(reranker.backbone, repetition_penalty=1.0)
    np.testing.assert_allclose(raw_reranker.score(query, candidates, "Find it."), expected_raw, atol=1e-4)


def test_raw_mode_reads_the_logits_unchanged(checkpoint, reranker, pairs):
    query, candidates, *_ = pairs
    raw = Reranker.from_pretrained(checkpoint, device="cpu", rerank_scores="raw")
    assert raw.settings.rerank_scores == "raw" and raw.repetition_penalty == 1.0
    unpenalised = Reranker(reranker.backbone, repetition_penalty=1.0)
    np.testing.assert_allclose(raw.score(query, candidates), unpenalised.score(query, candidates), atol=1e-6)


def test_official_score_equals_generate_scores(reranker, stock, pairs):
    import torch

    query, candidates, query_part, parts, images = pairs
    tokenizer = stock[1]
    yes, no = (tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("Yes", "No"))
    official = reranker.score(query, candidates, "Find it.")
    for candidate_part, paths, score in zip(parts, images, official):
        inputs = stock_inputs(stock, pointwise_text(query_part, candidate_part), paths)
        with torch.inference_mode():
            out = stock[0].generate(**inputs, do_sample=False, output_scores=True, return_dict_in_generate=True,
                                    max_new_tokens=1, repetition_penalty=PENALTY)
        first = out.scores[0][0].float()
        assert abs(torch.softmax(torch.stack([first[yes], first[no]]), 0)[0].item() - score) < 1e-4


def test_a_checkpoint_without_a_penalty_scores_raw(tiny_checkpoint):
    reranker = Reranker.from_pretrained(tiny_checkpoint, device="cpu")
    assert reranker.checkpoint_penalty == 1.0 and reranker.repetition_penalty == 1.0
    assert reranker.score("a cat", []).shape == (0,)


# -- listwise -----------------------------------------------------------------------------------


def test_pick_reads_the_digits_after_ans(reranker, stock, image_files):
    import torch

    query = Item(text="a cat")
    candidates = [Item(text="a dog"), Item(images=[image_files[1]]), Item(text="a tabby cat", images=[image_files[2]])]
    text = (HEAD + LISTWISE + "Query:A cat.Candidates:(1) A dog.(2) " + IMG + "(3) " + IMG + "A tabby cat." + TAIL
            + "Ans: (")
    inputs = stock_inputs(stock, text, [image_files[1], image_files[2]])
    tokenizer = stock[1]
    digits = [tokenizer(d, add_special_tokens=False)["input_ids"][0] for d in ("1", "2", "3")]
    for penalty, picker in ((PENALTY, reranker), (1.0, Reranker(reranker.backbone, repetition_penalty=1.0))):
        logits = stock_next_logits(stock, inputs, penalty)
        expected = torch.softmax(logits[digits], 0).numpy()
        best, probabilities = picker.pick(query, candidates)
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)
        assert best == int(expected.argmax())


def test_pick_refuses_an_empty_list(reranker):
    with pytest.raises(ValueError, match="at least one candidate"):
        reranker.pick("a cat", [])


def test_long_lists_are_windowed_and_ranked(reranker):
    candidates = [f"candidate number {n}" for n in range(12)]  # more than 9: windows
    best, probabilities = reranker.pick("a cat", candidates)
    assert probabilities.shape == (12,) and abs(probabilities.sum() - 1) < 1e-5
    assert best == int(probabilities.argmax())
    order, again = reranker.rank_listwise("a cat", candidates)
    assert sorted(order) == list(range(12)) and order[0] == best
    np.testing.assert_allclose(again, probabilities)
    # Windows of 3 (a tournament of 4 + 2 rounds) still give a full distribution.
    best3, probabilities3 = reranker.pick("a cat", candidates, window=3)
    assert abs(probabilities3.sum() - 1) < 1e-5 and best3 == int(probabilities3.argmax())


def test_a_list_within_one_window_is_one_prompt(reranker):
    calls = []
    original = reranker._listwise_log_probs

    def spy(query, prompts, sizes, **kwargs):
        calls.append(sizes)
        return original(query, prompts, sizes, **kwargs)

    reranker._listwise_log_probs = spy
    try:
        reranker.pick("a cat", ["a", "b", "c", "d", "e", "f", "g", "h", "i"])
        reranker.pick("a cat", [str(n) for n in range(10)])
    finally:
        del reranker._listwise_log_probs
    assert calls == [[9], [5, 5], [2]]


def test_listwise_token_limit_windows_the_list(reranker):
    short = Reranker(reranker.backbone, listwise_max_tokens=len(reranker._listwise_input(
        Item(text="a cat"), [Item(text="candidate number 1"), Item(text="candidate number 2")], None).input_ids))
    calls = []
    original = short._listwise_log_probs
    short._listwise_log_probs = lambda q, p, sizes, **kw: calls.append(sizes) or original(q, p, sizes, **kw)
    short.pick("a cat", [f"candidate number {n}" for n in range(4)])
    assert all(size <= 2 for sizes in calls for size in sizes)


def test_fuse():
    np.testing.assert_allclose(fuse([0.8, 0.2], [0.4, 1.0]), [0.6, 0.6])
    np.testing.assert_allclose(fuse([0.8], [0.4], alpha=1.0), [0.8])
    np.testing.assert_allclose(fuse([0.8], [0.4], alpha=0.0), [0.4])
