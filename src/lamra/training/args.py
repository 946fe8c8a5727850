"""Training arguments: one dataclass, filled from a yaml preset and command-line overrides."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..data.mbeir_instructions import INSTRUCTION_CHOICES
from ..errors import InputError
from ..qwen2vl.prompts import MAX_LISTWISE_CANDIDATES, MAX_RERANK_TEXT_TOKENS

DATA_KINDS = ("pairs", "mbeir")
DEFAULT_TEMPERATURE = 0.05  # LamRA's InfoNCE temperature (docs/format.md#training-hyper-parameters); the loss's default too


@dataclass
class RetrieverTrainingArgs:
    """Everything a LamRA-Ret training run needs. Presets in configs/ hold the paper's values."""

    model: str = ""                      # base checkpoint (hub id or folder); stage 2: the merged stage-1 model
    output_dir: str = "lamra-train"
    data: str = ""                       # pairs file (.jsonl / .csv) or M-BEIR root
    data_kind: str = "pairs"             # "pairs" (stage 1) or "mbeir" (stage 2)
    train_queries: str | None = None     # mbeir: a query jsonl (default: union_train, else query/train/*)
    train_pool: str | None = None        # mbeir: the pool of the positives (default: the union train pool)
    text_rule: str | None = None         # "raw" (stage 1) / "lamra" (format + 480-token cut); default by data_kind
    use_hard_negatives: bool = False
    # reranker distillation (docs/training.md, "Distilling the reranker"): U-MARVEL's values
    distill: str | None = None           # a teacher-scores file (`lamra score-teacher`); trains on its queries
    distill_weight: float = 1.0          # weight of the KL term beside InfoNCE (0: InfoNCE alone, same queries)
    distill_top_k: int = 50              # candidates per query in the KL term (U-MARVEL: the top 50)
    distill_temperature: float = DEFAULT_TEMPERATURE   # the teacher's (U-MARVEL: the student's, 0.05)
    distill_retrieval_weight: float = 1.0  # teacher = (this * S_ret + distill_rerank_weight * P(Yes)) / 2
    distill_rerank_weight: float = 1.0     # U-MARVEL: 1 (0.5 / 0.1 for MSCOCO's two tasks)
    distill_reranker: str | None = None  # the reranker that made the file: checked against it when given
    distill_with_positive: bool = False  # the positive first in the distilled list (U-MARVEL: has_distill_with_pos)
    distill_unlabelled_min_p: float = 0.0  # a query without labels is learnt from only if its best P(Yes) reaches this
    distill_batch_negatives: bool = False  # the KL term's student also weighs the batch's other positives (teacher: 0)
    # model
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    train_vision: bool = False
    full: bool = False                   # train every language-model weight instead of a LoRA
    train_embeddings: bool = True        # with full: also the token embeddings (false keeps pretrained ones)
    gradient_checkpointing: bool = False
    device: str | None = None
    dtype: str | None = None             # default: bf16 on GPU, fp32 on CPU
    settings: dict = field(default_factory=dict)   # ModelSettings fields (max_pixels, positions, ...)
    # optimisation
    global_batch_size: int = 576
    chunk_size: int | None = None        # gradient caching: rows per forward (None: the plain path)
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    temperature: float = DEFAULT_TEMPERATURE
    epochs: float = 1.0
    max_steps: int | None = None         # overrides epochs
    seed: int = 0
    # bookkeeping
    save_steps: int = 500
    save_total_limit: int = 2
    logging_steps: int = 10
    num_workers: int = 0
    resume: bool = True                  # continue from the newest checkpoint in output_dir
    show_progress: bool = True

    def __post_init__(self):
        if self.data_kind not in DATA_KINDS:
            raise InputError(f"data_kind must be one of {DATA_KINDS}, got {self.data_kind!r}", field="data_kind")
        if self.text_rule is None:
            self.text_rule = "raw" if self.data_kind == "pairs" else "lamra"

    def check(self) -> None:
        """Refuse a run that cannot start, before any model is loaded."""
        for name in ("model", "data", "output_dir"):
            if not getattr(self, name):
                raise InputError(f"missing: set {name} in the config or with --{name.replace('_', '-')}", field=name)
        if self.global_batch_size < 2:
            raise InputError("global_batch_size must be at least 2 (in-batch negatives)", field="global_batch_size")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise InputError("chunk_size must be at least 1", field="chunk_size")
        if self.distill:
            if self.data_kind != "mbeir":
                raise InputError("distill needs data_kind mbeir (the scores name M-BEIR queries)", field="distill")
            if self.distill_weight < 0:
                raise InputError("distill_weight must be at least 0", field="distill_weight")
            if self.distill_top_k < 2:
                raise InputError("distill_top_k must be at least 2", field="distill_top_k")
            if self.distill_temperature <= 0:
                raise InputError("distill_temperature must be above 0", field="distill_temperature")
            if not 0 <= self.distill_unlabelled_min_p <= 1:
                raise InputError("distill_unlabelled_min_p is a P(Yes): from 0 to 1", field="distill_unlabelled_min_p")

    def to_dict(self) -> dict:
        return asdict(self)


# The reranker's choices live here, where every config is checked before a model loads; the
# collator and the step (which import torch or the data stack) check against these same tuples.
LABEL_SPANS = ("answer", "answer_eos", "official")
RERANK_LOSSES = ("sum", "joint")


@dataclass
class RerankerTrainingArgs:
    """Everything a LamRA-Rank training run needs (docs/format.md#reranker-prompts); configs/rerank.yaml
    holds the released values. One example is one training query: a positive and a negative
    pointwise pair and one listwise list (docs/training-rerank.md)."""

    model: str = ""                      # the raw Qwen2-VL-Instruct model (not the retriever)
    output_dir: str = "lamra-rerank"
    data: str = ""                       # M-BEIR root
    mined: str = ""                      # the jsonl `lamra mine` wrote (top-k of every training query)
    train_queries: str | None = None     # a query jsonl (default: union_train, else query/train/*)
    train_pool: str | None = None        # the pool of positives and mined candidates (default: union train pool)
    max_text_tokens: int = MAX_RERANK_TEXT_TOKENS  # format, then cut each text to this many tokens (docs/format.md#truncation)
    max_negatives: int = 4               # listwise: M negatives, M uniform in [1, max_negatives]
    label_span: str = "answer"           # "answer", "answer_eos" (+ <|im_end|>), "official" (whole assistant turn)
    loss: str = "sum"                    # "sum": L_point + L_list (docs/format.md#reranker-prompts); "joint": one token mean (released code)
    instructions: str = "random"         # "random" (released: keyed on the drawn positive) or "first"
    # model
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    train_vision: bool = False
    full: bool = False
    train_embeddings: bool = True
    gradient_checkpointing: bool = False
    device: str | None = None
    dtype: str | None = None
    settings: dict = field(default_factory=dict)   # ModelSettings fields (max_pixels, ...)
    # optimisation
    global_batch_size: int = 128         # training queries per step over all processes
    chunk_size: int | None = None        # queries per forward (gradient accumulation); None: the whole share
    learning_rate: float = 2e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    epochs: float = 1.0
    max_steps: int | None = None
    seed: int = 0
    # bookkeeping
    save_steps: int = 500
    save_total_limit: int = 2
    logging_steps: int = 10
    num_workers: int = 0
    resume: bool = True
    show_progress: bool = True

    def __post_init__(self):
        for name, allowed in (("label_span", LABEL_SPANS), ("loss", RERANK_LOSSES),
                              ("instructions", INSTRUCTION_CHOICES)):
            if getattr(self, name) not in allowed:
                raise InputError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}", field=name)

    def check(self) -> None:
        """Refuse a run that cannot start, before any model is loaded."""
        for name in ("model", "data", "mined", "output_dir"):
            if not getattr(self, name):
                raise InputError(f"missing: set {name} in the config or with --{name.replace('_', '-')}", field=name)
        if self.global_batch_size < 1:
            raise InputError("global_batch_size must be at least 1", field="global_batch_size")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise InputError("chunk_size must be at least 1", field="chunk_size")
        if self.max_negatives < 1:
            raise InputError("max_negatives must be at least 1 (a listwise list has 2 or more candidates)",
                             field="max_negatives")
        # The positive joins the negatives in one list, whose answer is one digit.
        if self.max_negatives > MAX_LISTWISE_CANDIDATES - 1:
            raise InputError(f"max_negatives must be at most {MAX_LISTWISE_CANDIDATES - 1}: the listwise answer is "
                             f"one digit (1-{MAX_LISTWISE_CANDIDATES})", field="max_negatives")
        if self.max_text_tokens < 1:
            raise InputError("max_text_tokens must be at least 1", field="max_text_tokens")

    def to_dict(self) -> dict:
        return asdict(self)


def load_args(config: str | os.PathLike | None = None, *, args_class: type = RetrieverTrainingArgs,
              **overrides: Any):
    """A preset (yaml) with ``overrides`` on top (``None`` values are ignored); ``args_class``
    is :class:`RetrieverTrainingArgs` (the default) or :class:`RerankerTrainingArgs`."""
    import yaml

    values: dict = {}
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise InputError("config file not found", file=str(path))
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"not valid yaml: {exc}", file=str(path)) from None
        if not isinstance(values, dict):
            raise InputError("the config must be a mapping of argument names to values", file=str(path))
        known = {f.name for f in fields(args_class)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown argument(s) {unknown}{_did_you_mean(unknown[0], known)}; known: "
                             f"{sorted(known)}", file=str(path), field=unknown[0])
        values = _numbers(args_class, values, source=str(path))
    given = _numbers(args_class, {k: v for k, v in overrides.items() if v is not None}, source=None)
    return args_class(**{**values, **given})


def _numbers(args_class: type, values: dict, *, source: str | None) -> dict:
    """Float fields given as text become floats: yaml reads ``2e-5`` (no dot) as a string.
    ``source``: the config file the values come from (None: the command line, ``--set``)."""
    types = {f.name: str(f.type) for f in fields(args_class)}
    out = dict(values)
    for key, value in values.items():
        if isinstance(value, str) and types.get(key, "").split(" |")[0] == "float":
            try:
                out[key] = float(value)
            except ValueError:
                where = "" if source else " (the value given with --set or an option, not the config file)"
                raise InputError(f"{key} must be a number, got {value!r}{where}", file=source, field=key) from None
    return out


def _did_you_mean(name: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_assignment(text: str, *, args_class: type = RetrieverTrainingArgs) -> tuple[str, Any]:
    """``key=value`` from ``--set``; the value is read as yaml (numbers, booleans, null)."""
    import yaml

    if "=" not in text:
        raise InputError(f"--set takes key=value, got {text!r}", field="set")
    key, value = text.split("=", 1)
    known = {f.name for f in fields(args_class)}
    if key not in known:
        raise InputError(f"unknown argument {key!r}{_did_you_mean(key, known)}; known: {sorted(known)}",
                         field="set")
    return key, yaml.safe_load(value)
