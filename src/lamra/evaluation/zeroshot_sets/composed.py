"""Composed image retrieval: CIRCO (a reference image and a change, over COCO unlabeled2017) and
GeneCIS (four tasks, each query ranked within its own gallery)."""

from __future__ import annotations

from pathlib import Path

from .base import Entry, Side, Task, ZeroShotSet, entry_label, expect, fail, get, load_json, need_file
from .prompts import CHANGES, CIRCO_RERANK, SAME_ATTRIBUTES, SUMMARIZE_IMAGE, SUMMARIZE_IMAGE_TEXT

CIRCO_CUTOFFS = (5, 10, 25, 50)
GENECIS_TASKS = ("change_object", "focus_object", "change_attribute", "focus_attribute")


def _circo_pool(root: Path) -> tuple[list[Entry], dict[str, int], Path]:
    path = root / "circo" / "annotations" / "image_info_unlabeled2017.json"
    info = load_json(path, what="CIRCO image list")
    images = get(info, "images", list, path, item="top level")
    entries, position = [], {}
    for number, record in enumerate(images):
        label = entry_label(number)
        name = get(record, "file_name", str, path, item=label)
        image_id = str(get(record, "id", (int, str), path, item=label))
        image = need_file(root / "circo" / "images" / "unlabeled2017" / name, what="image", source=path,
                          item=label, field="file_name")
        position[image_id] = len(entries)
        entries.append(Entry(image_id, (image, SUMMARIZE_IMAGE)))
    return entries, position, path


def read_circo(root: Path, split: str = "test") -> ZeroShotSet:
    """circo/annotations/{split}.json over every image of image_info_unlabeled2017.json (the
    reference image stays in the pool). test: the top 50 for the evaluation server; val: MAP@K."""
    pool, position, pool_path = _circo_pool(root)
    path = root / "circo" / "annotations" / f"{split}.json"
    records = expect(load_json(path, what=f"CIRCO {split} annotations"), list, path)
    queries, rerank_queries, keys, gts, targets = [], [], [], [], []
    for number, record in enumerate(records):
        label = entry_label(number)
        caption = get(record, "relative_caption", str, path, item=label)
        reference = str(get(record, "reference_img_id", (int, str), path, item=label))
        keys.append(str(get(record, "id", (int, str), path, item=label)))
        if reference not in position:
            raise fail(f"reference image {reference} is not in {pool_path.name}", path, item=label,
                       field="reference_img_id")
        image = pool[position[reference]].parts[0]
        queries.append(Entry(str(number), (image, f"{CHANGES} {caption}", SUMMARIZE_IMAGE_TEXT)))
        rerank_queries.append((image, f"{CIRCO_RERANK} {caption}"))
        if split != "test":
            gt = [str(x) for x in get(record, "gt_img_ids", list, path, item=label)]
            target = str(get(record, "target_img_id", (int, str), path, item=label))
            unknown = [x for x in gt + [target] if x not in position]
            if unknown:
                raise fail(f"image {unknown[0]} is not in {pool_path.name}", path, item=label, field="gt_img_ids")
            gts.append([position[x] for x in gt])
            targets.append([position[target]])
    sides = {"queries": Side("queries", queries, path), "images": Side("images", pool, pool_path)}
    rerank = {"rerank_queries": rerank_queries, "rerank_candidates": [(e.parts[0],) for e in pool]}
    if split == "test":
        tasks = [Task("test", "queries", "images", (), [[] for _ in queries], submission=True, submission_keys=keys,
                      **rerank)]
        notes = ["CIRCO test has no public labels: the top 50 per query are written for the evaluation server "
                 "(circo_test_submission.json), as the official script does"]
        return ZeroShotSet("circo", sides, tasks, notes=notes)
    tasks = [Task("map", "queries", "images", tuple(f"MAP@{k}" for k in CIRCO_CUTOFFS), gts, **rerank),
             Task("recall", "queries", "images", tuple(f"R@{k}" for k in CIRCO_CUTOFFS), targets, **rerank)]
    return ZeroShotSet("circo-val", sides, tasks)


def _genecis_paths(root: Path, task: str, record: dict, number: int, path: Path):
    """(reference, target, gallery) image paths and ids of one GeneCIS query."""
    label = entry_label(number)
    if task.endswith("_object"):  # COCO val2017, by image id
        def one(value, field):
            image_id = str(get(value, "val_image_id", (int, str), path, item=label))
            return image_id, root / "genecis" / "val2017" / f"{image_id.zfill(12)}.jpg", field
        reference = one(get(record, "reference", dict, path, item=label), "reference")
        target = one(get(record, "target", dict, path, item=label), "target")
        gallery = [one(expect(g, dict, path, item=label, field="gallery"), "gallery")
                   for g in get(record, "gallery", list, path, item=label)]
    else:  # Visual Genome crops, one file per query and slot: {id}_{query}_{slot}.jpg
        folder = root / "genecis" / "vg" / task

        def one(value, slot, field):
            name = f"{get(value, 'image_id', (int, str), path, item=label)}_{number}_{slot}.jpg"
            return name, folder / name, field
        reference = one(get(record, "reference", dict, path, item=label), 0, "reference")
        target = one(get(record, "target", dict, path, item=label), 1, "target")
        gallery = [one(expect(g, dict, path, item=label, field="gallery"), 2 + j, "gallery")
                   for j, g in enumerate(get(record, "gallery", list, path, item=label))]
    for _, image, field in [reference, target, *gallery]:
        need_file(image, what="image", source=path, item=label, field=field)
    return reference, target, gallery


def read_genecis_task(root: Path, task: str) -> tuple[dict[str, Side], Task]:
    path = root / "genecis" / "annotations" / f"{task}.json"
    records = expect(load_json(path, what=f"GeneCIS {task} annotations"), list, path)
    # focus_attribute alone asks for the same attributes; focus_object keeps the "changes" one (official).
    instruction = SAME_ATTRIBUTES if task == "focus_attribute" else CHANGES
    queries, rerank_queries, rows, images = [], [], [], {}
    for number, record in enumerate(records):
        caption = get(record, "condition", str, path, item=entry_label(number))
        reference, target, gallery = _genecis_paths(root, task, record, number, path)
        queries.append(Entry(str(number), (reference[1], f"{instruction} {caption}", SUMMARIZE_IMAGE_TEXT)))
        rerank_queries.append((reference[1], f"{instruction} {caption}"))
        rows.append([target[0]] + [g[0] for g in gallery])
        for image_id, image, _ in [target, *gallery]:
            images[image_id] = image
    names = sorted(images)  # each gallery image embedded once (the official sorted id set)
    position = {name: i for i, name in enumerate(names)}
    candidates = Side(f"{task}_images", [Entry(name, (images[name], SUMMARIZE_IMAGE)) for name in names], path)
    lists = [[position[name] for name in row] for row in rows]
    result = Task(task, f"{task}_queries", f"{task}_images", ("R@1", "R@2", "R@3"), [[row[0]] for row in lists],
                  lists=lists, rerank_queries=rerank_queries,
                  rerank_candidates=[(images[name],) for name in names])
    return {f"{task}_queries": Side(f"{task}_queries", queries, path), candidates.name: candidates}, result


def read_genecis(root: Path) -> ZeroShotSet:
    """genecis/annotations/{task}.json for the four tasks found (the target is slot 0 of its list)."""
    found = [t for t in GENECIS_TASKS if (root / "genecis" / "annotations" / f"{t}.json").is_file()]
    if not found:
        raise fail("no GeneCIS task file", root / "genecis" / "annotations" / f"{GENECIS_TASKS[0]}.json")
    sides, tasks = {}, []
    for task in found:
        task_sides, result = read_genecis_task(root, task)
        sides.update(task_sides)
        tasks.append(result)
    return ZeroShotSet("genecis", sides, tasks, mean="R@1 mean of the tasks (ours: the official code reports "
                                                    "each task alone)")
