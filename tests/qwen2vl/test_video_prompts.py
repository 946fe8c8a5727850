"""Video items through the whole retriever: the spec's prompt strings, token counts and grids."""

from __future__ import annotations

import numpy as np
import pytest

from lamra import Item, Retriever
from lamra.qwen2vl.prompts import render_prompt
from lamra.qwen2vl.video import Video

HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
TAIL = "<|im_end|>\n<|im_start|>assistant\n<emb>.<|im_end|>\n<|im_start|>assistant\n"
VID = "<|vision_start|><|video_pad|><|vision_end|>"


def frames(tmp_path, count, size=(64, 48)):
    from PIL import Image

    paths = []
    for number in range(count):
        path = tmp_path / f"f{number}.png"
        Image.new("RGB", size, (30 * number % 255, 100, 200)).save(path)
        paths.append(path)
    return paths


def test_video_prompts_match_the_spec(tmp_path):
    clip = Video.from_value(frames(tmp_path, 4))
    assert render_prompt(Item(video=clip)) == HEAD + VID + "\nSummarize above video in one word: " + TAIL
    assert render_prompt(Item(text="a dog runs", video=clip)) == (
        HEAD + VID + "A dog runs.\nSummarize above video and sentence in one word: " + TAIL)


def test_video_tokens_and_grid_follow_the_spec(tmp_path, tiny_checkpoint, qwen_tokenizer):
    retriever = Retriever.from_pretrained(tiny_checkpoint, device="cpu")
    # 5 frames of 64x48: padded to 6 (even); per-frame bounds [128*784, min(768*784, 24576*784/6*2)],
    # smart_resize(48, 64) with min 100352 pixels -> 280 x 392 (h x w): 20 x 28 patches of 14.
    # grid = (6 / 2, 20, 28) = (3, 20, 28); tokens = 3 * 20 * 28 / 4 = 420.
    item = Item(video=frames(tmp_path, 5))
    ids = retriever.tokenize(item)
    video_pad = retriever.backbone.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert ids.count(video_pad) == 420
    prompt = retriever.processor.embedding_input(item)
    batch = retriever.processor.collate([prompt])
    assert batch["video_grid_thw"].tolist() == [[3, 20, 28]]
    assert batch["pixel_values_videos"].shape == (3 * 20 * 28, 3 * 2 * 14 * 14)
    vectors = retriever.encode([item, Item(text="a dog", video=frames(tmp_path, 4)), "a dog"], show_progress=False)
    assert vectors.shape == (3, retriever.dim) and np.isfinite(vectors).all()
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-4


def test_video_field_in_a_jsonl_record(tmp_path):
    from lamra.items import as_item

    paths = frames(tmp_path, 2)
    item = as_item({"id": "v1", "text": "clip", "video": [p.name for p in paths]}, base_dir=tmp_path)
    assert item.videos and item.videos[0].source == tuple(paths) and item.modality == "video,text"
    with pytest.raises(Exception, match="video"):
        as_item({"id": "v2", "video": 3})
