"""Caption <-> image sets: ShareGPT4V, Urban-1K, Flickr30K (1K test). One image embedding serves
both directions, so the images carry the i->t instruction and the t->i captions none (quirk kept)."""

from __future__ import annotations

from pathlib import Path

from .base import Entry, Side, Task, ZeroShotSet, entry_label, expect, fail, get, load_json, need_file
from .prompts import (
    CAPTION_IMAGE,
    IMAGE_CAPTION,
    SUMMARIZE_IMAGE_TEXT,
    SUMMARIZE_TEXT,
    URBAN_IMAGE_CAPTION,
    URBAN_MAX_PIXELS,
)

RECALLS = ("R@1", "R@5", "R@10")


def _paired_set(name: str, images: list[Path], captions: list[str], image_of_caption: list[int], *,
                image_instruction: str, image_source: Path, caption_source: Path,
                max_pixels: int | None = None) -> ZeroShotSet:
    image_side = Side("images", [Entry(str(i), (path, image_instruction, SUMMARIZE_IMAGE_TEXT))
                                 for i, path in enumerate(images)], image_source)
    text_side = Side("texts", [Entry(str(j), (f"{caption}{SUMMARIZE_TEXT}",)) for j, caption in enumerate(captions)],
                     caption_source)
    captions_of_image: list[list[int]] = [[] for _ in images]
    for j, i in enumerate(image_of_caption):
        captions_of_image[i].append(j)
    t2i = Task("t2i", "texts", "images", RECALLS, [[i] for i in image_of_caption],
               rerank_queries=[(f"{CAPTION_IMAGE} {caption}",) for caption in captions],
               rerank_candidates=[(path,) for path in images])
    i2t = Task("i2t", "images", "texts", RECALLS, captions_of_image,
               rerank_queries=[(path, IMAGE_CAPTION) for path in images],
               rerank_candidates=[(caption,) for caption in captions])
    return ZeroShotSet(name, {"images": image_side, "texts": text_side}, [t2i, i2t], max_pixels=max_pixels)


def read_sharegpt4v(root: Path) -> ZeroShotSet:
    """sharegpt4v/datas_for_validation.json ({image_name, caption} list), images in sharegpt4v/val_data."""
    path = root / "sharegpt4v" / "datas_for_validation.json"
    records = expect(load_json(path, what="ShareGPT4V validation file"), list, path)
    images, captions = [], []
    for number, record in enumerate(records):
        label = entry_label(number)
        name = get(record, "image_name", str, path, item=label)
        captions.append(get(record, "caption", str, path, item=label))
        images.append(need_file(root / "sharegpt4v" / "val_data" / name, what="image", source=path, item=label,
                                field="image_name"))
    return _paired_set("sharegpt4v", images, captions, list(range(len(images))), image_instruction=IMAGE_CAPTION,
                       image_source=path, caption_source=path)


def urban1k_folder(root: Path) -> Path:
    """The scripts' ``Urban1k`` (the README writes ``Urban1K``; either is taken)."""
    for name in ("Urban1k", "Urban1K"):
        if (root / name).is_dir():
            return root / name
    return root / "Urban1k"


def read_urban1k(root: Path) -> ZeroShotSet:
    """Urban1k/caption/{i}.txt (first line, stripped) and Urban1k/image/{i}.jpg, i = 1..N (1000);
    images embedded at qwen_vl_utils' default cap, as the official run did."""
    folder = urban1k_folder(root)
    caption_dir = folder / "caption"
    if not caption_dir.is_dir():
        raise fail("missing Urban-1K caption folder", caption_dir)
    numbers = sorted(int(p.stem) for p in caption_dir.glob("*.txt") if p.stem.isdigit())
    if not numbers:
        raise fail("no {i}.txt captions", caption_dir)
    images, captions = [], []
    for i in range(1, numbers[-1] + 1):
        text_path = need_file(caption_dir / f"{i}.txt", what=f"caption {i} of 1..{numbers[-1]}")
        lines = text_path.read_text(encoding="utf-8").splitlines()
        if not lines:
            raise fail("empty caption file", text_path, line=1, field="caption")
        captions.append(lines[0].strip())
        images.append(need_file(folder / "image" / f"{i}.jpg", what="image", source=text_path, line=1,
                                field="image"))
    return _paired_set("urban1k", images, captions, list(range(len(images))),
                       image_instruction=URBAN_IMAGE_CAPTION, image_source=caption_dir / "1.txt",
                       caption_source=caption_dir / "1.txt", max_pixels=URBAN_MAX_PIXELS)


def read_flickr(root: Path) -> ZeroShotSet:
    """flickr/flickr_text.json (5 captions per image, in image order) and flickr/images/{i}.png."""
    path = root / "flickr" / "flickr_text.json"
    captions = expect(load_json(path, what="Flickr30K caption file"), list, path)
    for number, caption in enumerate(captions):
        expect(caption, str, path, item=entry_label(number))
    if not captions or len(captions) % 5:
        raise fail(f"{len(captions)} captions: Flickr30K has 5 per image (5000 for the 1K test)", path)
    images = [need_file(root / "flickr" / "images" / f"{i}.png", what="image", source=path,
                        item=entry_label(5 * i), field="image") for i in range(len(captions) // 5)]
    return _paired_set("flickr30k", images, captions, [j // 5 for j in range(len(captions))],
                       image_instruction=IMAGE_CAPTION, image_source=path, caption_source=path)
