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
from .checkpoints import CheckpointManager
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
    device = _device(args)
    dtype = resolve_dtype(args.dtype, device)
    accelerator = Accelerator(cpu=device == "cpu",
                              mixed_precision="bf16" if dtype == torch.bfloat16 else "no")
    world, rank = accelerator.num_processes, accelerator.process_index
    if args.global_batch_size % world:
        raise ValueError(f"global_batch_size {args.global_batch_size} is not a multiple of {world} processes")
    set_seed(args.seed)

    settings = ModelSettings.for_model(args.model).with_overrides(**args.settings)
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
        save_trained(backbone, adapter, args)
    accelerator.wait_for_everyone()
    return adapter


def _mean_over_processes(accelerator, value) -> float:
    """A logged value averaged over the processes (every rank reaches the same logging steps)."""
    import torch

    if accelerator.num_processes == 1:
        return float(value)
    tensor = torch.as_tensor(value, dtype=torch.float32, device=accelerator.device).detach()
    return float(accelerator.reduce(tensor, reduction="mean"))


def save_trained(backbone, folder: Path, args) -> None:
    """The adapter (or full model), the tokenizer with ``<emb>`` and the image processor."""
    folder.mkdir(parents=True, exist_ok=True)
    backbone.model.save_pretrained(folder)
    backbone.tokenizer.save_pretrained(folder)
    backbone.image_processor.save_pretrained(folder)
    backbone.settings.save(folder)  # the settings travel with the weights
    (folder / "lamra_training.json").write_text(json.dumps(
        {"args": args.to_dict(), "base_model": backbone.model_id, "settings": backbone.settings.fingerprint()},
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

    def write(self, **record) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.on_log is not None:
            self.on_log(record)
