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

from ..errors import BadLinesError, InputError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
KINDS = ("auto", "images", "jsonl", "mbeir")


@dataclass
class Collection:
    """The records of a collection, and the lines left out as bad (``skip_bad=True``)."""

    source: Path
    kind: str
    records: list[dict]
    bad: list[dict] = field(default_factory=list)
    lines: dict[str, int] = field(default_factory=dict)  # id -> line of a jsonl / pool (for errors)

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
    """A jsonl of ``{"id", "text", "image"}`` items (lamra's own format).

    Every line is read and every image path checked (exists, not empty) before anything is
    encoded; bad lines are all listed: in ``Collection.bad`` with ``skip_bad``, else in one
    :class:`~lamra.errors.BadLinesError`.
    """
    from .jsonl import read_item_lines

    records, bad, lines = [], [], []
    for entry in read_item_lines(path):
        error = entry.error
        if error is None:
            error = _missing_file(entry.item, file=str(path), line=entry.line)
        if error is not None:
            bad.append(_report(error, entry.line))
            continue
        item = entry.item
        lines.append(entry.line)
        record = {"id": item.id, "text": item.text, "images": [str(Path(p).resolve()) for p in item.images]}
        if item.videos:  # stored as the jsonl gave it: a file path or a list of frame paths
            source = item.videos[0].source
            record["video"] = str(Path(source).resolve()) if isinstance(source, (str, os.PathLike)) \
                else [str(Path(frame).resolve()) for frame in source]
        records.append(record)
    collection = _finish(path, "jsonl", records, bad, skip_bad, empty="no items in this file")
    collection.lines = {record["id"]: line for record, line in zip(records, lines)}
    return collection


def mbeir_pool(path: Path, *, root: str | os.PathLike | None = None, skip_bad: bool = False) -> Collection:
    """An M-BEIR candidate pool; image paths are relative to the M-BEIR ``root`` (found from a
    ``ROOT/cand_pool/...`` location when not given). Bad lines are all listed, as for jsonl."""
    from .jsonl import parse_json_line
    from .mbeir import candidate_from_record

    root = Path(root) if root is not None else mbeir_root_of(path)
    records, bad = [], []
    seen: dict[str, int] = {}
    with open(path, "rb") as handle:
        for line, raw in enumerate(handle, start=1):
            try:
                record = parse_json_line(raw, file=str(path), line=line)
                if record is None:
                    continue
                candidate = candidate_from_record(record, file=str(path), line=line)
                if candidate.did in seen:
                    raise InputError(f"duplicate did (first on line {seen[candidate.did]})", file=str(path),
                                     line=line, item=candidate.did, field="did")
                seen[candidate.did] = line
                item = candidate.item(root)
                if item.is_empty():
                    raise InputError(f"modality {candidate.modality!r} but no text or image to read",
                                     file=str(path), line=line, item=candidate.did, field="modality")
                missing = _missing_file(item, file=str(path), line=line, field="img_path")
                if missing is not None:
                    raise missing
            except InputError as exc:
                bad.append(_report(exc.located(file=str(path), line=line), line))
                continue
            records.append({"id": candidate.did, "text": item.text,
                            "images": [str(Path(p).resolve()) for p in item.images],
                            "modality": candidate.modality, "src_content": candidate.src_content})
    collection = _finish(path, "mbeir", records, bad, skip_bad, empty="no candidates in this pool")
    collection.lines = seen
    return collection


CHECK_CHUNK = 1024  # records whose images are decoded together by check_images


def check_images(collection: Collection, *, pixel_limit: int | None = None, skip_bad: bool = False,
                 show_progress: bool = False) -> Collection:
    """Decode every image of ``collection`` once, as ``lamra embed`` does, so that a truncated,
    unreadable or oversized picture is found before a model loads, with its file, line and id.
    Bad records are all listed: left out into ``bad`` with ``skip_bad``, else one BadLinesError.
    Images are decoded on a few threads (PIL releases the GIL while decoding), with a progress bar."""
    from concurrent.futures import ThreadPoolExecutor

    from ..progress import progress_bar
    from ..qwen2vl.images import load_image
    from ..settings import DEFAULT_IMAGE_PIXEL_LIMIT

    source = None if collection.kind == "images" else str(collection.source)  # a folder's errors name the image
    field_name = "img_path" if collection.kind == "mbeir" else "image"

    def problem(record) -> InputError | None:
        try:
            for image in record.get("images") or ([record["image"]] if record.get("image") else []):
                load_image(image, pixel_limit=pixel_limit or DEFAULT_IMAGE_PIXEL_LIMIT, item=record["id"])
        except InputError as exc:
            return exc
        return None

    good, bad = [], []
    with_images = sum(1 for r in collection.records if r.get("images") or r.get("image"))
    with progress_bar(len(collection.records), "checking images",
                      enabled=show_progress and with_images > 0) as bar, \
            ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(collection.records), CHECK_CHUNK):  # a bounded number of futures at once
            chunk = collection.records[start : start + CHECK_CHUNK]
            for record, exc in zip(chunk, pool.map(problem, chunk)):
                if exc is None:
                    good.append(record)
                    continue
                line = collection.lines.get(record["id"])
                bad.append(_report(InputError(exc.reason, file=source, line=line, item=record["id"],
                                              field=field_name), line))
            bar.advance(len(chunk))
    bad = sorted(collection.bad + bad, key=lambda entry: entry.get("line") or 0)  # the lines' and the images'
    if bad and (not skip_bad or not good):
        raise BadLinesError(bad, file=str(collection.source),
                            hint="nothing was read (fix them, or pass --skip-bad to use the rest)")
    return Collection(collection.source, collection.kind, good, bad, collection.lines)


def _missing_file(item, *, file: str, line: int, field: str = "image") -> InputError | None:
    """A missing or empty image file of ``item`` (cheap: one stat per file; decoding comes later)."""
    for image in item.images:
        if not isinstance(image, (str, os.PathLike)):
            continue
        image = Path(image)
        if not image.is_file():
            return InputError(f"image file not found: {image}", file=file, line=line, item=item.id, field=field)
        if image.stat().st_size == 0:
            return InputError(f"image file is empty (0 bytes): {image}", file=file, line=line, item=item.id,
                              field=field)
    return None


def _report(error: InputError, line: int) -> dict:
    return {"line": line, "id": error.item, "field": error.field, "error": str(error)}


def _finish(path: Path, kind: str, records: list[dict], bad: list[dict], skip_bad: bool, *, empty: str) -> Collection:
    if bad and (not skip_bad or not records):  # (with nothing left, the reasons are worth more than the count)
        raise BadLinesError(bad, file=str(path), hint="nothing was read (fix them, or pass --skip-bad to use the rest)")
    if not records:
        raise InputError(empty + (f" ({len(bad)} bad line(s) skipped)" if bad else ""), file=str(path))
    return Collection(path, kind, records, bad)


def mbeir_root_of(pool: Path) -> Path:
    """``ROOT`` for a pool at ``ROOT/cand_pool/{local,global}/x.jsonl``."""
    for parent in pool.resolve().parents:
        if parent.name == "cand_pool":
            return parent.parent
    raise InputError("cannot tell the M-BEIR root of this pool (it is not under ROOT/cand_pool/): "
                     "give it with --mbeir-root (image paths are relative to it)", file=str(pool))
