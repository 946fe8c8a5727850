"""Embedding files: vectors (.npy) plus a .json with ids and the model fingerprint.

Files appear atomically (written under a temporary name, then renamed), so a killed run
never leaves a half-written file that looks complete.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import IncompatibleArtifactError, InputError


def check_items(path, *, pixel_limit: int | None = None) -> tuple[list, list[dict]]:
    """Read a jsonl of items and open every image once: (good items, bad-line reports)."""
    from .data.jsonl import read_item_lines
    from .qwen2vl.images import load_image
    from .settings import DEFAULT_IMAGE_PIXEL_LIMIT

    pixel_limit = pixel_limit or DEFAULT_IMAGE_PIXEL_LIMIT

    good, bad = [], []
    for entry in read_item_lines(path):
        error = entry.error
        if error is None:
            try:
                for image in entry.item.images:
                    load_image(image, pixel_limit=pixel_limit, item=entry.item.id)
            except InputError as exc:
                error = exc.located(file=str(path), line=entry.line)
        if error is None:
            good.append(entry.item)
        else:
            bad.append({"line": entry.line, "id": error.item, "field": error.field, "error": str(error)})
    return good, bad


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o666 & ~_umask())  # a plain file's mode (0644 typically), not mkstemp's 0600
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it back at once (once per process)
    os.umask(mask)
    return mask


def npy_bytes(array: np.ndarray) -> bytes:
    """An array as the bytes of a .npy file (written with atomic_write_bytes)."""
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def save_embeddings(out, vectors: np.ndarray, ids: list[str], fingerprint: dict[str, Any], *,
                    bad: list[dict] | None = None) -> dict[str, Path]:
    """Write ``out`` (.npy), ``out``.json (ids, fingerprint) and, if any, ``out``.bad.jsonl."""
    out = Path(out)
    if out.suffix != ".npy":
        out = out.with_suffix(".npy")
    meta = {**fingerprint, "count": int(len(ids)), "ids": list(ids)}
    written = {"vectors": out, "meta": out.with_suffix(".json")}
    atomic_write_bytes(out, npy_bytes(np.asarray(vectors, dtype=np.float32)))
    atomic_write_bytes(written["meta"], json.dumps(meta, ensure_ascii=False).encode())
    if bad:
        written["bad"] = out.with_suffix(".bad.jsonl")
        lines = "".join(json.dumps(b, ensure_ascii=False) + "\n" for b in bad)
        atomic_write_bytes(written["bad"], lines.encode())
    return written


def load_embeddings(path, *, expect: dict[str, Any] | None = None) -> tuple[np.ndarray, list[str], dict]:
    """Read vectors, ids and fingerprint; refuse them if ``expect`` (a fingerprint) differs."""
    path = Path(path).with_suffix(".npy")
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise InputError("embedding file or its .json is missing", file=str(path))
    meta = json.loads(meta_path.read_text())
    vectors = np.load(path, allow_pickle=False)
    if vectors.shape[0] != meta.get("count"):
        raise InputError(f"{vectors.shape[0]} vectors but {meta.get('count')} ids", file=str(path))
    if expect:
        diff = {k: (meta.get(k), v) for k, v in expect.items() if meta.get(k) != v}
        if diff:
            raise IncompatibleArtifactError(f"{path}: made with {diff} (stored, wanted)")
    return vectors, meta["ids"], meta
