"""The 12 zero-shot sets of the LamRA paper (Tables 3 and 4), read as LamRA_Eval ships them.

One reader per set (a module per family), each returning the entries to embed and the tasks to
score, with the official prompts (:mod:`.prompts`). Paths are the defaults of the official
scripts, relative to one data root (the official ``./data``). :mod:`.run` evaluates them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ...errors import InputError
from .base import Entry, Side, Task, ZeroShotSet


@dataclass(frozen=True)
class SetInfo:
    """A set: its name, what the paper calls it, the file whose presence says it is under the
    root, and its reader (``read(root, format)``)."""

    name: str
    title: str
    marker: str
    read: Callable[[Path, str], ZeroShotSet]
    video: bool = False


def _sets() -> dict[str, SetInfo]:
    from . import composed, dialog, matching, paired, video

    sets = [
        SetInfo("sharegpt4v", "ShareGPT4V", "sharegpt4v/datas_for_validation.json",
                lambda root, fmt: paired.read_sharegpt4v(root)),
        SetInfo("urban1k", "Urban-1K", "Urban1k/caption", lambda root, fmt: paired.read_urban1k(root)),
        SetInfo("flickr30k", "Flickr30K (1K test)", "flickr/flickr_text.json",
                lambda root, fmt: paired.read_flickr(root)),
        SetInfo("circo", "CIRCO (test: server submission)", "circo/annotations/test.json",
                lambda root, fmt: composed.read_circo(root, "test")),
        SetInfo("circo-val", "CIRCO (val)", "circo/annotations/val.json",
                lambda root, fmt: composed.read_circo(root, "val")),
        SetInfo("genecis", "GeneCIS", "genecis/annotations", lambda root, fmt: composed.read_genecis(root)),
        SetInfo("vist", "VIST", "vist/sis/val.story-in-sequence.json", lambda root, fmt: dialog.read_vist(root, fmt)),
        SetInfo("visdial", "VisDial", "visdial/visdial_1.0_val.json", lambda root, fmt: dialog.read_visdial(root)),
        SetInfo("fashioniq-multiturn", "Multi-round FashionIQ", "multiturnfashion/data/all.val.json",
                lambda root, fmt: dialog.read_fashion(root)),
        SetInfo("ccneg", "CC-Neg", "ccneg/ccneg_preprocessed.pt", lambda root, fmt: matching.read_ccneg(root)),
        SetInfo("sugar-crepe", "Sugar-Crepe", "sugar-crepe/data", lambda root, fmt: matching.read_sugar_crepe(root)),
        SetInfo("msrvtt", "MSR-VTT", "msrvtt/annotations/MSRVTT_JSFUSION_test.csv",
                lambda root, fmt: video.read_msrvtt(root), video=True),
        SetInfo("msvd", "MSVD", "MSVD/test_list.txt", lambda root, fmt: video.read_msvd(root), video=True),
    ]
    return {info.name: info for info in sets}


SETS = _sets()
FORMATS = ("official", "lamra")


def present(root: str | Path, info: SetInfo) -> bool:
    root = Path(root)
    if info.name == "urban1k":
        return (root / "Urban1k" / "caption").is_dir() or (root / "Urban1K" / "caption").is_dir()
    return (root / info.marker).exists()


def find_sets(root: str | Path) -> list[str]:
    """The sets whose files are under ``root``, in the paper's order."""
    return [name for name, info in SETS.items() if present(root, info)]


def resolve_sets(root: str | Path, names: list[str]) -> list[str]:
    """``names`` checked ("all": every set found under ``root``)."""
    if names == ["all"] or "all" in names:
        found = find_sets(root)
        if not found:
            raise InputError(f"no zero-shot set under {root} (looked for {', '.join(i.marker for i in SETS.values())})",
                             file=str(root))
        return found
    unknown = [name for name in names if name not in SETS]
    if unknown:
        raise InputError(f"unknown set {unknown[0]!r}: one of {', '.join(SETS)} or all", field="--set")
    return list(dict.fromkeys(names))


def read_set(root: str | Path, name: str, format: str = "lamra") -> ZeroShotSet:
    """Read one set; a bad or missing file is an :class:`InputError` that names the set first."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    try:
        return SETS[name].read(Path(root), format)
    except InputError as exc:
        raise InputError(f"[{name}] {exc.reason}", file=exc.file, line=exc.line, item=exc.item,
                         field=exc.field) from None


__all__ = ["SETS", "FORMATS", "SetInfo", "Entry", "Side", "Task", "ZeroShotSet", "find_sets", "read_set",
           "resolve_sets"]
