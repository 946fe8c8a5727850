"""Queries that read a sequence: VIST (a story's captions and images), VisDial (a dialog) and
multi-round FashionIQ (reference images with their modifications)."""

from __future__ import annotations

from pathlib import Path

from .base import Entry, Side, Task, ZeroShotSet, entry_label, expect, fail, get, load_json, need_file
from .prompts import (
    FASHION,
    SUMMARIZE_IMAGE,
    SUMMARIZE_IMAGE_TEXT,
    SUMMARIZE_MULTI,
    SUMMARIZE_TEXT,
    VISDIAL,
    VISDIAL_RERANK,
    VIST,
)

RECALLS = ("R@1", "R@5", "R@10")
FORMATS = ("official", "lamra")


def _vist_image(folder: Path, photo: str, source: Path, label: str) -> Path:
    for suffix in (".jpg", ".png"):
        if (folder / f"{photo}{suffix}").is_file():
            return folder / f"{photo}{suffix}"
    return need_file(folder / f"{photo}.gif", what="image (.jpg, .png or .gif)", source=source, item=label,
                     field="photo_flickr_id")


def read_vist(root: Path, format: str = "lamra") -> ZeroShotSet:
    """vist/sis/val.story-in-sequence.json: stories in file order; the query shows the context
    captions and images, then the last caption; the pool is every photo of the file, the
    query's context photos masked.

    ``format="lamra"`` (the default) shows every context pair, as the instruction and the official
    rerank prompt do. ``"official"``: as datasets_vist.py L84 does, ``zip(captions[:-1], images[:-1])`` where
    ``images`` already holds only the context photos, so the last context caption and photo are
    dropped (a plain bug, kept only to reproduce the paper's VIST row).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    path = root / "vist" / "sis" / "val.story-in-sequence.json"
    data = load_json(path, what="VIST story-in-sequence file")
    stories: dict[str, list[tuple[str, str]]] = {}
    photos: dict[str, str] = {}
    for number, group in enumerate(get(data, "annotations", list, path, item="top level")):
        label = entry_label(number)
        if not isinstance(group, list) or len(group) != 1:
            raise fail("must be a list of one annotation", path, item=label, field="annotations")
        record = group[0]
        story = str(get(record, "story_id", (str, int), path, item=label))
        text = get(record, "text", str, path, item=label)
        photo = str(get(record, "photo_flickr_id", (str, int), path, item=label))
        stories.setdefault(story, []).append((text, photo))
        photos.setdefault(photo, label)
    folder = root / "vist" / "images" / "val"
    names = sorted(photos)
    image_of = {photo: _vist_image(folder, photo, path, photos[photo]) for photo in names}
    position = {photo: i for i, photo in enumerate(names)}
    queries, rerank_queries, masked, positives = [], [], [], []
    for story, entries in stories.items():
        if len(entries) < 2:
            raise fail("a story needs a context and a last caption; this one has one entry", path, item=story,
                       field="story_id")
        captions = [text for text, _ in entries]
        context = [image_of[photo] for _, photo in entries[:-1]]
        shown = context[:-1] if format == "official" else context
        parts = [VIST]
        for caption, image in zip(captions[:-1], shown):
            parts += [caption, image]
        queries.append(Entry(story, (*parts, captions[-1], SUMMARIZE_MULTI)))
        rerank = [VIST]
        for caption, image in zip(captions[:-1], context):
            rerank += [caption, image]
        rerank_queries.append((*rerank, captions[-1]))
        masked.append([position[photo] for _, photo in entries[:-1]])
        positives.append([position[entries[-1][1]]])
    images = Side("images", [Entry(photo, (image_of[photo], SUMMARIZE_IMAGE)) for photo in names], path)
    task = Task("last_image", "queries", "images", RECALLS, positives, masked=masked, rerank_queries=rerank_queries,
                rerank_candidates=[(image_of[photo],) for photo in names])
    name = "vist" if format == "lamra" else "vist (official format)"
    return ZeroShotSet(name, {"queries": Side("queries", queries, path), "images": images}, [task])


def read_visdial(root: Path) -> ZeroShotSet:
    """visdial/visdial_1.0_val.json: each dialog's rounds as "Q: q? A: a." joined by spaces (the
    caption is not used); the pool is every dialog's image."""
    path = root / "visdial" / "visdial_1.0_val.json"
    data = get(load_json(path, what="VisDial val file"), "data", dict, path, item="top level")
    questions = get(data, "questions", list, path, item="data")
    answers = get(data, "answers", list, path, item="data")
    texts, images = [], []
    for number, dialog in enumerate(get(data, "dialogs", list, path, item="data")):
        label = f"dialog {number}"
        image_id = get(dialog, "image_id", (int, str), path, item=label)
        rounds = []
        for turn in get(dialog, "dialog", list, path, item=label):
            for key, table, mark in (("question", questions, "Q: {}?"), ("answer", answers, "A: {}.")):
                index = get(turn, key, int, path, item=label)
                if not 0 <= index < len(table):
                    raise fail(f"index {index} is outside data.{key}s (0..{len(table) - 1})", path, item=label,
                               field=key)
                rounds.append(mark.format(expect(table[index], str, path, item=f"data.{key}s[{index}]")))
        texts.append(" ".join(rounds))
        images.append(need_file(root / "visdial" / "VisualDialog_val2018" /
                                f"VisualDialog_val2018_{str(image_id).rjust(12, '0')}.jpg",
                                what="image", source=path, item=label, field="image_id"))
    queries = Side("dialogs", [Entry(str(i), (f"{VISDIAL} {text}{SUMMARIZE_TEXT}",)) for i, text in enumerate(texts)],
                   path)
    pool = Side("images", [Entry(str(i), (image, SUMMARIZE_IMAGE)) for i, image in enumerate(images)], path)
    task = Task("t2i", "dialogs", "images", RECALLS, [[i] for i in range(len(texts))],
                rerank_queries=[(f"{VISDIAL_RERANK} {text}",) for text in texts],
                rerank_candidates=[(image,) for image in images])
    return ZeroShotSet("visdial", {"dialogs": queries, "images": pool}, [task])


def read_fashion(root: Path) -> ZeroShotSet:
    """multiturnfashion/data/all.val.json (turns: [_, modifications, image name]; target [_, name])
    over the names of multiturnfashion/image_splits/split.all.val.json, images from M-BEIR's
    fashioniq_images. References stay in the pool (official)."""
    query_path = root / "multiturnfashion" / "data" / "all.val.json"
    pool_path = root / "multiturnfashion" / "image_splits" / "split.all.val.json"
    folder = root / "M-BEIR" / "mbeir_images" / "fashioniq_images"
    records = expect(load_json(query_path, what="multi-round FashionIQ queries"), list, query_path)
    names = expect(load_json(pool_path, what="multi-round FashionIQ image list"), list, pool_path)
    position = {}
    for number, name in enumerate(names):
        position.setdefault(expect(name, str, pool_path, item=entry_label(number)), number)

    def image(name, source, label, field):
        return need_file(folder / f"{name}.jpg", what="image", source=source, item=label, field=field)

    pool = [image(name, pool_path, entry_label(n), "name") for n, name in enumerate(names)]
    queries, rerank_queries, positives = [], [], []
    for number, record in enumerate(records):
        label = entry_label(number)
        turns = []
        for turn in get(record, "reference", list, query_path, item=label):
            if not isinstance(turn, list) or len(turn) < 3 or not isinstance(turn[1], list) \
                    or not isinstance(turn[2], str):
                raise fail("each turn must be [_, [modifications], image name]", query_path, item=label,
                           field="reference")
            text = " and ".join(expect(t, str, query_path, item=label, field="reference") for t in turn[1] if t != "")
            turns += [image(turn[2], query_path, label, "reference"), text]
        target = get(record, "target", list, query_path, item=label)
        if len(target) < 2 or not isinstance(target[1], str):
            raise fail("must be [_, target image name]", query_path, item=label, field="target")
        queries.append(Entry(str(number), (FASHION, *turns, SUMMARIZE_IMAGE_TEXT)))  # singular suffix: official
        rerank_queries.append((FASHION, *turns))
        positives.append([position[target[1]]] if target[1] in position else [])  # absent: a miss (official)
    sides = {"queries": Side("queries", queries, query_path),
             "images": Side("images", [Entry(name, (path, SUMMARIZE_IMAGE)) for name, path in zip(names, pool)],
                            pool_path)}
    task = Task("multi_turn", "queries", "images", ("R@5", "R@8", "R@10"), positives, rerank_queries=rerank_queries,
                rerank_candidates=[(path,) for path in pool])
    return ZeroShotSet("fashioniq-multiturn", sides, [task])
