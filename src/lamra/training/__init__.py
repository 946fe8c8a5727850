"""Training LamRA-Ret and LamRA-Rank (docs/training.md, docs/training-rerank.md).

The names below load on first use, so importing lamra.training stays cheap.
"""

from importlib import import_module

_EXPORTS = {
    "RetrieverTrainingArgs": "lamra.training.args",
    "load_args": "lamra.training.args",
    # each side's trainer builds its recipe for the shared loop (lamra.training.loop)
    "train_retriever": "lamra.retriever.trainer",
    "train_reranker": "lamra.reranker.trainer",
    "merge_lora": "lamra.training.merge",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lamra.training' has no attribute {name!r}")
