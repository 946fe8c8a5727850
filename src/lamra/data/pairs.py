"""Stage-1 text pairs: the SimCSE NLI layout (``sent0``, ``sent1``, optional ``hard_neg``).

jsonl (one object a line) or csv (a header row). Every problem is reported with its file, line
and field before training starts.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .jsonl import parse_json_line

FIELDS = ("sent0", "sent1", "hard_neg")


@dataclass(frozen=True)
class TextPair:
    query: str
    positive: str
    hard_negative: str | None = None
    line: int | None = None


def read_pairs(path: str | os.PathLike) -> list[TextPair]:
    """All pairs of a .jsonl or .csv file; raises one InputError listing the first problems."""
    path = Path(path)
    if not path.is_file():
        raise InputError("pairs file not found", file=str(path))
    rows = _csv_rows(path) if path.suffix.lower() == ".csv" else _jsonl_rows(path)
    pairs, problems = [], []
    for line, record in rows:
        if isinstance(record, InputError):
            problems.append(record)
            continue
        pair_problems = [(f, f"must be a non-empty string, got {record.get(f)!r}") for f in FIELDS[:2]
                         if not isinstance(record.get(f), str) or not record.get(f).strip()]
        negative = record.get("hard_neg")
        if negative is not None and negative != "" and not isinstance(negative, str):
            pair_problems.append(("hard_neg", f"must be a string, got {type(negative).__name__}"))
        for field, message in pair_problems:
            problems.append(InputError(message, file=str(path), line=line, field=field))
        if not pair_problems:
            pairs.append(TextPair(record["sent0"], record["sent1"], negative or None, line))
    if problems:
        listed = "\n".join(str(p) for p in problems[:20])
        more = f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise InputError(f"{len(problems)} bad line(s):\n{listed}{more}", file=str(path))
    if not pairs:
        raise InputError("no pairs in the file", file=str(path))
    return pairs


def _jsonl_rows(path: Path):
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                record = parse_json_line(raw, file=str(path), line=number)
            except InputError as exc:
                yield number, exc
                continue
            if record is not None:
                yield number, record


def _csv_rows(path: Path):
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [f for f in FIELDS[:2] if f not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"the header has no column(s) {missing}; expected sent0, sent1[, hard_neg]",
                             file=str(path), line=1)
        for record in reader:
            yield reader.line_num, record
