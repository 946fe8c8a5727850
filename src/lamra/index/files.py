"""Index files on disk: checksummed writes, verified reads, the manifest.

Every data file of an index is listed in ``manifest.json`` with its size and sha256, and
the manifest is written last (atomically): a folder whose manifest opens is complete, and a
file that was truncated, overwritten or flipped after the fact is refused on open instead
of giving wrong results.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..digests import sha256_of_file
from ..embeddings import atomic_write_bytes
from ..errors import InputError

MANIFEST = "manifest.json"
INDEX_FORMAT = "lamra-index-1"


class CorruptIndexError(InputError):
    """An index file is missing, truncated or does not match its recorded checksum."""


def write_file(folder: Path, name: str, data: bytes) -> dict:
    """Write ``folder/name`` atomically; return its manifest entry (path, bytes, sha256)."""
    atomic_write_bytes(folder / name, data)
    return {"path": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def jsonl_bytes(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records).encode()


def check_size(folder: Path, entry: dict) -> Path:
    """The file of a manifest entry, after checking it exists and has the recorded size."""
    path = folder / entry["path"]
    if not path.is_file():
        raise CorruptIndexError(f"index file is missing: {path}", file=str(path))
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise CorruptIndexError(f"index file has {size} bytes, the manifest says {entry['bytes']} "
                                "(truncated or overwritten); rebuild the index", file=str(path))
    return path


def describe_file(folder: Path, name: str) -> dict:
    """The manifest entry (path, bytes, sha256) of a file already written in ``folder``."""
    path = folder / name
    return {"path": name, "bytes": path.stat().st_size, "sha256": sha256_of_file(path)}


def verify_file(folder: Path, entry: dict) -> Path:
    """Check size and sha256 of a manifest entry's file (reads the whole file)."""
    path = check_size(folder, entry)
    if sha256_of_file(path) != entry["sha256"]:
        raise CorruptIndexError("index file does not match the checksum in the manifest (corrupt); "
                                "rebuild the index", file=str(path))
    return path


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not folder.is_dir():
        raise InputError("index folder not found", file=str(folder))
    if not path.is_file():
        hint = " (an interrupted build: run the same build command again to resume)" \
            if (folder / ".work").is_dir() else ""
        raise InputError(f"not a lamra index: no {MANIFEST}{hint}", file=str(folder))
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptIndexError(f"manifest is not valid JSON ({exc})", file=str(path)) from None
    if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise CorruptIndexError(f"unknown index format {found!r} (this lamra reads {INDEX_FORMAT!r})",
                                file=str(path))
    return manifest


def write_manifest(folder: Path, manifest: dict) -> None:
    atomic_write_bytes(folder / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False).encode())


def load_npy(path: Path, *, mmap: bool = True) -> np.ndarray:
    """A .npy file (memory-mapped by default) with a clear error if its header is damaged."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CorruptIndexError(f"cannot read vectors ({exc}); rebuild the index", file=str(path)) from None


def line_offsets(path: Path) -> np.ndarray:
    """The byte offset of every line of a jsonl file (to read one item's metadata)."""
    data = np.fromfile(path, dtype=np.uint8)
    ends = np.flatnonzero(data == ord("\n"))
    return np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
