"""What an index checks before it takes vectors: the encoder's fingerprint and new ids.

Shared by :mod:`~lamra.index.store` (opening, appending) and :mod:`~lamra.index.build`
(encoding), and by the server, which checks an index against the retriever it serves.
"""

from __future__ import annotations

from typing import Collection

import numpy as np

from ..errors import IncompatibleArtifactError, InputError
from ..settings import QWEN2VL_RULES, RULE_SETS

# What an index records of the encoder that made it; "settings" holds the vector-changing
# ModelSettings fields (lamra.settings), absent for encoders without any (baselines).
FINGERPRINT_KEYS = ("model", "adapter", "prompt_format", "dim", "settings")


def check_fingerprint(stored: dict, expect: dict | None, *, where: str) -> None:
    """Refuse an artefact made by another model / adapter / prompt format / dimension / settings.

    The message names every difference (each vector-changing setting by name) and how to get a
    matching index.
    """
    if not expect:
        return
    diffs = []
    for key in FINGERPRINT_KEYS:
        if key not in expect:
            continue
        if key == "settings":
            diffs += _settings_diffs(stored.get(key), expect.get(key))
        elif _norm(stored.get(key)) != _norm(expect.get(key)):
            diffs.append(f"{key}: index has {stored.get(key)!r}, you use {expect.get(key)!r}")
    if diffs:
        raise IncompatibleArtifactError(
            f"index {where} was built with another model, prompt format or settings (" + "; ".join(diffs)
            + "). Search it with the model and settings it was built with, or rebuild it with these "
            "(a new --out folder, or delete this one).")


def _settings_diffs(stored, expect) -> list[str]:
    """Which vector-changing settings differ (``--max-pixels`` ... set them)."""
    if expect in (None, {}) and stored in (None, {}):
        return []
    if not isinstance(stored, dict):
        return [f"settings: the index records none (built before lamra recorded them), you use {expect!r}"]
    if not isinstance(expect, dict):
        return [f"settings: index has {stored!r}, you use none"]
    stored, expect = _with_rule_set(stored), _with_rule_set(expect)
    diffs = []
    if stored.get("rules") != expect.get("rules"):  # the release's rules, by name, first
        diffs.append(f"rule set: index was built under {stored.get('rules')!r}, you use {expect.get('rules')!r}")
    return diffs + [f"setting {name}: index has {stored.get(name)!r}, you use {expect.get(name)!r}"
                    for name in sorted(set(stored) | set(expect))
                    if name != "rules" and stored.get(name) != expect.get(name)]


def _with_rule_set(stored: dict) -> dict:
    """Settings recorded before lamra named rule sets were the Qwen2-VL release's rules."""
    if "rules" in stored:
        return stored
    return {"rules": QWEN2VL_RULES, "rgba": RULE_SETS[QWEN2VL_RULES]["rgba"], **stored}


def _norm(value):
    return int(value) if isinstance(value, (int, np.integer)) else (None if value in ("", None) else str(value))


def check_new_ids(ids: list[str], index: Collection[str] | None) -> None:
    """Refuse an id given twice, or one already in ``index``."""
    seen: set[str] = set()
    for item_id in ids:
        if item_id in seen:
            raise InputError("duplicate id", item=item_id, field="id")
        seen.add(item_id)
    if index is not None and len(index):
        clash = [i for i in ids if i in index]
        if clash:
            raise InputError(f"{len(clash)} id(s) already in the index (first: {clash[0]!r}); "
                             "give new ids, or skip_existing=True / --skip-existing", item=clash[0], field="id")
