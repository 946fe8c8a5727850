"""Training examples for LamRA-Ret: stage-1 text pairs and stage-2 M-BEIR queries.

Every random choice (which positive, which instruction) is drawn from a generator seeded by
(seed, epoch, index), so an example is the same whether a run went straight through or was
resumed from a checkpoint, and on whichever rank draws it. Datasets expose
``example(index, epoch)``; :class:`lamra.training.schedule.EpochIndexed` adapts them to a DataLoader.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

from ..data.mbeir import MBEIRLayout, TASK_MODALITIES, iter_candidates, read_queries
from ..data.mbeir_instructions import Instructions, load_instructions
from ..data.pairs import read_pairs
from ..errors import InputError
from ..items import Item

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One contrastive example: a query (with its instruction), its positive, optional hard negative."""

    query: Item
    positive: Item
    instruction: str | None = None
    hard_negative: Item | None = None
    distill: tuple | None = None  # distillation: (the query's k candidates, their teacher logits)
    labelled: bool = True  # False: no known positive (``positive`` stands in); InfoNCE skips the query


class PairDataset:
    """Stage 1: SimCSE-style text pairs, raw text (the official stage-1 prompt does not format)."""

    def __init__(self, path: str | os.PathLike, *, use_hard_negatives: bool = False):
        self.pairs = read_pairs(path)
        self.use_hard_negatives = use_hard_negatives
        if use_hard_negatives and any(p.hard_negative is None for p in self.pairs):
            missing = next(p for p in self.pairs if p.hard_negative is None)
            raise InputError("use_hard_negatives is on but this pair has none", file=str(path), line=missing.line,
                             field="hard_neg")

    def __len__(self) -> int:
        return len(self.pairs)

    def example(self, index: int, epoch: int = 0) -> Example:
        pair = self.pairs[index]
        negative = Item(text=pair.hard_negative) if self.use_hard_negatives else None
        return Example(Item(text=pair.query), Item(text=pair.positive), None, negative)


class MBEIRTrainDataset:
    """Stage 2: M-BEIR training queries, each with a random positive and a random instruction.

    As the released code: the instruction is drawn from the tsv row keyed by the query's dataset,
    the query's modality and the drawn positive's modality; the texts of query and candidate come
    from the fields present (``query_txt`` / ``txt``, missing read as ""), images from the paths.
    """

    def __init__(self, root: str | os.PathLike, *, queries: str | os.PathLike | None = None,
                 pool: str | os.PathLike | None = None, seed: int = 0, use_hard_negatives: bool = False,
                 unlabelled_ok: bool = False):
        self.root = Path(root)
        layout = MBEIRLayout(root)
        self.query_files = [Path(queries)] if queries else default_query_files(self.root)
        self.pool_file = Path(pool) if pool else layout.global_pool("train")
        self.instructions = load_instructions(root)
        self.seed = seed
        self.use_hard_negatives = use_hard_negatives
        # Queries without positives (distillation: the KL term alone learns from them) are kept
        # for DistillDataset; example() never draws from them.
        self.queries, self._query_files = read_query_files(self.query_files, unlabelled_ok=unlabelled_ok)
        needed = {did for q in self.queries for did in q.positives + (q.negatives if use_hard_negatives else [])}
        self.candidates = {c.did: c for c in iter_candidates(self.pool_file) if c.did in needed}
        self._check()

    def _check(self) -> None:
        """Every problem that would stop training, found before the first step."""
        problems = []
        for query, path in zip(self.queries, self._query_files):
            problems += query_problems(query, path, self.candidates, self.pool_file, self.root)
            if self.use_hard_negatives and query.positives and not [d for d in query.negatives if d in self.candidates]:
                problems.append(InputError("no hard negative in the pool", field="neg_cand_list",
                                           file=str(path), line=query.line, item=query.qid))
        problems += candidate_problems(self.candidates.values(), self.pool_file, self.root)
        raise_problems(problems, "the training data")
        if not self.queries:
            raise InputError("no training queries", file=", ".join(map(str, self.query_files)))

    def __len__(self) -> int:
        return len(self.queries)

    def example(self, index: int, epoch: int = 0) -> Example:
        rng = random.Random(f"{self.seed}/{epoch}/{index}")
        query = self.queries[index]
        if not query.positives:
            raise ValueError(f"query {query.qid} has no positive: only distillation learns from it")
        positive = self.candidates[rng.choice(query.positives)]
        instruction = random_instruction(self.instructions, query.dataset_id, query.modality, positive.modality, rng)
        negative = None
        if self.use_hard_negatives:
            negative = self.candidates[rng.choice([d for d in query.negatives if d in self.candidates])]
        return Example(mbeir_item(self.root, query.qid, query.text, query.image),
                       mbeir_item(self.root, positive.did, positive.text, positive.image), instruction,
                       None if negative is None else mbeir_item(self.root, negative.did, negative.text, negative.image))


def mbeir_item(root: Path, item_id: str, text: str | None, image: str | None) -> Item:
    """A query or candidate as training reads it: the fields present decide, as in the released
    data code (a missing text reads as ""), images relative to the M-BEIR root."""
    return Item(text=text or None, images=[root / image] if image else [], id=item_id)


def read_query_files(files: list[Path], *, unlabelled_ok: bool = False) -> tuple[list, list[Path]]:
    """Every query of ``files`` in order, and the file each one came from (``unlabelled_ok``: as
    :func:`lamra.data.mbeir.read_queries`)."""
    sources = [(query, path) for path in files for query in read_queries(path, unlabelled_ok=unlabelled_ok)]
    return [query for query, _ in sources], [path for _, path in sources]


def query_problems(query, path: Path, candidates: dict, pool_file: Path, root: Path) -> list[InputError]:
    """What stops a training query: unknown task, no positive or one missing from the pool, no
    text and no image, a missing image file (each located by file, line, item and field)."""
    where = dict(file=str(path), line=query.line, item=query.qid)
    problems = []
    if query.task_id not in TASK_MODALITIES:
        problems.append(InputError(f"unknown task id {query.task_id!r}", field="task_id", **where))
    for did in query.positives:
        if did not in candidates:
            problems.append(InputError(f"positive {did!r} is not in {pool_file}", field="pos_cand_list", **where))
    if not (query.text or "").strip() and not query.image:
        problems.append(InputError("no text and no image", field="query_txt", **where))
    if query.image and not (root / query.image).is_file():
        problems.append(InputError(f"image not found: {root / query.image}", field="query_img_path", **where))
    return problems


def candidate_problems(candidates, pool_file: Path, root: Path) -> list[InputError]:
    """Candidates with no text and no image, or a missing image file."""
    problems = []
    for candidate in candidates:
        where = dict(file=str(pool_file), line=candidate.line, item=candidate.did)
        if not (candidate.text or "").strip() and not candidate.image:
            problems.append(InputError("no text and no image", field="txt", **where))
        if candidate.image and not (root / candidate.image).is_file():
            problems.append(InputError(f"image not found: {root / candidate.image}", field="img_path", **where))
    return problems


def raise_problems(problems: list[InputError], what: str) -> None:
    """One error listing the first 20 problems (and how many more), if there are any."""
    if problems:
        listed = "\n".join(str(p) for p in problems[:20])
        more = f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise InputError(f"{len(problems)} problem(s) in {what}:\n{listed}{more}")


def random_instruction(instructions: Instructions, dataset_id: int, query_modality: str, cand_modality: str,
                       rng: random.Random) -> str:
    """A random instruction of the tsv row, raw (it is formatted together with the query text)."""
    prompts = instructions.prompts.get((int(dataset_id), query_modality, cand_modality))
    if not prompts:
        raise InputError(f"no instruction for '{dataset_id}, {query_modality}, {cand_modality}'",
                         file=instructions.source)
    return rng.choice(prompts)


def default_query_files(root: Path) -> list[Path]:
    """M-BEIR's union training queries, else every file under query/train."""
    union = root / "query" / "union_train" / "mbeir_union_up_train.jsonl"
    if union.is_file():
        return [union]
    files = sorted((root / "query" / "train").glob("*.jsonl"))
    if not files:
        raise InputError(f"no training queries under {root}/query (union_train or train)", file=str(root))
    return files

