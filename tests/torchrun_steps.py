"""What the torchrun equivalence tests share: the launcher (tests) and, inside the launched
scripts (tests/*/*_equivalence.py), the model every rank starts from and each rank's share."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_torchrun(script: Path, processes: int, port: int, *args) -> None:
    """``torchrun --nproc-per-node PROCESSES SCRIPT ARGS`` on the CPU (gloo), one thread a process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                          "--master-port", str(port), str(script), *map(str, args)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]


def lora_retriever(checkpoint: str):
    """The same trainable retriever on every rank: a LoRA (r 4, alpha 8, no dropout) whose B
    matrices are seeded non-zero, so the first step has gradients everywhere."""
    import torch

    from lamra import Retriever

    retriever = Retriever.from_pretrained(checkpoint, device="cpu")
    torch.manual_seed(0)
    retriever.backbone.add_lora(r=4, alpha=8, dropout=0.0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in retriever.backbone.model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    retriever.backbone.train()
    return retriever


def rank_share(examples: list, accelerator) -> list:
    """This process's contiguous share of the global batch."""
    share = len(examples) // accelerator.num_processes
    return examples[accelerator.process_index * share : (accelerator.process_index + 1) * share]
