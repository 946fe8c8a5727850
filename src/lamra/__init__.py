"""lamra: a large multimodal model (Qwen2-VL) as a universal multimodal retriever and reranker.

The public API. Heavy modules (torch, transformers, faiss) load on first use, so importing
lamra and running ``lamra --help`` stay instant.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from .version import __version__

_EXPORTS = {
    "Item": "lamra.items",
    "InputError": "lamra.errors",
    "Retriever": "lamra.retriever.model",
    "Reranker": "lamra.reranker.model",
    "fuse": "lamra.reranker.model",
    "load_backbone": "lamra.qwen2vl.backbone",
    "render_prompt": "lamra.qwen2vl.prompts",
    "format_text": "lamra.qwen2vl.prompts",
    "PROMPT_FORMAT_VERSION": "lamra.qwen2vl.prompts",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .errors import InputError
    from .items import Item
    from .qwen2vl.backbone import load_backbone
    from .qwen2vl.prompts import PROMPT_FORMAT_VERSION, format_text, render_prompt
    from .reranker.model import Reranker, fuse
    from .retriever.model import Retriever


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lamra' has no attribute {name!r}")
