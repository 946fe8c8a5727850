"""Reading jsonl files line by line with errors that name the file, line and field."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import InputError
from ..items import Item, as_item

ITEM_FIELDS = ("id", "text", "image", "images", "video")


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line; bad lines raise InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", file=str(path))
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            yield number, parse_json_line(raw, file=str(path), line=number)


def parse_json_line(raw: bytes, *, file: str, line: int) -> dict | None:
    """One jsonl line as a dict (None for a blank line)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"not valid UTF-8 (byte {exc.start})", file=file, line=line) from None
    if not text.strip():
        return None
    text = text.rstrip("\r\n")  # columns count within the line, its line break left out
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        # Some of json's messages end in "at" ("Invalid control character at"): say it once.
        message = exc.msg[:-3] if exc.msg.endswith(" at") else exc.msg
        where = "at the end of the line (is it cut short?)" if exc.pos >= len(text) else f"at column {exc.pos + 1}"
        raise InputError(f"not valid JSON: {message} {where}", file=file, line=line) from None
    if not isinstance(value, dict):
        raise InputError(f"expected a JSON object, got {type(value).__name__}", file=file, line=line)
    return value


@dataclass
class ItemLine:
    """An item read from a jsonl line, or the error that line gave."""

    line: int
    item: Item | None = None
    error: InputError | None = None


def read_item_lines(path: str | os.PathLike) -> list[ItemLine]:
    """Every item line of a jsonl of ``{"id", "text", "image"}`` objects, good or bad.

    Image paths are relative to the file's folder. A missing id becomes ``line:N`` (see
    :func:`generated_id`); a repeated id is an error on the later line. Images are not opened here.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", file=str(path))
    results: list[ItemLine] = []
    seen: dict[str, int] = {}
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                record = parse_json_line(raw, file=str(path), line=number)
                if record is None:
                    continue
                item = item_from_record(record, base_dir=path.parent, line=number)
                if item.id in seen:
                    raise InputError(f"duplicate id (first on line {seen[item.id]})", field="id", item=item.id)
                seen[item.id] = number
                results.append(ItemLine(number, item=item))
            except InputError as exc:
                results.append(ItemLine(number, error=exc.located(file=str(path), line=number)))
    return results


GENERATED_ID_PREFIX = "line:"


def generated_id(line: int) -> str:
    """The id of an item given without one: ``line:N`` (N = its 1-based line in the file).

    The rule that keeps it unambiguous: an explicit id may be any non-empty string or integer
    except one of this form, so a generated id never collides with an explicit one (``17`` and
    ``"line:17"`` are different ids, and only the line itself can be ``line:17``).
    """
    return f"{GENERATED_ID_PREFIX}{line}"


def item_from_record(record: dict, *, base_dir, line: int) -> Item:
    """An Item from a jsonl object, checking the fields lamra reads."""
    if "id" not in record or record["id"] is None:
        item_id = generated_id(line)
    else:
        item_id = check_id(record["id"])
    known = {k: record[k] for k in ITEM_FIELDS if k in record}
    known["id"] = item_id
    for field in ("image", "images"):
        value = known.get(field)
        if value is not None and not isinstance(value, (str, list)):
            raise InputError(f"must be a path string or a list of them, got {type(value).__name__}",
                             item=item_id, field=field)
    item = as_item(known, base_dir=base_dir)
    if item.is_empty():
        raise InputError("empty item: it needs a non-empty 'text', an 'image' or a 'video'", item=item_id,
                         field="text")
    return item


def check_id(value) -> str:
    """An explicit item id as a string: a non-empty string or an integer, never ``line:N``."""
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise InputError(f"must be a string or integer, got {type(value).__name__}", field="id")
    item_id = str(value)
    if not item_id.strip():
        raise InputError("empty id: give a non-empty id, or leave the field out to get line:N", field="id")
    rest = item_id[len(GENERATED_ID_PREFIX):]
    if item_id.startswith(GENERATED_ID_PREFIX) and rest.isdigit():
        raise InputError(f"ids of the form line:N are kept for items given without an id; rename {item_id!r}",
                         item=item_id, field="id")
    return item_id
