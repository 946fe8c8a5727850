"""How far can clipart image -> image (same category) go when every picture model starts from scratch?

The default model learns the demo's Fashion-MNIST and WordNet tasks by wide margins but the
clipart tasks only narrowly (docs/demo-model.md). This experiment measures the ceiling that the
data itself sets, on the demo's held-out clipart image -> image test task (92 queries, a pool of
300), with models trained for that one task and nothing else:

- raw pixels: cosine of the 56 x 56 pictures, as drawn (white background) and as ink (1 - pixel);
- the default model's own vision tower, untrained (its random weights, as the recipe freezes it);
- the same tower trained directly on the clipart categories (cross-entropy, horizontal flips);
- a small CNN (3 blocks of two 3 x 3 convolutions, batch norm) trained the same way, the strongest
  inductive bias for pictures this size;

each trained on the demo's training cliparts (the 585 the recipe trains on) and on every usable
clipart outside the validation and test splits (about 2,700 of Debian's 3,287). Features are
averaged over the tower's merged tokens / the CNN's last feature map and ranked by cosine. No
choice is made on the test split: the schedules are fixed and the last epoch is reported.

    python experiments/clipart_ceiling.py                    # the default model's data and base weights
    python experiments/clipart_ceiling.py --data DIR --base DIR --out results.json

Needs the default model's work folder (``make demo`` once), cairosvg and Debian's openclipart-svg.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from lamra.demo.default_model import DEFAULT_MODEL_FILE, RECIPE, default_model_dir, work_folder
from lamra.demo.sources import clipart
from lamra.demo.tiny import image_processor

SIZE = 56  # the recipe's image size (max_pixels = min_pixels = 56 * 56)
TASK = "clipart_task4"


def main() -> None:
    model = default_model_dir()
    work = work_folder(model)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=work / "data", help="the demo data (lamra data demo)")
    parser.add_argument("--base", type=Path, default=work / "base", help="the default model's untrained weights")
    parser.add_argument("--clipart-root", type=Path, default=Path("/usr/share/openclipart/svg"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("clipart-ceiling.json"))
    args = parser.parse_args()
    for path in (args.data / "tasks.json", args.base / "config.json"):
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run `make demo` once (or pass --data / --base)")
    torch.set_num_threads(1)  # the same numbers whatever the machine's core count
    started = time.perf_counter()
    test = TestTask(args.data)
    train_sets = {"demo training cliparts": demo_training_cliparts(args.data),
                  "every clipart outside val/test": every_other_clipart(args.data, args.clipart_root)}
    rows = [("raw pixels (as drawn, white background)", "-", test.recall(lambda images: pixels(images).flatten(1))),
            ("raw pixels (ink: 1 - pixel)", "-", test.recall(lambda images: 1 - pixels(images).flatten(1)))]
    tower = load_tower(args.base)
    rows.append(("default model's vision tower, untrained", "-", test.recall(tower_features(tower))))
    for set_name, (images, categories) in train_sets.items():
        print(f"{set_name}: {len(images)} pictures, {len(set(categories))} categories", flush=True)
        trained = train_classifier(lambda: load_tower(args.base), tower_features, images, categories, args.epochs)
        rows.append(("the same tower trained on the categories", set_name, test.recall(tower_features(trained))))
        cnn = train_classifier(SmallCNN, cnn_features, images, categories, args.epochs)
        rows.append(("small CNN trained on the categories", set_name, test.recall(cnn_features(cnn))))
    print(f"\n{TASK} test ({len(test.queries)} queries, pool {len(test.pool)}), R@1 / R@5:")
    for name, trained_on, (r1, r5) in rows:
        print(f"  {name:<44} {trained_on:<32} {r1:5.1f} {r5:5.1f}")
    record_file = model / DEFAULT_MODEL_FILE
    if record_file.is_file():  # for comparison: the default model, trained by the whole recipe
        evaluation = json.loads(record_file.read_text())["evaluation"][TASK]
        for name in ("trained", "untrained"):
            trained_on = "the whole recipe" if name == "trained" else "-"
            print(f"  {'default model, ' + name:<44} {trained_on:<32} "
                  f"{evaluation[name]['R@1']:5.1f} {evaluation[name]['R@5']:5.1f}")
    record = {"task": TASK, "queries": len(test.queries), "pool": len(test.pool), "epochs": args.epochs,
              "recipe_version": RECIPE["version"], "seconds": round(time.perf_counter() - started),
              "machine": platform.platform(), "torch": torch.__version__,
              "rows": [{"features": n, "trained_on": t, "R@1": r1, "R@5": r5} for n, t, (r1, r5) in rows]}
    args.out.write_text(json.dumps(record, indent=2))
    print(f"written {args.out} ({record['seconds']} s)")


class TestTask:
    """The demo's held-out clipart image -> image task: its queries, pool and positives."""

    def __init__(self, data: Path):
        self.data = data
        self.pool = read_jsonl(data / "cand_pool" / "local" / f"mbeir_{TASK}_cand_pool.jsonl")
        self.queries = read_jsonl(data / "query" / "test" / f"mbeir_{TASK}_test.jsonl")
        self.pool_images = [open_rgb(data / r["img_path"]) for r in self.pool]
        self.query_images = [open_rgb(data / r["query_img_path"]) for r in self.queries]

    def recall(self, features) -> tuple[float, float]:
        with torch.no_grad():
            scores = F.normalize(features(self.query_images), dim=-1) @ F.normalize(features(self.pool_images), dim=-1).T
        top = scores.topk(5, dim=1).indices.tolist()
        dids = [r["did"] for r in self.pool]
        hits = [[dids[i] in set(q["pos_cand_list"]) for i in ranked] for q, ranked in zip(self.queries, top)]
        return round(100 * float(np.mean([h[0] for h in hits])), 1), round(100 * float(np.mean([any(h) for h in hits])), 1)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def category_of_record(record: dict) -> str:
    return json.loads(record.get("query_src_content") or record["src_content"])["category"]


def demo_training_cliparts(data: Path) -> tuple[list, list[str]]:
    """The pictures (and categories) of the recipe's clipart image -> image training queries."""
    queries = [r for r in read_jsonl(data / "query" / "train" / "mbeir_clipart_train.jsonl") if r["task_id"] == 4]
    return [open_rgb(data / r["query_img_path"]) for r in queries], [category_of_record(r) for r in queries]


def every_other_clipart(data: Path, root: Path) -> tuple[list, list[str]]:
    """Every usable clipart whose file is in no validation or test query or pool, drawn as the demo draws."""
    held_out = set()
    for split in ("val", "test"):
        for path in (data / "query" / split).glob("mbeir_clipart_*.jsonl"):
            held_out |= {json.loads(r["query_src_content"])["file"] for r in read_jsonl(path)}
    for path in (data / "cand_pool" / "local").glob("mbeir_clipart_*.jsonl"):
        held_out |= {json.loads(r["src_content"])["file"] for r in read_jsonl(path)}
    kept = [c for c in clipart.scan(root).cliparts if c.relative not in held_out]
    image_size = json.loads((data / "demo-data.json").read_text())["config"]["image_size"]
    with Pool(2) as pool:
        drawn = pool.map(clipart.render_png, [(str(c.path), image_size) for c in kept], chunksize=16)
    pairs = [(Image.open(io.BytesIO(png)).convert("RGB"), c.category) for c, (png, _) in zip(kept, drawn) if png]
    return [image for image, _ in pairs], [category for _, category in pairs]


def pixels(images: list) -> torch.Tensor:
    arrays = np.stack([np.asarray(image.resize((SIZE, SIZE), Image.BICUBIC)) for image in images])
    return torch.tensor(arrays).permute(0, 3, 1, 2).float() / 255


def load_tower(base: Path) -> nn.Module:
    from transformers import Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(base, attn_implementation="sdpa")
    return model.model.visual.float()


def tower_features(tower: nn.Module):
    processor = image_processor(max_pixels=SIZE * SIZE, min_pixels=SIZE * SIZE)

    def features(images: list) -> torch.Tensor:
        batch = processor(images=images, return_tensors="pt")
        grid = batch["image_grid_thw"]
        out = tower(batch["pixel_values"], grid_thw=grid)
        merged = out if torch.is_tensor(out) else out.pooler_output  # one row per merged token
        # Each image's own tokens (a picture of another shape has another count), averaged.
        tokens = [int(thw.prod()) // tower.config.spatial_merge_size ** 2 for thw in grid]
        return torch.stack([part.mean(0) for part in merged.split(tokens)])
    return features


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()

        def block(inputs: int, outputs: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(inputs, outputs, 3, padding=1), nn.BatchNorm2d(outputs), nn.ReLU(),
                                 nn.Conv2d(outputs, outputs, 3, padding=1), nn.BatchNorm2d(outputs), nn.ReLU(),
                                 nn.MaxPool2d(2))

        self.body = nn.Sequential(block(3, 32), block(32, 64), block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


def cnn_features(cnn: nn.Module):
    def features(images: list) -> torch.Tensor:
        return cnn(pixels(images))
    return features


def train_classifier(make_module, make_features, images: list, categories: list[str], epochs: int,
                     batch_size: int = 64) -> nn.Module:
    """A ``make_module()`` whose features are trained to predict the category (a linear head on
    top), half the pictures flipped left-right in each batch; seed 0, so a rerun gives the same numbers."""
    torch.manual_seed(0)
    module = make_module().eval()
    flips = np.random.default_rng(0)
    names = sorted(set(categories))
    labels = torch.tensor([names.index(c) for c in categories])
    features = make_features(module)
    with torch.no_grad():
        head = nn.Linear(features(images[:1]).shape[-1], len(names))
    optimizer = torch.optim.AdamW([*module.parameters(), *head.parameters()], lr=1e-3, weight_decay=1e-2)
    for _ in range(epochs):
        module.train()
        order = torch.randperm(len(images)).tolist()
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            drawn = [images[i].transpose(Image.FLIP_LEFT_RIGHT) if flips.random() < 0.5 else images[i] for i in batch]
            loss = F.cross_entropy(head(features(drawn)), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    module.eval()
    return module


if __name__ == "__main__":
    main()
