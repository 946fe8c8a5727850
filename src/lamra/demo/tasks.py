"""The tasks of the demo data set (``lamra data demo``) and the records that make them.

Three datasets with ids M-BEIR does not use, and seven tasks:

==================== ==== ============ =====================================================
task                 id   type         query -> positives
==================== ==== ============ =====================================================
clipart_task0        20   qt -> ci     a clipart caption -> the cliparts with that title
clipart_task3        20   qi -> ct     a clipart -> the captions of its title
clipart_task4        20   qi -> ci     a clipart -> the pool's cliparts of its category
fashionmnist_task0   21   qt -> ci     a class description -> the pool's images of the class
fashionmnist_task3   21   qi -> ct     an image -> the descriptions of its class
fashionmnist_task4   21   qi -> ci     an image -> the pool's images of its class
wordnet_task1        22   qt -> ct     "lemma: definition" -> its example sentence
==================== ==== ============ =====================================================

:class:`SplitRecords` collects one split's queries, candidates and (test) local pools;
:func:`image_text_eval` / :func:`image_text_train` build the three image tasks of a source from
its pictures and texts, :func:`wordnet_eval` / :func:`wordnet_train` the text task.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

# (name, dataset id, display name): ids after M-BEIR's 0-9, names none of M-BEIR's.
DEMO_DATASETS = (("clipart", 20, "OpenClipart"), ("fashionmnist", 21, "Fashion-MNIST"), ("wordnet", 22, "WordNet"))
DATASET_IDS = {name: dataset_id for name, dataset_id, _ in DEMO_DATASETS}
DEMO_TASKS = (("clipart_task0", "clipart", 0), ("clipart_task3", "clipart", 3), ("clipart_task4", "clipart", 4),
              ("fashionmnist_task0", "fashionmnist", 0), ("fashionmnist_task3", "fashionmnist", 3),
              ("fashionmnist_task4", "fashionmnist", 4), ("wordnet_task1", "wordnet", 1))
RECALL_K = 5
MODALITIES = {0: ("text", "image"), 1: ("text", "text"), 3: ("image", "text"), 4: ("image", "image")}
# M-BEIR's MSCOCO instructions for text <-> image (so the model serves plain photo search), NIGHTS'
# for image -> image, and one written for the WordNet task.
INSTRUCTIONS = {
    0: "Find me an everyday image that matches the given caption.",
    3: "Find an image caption describing the following everyday image.",
    4: "Find a day-to-day image that looks similar to the provided image.",
    1: "Retrieve a sentence that uses the word with the following definition.",
}
# Positives listed per train query (the query's own first). High enough that a class or category
# task lists every training picture of it in the small preset (60 per Fashion-MNIST class, at most
# 97 per clipart category): a picture of the query's class left off the list would be mined as a
# hard negative of its own class for reranker training. The cap keeps the full preset's files small.
MAX_TRAIN_POSITIVES = 100


def tasks_document() -> dict:
    """The content of ROOT/tasks.json (read by :func:`lamra.data.mbeir.declared_tasks`)."""
    return {"datasets": [{"name": n, "id": i, "display": d} for n, i, d in DEMO_DATASETS],
            "tasks": [{"name": name, "dataset": dataset, "task_id": task_id, "recall_k": RECALL_K}
                      for name, dataset, task_id in DEMO_TASKS]}


def instruction_rows() -> list[tuple[str, str, str, int, list[str]]]:
    rows = []
    for _, dataset, task_id in DEMO_TASKS:
        name, dataset_id, display = next(d for d in DEMO_DATASETS if d[0] == dataset)
        query_modality, cand_modality = MODALITIES[task_id]
        rows.append((query_modality, cand_modality, display, dataset_id, [INSTRUCTIONS[task_id]]))
    return rows


@dataclass(frozen=True)
class Picture:
    """An image of a source, already written under the root (``path`` is root-relative)."""

    path: str
    group: str  # the texts of the same group describe it (clipart title / Fashion-MNIST class)
    category: str  # image -> image positives share it (clipart folder / Fashion-MNIST class); "" none
    src: dict


@dataclass(frozen=True)
class Text:
    text: str
    group: str
    src: dict


class Ids:
    """"{dataset_id}:{n}" counters per dataset, one for qids and one for dids, over all splits."""

    def __init__(self):
        self.counts: dict[tuple[str, str], int] = {}

    def new(self, kind: str, dataset: str) -> str:
        number = self.counts.get((kind, dataset), 0) + 1
        self.counts[(kind, dataset)] = number
        return f"{DATASET_IDS[dataset]}:{number}"


@dataclass
class SplitRecords:
    """One split's queries (per task), candidates (each once) and local pools (per task, test)."""

    name: str
    ids: Ids
    queries: dict[str, list[dict]] = field(default_factory=dict)
    candidates: dict[str, dict] = field(default_factory=dict)  # did -> record, in creation order
    pools: dict[str, list[str]] = field(default_factory=dict)  # task -> dids
    _made: dict[tuple, str] = field(default_factory=dict)  # (dataset, kind, key) -> did

    def image(self, dataset: str, picture: Picture) -> str:
        return self._candidate(dataset, ("image", picture.path),
                               {"txt": None, "img_path": picture.path, "modality": "image"}, picture.src)

    def text(self, dataset: str, text: Text) -> str:
        return self._candidate(dataset, ("text", text.text),
                               {"txt": text.text, "img_path": None, "modality": "text"}, text.src)

    def _candidate(self, dataset: str, key: tuple, fields: dict, src: dict) -> str:
        key = (dataset, *key)
        if key not in self._made:
            did = self.ids.new("did", dataset)
            self.candidates[did] = {**fields, "did": did, "src_content": json.dumps(src, sort_keys=True)}
            self._made[key] = did
        return self._made[key]

    def query(self, task: str, *, text: str | None = None, image: str | None = None, src: dict,
              positives: list[str]) -> None:
        dataset, task_id = next((d, t) for n, d, t in DEMO_TASKS if n == task)
        record = {"qid": self.ids.new("qid", dataset), "query_txt": text, "query_img_path": image,
                  "query_modality": MODALITIES[task_id][0], "query_src_content": json.dumps(src, sort_keys=True),
                  "pos_cand_list": positives, "neg_cand_list": [], "task_id": task_id}
        self.queries.setdefault(task, []).append(record)

    def pool(self, task: str, dids: list[str]) -> None:
        self.pools[task] = list(dict.fromkeys(dids))


def _sample(rng: random.Random, items: list, count: int) -> list:
    return rng.sample(items, min(count, len(items)))


def image_text_eval(records: SplitRecords, dataset: str, *, pool: list[Picture], image_queries: list[Picture],
                    texts: list[Text], text_queries: list[Text], i2t_queries: list[Picture]) -> None:
    """The three image tasks of one evaluation split (val or test) of a source.

    ``pool``: the image pool (text -> image, image -> image); ``texts``: the caption pool (image ->
    text); ``text_queries`` / ``i2t_queries`` / ``image_queries``: the queries of task 0 / 3 / 4.
    Queries without a positive in the pool are left out.
    """
    image_dids = {picture.path: records.image(dataset, picture) for picture in pool}
    text_dids = {text.text: records.text(dataset, text) for text in texts}
    by_group: dict[str, list[str]] = {}
    by_category: dict[str, list[str]] = {}
    for picture in pool:
        by_group.setdefault(picture.group, []).append(image_dids[picture.path])
        if picture.category:
            by_category.setdefault(picture.category, []).append(image_dids[picture.path])
    texts_by_group: dict[str, list[str]] = {}
    for text in texts:
        texts_by_group.setdefault(text.group, []).append(text_dids[text.text])
    for text in text_queries:
        if by_group.get(text.group):
            records.query(f"{dataset}_task0", text=text.text, src=text.src, positives=by_group[text.group])
    for picture in i2t_queries:
        if texts_by_group.get(picture.group):
            records.query(f"{dataset}_task3", image=picture.path, src=picture.src,
                          positives=texts_by_group[picture.group])
    for picture in image_queries:
        positives = [d for d in by_category.get(picture.category, []) if d != image_dids.get(picture.path)]
        if positives:
            records.query(f"{dataset}_task4", image=picture.path, src=picture.src, positives=positives)
    if records.name == "test":
        records.pool(f"{dataset}_task0", list(image_dids.values()))
        records.pool(f"{dataset}_task3", list(text_dids.values()))
        records.pool(f"{dataset}_task4", list(image_dids.values()))


def image_text_train(records: SplitRecords, dataset: str, pictures: list[Picture], texts_of: dict[str, list[Text]],
                     rng: random.Random) -> None:
    """The three image tasks' train queries: one of each per picture.

    text -> image: one of the picture's group texts -> the picture (then others of its group);
    image -> text: the picture -> its group's texts; image -> image: the picture -> others of its
    category. At most MAX_TRAIN_POSITIVES positives are listed, the query's own first.
    """
    image_dids = {picture.path: records.image(dataset, picture) for picture in pictures}
    by_group: dict[str, list[str]] = {}
    by_category: dict[str, list[str]] = {}
    for picture in pictures:
        by_group.setdefault(picture.group, []).append(image_dids[picture.path])
        if picture.category:
            by_category.setdefault(picture.category, []).append(image_dids[picture.path])

    def some(dids: list[str], first: str | None) -> list[str]:
        others = [d for d in dids if d != first]
        chosen = _sample(rng, others, MAX_TRAIN_POSITIVES - (first is not None))
        return ([first] if first is not None else []) + chosen

    for picture in pictures:
        own = image_dids[picture.path]
        texts = texts_of.get(picture.group) or []
        if texts:
            text = texts[rng.randrange(len(texts))]
            records.query(f"{dataset}_task0", text=text.text, src=text.src,
                          positives=some(by_group[picture.group], own))
            text_dids = [records.text(dataset, t) for t in texts]
            records.query(f"{dataset}_task3", image=picture.path, src=picture.src,
                          positives=text_dids[:MAX_TRAIN_POSITIVES])
        same = some(by_category.get(picture.category, []), own)[1:]
        if same:
            records.query(f"{dataset}_task4", image=picture.path, src=picture.src, positives=same)


def wordnet_eval(records: SplitRecords, synsets: list, query_count: int) -> None:
    """wordnet_task1 of an evaluation split: every synset's first example is in the pool; the
    first ``query_count`` synsets' definitions are the queries."""
    dids = [records.text("wordnet", Text(s.examples[0], s.key, _wordnet_src(s))) for s in synsets]
    for synset, did in list(zip(synsets, dids))[:query_count]:
        records.query("wordnet_task1", text=synset.defined, src=_wordnet_src(synset), positives=[did])
    if records.name == "test":
        records.pool("wordnet_task1", dids)


def wordnet_train(records: SplitRecords, synsets: list) -> None:
    """wordnet_task1 train queries: a definition -> its example sentences."""
    for synset in synsets:
        positives = [records.text("wordnet", Text(e, synset.key, _wordnet_src(synset))) for e in synset.examples]
        records.query("wordnet_task1", text=synset.defined, src=_wordnet_src(synset),
                      positives=positives[:MAX_TRAIN_POSITIVES])


def _wordnet_src(synset) -> dict:
    return {"source": "wordnet-base", "synset": synset.key, "lemma": synset.lemma}


def wordnet_pairs(synsets: list, count: int, rng: random.Random) -> list[dict]:
    """Stage-1 text pairs in SimCSE's NLI layout: ``sent0`` "lemma: definition", ``sent1`` an
    example sentence, ``hard_neg`` an example of another sense of the same lemma, or else of
    another synset of the same part of speech and lexicographer file (topic)."""
    by_lemma: dict[str, list] = {}
    by_topic: dict[tuple, list] = {}
    for synset in synsets:
        by_lemma.setdefault(synset.lemma.casefold(), []).append(synset)
        by_topic.setdefault((synset.pos, synset.lex_file), []).append(synset)
    pairs = []
    for synset in synsets:
        same_lemma = [s for s in by_lemma[synset.lemma.casefold()] if s is not synset]
        topic = by_topic[(synset.pos, synset.lex_file)]
        for example in synset.examples:
            if len(pairs) == count:
                return pairs
            negatives = [e for s in same_lemma for e in s.examples if e != example]
            for _ in range(4 if not negatives and len(topic) > 1 else 0):
                other = topic[rng.randrange(len(topic))]
                negatives = [e for e in other.examples if e != example] if other is not synset else []
                if negatives:
                    break
            if negatives:
                pairs.append({"sent0": synset.defined, "sent1": example, "hard_neg": rng.choice(negatives)})
    return pairs
