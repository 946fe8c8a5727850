"""Result tables (terminal, json, csv, markdown) and TREC run files."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ..embeddings import atomic_write_bytes


@dataclass
class TaskResult:
    """One row of the table: the task's headline metric, and the other cut-offs for reference."""

    task: str
    task_type: str
    dataset: str
    metric: str
    score: float  # percent, 0..100
    queries: int
    pool: str
    pool_size: int
    metrics: dict[str, float] = field(default_factory=dict)  # percent
    run_file: str | None = None
    query_index: str | None = None
    pool_index: str | None = None  # None when the pool is several indexes (global-lamra)
    skipped_queries: int = 0  # left out as bad (skip_bad); they count as misses
    skipped_candidates: int = 0


def average(results: Sequence[TaskResult]) -> float:
    return sum(r.score for r in results) / len(results) if results else 0.0


def _rows(results: Sequence[TaskResult]) -> list[list[str]]:
    rows = [[f"{n}. {r.task_type}", r.dataset, r.metric, f"{r.score:.1f}"] for n, r in enumerate(results, start=1)]
    count = len(results)
    label = "Average" if count == 16 else f"Average ({count} task{'' if count == 1 else 's'})"
    rows.append([label, "", "", f"{average(results):.1f}"])
    return rows


TABLE_HEADER = ["Task", "Dataset", "Metric", "Score"]


def rich_table(results: Sequence[TaskResult], title: str):
    from rich.table import Table

    table = Table(title=title)
    for name in TABLE_HEADER:
        table.add_column(name, justify="right" if name == "Score" else "left")
    rows = _rows(results)
    for row in rows[:-1]:
        table.add_row(*row)
    table.add_section()
    table.add_row(*rows[-1], style="bold")
    return table


def markdown(results: Sequence[TaskResult], title: str, note: str | None = None) -> str:
    """The per-task table, then the same numbers as one row laid out like the paper's Table 2."""
    lines = [f"# {title}", ""] + ([note, ""] if note else [])
    lines += ["| " + " | ".join(TABLE_HEADER) + " |", "|---|---|---|---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(results)]
    lines += ["", "As one row (the paper's Table 2 layout):", ""]
    header = [f"{r.task_type} {r.dataset}" for r in results] + ["Avg."]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---:|" * len(header))
    lines.append("| " + " | ".join(f"{r.score:.1f}" for r in results) + f" | {average(results):.1f} |")
    return "\n".join(lines) + "\n"


def csv_text(results: Sequence[TaskResult]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    extra = sorted({name for r in results for name in r.metrics})
    writer.writerow(["task", "task_type", "dataset", "metric", "score", "queries", "pool", "pool_size", *extra])
    for r in results:
        writer.writerow([r.task, r.task_type, r.dataset, r.metric, f"{r.score:.4f}", r.queries, r.pool, r.pool_size,
                         *[f"{r.metrics[name]:.4f}" if name in r.metrics else "" for name in extra]])
    writer.writerow(["average", "", "", "", f"{average(results):.4f}", "", "", "", *[""] * len(extra)])
    return buffer.getvalue()


def write_reports(results: Sequence[TaskResult], out: Path, *, title: str, info: dict, stem: str = "results",
                  note: str | None = None) -> dict:
    """results.json (everything), results.csv and results.md (``note`` under its title); returns their paths."""
    payload = {**info, "average": average(results), "tasks": [asdict(r) for r in results]}
    paths = {"json": out / f"{stem}.json", "csv": out / f"{stem}.csv", "markdown": out / f"{stem}.md"}
    atomic_write_bytes(paths["json"], (json.dumps(payload, indent=2, ensure_ascii=False) + "\n").encode())
    atomic_write_bytes(paths["csv"], csv_text(results).encode())
    atomic_write_bytes(paths["markdown"], markdown(results, title, note).encode())
    return paths


# -- Ret and Ret+Rank side by side -----------------------------------------------------------

SIDE_BY_SIDE_HEADER = ["Task", "Dataset", "Metric", "Ret", "Ret+Rank"]


def _side_by_side_rows(retrieval: Sequence[TaskResult], reranked: Sequence[TaskResult]) -> list[list[str]]:
    if [r.task for r in retrieval] != [r.task for r in reranked]:
        raise ValueError("Ret and Ret+Rank results must list the same tasks in the same order")
    rows = [[f"{n}. {ret.task_type}", ret.dataset, ret.metric, f"{ret.score:.1f}", f"{rank.score:.1f}"]
            for n, (ret, rank) in enumerate(zip(retrieval, reranked), start=1)]
    count = len(retrieval)
    label = "Average" if count == 16 else f"Average ({count} task{'' if count == 1 else 's'})"
    rows.append([label, "", "", f"{average(retrieval):.1f}", f"{average(reranked):.1f}"])
    return rows


def rich_side_by_side(retrieval: Sequence[TaskResult], reranked: Sequence[TaskResult], title: str):
    from rich.table import Table

    table = Table(title=title)
    for name in SIDE_BY_SIDE_HEADER:
        table.add_column(name, justify="right" if name.startswith("Ret") else "left")
    rows = _side_by_side_rows(retrieval, reranked)
    for row in rows[:-1]:
        table.add_row(*row)
    table.add_section()
    table.add_row(*rows[-1], style="bold")
    return table


def markdown_side_by_side(retrieval: Sequence[TaskResult], reranked: Sequence[TaskResult], title: str,
                          note: str | None = None) -> str:
    """Ret and Ret+Rank per task, then both as rows of the paper's Table 2 layout."""
    lines = [f"# {title}", ""] + ([note, ""] if note else [])
    lines += ["| " + " | ".join(SIDE_BY_SIDE_HEADER) + " |", "|---|---|---|---:|---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in _side_by_side_rows(retrieval, reranked)]
    lines += ["", "As rows (the paper's Table 2 layout):", ""]
    header = [""] + [f"{r.task_type} {r.dataset}" for r in retrieval] + ["Avg."]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|---|" + "---:|" * (len(header) - 1))
    for label, results in (("Ret", retrieval), ("Ret+Rank", reranked)):
        lines.append(f"| {label} | " + " | ".join(f"{r.score:.1f}" for r in results) + f" | {average(results):.1f} |")
    return "\n".join(lines) + "\n"


def csv_side_by_side(retrieval: Sequence[TaskResult], reranked: Sequence[TaskResult]) -> str:
    """One row per task: the Ret columns of :func:`csv_text`, then ``rerank_score`` and the
    Ret+Rank value of every other metric (``rerank_Recall@K``)."""
    _side_by_side_rows(retrieval, reranked)  # the same tasks, in the same order
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    extra = sorted({name for r in retrieval for name in r.metrics})
    writer.writerow(["task", "task_type", "dataset", "metric", "score", "rerank_score", "queries", "pool",
                     "pool_size", *extra, *[f"rerank_{name}" for name in extra]])

    def values(result: TaskResult) -> list[str]:
        return [f"{result.metrics[name]:.4f}" if name in result.metrics else "" for name in extra]

    for ret, rank in zip(retrieval, reranked):
        writer.writerow([ret.task, ret.task_type, ret.dataset, ret.metric, f"{ret.score:.4f}", f"{rank.score:.4f}",
                         ret.queries, ret.pool, ret.pool_size, *values(ret), *values(rank)])
    writer.writerow(["average", "", "", "", f"{average(retrieval):.4f}", f"{average(reranked):.4f}", "", "", "",
                     *[""] * (2 * len(extra))])
    return buffer.getvalue()


def write_rerank_reports(retrieval: Sequence[TaskResult], reranked: Sequence[TaskResult], out: Path, *, title: str,
                         info: dict, stem: str = "results", note: str | None = None) -> dict:
    """results.json (the Ret fields as :func:`write_reports` writes them, Ret+Rank under
    ``rerank``), results.csv and results.md side by side; returns their paths."""
    rerank = {**info.get("rerank", {}), "average": average(reranked), "tasks": [asdict(r) for r in reranked]}
    payload = {**{k: v for k, v in info.items() if k != "rerank"}, "average": average(retrieval),
               "tasks": [asdict(r) for r in retrieval], "rerank": rerank}
    paths = {"json": out / f"{stem}.json", "csv": out / f"{stem}.csv", "markdown": out / f"{stem}.md"}
    atomic_write_bytes(paths["json"], (json.dumps(payload, indent=2, ensure_ascii=False) + "\n").encode())
    atomic_write_bytes(paths["csv"], csv_side_by_side(retrieval, reranked).encode())
    atomic_write_bytes(paths["markdown"], markdown_side_by_side(retrieval, reranked, title, note).encode())
    return paths


def write_trec_run(path: Path, qids: Iterable[str], ids: Iterable[Sequence[str]], scores, tag: str = "lamra") -> None:
    """TREC run lines ``qid Q0 did rank score tag`` (rank from 1), written atomically."""
    lines = []
    for qid, row_ids, row_scores in zip(qids, ids, scores):
        for rank, (did, score) in enumerate(zip(row_ids, row_scores), start=1):
            lines.append(f"{qid} Q0 {did} {rank} {float(score):.6f} {tag}\n")
    atomic_write_bytes(path, "".join(lines).encode())


def read_trec_run(path: str | Path) -> dict[str, list[tuple[str, float]]]:
    """``{qid: [(did, score), ...]}`` in file rank order (for reranking or other metrics)."""
    from ..errors import InputError

    run: dict[str, list[tuple[str, float]]] = {}
    with open(path, encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            fields = text.split()
            if not fields:
                continue
            if len(fields) < 6:
                raise InputError(f"expected 'qid Q0 did rank score tag', got {len(fields)} columns",
                                 file=str(path), line=number)
            try:
                score = float(fields[4])
            except ValueError:
                raise InputError(f"score must be a number, got {fields[4]!r}", file=str(path), line=number,
                                 field="score") from None
            run.setdefault(fields[0], []).append((fields[2], score))
    return run
