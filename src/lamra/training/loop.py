"""LamRA training on accelerate: one loop for one CPU, one GPU, torchrun DDP, FSDP or DeepSpeed.

The retriever (InfoNCE) and the reranker (next-token cross-entropy on answers) share the loop;
what differs is a :class:`Recipe`: the dataset, the module accelerate prepares, the collator
and the step. Each side builds its own (:mod:`lamra.retriever.trainer`,
:mod:`lamra.reranker.trainer`), so this module imports neither side. The loop is short on
purpose: data order comes from :mod:`.schedule` (deterministic, so a resumed run sees the same
batches), checkpoints from :mod:`.checkpoints`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..settings import ModelSettings
from .checkpoints import CheckpointManager, check_resumable, finished_run
from .schedule import EpochIndexed, StepBatches

logger = logging.getLogger(__name__)


@dataclass
class Recipe:
    """What one kind of training brings to the shared loop.

    - ``dataset``: ``len()`` and ``example(index, epoch)`` (seeded per example, see each side's ``data``);
    - ``wrap(backbone)``: the ``torch.nn.Module`` accelerate prepares (it owns the parameters);
    - ``collator(processor)``: examples -> a batch (model-free: it runs in DataLoader workers);
    - ``step(accelerator, model, batch)``: forward and backward; the loss (a tensor) or a dict of
      logged values with "loss".
    """

    name: str
    dataset: Any
    wrap: Callable
    collator: Callable
    step: Callable


def train(args, recipe: Recipe, *, on_log: Callable[[dict], None] | None = None) -> Path:
    """The shared loop: model + LoRA, optimizer, schedule, checkpoints, logging, the adapter."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from transformers import get_cosine_schedule_with_warmup

    from ..qwen2vl.backbone import load_backbone, resolve_dtype

    dataset = recipe.dataset
    output = Path(args.output_dir)
    finished = finished_run(output, args.to_dict()) if args.resume else None
    if finished is not None:
        logger.warning("%s", finished.message)
        return finished.adapter
    device = _device(args)
    dtype = resolve_dtype(args.dtype, device)
    accelerator = Accelerator(cpu=device == "cpu",
                              mixed_precision="bf16" if dtype == torch.bfloat16 else "no")
    world, rank = accelerator.num_processes, accelerator.process_index
    # The data's checks, before the model loads (minutes for a large one).
    check_batch(len(dataset), args.global_batch_size, world)
    if args.resume:
        check_resumable(output / "checkpoints", args.to_dict())
    set_seed(args.seed)

    settings = ModelSettings.for_model(args.model).with_overrides(**args.settings)
    for message in changed_model_settings(args.model, args.settings):
        logger.warning("%s", message)
    # LoRA weights train in fp32 over bf16 base weights (peft keeps adapters in fp32).
    backbone = load_backbone(args.model, device=str(accelerator.device), dtype=dtype, settings=settings)
    backbone.add_lora(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                      train_vision=args.train_vision, full=args.full,
                      train_embeddings=args.train_embeddings)
    if args.gradient_checkpointing:
        backbone.enable_gradient_checkpointing()
    backbone.train()
    model = recipe.wrap(backbone)

    batches = StepBatches(len(dataset), global_batch_size=args.global_batch_size, seed=args.seed, rank=rank,
                          world_size=world)
    total_steps = args.max_steps or max(1, math.ceil(args.epochs * batches.steps_per_epoch))
    optimizer = torch.optim.AdamW(backbone.trainable_parameters(), lr=args.learning_rate,
                                  weight_decay=args.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(args.warmup_ratio * total_steps), total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    checkpoints = CheckpointManager(accelerator, output / "checkpoints", keep=args.save_total_limit)
    start_step = checkpoints.resume(args.to_dict()) if args.resume else 0

    loader = DataLoader(EpochIndexed(dataset), batch_sampler=batches.from_step(start_step, total_steps),
                        collate_fn=recipe.collator(backbone.processor), num_workers=args.num_workers,
                        # its own generator: starting the loader must not draw from the global RNG,
                        # or a resumed run would see other dropout masks than an uninterrupted one
                        generator=torch.Generator().manual_seed(args.seed))
    log = _TrainLog(output / "train_log.jsonl", enabled=accelerator.is_main_process, on_log=on_log)
    log.cut(start_step)  # a resumed run rewrites the steps after its checkpoint
    logger.info("training the %s: %d steps of %d examples on %d process(es) from step %d", recipe.name,
                total_steps, args.global_batch_size, world, start_step)
    from ..progress import progress_bar

    with progress_bar(total_steps, "training", enabled=args.show_progress and accelerator.is_main_process) as bar:
        bar.advance(start_step)
        started, step = time.perf_counter(), start_step
        for step, batch in enumerate(loader, start=start_step + 1):
            values = recipe.step(accelerator, model, batch)
            if not isinstance(values, dict):
                values = {"loss": values}
            if args.max_grad_norm:
                accelerator.clip_grad_norm_(backbone.trainable_parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            bar.advance(1)
            if step % args.logging_steps == 0 or step == total_steps:
                seconds = time.perf_counter() - started
                logged = {name: _mean_over_processes(accelerator, value) for name, value in values.items()}
                log.write(step=step, total_steps=total_steps, **logged, lr=scheduler.get_last_lr()[0],
                          samples_per_second=round((step - start_step) * args.global_batch_size / seconds, 3))
            if step % args.save_steps == 0 and step < total_steps:
                checkpoints.save(step, args.to_dict())
    accelerator.wait_for_everyone()
    adapter = output / "adapter"
    if accelerator.is_main_process:
        save_trained(backbone, adapter, args, steps=total_steps)
    accelerator.wait_for_everyone()
    return adapter


def _mean_over_processes(accelerator, value) -> float:
    """A logged value averaged over the processes (every rank reaches the same logging steps)."""
    import torch

    if accelerator.num_processes == 1:
        return float(value)
    tensor = torch.as_tensor(value, dtype=torch.float32, device=accelerator.device).detach()
    return float(accelerator.reduce(tensor, reduction="mean"))


def save_trained(backbone, folder: Path, args, *, steps: int | None = None) -> None:
    """The adapter (or full model), the tokenizer with ``<emb>`` and the image processor; its
    ``lamra_training.json``, written last, marks a finished run (``steps`` trained)."""
    folder.mkdir(parents=True, exist_ok=True)
    backbone.model.save_pretrained(folder)
    backbone.tokenizer.save_pretrained(folder)
    backbone.image_processor.save_pretrained(folder)
    backbone.settings.save(folder)  # the settings travel with the weights
    (folder / "lamra_training.json").write_text(json.dumps(
        {"args": args.to_dict(), "steps": steps, "base_model": backbone.model_id,
         "settings": backbone.settings.fingerprint()},
        indent=2, default=str))


def _device(args) -> str:
    from ..distributed import device_for_rank
    from ..qwen2vl.backbone import default_device

    return (device_for_rank(args.device) or default_device()).split(":")[0]


class _TrainLog:
    """One json line per logged step (appended: a resumed run continues the same log)."""

    def __init__(self, path: Path, *, enabled: bool, on_log: Callable[[dict], None] | None):
        self.path, self.enabled, self.on_log = path, enabled, on_log
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def cut(self, step: int) -> None:
        """Keep the records up to ``step`` (the checkpoint a run resumes from): the steps after it
        are trained again, and logged once."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines(keepends=True)
                if line.strip() and _logged_step(line) <= step]
        from ..embeddings import atomic_write_bytes

        atomic_write_bytes(self.path, "".join(kept).encode("utf-8"))

    def write(self, **record) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.on_log is not None:
            self.on_log(record)


def _logged_step(line: str) -> float:
    try:
        return json.loads(line).get("step", math.inf)
    except ValueError:  # a line cut short by a kill: dropped
        return math.inf


def check_batch(examples: int, global_batch_size: int, processes: int = 1) -> None:
    """Refuse a global batch the data cannot fill, or one the processes cannot share."""
    from ..errors import InputError

    if examples < global_batch_size:
        raise InputError(f"the data has {examples} training examples, fewer than one global batch of "
                         f"{global_batch_size}: lower it with --global-batch-size (at most {examples}; "
                         "in-batch negatives want it large) or add data", field="global_batch_size")
    if global_batch_size % processes:
        raise InputError(f"{global_batch_size} is not a multiple of the {processes} processes: each takes an "
                         "equal share (--global-batch-size)", field="global_batch_size")


def changed_model_settings(model, settings: dict) -> list[str]:
    """A line per setting the run (its preset or --set) changes from what the base model folder
    recorded (its lamra_settings.json): vectors then differ from the base model's own."""
    from ..settings import SETTINGS_FILE

    try:
        recorded = json.loads((Path(model) / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # a hub id, or a folder without recorded settings: nothing to differ from
    return [f"the run sets {name} = {value!r}, but {model} was made with {name} = {recorded[name]!r} "
            f"({SETTINGS_FILE}): the trained model uses {value!r}" for name, value in settings.items()
            if name in recorded and recorded[name] != value]
