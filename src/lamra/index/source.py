"""Which model built an index: ``lamra_model.json`` in the index folder, so that ``search``,
``serve`` and ``index add`` need no ``--model``. (The manifest's fingerprint says *what* the
vectors are; this file says *where* that model is.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

MODEL_RECORD = "lamra_model.json"


def record_model(index: str | os.PathLike, model, lora=None) -> None:
    """Remember the model (and adapter) that built ``index``; local folders as absolute paths."""
    def source(value):
        if value is None:
            return None
        return str(Path(value).resolve()) if Path(value).exists() else str(value)

    Path(index, MODEL_RECORD).write_text(json.dumps({"model": source(model), "lora": source(lora)}, indent=2) + "\n")


def recorded_model(index: str | os.PathLike) -> dict | None:
    """``{"model", "lora"}`` recorded in ``index``, or None."""
    path = Path(index, MODEL_RECORD)
    return json.loads(path.read_text()) if path.is_file() else None
