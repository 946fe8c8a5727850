"""The teacher-scores file: what reranker distillation learns from (``lamra score-teacher``).

One json line per scored training query, after a header line::

    {"format": "lamra-teacher-scores-1", "retriever": {...}, "reranker": {...}, "k": 50,
     "fraction": 0.1, "seed": 42, "mined": "...", "mined_sha256": "...", "queries": 60}
    {"qid": "9:12", "task": "mscoco_task0", "instruction": "...", "positives": ["9:3"],
     "candidates": [["9:3", 0.8125, 0.9921], ["9:77", 0.6406, 0.0312], ...],
     "positive_scores": [["9:3", 0.8125, 0.9921]]}

``candidates`` is the query's top-k as the retriever ranked it (positives included, as
retrieved), each with the retriever's cosine and the reranker's P(Yes) (read as the official
evaluation reads it). ``positive_scores``: the same two scores for every positive, retrieved
or not (when the mined file has the positives' cosines), for distillation with the positive in
the list (U-MARVEL's ``has_distill_with_pos``). ``retriever`` and ``reranker`` are the two models' fingerprints: a file
is refused by a training run that starts from another retriever or names another reranker.

Both sides use it (the reranker writes it, the retriever's training reads it), so it lives here.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

TEACHER_FORMAT = "lamra-teacher-scores-1"


@dataclass
class TeacherRecord:
    """One scored query: its top-k candidates with the retriever's and the reranker's scores."""

    qid: str
    positives: list[str]
    candidates: list[tuple[str, float, float]]   # (did, retriever cosine, reranker P(Yes))
    task: str | None = None
    instruction: str | None = None
    line: int | None = None
    positive_scores: list[tuple[str, float, float]] | None = None  # every positive: (did, cosine, P(Yes))

    def best_p_yes(self, k: int) -> float:
        """The reranker's highest P(Yes) among the first ``k`` candidates (how sure it is of any)."""
        return max(p for _, _, p in self.candidates[:k])

    def to_record(self) -> dict:
        record = {"qid": self.qid, "task": self.task, "instruction": self.instruction, "positives": self.positives,
                  "candidates": _rounded(self.candidates)}
        if self.positive_scores is not None:
            record["positive_scores"] = _rounded(self.positive_scores)
        return record


def _rounded(scored: list[tuple[str, float, float]]) -> list[list]:
    return [[did, round(float(ret), 6), round(float(rank), 6)] for did, ret, rank in scored]


def read_teacher_scores(path: str | os.PathLike) -> tuple[dict, list[TeacherRecord]]:
    """The header and the records of a scores file; a bad line raises an InputError naming it."""
    from ..data.jsonl import iter_jsonl

    path = Path(path)
    if not path.is_file():
        raise InputError("teacher-scores file not found (make it with `lamra score-teacher`)", file=str(path))
    header: dict | None = None
    records: list[TeacherRecord] = []
    seen: dict[str, int] = {}
    for line, record in iter_jsonl(path):
        if record is None:
            continue
        where = dict(file=str(path), line=line)
        if not isinstance(record, dict):
            raise InputError("expected a json object", **where)
        if header is None:
            if record.get("format") != TEACHER_FORMAT:
                raise InputError(f"not a teacher-scores file: the first line must be a header with format "
                                 f"{TEACHER_FORMAT!r}", field="format", **where)
            header = record
            continue
        records.append(_record(record, seen, where))
    if header is None:
        raise InputError("empty teacher-scores file", file=str(path))
    if not records:
        raise InputError("no scored query in the teacher-scores file", file=str(path))
    return header, records


def _record(record: dict, seen: dict[str, int], where: dict) -> TeacherRecord:
    qid = record.get("qid")
    if not isinstance(qid, str) or not qid:
        raise InputError(f"qid must be a non-empty string, got {qid!r}", field="qid", **where)
    where = {**where, "item": qid}
    if qid in seen:
        raise InputError(f"duplicate qid (first on line {seen[qid]})", field="qid", **where)
    seen[qid] = where["line"]
    positives, candidates = record.get("positives"), record.get("candidates")
    # Empty for a query without positives (learnt from by the KL term alone).
    if not isinstance(positives, list) or not all(isinstance(d, str) for d in positives):
        raise InputError("positives must be a list of did strings", field="positives", **where)
    candidates = _scored_list(candidates, "candidates", where)
    positive_scores = record.get("positive_scores")
    if positive_scores is not None and (positive_scores or positives):
        positive_scores = _scored_list(positive_scores, "positive_scores", where)
        if sorted(did for did, _, _ in positive_scores) != sorted(positives):
            raise InputError("positive_scores must score each positive once", field="positive_scores", **where)
    return TeacherRecord(qid, positives, candidates, record.get("task"), record.get("instruction"), where["line"],
                         positive_scores)


def _scored_list(values, name: str, where: dict) -> list[tuple[str, float, float]]:
    """A checked list of [did, retriever score, reranker P(Yes)] entries."""
    if not isinstance(values, list) or not values or not all(
            isinstance(c, list) and len(c) == 3 and isinstance(c[0], str)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in c[1:]) for c in values):
        raise InputError(f"{name} must be a non-empty list of [did, retriever score, reranker P(Yes)]", field=name,
                         **where)
    for did, _, probability in values:
        if not 0.0 <= probability <= 1.0:
            raise InputError(f"reranker P(Yes) of {did!r} is {probability}, outside [0, 1]", field=name, **where)
    return [(d, float(r), float(p)) for d, r, p in values]


def check_teacher_models(header: dict, path: str | os.PathLike, *, retriever: dict | None = None,
                         reranker: dict | None = None) -> None:
    """Refuse a scores file made by another retriever or reranker than the ones given (each a
    fingerprint: ``{"model": ..., "adapter": ...}``); only the keys given are compared."""
    for role, wanted in (("retriever", retriever), ("reranker", reranker)):
        if wanted is None:
            continue
        made_by = header.get(role) or {}
        different = [key for key in wanted if made_by.get(key) != wanted[key]]
        if different:
            have = ", ".join(f"{key} {made_by.get(key)!r}" for key in different)
            want = ", ".join(f"{key} {wanted[key]!r}" for key in different)
            raise InputError(f"made by another {role} ({have}), not by this run's {role} ({want}): score the "
                             f"training queries again with `lamra score-teacher`", file=str(path), field=role)


def sample_fraction(qids_by_task: dict[str, list[str]], fraction: float, seed: int) -> set[str]:
    """U-MARVEL's 10 %: per task, ``len // 10`` queries drawn by ``random.sample`` (seed 42 in its
    notebook), here ``round(len * fraction)`` and at least one; fraction 1 keeps every query."""
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"fraction must be in (0, 1], got {fraction}", field="fraction")
    chosen: set[str] = set()
    rng = random.Random(seed)
    for task in sorted(qids_by_task):
        qids = qids_by_task[task]
        size = len(qids) if fraction == 1.0 else max(1, round(len(qids) * fraction))
        chosen.update(rng.sample(qids, size))
    return chosen


def filter_negatives(record: TeacherRecord, *, threshold: float | None = None,
                     margin: float | None = None) -> tuple[list[str], list[str]]:
    """The record's hard negatives (its candidates minus its positives, in rank order) with those
    the reranker judges relevant dropped; returns ``(kept, dropped)``.

    ``threshold``: drop a negative whose P(Yes) is above it (so 1.0 drops nothing);
    ``margin``: drop one whose P(Yes) is above the best positive's P(Yes) minus ``margin``
    (a query whose positive was not retrieved has no reference: only the threshold applies).
    A positive is never a negative, so it is never dropped.
    """
    positives = set(record.positives)
    positive_scores = [p for did, _, p in record.candidates if did in positives]
    kept, dropped = [], []
    for did, _, probability in record.candidates:
        if did in positives:
            continue
        too_high = threshold is not None and probability > threshold
        if margin is not None and positive_scores:
            too_high = too_high or probability > max(positive_scores) - margin
        (dropped if too_high else kept).append(did)
    return kept, dropped
