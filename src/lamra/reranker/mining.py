"""Hard-negative mining for LamRA-Rank: every training query's top-k in its task's pool.

The released code (train/mbeir_get_rerank_train_data.py) embeds each task's training queries
with LamRA-Ret, ranks that task's training pool by cosine and keeps the top 100 and the
positives; rerank training then draws its negatives from the top 100 minus the positives.

Here the same, through the index layer (:meth:`lamra.index.Index.build` / ``search``):

- queries: the training query files (``query/union_train`` or ``query/train/*``), each with
  its instruction: the query's own (an ``instruction`` field in its line) when the data gives
  one, else the first of its task (``instructions="first"``) or the released code's seeded
  random choice (``"random"``);
- pools: M-BEIR has one union training pool; a task's pool (``pools="task"``, the default) is
  the part of it with the task's dataset (the did prefix) and candidate modality, plus the
  task's positives. ``pools="union"`` ranks every query against the whole pool;
- output: one json line per query, in query-file order (:class:`MinedQuery`)::

    {"qid": "9:12", "task": "mscoco_task0", "instruction": "...", "positives": ["9:3"],
     "top": [["9:3", 0.8125], ["9:77", 0.6406], ...], "negatives": ["9:77", ...],
     "positive_scores": [["9:3", 0.8125]]}

  ``top`` is the top-k with cosine scores, best first (positives included, as retrieved);
  ``negatives`` is ``top`` without the positives, in rank order. A positive is never listed
  as a negative. ``positive_scores``: every positive's cosine, retrieved or not (reranker
  distillation puts the positive in the list it distils, :mod:`lamra.retriever.distill`).

Resumable: the pool and the queries are encoded by ``Index.build`` in checkpointed shards
under ``OUT.work/``, and each task's results are written there atomically when its search
is done; a killed run, started again with the same arguments, keeps what was finished. The
output file appears (atomically) when every task is done, and the work folder is removed.
Under ``torchrun`` every rank encodes its share of the shards and rank 0 searches and writes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import distributed
from ..data.mbeir import (
    DATASET_BY_ID,
    TASK_MODALITIES,
    MBEIRCandidate,
    MBEIRLayout,
    MBEIRQuery,
    declared_tasks,
    iter_candidates,
)
from ..data.mbeir_instructions import INSTRUCTION_CHOICES, load_instructions
from ..digests import file_sha256, strings_sha256
from ..embeddings import atomic_write_bytes
from ..errors import InputError
from ..retriever.data import default_query_files, read_query_files

logger = logging.getLogger(__name__)

MINED_FORMAT = "lamra-mined-1"
POOL_CHOICES = ("task", "union")
DEFAULT_K = 100
PLAN_FILE = "mining.json"


@dataclass
class MinedQuery:
    """One line of a mined file."""

    qid: str
    positives: list[str]
    top: list[tuple[str, float]]
    negatives: list[str]
    task: str | None = None
    instruction: str | None = None
    line: int | None = None
    positive_scores: list[tuple[str, float]] | None = None  # every positive's cosine (older files: none)

    def to_record(self) -> dict:
        record = {"qid": self.qid, "task": self.task, "instruction": self.instruction, "positives": self.positives,
                  "top": [[did, round(float(score), 6)] for did, score in self.top], "negatives": self.negatives}
        if self.positive_scores is not None:
            record["positive_scores"] = [[did, round(float(score), 6)] for did, score in self.positive_scores]
        return record


@dataclass
class MiningSummary:
    out: Path
    queries: int
    tasks: dict[str, dict] = field(default_factory=dict)  # task -> {"queries", "pool", "recall@1", ...}
    resumed: bool = False


def mined_query(qid: str, positives: Sequence[str], ranked: Sequence[str], scores: Sequence[float], *,
                task: str | None = None, instruction: str | None = None,
                positive_scores: Sequence[float] | None = None) -> MinedQuery:
    """The record of one query: its top-k as retrieved, the negatives (top-k minus positives) and,
    when given, every positive's cosine (``positive_scores``, in the order of ``positives``)."""
    wanted = set(positives)
    top = [(did, float(score)) for did, score in zip(ranked, scores)]
    scored = None if positive_scores is None else [(d, float(s)) for d, s in zip(positives, positive_scores)]
    return MinedQuery(qid, list(positives), top, [did for did, _ in top if did not in wanted], task, instruction,
                      positive_scores=scored)


def read_mined(path: str | os.PathLike) -> dict[str, MinedQuery]:
    """``{qid: MinedQuery}`` of a mined file; a bad line raises an InputError naming it."""
    from ..data.jsonl import iter_jsonl

    path = Path(path)
    if not path.is_file():
        raise InputError("mined file not found (make it with `lamra mine`)", file=str(path))
    out: dict[str, MinedQuery] = {}
    for line, record in iter_jsonl(path):
        if record is None:
            continue
        where = dict(file=str(path), line=line)
        if not isinstance(record, dict):
            raise InputError("expected a json object", **where)
        qid = record.get("qid")
        if not isinstance(qid, str) or not qid:
            raise InputError(f"qid must be a non-empty string, got {qid!r}", field="qid", **where)
        where["item"] = qid
        if qid in out:
            raise InputError(f"duplicate qid (first on line {out[qid].line})", field="qid", **where)
        positives, top, negatives = record.get("positives"), record.get("top"), record.get("negatives")
        if not isinstance(positives, list) or not all(isinstance(d, str) for d in positives):
            raise InputError("positives must be a list of did strings", field="positives", **where)
        if not isinstance(top, list) or not all(isinstance(e, list) and len(e) == 2 and isinstance(e[0], str)
                                                and isinstance(e[1], (int, float)) for e in top):
            raise InputError("top must be a list of [did, score] pairs", field="top", **where)
        if not isinstance(negatives, list) or not all(isinstance(d, str) for d in negatives):
            raise InputError("negatives must be a list of did strings", field="negatives", **where)
        if set(negatives) & set(positives):
            raise InputError(f"lists positive(s) {sorted(set(negatives) & set(positives))} as negatives",
                             field="negatives", **where)
        positive_scores = record.get("positive_scores")
        if positive_scores is not None and (
                not isinstance(positive_scores, list)
                or not all(isinstance(e, list) and len(e) == 2 and isinstance(e[1], (int, float))
                           for e in positive_scores)
                or sorted(e[0] for e in positive_scores) != sorted(positives)):
            raise InputError("positive_scores must be a [did, score] pair for each positive", field="positive_scores",
                             **where)
        out[qid] = MinedQuery(qid, positives, [(d, float(s)) for d, s in top], negatives, record.get("task"),
                              record.get("instruction"), line,
                              None if positive_scores is None else [(d, float(s)) for d, s in positive_scores])
    return out


# -- which queries and pools -------------------------------------------------------------------

def task_name(dataset_id: int, task_id: int, declared: dict[int, str] | None = None) -> str:
    """M-BEIR's name of a task (``mscoco_task0``); ``declared`` maps the dataset ids a
    ``tasks.json`` declares to their names (the demo data's ``clipart``, ...)."""
    dataset = (declared or {}).get(int(dataset_id)) or DATASET_BY_ID.get(int(dataset_id), f"dataset{dataset_id}")
    return f"{dataset}_task{task_id}"


@dataclass
class _Plan:
    """Queries, their instructions and tasks, the pool, and each task's rows of the pool."""

    queries: list[MBEIRQuery]
    query_files: list[Path]              # the file of each query
    pool_file: Path
    instructions: list[str]
    tasks: dict[str, list[int]]          # task -> rows of ``queries``
    candidates: list[MBEIRCandidate]     # the candidates to encode, in pool-file order
    task_pools: dict[str, list[int]]     # task -> rows of ``candidates``


def _read_queries(files: list[Path]) -> tuple[list[MBEIRQuery], list[Path]]:
    # Queries without positives are mined too: distillation learns from their top-k alone.
    queries, sources = read_query_files(files, unlabelled_ok=True)
    seen: dict[str, Path] = {}
    for query, path in zip(queries, sources):
        if query.qid in seen:
            raise InputError(f"qid also in {seen[query.qid]}", file=str(path), line=query.line, item=query.qid,
                             field="qid")
        seen[query.qid] = path
    if not queries:
        raise InputError("no training queries", file=", ".join(map(str, files)))
    return queries, sources


def _instructions(queries: list[MBEIRQuery], sources: list[Path], root: Path, choice: str, seed: int,
                  modality_of: dict[str, str]) -> list[str]:
    from ..qwen2vl.prompts import format_text

    table = load_instructions(root)
    out = []
    for query, path in zip(queries, sources):
        own = query.extra.get("instruction")
        if own is not None:
            if not isinstance(own, str) or not own.strip():
                raise InputError("instruction must be a non-empty string", file=str(path), line=query.line,
                                 item=query.qid, field="instruction")
            out.append(format_text(own))
        elif choice == "random":
            out.append(table.random_for_query(query, seed, modality_of, file=str(path)))
        else:
            out.append(table.for_query(query))
    return out


def plan_mining(root: str | os.PathLike, *, queries: Sequence[str | os.PathLike] | None = None,
                pool: str | os.PathLike | None = None, pools: str = "task", instructions: str = "first",
                seed: int = 0) -> _Plan:
    """Read and check everything before a model is loaded: bad lines, unknown tasks, positives
    missing from the pool each raise an InputError naming the file, line and field."""
    if pools not in POOL_CHOICES:
        raise InputError(f"pools must be one of {POOL_CHOICES}, got {pools!r}", field="pools")
    if instructions not in INSTRUCTION_CHOICES:
        raise InputError(f"instructions must be one of {INSTRUCTION_CHOICES}, got {instructions!r}",
                         field="instructions")
    root = Path(root)
    files = [Path(q) for q in queries] if queries else default_query_files(root)
    pool_file = Path(pool) if pool else MBEIRLayout(root).global_pool("train")
    if not pool_file.is_file():
        raise InputError("candidate pool not found", file=str(pool_file))
    query_list, sources = _read_queries(files)
    everything: list[MBEIRCandidate] = []
    seen: dict[str, int] = {}
    for candidate in iter_candidates(pool_file):
        if candidate.did in seen:
            raise InputError(f"duplicate did (first on line {seen[candidate.did]})", file=str(pool_file),
                             line=candidate.line, item=candidate.did, field="did")
        seen[candidate.did] = candidate.line
        everything.append(candidate)
    position = {c.did: n for n, c in enumerate(everything)}
    declared = {task.declared[0]: task.dataset for task in declared_tasks(root) if task.declared}
    tasks: dict[str, list[int]] = {}
    for row, (query, path) in enumerate(zip(query_list, sources)):
        if query.task_id not in TASK_MODALITIES:
            raise InputError(f"unknown task id {query.task_id!r}", file=str(path), line=query.line, item=query.qid,
                             field="task_id")
        for did in query.positives:
            if did not in position:
                raise InputError(f"positive {did!r} is not in {pool_file}", file=str(path), line=query.line,
                                 item=query.qid, field="pos_cand_list")
        tasks.setdefault(task_name(query.dataset_id, query.task_id, declared), []).append(row)
    modality_of = {c.did: c.modality for c in everything}
    chosen = _instructions(query_list, sources, root, instructions, seed, modality_of)

    if pools == "union":
        task_rows = {name: list(range(len(everything))) for name in tasks}
    else:
        task_rows = {}
        for name, rows in tasks.items():
            first = query_list[rows[0]]
            wanted_modality = TASK_MODALITIES[first.task_id][1]
            members = {n for n, c in enumerate(everything)
                       if c.dataset_id == first.dataset_id and c.modality == wanted_modality}
            members.update(position[did] for row in rows for did in query_list[row].positives)
            task_rows[name] = sorted(members)
    used = sorted({n for rows in task_rows.values() for n in rows})
    renumber = {old: new for new, old in enumerate(used)}
    return _Plan(query_list, sources, pool_file, chosen, tasks, [everything[n] for n in used],
                 {name: [renumber[n] for n in rows] for name, rows in task_rows.items()})


# -- mining ------------------------------------------------------------------------------------

def work_folder(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".work")


def mine(retriever, root: str | os.PathLike, out: str | os.PathLike, *, k: int = DEFAULT_K,
         queries: Sequence[str | os.PathLike] | None = None, pool: str | os.PathLike | None = None,
         pools: str = "task", instructions: str = "first", seed: int = 0, shard_size: int = 1024,
         batch_size: int | None = None, show_progress: bool = True, overwrite: bool = False,
         plan: _Plan | None = None, pool_backend: dict | None = None) -> MiningSummary:
    """Mine the top ``k`` of every training query of the M-BEIR root ``root`` into ``out`` (jsonl).

    See the module docstring for the queries, pools and output; ``retriever`` is a
    :class:`~lamra.retriever.model.Retriever` (or anything with ``encode`` and ``fingerprint``).
    Run again with the same arguments after a kill, it resumes. ``plan``: what
    :func:`plan_mining` returned for the same arguments (saves reading the data twice).
    ``pool_backend``: ``Index.build`` options for the pool (``{"backend": "milvus", "milvus_uri":
    ...}``): each task then searches the pool in Milvus with a filter that selects its part of it.
    """
    from ..index import Index

    if k < 1:
        raise InputError(f"k must be at least 1, got {k}", field="k")
    out = Path(out)
    work = work_folder(out)
    if out.exists() and not work.exists():
        if not overwrite:
            raise InputError("exists; delete it or pass overwrite=True (--force) to mine again", file=str(out))
        if distributed.is_main_process():
            out.unlink()
    if plan is None:
        plan = plan_mining(root, queries=queries, pool=pool, pools=pools, instructions=instructions, seed=seed)
    record = _plan_record(retriever, plan, k=k, pools=pools, instructions=instructions, seed=seed, root=root)
    root = Path(root)
    with distributed.process_group() as rank:
        resumed = check_interrupted_run(work, record)  # every rank: a mismatch stops all of them, none waits
        distributed.barrier()
        if rank == 0 and not resumed:
            work.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(work / PLAN_FILE, json.dumps(record, indent=2, default=str).encode())
        distributed.barrier()
        options = {"shard_size": shard_size, "show_progress": show_progress and rank == 0}
        if batch_size is not None:
            options["batch_size"] = batch_size
        pool_options = {"dtype": "float16", **options}
        if pool_backend:  # (Milvus keeps float32: an embedded database indexes float16 only with FLAT)
            pool_options.update(pool_backend, dtype="float32", source=str(plan.pool_file))
        pool_index = _build(Index, [c.item(root) for c in plan.candidates], retriever, work / "pool",
                            lines={c.did: c.line for c in plan.candidates}, file=plan.pool_file, **pool_options)
        query_index = _build(Index, [q.item(root) for q in plan.queries], retriever, work / "queries",
                             lines={q.qid: q.line for q in plan.queries}, file=None, sources=plan,
                             instruction=plan.instructions, dtype="float32", **options)
        summary = MiningSummary(out, len(plan.queries), resumed=resumed)
        if rank == 0:
            results = work / "tasks"
            results.mkdir(exist_ok=True)
            vectors = _Vectors(pool_index, query_index)
            for name, rows in plan.tasks.items():
                summary.tasks[name] = _search_task(name, rows, plan, vectors, k, results)
            _assemble(plan, results, out)
            if pool_index.manifest["backend"] == "milvus":
                pool_index.drop()  # a work folder's index: its collection goes with the folder
            atomic_write_bytes(Path(str(out) + ".summary.json"), json.dumps(
                {**record, "tasks": summary.tasks, "queries": len(plan.queries)}, indent=2).encode())
            shutil.rmtree(work, ignore_errors=True)
        distributed.barrier()
    return summary


def _build(index_class, items, retriever, path: Path, *, lines: dict, file: Path | None, sources: _Plan | None = None,
           **options):
    """``Index.build`` (resumable); an item's error names its file and line."""
    try:
        return index_class.build(items, retriever, path, **options)
    except InputError as exc:
        if exc.item is None:
            raise
        where = file
        if sources is not None:  # queries: the file that item came from
            row = next((n for n, q in enumerate(sources.queries) if q.qid == exc.item), None)
            where = sources.query_files[row] if row is not None else None
        raise exc.located(file=str(where) if where else None, line=lines.get(exc.item)) from None


class _Vectors:
    """The pool and query vectors, read once and only when a task still has to be searched."""

    def __init__(self, pool_index, query_index):
        self.pool_index, self.query_index = pool_index, query_index
        self._pool, self._queries = None, None

    def pool(self) -> np.ndarray:
        if self._pool is None:
            self._pool = self.pool_index.vectors()
        return self._pool

    def queries(self) -> np.ndarray:
        if self._queries is None:
            self._queries = self.query_index.vectors()
        return self._queries

    def candidates(self, dids: list[str]) -> np.ndarray:
        """The pool vectors of ``dids`` (N, dim): fetched by id from Milvus, not the whole pool."""
        if self.pool_index.manifest["backend"] == "milvus":
            return self.pool_index.vectors_of(dids)
        return self.pool()[[self.pool_index.position(did) for did in dids]]


def _search_task(name: str, rows: list[int], plan: _Plan, vectors: _Vectors, k: int, results: Path) -> dict:
    """Search one task's queries in its pool (unless a previous run did) and write its results."""
    from ..index import Index

    done = results / f"{name}.jsonl"
    if not done.is_file():
        members = plan.task_pools[name]
        pool_index = vectors.pool_index
        where = {}
        if len(members) == len(pool_index):
            index = pool_index
        elif pool_index.manifest["backend"] == "milvus":
            index, where = pool_index, {"where": task_filter(plan, name)}
        else:
            index = Index.from_vectors(vectors.pool()[members], [plan.candidates[n].did for n in members],
                                       pool_index.fingerprint(), dtype="float32")
        scores, ranked = index.search(vectors.queries()[rows], k=k, **where)
        positive_dids = sorted({did for row in rows for did in plan.queries[row].positives})
        positive_vectors = dict(zip(positive_dids, vectors.candidates(positive_dids)))
        lines = []
        for row, row_scores, row_ids in zip(rows, scores, ranked):
            query = plan.queries[row]
            positive_scores = (np.stack([positive_vectors[did] for did in query.positives]) @ vectors.queries()[row]
                               if query.positives else [])
            mined = mined_query(query.qid, query.positives, row_ids, row_scores, task=name,
                                instruction=plan.instructions[row], positive_scores=positive_scores)
            lines.append(json.dumps(mined.to_record(), ensure_ascii=False) + "\n")
        atomic_write_bytes(done, "".join(lines).encode("utf-8"))
        logger.info("%s: mined the top %d of %d queries in a pool of %d", name, k, len(rows), len(index))
    return _task_stats(done, len(plan.task_pools[name]))


def task_filter(plan: _Plan, name: str) -> str:
    """A Milvus expression that selects exactly the task's part of the pool: its dataset and
    candidate modality (the fields the index stored), plus its positives from elsewhere."""
    from ..index.milvus_db import dataset_of, modality_of

    first = plan.queries[plan.tasks[name][0]]
    wanted = TASK_MODALITIES[first.task_id][1]
    members = set(plan.task_pools[name])
    matched = set()
    for n, candidate in enumerate(plan.candidates):
        item = candidate.item(".")  # what was indexed: the modality field comes from its parts
        if dataset_of(candidate.did) == first.dataset_id and \
                modality_of({"text": item.text, "images": item.images}) == wanted:
            matched.add(n)
    expression = f"(dataset_id == {int(first.dataset_id)} and modality == {json.dumps(wanted)}"
    excluded = [plan.candidates[n].did for n in sorted(matched - members)]
    if excluded:
        expression += f" and id not in {json.dumps(excluded)}"
    expression += ")"
    extra = [plan.candidates[n].did for n in sorted(members - matched)]
    return expression + (f" or id in {json.dumps(extra)}" if extra else "")


def _task_stats(path: Path, pool_size: int) -> dict:
    """Recall@1/5/10 of the retriever on the task's training queries with positives, how many have
    none (unlabelled), and how many have no negative."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    labelled = [r for r in records if r["positives"]]
    stats: dict = {"queries": len(records), "pool": pool_size, "unlabelled": len(records) - len(labelled)}
    for cut in (1, 5, 10):
        hits = [bool(set(r["positives"]) & {did for did, _ in r["top"][:cut]}) for r in labelled]
        stats[f"recall@{cut}"] = round(100 * sum(hits) / max(1, len(hits)), 2)
    stats["without_negatives"] = sum(1 for r in records if not r["negatives"])
    return stats


def _assemble(plan: _Plan, results: Path, out: Path) -> None:
    """Every task's lines, in query-file order, written atomically to ``out``."""
    by_qid = {}
    for name in plan.tasks:
        for line in (results / f"{name}.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                by_qid[json.loads(line)["qid"]] = line
    text = "".join(by_qid[q.qid] + "\n" for q in plan.queries)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, text.encode("utf-8"))


def _plan_record(retriever, plan: _Plan, *, k: int, pools: str, instructions: str, seed: int, root) -> dict:
    """What the results depend on; a resumed run must match it."""
    return {
        "format": MINED_FORMAT,
        "fingerprint": retriever.fingerprint(),
        "k": k,
        "pools": pools,
        "instructions": instructions,
        "seed": seed if instructions == "random" else None,
        "root": str(Path(root).resolve()),
        "query_files": {str(p.resolve()): file_sha256(p) for p in dict.fromkeys(plan.query_files)},
        "candidates_sha256": strings_sha256(c.did for c in plan.candidates),
        "instructions_sha256": strings_sha256(plan.instructions),
    }


def check_interrupted_run(work: Path, record: dict, *, plan_file: str = PLAN_FILE, job: str = "mining") -> bool:
    """True if ``work`` holds an interrupted run of the same job (its ``plan_file`` equals
    ``record``); refuse one of another job, naming the settings that differ. Mining's and
    ``lamra score-teacher``'s work folders."""
    path = work / plan_file
    if not path.is_file():
        return False
    stored = json.loads(path.read_text(encoding="utf-8"))
    record = json.loads(json.dumps(record, default=str))  # as it was stored
    changed = sorted(key for key in set(stored) | set(record)
                     if json.dumps(stored.get(key), sort_keys=True) != json.dumps(record.get(key), sort_keys=True))
    if changed:
        raise InputError(f"an interrupted {job} run with other settings ({', '.join(changed)}) is there: "
                         "run it with the same arguments, or delete the folder to start again", file=str(work))
    logger.warning("resuming the %s run in %s", job, work)
    return True
