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
from pathlib import Path

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
        state = json.loads((latest / STATE_FILE).read_text())
        changed = {k: (state["args"].get(k), v) for k, v in args.items()
                   if k in _RESUME_MUST_MATCH and state["args"].get(k) != v}
        if changed:
            raise ValueError(f"{latest} was made with other settings {changed} (stored, now): resume with "
                             "the same config, or use another output_dir / resume: false")
        self.accelerator.load_state(str(latest), strict=False)
        logger.warning("resuming from %s (step %d)", latest, state["step"])
        return int(state["step"])


# Changing these mid-run would not continue the same run.
_RESUME_MUST_MATCH = ("model", "data", "data_kind", "global_batch_size", "seed", "lora_r", "lora_alpha", "full",
                      "max_steps", "epochs", "learning_rate", "text_rule",
                      # the reranker's (RerankerTrainingArgs)
                      "mined", "label_span", "loss", "max_negatives", "max_text_tokens", "instructions")


def _keep_trained_weights(models, weights, output_dir) -> None:
    for model, state in zip(models, weights):
        trained = {name.removeprefix("module.") for name, p in model.named_parameters() if p.requires_grad}
        for key in [k for k in state if k.removeprefix("module.") not in trained]:
            del state[key]
