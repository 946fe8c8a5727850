"""Content digests that key caches, checksums and resumable work: of a file, and of a list of strings.

Shared by the index (its files' checksums), the evaluation's embedding and rerank caches, mining
and the demo reranker's cache key.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable

_READ_BLOCK = 64 * 1024 * 1024
_MEMO: dict[tuple, str] = {}


def sha256_of_file(path: str | os.PathLike) -> str:
    """The sha256 of a file, read in large blocks (read every time: an index checks its files with it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """Content hash of a file, memoised on (path, size, mtime): a data file named by several cache
    keys in one process is read once."""
    path = Path(path)
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _MEMO:
        _MEMO[memo] = sha256_of_file(path)
    return _MEMO[memo]


def strings_sha256(values: Iterable[str | None]) -> str:
    """The sha256 of a sequence of strings (None distinct from "", and no two sequences alike)."""
    digest = hashlib.sha256()
    for value in values:
        digest.update(b"\x00" if value is None else value.encode("utf-8") + b"\x01")
    return digest.hexdigest()
