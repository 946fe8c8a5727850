"""Shared-prefix pointwise reranking: the query part once, its key/value cache reused, M-RoPE
positions continued - the same scores as one full forward per candidate (1e-4 in fp32)."""

from __future__ import annotations

import numpy as np
import pytest
from rerank_models import save_sharp_checkpoint

from lamra.items import Item
from lamra.reranker.forward import shared_prefix_length
from lamra.reranker.model import Reranker
from lamra.reranker.positions import mrope_positions


@pytest.fixture(scope="module")
def reranker(tmp_path_factory, small_tokenizer):
    folder = save_sharp_checkpoint(tmp_path_factory.mktemp("sharp"), small_tokenizer, repetition_penalty=1.05)
    return Reranker.from_pretrained(folder, device="cpu")


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """Two different images of the same size: the same token ids, different pixels."""
    from PIL import Image, ImageDraw

    folder = tmp_path_factory.mktemp("twins")
    paths = []
    for colour in ("purple", "orange"):
        image = Image.new("RGB", (84, 112), "white")
        ImageDraw.Draw(image).rectangle([10, 10, 70, 100], fill=colour)
        paths.append(folder / f"{colour}.png")
        image.save(paths[-1])
    return paths


def mixed_candidates(image_files, twins):
    return [
        Item(text="a green ellipse"),
        Item(text="a long text candidate that goes on about shapes, colours, sizes and a dog on the grass " * 3),
        Item(images=[image_files[1]]),
        Item(images=[image_files[3]]),  # a large image: many tokens
        Item(text="blue", images=[image_files[2]]),
        Item(images=[twins[0], twins[1]]),
        Item(text="x"),
        Item(text="x"),  # a duplicate: its whole prompt is shared but for the last token
        Item(text="Another: candidate!"),
    ]


QUERIES = {
    "text": lambda files: Item(text="a red circle"),
    "image": lambda files: Item(images=[files[0]]),
    "image+text": lambda files: Item(text="a red circle", images=[files[0]]),
    "two images": lambda files: Item(images=[files[2], files[0]]),
}


@pytest.mark.parametrize("kind", sorted(QUERIES))
def test_shared_prefix_equals_full_forwards(reranker, image_files, twins, kind):
    query = QUERIES[kind](image_files)
    candidates = mixed_candidates(image_files, twins)
    plain = reranker.yes_no_logits(query, candidates, "Find it.", shared_prefix=False, batch_size=4)
    for batch_size in (1, 3, 16):
        fast = reranker.yes_no_logits(query, candidates, "Find it.", batch_size=batch_size)
        np.testing.assert_allclose(fast.numpy(), plain.numpy(), atol=1e-4, rtol=0)
    # The model is sharp enough that these logits differ a lot from candidate to candidate.
    assert float(plain.std(dim=0).max()) > 0.1


def test_prefix_stops_before_candidate_images_that_tokenize_alike(reranker, twins):
    """Two same-size images give the same token ids; the prefix must not swallow the first."""
    query = Item(text="a square")
    candidates = [Item(images=[twins[0]]), Item(images=[twins[1]])]
    prompts = reranker._pointwise_inputs(query, candidates, None)
    assert prompts[0].input_ids == prompts[1].input_ids  # indistinguishable by ids
    length = shared_prefix_length(prompts, reranker.backbone, max_images=0)
    start = reranker.backbone.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert length == prompts[0].input_ids.index(start)
    fast = reranker.score(query, candidates)
    np.testing.assert_allclose(fast, reranker.score(query, candidates, shared_prefix=False), atol=1e-4)
    assert abs(fast[0] - fast[1]) > 1e-4  # different pixels, different scores


def test_one_candidate_and_no_candidates(reranker, image_files):
    query = Item(text="a dog", images=[image_files[0]])
    one = [Item(text="a brown dog")]
    np.testing.assert_allclose(reranker.score(query, one), reranker.score(query, one, shared_prefix=False), atol=1e-4)
    assert reranker.score(query, []).shape == (0,)


def test_positions_match_transformers_get_rope_index(reranker, image_files):
    """The position rule equals the stock model's, and continuing from a prefix's next position
    numbers a suffix as the whole sequence would."""
    import torch

    backbone = reranker.backbone
    candidate = Item(text="blue", images=[image_files[2]])
    query = Item(text="a red circle", images=[image_files[3], image_files[0]])
    prompt = reranker._pointwise_inputs(query, [candidate], None)[0]
    inputs = backbone.processor.collate([prompt], positions="mrope")
    expected, delta = backbone.language_model().get_rope_index(
        inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"])
    grids = inputs["image_grid_thw"].tolist()
    rule = dict(vision_token_ids=(backbone.image_token_id,), spatial_merge_size=backbone.merge_size)
    whole, after = mrope_positions(prompt.input_ids, grids, **rule)
    assert torch.equal(whole, expected[:, 0])
    assert after == len(prompt.input_ids) + int(delta[0, 0]) and int(delta[0, 0]) < 0
    start = backbone.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    spans = [index for index, token in enumerate(prompt.input_ids) if token == start]
    # Cut after one image, and after both query images (before the candidate's).
    for cut, images in ((spans[1] - 1, 1), (spans[2] - 2, 2)):
        head, head_next = mrope_positions(prompt.input_ids[:cut], grids[:images], **rule)
        tail, _ = mrope_positions(prompt.input_ids[cut:], grids[images:], start=head_next, **rule)
        assert torch.equal(torch.cat([head, tail], dim=1), expected[:, 0])
        assert head_next < cut  # images take fewer positions than tokens: the delta matters


def test_positions_reject_a_grid_that_does_not_fit():
    with pytest.raises(ValueError, match="needs"):
        mrope_positions([1, 9, 9, 9, 2], [(1, 4, 4)], vision_token_ids=(9,), spatial_merge_size=2)
    with pytest.raises(ValueError, match="no grid"):
        mrope_positions([1, 9, 2], [], vision_token_ids=(9,), spatial_merge_size=2)
    with pytest.raises(ValueError, match="more grids"):
        mrope_positions([1, 2], [(1, 2, 2)], vision_token_ids=(9,), spatial_merge_size=2)
