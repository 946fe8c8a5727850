"""What a reader returns: the entries to embed (sides) and the tasks scored over them; and the
checked file access every reader shares (a bad file names the set, file, line or entry, field)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import InputError
from .prompts import RERANK_TOP_K, RERANK_WEIGHT


@dataclass(frozen=True)
class Entry:
    """One thing embedded once: its id and its retrieval prompt parts (summarize suffix included)."""

    id: str
    parts: tuple


@dataclass
class Side:
    """The entries of one kind (a set's images, its captions, its queries ...), embedded together.
    ``source``: the annotation file they come from (its digest keys the embedding cache)."""

    name: str
    entries: list[Entry]
    source: Path


@dataclass
class Task:
    """One scored evaluation over two sides (t2i, i2t, a GeneCIS task, a Sugar-Crepe subset ...).

    Positions index the sides' entries. ``lists``: each query ranks only its own candidates
    (GeneCIS, the matching sets); else it ranks the whole candidate side, ``masked`` ones excluded
    (scored -100, VIST). ``metrics``: "R@k" (hit rate), "MAP@k" (CIRCO), "ITM" (positive strictly
    above negative). ``rerank_queries`` / ``rerank_candidates``: the parts LamRA-Rank reads, per
    position (None: the official code never reranked this task). ``submission``: no labels (CIRCO
    test): the top 50 are written for the evaluation server instead of a metric.
    """

    name: str
    queries: str
    candidates: str
    metrics: tuple[str, ...]
    positives: list[list[int]]
    lists: list[list[int]] | None = None
    masked: list[list[int]] | None = None
    rerank_queries: list[tuple] | None = None
    rerank_candidates: list[tuple] | None = None
    rerank_k: int = RERANK_TOP_K
    rerank_weight: float = RERANK_WEIGHT
    submission: bool = False
    submission_keys: list[str] | None = None


@dataclass
class ZeroShotSet:
    """A set as read: its sides, its tasks; ``mean``: the label of the mean of the tasks' first
    metric when the set has several subsets (ours: the official code reports them one by one).
    ``max_pixels``: the image cap its retrieval side is embedded at, where the official run used
    another collator than LamRA's 300 * 28 * 28 (None: the model's own setting)."""

    name: str
    sides: dict[str, Side]
    tasks: list[Task]
    mean: str | None = None
    notes: list[str] = field(default_factory=list)
    max_pixels: int | None = None


def fail(reason: str, path: Path, *, line: int | None = None, item: str | None = None,
         field: str | None = None) -> InputError:
    return InputError(reason, file=str(path), line=line, item=item, field=field)


def need_file(path: Path, *, what: str, source: Path | None = None, line: int | None = None,
              item: str | None = None, field: str | None = None) -> Path:
    """``path`` if it is a file; else an error naming it (and the annotation that points at it)."""
    if path.is_file():
        return path
    if source is None:
        raise fail(f"missing {what}", path)
    raise fail(f"{what} {path} not found", source, line=line, item=item, field=field)


def load_json(path: Path, *, what: str) -> Any:
    need_file(path, what=what)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except ValueError as exc:
        raise fail(f"not valid JSON ({exc})", path) from None


def expect(value: Any, kind: type | tuple, path: Path, *, item: str | None = None, field: str | None = None,
           line: int | None = None) -> Any:
    """``value`` if it is of ``kind``, else an error naming the entry and field."""
    if isinstance(value, kind) and not isinstance(value, bool):
        return value
    names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
    raise fail(f"must be {names}, got {type(value).__name__}", path, line=line, item=item, field=field)


def get(record: Any, key: str, kind: type | tuple, path: Path, *, item: str, line: int | None = None) -> Any:
    """``record[key]`` checked to be of ``kind`` (the error names the entry and the field)."""
    if not isinstance(record, dict):
        raise fail(f"must be a JSON object, got {type(record).__name__}", path, line=line, item=item)
    if key not in record:
        raise fail("missing field", path, line=line, item=item, field=key)
    return expect(record[key], kind, path, item=item, field=key, line=line)


def entry_label(number: int) -> str:
    """How an entry of a JSON list is named in errors (JSON files have no useful line numbers)."""
    return f"entry {number}"
