"""Distilling a reranker into the retriever: a KL term beside InfoNCE (U-MARVEL's last stage).

The teacher is the fused score U-MARVEL distils (models/qwen2_vl_finetune_with_distillrerank.py
and eval/rerank/get_mbeir_base_rerank_pointwise_score_local.py): ``S_ret + w * P(Yes)`` over the
query's top-k, halved, then over the temperature (U-MARVEL divides teacher and student by the
same temperature, 0.05 at the start). The student is the retriever's cosine of the query with
the same k candidates over its temperature. The term is KL(teacher || student) per query,
averaged over the queries (``F.kl_div(..., reduction="batchmean")`` in U-MARVEL); here with
log-softmax on both sides instead of ``log(softmax + 1e-8)``. docs/training.md says which
values U-MARVEL used and which differ.

This module also gives training its examples: :class:`DistillDataset` (the scored queries of a
teacher-scores file, each with its k candidates and their teacher logits; with
``with_positive``, the example's positive first, then the top-k without it, as
U-MARVEL's ``has_distill_with_pos`` puts the positive in the list).
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import replace
from pathlib import Path

import torch

from ..training.args import DEFAULT_TEMPERATURE

logger = logging.getLogger(__name__)


def teacher_logits(retrieval, rerank, *, retrieval_weight: float = 1.0, rerank_weight: float = 1.0,
                   temperature: float = DEFAULT_TEMPERATURE):
    """U-MARVEL's teacher: ``(retrieval_weight * S_ret + rerank_weight * P(Yes)) / 2 / temperature``."""
    return (retrieval_weight * retrieval + rerank_weight * rerank) / 2 / temperature


def distill_kl(student: torch.Tensor, teacher: torch.Tensor, outside: torch.Tensor | None = None) -> torch.Tensor:
    """KL(softmax(teacher) || softmax(student)) per row (B, K), averaged over the rows.

    ``outside`` (B, M): the student's logits of candidates the teacher did not score (its
    probability there is 0; -inf leaves a candidate out). The student's softmax then runs over
    the k listed and the M outside, and the KL term also pushes the query away from the latter.
    """
    log_p = torch.log_softmax(teacher.float(), dim=-1)
    student = student.float()
    if outside is None:
        log_q = torch.log_softmax(student, dim=-1)
    else:
        log_q = student - torch.logsumexp(torch.cat([student, outside.float()], dim=-1), dim=-1, keepdim=True)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def distill_loss(embeddings: dict, teacher: torch.Tensor, *, weight: float, temperature: float = DEFAULT_TEMPERATURE,
                 gather: bool = True, labelled: torch.Tensor | None = None, batch_negatives: bool = False) -> dict:
    """InfoNCE (as :func:`info_nce`) plus ``weight`` times the KL term; returns the three values.

    ``embeddings``: unit vectors by side, "query" (B, D), "positive" (B, D), optional
    "hard_negative" (B, D) and "distill" (B * K, D: query i's k candidates in rows i*K..i*K+K-1);
    ``teacher``: (B, K) teacher logits. With ``gather`` and a process group, queries, candidates
    and teacher logits of every rank join one global batch, as InfoNCE's do. ``labelled`` (B,)
    bool: InfoNCE over those rows only (:func:`~.loss.info_nce`); the KL term takes every row.

    ``batch_negatives``: the student's distribution of query i also holds the other queries'
    positives (stand-ins for queries without one), at teacher probability 0, as InfoNCE's
    in-batch negatives; its own positive is left out (it is in its list, or unscored). Without
    them, U-MARVEL's term only orders a query's k candidates among themselves: a query without a
    positive, learnt from by the KL term alone, is then never pushed away from the rest of the
    pool. Hard negatives stay out (a query's own may be in its list). A candidate that is in a
    query's list and another query's positive counts in both places, as a positive two queries
    share does in InfoNCE.
    """
    from .loss import gather_batch, info_nce

    queries, positives, hard_negatives = embeddings["query"], embeddings["positive"], embeddings.get("hard_negative")
    candidates, teacher = embeddings["distill"], teacher.to(queries.device)
    if gather:  # once, for both terms
        from ..distributed import all_gather_with_grad

        queries, positives, hard_negatives, labelled = gather_batch(queries, positives, hard_negatives, labelled)
        candidates, teacher = all_gather_with_grad(candidates), all_gather_with_grad(teacher)
    nce = info_nce(queries, positives, hard_negatives, temperature=temperature, gather=False, labelled=labelled)
    # Computed even at weight 0: every side then has a gradient (zero), as gradient caching expects.
    k = teacher.shape[1]
    student = torch.einsum("bd,bkd->bk", queries.float(), candidates.float().view(queries.shape[0], k, -1))
    outside = None
    if batch_negatives:
        own = torch.eye(queries.shape[0], dtype=torch.bool, device=queries.device)
        outside = (queries.float() @ positives.float().T).masked_fill(own, float("-inf")) / temperature
    kl = distill_kl(student / temperature, teacher, outside)
    return {"loss": nce + weight * kl, "info_nce": nce.detach(), "kl": kl.detach()}


class DistillDataset:
    """The scored queries of a teacher-scores file, each an :class:`Example` of ``base`` (an
    :class:`~lamra.retriever.data.MBEIRTrainDataset`: positive, instruction, hard negative as
    today) with ``distill``: its first ``top_k`` candidates and their teacher logits.

    Every record is cut to the same k (the smallest list, at most ``top_k``) so a batch is one
    (B, K) block. ``with_positive``: the list is the positive the example drew (scored in the
    file's ``positive_scores``, retrieved or not), then the top-k without it, cut to k (other
    positives stay, with their scores, as in U-MARVEL's list), so the KL term also ranks the
    positive against the hard negatives. The file is refused if another retriever or reranker
    made it (``retriever`` / ``reranker``: fingerprints to compare, see
    :func:`lamra.training.distill_data.check_teacher_models`). ``candidates`` false gives the
    same examples without them: the same recipe without the KL term, at InfoNCE's cost.

    A scored query without positives (``pos_cand_list: []``: a query log without labels) is
    learnt from by the KL term alone: its example is marked unlabelled, its top candidate stands
    in as the positive (a negative for the other queries; InfoNCE skips the query's own row)
    and its list is the top-k. Without the KL term (``candidates`` false) such queries teach
    nothing and are left out. ``unlabelled_min_p`` keeps only those whose best P(Yes) in their
    top-k reaches it: where the reranker likes none of the list, its right answer is most likely
    not there, and the KL term would pull the query towards near misses.
    """

    def __init__(self, base, scores: str | os.PathLike, *, top_k: int = 50, retrieval_weight: float = 1.0,
                 rerank_weight: float = 1.0, temperature: float = DEFAULT_TEMPERATURE,
                 retriever: dict | None = None, reranker: dict | None = None, candidates: bool = True,
                 with_positive: bool = False, unlabelled_min_p: float = 0.0):
        from ..data.mbeir import iter_candidates
        from ..errors import InputError
        from ..training.distill_data import check_teacher_models, read_teacher_scores
        from .data import candidate_problems, mbeir_item, raise_problems

        self.base, self.path, self.candidates, self.with_positive = base, Path(scores), candidates, with_positive
        header, records = read_teacher_scores(self.path)
        check_teacher_models(header, self.path, retriever=retriever, reranker=reranker)
        row_of = {query.qid: row for row, query in enumerate(base.queries)}
        for record in records:
            if record.qid not in row_of:
                raise InputError("a scored query that is not among the training queries", file=str(self.path),
                                 line=record.line, item=record.qid, field="qid")
            if with_positive and record.positive_scores is None:
                raise InputError("distilling with the positive needs its scores, and this line has none: mine and "
                                 "score again (`lamra mine`, `lamra score-teacher` record them)", file=str(self.path),
                                 line=record.line, item=record.qid, field="positive_scores")
        def learnt_from(record) -> bool:  # without the KL term nothing is learnt from a query without positives
            if base.queries[row_of[record.qid]].positives:
                return True
            return candidates and record.best_p_yes(top_k) >= unlabelled_min_p

        kept = [r for r in records if learnt_from(r)]
        why = "no KL term" if not candidates else f"their best P(Yes) below {unlabelled_min_p}"
        if len(kept) < len(records):
            logger.info("%s: %d scored queries without a positive left out (%s)", self.path, len(records) - len(kept),
                        why)
        if not kept:
            raise InputError(f"no scored query is left to learn from: none has a positive ({why})",
                             file=str(self.path), field="pos_cand_list")
        records = kept
        self.k = min(top_k, *(len(r.candidates) for r in records))
        if self.k < 2:
            raise InputError(f"distillation needs at least 2 candidates per query, the file has {self.k}",
                             file=str(self.path), field="candidates")
        if self.k < top_k:
            logger.warning("%s: distilling over the top %d (the shortest list), not %d", self.path, self.k, top_k)
        self.rows = [row_of[r.qid] for r in records]
        self.records = records
        self.unlabelled = sum(not base.queries[row].positives for row in self.rows)  # learnt from by the KL term alone
        needed = {did for r in records for did, _, _ in r.candidates[: self.k]}
        pool = {c.did: c for c in iter_candidates(base.pool_file) if c.did in needed}
        missing = [(r, did) for r in records for did, _, _ in r.candidates[: self.k] if did not in pool]
        if missing:
            record, did = missing[0]
            raise InputError(f"candidate {did!r} is not in {base.pool_file} ({len(missing)} missing)",
                             file=str(self.path), line=record.line, item=record.qid, field="candidates")
        raise_problems(candidate_problems(pool.values(), base.pool_file, base.root), "the distilled candidates")
        self._items = {did: mbeir_item(base.root, did, c.text, c.image) for did, c in pool.items()}
        self._weights = dict(retrieval_weight=retrieval_weight, rerank_weight=rerank_weight, temperature=temperature)
        self._teacher = [self._logits(r.candidates[: self.k]) for r in records]

    def __len__(self) -> int:
        return len(self.records)

    def _logits(self, scored) -> tuple[float, ...]:
        return tuple(float(v) for v in teacher_logits(torch.tensor([ret for _, ret, _ in scored]),
                                                      torch.tensor([p for _, _, p in scored]), **self._weights))

    def example(self, index: int, epoch: int = 0):
        record = self.records[index]
        if not self.base.queries[self.rows[index]].positives:
            return self._unlabelled_example(index, epoch)
        example = self.base.example(self.rows[index], epoch)
        if not self.candidates:
            return example
        if not self.with_positive:
            candidates = tuple(self._items[did] for did, _, _ in record.candidates[: self.k])
            return replace(example, distill=(candidates, self._teacher[index]))
        # The positive this example drew, with its own scores, then the top-k without it.
        drawn = example.positive.id
        others = [scored for scored in record.candidates if scored[0] != drawn][: self.k - 1]
        positive = next(scored for scored in record.positive_scores if scored[0] == drawn)
        candidates = (example.positive, *(self._items[did] for did, _, _ in others))
        return replace(example, distill=(candidates, self._logits([positive, *others])))

    def _unlabelled_example(self, index: int, epoch: int):
        """A query without positives: its top candidate stands in as the positive (and the next as
        the hard negative, when the batch has them), the instruction drawn as for a positive of the
        task's candidate modality (a union-pool top candidate may have another), the list its top-k."""
        from ..data.mbeir import TASK_MODALITIES
        from .data import Example, mbeir_item, random_instruction

        record, row = self.records[index], self.rows[index]
        query = self.base.queries[row]
        rng = random.Random(f"{self.base.seed}/{epoch}/{row}")
        dids = [did for did, _, _ in record.candidates[: self.k]]
        instruction = random_instruction(self.base.instructions, query.dataset_id, query.modality,
                                         TASK_MODALITIES[query.task_id][1], rng)
        return Example(mbeir_item(self.base.root, query.qid, query.text, query.image), self._items[dids[0]],
                       instruction, self._items[dids[1]] if self.base.use_hard_negatives else None,
                       distill=(tuple(self._items[did] for did in dids), self._teacher[index]), labelled=False)
