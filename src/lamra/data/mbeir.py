"""M-BEIR (UniIR) data: tasks, query files, candidate pools, qrels and instructions.

Layout of an M-BEIR root (docs/format.md#m-beir-data-format; image paths inside the files are relative to it)::

    query/{split}/mbeir_{task}_{split}.jsonl          queries (qid, query_txt, query_img_path, ...)
    cand_pool/local/mbeir_{task}_cand_pool.jsonl      one pool per task (MSCOCO: mbeir_mscoco_task0_test_...)
    cand_pool/global/mbeir_union_{split}_cand_pool.jsonl   the union pool (5.6M lines for test)
    qrels/{split}/mbeir_{task}_{split}_qrels.txt      "{qid} 0 {did} 1 {task_id}"
    instructions/query_instructions.tsv               task instructions (built-in first ones as fallback)

Large files are streamed line by line (:func:`iter_queries`, :func:`iter_candidates`); nothing here
loads a whole pool unless the caller collects it. The checks of a record live in one place
(:func:`query_problems`, :func:`candidate_problems`) and serve both the reader, which stops at the
first problem, and ``lamra data validate`` (:mod:`lamra.data.mbeir_validate`), which reports all.
The instruction table and how a query gets its instruction live in :mod:`lamra.data.mbeir_instructions`.
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
    """One of the 16 M-BEIR evaluation tasks, e.g. ``mscoco_task0``, or a task a data set
    declares in its ``tasks.json`` (:func:`declared_tasks`)."""

    name: str
    dataset: str
    task_id: int
    recall_k: int  # the task's metric is Recall@recall_k (a hit rate)
    declared: tuple[int, str] | None = None  # (dataset id, display name) of a declared task's dataset

    @property
    def dataset_id(self) -> int:
        return self.declared[0] if self.declared else DATASETS[self.dataset][0]

    @property
    def display_dataset(self) -> str:
        return self.declared[1] if self.declared else DATASETS[self.dataset][1]

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


def get_task(name: str, root: str | os.PathLike | None = None) -> Task:
    """An M-BEIR task, or (given the data set's ``root``) one its ``tasks.json`` declares."""
    declared = {task.name: task for task in declared_tasks(root)} if root is not None else {}
    if name in declared:
        return declared[name]
    try:
        return TASKS_BY_NAME[name]
    except KeyError:
        known = ", ".join([*declared, *TASKS_BY_NAME])
        raise InputError(f"unknown M-BEIR task {name!r}; the tasks are: {known}") from None


# -- tasks a data set declares ---------------------------------------------------------------
# A data set in the M-BEIR layout with its own datasets and tasks (``lamra data demo``) lists them
# in ROOT/tasks.json, so the evaluator and the validator know them (docs/demo-data.md):
#   {"datasets": [{"name": "clipart", "id": 20, "display": "OpenClipart"}, ...],
#    "tasks": [{"name": "clipart_task0", "dataset": "clipart", "task_id": 0, "recall_k": 5}, ...]}
# Names and dataset ids must not be M-BEIR's. Without the file a root has M-BEIR's 16 tasks.
TASKS_FILE = "tasks.json"


def declared_tasks(root: str | os.PathLike) -> tuple[Task, ...]:
    """The tasks ROOT/tasks.json declares, in its order (empty when there is no such file)."""
    import json

    path = Path(root) / TASKS_FILE
    if not path.is_file():
        return ()
    where = str(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"not valid JSON ({exc})", file=where) from None
    if not isinstance(document, dict):
        raise InputError("must be a JSON object with 'datasets' and 'tasks'", file=where)
    datasets: dict[str, tuple[int, str]] = {}
    used_ids = {dataset_id for dataset_id, _ in DATASETS.values()}
    for number, entry in enumerate(_entries(document, "datasets", where)):
        field = f"datasets[{number}]"
        name, dataset_id = entry.get("name"), entry.get("id")
        if not isinstance(name, str) or not name or name in DATASETS or name in datasets:
            raise InputError(f"dataset name must be a new non-empty string, got {name!r}", file=where, field=field)
        if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or dataset_id < 0 or dataset_id in used_ids:
            raise InputError(f"dataset id must be an integer not used by M-BEIR or another dataset, "
                             f"got {dataset_id!r}", file=where, field=field)
        used_ids.add(dataset_id)
        datasets[name] = (dataset_id, str(entry.get("display") or name))
    tasks: list[Task] = []
    for number, entry in enumerate(_entries(document, "tasks", where)):
        field = f"tasks[{number}]"
        name, dataset, task_id, recall_k = (entry.get(k) for k in ("name", "dataset", "task_id", "recall_k"))
        if not isinstance(name, str) or not name or name in TASKS_BY_NAME or name in {t.name for t in tasks}:
            raise InputError(f"task name must be a new non-empty string, got {name!r}", file=where, field=field)
        if dataset not in datasets:
            raise InputError(f"dataset {dataset!r} is not in 'datasets'", file=where, field=field)
        if isinstance(task_id, bool) or task_id not in TASK_MODALITIES:
            raise InputError(f"unknown task id {task_id!r}; expected one of {sorted(TASK_MODALITIES)}", file=where,
                             field=field)
        if isinstance(recall_k, bool) or not isinstance(recall_k, int) or recall_k < 1:
            raise InputError(f"recall_k must be a positive integer, got {recall_k!r}", file=where, field=field)
        tasks.append(Task(name, dataset, task_id, recall_k, declared=datasets[dataset]))
    return tuple(tasks)


def _entries(document: dict, key: str, where: str) -> list[dict]:
    entries = document.get(key)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InputError(f"'{key}' must be a list of objects", file=where, field=key)
    return entries


def root_tasks(root: str | os.PathLike) -> tuple[Task, ...]:
    """The tasks a root is evaluated and checked on by default: those its tasks.json declares,
    else M-BEIR's 16."""
    return declared_tasks(root) or TASKS


# -- pools -----------------------------------------------------------------------------------

# The three pools a task can be ranked in (docs/format.md#m-beir-data-format). The two global ones differ: UniIR's
# union file holds each candidate once; the official LamRA evaluation concatenates the 16 local
# pools, so a candidate of several local pools is there several times (the paper's global numbers).
POOLS = {
    "local": "each task's own pool (cand_pool/local)",
    "global-union": "UniIR's union pool file (cand_pool/global/mbeir_union_{split}_cand_pool.jsonl), "
                    "each candidate once",
    "global-lamra": "the 16 local pools concatenated, as the official LamRA evaluation (a candidate of "
                    "several local pools is there several times)",
}
POOL_ALIASES = {"global": "global-union"}  # what "global" meant before both global pools existed


def resolve_pool(name: str) -> str:
    """The canonical pool name (``global`` is an alias of ``global-union``)."""
    name = POOL_ALIASES.get(name, name)
    if name not in POOLS:
        choices = ", ".join([*POOLS, *(f"{a} (= {c})" for a, c in POOL_ALIASES.items())])
        raise InputError(f"unknown pool {name!r}; the pools are: {choices}")
    return name


def describe_pool(name: str, split: str = "test") -> str:
    return POOLS[resolve_pool(name)].format(split=split)


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
        return self.root / "cand_pool" / "local" / f"mbeir_{get_task(task, self.root).local_pool_name}_cand_pool.jsonl"

    def global_pool(self, split: str = "test") -> Path:
        return self.root / "cand_pool" / "global" / f"mbeir_union_{split}_cand_pool.jsonl"

    def pool(self, task: str, pool: str = "local", split: str = "test") -> Path:
        """The one pool file ``task`` is ranked in: its local pool, or the union pool file."""
        pool = resolve_pool(pool)
        if pool == "local":
            return self.local_pool(task)
        if pool == "global-union":
            return self.global_pool(split)
        raise InputError(f"the {pool} pool is several files (the 16 local pools): use pool_files()")

    def pool_files(self, task: str, pool: str = "local", split: str = "test") -> list[Path]:
        """The files ``task``'s pool is made of, in order (global-lamra: the local pools of every
        task of the root - M-BEIR's 16 - in the order of the paper's table)."""
        if resolve_pool(pool) == "global-lamra":
            return [self.local_pool(t.name) for t in root_tasks(self.root)]
        return [self.pool(task, pool, split)]

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
    if parts == ["text"] and not (text or "").strip():
        # Real pools hold a few "text" candidates with no text; the official code embeds them
        # as the empty formatted text (docs/format.md#m-beir-data-format), so they stay in the pool.
        return Item.empty_text(id=item_id)
    return Item(text=text if "text" in parts else None,
                images=[Path(root) / image] if "image" in parts and image else [], id=item_id)


def is_empty_text_candidate(candidate: "MBEIRCandidate") -> bool:
    return candidate.modality == "text" and not (candidate.text or "").strip()


def _check_id(record: dict, key: str, problems: list) -> None:
    value = record.get(key)
    if not isinstance(value, str) or not value:
        problems.append((key, f"must be a non-empty string, got {value!r}"))
    elif not ID_PATTERN.match(value):
        problems.append((key, f"must look like '{{dataset_id}}:{{n}}', got {value!r}"))


def _check_modality(record: dict, key: str, text_key: str, image_key: str, problems: list, *,
                    empty_text_ok: bool = False) -> None:
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
    if "text" in parts and not (isinstance(text, str) and text.strip()) and not (empty_text_ok and modality == "text"):
        problems.append((text_key, f"modality is {modality!r} but the text is empty"))
    if "image" in parts and not (isinstance(image, str) and image):
        problems.append((image_key, f"modality is {modality!r} but there is no image path"))


def _check_src_content(record: dict, key: str, problems: list) -> None:
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        problems.append((key, f"must be a JSON string or null, got {type(value).__name__}"))


def query_problems(record: dict, *, unlabelled_ok: bool = False) -> list[tuple[str, str]]:
    """Every (field, message) wrong with a query record (empty when it is good). With
    ``unlabelled_ok`` an empty ``pos_cand_list`` is no problem: a query without a known positive,
    which mining ranks, the reranker scores and distillation learns from (the KL term alone)."""
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
    if isinstance(record.get("pos_cand_list"), list) and not record["pos_cand_list"] and not unlabelled_ok:
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
    # A "text" candidate with empty text is embedded as the empty formatted text (docs/format.md#m-beir-data-format).
    _check_modality(record, "modality", "txt", "img_path", problems, empty_text_ok=True)
    _check_src_content(record, "src_content", problems)
    return problems


def query_from_record(record: dict, *, file: str | None = None, line: int | None = None,
                      unlabelled_ok: bool = False) -> MBEIRQuery:
    """A query from a parsed line; the first problem raises an InputError naming file/line/field."""
    problems = query_problems(record, unlabelled_ok=unlabelled_ok)
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


def iter_queries(path: str | os.PathLike, *, unlabelled_ok: bool = False) -> Iterator[MBEIRQuery]:
    """Stream the queries of a query jsonl; a bad line raises an InputError naming it.
    ``unlabelled_ok``: queries with an empty ``pos_cand_list`` pass (:func:`query_problems`)."""
    for line, record in iter_jsonl(path):
        if record is not None:
            yield query_from_record(record, file=str(path), line=line, unlabelled_ok=unlabelled_ok)


def iter_candidates(path: str | os.PathLike) -> Iterator[MBEIRCandidate]:
    """Stream the candidates of a pool jsonl (the global pool has 5.6M lines: do not list() it
    unless you mean to)."""
    for line, record in iter_jsonl(path):
        if record is not None:
            yield candidate_from_record(record, file=str(path), line=line)


def read_queries(path: str | os.PathLike, *, unlabelled_ok: bool = False) -> list[MBEIRQuery]:
    """All queries of a file, refusing a repeated qid."""
    queries, seen = [], {}
    for query in iter_queries(path, unlabelled_ok=unlabelled_ok):
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


def candidate_modalities(path: str | os.PathLike, dids: set[str]) -> dict[str, str]:
    """``{did: modality}`` of the candidates ``dids`` in a pool file (streamed once, stops early)."""
    import json

    wanted, found = set(dids), {}
    with open(path, "rb") as handle:
        for raw in handle:
            if not wanted:
                break
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                continue  # a broken line is reported by the pool's reader, which names it
            did = record.get("did") if isinstance(record, dict) else None
            if did in wanted:
                wanted.discard(did)
                found[did] = record.get("modality")
    return found



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
