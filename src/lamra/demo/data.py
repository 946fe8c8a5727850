"""``lamra data demo OUT``: a small real data set in the M-BEIR layout, from offline Debian packages.

Sources (see docs/demo-data.md): OpenClipart SVGs (``openclipart-svg``, rendered with cairosvg on
white), Fashion-MNIST (``dataset-fashion-mnist``; its test split feeds only our test split) and
WordNet (``wordnet-base``). The tasks are in :mod:`lamra.demo.tasks`; the root declares them in
``tasks.json`` so ``lamra eval mbeir`` and ``lamra data validate`` know them.

Splits (test, val, train) share no image and no text: every image (by content) and every text
belongs to the first split that takes it, and a later split skips it. Clipart splits are drawn by
title (cliparts with the same title stay together), WordNet splits by lemma. Deterministic: the
same seed, sources and options write the same bytes, whatever the number of render workers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..data.generated import write_generated
from ..data.mbeir import TASKS_FILE, MBEIRLayout, format_qrels_line
from ..data.mbeir_instructions import write_instructions
from ..errors import InputError
from ..progress import progress_bar
from .sources import clipart, fashion_mnist, wordnet
from .tasks import (
    DEMO_DATASETS,
    DEMO_TASKS,
    Ids,
    Picture,
    SplitRecords,
    Text,
    image_text_eval,
    image_text_train,
    instruction_rows,
    tasks_document,
    wordnet_eval,
    wordnet_pairs,
    wordnet_train,
)

logger = logging.getLogger(__name__)

DEMO_VERSION = 1
MARKER = "demo-data.json"  # written at the root; marks a folder this builder may overwrite
PACKAGES = (clipart.PACKAGE, fashion_mnist.PACKAGE, wordnet.PACKAGE)
SPLITS = ("test", "val", "train")  # the order in which splits take images and texts


@dataclass(frozen=True)
class DemoSize:
    test_pool: int  # candidates in each test pool (images, captions, sentences)
    test_queries: int  # queries per test task (at most)
    val_pool: int
    val_queries: int
    train_queries: int  # train queries per task (at most; one picture or synset per query)
    pairs_train: int  # WordNet stage-1 pairs
    pairs_test: int


SIZES = {
    "small": DemoSize(test_pool=300, test_queries=100, val_pool=150, val_queries=50, train_queries=600,
                      pairs_train=4000, pairs_test=500),
    "full": DemoSize(test_pool=1000, test_queries=300, val_pool=300, val_queries=100, train_queries=20000,
                     pairs_train=100000, pairs_test=2000),
}


@dataclass(frozen=True)
class DemoConfig:
    seed: int = 0
    size: DemoSize = SIZES["small"]
    image_size: int = 112  # side of every image, in pixels

    @classmethod
    def preset(cls, name: str = "small", **overrides) -> "DemoConfig":
        if name not in SIZES:
            raise InputError(f"unknown size {name!r}; the sizes are: {', '.join(SIZES)}")
        sizes = {k: overrides.pop(k) for k in list(overrides) if k in DemoSize.__dataclass_fields__}
        return cls(size=replace(SIZES[name], **sizes), **overrides)


@dataclass(frozen=True)
class DemoSources:
    """Where the three sources are (the Debian packages' folders by default)."""

    clipart: Path = clipart.DEBIAN_ROOT
    fashion_mnist: Path = fashion_mnist.DEBIAN_ROOT
    wordnet: Path = wordnet.DEBIAN_ROOT

    def missing(self) -> list[str]:
        """The Debian packages whose files are not where this looks for them."""
        missing = []
        if not Path(self.clipart).is_dir() or next(Path(self.clipart).rglob("*.svg"), None) is None:
            missing.append(clipart.PACKAGE)
        if not all((Path(self.fashion_mnist) / name).is_file() for pair in fashion_mnist.FILES.values()
                   for name in pair):
            missing.append(fashion_mnist.PACKAGE)
        if not all((Path(self.wordnet) / f"data.{pos}").is_file() for pos in wordnet.PARTS_OF_SPEECH):
            missing.append(wordnet.PACKAGE)
        return missing


class SourcesMissing(InputError):
    """The demo data's Debian packages are not installed."""

    def __init__(self, missing: list[str]):
        self.missing = missing
        super().__init__(f"the demo data needs the Debian package(s) {', '.join(missing)}: install them with "
                         f"`make data-packages` or, as root, `apt-get install -y {' '.join(PACKAGES)}`; "
                         "without them, `lamra data synth OUT` writes the synthetic mini M-BEIR instead")


# -- claims: no image and no text in two splits ------------------------------------------------

class Claims:
    """The split (and item) that owns each image content and each text."""

    def __init__(self):
        self.owners: dict[tuple, tuple] = {}

    def free(self, key: tuple, owner: tuple) -> bool:
        return self.owners.get(key, owner) == owner

    def take(self, keys_and_owners: list[tuple[tuple, tuple]]) -> bool:
        """Claim every key for its owner, or none of them when one is owned by someone else."""
        if not all(self.free(key, owner) for key, owner in keys_and_owners):
            return False
        for key, owner in keys_and_owners:
            self.owners.setdefault(key, owner)
        return True


def _text_key(text: str) -> tuple:
    return ("text", " ".join(text.casefold().split()))


# -- the three sources -------------------------------------------------------------------------

@dataclass
class _Build:
    root: Path
    config: DemoConfig
    workers: int
    show_progress: bool
    ids: Ids = field(default_factory=Ids)
    claims: Claims = field(default_factory=Claims)
    skipped: Counter = field(default_factory=Counter)
    images: int = 0

    def __post_init__(self):
        self.splits = {name: SplitRecords(name, self.ids) for name in SPLITS}

    def rng(self, *parts) -> random.Random:
        return random.Random("/".join(str(p) for p in (self.config.seed, *parts)))

    def write_image(self, relative: str, png: bytes) -> None:
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(png)
        self.images += 1


def _rendered(order: list, size: int, workers: int):
    """(clipart, png or None, reason or None) for each clipart of ``order``, in order."""
    tasks = [(str(item.path), size) for item in order]
    if workers <= 1:
        for item, task in zip(order, tasks):
            yield (item, *clipart.render_png(task))
        return
    import multiprocessing

    with multiprocessing.Pool(workers) as pool:  # leaving the block (or closing this generator) stops it
        for item, result in zip(order, pool.imap(clipart.render_png, tasks, chunksize=4)):
            yield (item, *result)


def _clipart(build: _Build, source: Path) -> None:
    clipart.check_renderer()
    size = build.config.size
    scan = clipart.scan(source)
    build.skipped.update({f"clipart: {reason}": n for reason, n in scan.skipped.items()})
    groups: dict[str, list] = {}
    for item in scan.cliparts:
        members = groups.setdefault(item.group, [])
        if len(members) < clipart.MAX_TITLE_SHARE:
            members.append(item)
        else:
            build.skipped["clipart: more cliparts with the same title"] += 1
    keys = sorted(groups)
    build.rng("clipart", "groups").shuffle(keys)
    budgets = [("test", size.test_pool + size.test_queries), ("val", size.val_pool + size.val_queries),
               ("train", size.train_queries)]
    chosen: dict[str, list] = {name: [] for name in SPLITS}
    order = [item for key in keys for item in groups[key]]
    rendered = _rendered(order, build.config.image_size, build.workers)
    total = min(sum(n for _, n in budgets), len(order))
    with progress_bar(total, "rendering cliparts", enabled=build.show_progress) as bar:
        stage = 0
        for key in keys:
            if stage == len(budgets):
                break
            split, budget = budgets[stage]
            for _ in groups[key]:
                item, png, reason = next(rendered)
                if png is None:
                    build.skipped[f"clipart: {reason}"] += 1
                    continue
                picture = ("image", hashlib.sha256(png).hexdigest())
                if not build.claims.take([(picture, (split, item.relative)), (_text_key(item.caption), (split,))]):
                    owner = build.claims.owners.get(picture, (split,))
                    build.skipped["clipart: " + ("same picture as another clipart" if owner[0] == split
                                                 else "image or caption already in another split")] += 1
                else:
                    chosen[split].append((item, png))
                    bar.advance()
            if len(chosen[split]) >= budget:
                stage += 1
    rendered.close()
    _clipart_splits(build, chosen)


def _clipart_picture(build: _Build, split: str, item, png: bytes) -> Picture:
    relative = f"mbeir_images/clipart_images/{split}/{item.path.stem}-{item.sha256[:8]}.png"
    build.write_image(relative, png)
    src = {"source": clipart.PACKAGE, "file": item.relative, "title": item.title, "keywords": list(item.keywords),
           "category": item.category}
    return Picture(relative, item.group, item.category, src)


def _clipart_text(item) -> Text:
    return Text(item.caption, item.group, {"source": clipart.PACKAGE, "file": item.relative, "title": item.title})


def _clipart_splits(build: _Build, chosen: dict[str, list]) -> None:
    size = build.config.size
    for split, (pool_size, query_count) in (("test", (size.test_pool, size.test_queries)),
                                            ("val", (size.val_pool, size.val_queries))):
        items = list(chosen[split])
        rng = build.rng("clipart", split)
        rng.shuffle(items)
        pool_items = items[:pool_size]
        categories = {item.category for item, _ in pool_items} - {""}
        query_items = [x for x in items[pool_size:] if x[0].category in categories][:query_count]
        pool = [_clipart_picture(build, split, item, png) for item, png in pool_items]
        image_queries = [_clipart_picture(build, split, item, png) for item, png in query_items]
        texts = list({text.text: text for text in (_clipart_text(item) for item, _ in pool_items)}.values())
        image_text_eval(build.splits[split], "clipart", pool=pool, image_queries=image_queries, texts=texts,
                        text_queries=rng.sample(texts, min(query_count, len(texts))),
                        i2t_queries=rng.sample(pool, min(query_count, len(pool))))
    train = chosen["train"][:size.train_queries]
    pictures = [_clipart_picture(build, "train", item, png) for item, png in train]
    texts_of: dict[str, dict[str, Text]] = {}
    for item, _ in train:
        text = _clipart_text(item)
        texts_of.setdefault(item.group, {})[text.text] = text
    image_text_train(build.splits["train"], "clipart", pictures, {g: list(t.values()) for g, t in texts_of.items()},
                     build.rng("clipart", "train"))


class _Drawer:
    """Draws Fashion-MNIST images of one source split in a seeded order, balanced over classes,
    never the same index twice and never an image another split owns."""

    def __init__(self, build: _Build, data, source_split: str):
        self.build, self.data, self.source_split = build, data, source_split
        self.order = list(range(len(data)))
        build.rng("fashionmnist", source_split).shuffle(self.order)
        self.used: set[int] = set()

    def take(self, split: str, count: int) -> list[int]:
        classes = len(fashion_mnist.CLASSES)
        quota = {label: count // classes + (1 if label < count % classes else 0) for label in range(classes)}
        taken = []
        for index in self.order:
            if len(taken) == count:
                break
            label = int(self.data.labels[index])
            if index in self.used or quota[label] == 0:
                continue
            self.used.add(index)
            key = ("image", hashlib.sha256(self.data.images[index].tobytes()).hexdigest())
            if not self.build.claims.take([(key, (split, self.source_split, index))]):
                self.build.skipped["fashion-mnist: same image already in another split"] += 1
                continue
            quota[label] -= 1
            taken.append(index)
        return taken

    def pictures(self, split: str, indices: list[int]) -> list[Picture]:
        pictures = []
        for index in indices:
            label = int(self.data.labels[index])
            name = fashion_mnist.CLASSES[label]
            relative = f"mbeir_images/fashionmnist_images/{split}/{self.source_split}-{index:05d}.png"
            image = fashion_mnist.to_image(self.data.images[index], self.build.config.image_size)
            target = self.build.root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            image.save(target, format="PNG")
            self.build.images += 1
            src = {"source": fashion_mnist.PACKAGE, "file_split": self.source_split, "index": index,
                   "label": label, "class": name}
            pictures.append(Picture(relative, name, name, src))
        return pictures


def _fashion_texts(build: _Build, split: str) -> dict[str, list[Text]]:
    texts = {}
    for label, name in enumerate(fashion_mnist.CLASSES):
        texts[name] = []
        for text in fashion_mnist.descriptions(label, split):
            if build.claims.take([(_text_key(text), (split,))]):
                texts[name].append(Text(text, name, {"source": "lamra", "class": name}))
            else:
                build.skipped["fashion-mnist: description already in another split"] += 1
    return texts


def _fashion_mnist(build: _Build, source: Path) -> None:
    size = build.config.size
    test_data, train_data = fashion_mnist.load(source, "t10k"), fashion_mnist.load(source, "train")
    test, train = _Drawer(build, test_data, "t10k"), _Drawer(build, train_data, "train")
    total = size.test_pool + size.test_queries + size.val_pool + size.val_queries + size.train_queries
    with progress_bar(total, "writing Fashion-MNIST images", enabled=build.show_progress) as bar:
        # The held-out t10k split feeds the test split only; val and train come from train.
        for split, drawer, pool_size, query_count in (("test", test, size.test_pool, size.test_queries),
                                                      ("val", train, size.val_pool, size.val_queries)):
            pool = drawer.pictures(split, drawer.take(split, pool_size))
            queries = drawer.pictures(split, drawer.take(split, query_count))
            bar.advance(len(pool) + len(queries))
            texts = [t for group in _fashion_texts(build, split).values() for t in group]
            image_text_eval(build.splits[split], "fashionmnist", pool=pool, image_queries=queries, texts=texts,
                            text_queries=texts[:query_count], i2t_queries=queries)
        pictures = train.pictures("train", train.take("train", size.train_queries))
        bar.advance(len(pictures))
    image_text_train(build.splits["train"], "fashionmnist", pictures, _fashion_texts(build, "train"),
                     build.rng("fashionmnist", "queries"))


def _wordnet(build: _Build, source: Path) -> dict[str, list[dict]]:
    size = build.config.size
    groups: dict[str, list] = {}
    for synset in wordnet.read_synsets(source):
        if synset.examples:
            groups.setdefault(synset.lemma.casefold(), []).append(synset)
    keys = sorted(groups)
    build.rng("wordnet", "groups").shuffle(keys)
    budgets = [("test", max(size.test_pool, size.pairs_test)), ("val", size.val_pool),
               ("train", max(size.train_queries, size.pairs_train))]
    chosen: dict[str, list] = {name: [] for name in SPLITS}
    stage = 0
    for key in keys:
        if stage == len(budgets):
            break
        split, budget = budgets[stage]
        for synset in groups[key]:
            texts = [synset.defined, *synset.examples]
            if build.claims.take([(_text_key(t), (split,)) for t in texts]):
                chosen[split].append(synset)
            else:
                build.skipped["wordnet: definition or example already in another split"] += 1
        if len(chosen[split]) >= budget:
            stage += 1
    for split in SPLITS:
        build.rng("wordnet", split).shuffle(chosen[split])
    wordnet_eval(build.splits["test"], chosen["test"][:size.test_pool], size.test_queries)
    wordnet_eval(build.splits["val"], chosen["val"][:size.val_pool], size.val_queries)
    wordnet_train(build.splits["train"], chosen["train"][:size.train_queries])
    return {"train": wordnet_pairs(chosen["train"], size.pairs_train, build.rng("wordnet", "pairs", "train")),
            "test": wordnet_pairs(chosen["test"], size.pairs_test, build.rng("wordnet", "pairs", "test"))}


# -- writing -----------------------------------------------------------------------------------

def _write_jsonl(path: Path, records) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def _write_qrels(path: Path, queries: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(format_qrels_line(q["qid"], did, q["task_id"]) for q in queries
                            for did in q["pos_cand_list"]), encoding="utf-8")


def _write(build: _Build, pairs: dict[str, list[dict]]) -> dict:
    root, layout = build.root, MBEIRLayout(build.root)
    counts: dict = {"queries": {}, "pools": {}, "union_pools": {}, "pairs": {}}
    (root / TASKS_FILE).write_text(json.dumps(tasks_document(), indent=2) + "\n", encoding="utf-8")
    for split in ("test", "val"):
        records = build.splits[split]
        for task, _, _ in DEMO_TASKS:
            queries = records.queries.get(task, [])
            counts["queries"][f"{split}/{task}"] = _write_jsonl(layout.query_file(task, split), queries)
            _write_qrels(layout.qrels_file(task, split), queries)
    for task, _, _ in DEMO_TASKS:
        dids = build.splits["test"].pools.get(task, [])
        counts["pools"][task] = _write_jsonl(layout.local_pool(task),
                                             (build.splits["test"].candidates[d] for d in dids))
    for split in SPLITS:
        candidates = build.splits[split].candidates.values()
        counts["union_pools"][split] = _write_jsonl(layout.global_pool(split), candidates)
    everything = []
    for dataset, _, _ in DEMO_DATASETS:
        queries = [q for task, d, _ in DEMO_TASKS if d == dataset for q in build.splits["train"].queries.get(task, [])]
        _write_jsonl(root / "query" / "train" / f"mbeir_{dataset}_train.jsonl", queries)
        everything.extend(queries)
    for task, _, _ in DEMO_TASKS:
        counts["queries"][f"train/{task}"] = len(build.splits["train"].queries.get(task, []))
    build.rng("union").shuffle(everything)
    counts["queries"]["train/union"] = _write_jsonl(root / "query" / "union_train" / "mbeir_union_up_train.jsonl",
                                                    everything)
    write_instructions(layout.instructions_file, instruction_rows())
    for split, rows in pairs.items():
        counts["pairs"][split] = _write_jsonl(root / "pairs" / f"{split}.jsonl", rows)
    from .sources.licences import licences_text

    (root / "LICENSES.txt").write_text(licences_text(), encoding="utf-8")
    counts["images"] = build.images
    return counts


def build_demo_data(out: str | os.PathLike, config: DemoConfig | None = None, sources: DemoSources | None = None,
                    *, overwrite: bool = False, workers: int = 2, show_progress: bool = True) -> dict:
    """Write the demo data set at ``out``; returns its manifest (config, counts, skipped files).

    Raises :class:`SourcesMissing` when a source's Debian package is not installed. The folder
    appears complete or not at all (built beside ``out``, then renamed); ``overwrite`` replaces an
    earlier demo data set, never another folder. ``workers`` processes render the cliparts.
    """
    config = config or DemoConfig()
    sources = sources or DemoSources()
    if config.image_size < 28:
        raise InputError(f"the image size must be at least 28 pixels, got {config.image_size}")
    if min(asdict(config.size).values()) < 0:
        raise InputError(f"sizes must be >= 0, got {config.size}")
    missing = sources.missing()
    if missing:
        raise SourcesMissing(missing)

    def build(folder: Path) -> dict:
        state = _Build(folder, config, max(1, workers), show_progress)
        _clipart(state, Path(sources.clipart))
        _fashion_mnist(state, Path(sources.fashion_mnist))
        pairs = _wordnet(state, Path(sources.wordnet))
        counts = _write(state, pairs)
        return {"generator": "lamra.demo.data", "version": DEMO_VERSION,
                "config": {"seed": config.seed, "image_size": config.image_size, **asdict(config.size)},
                "sources": {"clipart": str(sources.clipart), "fashion_mnist": str(sources.fashion_mnist),
                            "wordnet": str(sources.wordnet)},
                "tasks": [task for task, _, _ in DEMO_TASKS], "counts": counts,
                "skipped": dict(sorted(state.skipped.items()))}

    return write_generated(out, build, marker=MARKER, what="demo data set", overwrite=overwrite)
