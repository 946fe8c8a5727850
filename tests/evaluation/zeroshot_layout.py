"""Tiny copies of the LamRA_Eval layout, one builder per set, written from the field names of the
official readers (shared/spec/lamra-zeroshot.md). Captions keep a lower-case start and no period."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from PIL import Image

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200),
           (90, 90, 90), (250, 250, 250)]


def image(path: Path, n: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".png": "PNG", ".gif": "GIF"}[path.suffix]
    Image.new("RGB", (32, 32), COLOURS[n % len(COLOURS)]).save(path, format=fmt)
    return path


def write_json(path: Path, body) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body))
    return path


def sharegpt4v(root: Path) -> None:
    records = [{"image_name": "sa_1.jpg", "caption": "a red square on a white wall"},
               {"image_name": "sa_2.jpg", "caption": "two green fields"},
               {"image_name": "sa_3.jpg", "caption": "blue sky over water"}]
    for n, r in enumerate(records):
        image(root / "sharegpt4v" / "val_data" / r["image_name"], n)
    write_json(root / "sharegpt4v" / "datas_for_validation.json", records)


def urban1k(root: Path) -> None:
    for i, text in enumerate(["  a long street at night  \nsecond line ignored", "cars parked near a shop",
                              "people crossing a road"], start=1):
        image(root / "Urban1k" / "image" / f"{i}.jpg", i)
        (root / "Urban1k" / "caption").mkdir(parents=True, exist_ok=True)
        (root / "Urban1k" / "caption" / f"{i}.txt").write_text(text)


def flickr(root: Path) -> None:
    for i in range(2):
        image(root / "flickr" / "images" / f"{i}.png", i)
    write_json(root / "flickr" / "flickr_text.json", [f"image {i // 5} caption {i % 5}" for i in range(10)])


def circo(root: Path) -> None:
    ids = [11, 12, 13, 14, 15]
    write_json(root / "circo" / "annotations" / "image_info_unlabeled2017.json",
               {"images": [{"file_name": f"{i:012d}.jpg", "id": i} for i in ids]})
    for n, i in enumerate(ids):
        image(root / "circo" / "images" / "unlabeled2017" / f"{i:012d}.jpg", n)
    write_json(root / "circo" / "annotations" / "test.json",
               [{"id": 7, "relative_caption": "is red and has a dog", "reference_img_id": 11},
                {"id": 8, "relative_caption": "shows two of them", "reference_img_id": 12}])
    write_json(root / "circo" / "annotations" / "val.json",
               [{"id": 0, "relative_caption": "is red and has a dog", "reference_img_id": 11, "target_img_id": 13,
                 "gt_img_ids": [13, 14]},
                {"id": 1, "relative_caption": "shows two of them", "reference_img_id": 12, "target_img_id": 15,
                 "gt_img_ids": [15]}])


def genecis(root: Path) -> None:
    coco = {"reference": {"val_image_id": 1}, "target": {"val_image_id": 2},
            "gallery": [{"val_image_id": 3}, {"val_image_id": 4}], "condition": "dog"}
    for task in ("change_object", "focus_object"):
        write_json(root / "genecis" / "annotations" / f"{task}.json", [coco])
    for i in range(1, 5):
        image(root / "genecis" / "val2017" / f"{i:012d}.jpg", i)
    vaw = [{"reference": {"image_id": 20}, "target": {"image_id": 21}, "gallery": [{"image_id": 22}, {"image_id": 23}],
            "condition": "wooden"}]
    for task in ("change_attribute", "focus_attribute"):
        write_json(root / "genecis" / "annotations" / f"{task}.json", vaw)
        for slot, i in enumerate([20, 21, 22, 23]):
            image(root / "genecis" / "vg" / task / f"{i}_0_{slot}.jpg", slot)


def vist(root: Path) -> None:
    stories = {"s1": [("we went to the park", "p1"), ("the dog ran", "p2"), ("we ate lunch", "p3"),
                      ("it started to rain", "p4"), ("we went home", "p5")],
               "s2": [("a birthday party", "p6"), ("the cake was big", "p7"), ("everyone sang", "p8"),
                      ("gifts were opened", "p9"), ("a great day", "p10")]}
    annotations = [[{"story_id": story, "text": text, "photo_flickr_id": photo,
                     "worker_arranged_photo_order": n}] for story, rows in stories.items()
                   for n, (text, photo) in enumerate(rows)]
    write_json(root / "vist" / "sis" / "val.story-in-sequence.json", {"annotations": annotations})
    for n in range(1, 11):
        suffix = ".png" if n == 2 else ".gif" if n == 3 else ".jpg"
        image(root / "vist" / "images" / "val" / f"p{n}{suffix}", n)


def visdial(root: Path) -> None:
    body = {"data": {"questions": ["is it sunny", "how many people"], "answers": ["yes", "two"],
                     "dialogs": [{"image_id": 5, "caption": "unused caption", "dialog": [
                         {"question": 0, "answer": 0}, {"question": 1, "answer": 1}]},
                                 {"image_id": 6, "caption": "another", "dialog": [{"question": 1, "answer": 0}]}]}}
    write_json(root / "visdial" / "visdial_1.0_val.json", body)
    for n, i in enumerate([5, 6]):
        image(root / "visdial" / "VisualDialog_val2018" / f"VisualDialog_val2018_{i:012d}.jpg", n)


def fashion(root: Path) -> None:
    write_json(root / "multiturnfashion" / "data" / "all.val.json",
               [{"reference": [[0, ["is darker", ""], "B001"], [1, ["has sleeves", "is longer"], "B002"]],
                 "target": [2, "B003"]},
                {"reference": [[0, ["is red"], "B004"]], "target": [1, "B005"]}])
    names = [f"B{n:03d}" for n in range(1, 13)]  # 12: more than the rerank depth
    write_json(root / "multiturnfashion" / "image_splits" / "split.all.val.json", names)
    for n, name in enumerate(names):
        image(root / "M-BEIR" / "mbeir_images" / "fashioniq_images" / f"{name}.jpg", n)


def ccneg(root: Path, count: int = 2) -> None:
    import torch

    paths = [f"/workspace/datasets/cc3m/train/{n}.jpg" for n in range(count)]
    annotations = [{"json": {"caption": f"a dog, running {n}"},
                    "sop_data": {"negative-prompt": f"a cat, not, running {n}"}} for n in range(count)]
    (root / "ccneg").mkdir(parents=True, exist_ok=True)
    torch.save({"image_paths": paths, "annotations": annotations}, root / "ccneg" / "ccneg_preprocessed.pt")
    for n in range(count):
        image(root / "ccneg" / "train" / f"{n}.jpg", n)


def sugar_crepe(root: Path) -> None:
    for subset, rows in {"add_att": [("a.jpg", "a red car", "a blue car"), ("b.jpg", "a tall man", "a short man")],
                         "swap_obj": [("a.jpg", "a car near a tree", "a tree near a car")]}.items():
        write_json(root / "sugar-crepe" / "data" / f"{subset}.json",
                   {str(n): {"filename": f, "caption": c, "negative_caption": neg}
                    for n, (f, c, neg) in enumerate(rows)})
    for n, name in enumerate(["a.jpg", "b.jpg"]):
        image(root / "sugar-crepe" / "images" / "val2017" / name, n)


def msrvtt(root: Path) -> None:
    folder = root / "msrvtt"
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    (folder / "annotations" / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\nret0,msr7020,video7020,a man is talking about cars\n"
        "ret1,msr7021,video7021,a girl sings\n")
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    for name in ("video7020", "video7021"):
        (folder / "videos" / f"{name}.mp4").write_bytes(b"")


def msvd(root: Path) -> None:
    folder = root / "MSVD"
    (folder / "YouTubeClips").mkdir(parents=True, exist_ok=True)
    (folder / "test_list.txt").write_text("vid_a\nvid_b \n")
    captions = {"vid_a": [["a", "man", "is", "cooking"], ["someone", "cooks"]], "vid_b": [["a", "cat", "plays"]],
                "vid_c": [["unused"]]}
    (folder / "raw-captions.pkl").write_bytes(pickle.dumps(captions))
    for name in ("vid_a", "vid_b"):
        (folder / "YouTubeClips" / f"{name}.avi").write_bytes(b"")


BUILDERS = {"sharegpt4v": sharegpt4v, "urban1k": urban1k, "flickr30k": flickr, "circo": circo, "genecis": genecis,
            "vist": vist, "visdial": visdial, "fashioniq-multiturn": fashion, "ccneg": ccneg,
            "sugar-crepe": sugar_crepe, "msrvtt": msrvtt, "msvd": msvd}
