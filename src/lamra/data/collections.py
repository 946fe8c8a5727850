"""A user's collection to index: a folder of images, a jsonl of items, or an M-BEIR pool.

Every kind becomes the same thing: a list of records ``{"id", "text", "image", ...}`` with a
stable string id and absolute image paths (plus extra fields kept for display, such as an
M-BEIR candidate's ``modality`` and ``src_content``). ``Index.build`` takes the records as
they are (they are dicts with ids).

- folder: every image below it (recursively, sorted), id = path relative to the folder
- jsonl:  ``{"id", "text", "image"}`` lines, image paths relative to the file (lamra's format)
- M-BEIR candidate pool: ``{"did", "txt", "img_path", "modality", "src_content"}`` lines, image
  paths relative to the M-BEIR root; ids are the dids
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import InputError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
KINDS = ("auto", "images", "jsonl", "mbeir")


@dataclass
class Collection:
    """The records of a collection, and the lines left out as bad (``skip_bad=True``)."""

    source: Path
    kind: str
    records: list[dict]
    bad: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records)


def open_collection(path: str | os.PathLike, *, kind: str = "auto", mbeir_root: str | os.PathLike | None = None,
                    skip_bad: bool = False) -> Collection:
    """Read a collection; ``kind`` "auto" tells a folder, a lamra jsonl and an M-BEIR pool apart."""
    path = Path(path)
    if kind not in KINDS:
        raise InputError(f"unknown collection kind {kind!r}; choose one of {', '.join(KINDS)}", file=str(path))
    if not path.exists():
        raise InputError("collection not found", file=str(path))
    if kind == "auto":
        kind = detect_kind(path)
    if kind == "images":
        return Collection(path, kind, image_folder(path))
    if kind == "mbeir":
        return mbeir_pool(path, root=mbeir_root, skip_bad=skip_bad)
    return item_jsonl(path, skip_bad=skip_bad)


def detect_kind(path: Path) -> str:
    if path.is_dir():
        return "images"
    with open(path, "rb") as handle:
        for raw in handle:
            if raw.strip():
                try:
                    first = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    break  # the jsonl reader reports it with its line number
                return "mbeir" if isinstance(first, dict) and "did" in first else "jsonl"
    return "jsonl"


def image_folder(folder: Path) -> list[dict]:
    """Every image file below ``folder`` (hidden files and folders skipped), in a stable order."""
    folder = folder.resolve()
    if not folder.is_dir():
        raise InputError("not a folder", file=str(folder))
    records = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            path = Path(root) / name
            records.append({"id": path.relative_to(folder).as_posix(), "text": None, "image": str(path)})
    records.sort(key=lambda r: r["id"])
    if not records:
        raise InputError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder", file=str(folder))
    return records


def item_jsonl(path: Path, *, skip_bad: bool = False) -> Collection:
    """A jsonl of ``{"id", "text", "image"}`` items (lamra's own format)."""
    from .jsonl import read_item_lines

    records, bad = [], []
    for entry in read_item_lines(path):
        if entry.error is not None:
            if not skip_bad:
                raise entry.error
            bad.append({"line": entry.line, "id": entry.error.item, "error": str(entry.error)})
            continue
        item = entry.item
        records.append({"id": item.id, "text": item.text,
                        "images": [str(Path(p).resolve()) for p in item.images]})
    if not records:
        raise InputError("no items in this file", file=str(path))
    return Collection(path, "jsonl", records, bad)


def mbeir_pool(path: Path, *, root: str | os.PathLike | None = None, skip_bad: bool = False) -> Collection:
    """An M-BEIR candidate pool; image paths are relative to the M-BEIR ``root`` (found from a
    ``ROOT/cand_pool/...`` location when not given)."""
    from .jsonl import iter_jsonl
    from .mbeir import candidate_from_record

    root = Path(root) if root is not None else mbeir_root_of(path)
    records, bad = [], []
    seen: dict[str, int] = {}
    lines = iter_jsonl(path)
    while True:
        try:
            line, record = next(lines)
        except StopIteration:
            break
        except InputError as exc:  # an unreadable line: the reader cannot go on past it
            if not skip_bad:
                raise
            bad.append({"line": exc.line, "id": None, "error": str(exc)})
            break
        if record is None:
            continue
        try:
            candidate = candidate_from_record(record, file=str(path), line=line)
            if candidate.did in seen:
                raise InputError(f"duplicate did (first on line {seen[candidate.did]})", file=str(path),
                                 line=line, item=candidate.did, field="did")
            seen[candidate.did] = line
            item = candidate.item(root)
            if item.is_empty():
                raise InputError(f"modality {candidate.modality!r} but no text or image to read", file=str(path),
                                 line=line, item=candidate.did, field="modality")
        except InputError as exc:
            if not skip_bad:
                raise
            bad.append({"line": line, "id": exc.item, "error": str(exc)})
            continue
        records.append({"id": candidate.did, "text": item.text,
                        "images": [str(Path(p).resolve()) for p in item.images],
                        "modality": candidate.modality, "src_content": candidate.src_content})
    if not records:
        raise InputError("no candidates in this pool", file=str(path))
    return Collection(path, "mbeir", records, bad)


def mbeir_root_of(pool: Path) -> Path:
    """``ROOT`` for a pool at ``ROOT/cand_pool/{local,global}/x.jsonl``."""
    for parent in pool.resolve().parents:
        if parent.name == "cand_pool":
            return parent.parent
    raise InputError("cannot tell the M-BEIR root of this pool (it is not under ROOT/cand_pool/): "
                     "give it with --mbeir-root (image paths are relative to it)", file=str(pool))
