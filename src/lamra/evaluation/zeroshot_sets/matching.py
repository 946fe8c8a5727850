"""Image-text matching with a hard negative caption: CC-Neg and Sugar-Crepe (7 subsets). An image
is right when its caption scores strictly above its negative (a tie is wrong: official ``>``)."""

from __future__ import annotations

from pathlib import Path

from .base import Entry, Side, Task, ZeroShotSet, entry_label, expect, fail, get, load_json, need_file
from .prompts import (
    IMAGE_CAPTION,
    MATCHING_RERANK_K,
    RERANK_WEIGHT,
    SUGAR_CREPE_RERANK_WEIGHT,
    SUMMARIZE_IMAGE,
    SUMMARIZE_TEXT,
)

CCNEG_SAMPLES = 40_000  # the official split: the last 40,000 items of the file
CCNEG_PREFIX = "/workspace/datasets/cc3m/"  # rewritten to ROOT/ccneg/ (datasets_ccneg.py L5-6, L22)
SUGAR_CREPE_SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")


def _matching(task: str, images: list[Path], pairs: list[tuple[str, str]], source: Path,
              weight: float = RERANK_WEIGHT, prefix: str = "") -> tuple[dict[str, Side], Task]:
    """Images i against texts [caption_0, negative_0, caption_1, ...] (interleaved, as official)."""
    texts = [text for pair in pairs for text in pair]
    image_side = Side(f"{prefix}images", [Entry(str(i), (image, SUMMARIZE_IMAGE)) for i, image in enumerate(images)],
                      source)
    text_side = Side(f"{prefix}texts", [Entry(str(j), (f"{text}{SUMMARIZE_TEXT}",)) for j, text in enumerate(texts)],
                     source)
    result = Task(task, image_side.name, text_side.name, ("ITM",), [[2 * i] for i in range(len(images))],
                  lists=[[2 * i, 2 * i + 1] for i in range(len(images))],
                  rerank_queries=[(image, IMAGE_CAPTION) for image in images],
                  rerank_candidates=[(text,) for text in texts], rerank_k=MATCHING_RERANK_K,
                  rerank_weight=weight)
    return {image_side.name: image_side, text_side.name: text_side}, result


def read_ccneg(root: Path) -> ZeroShotSet:
    """ccneg/ccneg_preprocessed.pt (torch.save of image_paths and annotations): the last 40,000,
    commas removed from each negative prompt (official)."""
    import torch

    path = need_file(root / "ccneg" / "ccneg_preprocessed.pt", what="CC-Neg file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle torch refuses, or a broken file
        raise fail(f"cannot be read by torch.load ({type(exc).__name__}: {exc})", path) from None
    paths = get(data, "image_paths", list, path, item="top level")
    annotations = get(data, "annotations", list, path, item="top level")
    if len(paths) != len(annotations):
        raise fail(f"{len(paths)} image paths but {len(annotations)} annotations", path, field="annotations")
    start = max(0, len(paths) - CCNEG_SAMPLES)
    images, pairs = [], []
    for number in range(start, len(paths)):
        label = entry_label(number)
        raw = expect(paths[number], str, path, item=label, field="image_paths")
        image = Path(raw.replace(CCNEG_PREFIX, str(root / "ccneg") + "/"))
        image = image if image.is_absolute() else root / "ccneg" / image
        images.append(need_file(image, what="image", source=path, item=label, field="image_paths"))
        record = annotations[number]
        caption = get(get(record, "json", dict, path, item=label), "caption", str, path, item=label)
        negative = get(get(record, "sop_data", dict, path, item=label), "negative-prompt", str, path, item=label)
        pairs.append((caption, negative.replace(",", "")))
    sides, task = _matching("ccneg", images, pairs, path)
    return ZeroShotSet("ccneg", sides, [task])


def read_sugar_crepe(root: Path) -> ZeroShotSet:
    """sugar-crepe/data/{subset}.json ({key: {filename, caption, negative_caption}}) for the subsets
    found; images in sugar-crepe/images/val2017. Reranking fuses with weight 0.1 (official)."""
    folder = root / "sugar-crepe" / "data"
    found = [s for s in SUGAR_CREPE_SUBSETS if (folder / f"{s}.json").is_file()]
    if not found:
        raise fail("no Sugar-Crepe subset file", folder / f"{SUGAR_CREPE_SUBSETS[0]}.json")
    sides, tasks = {}, []
    for subset in found:
        path = folder / f"{subset}.json"
        records = expect(load_json(path, what=f"Sugar-Crepe {subset} file"), dict, path)
        images, pairs = [], []
        for key, record in records.items():
            name = get(record, "filename", str, path, item=key)
            images.append(need_file(root / "sugar-crepe" / "images" / "val2017" / name, what="image", source=path,
                                    item=key, field="filename"))
            pairs.append((get(record, "caption", str, path, item=key),
                          get(record, "negative_caption", str, path, item=key)))
        subset_sides, task = _matching(subset, images, pairs, path,
                                       weight=SUGAR_CREPE_RERANK_WEIGHT, prefix=f"{subset}_")
        sides.update(subset_sides)
        tasks.append(task)
    return ZeroShotSet("sugar-crepe", sides, tasks, mean="ITM mean of the subsets (ours: the official code reports "
                                                          "each subset alone)")
