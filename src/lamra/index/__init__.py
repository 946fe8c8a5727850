"""Vector index of a collection: build (resumable, multi-process), add, open, search.

``Index`` stores vectors, ids, item metadata and a manifest in a folder; ``exact_topk`` is the
chunked exact top-k that its flat backend and the evaluation code share.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

_EXPORTS = {
    "Index": "lamra.index.store",
    "exact_topk": "lamra.index.exact",
    "CorruptIndexError": "lamra.index.files",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .exact import exact_topk
    from .files import CorruptIndexError
    from .store import Index


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lamra.index' has no attribute {name!r}")
