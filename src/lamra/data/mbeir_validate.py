"""``lamra data validate``: check an M-BEIR root and report every problem with file, line, field.

What is checked, streaming each file once:

- every line of every query file, pool and qrels file parses, with the field checks of
  :func:`lamra.data.mbeir.query_problems` / :func:`candidate_problems` (types, ids, modality);
- no qid / did repeats within a file;
- each did in a query's ``pos_cand_list`` / ``neg_cand_list`` and in a qrels line is in the pool
  the query is ranked against (the task's local pool for test queries; the union pool of the
  split when the root has one), each qrels qid is a query of the matching file, and each test
  query has at least one qrels line;
- every image a line uses exists under the root (``check_images=False`` skips the file checks);
- the instructions tsv parses and has an instruction for every task checked;
- the files each checked task needs (test queries, local pool, qrels) exist.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .jsonl import parse_json_line
from .mbeir import (
    TASKS_BY_NAME,
    MBEIRLayout,
    Task,
    candidate_problems,
    get_task,
    parse_qrels_line,
    query_problems,
    root_tasks,
)
from .mbeir_instructions import instruction_row_problems, instruction_rows

_QUERY_FILE = re.compile(r"^mbeir_(?P<name>.+)_(?P<split>[a-z]+)\.jsonl$")
_QRELS_FILE = re.compile(r"^mbeir_(?P<name>.+)_(?P<split>[a-z]+)_qrels\.txt$")


@dataclass
class Problem:
    file: str
    line: int | None
    field: str | None
    message: str
    item: str | None = None

    def __str__(self) -> str:
        return str(InputError(self.message, file=self.file, line=self.line, item=self.item, field=self.field))


@dataclass
class ValidationReport:
    root: Path
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lines: dict[str, int] = field(default_factory=dict)  # relative file -> records read

    @property
    def ok(self) -> bool:
        return not self.problems


class _Validator:
    def __init__(self, root: Path, check_images: bool):
        self.root = root
        self.layout = MBEIRLayout(root)
        self.check_images = check_images
        self.report = ValidationReport(root)

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def problem(self, path: Path, line, field, message, item=None) -> None:
        self.report.problems.append(Problem(self.rel(path), line, field, message, item))

    def records(self, path: Path):
        """(line, record) of each parseable line; unparseable lines become problems."""
        count = 0
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    record = parse_json_line(raw, file=self.rel(path), line=number)
                except InputError as exc:
                    self.problem(path, number, None, exc.reason)
                    continue
                if record is not None:
                    count += 1
                    yield number, record
        self.report.lines[self.rel(path)] = count

    def image(self, path: Path, number: int, item, key: str, value, modality) -> None:
        uses_image = isinstance(modality, str) and "image" in modality.split(",")
        if self.check_images and uses_image and isinstance(value, str) and value:
            if not self.layout.image(value).is_file():
                self.problem(path, number, key, f"image file not found: {value} (relative to the M-BEIR root)", item)

    def unique(self, seen: dict[str, int], value: str | None, path: Path, number: int, field: str) -> None:
        """Record where ``value`` first appears; report it when it appears again."""
        if value is None:
            return
        if value in seen:
            self.problem(path, number, field, f"duplicate {field} (first on line {seen[value]})", value)
        else:
            seen[value] = number

    # -- files ---------------------------------------------------------------------------------

    def pool(self, path: Path) -> set[str]:
        """Check a candidate pool; return its dids."""
        seen: dict[str, int] = {}
        for number, record in self.records(path):
            did = record.get("did") if isinstance(record.get("did"), str) else None
            for key, message in candidate_problems(record):
                self.problem(path, number, key, message, did)
            self.image(path, number, did, "img_path", record.get("img_path"), record.get("modality"))
            self.unique(seen, did, path, number, "did")
        return set(seen)

    def queries(self, path: Path, pools: list[tuple[str, set[str]]], task: Task | None) -> dict[str, int]:
        """Check a query file against the pools its queries are ranked in; return qid -> line."""
        seen: dict[str, int] = {}
        for number, record in self.records(path):
            qid = record.get("qid") if isinstance(record.get("qid"), str) else None
            for key, message in query_problems(record):
                self.problem(path, number, key, message, qid)
            self.image(path, number, qid, "query_img_path", record.get("query_img_path"), record.get("query_modality"))
            self.unique(seen, qid, path, number, "qid")
            if task is not None:
                self._task_fields(path, number, qid, record, task)
            for key in ("pos_cand_list", "neg_cand_list"):
                dids = record.get(key)
                if not isinstance(dids, list):
                    continue
                for pool_name, dids_in_pool in pools:
                    missing = [d for d in dids if isinstance(d, str) and d not in dids_in_pool]
                    if missing:
                        self.problem(path, number, key, f"did(s) not in {pool_name}: {', '.join(missing[:5])}"
                                     + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""), qid)
        return seen

    def _task_fields(self, path, number, qid, record, task: Task) -> None:
        if isinstance(record.get("task_id"), int) and record["task_id"] != task.task_id:
            self.problem(path, number, "task_id", f"{task.name} queries have task_id {task.task_id}, "
                                                  f"got {record['task_id']}", qid)
        if qid is not None and ":" in qid and qid.split(":")[0] != str(task.dataset_id):
            self.problem(path, number, "qid", f"{task.name} qids start with '{task.dataset_id}:'", qid)

    def qrels(self, path: Path, qids: dict[str, int] | None, pools: list[tuple[str, set[str]]],
              query_path: Path | None) -> set[str]:
        """Check a qrels file; return the qids that have a positive."""
        with_positive: set[str] = set()
        count = 0
        with open(path, encoding="utf-8", errors="replace") as handle:
            for number, text in enumerate(handle, start=1):
                try:
                    parsed = parse_qrels_line(text, file=self.rel(path), line=number)
                except InputError as exc:
                    self.problem(path, number, exc.field, exc.reason, exc.item)
                    continue
                if parsed is None:
                    continue
                count += 1
                qid, did, relevance, _ = parsed
                if relevance > 0:
                    with_positive.add(qid)
                if qids is not None and qid not in qids:
                    self.problem(path, number, "qid", f"qid not in {self.rel(query_path)}", qid)
                for pool_name, dids_in_pool in pools:
                    if did not in dids_in_pool:
                        self.problem(path, number, "did", f"did {did!r} not in {pool_name}", qid)
        self.report.lines[self.rel(path)] = count
        return with_positive

    def instructions(self, tasks: list[Task]) -> None:
        path = self.layout.instructions_file
        if not path.is_file():
            self.report.notes.append(f"{self.rel(path)} not found: evaluation uses the built-in first instructions")
            return
        keys = set()
        for number, columns in instruction_rows(path):
            problems = instruction_row_problems(columns)
            for key, message in problems:
                self.problem(path, number, key, message)
            if not problems:
                keys.add((int(columns[3]), columns[0], columns[1]))
        for task in tasks:
            key = (task.dataset_id, task.query_modality, task.cand_modality)
            if key not in keys:
                self.problem(path, None, None, f"no instruction for {task.name} "
                                               f"(key '{key[0]}, {key[1]}, {key[2]}')")


def validate_mbeir(root: str | os.PathLike, *, tasks: list[str] | None = None,
                   check_images: bool = True) -> ValidationReport:
    """Check an M-BEIR root; ``tasks`` limits the check to those tasks' files (and the union
    pools); by default every task and every file found is checked."""
    root = Path(root)
    validator = _Validator(root, check_images)
    report = validator.report
    if not root.is_dir():
        report.problems.append(Problem(str(root), None, None, "not a folder"))
        return report
    chosen = [get_task(name, root) for name in tasks] if tasks else list(root_tasks(root))
    layout = validator.layout
    validator.instructions(chosen)

    global_pools: dict[str, set[str]] = {}
    for path in sorted((root / "cand_pool" / "global").glob("mbeir_union_*_cand_pool.jsonl")):
        split = path.name[len("mbeir_union_"): -len("_cand_pool.jsonl")]
        global_pools[split] = validator.pool(path)
    done: set[Path] = set()

    for task in chosen:
        query_path, qrels_path, pool_path = layout.query_file(task.name), layout.qrels_file(task.name), \
            layout.local_pool(task.name)
        for needed in (query_path, qrels_path, pool_path):
            if not needed.is_file():
                validator.problem(needed, None, None, f"missing file ({task.name} needs it)")
        pools = []
        if pool_path.is_file():
            pools.append((validator.rel(pool_path), validator.pool(pool_path)))
            done.add(pool_path)
        if "test" in global_pools:
            pools.append((validator.rel(layout.global_pool("test")), global_pools["test"]))
        qids = None
        if query_path.is_file():
            qids = validator.queries(query_path, pools, task)
            done.add(query_path)
        if qrels_path.is_file():
            with_positive = validator.qrels(qrels_path, qids, pools, query_path if qids is not None else None)
            done.add(qrels_path)
            for qid, number in (qids or {}).items():
                if qid not in with_positive:
                    validator.problem(query_path, number, "qid",
                                      f"query has no positive in {validator.rel(qrels_path)}", qid)
        del pools

    if tasks:  # only the named tasks' files (and the union pools, checked above)
        return report
    _other_files(validator, global_pools, done)
    return report


def _split_of(folder_name: str) -> str:
    # "union_train" holds train queries; other folders are named by their split.
    return folder_name.rsplit("_", 1)[-1]


def _other_files(validator: _Validator, global_pools: dict[str, set[str]], done: set[Path]) -> None:
    """Files beyond the 16 test tasks: other query splits (train ...), their qrels, other pools."""
    root = validator.root
    for path in sorted((root / "cand_pool" / "local").glob("*.jsonl")):
        if path not in done:
            validator.pool(path)
    query_qids: dict[Path, dict[str, int]] = {}
    for path in sorted((root / "query").glob("*/*.jsonl")):
        if path in done:
            continue
        split = _split_of(path.parent.name)
        pools = []
        if split in global_pools:
            pools.append((validator.rel(validator.layout.global_pool(split)), global_pools[split]))
        else:
            validator.report.notes.append(f"{validator.rel(path)}: no union {split} pool, so its dids were not checked")
        match = _QUERY_FILE.match(path.name)
        task = {**TASKS_BY_NAME, **{t.name: t for t in root_tasks(root)}}.get(match["name"]) if match else None
        query_qids[path] = validator.queries(path, pools, task)
    for path in sorted((root / "qrels").glob("*/*.txt")):
        if path in done:
            continue
        match = _QRELS_FILE.match(path.name)
        query_path = None
        if match:
            query_path = root / "query" / path.parent.name / f"mbeir_{match['name']}_{match['split']}.jsonl"
        split = _split_of(path.parent.name)
        pools = []
        if split in global_pools:
            pools.append((validator.rel(validator.layout.global_pool(split)), global_pools[split]))
        validator.qrels(path, query_qids.get(query_path), pools, query_path)
