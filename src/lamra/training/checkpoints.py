"""Resumable training checkpoints: trained weights, optimizer, scheduler, RNG and step.

accelerate's ``save_state`` / ``load_state`` do the work (and know DeepSpeed and FSDP); a hook
keeps only the trained weights of the model (a LoRA is megabytes, the frozen base gigabytes).
A checkpoint is written under a temporary name and renamed when complete, so a run killed
while saving resumes from the previous one.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

logger = logging.getLogger(__name__)

STATE_FILE = "lamra_state.json"


class CheckpointManager:
    def __init__(self, accelerator, folder: Path, *, keep: int):  # keep: the run's save_total_limit
        self.accelerator, self.folder, self.keep = accelerator, Path(folder), keep
        accelerator.register_save_state_pre_hook(_keep_trained_weights)

    def latest(self) -> Path | None:
        done = [p for p in self.folder.glob("step-*") if (p / STATE_FILE).is_file() and p.name[5:].isdigit()]
        return max(done, key=lambda p: int(p.name[5:]), default=None)

    def save(self, step: int, args: dict) -> Path:
        accelerator = self.accelerator
        final = self.folder / f"step-{step}"
        partial = self.folder / f".step-{step}.partial"
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (partial / STATE_FILE).write_text(json.dumps({"step": step, "args": args}, indent=2, default=str))
            partial.rename(final)
            for old in sorted(self.folder.glob("step-*"), key=lambda p: int(p.name[5:]))[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final

    def resume(self, args: dict) -> int:
        """Load the newest checkpoint, if any; the step it was taken after (0 without one)."""
        latest = self.latest()
        if latest is None:
            return 0
        state = check_resumable(self.folder, args)
        self.accelerator.load_state(str(latest), strict=False)
        logger.warning("resuming from %s (step %d)", latest, state["step"])
        return int(state["step"])


def check_resumable(folder: Path, args: dict) -> dict | None:
    """The newest checkpoint's state in ``folder`` (None without one); refused when it was made
    with other settings (checked before the model loads)."""
    done = [p for p in Path(folder).glob("step-*") if (p / STATE_FILE).is_file() and p.name[5:].isdigit()]
    latest = max(done, key=lambda p: int(p.name[5:]), default=None)
    if latest is None:
        return None
    state = json.loads((latest / STATE_FILE).read_text())
    changed = _changed(state["args"], args)
    if changed:
        raise InputError(f"made with other settings {changed} (stored, now): resume with the same config, or use "
                         "another --output-dir (or --set resume=false to start over there)", file=str(latest))
    return state


@dataclass(frozen=True)
class FinishedRun:
    adapter: Path
    steps: int | None

    @property
    def message(self) -> str:
        steps = f" ({self.steps} steps)" if self.steps is not None else ""
        return (f"this run has finished already{steps}: the adapter is {self.adapter}; nothing to do "
                "(another --output-dir, or --set resume=false, trains again)")


def finished_run(output: Path, args: dict) -> FinishedRun | None:
    """The finished run in ``output`` made with the same settings (its adapter's record is written
    last), or None: a rerun of a finished command is then a no-op."""
    record_file = Path(output) / "adapter" / "lamra_training.json"
    try:
        record = json.loads(record_file.read_text())
    except (OSError, ValueError):
        return None
    if "steps" not in record or _changed(record.get("args", {}), args):
        return None  # an older record, or other settings: train (resume checks the checkpoints)
    return FinishedRun(record_file.parent, record["steps"])


def _changed(stored: dict, now: dict) -> dict:
    return {k: (stored.get(k), v) for k, v in now.items() if k in _RESUME_MUST_MATCH and stored.get(k) != v}


# Changing these mid-run would not continue the same run.
_RESUME_MUST_MATCH = ("model", "data", "data_kind", "global_batch_size", "seed", "lora_r", "lora_alpha", "full",
                      "max_steps", "epochs", "learning_rate", "text_rule",
                      # distillation (the retriever's): another scores file or loss is another run
                      "distill", "distill_weight", "distill_top_k", "distill_temperature", "distill_retrieval_weight",
                      "distill_rerank_weight", "distill_with_positive", "distill_unlabelled_min_p",
                      "distill_batch_negatives",
                      # the reranker's (RerankerTrainingArgs)
                      "mined", "label_span", "loss", "max_negatives", "max_text_tokens", "instructions")


def _keep_trained_weights(models, weights, output_dir) -> None:
    for model, state in zip(models, weights):
        trained = {name.removeprefix("module.") for name, p in model.named_parameters() if p.requires_grad}
        for key in [k for k in state if k.removeprefix("module.") not in trained]:
            del state[key]
