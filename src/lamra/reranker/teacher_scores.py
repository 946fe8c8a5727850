"""What the retriever learns from the reranker: every scored training query's top-k with both
models' scores (``lamra score-teacher``), and hard negatives filtered by the reranker
(``lamra filter-negatives``).

- **Scoring** reads a mined file (``lamra mine``: each training query's top-k with the
  retriever's cosines, and the instruction the retriever read) and its summary (the retriever's
  fingerprint), keeps a fraction of the queries per task (U-MARVEL distils on 10 %), and scores
  each kept query's first ``k`` candidates with the reranker: P(Yes), pointwise, with the shared
  query prefix (:meth:`lamra.reranker.model.Reranker.score`), the same instruction. The file's
  format is :mod:`lamra.training.distill_data`'s.
- **Resumable**: queries are scored in parts, each written atomically under ``OUT.work/`` with
  the job's plan (fingerprints, k, fraction, seed, the mined file's digest); a run killed
  (even with ``kill -9``) and started again with the same arguments scores only what is left,
  one of another job is refused. ``OUT`` appears atomically at the end.
- **Filtering**: a negative the reranker judges relevant (P(Yes) above a threshold, or within a
  margin of the positive's) is dropped; what is left becomes each scored query's
  ``neg_cand_list`` in a query file for ``use_hard_negatives`` training.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..data.jsonl import iter_jsonl
from ..data.mbeir import MBEIRLayout, iter_candidates
from ..digests import file_sha256
from ..embeddings import atomic_write_bytes
from ..errors import InputError
from ..retriever.data import default_query_files, read_query_files
from ..training.distill_data import (
    TEACHER_FORMAT,
    TeacherRecord,
    filter_negatives,
    read_teacher_scores,
    sample_fraction,
)
from .mining import check_interrupted_run, read_mined

logger = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
PART_SIZE = 64  # queries per part file (default): what a kill can lose


@dataclass
class TeacherSummary:
    out: Path
    queries: int
    tasks: dict[str, dict] = field(default_factory=dict)  # task -> queries, mean P(Yes) of positives / negatives
    resumed: bool = False


def work_folder(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".work")


def mined_retriever(mined: str | os.PathLike) -> dict:
    """The fingerprint of the retriever that mined ``mined`` (from its ``.summary.json``)."""
    summary = Path(str(mined) + ".summary.json")
    if not summary.is_file():
        raise InputError("the mined file's summary (which names its retriever) is missing: mine again with "
                         "`lamra mine`", file=str(summary))
    fingerprint = json.loads(summary.read_text(encoding="utf-8")).get("fingerprint")
    if not isinstance(fingerprint, dict):
        raise InputError("no retriever fingerprint", file=str(summary), field="fingerprint")
    return fingerprint


def score_teacher(reranker, root: str | os.PathLike, mined: str | os.PathLike, out: str | os.PathLike, *,
                  k: int = 50, fraction: float = 1.0, seed: int = 42,
                  queries: Sequence[str | os.PathLike] | None = None, pool: str | os.PathLike | None = None,
                  batch_size: int | None = None, part_size: int = PART_SIZE, show_progress: bool = True,
                  overwrite: bool = False) -> TeacherSummary:
    """Score the top ``k`` of a ``fraction`` of the mined queries with ``reranker`` into ``out``."""
    from ..progress import progress_bar

    if k < 1:
        raise InputError(f"k must be at least 1, got {k}", field="k")
    root, out, mined = Path(root), Path(out), Path(mined)
    work = work_folder(out)
    if out.exists() and not work.exists():
        if not overwrite:
            raise InputError("exists; delete it or pass overwrite=True (--force) to score again", file=str(out))
        out.unlink()
    records = list(read_mined(mined).values())
    by_task: dict[str, list[str]] = {}
    for record in records:
        by_task.setdefault(record.task or "", []).append(record.qid)
    chosen = sample_fraction(by_task, fraction, seed)
    records = [r for r in records if r.qid in chosen]
    items = _query_items(root, queries, {r.qid for r in records}, mined)
    pool_file = Path(pool) if pool else MBEIRLayout(root).global_pool("train")
    needed = {did for r in records for did, _ in r.top[:k]} | {did for r in records for did in r.positives}
    candidates = {c.did: c.item(root) for c in iter_candidates(pool_file) if c.did in needed}
    for record in records:
        missing = [did for did, _ in record.top[:k] if did not in candidates]
        if missing:
            raise InputError(f"mined candidate {missing[0]!r} is not in {pool_file}", file=str(mined),
                             line=record.line, item=record.qid, field="top")
        missing = [did for did, _ in record.positive_scores or [] if did not in candidates]
        if missing:
            raise InputError(f"positive {missing[0]!r} is not in {pool_file}", file=str(mined),
                             line=record.line, item=record.qid, field="positive_scores")
    plan = {"format": TEACHER_FORMAT, "retriever": mined_retriever(mined), "reranker": reranker.fingerprint(),
            "k": k, "fraction": fraction, "seed": seed, "mined": str(mined.resolve()),
            "mined_sha256": file_sha256(mined), "pool": str(pool_file.resolve()), "queries": len(records),
            "part_size": part_size}
    plan = json.loads(json.dumps(plan, default=str))
    resumed = check_interrupted_run(work, plan, plan_file=PLAN_FILE, job="scoring")
    work.mkdir(parents=True, exist_ok=True)
    if not resumed:
        atomic_write_bytes(work / PLAN_FILE, json.dumps(plan, indent=2).encode())
    parts = [records[start : start + part_size] for start in range(0, len(records), part_size)]
    with progress_bar(len(records), "scoring with the reranker", enabled=show_progress) as bar:
        for number, part in enumerate(parts):
            path = work / f"part-{number:06d}.jsonl"
            if not path.is_file():
                lines = []
                for record in part:
                    top = record.top[:k]
                    # The positives the top-k misses are scored too, in the same call (shared prefix).
                    retrieved = {did for did, _ in top}
                    extra = [(did, ret) for did, ret in record.positive_scores or [] if did not in retrieved]
                    scores = reranker.score(items[record.qid], [candidates[did] for did, _ in top + extra],
                                            record.instruction, batch_size=batch_size)
                    scored_by_did = {did: (did, ret, float(p)) for (did, ret), p in zip(top + extra, scores)}
                    positive_scores = None if record.positive_scores is None else \
                        [scored_by_did[did] for did, _ in record.positive_scores]
                    scored = TeacherRecord(record.qid, record.positives, [scored_by_did[did] for did, _ in top],
                                           record.task, record.instruction, positive_scores=positive_scores)
                    lines.append(json.dumps(scored.to_record(), ensure_ascii=False) + "\n")
                atomic_write_bytes(path, "".join(lines).encode("utf-8"))
            bar.advance(len(part))
    text = json.dumps(plan, ensure_ascii=False) + "\n" + "".join(
        (work / f"part-{number:06d}.jsonl").read_text(encoding="utf-8") for number in range(len(parts)))
    atomic_write_bytes(out, text.encode("utf-8"))
    shutil.rmtree(work, ignore_errors=True)
    return TeacherSummary(out, len(records), _task_stats(read_teacher_scores(out)[1]), resumed)


def _query_items(root: Path, queries, wanted: set[str], mined: Path) -> dict:
    files = [Path(q) for q in queries] if queries else default_query_files(root)
    found = {q.qid: q.item(root) for q in read_query_files(files, unlabelled_ok=True)[0] if q.qid in wanted}
    missing = sorted(wanted - set(found))
    if missing:
        raise InputError(f"mined query {missing[0]!r} is not in the training queries "
                         f"({', '.join(map(str, files))}): pass the query files it was mined from",
                         file=str(mined), item=missing[0], field="qid")
    return found


def _task_stats(records: list[TeacherRecord]) -> dict[str, dict]:
    """Per task: queries, how many have no positive, and the reranker's mean P(Yes) on the
    positives and on the negatives (of the queries with positives)."""
    stats: dict[str, dict] = {}
    for record in records:
        row = stats.setdefault(record.task or "", {"queries": 0, "unlabelled": 0, "positives": [], "negatives": []})
        row["queries"] += 1
        if not record.positives:
            row["unlabelled"] += 1
            continue
        for did, _, probability in record.candidates:
            row["positives" if did in record.positives else "negatives"].append(probability)
    def mean(values: list[float]):
        return round(sum(values) / len(values), 4) if values else None

    return {task: {"queries": row["queries"], "unlabelled": row["unlabelled"],
                   "p_yes_positives": mean(row["positives"]),
                   "p_yes_negatives": mean(row["negatives"])} for task, row in stats.items()}


def write_filtered_queries(scores: str | os.PathLike, root: str | os.PathLike, out: str | os.PathLike, *,
                           threshold: float | None = None, margin: float | None = None,
                           queries: Sequence[str | os.PathLike] | None = None) -> dict[str, dict]:
    """Each scored query's training line, with ``neg_cand_list`` its top-k negatives minus those the
    reranker judges relevant (:func:`lamra.training.distill_data.filter_negatives`), into ``out``
    (a query jsonl for ``train_queries`` with ``use_hard_negatives``); a query left with no
    negative, or without a positive (unlabelled), is left out. Returns per task the queries,
    negatives kept and dropped, queries left out (and how many of those were unlabelled)."""
    if threshold is None and margin is None:
        raise InputError("give a threshold or a margin (or both)", field="threshold")
    _, records = read_teacher_scores(scores)
    by_qid = {r.qid: r for r in records}
    files = [Path(q) for q in queries] if queries else default_query_files(Path(root))
    lines, counts = [], {}
    for path in files:
        for _, record in iter_jsonl(path):
            if record is None or record.get("qid") not in by_qid:
                continue
            scored = by_qid.pop(record["qid"])
            row = counts.setdefault(scored.task or "", {"queries": 0, "kept": 0, "dropped": 0, "left_out": 0,
                                                        "unlabelled": 0})
            row["queries"] += 1
            if not scored.positives:  # InfoNCE has nothing to learn from a query without a positive
                row["unlabelled"] += 1
                row["left_out"] += 1
                continue
            kept, dropped = filter_negatives(scored, threshold=threshold, margin=margin)
            row["kept"] += len(kept)
            row["dropped"] += len(dropped)
            if not kept:  # use_hard_negatives refuses a query without one
                row["left_out"] += 1
                continue
            lines.append(json.dumps({**record, "neg_cand_list": kept}, ensure_ascii=False) + "\n")
    if by_qid:
        first = next(iter(by_qid.values()))
        raise InputError(f"{len(by_qid)} scored query(ies) not in the training queries ({', '.join(map(str, files))})",
                         file=str(scores), line=first.line, item=first.qid, field="qid")
    atomic_write_bytes(Path(out), "".join(lines).encode("utf-8"))
    return counts
