"""M-BEIR query instructions: the tsv, the built-in first ones, and how a query gets its own.

``instructions/query_instructions.tsv`` (docs/format.md#m-beir-data-format): a header row, then query_modality,
cand_modality, dataset, dataset_id, prompt_1..prompt_4 (empty ones dropped), keyed by
"{dataset_id}, {query_modality}, {cand_modality}". Without the tsv the built-in first
instruction of each task is used.

Two ways to give a query its instruction (:func:`query_instructions`):

- ``first`` (the default): the first instruction of the query's dataset and task modalities, a
  deterministic choice, so two runs give the same numbers;
- ``random``: what the released LamRA / UniIR code does - a random positive of the query, then a
  random instruction keyed on that positive's modality - seeded by ``seed`` and the qid, so a
  run can be repeated exactly.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from ..errors import InputError
from ..qwen2vl.prompts import format_text
from .mbeir import MODALITIES, TASK_MODALITIES, MBEIRLayout, MBEIRQuery

logger = logging.getLogger(__name__)

# The first instruction of each (dataset_id, query modality, candidate modality): the built-in
# fallback when instructions/query_instructions.tsv is absent (docs/format.md#m-beir-data-format).
_WIKI_PARAGRAPH = "Retrieve a Wikipedia paragraph that provides an answer to the given query about the image."
_WIKI_PAIR = "Retrieve a Wikipedia image-description pair that provides evidence for the question of this image."
BUILTIN_INSTRUCTIONS = {
    (0, "text", "image"): "Identify the news-related image in line with the described event.",
    (0, "image", "text"): "Find a caption for the news in the given photo.",
    (1, "text", "image"): "Based on the following fashion description, retrieve the best matching image.",
    (1, "image", "text"): "Find a product description for the fashion item in the image.",
    (2, "text", "text"): "Retrieve passages from Wikipedia that provide answers to the following question.",
    (2, "text", "image,text"): "Find a Wikipedia image that answers this question.",
    (3, "text", "image,text"): "Find a news image that matches the provided caption.",
    (4, "image", "image"): "Find a day-to-day image that looks similar to the provided image.",
    (5, "image,text", "text"): _WIKI_PARAGRAPH,
    (5, "image,text", "image,text"): _WIKI_PAIR,
    (6, "image,text", "text"): _WIKI_PARAGRAPH,
    (6, "image,text", "image,text"): _WIKI_PAIR,
    (7, "image,text", "image"): "Find a fashion image that aligns with the reference image and style note.",
    (8, "image,text", "image"): "Retrieve a day-to-day image that aligns with the modification instructions of the "
                                "provided image.",
    (9, "text", "image"): "Find me an everyday image that matches the given caption.",
    (9, "image", "text"): "Find an image caption describing the following everyday image.",
}



INSTRUCTIONS_HEADER = ("query_modality", "cand_modality", "dataset", "dataset_id",
                       "prompt_1", "prompt_2", "prompt_3", "prompt_4")


@dataclass
class Instructions:
    """Task instructions keyed by (dataset_id, query modality, candidate modality)."""

    prompts: dict[tuple[int, str, str], list[str]]
    source: str  # the tsv path, or "built-in"

    def first(self, dataset_id: int, query_modality: str, cand_modality: str) -> str:
        """The first instruction, formatted as UniIR / LamRA format it (a deterministic choice)."""
        key = (int(dataset_id), query_modality, cand_modality)
        prompts = self.prompts.get(key)
        if not prompts:
            raise InputError(f"no instruction for dataset {key[0]}, {key[1]} -> {key[2]} "
                             f"(key '{key[0]}, {key[1]}, {key[2]}')", file=self.source)
        return format_text(prompts[0])

    def for_query(self, query: MBEIRQuery) -> str:
        """The instruction of a query: its dataset (from the qid) and its task's modalities."""
        query_modality, cand_modality = TASK_MODALITIES[query.task_id]
        return self.first(query.dataset_id, query_modality, cand_modality)

    def random_for_query(self, query: MBEIRQuery, seed: int, modality_of: Mapping[str, str],
                         *, file: str | None = None) -> str:
        """The released code's choice, repeatable: a random positive of the query, then a random
        instruction of the key (dataset id, query modality, that positive's modality), formatted;
        for a query without positives, of its task's candidate modality.

        The random draws come from a generator seeded with ``seed`` and the qid, so a query gets
        the same instruction whatever the order, the tasks run or the number of processes.
        ``modality_of`` maps a did to its candidate modality (from the pool).
        """
        rng = random.Random(f"{seed}:{query.qid}")
        if not query.positives:  # a query without labels (distillation): its task's candidate modality
            did, modality = None, TASK_MODALITIES[query.task_id][1]
        else:
            did = rng.choice(query.positives)
            modality = modality_of.get(did)
        if modality is None:
            raise InputError(f"positive candidate {did!r} is not in the pool, so its modality (which picks the "
                             "instruction) is unknown", file=file, line=query.line, item=query.qid,
                             field="pos_cand_list")
        key = (query.dataset_id, query.modality, modality)
        prompts = self.prompts.get(key)
        if not prompts:
            raise InputError(f"no instruction for dataset {key[0]}, {key[1]} -> {key[2]} "
                             f"(key '{key[0]}, {key[1]}, {key[2]}')", file=self.source)
        return format_text(rng.choice(prompts))


INSTRUCTION_CHOICES = ("first", "random")


def query_instructions(queries: list[MBEIRQuery], table: Instructions, *, choice: str = "first", seed: int = 0,
                       modality_of: Mapping[str, str] | None = None, file: str | None = None) -> list[str]:
    """One instruction per query: the first of its task's key (deterministic), or the released
    code's random choice (``choice="random"``; seeded, needs ``modality_of``)."""
    if choice == "first":
        return [table.for_query(query) for query in queries]
    if choice == "random":
        if modality_of is None:
            raise ValueError("random instructions need the pool's candidate modalities (modality_of)")
        return [table.random_for_query(query, seed, modality_of, file=file) for query in queries]
    raise InputError(f"instruction choice must be one of {', '.join(INSTRUCTION_CHOICES)}, got {choice!r}")


def builtin_instructions() -> Instructions:
    return Instructions({key: [text] for key, text in BUILTIN_INSTRUCTIONS.items()}, source="built-in")


def instruction_rows(path: str | os.PathLike) -> Iterator[tuple[int, list[str]]]:
    """(line number, columns) of each data row of the tsv (the header row skipped)."""
    with open(path, encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if number == 1 or not text.strip():
                continue
            yield number, text.rstrip("\r\n").split("\t")


def instruction_row_problems(columns: list[str]) -> list[tuple[str, str]]:
    problems = []
    if len(columns) < 5:
        return [("prompt_1", f"expected at least 5 tab-separated columns, got {len(columns)}")]
    if columns[0] not in MODALITIES:
        problems.append(("query_modality", f"unknown modality {columns[0]!r}"))
    if columns[1] not in MODALITIES:
        problems.append(("cand_modality", f"unknown modality {columns[1]!r}"))
    if not columns[3].strip().isdigit():
        problems.append(("dataset_id", f"must be an integer, got {columns[3]!r}"))
    if not [p for p in columns[4:] if p.strip()]:
        problems.append(("prompt_1", "no instruction on this row"))
    return problems


def read_instructions(path: str | os.PathLike) -> Instructions:
    """Parse query_instructions.tsv: header row, then query_modality, cand_modality, dataset,
    dataset_id, prompt_1..prompt_4 (empty ones dropped), as UniIR reads it."""
    path = Path(path)
    if not path.is_file():
        raise InputError("instructions file not found", file=str(path))
    prompts: dict[tuple[int, str, str], list[str]] = {}
    for number, columns in instruction_rows(path):
        problems = instruction_row_problems(columns)
        if problems:
            key, message = problems[0]
            raise InputError(message, file=str(path), line=number, field=key)
        key = (int(columns[3]), columns[0], columns[1])
        prompts[key] = [p.strip() for p in columns[4:] if p.strip()]
    return Instructions(prompts, source=str(path))


def load_instructions(root: str | os.PathLike) -> Instructions:
    """The root's instructions tsv, or the built-in first instructions when it has none."""
    path = MBEIRLayout(root).instructions_file
    if path.is_file():
        return read_instructions(path)
    logger.info("%s not found: using the built-in first instruction of each task", path)
    return builtin_instructions()


def write_instructions(path: str | os.PathLike, rows: list[tuple[str, str, str, int, list[str]]]) -> None:
    """Write a tsv of (query_modality, cand_modality, dataset, dataset_id, prompts)."""
    lines = ["\t".join(INSTRUCTIONS_HEADER)]
    for query_modality, cand_modality, dataset, dataset_id, prompts in rows:
        padded = list(prompts) + [""] * (4 - len(prompts))
        lines.append("\t".join([query_modality, cand_modality, dataset, str(dataset_id), *padded]))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
