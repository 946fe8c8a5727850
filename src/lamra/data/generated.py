"""Folders that lamra generates (the synthetic M-BEIR, the demo data set): built beside their
place and swapped in whole, and only ever replacing a folder that the same generator made."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from ..errors import InputError


def write_generated(out: str | os.PathLike, build: Callable[[Path], dict], *, marker: str, what: str,
                    overwrite: bool = False) -> dict:
    """``build(folder)`` fills a new folder and returns its manifest, written there as ``marker``;
    the folder then replaces ``out``, so ``out`` appears complete or not at all.

    An existing ``out`` is replaced only with ``overwrite`` and only when it holds ``marker``
    (a folder this generator made); ``what`` names the kind in the errors ("synthetic dataset").
    """
    out = Path(out)
    if out.exists():
        if not overwrite:
            raise InputError(f"{out} exists; pass overwrite=True (--force) to replace a {what}")
        if not (out / marker).is_file():
            raise InputError(f"{out} exists and is not a {what} (no {marker}); not replacing it")
    out.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.building-"))
    try:
        manifest = build(building)
        (building / marker).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.chmod(building, 0o755)  # mkdtemp makes it private
        if out.exists():
            shutil.rmtree(out)
        os.replace(building, out)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return manifest
