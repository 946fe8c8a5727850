"""A synthetic mini M-BEIR: the 16 tasks, in the exact M-BEIR layout, with learnable content.

Every item is a view of a *concept*: a coloured shape on a textured background, sometimes with
an exhibit number (a digit). Images are rendered with PIL; texts describe the same attributes in
each dataset's voice (news captions, everyday captions, product descriptions, encyclopedia
passages, questions). A model that learns which words go with which pixels can solve every task,
and each pool holds near misses (one attribute changed), so it has to look at all of them:

- qt→ci / qi→ct (VisualNews, MSCOCO, Fashion200K): caption <-> image; MSCOCO images have two captions;
- qt→ct (WebQA): a question naming shape, background and exhibit number -> the passage that gives the colour;
- qt→(ci,ct) (WebQA, EDIS): question / headline -> image + title;
- qi→ci (NIGHTS): an image -> another rendering of the same concept (moved, resized);
- (qi,qt)→ct / (qi,qt)→(ci,ct) (OVEN, InfoSeek): image + question -> the passage (or image + passage)
  about what the image shows;
- (qi,qt)→ci (FashionIQ, CIRR): reference image + modification ("is green instead of red") -> the
  modified image; the reference itself is in the pool as a distractor.

Deterministic from the seed (same seed, same bytes); ``synthesize(out)`` takes a couple of
seconds at the default size. Test queries and local pools per task, the union test pool, qrels,
the instructions tsv, train queries per dataset (with hard negatives) and the union train pool.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import InputError
from .generated import write_generated
from .mbeir import DATASETS, TASKS, MBEIRLayout, Task, format_qrels_line
from .mbeir_instructions import write_instructions

logger = logging.getLogger(__name__)

SYNTHETIC_VERSION = 1
MARKER = "synthetic.json"  # written at the root; marks a folder this generator may overwrite

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "hexagon", "ring")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30),
    "purple": (140, 60, 190), "orange": (245, 140, 30), "black": (25, 25, 25), "pink": (240, 120, 180),
}
TEXTURES = ("plain", "striped", "dotted", "checked")
GARMENTS = dict(zip(SHAPES, ("hat", "shirt", "dress", "scarf", "jacket", "coat", "bag", "belt")))
DIGITS = tuple(range(10))


@dataclass(frozen=True)
class Concept:
    shape: str
    colour: str
    texture: str
    digit: int | None = None

    def words(self, **more) -> dict:
        return {"shape": self.shape, "colour": self.colour, "texture": self.texture,
                "garment": GARMENTS[self.shape], "digit": self.digit, **more}

    def slug(self) -> str:
        digit = [f"d{self.digit}"] if self.digit is not None else []
        return "_".join([self.shape, self.colour, self.texture, *digit])


ATTRIBUTES = {"shape": SHAPES, "colour": tuple(COLOURS), "texture": TEXTURES, "digit": DIGITS}


@dataclass(frozen=True)
class Recipe:
    """How a task's queries and targets view a concept.

    ``identity``: the attributes a query pins down; no two targets of a pool share them, so each
    query has exactly its own positives. Images: None, "plain", "digit" (exhibit number drawn) or
    "moved" (another rendering, for NIGHTS). ``modify``: attributes a composed query changes.
    """

    query_text: str | None
    query_image: str | None
    target_texts: tuple[str, ...]  # one positive per text (or one image-only positive when empty)
    target_image: str | None
    identity: tuple[str, ...] = ("shape", "colour", "texture")
    modify: tuple[str, ...] = ()
    instructions: tuple[str, ...] = ()  # more instructions after the built-in first one


_FULL_D = ("shape", "colour", "texture", "digit")
_NEWS = "News photo: a {colour} {shape} is unveiled in front of a {texture} wall"
RECIPES = {
    "visualnews_task0": Recipe(_NEWS, None, (), "plain"),
    "mscoco_task0": Recipe("A {colour} {shape} on a {texture} background", None, (), "plain"),
    "fashion200k_task0": Recipe("{colour} {texture} {garment}", None, (), "plain"),
    "webqa_task1": Recipe("What colour is the {shape} on the {texture} background in exhibit {digit}?", None,
                          ("Exhibit {digit} of the shape collection is a {colour} {shape} drawn on a {texture} "
                           "background.",), None, identity=("shape", "texture", "digit")),
    "edis_task2": Recipe("Crowds gather as a giant {colour} {shape} appears over a {texture} square", None,
                         ("Giant {colour} {shape} draws crowds",), "plain"),
    "webqa_task2": Recipe("Which picture shows exhibit {digit}, the {shape} on a {texture} background?", None,
                          ("Exhibit {digit}: a {colour} {shape}",), "digit", identity=("shape", "texture", "digit")),
    "visualnews_task3": Recipe(None, "plain", (_NEWS,), None),
    "mscoco_task3": Recipe(None, "plain", ("A {colour} {shape} on a {texture} background",
                                           "There is a {colour} {shape} in front of a {texture} background"), None),
    "fashion200k_task3": Recipe(None, "plain", ("{colour} {texture} {garment}",), None),
    "nights_task4": Recipe(None, "moved", (), "moved2"),
    "oven_task6": Recipe("What is this exhibit?", "digit",
                         ("Exhibit {digit} is a {colour} {shape} painted on a {texture} background.",), None,
                         identity=_FULL_D),
    "infoseek_task6": Recipe("What is the catalogue number of this {shape}?", "plain",
                             ("The {colour} {shape} on the {texture} background is catalogued as exhibit "
                              "{digit}.",), None),
    "fashioniq_task7": Recipe("is {new_colour} instead of {colour}", "plain", (), "plain", modify=("colour",)),
    "cirr_task7": Recipe("the same shape but {new_colour} on a {new_texture} background", "plain", (), "plain",
                         modify=("colour", "texture")),
    "oven_task8": Recipe("Find the encyclopedia entry for this exhibit.", "digit",
                         ("Exhibit {digit}: a {colour} {shape} on a {texture} background",), "digit", identity=_FULL_D),
    "infoseek_task8": Recipe("Which record documents this {shape}?", "plain",
                             ("Record of the {colour} {shape} on a {texture} background, exhibit {digit}",), "plain"),
}
# Tasks whose concepts carry an exhibit number (shown, or told by the target text).
_DIGIT_TASKS = {"webqa_task1", "webqa_task2", "oven_task6", "oven_task8", "infoseek_task6", "infoseek_task8"}
# Second and third instructions of each task type (the first is the built-in one).
_MORE_INSTRUCTIONS = {
    0: ("Retrieve the image that matches this description.", "Show me a picture of what the text describes."),
    1: ("Find the passage that answers this question.", "Retrieve a text that answers the question."),
    2: ("Retrieve an image and its text that answer this.", "Find a picture with a description that matches."),
    3: ("Retrieve a text that describes this image.", "Find the description of the picture."),
    4: ("Find an image similar to this one.", "Retrieve a picture that looks like the given one."),
    6: ("Find the passage that answers the question about this image.", "Retrieve a text about the pictured item."),
    7: ("Retrieve the image after applying the change to the given image.", "Find the modified picture."),
    8: ("Find the picture and text about this image and question.", "Retrieve an image-text entry about this."),
}


@dataclass
class SynthConfig:
    seed: int = 0
    test_queries: int = 20  # per task
    train_queries: int = 40  # per task
    pool_size: int = 60  # candidates in each local test pool (at least the positives)
    image_size: int = 64
    train_negatives: int = 2  # hard negatives per train query


# -- rendering -------------------------------------------------------------------------------

def render(concept: Concept, *, size: int = 64, variant: int = 0, show_digit: bool = False):
    """The image of a concept; ``variant`` > 0 moves and resizes the shape (deterministically)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    _texture(draw, concept.texture, size)
    rng = random.Random(f"{concept.slug()}/{variant}")
    if variant == 0:
        cx = cy = size / 2
        radius = 0.3 * size
    else:
        cx, cy = size / 2 + rng.uniform(-0.1, 0.1) * size, size / 2 + rng.uniform(-0.1, 0.1) * size
        radius = rng.uniform(0.22, 0.34) * size
    _shape(draw, concept.shape, cx, cy, radius, COLOURS[concept.colour])
    if show_digit and concept.digit is not None:
        draw.text((2, 1), str(concept.digit), fill=(0, 0, 0), font=_font(max(8, size // 5)))
    return image


def _texture(draw, texture: str, size: int) -> None:
    grey = (190, 190, 190)
    step = max(4, size // 8)
    if texture == "striped":
        for y in range(0, size, step):
            draw.rectangle([0, y, size, y + step // 3], fill=grey)
    elif texture == "dotted":
        for y in range(step // 2, size, step):
            for x in range(step // 2, size, step):
                dot = max(1, step // 5)
                draw.ellipse([x - dot, y - dot, x + dot, y + dot], fill=grey)
    elif texture == "checked":
        for y in range(0, size, step):
            for x in range(0, size, step):
                if (x // step + y // step) % 2 == 0:
                    draw.rectangle([x, y, x + step - 1, y + step - 1], fill=(215, 215, 215))


def _shape(draw, shape: str, cx: float, cy: float, r: float, colour) -> None:
    import math

    def ring_points(count, radii, start=-math.pi / 2):
        return [(cx + radii[i % len(radii)] * math.cos(start + 2 * math.pi * i / count),
                 cy + radii[i % len(radii)] * math.sin(start + 2 * math.pi * i / count)) for i in range(count)]

    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(r / 3)))
    elif shape == "square":
        draw.rectangle([cx - 0.8 * r, cy - 0.8 * r, cx + 0.8 * r, cy + 0.8 * r], fill=colour)
    elif shape == "triangle":
        draw.polygon(ring_points(3, [r]), fill=colour)
    elif shape == "diamond":
        draw.polygon(ring_points(4, [r]), fill=colour)
    elif shape == "hexagon":
        draw.polygon(ring_points(6, [r], start=0), fill=colour)
    elif shape == "star":
        draw.polygon(ring_points(10, [r, 0.45 * r]), fill=colour)
    elif shape == "cross":
        w = 0.3 * r
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


class _ImageStore:
    """Renders each (dataset, split, concept, look) once and hands out its root-relative path."""

    def __init__(self, root: Path, size: int):
        self.root, self.size = root, size
        self.paths: dict[tuple, str] = {}
        self.rendered: set[str] = set()

    def path(self, dataset: str, split: str, concept: Concept, look: str) -> str:
        key = (dataset, split, concept, look)
        if key not in self.paths:
            variant = {"plain": 0, "digit": 0, "moved": 1, "moved2": 2}[look]
            show_digit = look == "digit"
            name = concept.slug() if show_digit else replace(concept, digit=None).slug()
            relative = f"mbeir_images/{dataset}_images/{split}/{name}" + (f"_v{variant}" if variant else "") + ".png"
            if relative not in self.rendered:
                self.rendered.add(relative)
                target = self.root / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                render(concept, size=self.size, variant=variant, show_digit=show_digit).save(target, format="PNG")
            self.paths[key] = relative
        return self.paths[key]


# -- building a task -------------------------------------------------------------------------

class _Ids:
    """"{dataset_id}:{n}" counters, one per dataset, for qids and for dids."""

    def __init__(self):
        self.next: dict[str, int] = {}

    def new(self, dataset: str) -> str:
        number = self.next.get(dataset, 0) + 1
        self.next[dataset] = number
        return f"{DATASETS[dataset][0]}:{number}"


def _identity(concept: Concept, recipe: Recipe) -> tuple:
    return tuple(getattr(concept, a) for a in recipe.identity)


def _random_concept(rng: random.Random, with_digit: bool) -> Concept:
    return Concept(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(TEXTURES),
                   rng.choice(DIGITS) if with_digit else None)


def _changed(concept: Concept, attribute: str, rng: random.Random) -> Concept:
    choices = [v for v in ATTRIBUTES[attribute] if v != getattr(concept, attribute)]
    return replace(concept, **{attribute: rng.choice(choices)})


def _capacity(recipe: Recipe) -> int:
    count = 1
    for attribute in recipe.identity:
        count *= len(ATTRIBUTES[attribute])
    return count


class _TaskBuilder:
    """Queries, positives and pool candidates of one task in one split."""

    def __init__(self, task: Task, split: str, rng: random.Random, images: _ImageStore, qids: _Ids, dids: _Ids):
        self.task, self.split, self.rng = task, split, rng
        self.recipe = RECIPES[task.name]
        self.with_digit = task.name in _DIGIT_TASKS
        self.images, self.qids, self.dids = images, qids, dids
        self.candidates: dict[tuple, dict] = {}  # key -> pool record, in creation order

    def candidate(self, concept: Concept, text_index: int) -> str:
        """The did of a target view of ``concept`` (made on first use)."""
        recipe = self.recipe
        key = (concept, text_index)
        if key not in self.candidates:
            text = recipe.target_texts[text_index].format(**concept.words()) if recipe.target_texts else None
            image = self.images.path(self.task.dataset, self.split, concept, recipe.target_image) \
                if recipe.target_image else None
            modality = ",".join(p for p, v in (("image", image), ("text", text)) if v)
            src = {"synthetic": True, "concept": concept.slug(), "view": text_index}
            self.candidates[key] = {"txt": text, "img_path": image, "modality": modality,
                                    "did": self.dids.new(self.task.dataset), "src_content": json.dumps(src)}
        return self.candidates[key]["did"]

    def targets(self, concept: Concept) -> list[str]:
        return [self.candidate(concept, i) for i in range(max(1, len(self.recipe.target_texts)))]

    def pick_queries(self, count: int) -> list[tuple[Concept, Concept]]:
        """(query concept, target concept) pairs with distinct target identities."""
        recipe = self.recipe
        if count > _capacity(recipe):
            raise InputError(f"{self.task.name}: at most {_capacity(recipe)} queries fit the "
                             f"concept space, asked for {count}")
        pairs, used = [], set()
        while len(pairs) < count:
            source = _random_concept(self.rng, self.with_digit)
            target = source
            for attribute in recipe.modify:
                target = _changed(target, attribute, self.rng)
            if _identity(target, recipe) in used:
                continue
            used.add(_identity(target, recipe))
            pairs.append((source, target))
        return pairs

    def query_record(self, source: Concept, target: Concept, positives: list[str], negatives: list[str]) -> dict:
        recipe, task = self.recipe, self.task
        words = source.words(**{f"new_{a}": getattr(target, a) for a in ("colour", "texture")})
        text = recipe.query_text.format(**words) if recipe.query_text else None
        image = self.images.path(task.dataset, self.split, source, recipe.query_image) if recipe.query_image else None
        src = {"synthetic": True, "concept": source.slug(), "target": target.slug()}
        return {"qid": self.qids.new(task.dataset), "query_txt": text, "query_img_path": image,
                "query_modality": task.query_modality, "query_src_content": json.dumps(src),
                "pos_cand_list": positives, "neg_cand_list": negatives, "task_id": task.task_id}

    def near_misses(self, target: Concept, taken: set, count: int) -> list[Concept]:
        """Concepts one identity attribute away from ``target`` whose identity is not a target's."""
        out = []
        for _ in range(count * 8):
            if len(out) == count:
                break
            other = _changed(target, self.rng.choice(self.recipe.identity), self.rng)
            if _identity(other, self.recipe) not in taken and other not in out:
                out.append(other)
        return out

    def build(self, count: int, *, pool_size: int | None, negatives: int) -> tuple[list[dict], list[dict]]:
        """Queries and the pool records they need (plus distractors up to ``pool_size``)."""
        pairs = self.pick_queries(count)
        taken = {_identity(target, self.recipe) for _, target in pairs}
        queries = []
        for source, target in pairs:
            positives = self.targets(target)
            negative_dids = []
            if negatives:
                near = self.near_misses(target, taken, negatives)
                if self.recipe.modify:
                    near = [source] + near  # the reference image is the hardest negative
                negative_dids = [self.candidate(c, 0) for c in near[:negatives]]
            queries.append(self.query_record(source, target, positives, negative_dids))
        if pool_size:
            self._fill(pairs, taken, pool_size)
        records = list(self.candidates.values())
        self.rng.shuffle(records)
        return queries, records

    def _fill(self, pairs, taken: set, pool_size: int) -> None:
        # Hard distractors first (the references of composed queries, then near misses), then random ones.
        if self.recipe.modify:
            for source, _ in pairs:
                if len(self.candidates) < pool_size:
                    self.candidate(source, 0)
        for _ in range(4):
            for _, target in pairs:
                if len(self.candidates) >= pool_size:
                    return
                for other in self.near_misses(target, taken, 1):
                    self.candidate(other, self.rng.randrange(max(1, len(self.recipe.target_texts))))
        for _ in range(pool_size * 20):
            if len(self.candidates) >= pool_size:
                return
            other = _random_concept(self.rng, self.with_digit)
            if _identity(other, self.recipe) not in taken:
                self.candidate(other, self.rng.randrange(max(1, len(self.recipe.target_texts))))


# -- the whole dataset -----------------------------------------------------------------------

def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def _instruction_rows() -> list:
    from .mbeir import DATASET_BY_ID, TASK_MODALITIES
    from .mbeir_instructions import BUILTIN_INSTRUCTIONS

    rows = []
    for (dataset_id, query_modality, cand_modality), first in BUILTIN_INSTRUCTIONS.items():
        task_id = next(t for t, m in TASK_MODALITIES.items() if m == (query_modality, cand_modality))
        dataset = DATASETS[DATASET_BY_ID[dataset_id]][1]
        rows.append((query_modality, cand_modality, dataset, dataset_id, [first, *_MORE_INSTRUCTIONS[task_id]]))
    return rows


def _generate(root: Path, config: SynthConfig) -> dict:
    layout = MBEIRLayout(root)
    images = _ImageStore(root, config.image_size)
    qids, dids = _Ids(), _Ids()
    counts = {"test_query_lines": 0, "train_query_lines": 0}
    union_test, union_train, train_by_dataset = [], [], {}
    for number, task in enumerate(TASKS):
        if config.test_queries > 0:
            rng = random.Random(f"{config.seed}/test/{task.name}")
            builder = _TaskBuilder(task, "test", rng, images, qids, dids)
            queries, pool = builder.build(config.test_queries, pool_size=config.pool_size, negatives=0)
            for record in queries:
                record["neg_cand_list"] = []  # M-BEIR test queries have no negatives
            _write_jsonl(layout.query_file(task.name), queries)
            _write_jsonl(layout.local_pool(task.name), pool)
            qrels = "".join(format_qrels_line(q["qid"], did, task.task_id)
                            for q in queries for did in q["pos_cand_list"])
            layout.qrels_file(task.name).parent.mkdir(parents=True, exist_ok=True)
            layout.qrels_file(task.name).write_text(qrels, encoding="utf-8")
            union_test.extend(pool)
            counts["test_query_lines"] += len(queries)
        if config.train_queries > 0:
            rng = random.Random(f"{config.seed}/train/{task.name}")
            builder = _TaskBuilder(task, "train", rng, images, qids, dids)
            queries, pool = builder.build(config.train_queries, pool_size=None, negatives=config.train_negatives)
            train_by_dataset.setdefault(task.dataset, []).extend(queries)
            union_train.extend(pool)
    if union_test:
        _write_jsonl(layout.global_pool("test"), union_test)
    if union_train:
        _write_jsonl(layout.global_pool("train"), union_train)
        everything = []
        for dataset, queries in train_by_dataset.items():
            _write_jsonl(root / "query" / "train" / f"mbeir_{dataset}_train.jsonl", queries)
            everything.extend(queries)
        random.Random(f"{config.seed}/union").shuffle(everything)
        _write_jsonl(root / "query" / "union_train" / "mbeir_union_up_train.jsonl", everything)
        counts["train_query_lines"] = len(everything)
    counts["union_test_pool_lines"], counts["union_train_pool_lines"] = len(union_test), len(union_train)
    counts["images"] = len(images.rendered)
    write_instructions(layout.instructions_file, _instruction_rows())
    return counts


def synthesize(out: str | os.PathLike, config: SynthConfig | None = None, *, overwrite: bool = False) -> dict:
    """Write a synthetic M-BEIR root at ``out``; returns its manifest (sizes, counts, seed).

    The folder appears complete or not at all (it is built beside ``out`` and renamed).
    ``overwrite`` replaces an earlier synthetic dataset, never another folder.
    """
    config = config or SynthConfig()
    if min(config.test_queries, config.train_queries, config.pool_size) < 0 or config.image_size < 16:
        raise InputError("sizes must be >= 0 and the image size >= 16")

    def build(folder: Path) -> dict:
        return {"generator": "lamra.data.synthetic", "version": SYNTHETIC_VERSION, "config": dict(config.__dict__),
                "counts": _generate(folder, config)}

    return write_generated(out, build, marker=MARKER, what="synthetic dataset", overwrite=overwrite)
