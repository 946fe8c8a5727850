"""M-BEIR (UniIR) data: tasks, query files, candidate pools, qrels and instructions.

Layout of an M-BEIR root (spec section 6; image paths inside the files are relative to it)::

    query/{split}/mbeir_{task}_{split}.jsonl          queries (qid, query_txt, query_img_path, ...)
    cand_pool/local/mbeir_{task}_cand_pool.jsonl      one pool per task (MSCOCO: mbeir_mscoco_task0_test_...)
    cand_pool/global/mbeir_union_{split}_cand_pool.jsonl   the union pool (5.6M lines for test)
    qrels/{split}/mbeir_{task}_{split}_qrels.txt      "{qid} 0 {did} 1 {task_id}"
    instructions/query_instructions.tsv               task instructions (built-in first ones as fallback)

Large files are streamed line by line (:func:`iter_queries`, :func:`iter_candidates`); nothing here
loads a whole pool unless the caller collects it. The checks of a record live in one place
(:func:`query_problems`, :func:`candidate_problems`) and serve both the reader, which stops at the
first problem, and ``lamra data validate`` (:mod:`lamra.data.mbeir_validate`), which reports all.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import InputError
from ..items import Item
from ..prompts import format_text
from .jsonl import iter_jsonl

logger = logging.getLogger(__name__)

MODALITIES = ("text", "image", "image,text")

# task_id -> (query modality, candidate modality); task 5 is unused in M-BEIR.
TASK_MODALITIES = {
    0: ("text", "image"),
    1: ("text", "text"),
    2: ("text", "image,text"),
    3: ("image", "text"),
    4: ("image", "image"),
    6: ("image,text", "text"),
    7: ("image,text", "image"),
    8: ("image,text", "image,text"),
}
# The column headings of the paper's Table 2.
TASK_TYPE_LABELS = {
    0: "qt→ci", 1: "qt→ct", 2: "qt→(ci,ct)", 3: "qi→ct", 4: "qi→ci",
    6: "(qi,qt)→ct", 7: "(qi,qt)→ci", 8: "(qi,qt)→(ci,ct)",
}
# dataset -> (dataset_id, display name)
DATASETS = {
    "visualnews": (0, "VisualNews"),
    "fashion200k": (1, "Fashion200K"),
    "webqa": (2, "WebQA"),
    "edis": (3, "EDIS"),
    "nights": (4, "NIGHTS"),
    "oven": (5, "OVEN"),
    "infoseek": (6, "InfoSeek"),
    "fashioniq": (7, "FashionIQ"),
    "cirr": (8, "CIRR"),
    "mscoco": (9, "MSCOCO"),
}
DATASET_BY_ID = {dataset_id: name for name, (dataset_id, _) in DATASETS.items()}

ID_PATTERN = re.compile(r"^\d+:\d+$")  # "{dataset_id}:{n}", for both qid and did


@dataclass(frozen=True)
class Task:
    """One of the 16 M-BEIR evaluation tasks, e.g. ``mscoco_task0``."""

    name: str
    dataset: str
    task_id: int
    recall_k: int  # the task's metric is Recall@recall_k (a hit rate)

    @property
    def dataset_id(self) -> int:
        return DATASETS[self.dataset][0]

    @property
    def display_dataset(self) -> str:
        return DATASETS[self.dataset][1]

    @property
    def query_modality(self) -> str:
        return TASK_MODALITIES[self.task_id][0]

    @property
    def cand_modality(self) -> str:
        return TASK_MODALITIES[self.task_id][1]

    @property
    def type_label(self) -> str:
        return TASK_TYPE_LABELS[self.task_id]

    @property
    def metric(self) -> str:
        return f"Recall@{self.recall_k}"

    @property
    def local_pool_name(self) -> str:
        # MSCOCO keeps separate val and test pools; the 16-task evaluation uses the test ones.
        return f"{self.name}_test" if self.dataset == "mscoco" else self.name


def _task(dataset: str, task_id: int) -> Task:
    recall_k = 10 if dataset in ("fashion200k", "fashioniq") else 5
    return Task(f"{dataset}_task{task_id}", dataset, task_id, recall_k)


# The 16 evaluation tasks in the order of the paper's Table 2.
TASKS: tuple[Task, ...] = tuple(_task(d, t) for d, t in [
    ("visualnews", 0), ("mscoco", 0), ("fashion200k", 0), ("webqa", 1), ("edis", 2), ("webqa", 2),
    ("visualnews", 3), ("mscoco", 3), ("fashion200k", 3), ("nights", 4), ("oven", 6), ("infoseek", 6),
    ("fashioniq", 7), ("cirr", 7), ("oven", 8), ("infoseek", 8),
])
TASKS_BY_NAME = {task.name: task for task in TASKS}


def get_task(name: str) -> Task:
    try:
        return TASKS_BY_NAME[name]
    except KeyError:
        raise InputError(f"unknown M-BEIR task {name!r}; the tasks are: {', '.join(TASKS_BY_NAME)}") from None


# The first instruction of each (dataset_id, query modality, candidate modality): the built-in
# fallback when instructions/query_instructions.tsv is absent (spec section 6).
_WIKI_PARAGRAPH = "Retrieve a Wikipedia paragraph that provides an answer to the given query about the image."
_WIKI_PAIR = "Retrieve a Wikipedia image-description pair that provides evidence for the question of this image."
BUILTIN_INSTRUCTIONS = {
    (0, "text", "image"): "Identify the news-related image in line with the described event.",
    (0, "image", "text"): "Find a caption for the news in the given photo.",
    (1, "text", "image"): "Based on the following fashion description, retrieve the best matching image.",
    (1, "image", "text"): "Find a product description for the fashion item in the image.",
    (2, "text", "text"): "Retrieve passages from Wikipedia that provide answers to the following question.",
    (2, "text", "image,text"): "Find a Wikipedia image that answers this question.",
    (3, "text", "image,text"): "Find a news image that matches the provided caption.",
    (4, "image", "image"): "Find a day-to-day image that looks similar to the provided image.",
    (5, "image,text", "text"): _WIKI_PARAGRAPH,
    (5, "image,text", "image,text"): _WIKI_PAIR,
    (6, "image,text", "text"): _WIKI_PARAGRAPH,
    (6, "image,text", "image,text"): _WIKI_PAIR,
    (7, "image,text", "image"): "Find a fashion image that aligns with the reference image and style note.",
    (8, "image,text", "image"): "Retrieve a day-to-day image that aligns with the modification instructions of the "
                                "provided image.",
    (9, "text", "image"): "Find me an everyday image that matches the given caption.",
    (9, "image", "text"): "Find an image caption describing the following everyday image.",
}


# -- paths -----------------------------------------------------------------------------------

class MBEIRLayout:
    """Where each file of an M-BEIR root lives."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def query_file(self, task: str, split: str = "test") -> Path:
        return self.root / "query" / split / f"mbeir_{task}_{split}.jsonl"

    def qrels_file(self, task: str, split: str = "test") -> Path:
        return self.root / "qrels" / split / f"mbeir_{task}_{split}_qrels.txt"

    def local_pool(self, task: str) -> Path:
        return self.root / "cand_pool" / "local" / f"mbeir_{get_task(task).local_pool_name}_cand_pool.jsonl"

    def global_pool(self, split: str = "test") -> Path:
        return self.root / "cand_pool" / "global" / f"mbeir_union_{split}_cand_pool.jsonl"

    def pool(self, task: str, pool: str = "local", split: str = "test") -> Path:
        if pool == "local":
            return self.local_pool(task)
        if pool == "global":
            return self.global_pool(split)
        raise InputError(f"pool must be 'local' or 'global', got {pool!r}")

    @property
    def instructions_file(self) -> Path:
        return self.root / "instructions" / "query_instructions.tsv"

    def image(self, relative: str) -> Path:
        return self.root / relative


# -- records ---------------------------------------------------------------------------------

QUERY_FIELDS = ("qid", "query_txt", "query_img_path", "query_modality", "query_src_content",
                "pos_cand_list", "neg_cand_list", "task_id")
CANDIDATE_FIELDS = ("txt", "img_path", "modality", "did", "src_content")


@dataclass
class MBEIRQuery:
    """A query line. Text and image keep M-BEIR's raw values (``None`` stays ``None``)."""

    qid: str
    text: str | None
    image: str | None  # relative to the M-BEIR root
    modality: str
    src_content: str | None
    positives: list[str]
    negatives: list[str]
    task_id: int
    extra: dict = field(default_factory=dict)  # fields M-BEIR does not define, kept for round trips
    line: int | None = None

    @property
    def dataset_id(self) -> int:
        return int(self.qid.split(":", 1)[0])

    def to_record(self) -> dict:
        return {"qid": self.qid, "query_txt": self.text, "query_img_path": self.image,
                "query_modality": self.modality, "query_src_content": self.src_content,
                "pos_cand_list": list(self.positives), "neg_cand_list": list(self.negatives),
                "task_id": self.task_id, **self.extra}

    def item(self, root: str | os.PathLike) -> Item:
        """What the retriever reads: the parts named by the modality (the instruction comes apart)."""
        return _item(self.qid, self.text, self.image, self.modality, root)


@dataclass
class MBEIRCandidate:
    """A candidate-pool line."""

    did: str
    text: str | None
    image: str | None
    modality: str
    src_content: str | None
    extra: dict = field(default_factory=dict)
    line: int | None = None

    @property
    def dataset_id(self) -> int:
        return int(self.did.split(":", 1)[0])

    def to_record(self) -> dict:
        return {"txt": self.text, "img_path": self.image, "modality": self.modality, "did": self.did,
                "src_content": self.src_content, **self.extra}

    def item(self, root: str | os.PathLike) -> Item:
        return _item(self.did, self.text, self.image, self.modality, root)


def _item(item_id: str, text: str | None, image: str | None, modality: str, root) -> Item:
    # The modality decides, as in UniIR / LamRA: an "image" line's caption text is not read.
    parts = modality.split(",")
    return Item(text=text if "text" in parts else None,
                images=[Path(root) / image] if "image" in parts and image else [], id=item_id)


def _check_id(record: dict, key: str, problems: list) -> None:
    value = record.get(key)
    if not isinstance(value, str) or not value:
        problems.append((key, f"must be a non-empty string, got {value!r}"))
    elif not ID_PATTERN.match(value):
        problems.append((key, f"must look like '{{dataset_id}}:{{n}}', got {value!r}"))


def _check_modality(record: dict, key: str, text_key: str, image_key: str, problems: list) -> None:
    for optional in (text_key, image_key):
        value = record.get(optional)
        if value is not None and not isinstance(value, str):
            problems.append((optional, f"must be a string or null, got {type(value).__name__}"))
    modality = record.get(key)
    if modality not in MODALITIES:
        problems.append((key, f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}"))
        return
    parts = modality.split(",")
    text, image = record.get(text_key), record.get(image_key)
    if "text" in parts and not (isinstance(text, str) and text.strip()):
        problems.append((text_key, f"modality is {modality!r} but the text is empty"))
    if "image" in parts and not (isinstance(image, str) and image):
        problems.append((image_key, f"modality is {modality!r} but there is no image path"))


def _check_src_content(record: dict, key: str, problems: list) -> None:
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        problems.append((key, f"must be a JSON string or null, got {type(value).__name__}"))


def query_problems(record: dict) -> list[tuple[str, str]]:
    """Every (field, message) wrong with a query record (empty when it is good)."""
    problems: list[tuple[str, str]] = []
    for key in QUERY_FIELDS:
        if key not in record and key != "neg_cand_list":
            problems.append((key, "missing field"))
    _check_id(record, "qid", problems)
    _check_modality(record, "query_modality", "query_txt", "query_img_path", problems)
    _check_src_content(record, "query_src_content", problems)
    for key in ("pos_cand_list", "neg_cand_list"):
        value = record.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append((key, "must be a list of did strings"))
    if isinstance(record.get("pos_cand_list"), list) and not record["pos_cand_list"]:
        problems.append(("pos_cand_list", "no positive candidate"))
    task_id = record.get("task_id")
    if isinstance(task_id, bool) or not isinstance(task_id, int) or task_id not in TASK_MODALITIES:
        if "task_id" in record:
            problems.append(("task_id", f"unknown task id {task_id!r}; expected one of {sorted(TASK_MODALITIES)}"))
    elif record.get("query_modality") in MODALITIES and record["query_modality"] != TASK_MODALITIES[task_id][0]:
        problems.append(("query_modality", f"task {task_id} queries are {TASK_MODALITIES[task_id][0]!r}, "
                                           f"got {record['query_modality']!r}"))
    return problems


def candidate_problems(record: dict) -> list[tuple[str, str]]:
    """Every (field, message) wrong with a candidate-pool record."""
    problems: list[tuple[str, str]] = []
    for key in CANDIDATE_FIELDS:
        if key not in record:
            problems.append((key, "missing field"))
    _check_id(record, "did", problems)
    _check_modality(record, "modality", "txt", "img_path", problems)
    _check_src_content(record, "src_content", problems)
    return problems


def query_from_record(record: dict, *, file: str | None = None, line: int | None = None) -> MBEIRQuery:
    """A query from a parsed line; the first problem raises an InputError naming file/line/field."""
    problems = query_problems(record)
    if problems:
        key, message = problems[0]
        raise InputError(message, file=file, line=line, item=_str_or_none(record.get("qid")), field=key)
    extra = {k: v for k, v in record.items() if k not in QUERY_FIELDS}
    return MBEIRQuery(qid=record["qid"], text=record["query_txt"], image=record["query_img_path"],
                      modality=record["query_modality"], src_content=record["query_src_content"],
                      positives=list(record["pos_cand_list"]), negatives=list(record.get("neg_cand_list", [])),
                      task_id=record["task_id"], extra=extra, line=line)


def candidate_from_record(record: dict, *, file: str | None = None, line: int | None = None) -> MBEIRCandidate:
    problems = candidate_problems(record)
    if problems:
        key, message = problems[0]
        raise InputError(message, file=file, line=line, item=_str_or_none(record.get("did")), field=key)
    extra = {k: v for k, v in record.items() if k not in CANDIDATE_FIELDS}
    return MBEIRCandidate(did=record["did"], text=record["txt"], image=record["img_path"],
                          modality=record["modality"], src_content=record["src_content"], extra=extra, line=line)


def _str_or_none(value) -> str | None:
    return value if isinstance(value, str) else None


def iter_queries(path: str | os.PathLike) -> Iterator[MBEIRQuery]:
    """Stream the queries of a query jsonl; a bad line raises an InputError naming it."""
    for line, record in iter_jsonl(path):
        if record is not None:
            yield query_from_record(record, file=str(path), line=line)


def iter_candidates(path: str | os.PathLike) -> Iterator[MBEIRCandidate]:
    """Stream the candidates of a pool jsonl (the global pool has 5.6M lines: do not list() it
    unless you mean to)."""
    for line, record in iter_jsonl(path):
        if record is not None:
            yield candidate_from_record(record, file=str(path), line=line)


def read_queries(path: str | os.PathLike) -> list[MBEIRQuery]:
    """All queries of a file, refusing a repeated qid."""
    queries, seen = [], {}
    for query in iter_queries(path):
        if query.qid in seen:
            raise InputError(f"duplicate qid (first on line {seen[query.qid]})", file=str(path), line=query.line,
                             item=query.qid, field="qid")
        seen[query.qid] = query.line
        queries.append(query)
    return queries


def count_lines(path: str | os.PathLike) -> int:
    """Non-blank lines of a file, read in blocks (fast on the 5.6M-line pool)."""
    count = 0
    with open(path, "rb") as handle:
        for raw in handle:
            count += bool(raw.strip())
    return count


# -- qrels -----------------------------------------------------------------------------------

@dataclass
class Qrels:
    """Positives per query, in file order, and the task id each qrels line names."""

    positives: dict[str, list[str]] = field(default_factory=dict)
    task_ids: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.positives)


def parse_qrels_line(text: str, *, file: str, line: int) -> tuple[str, str, int, int | None] | None:
    """(qid, did, relevance, task_id or None) of a qrels line; None for a blank line.

    M-BEIR lines have 5 columns ("{qid} 0 {did} 1 {task_id}"); plain 4-column TREC qrels are accepted.
    """
    fields = text.split()
    if not fields:
        return None
    if len(fields) not in (4, 5):
        raise InputError(f"expected 5 columns 'qid 0 did relevance task_id', got {len(fields)}", file=file, line=line)
    qid, _, did, relevance = fields[:4]
    try:
        relevance_value = int(relevance)
    except ValueError:
        raise InputError(f"relevance must be an integer, got {relevance!r}", file=file, line=line, item=qid,
                         field="relevance") from None
    task_id = None
    if len(fields) == 5:
        try:
            task_id = int(fields[4])
        except ValueError:
            raise InputError(f"task id must be an integer, got {fields[4]!r}", file=file, line=line, item=qid,
                             field="task_id") from None
    return qid, did, relevance_value, task_id


def read_qrels(path: str | os.PathLike) -> Qrels:
    """Positives (relevance > 0, as UniIR reads them) of each query of a qrels file."""
    path = Path(path)
    if not path.is_file():
        raise InputError("qrels file not found", file=str(path))
    qrels = Qrels()
    with open(path, encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            parsed = parse_qrels_line(text, file=str(path), line=number)
            if parsed is None:
                continue
            qid, did, relevance, task_id = parsed
            if relevance > 0:
                dids = qrels.positives.setdefault(qid, [])
                if did not in dids:
                    dids.append(did)
                if task_id is not None:
                    qrels.task_ids.setdefault(qid, task_id)
    return qrels


def format_qrels_line(qid: str, did: str, task_id: int, relevance: int = 1) -> str:
    return f"{qid} 0 {did} {relevance} {task_id}\n"


# -- instructions ----------------------------------------------------------------------------

INSTRUCTIONS_HEADER = ("query_modality", "cand_modality", "dataset", "dataset_id",
                       "prompt_1", "prompt_2", "prompt_3", "prompt_4")


@dataclass
class Instructions:
    """Task instructions keyed by (dataset_id, query modality, candidate modality)."""

    prompts: dict[tuple[int, str, str], list[str]]
    source: str  # the tsv path, or "built-in"

    def first(self, dataset_id: int, query_modality: str, cand_modality: str) -> str:
        """The first instruction, formatted as UniIR / LamRA format it (a deterministic choice)."""
        key = (int(dataset_id), query_modality, cand_modality)
        prompts = self.prompts.get(key)
        if not prompts:
            raise InputError(f"no instruction for dataset {key[0]}, {key[1]} -> {key[2]} "
                             f"(key '{key[0]}, {key[1]}, {key[2]}')", file=self.source)
        return format_text(prompts[0])

    def for_query(self, query: MBEIRQuery) -> str:
        """The instruction of a query: its dataset (from the qid) and its task's modalities."""
        query_modality, cand_modality = TASK_MODALITIES[query.task_id]
        return self.first(query.dataset_id, query_modality, cand_modality)


def builtin_instructions() -> Instructions:
    return Instructions({key: [text] for key, text in BUILTIN_INSTRUCTIONS.items()}, source="built-in")


def instruction_rows(path: str | os.PathLike) -> Iterator[tuple[int, list[str]]]:
    """(line number, columns) of each data row of the tsv (the header row skipped)."""
    with open(path, encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if number == 1 or not text.strip():
                continue
            yield number, text.rstrip("\r\n").split("\t")


def instruction_row_problems(columns: list[str]) -> list[tuple[str, str]]:
    problems = []
    if len(columns) < 5:
        return [("prompt_1", f"expected at least 5 tab-separated columns, got {len(columns)}")]
    if columns[0] not in MODALITIES:
        problems.append(("query_modality", f"unknown modality {columns[0]!r}"))
    if columns[1] not in MODALITIES:
        problems.append(("cand_modality", f"unknown modality {columns[1]!r}"))
    if not columns[3].strip().isdigit():
        problems.append(("dataset_id", f"must be an integer, got {columns[3]!r}"))
    if not [p for p in columns[4:] if p.strip()]:
        problems.append(("prompt_1", "no instruction on this row"))
    return problems


def read_instructions(path: str | os.PathLike) -> Instructions:
    """Parse query_instructions.tsv: header row, then query_modality, cand_modality, dataset,
    dataset_id, prompt_1..prompt_4 (empty ones dropped), as UniIR reads it."""
    path = Path(path)
    if not path.is_file():
        raise InputError("instructions file not found", file=str(path))
    prompts: dict[tuple[int, str, str], list[str]] = {}
    for number, columns in instruction_rows(path):
        problems = instruction_row_problems(columns)
        if problems:
            key, message = problems[0]
            raise InputError(message, file=str(path), line=number, field=key)
        key = (int(columns[3]), columns[0], columns[1])
        prompts[key] = [p.strip() for p in columns[4:] if p.strip()]
    return Instructions(prompts, source=str(path))


def load_instructions(root: str | os.PathLike) -> Instructions:
    """The root's instructions tsv, or the built-in first instructions when it has none."""
    path = MBEIRLayout(root).instructions_file
    if path.is_file():
        return read_instructions(path)
    logger.info("%s not found: using the built-in first instruction of each task", path)
    return builtin_instructions()


def write_instructions(path: str | os.PathLike, rows: list[tuple[str, str, str, int, list[str]]]) -> None:
    """Write a tsv of (query_modality, cand_modality, dataset, dataset_id, prompts)."""
    lines = ["\t".join(INSTRUCTIONS_HEADER)]
    for query_modality, cand_modality, dataset, dataset_id, prompts in rows:
        padded = list(prompts) + [""] * (4 - len(prompts))
        lines.append("\t".join([query_modality, cand_modality, dataset, str(dataset_id), *padded]))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
