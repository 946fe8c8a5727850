"""Prompt rendering against the spec's strings and the real Qwen2-VL tokenizer and template."""

from __future__ import annotations

from pathlib import Path

import pytest

from lamra.items import Item
from lamra.qwen2vl.prompts import EMB_TOKEN, embedding_messages, format_text, render_chat, render_prompt, truncate_text

HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
TAIL = "<|im_end|>\n<|im_start|>assistant\n<emb>.<|im_end|>\n<|im_start|>assistant\n"
IMG = "<|vision_start|><|image_pad|><|vision_end|>"
PIC = Path("picture.jpg")


@pytest.mark.parametrize(
    "item, instruction, user",
    [
        ("a dog on grass", None, "A dog on grass.\nSummarize above sentence in one word: "),
        (Item(images=[PIC]), None, IMG + "\nSummarize above image in one word: "),
        (Item(text="red car", images=[PIC]), None, IMG + "Red car.\nSummarize above image and sentence in one word: "),
        # An image-only query becomes image + instruction text.
        (Item(images=[PIC]), "Find a caption for the news in the given photo.",
         IMG + "Find a caption for the news in the given photo.\nSummarize above image and sentence in one word: "),
        ("who won the race?", "Retrieve passages.",
         "Retrieve passages. who won the race?\nSummarize above sentence in one word: "),
        # Several images: the official multi-image form, raw texts, plural wording.
        (Item(images=[PIC, PIC, PIC]), None, IMG * 3 + "\nSummarize above images and sentences in one word: "),
        (Item(text="a clip", images=[PIC, PIC]), None,
         IMG * 2 + "a clip\nSummarize above images and sentences in one word: "),
        (Item.interleaved(["before", PIC, "after", PIC]), None,
         "before" + IMG + "after" + IMG + "\nSummarize above images and sentences in one word: "),
        # Visual Storytelling as the official code renders it: task text, caption_i, image_i, ..., caption_n.
        (Item.interleaved(["the family went out", PIC, "they ate cake", PIC, "then they slept"]),
         "I will provide you with a series of images and captions from a story, and I need you to retrieve the "
         "image corresponding to the last caption.",
         "I will provide you with a series of images and captions from a story, and I need you to retrieve the "
         "image corresponding to the last caption.the family went out" + IMG + "they ate cake" + IMG
         + "then they slept\nSummarize above images and sentences in one word: "),
    ],
)
def test_rendered_prompt_matches_spec(item, instruction, user):
    assert render_prompt(item, instruction) == HEAD + user + TAIL


def test_spec_text_only_example_character_for_character():
    spec = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nTXT\nSummarize above "
            "sentence in one word: <|im_end|>\n<|im_start|>assistant\n<emb>.<|im_end|>\n<|im_start|>assistant\n")
    assert render_prompt("TXT") == spec.replace("TXT\n", "TXT.\n")
    assert render_chat(embedding_messages("TXT.")) == spec.replace("TXT\n", "TXT.\n")


def test_cut_prompt_stops_before_emb():
    full = render_prompt("a cat")
    cut = render_prompt("a cat", cut_at_emb=True)
    assert full.startswith(cut) and full[len(cut):].startswith(EMB_TOKEN)
    assert cut.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("", ""), (None, ""), ("  hello world  ", "Hello world."), ('"quoted text"', "Quoted text."),
        ("line\r\nbreak", "Line\nbreak."), ("is it?", "Is it?"), ("wow!", "Wow!"), ("done.", "Done."),
        ("   ", ""), ('""', ""), ("éclair", "Éclair."),
    ],
)
def test_format_text(raw, expected):
    assert format_text(raw) == expected


def test_real_template_renders_the_same(qwen_tokenizer):
    """The Qwen2-VL chat template (as checkpoints ship it) gives our exact string."""
    for item in ["a dog", Item(images=[PIC]), Item(text="red", images=[PIC, PIC]), Item.interleaved(["a", PIC, "b"])]:
        messages = embedding_messages(item, "Find it.")
        for message in messages:
            for part in message["content"]:
                part.pop("image", None)  # the template only needs the type
        by_template = qwen_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert by_template == render_prompt(item, "Find it.")


def test_real_tokenizer_ids(qwen_tokenizer):
    assert qwen_tokenizer("Hello world!")["input_ids"] == [9707, 1879, 0]
    expected = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
                "<|vision_end|>": 151653, "<|image_pad|>": 151655, "<|video_pad|>": 151656}
    for token, token_id in expected.items():
        assert qwen_tokenizer.convert_tokens_to_ids(token) == token_id


def test_emb_token_added_after_last_token(tmp_path, qwen_tokenizer):
    from lamra.qwen2vl.processor import load_tokenizer

    qwen_tokenizer.save_pretrained(tmp_path)
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer.convert_tokens_to_ids("<emb>") == 151657
    # A checkpoint saved with <emb> keeps it at its id (not added twice).
    tokenizer.save_pretrained(tmp_path / "again")
    assert load_tokenizer(tmp_path / "again").convert_tokens_to_ids("<emb>") == 151657
    assert len(load_tokenizer(tmp_path / "again")) == 151658


def test_pooled_position_is_token_before_emb(tmp_path, qwen_tokenizer):
    import torch

    from lamra.qwen2vl.processor import load_tokenizer
    from lamra.retriever.pooling import last_positions, positions_before_token

    qwen_tokenizer.save_pretrained(tmp_path)
    tokenizer = load_tokenizer(tmp_path)
    emb = tokenizer.convert_tokens_to_ids("<emb>")
    full = tokenizer(render_prompt("A dog runs."), add_special_tokens=False)["input_ids"]
    cut = tokenizer(render_prompt("A dog runs.", cut_at_emb=True), add_special_tokens=False)["input_ids"]
    position = int(positions_before_token(torch.tensor([full]), emb)[0])
    assert full[position + 1] == emb
    assert tokenizer.decode(full[position - 2: position + 1]) == "<|im_start|>assistant\n"
    # The cut prompt is the full one up to that position: its last token is the pooled one.
    assert cut == full[: position + 1]
    assert int(last_positions(torch.ones(1, len(cut), dtype=torch.long))[0]) == position


def test_truncation_to_480_tokens(qwen_tokenizer):
    long_text = " ".join(f"word{i}" for i in range(2000))
    cut = truncate_text(long_text, qwen_tokenizer, 480)
    ids = qwen_tokenizer(long_text, add_special_tokens=False)["input_ids"]
    assert cut == qwen_tokenizer.decode(ids[:480])  # exactly the first 480 tokens: none lost at the cut
    assert len(qwen_tokenizer(cut, add_special_tokens=False)["input_ids"]) == 480
    assert long_text.startswith(cut)
    assert truncate_text("short text", qwen_tokenizer, 480) == "short text"
