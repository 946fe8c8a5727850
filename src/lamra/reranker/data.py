"""LamRA-Rank training examples: per training query, the three samples of docs/format.md#reranker-prompts.

For each query (as the released ``dataset/datasets_mbeir_rerank.py``):

- one positive pointwise pair (query, a random positive) answered "Yes";
- one negative pointwise pair (query, a random negative) answered "No";
- one listwise list of M negatives, M uniform in [1, ``max_negatives``] (4 in the released
  code: 2 to 5 candidates in all), with the positive at a random slot; answer "Ans: (slot)".

Negatives come from the mined top-k minus the query's positives (:mod:`.mining`); a positive is
never drawn as a negative. (The released code falls back to the whole top-k, positives
included, when fewer than M negatives remain; here M is then cut to the negatives there are.)

Every random choice is drawn from a generator seeded by (seed, epoch, index), as in
:mod:`lamra.retriever.data`: an example is the same in a straight run and a resumed one, on any rank.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

from ..data.mbeir import MBEIRLayout, iter_candidates
from ..data.mbeir_instructions import INSTRUCTION_CHOICES, load_instructions
from ..errors import InputError
from ..items import Item
from ..retriever.data import (
    candidate_problems,
    default_query_files,
    mbeir_item,
    query_problems,
    raise_problems,
    random_instruction,
    read_query_files,
)
from .mining import read_mined

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RerankExample:
    """The three training samples of one query. Texts are raw (the collator formats and cuts them)."""

    query: Item
    instruction: str          # raw, as in the tsv (the collator formats it with the query text)
    positive: Item
    negative: Item            # of the negative pointwise pair
    candidates: tuple         # the listwise list: the negatives with the positive at ``answer - 1``
    answer: int               # 1-based slot of the positive in ``candidates``


class RerankTrainDataset:
    """M-BEIR training queries with their mined negatives, as :class:`RerankExample`."""

    def __init__(self, root: str | os.PathLike, mined: str | os.PathLike, *, queries: str | os.PathLike | None = None,
                 pool: str | os.PathLike | None = None, seed: int = 0, max_negatives: int = 4,
                 instructions: str = "random"):
        if max_negatives < 1:
            raise InputError("max_negatives must be at least 1", field="max_negatives")
        if instructions not in INSTRUCTION_CHOICES:
            raise InputError(f"instructions must be 'random' or 'first', got {instructions!r}", field="instructions")
        self.root = Path(root)
        self.mined_file = Path(mined)
        self.query_files = [Path(queries)] if queries else default_query_files(self.root)
        self.pool_file = Path(pool) if pool else MBEIRLayout(root).global_pool("train")
        self.instructions = load_instructions(root)
        self.instruction_choice = instructions
        self.seed, self.max_negatives = seed, max_negatives
        self.queries, self._query_files = read_query_files(self.query_files)
        mined = read_mined(self.mined_file)
        self._mined_lines = {qid: entry.line for qid, entry in mined.items()}
        # Negatives: the mined ranking minus the positives of the query file (the authority).
        self.negatives = {}
        for query in self.queries:
            if query.qid in mined:
                positives = set(query.positives)
                self.negatives[query.qid] = [did for did, _ in mined[query.qid].top if did not in positives]
        needed = {did for q in self.queries for did in q.positives} | {d for n in self.negatives.values() for d in n}
        if not self.pool_file.is_file():
            raise InputError("candidate pool not found", file=str(self.pool_file))
        self.candidates = {c.did: c for c in iter_candidates(self.pool_file) if c.did in needed}
        self._check()

    def _check(self) -> None:
        """Every problem that would stop training, found before the model is loaded."""
        problems = []
        for query, path in zip(self.queries, self._query_files):
            problems += query_problems(query, path, self.candidates, self.pool_file, self.root)
            where = dict(file=str(path), line=query.line, item=query.qid)
            if query.qid not in self.negatives:
                problems.append(InputError(f"not in the mined file {self.mined_file} (mine the same queries)",
                                           field="qid", **where))
                continue
            mined_where = dict(file=str(self.mined_file), line=self._mined_lines[query.qid], item=query.qid)
            if not self.negatives[query.qid]:
                problems.append(InputError("no negative: every mined candidate is a positive (mine with a larger k)",
                                           field="top", **mined_where))
            for did in self.negatives[query.qid]:
                if did not in self.candidates:
                    problems.append(InputError(f"mined candidate {did!r} is not in {self.pool_file}", field="top",
                                               **mined_where))
                    break
        problems += candidate_problems(self.candidates.values(), self.pool_file, self.root)
        raise_problems(problems, "the reranker's training data")
        if not self.queries:
            raise InputError("no training queries", file=", ".join(map(str, self.query_files)))

    def __len__(self) -> int:
        return len(self.queries)

    def example(self, index: int, epoch: int = 0) -> RerankExample:
        rng = random.Random(f"{self.seed}/{epoch}/{index}")
        query = self.queries[index]
        negatives = self.negatives[query.qid]
        count = min(rng.randint(1, self.max_negatives), len(negatives))
        positive = self.candidates[rng.choice(query.positives)]
        if self.instruction_choice == "random":
            instruction = random_instruction(self.instructions, query.dataset_id, query.modality, positive.modality,
                                             rng)
        else:
            instruction = self.instructions.for_query(query)
        negative = self.candidates[rng.choice(negatives)]
        listed = [self.candidates[did] for did in rng.sample(negatives, count)]
        answer = rng.randint(1, count + 1)
        listed.insert(answer - 1, positive)
        return RerankExample(mbeir_item(self.root, query.qid, query.text, query.image), instruction,
                             self._candidate(positive), self._candidate(negative),
                             tuple(self._candidate(c) for c in listed), answer)

    def _candidate(self, candidate) -> Item:
        return mbeir_item(self.root, candidate.did, candidate.text, candidate.image)
