"""Vectors against an independent computation written from the spec (section 2), not from lamra.

The reference below renders the full LamRA prompt by hand, tokenizes it, expands each image
placeholder with transformers' own smart_resize, runs the plain transformers decoder with
explicit 1-D positions and pools the state just before ``<emb>``. lamra must agree to 1e-5,
and must differ from what Qwen2-VL's default M-RoPE gives (so the test can tell them apart).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lamra import Item, Retriever

HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
TAIL = "<|im_end|>\n<|im_start|>assistant\n<emb>.<|im_end|>\n<|im_start|>assistant\n"
IMG = "<|vision_start|><|image_pad|><|vision_end|>"


def reference_vector(retriever, prompt: str, images: list, *, mrope: bool = False) -> np.ndarray:
    """Plain transformers: full prompt, pool before <emb>, 1-D positions (or the model's M-RoPE)."""
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (Qwen2VLImageProcessorPil,
                                                                              smart_resize)

    tokenizer = retriever.backbone.tokenizer
    model = retriever.backbone.model
    pictures = [Image.open(path).convert("RGB") for path in images]
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    counts = []
    for picture in pictures:
        height, width = smart_resize(picture.height, picture.width, factor=28, min_pixels=4 * 28 * 28,
                                     max_pixels=300 * 28 * 28)
        counts.append((height // 14) * (width // 14) // 4)
    expanded, images_left = [], iter(counts)
    for token in ids:
        expanded.extend([pad] * next(images_left) if token == pad else [token])
    input_ids = torch.tensor([expanded])
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if pictures:
        processor = Qwen2VLImageProcessorPil(min_pixels=4 * 28 * 28, max_pixels=300 * 28 * 28)
        pixels = processor(images=pictures, return_tensors="pt")
        inputs.update(pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"])
    if mrope:
        inputs["mm_token_type_ids"] = (input_ids == pad).int()
    else:
        inputs["position_ids"] = torch.arange(input_ids.shape[1]).view(1, 1, -1).expand(3, 1, -1)
    with torch.no_grad():
        hidden = model.model(**inputs).last_hidden_state[0]
    emb = tokenizer.convert_tokens_to_ids("<emb>")
    position = expanded.index(emb) - 1
    vector = hidden[position].float()
    return (vector / vector.norm()).numpy()


def lamra_vector(retriever, item, instruction=None) -> np.ndarray:
    return retriever.encode([item], instruction=instruction, show_progress=False)[0]


@pytest.fixture(scope="module")
def retriever(tiny_checkpoint):
    return Retriever.from_pretrained(tiny_checkpoint, device="cpu")


def test_image_item_matches_plain_transformers_with_1d_positions(retriever, image_files):
    prompt = HEAD + IMG + "\nSummarize above image in one word: " + TAIL
    expected = reference_vector(retriever, prompt, [image_files[1]])
    got = lamra_vector(retriever, Item(images=[image_files[1]]))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    mrope = reference_vector(retriever, prompt, [image_files[1]], mrope=True)
    assert np.abs(got - mrope).max() > 1e-4


def test_text_and_image_query_matches(retriever, image_files):
    prompt = (HEAD + IMG + "Find a fashion image that aligns with the reference image and style note. is "
              "darker.\nSummarize above image and sentence in one word: " + TAIL)
    expected = reference_vector(retriever, prompt, [image_files[2]])
    got = lamra_vector(retriever, Item(text="is darker", images=[image_files[2]]),
                       "Find a fashion image that aligns with the reference image and style note.")
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(got - reference_vector(retriever, prompt, [image_files[2]], mrope=True)).max() > 1e-4


def test_two_image_item_matches(retriever, image_files):
    prompt = HEAD + "before" + IMG + "after" + IMG + "\nSummarize above images and sentences in one word: " + TAIL
    images = [image_files[0], image_files[3]]
    expected = reference_vector(retriever, prompt, images)
    got = lamra_vector(retriever, Item.interleaved(["before", images[0], "after", images[1]]))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(got - reference_vector(retriever, prompt, images, mrope=True)).max() > 1e-4


def test_text_only_is_the_same_under_both_position_modes(retriever, tiny_checkpoint):
    prompt = HEAD + "A dog on grass.\nSummarize above sentence in one word: " + TAIL
    got = lamra_vector(retriever, "a dog on grass")
    np.testing.assert_allclose(got, reference_vector(retriever, prompt, []), atol=1e-5)
    mrope = Retriever.from_pretrained(tiny_checkpoint, device="cpu", positions="mrope")
    np.testing.assert_allclose(lamra_vector(mrope, "a dog on grass"), got, atol=1e-5)


def test_mrope_mode_reproduces_the_models_own_positions(tiny_checkpoint, retriever, image_files):
    mrope = Retriever.from_pretrained(tiny_checkpoint, device="cpu", positions="mrope")
    prompt = HEAD + IMG + "\nSummarize above image in one word: " + TAIL
    expected = reference_vector(retriever, prompt, [image_files[1]], mrope=True)
    np.testing.assert_allclose(lamra_vector(mrope, Item(images=[image_files[1]])), expected, atol=1e-5)
    assert mrope.fingerprint() != retriever.fingerprint()
    assert mrope.fingerprint()["settings"]["positions"] == "mrope"


def test_padded_mixed_batch_equals_one_at_a_time(retriever, image_files):
    items = ["short", Item(images=[image_files[0]]), "a much longer sentence about many things " * 8,
             Item(text="with text", images=[image_files[3]]), Item(images=[image_files[1], image_files[2]])]
    together = retriever.encode(items, show_progress=False, sort_by_length=False, max_batch_tokens=None)
    alone = np.stack([lamra_vector(retriever, item) for item in items])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_candidate_over_1024_tokens_pools_its_1024th_token(retriever):
    """The official evaluation cuts the whole prompt at 1024 tokens and pools index -1."""
    text = " ".join(f"w{i}" for i in range(1500))
    prompt = HEAD + text[0].upper() + text[1:] + ".\nSummarize above sentence in one word: " + TAIL
    tokenizer, model = retriever.backbone.tokenizer, retriever.backbone.model
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert len(ids) > 1024
    kept = torch.tensor([ids[:1024]])
    with torch.no_grad():
        hidden = model.model(input_ids=kept, attention_mask=torch.ones_like(kept),
                             position_ids=torch.arange(1024).view(1, 1, -1).expand(3, 1, -1)).last_hidden_state
    expected = torch.nn.functional.normalize(hidden[0, -1], dim=-1).numpy()
    np.testing.assert_allclose(lamra_vector(retriever, text), expected, atol=1e-5)
    assert len(retriever.tokenize(text)) == 1024
    # A shorter cap is a setting, recorded in the fingerprint.
    assert retriever.fingerprint()["settings"]["max_tokens"] == 1024


def test_an_empty_text_candidate_is_embedded_as_the_empty_formatted_text(retriever):
    """Spec 6: a 'text' candidate with empty txt is embedded (the official code reads it as "")."""
    from lamra.data.mbeir import candidate_from_record

    record = {"did": "1:7", "txt": "", "img_path": None, "modality": "text", "src_content": None}
    candidate = candidate_from_record(record)
    prompt = HEAD + "\nSummarize above sentence in one word: " + TAIL
    got = lamra_vector(retriever, candidate.item("."))
    np.testing.assert_allclose(got, reference_vector(retriever, prompt, []), atol=1e-5)
    with pytest.raises(Exception, match="empty"):  # a user's empty item is still an error
        lamra_vector(retriever, Item(text=""))
