"""lamra: a large multimodal model (Qwen2-VL) as a universal multimodal retriever and reranker.

The public API. Heavy modules (torch, transformers, faiss) load on first use, so importing
lamra and running ``lamra --help`` stay instant.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "Item": "lamra.items",
    "InputError": "lamra.errors",
    "Retriever": "lamra.modeling.retriever",
    "Reranker": "lamra.modeling.reranker",
    "fuse": "lamra.modeling.reranker",
    "load_backbone": "lamra.backbone",
    "render_prompt": "lamra.prompts",
    "format_text": "lamra.prompts",
    "PROMPT_FORMAT_VERSION": "lamra.prompts",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .backbone import load_backbone
    from .errors import InputError
    from .items import Item
    from .modeling.reranker import Reranker, fuse
    from .modeling.retriever import Retriever
    from .prompts import PROMPT_FORMAT_VERSION, format_text, render_prompt


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lamra' has no attribute {name!r}")
