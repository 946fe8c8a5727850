"""Serving: an HTTP API and a web search page over a lamra index (``lamra serve``).

``create_app(retriever, index, reranker=None, config=ServeConfig())`` builds the FastAPI app;
fastapi is imported only when an app is built, so importing this package stays cheap.
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "create_app": "lamra.serving.app",
    "load_app": "lamra.serving.app",
    "ServeConfig": "lamra.serving.limits",
    "MicroBatcher": "lamra.serving.batcher",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lamra.serving' has no attribute {name!r}")
