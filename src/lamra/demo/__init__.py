"""The demo apparatus: the demo data set from Debian's packages, lamra's default model and the demo
reranker (their recipes and caches), SmolLM2-135M as a Qwen2-VL checkpoint, and tiny random models.

The library never imports this package; only the CLI does, for ``lamra data demo`` and for the
default model when no ``--model`` is given. ``python -m lamra.demo`` runs ``make demo``.
"""
