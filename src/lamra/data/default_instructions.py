"""The instruction a query gets when the user gives none: the M-BEIR instruction of the closest task.

LamRA-Ret was instruction-tuned on M-BEIR, where every query carries its task's instruction; a
query without one ranks very differently. Without ``--instruction``, ``lamra search``, the
server and ``lamra embed --against`` pick the first M-BEIR instruction of the task whose query
and candidate modalities match the query's and the collection's, preferring the everyday-photo
data sets (MSCOCO, NIGHTS, CIRR) over the specialised ones (news, fashion, Wikipedia). The
choice per pair of modalities, and why, is :data:`CLOSEST_TASKS`; ``none`` means no instruction.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable

from .mbeir_instructions import BUILTIN_INSTRUCTIONS

NONE = "none"  # --instruction none: the query is encoded without an instruction
MODALITIES = ("text", "image", "image,text")

# (query modality, candidate modality) -> (M-BEIR dataset id, its name, the key's candidate modality)
CLOSEST_TASKS = {
    ("text", "image"): (9, "MSCOCO text -> image", "image"),
    ("image", "text"): (9, "MSCOCO image -> text", "text"),
    ("image", "image"): (4, "NIGHTS image -> image", "image"),
    # M-BEIR's only text -> text task is WebQA's question -> Wikipedia passage.
    ("text", "text"): (2, "WebQA text -> text", "text"),
    # A caption-like query against pictures with text: EDIS (news images with their headlines).
    ("text", "image,text"): (3, "EDIS text -> image,text", "image,text"),
    # M-BEIR has no image -> image,text task: the image -> image one (its candidates' pictures).
    ("image", "image,text"): (4, "NIGHTS image -> image", "image"),
    ("image,text", "text"): (6, "InfoSeek image,text -> text", "text"),
    ("image,text", "image"): (8, "CIRR image,text -> image", "image"),
    ("image,text", "image,text"): (6, "InfoSeek image,text -> image,text", "image,text"),
}


@dataclass(frozen=True)
class Choice:
    """The instruction a query is encoded with (None: none) and why, for the user to see."""

    instruction: str | None
    reason: str

    def describe(self) -> str:
        if self.instruction is None:
            return f"instruction: none ({self.reason})"
        return f"instruction: {self.instruction!r} ({self.reason})"


def modality(text: str | None, images: int) -> str:
    """An item's modality in M-BEIR's words: text, image or image,text (None when empty)."""
    if images and text:
        return "image,text"
    return "image" if images else "text"


def collection_modality(modalities: Iterable[str]) -> str | None:
    """The most common modality of a collection's items (None for an empty one)."""
    counts = Counter(m for m in modalities if m)
    return counts.most_common(1)[0][0] if counts else None


def default_instruction(query_modality: str, cand_modality: str | None) -> Choice:
    """The first instruction of the M-BEIR task closest to these modalities."""
    if cand_modality is None:
        return Choice(None, "the collection's modality is unknown; give --instruction")
    dataset_id, task, key_modality = CLOSEST_TASKS[(query_modality, cand_modality)]
    text = BUILTIN_INSTRUCTIONS[(dataset_id, query_modality, key_modality)]
    return Choice(text, f"default for {query_modality} queries against {cand_modality} items: M-BEIR's {task}; "
                        "--instruction TEXT for another, --instruction none for none")


def choose_instruction(given: str | None, query_modality: str, cand_modality: str | None) -> Choice:
    """``--instruction``: a text as given, ``none`` for none, left out: :func:`default_instruction`."""
    if given is None:
        return default_instruction(query_modality, cand_modality)
    if given.strip().lower() == NONE:
        return Choice(None, "--instruction none")
    return Choice(given, "given")


def index_modality(index, *, sample: int = 2000) -> str | None:
    """The most common modality of an index's items, from up to ``sample`` of them spread over it."""
    ids = getattr(index, "ids", None)  # (a stand-in index may keep no items)
    if not ids or not hasattr(index, "metadata"):
        return None
    step = max(1, len(ids) // sample)
    picked = ids[::step][:sample]

    def of(item_id) -> str:
        meta = index.metadata(item_id)
        images = meta.get("images") or ([meta["image"]] if meta.get("image") else [])
        return modality(meta.get("text"), len(images) + (1 if meta.get("video") else 0))

    return collection_modality(of(item_id) for item_id in picked)
